/* cuda_backend.h - the CUDA backend's context (stream, cuBLAS/cuBLASLt handles, workspace and
 * cached matmul descriptors) and device memory, with C linkage. Every CUDA runtime / library
 * call in cuda/ goes through QT_CUDA_CHECK / QT_CUBLAS_CHECK, which report file:line, the call
 * and what was being done. Only compiled when QT_HAVE_CUDA. */
#ifndef QT_CUDA_BACKEND_H
#define QT_CUDA_BACKEND_H

#include <stddef.h>

#include "autograd/check.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qt_cuda_ctx qt_cuda_ctx;

/* Picks the current device, creates the stream and handles. Fails with a message (no GPU,
 * driver too old, ...) rather than aborting, so callers can fall back to the CPU. */
int qt_cuda_ctx_create(qt_cuda_ctx **out, qt_err *err);
void qt_cuda_ctx_destroy(qt_cuda_ctx *c);
/* Whether a usable GPU is present (no context needed). */
int qt_cuda_available(void);
/* "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" */
const char *qt_cuda_device_name(qt_cuda_ctx *c);

void *qt_cuda_malloc(qt_cuda_ctx *c, size_t bytes);
void qt_cuda_free(qt_cuda_ctx *c, void *p);
void qt_cuda_memset0(qt_cuda_ctx *c, void *p, size_t bytes);
void qt_cuda_copy_h2d(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes);
void qt_cuda_copy_d2h(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes);
void qt_cuda_copy_d2d(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes);
void qt_cuda_sync(qt_cuda_ctx *c);

#ifdef __cplusplus
}
#endif

#endif
