/* cuda_storage.cuh - storage <-> f32 for the CUDA kernels: ld/st for F32, BF16 and F16
 * (round-to-nearest-even stores, as the CPU's quant/half.h) and QT_FLOAT_DISPATCH, which
 * instantiates a body for the tensor's storage type. Included inside each .cu file's anonymous
 * namespace, so every kernel file gets its own internal copies. */
#ifndef QT_CUDA_STORAGE_CUH
#define QT_CUDA_STORAGE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float ld(const float *p, int64_t i) {
    return p[i];
}
__device__ __forceinline__ float ld(const __nv_bfloat16 *p, int64_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ float ld(const __half *p, int64_t i) {
    return __half2float(p[i]);
}
__device__ __forceinline__ void st(float *p, int64_t i, float v) {
    p[i] = v;
}
__device__ __forceinline__ void st(__nv_bfloat16 *p, int64_t i, float v) {
    p[i] = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void st(__half *p, int64_t i, float v) {
    p[i] = __float2half_rn(v);
}

#define QT_FLOAT_DISPATCH(dt, T, what, BODY)                                                       \
    switch (dt) {                                                                                  \
    case QT_F32: {                                                                                 \
        using T = float;                                                                           \
        BODY;                                                                                      \
    } break;                                                                                       \
    case QT_BF16: {                                                                                \
        using T = __nv_bfloat16;                                                                   \
        BODY;                                                                                      \
    } break;                                                                                       \
    case QT_F16: {                                                                                 \
        using T = __half;                                                                          \
        BODY;                                                                                      \
    } break;                                                                                       \
    default:                                                                                       \
        QT_CHECK(0, "%s: dtype %s is not supported on CUDA", what, qt_dtype_name(dt));             \
    }

#endif
