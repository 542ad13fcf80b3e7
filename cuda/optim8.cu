/* optim8.cu - bitsandbytes' blockwise 8-bit AdamW (AdamW8bit) on the GPU: the moments live as
 * 8-bit codes of the dynamic maps (signed for m, unsigned for v) with one fp32 absmax per block
 * of QT_ADAMW8_BLOCK elements. Per block: dequantize, update m and v in fp32, the block's new
 * absmax, the parameter from the fp32 m and v, then the codes of m / absmax and v / absmax
 * (m's code moved one step when the nearest code has the other sign, as bitsandbytes does).
 *
 * Exactness: train/optim.c's CPU loop, written with _rn intrinsics in the same order (no FMA
 * contraction) and the same code search: CPU and GPU give the same bytes. bitsandbytes' own
 * kernel uses fast-math intrinsics (__fdividef, __powf), so ours matches it to rounding, not bit
 * for bit. One CUDA block per quantization block: the absmax is a block max (order-free). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_optim.h"

extern "C" {
#include "quant/dynamic_map.h"
#include "train/optim.h"
}

namespace {

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

static_assert(QT_ADAMW8_BLOCK == kThreads, "one thread per element of a quantization block");

__device__ __forceinline__ float load_g(const void *p, int dt, int64_t i) {
    if (dt == QT_BF16) return ld((const __nv_bfloat16 *)p, i);
    if (dt == QT_F16) return ld((const __half *)p, i);
    return ((const float *)p)[i];
}

__global__ void __launch_bounds__(kThreads)
    adamw8_kernel(qt_cuda_adamw8_tensor t, const float *maps, qt_cuda_adamw8_args a) {
    __shared__ float s_map[2 * 256];
    __shared__ float red[kThreads / 32];
    for (int i = threadIdx.x; i < 512; i += blockDim.x) s_map[i] = maps[i];
    const float *map_m = s_map, *map_v = s_map + 256;
    const int64_t nb = (t.n + kThreads - 1) / kThreads;
    for (int64_t blk = blockIdx.x; blk < nb; blk += gridDim.x) {
        __syncthreads(); /* s_map written; the previous block's red readers done */
        const int64_t j = blk * kThreads + threadIdx.x;
        const bool in = j < t.n;
        float gj = in ? load_g(t.g, t.gdt, j) : 0.0f;
        const bool ok = in && isfinite(gj);
        float m = 0.0f, v = 0.0f;
        if (ok) {
            v = __fmul_rn(map_v[t.v8[j]], t.v_absmax[blk]);
            v = __fadd_rn(__fmul_rn(v, a.beta2), __fmul_rn(__fmul_rn(a.one_minus_beta2, gj), gj));
            m = __fmul_rn(map_m[t.m8[j]], t.m_absmax[blk]);
            m = __fadd_rn(__fmul_rn(m, a.beta1), __fmul_rn(a.one_minus_beta1, gj));
        }
        const float a1 = block_reduce(fabsf(m), 0.0f, red, MaxOp());
        const float a2 = block_reduce(fabsf(v), 0.0f, red, MaxOp());
        __syncthreads(); /* every thread read this block's old absmax before thread 0 writes */
        if (threadIdx.x == 0) t.m_absmax[blk] = a1, t.v_absmax[blk] = a2;
        if (!in) continue;
        if (ok) {
            float w = t.w[j];
            w = __fadd_rn(
                w, __fmul_rn(a.step_size, __fdiv_rn(m, __fadd_rn(__fsqrt_rn(v), a.eps_scaled))));
            if (t.decay) w = __fmul_rn(w, a.decay);
            t.w[j] = w;
            if (t.narrow) {
                if (t.ndt == QT_BF16)
                    ((__nv_bfloat16 *)t.narrow)[j] = __float2bfloat16_rn(w);
                else
                    ((__half *)t.narrow)[j] = __float2half_rn(w);
            }
        }
        int c1 = qt_dynmap_search(map_m, a1 > 0.0f ? __fdiv_rn(m, a1) : 0.0f);
        if (signbit(map_m[c1]) != signbit(m)) c1 += m > 0.0f ? 1 : -1;
        t.m8[j] = (uint8_t)c1;
        t.v8[j] = (uint8_t)qt_dynmap_search(map_v, a2 > 0.0f ? __fdiv_rn(v, a2) : 0.0f);
    }
}

} // namespace

extern "C" void qt_cuda_optim_adamw8(qt_cuda_ctx *c, const qt_cuda_adamw8_tensor *t, int n,
                                     const float *maps, const qt_cuda_adamw8_args *a) {
    const int64_t cap = (int64_t)c->sm_count * kBlocksPerSM;
    for (int i = 0; i < n; i++) {
        if (t[i].n == 0) continue;
        int64_t nb = (t[i].n + kThreads - 1) / kThreads;
        adamw8_kernel<<<(unsigned)(nb < cap ? nb : cap), kThreads, 0, c->stream>>>(t[i], maps, *a);
        QT_CUDA_CHECK_LAUNCH("launching the 8-bit AdamW update");
    }
}
