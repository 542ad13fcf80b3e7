/* gguf.h - GGUF v3 files (llama.cpp's format): a validating reader (memory-mapped) and a
 * writer. Layout: "GGUF", version u32, tensor count u64, metadata count u64; metadata as
 * (key string, value type u32, value); tensor infos (name, n_dims u32, dims u64 (innermost
 * first, as ggml orders them), ggml type u32, offset u64 from the data section); padding to
 * general.alignment (32 unless set); the data section, each tensor aligned. Strings are u64
 * length + bytes, no NUL. Little-endian throughout. */
#ifndef QT_GGUF_H
#define QT_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/check.h"

typedef enum {
    QT_GV_U8 = 0,
    QT_GV_I8 = 1,
    QT_GV_U16 = 2,
    QT_GV_I16 = 3,
    QT_GV_U32 = 4,
    QT_GV_I32 = 5,
    QT_GV_F32 = 6,
    QT_GV_BOOL = 7,
    QT_GV_STRING = 8,
    QT_GV_ARRAY = 9,
    QT_GV_U64 = 10,
    QT_GV_I64 = 11,
    QT_GV_F64 = 12
} qt_gguf_vtype;

/* ggml tensor types qtune reads and writes (quant/gguf_blocks.h has the block codecs) */
enum {
    QT_GGML_F32 = 0,
    QT_GGML_F16 = 1,
    QT_GGML_Q4_0 = 2,
    QT_GGML_Q4_1 = 3,
    QT_GGML_Q8_0 = 8,
    QT_GGML_Q4_K = 12,
    QT_GGML_Q6_K = 14,
    QT_GGML_BF16 = 30
};

typedef struct {
    char *key;
    qt_gguf_vtype type;
    qt_gguf_vtype arr_type; /* for arrays */
    uint64_t n;             /* array length (1 for scalars) */
    union {
        uint64_t u;
        int64_t i;
        double f;
    } v;                /* a numeric or bool scalar, widened */
    char *str;          /* a string scalar */
    const uint8_t *arr; /* an array's raw elements in the file (strings: length-prefixed) */
} qt_gguf_kv;

typedef struct {
    char *name;
    uint32_t ndim;
    uint64_t dims[4]; /* ggml order: dims[0] is the innermost (row length) */
    uint32_t type;
    uint64_t offset; /* in the data section */
    size_t nbytes;
    const uint8_t *data;
} qt_gguf_tensor;

typedef struct {
    uint32_t version;
    uint32_t alignment;
    uint64_t nkv, ntensors;
    qt_gguf_kv *kv;
    qt_gguf_tensor *tensors;
    void *map;
    size_t len;
    char path[1024];
} qt_gguf_file;

/* Opens and validates (bounds, types, offsets, alignment, sizes): errors name the file and
 * what is wrong at which byte. */
int qt_gguf_open(qt_gguf_file *f, const char *path, qt_err *err);
void qt_gguf_close(qt_gguf_file *f);
const qt_gguf_kv *qt_gguf_kv_find(const qt_gguf_file *f, const char *key);
const qt_gguf_tensor *qt_gguf_tensor_find(const qt_gguf_file *f, const char *name);
const char *qt_ggml_type_name(uint32_t type);
/* bytes of a tensor of that type and element count (0: unknown type or not whole blocks) */
size_t qt_ggml_nbytes(uint32_t type, uint64_t nelem);
const char *qt_gguf_vtype_name(qt_gguf_vtype t);
/* "llama" for general.architecture etc.; a short rendering of any value into buf */
const char *qt_gguf_kv_str(const qt_gguf_kv *kv, char *buf, size_t cap);

/* ---- writing ---- */
typedef struct qt_gguf_writer qt_gguf_writer;
qt_gguf_writer *qt_gguf_writer_new(uint32_t alignment);
void qt_gguf_writer_free(qt_gguf_writer *w);
void qt_gguf_set_u32(qt_gguf_writer *w, const char *key, uint32_t v);
void qt_gguf_set_i32(qt_gguf_writer *w, const char *key, int32_t v);
void qt_gguf_set_f32(qt_gguf_writer *w, const char *key, float v);
void qt_gguf_set_bool(qt_gguf_writer *w, const char *key, int v);
void qt_gguf_set_str(qt_gguf_writer *w, const char *key, const char *v);
/* arrays: elements of type t (numeric) or, for QT_GV_STRING, n NUL-terminated strings */
void qt_gguf_set_arr(qt_gguf_writer *w, const char *key, qt_gguf_vtype t, const void *v,
                     uint64_t n);
void qt_gguf_set_str_arr(qt_gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* data (nbytes, copied) of a tensor with ggml dims (innermost first) */
int qt_gguf_add_tensor(qt_gguf_writer *w, const char *name, uint32_t type, uint32_t ndim,
                       const uint64_t *dims, const void *data, size_t nbytes, qt_err *err);
/* writes path atomically */
int qt_gguf_write(qt_gguf_writer *w, const char *path, qt_err *err);

#endif
