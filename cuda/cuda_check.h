/* cuda_check.h - checking every CUDA runtime and cuBLAS(Lt) call (llm.c's cudaCheck style).
 *
 * Two kinds of call site:
 *  - inside op kernels and the memory/copy helpers a failure is an invariant violation (a bad
 *    launch configuration, an illegal address, a lost device): QT_CUDA_CHECK / QT_CUBLAS_CHECK
 *    report file:line, the call's text, the library's error string and what was being done,
 *    then abort. QT_CUDA_CHECK_LAUNCH does the same for the kernel launched just before it.
 *  - the fallible entry points (context creation) must not abort: they use QT_CUDA_TRY /
 *    QT_CUBLAS_TRY, which set a qt_err (autograd/check.h) and jump to a cleanup label.
 * CUDA-only (included from .cu files). */
#ifndef QT_CUDA_CHECK_H
#define QT_CUDA_CHECK_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "autograd/check.h"
#ifdef __cplusplus
}
#endif

/* cuBLAS has no public error-string function in every version: name the status ourselves. */
static inline const char *qt_cublas_status_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
        return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
        return "unknown cuBLAS status";
    }
}

[[noreturn]] static inline void qt_cuda_fail(const char *file, int line, const char *call,
                                             const char *errstr, int code, const char *what) {
    fflush(stdout);
    fprintf(stderr, "%s:%d: CUDA call failed while %s\n  %s\n  -> %s (%d)\n", file, line, what,
            call, errstr, code);
    fflush(stderr);
    abort();
}

/* Aborts on failure (invariant): for kernels, launches, copies inside the backend. */
#define QT_CUDA_CHECK(call, what)                                                                  \
    do {                                                                                           \
        cudaError_t qt_e_ = (call);                                                                \
        if (qt_e_ != cudaSuccess)                                                                  \
            qt_cuda_fail(__FILE__, __LINE__, #call, cudaGetErrorString(qt_e_), (int)qt_e_, what);  \
    } while (0)

#define QT_CUBLAS_CHECK(call, what)                                                                \
    do {                                                                                           \
        cublasStatus_t qt_s_ = (call);                                                             \
        if (qt_s_ != CUBLAS_STATUS_SUCCESS)                                                        \
            qt_cuda_fail(__FILE__, __LINE__, #call, qt_cublas_status_str(qt_s_), (int)qt_s_,       \
                         what);                                                                    \
    } while (0)

/* After a <<<...>>> launch: configuration errors are reported by cudaGetLastError. */
#define QT_CUDA_CHECK_LAUNCH(what) QT_CUDA_CHECK(cudaGetLastError(), what)

/* Fallible variants: set *err (QT_ERR_DEVICE, message with file:line, call and error string),
 * store the code in rc and goto the label. */
#define QT_CUDA_TRY(call, what, err, rc, label)                                                    \
    do {                                                                                           \
        cudaError_t qt_e_ = (call);                                                                \
        if (qt_e_ != cudaSuccess) {                                                                \
            (void)cudaGetLastError(); /* clear a non-sticky error */                               \
            rc = qt_err_set(err, QT_ERR_DEVICE, "%s:%d: %s failed while %s: %s (%d)", __FILE__,    \
                            __LINE__, #call, what, cudaGetErrorString(qt_e_), (int)qt_e_);         \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#define QT_CUBLAS_TRY(call, what, err, rc, label)                                                  \
    do {                                                                                           \
        cublasStatus_t qt_s_ = (call);                                                             \
        if (qt_s_ != CUBLAS_STATUS_SUCCESS) {                                                      \
            rc = qt_err_set(err, QT_ERR_DEVICE, "%s:%d: %s failed while %s: %s (%d)", __FILE__,    \
                            __LINE__, #call, what, qt_cublas_status_str(qt_s_), (int)qt_s_);       \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#endif
