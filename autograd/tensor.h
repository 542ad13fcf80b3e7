/* tensor.h - qt_tensor: dtype, up to 4 dims, contiguous row-major, on the CPU or a CUDA device.
 * No strides: transposes are matmul flags or explicit copies (qt_permute). A tensor's struct
 * always lives in host memory; its data lives on its device, either in a persistent allocation
 * (parameters, optimizer state; freed with the context) or in the step arena (activations and
 * their gradients; gone at the next qt_step_reset). */
#ifndef QT_TENSOR_H
#define QT_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "check.h"

typedef enum { QT_F32, QT_BF16, QT_F16, QT_U8, QT_I8, QT_I32, QT_DTYPE_COUNT } qt_dtype;
typedef enum { QT_CPU, QT_CUDA, QT_DEVICE_COUNT } qt_device;

#define QT_MAX_DIMS 4

typedef struct qt_tensor {
    qt_dtype dtype;
    qt_device device;
    int ndim;
    int64_t shape[QT_MAX_DIMS];
    void *data;
    struct qt_tensor *grad; /* same shape/device; NULL until a gradient first reaches it */
    bool requires_grad;     /* a leaf to train, or an activation downstream of one */
    bool grad_valid;        /* grad holds a value: the next contribution accumulates */
    bool persistent;        /* struct and data outlive the step */
    bool is_view;           /* data aliases another tensor's data (qt_reshape) */
    /* optimizer in backward (tape.h, qt_grad_ready_begin): how many of the step's recorded uses
     * of this trainable tensor backward has still to pass; counts only while uses_epoch is the
     * context's grad_epoch, so a new step needs no list of tensors to reset */
    int32_t uses;
    uint32_t uses_epoch;
    char name[48];
} qt_tensor;

size_t qt_dtype_size(qt_dtype dt);
const char *qt_dtype_name(qt_dtype dt);
const char *qt_device_name(qt_device dev);
int64_t qt_numel(const qt_tensor *t);
size_t qt_nbytes(const qt_tensor *t);
bool qt_same_shape(const qt_tensor *a, const qt_tensor *b);
/* product of all dims but the last; the last dim */
int64_t qt_rows(const qt_tensor *t);
int64_t qt_cols(const qt_tensor *t);
/* "[2, 3, 4]" into buf (for messages) */
const char *qt_shape_str(const qt_tensor *t, char *buf, size_t n);

static inline float *qt_f32(const qt_tensor *t) {
    QT_CHECK(t->dtype == QT_F32 && t->device == QT_CPU, "tensor '%s' is not a CPU f32 tensor",
             t->name);
    return (float *)t->data;
}
static inline int32_t *qt_i32(const qt_tensor *t) {
    QT_CHECK(t->dtype == QT_I32 && t->device == QT_CPU, "tensor '%s' is not a CPU i32 tensor",
             t->name);
    return (int32_t *)t->data;
}

#endif
