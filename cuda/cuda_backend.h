/* cuda_backend.h - the CUDA backend's context (stream, cuBLAS/cuBLASLt handles, workspace and
 * cached matmul descriptors) and device memory, with C linkage. Every CUDA runtime / library
 * call in cuda/ goes through QT_CUDA_CHECK / QT_CUBLAS_CHECK (cuda/cuda_check.h), which report
 * file:line, the call and what was being done. Only compiled when QT_HAVE_CUDA. */
#ifndef QT_CUDA_BACKEND_H
#define QT_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* inside the extern "C" block: autograd's headers are C and carry no linkage markers */
#include "autograd/check.h"

typedef struct qt_cuda_ctx qt_cuda_ctx;
typedef struct qt_cuda_optim qt_cuda_optim; /* cuda/cuda_optim.h */

/* Picks the current device, creates the stream and handles. Fails with a message (no GPU,
 * driver too old, ...) rather than aborting, so callers can fall back to the CPU. */
int qt_cuda_ctx_create(qt_cuda_ctx **out, qt_err *err);
void qt_cuda_ctx_destroy(qt_cuda_ctx *c);
/* Whether a usable GPU is present (no context needed). */
int qt_cuda_available(void);
/* "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" */
const char *qt_cuda_device_name(qt_cuda_ctx *c);

/* cudaMalloc; NULL when the device is out of memory (never aborts) */
void *qt_cuda_malloc(qt_cuda_ctx *c, size_t bytes);
void qt_cuda_free(qt_cuda_ctx *c, void *p);
/* on the context's stream; the host copies synchronize it, so host data is ready (d2h) or
 * may be reused (h2d) when they return */
void qt_cuda_memset0(qt_cuda_ctx *c, void *p, size_t bytes);
/* every byte = value (tests poison memory with 0xff: NaN in f32, bf16 and f16) */
void qt_cuda_fill_bytes(qt_cuda_ctx *c, void *p, int value, size_t bytes);
void qt_cuda_copy_h2d(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes);
void qt_cuda_copy_d2h(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes);
void qt_cuda_copy_d2d(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes);
void qt_cuda_sync(qt_cuda_ctx *c);

#ifdef __cplusplus
}
#endif

/* ---- the context's layout, for the backend's own .cu files ------------------------------- */
#ifdef __CUDACC__
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define QT_CUDA_LT_WORKSPACE                                                                       \
    (32u << 20)                  /* cuBLASLt workspace: 32 MiB (Hopper's recommendation)           \
                                  */
#define QT_CUDA_MATMUL_CACHE 256 /* cached GEMM descriptors: a 7-projection LoRA model uses ~50 */

/* One cached cuBLASLt matmul configuration, keyed by whatever the matmul code needs (dtypes,
 * transposes, m/n/k, batch, epilogue). Filled by the CUDA issue's matmul; destroyed with the
 * context. A NULL descriptor is simply not destroyed. */
typedef struct {
    int valid;
    int64_t key[12];
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulAlgo_t algo;
    int has_algo;
} qt_cuda_matmul_entry;

struct qt_cuda_ctx {
    int device;   /* CUDA device ordinal */
    int sm_count; /* multiprocessors: sizes grid-stride launches */
    int cc_major, cc_minor;
    size_t total_mem;
    cudaStream_t stream;   /* every kernel, copy and library call of this context */
    cublasHandle_t cublas; /* bound to stream */
    cublasLtHandle_t lt;
    void *lt_workspace; /* QT_CUDA_LT_WORKSPACE bytes */
    size_t lt_workspace_bytes;
    qt_cuda_matmul_entry matmul_cache[QT_CUDA_MATMUL_CACHE];
    int matmul_cache_n;
    float *nf4_tables;       /* NF4 values [16] + dynamic map [256] (cuda/nf4.cu), lazily */
    qt_cuda_optim *optim[3]; /* the optimizer's chunk tables (norm, AdamW) and the scratch of
                              * per-tensor norms (optimizer in backward), lazily */
    char name[160];
};

/* the stream of a qt_ctx's CUDA context (ctx->cuda) */
static inline cudaStream_t qt_cuda_stream_of(void *cuda) {
    return ((qt_cuda_ctx *)cuda)->stream;
}
#endif

#endif
