/* cuda_storage.cuh - storage <-> f32 for the CUDA kernels: ld/st for F32, BF16 and F16
 * (round-to-nearest-even stores, as the CPU's quant/half.h), 8-wide bf16 vectors, and
 * QT_FLOAT_DISPATCH, which
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

/* 8 bf16 in one 16-byte vector <-> 8 floats (round-to-nearest-even, as st) */
__device__ __forceinline__ void unpack8(const uint4 &v, float (&f)[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x, f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
    uint4 v;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&v);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    return v;
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
