/* cuda_backend.cu - the CUDA context (device, stream, cuBLAS/cuBLASLt handles, workspace,
 * matmul descriptor cache) and device memory. No globals: everything hangs off qt_cuda_ctx.
 * Context creation is fallible (returns a qt_err); everything after it is an invariant and
 * aborts with file:line on failure (cuda_check.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_optim.h"

extern "C" int qt_cuda_available(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver / no device: not sticky, clear it */
        return 0;
    }
    return n > 0;
}

static void matmul_cache_clear(qt_cuda_ctx *c) {
    for (int i = 0; i < c->matmul_cache_n; i++) {
        qt_cuda_matmul_entry *m = &c->matmul_cache[i];
        if (m->pref) cublasLtMatmulPreferenceDestroy(m->pref);
        if (m->a) cublasLtMatrixLayoutDestroy(m->a);
        if (m->b) cublasLtMatrixLayoutDestroy(m->b);
        if (m->c) cublasLtMatrixLayoutDestroy(m->c);
        if (m->d) cublasLtMatrixLayoutDestroy(m->d);
        if (m->op) cublasLtMatmulDescDestroy(m->op);
        memset(m, 0, sizeof *m);
    }
    c->matmul_cache_n = 0;
}

/* Tears down whatever part of the context exists (also a half-built one). Errors here are
 * ignored on purpose: destroy runs on failure paths too. */
static void ctx_teardown(qt_cuda_ctx *c) {
    if (!c) return;
    if (c->stream) (void)cudaStreamSynchronize(c->stream);
    matmul_cache_clear(c);
    if (c->lt_workspace) (void)cudaFree(c->lt_workspace);
    if (c->nf4_tables) (void)cudaFree(c->nf4_tables);
    for (int i = 0; i < 3; i++) qt_cuda_optim_free(c, c->optim[i]);
    if (c->lt) (void)cublasLtDestroy(c->lt);
    if (c->cublas) (void)cublasDestroy(c->cublas);
    if (c->stream) (void)cudaStreamDestroy(c->stream);
    (void)cudaGetLastError();
    free(c);
}

extern "C" int qt_cuda_ctx_create(qt_cuda_ctx **out, qt_err *err) {
    int rc = QT_OK, n = 0, dev = 0;
    cudaError_t e;
    cudaDeviceProp prop;
    qt_cuda_ctx *c = NULL;
    *out = NULL;

    e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        if (e != cudaSuccess)
            return qt_err_set(err, QT_ERR_DEVICE,
                              "no usable CUDA device: cudaGetDeviceCount failed: %s (%d)",
                              cudaGetErrorString(e), (int)e);
        return qt_err_set(err, QT_ERR_DEVICE, "no CUDA device present");
    }
    c = (qt_cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return qt_err_set(err, QT_ERR_MEMORY, "out of host memory creating the CUDA context");

    QT_CUDA_TRY(cudaGetDevice(&dev), "asking for the current CUDA device", err, rc, fail);
    QT_CUDA_TRY(cudaSetDevice(dev), "selecting the CUDA device", err, rc, fail);
    QT_CUDA_TRY(cudaGetDeviceProperties(&prop, dev), "reading the CUDA device's properties", err,
                rc, fail);
    c->device = dev;
    c->sm_count = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->total_mem = prop.totalGlobalMem;
    snprintf(c->name, sizeof c->name, "%s, sm_%d%d, %.1f GiB", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    if (prop.major < 9) {
        /* the kernels are built for sm_90 only (QTUNE_CUDA_ARCH): an older GPU cannot run them */
        rc = qt_err_set(err, QT_ERR_DEVICE,
                        "CUDA device %d (%s) has compute capability %d.%d; this qtune was built "
                        "for sm_90 (Hopper) and newer",
                        dev, prop.name, prop.major, prop.minor);
        goto fail;
    }
    QT_CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                "creating the CUDA stream", err, rc, fail);
    QT_CUBLAS_TRY(cublasCreate(&c->cublas), "creating the cuBLAS handle", err, rc, fail);
    QT_CUBLAS_TRY(cublasSetStream(c->cublas, c->stream), "binding cuBLAS to the stream", err, rc,
                  fail);
    QT_CUBLAS_TRY(cublasLtCreate(&c->lt), "creating the cuBLASLt handle", err, rc, fail);
    c->lt_workspace_bytes = QT_CUDA_LT_WORKSPACE;
    QT_CUDA_TRY(cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes),
                "allocating the 32 MiB cuBLASLt workspace", err, rc, fail);
    *out = c;
    return QT_OK;

fail:
    ctx_teardown(c);
    return rc ? rc : QT_ERR_DEVICE;
}

extern "C" void qt_cuda_ctx_destroy(qt_cuda_ctx *c) {
    if (!c) return;
    QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "finishing the stream before teardown");
    ctx_teardown(c);
}

extern "C" const char *qt_cuda_device_name(qt_cuda_ctx *c) {
    return c ? c->name : "(no CUDA context)";
}

extern "C" void *qt_cuda_malloc(qt_cuda_ctx *c, size_t bytes) {
    (void)c;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky: the caller reports it */
        return NULL;
    }
    return p;
}

extern "C" void qt_cuda_free(qt_cuda_ctx *c, void *p) {
    (void)c;
    if (!p) return;
    QT_CUDA_CHECK(cudaFree(p), "freeing device memory");
}

extern "C" void qt_cuda_memset0(qt_cuda_ctx *c, void *p, size_t bytes) {
    if (!bytes) return;
    QT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, c->stream), "zero-filling device memory");
}

extern "C" void qt_cuda_fill_bytes(qt_cuda_ctx *c, void *p, int value, size_t bytes) {
    if (!bytes) return;
    QT_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, c->stream), "filling device memory");
}

extern "C" void qt_cuda_copy_h2d(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream),
                  "copying host data to the device");
    QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "waiting for a host-to-device copy");
}

extern "C" void qt_cuda_copy_d2h(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream),
                  "copying device data to the host");
    QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "waiting for a device-to-host copy");
}

extern "C" void qt_cuda_copy_d2d(qt_cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream),
                  "copying device data");
}

extern "C" void qt_cuda_sync(qt_cuda_ctx *c) {
    QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "synchronizing the stream");
}
