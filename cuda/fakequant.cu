/* fakequant.cu - the QAT fake-quant op on the GPU: forward y = dequant(quant(x)) for every
 * format of quant/fakequant.h, the clip mask, and the STE / clipped STE / LSQ backward. Same
 * node and semantics as the CPU twin (autograd/ops_fakequant.c): in = {x, scale or NULL,
 * offset or NULL}, extra = the format, ip[0] = the backward kind, saved[0] = the 1-bit mask
 * [(n+7)/8] u8 (bit set = not clipped) for clipped STE and LSQ. x and the output are each f32
 * or bf16: every kernel loads to f32, computes in f32 and rounds only the stored output, so a
 * bf16 output is exactly the f32 output rounded (what a cast after the op would give) without
 * the f32 copies; gradients have their tensor's dtype.
 *
 * Bit-exact with the CPU forward: every fp32 step is written with the _rn intrinsics in the
 * reference's evaluation order (nvcc would otherwise contract a*b+c into one FMA, the CPU
 * never does), rintf rounds half to even as the CPU's, divisions and sqrtf are IEEE (no fast
 * math), fp16 scales go through __float2half_rn (round to nearest even, as quant/half.c).
 *  INT (dynamic / learned, per tensor / channel / token / group): group statistics are
 *    max/min reductions (order-free, so exact); the element pass follows fq_int.
 *  Q4_0, Q8_0: one warp per 32-element block, quantize_row_q4_0/q8_0_ref and their
 *    dequantizers (Q4_0's max is the first element of largest magnitude, as the serial loop).
 *  Q4_K: eight lanes per 256-element super-block, one per 32-element sub-block, each running
 *    make_qkx2_quants serially in the reference's order (its sums are order-dependent).
 *  NF4: block absmax, the fp32 reciprocal, the kernel's thresholds; double quantization with
 *    the mean of the block absmax summed as the CPU does (a double sum, in its order unless
 *    every partial sum is exact, which the exponent range proves), the signed dynamic map in
 *    blocks of 256 with bitsandbytes' binary search.
 * LSQ's per-scale sums are f64 reductions in a fixed order (a warp per group, or fixed
 * chunks and then a warp): deterministic; they can differ from the CPU's serial f64 sums only
 * in the last bits of a double, before the rounding to f32. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

extern "C" {
#include "quant/dynamic_map.h"
#include "quant/nf4.h"
}

namespace {

#include "cuda/cuda_common.cuh"
#include "cuda/cuda_storage.cuh"

constexpr int kQK_K = 256;           /* GGUF super-block (QT_QK_K of quant/gguf_blocks.h) */
constexpr int64_t kWarpGroup = 4096; /* groups up to this size: one warp each */
constexpr int64_t kChunk = 16384;    /* larger groups: fixed chunks of this, one block each */

/* dQuantizeNF4's thresholds, the kernel's literals (quant/nf4.c keeps the same list) */
constexpr float kNf4Thresh[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

struct Nf4Table { /* passed by value: code values and thresholds */
    float code[16];
    float thresh[15];
};
struct DynMap {
    float m[256];
};

/* ---- launch helpers ----------------------------------------------------------------------- */

/* ---- deterministic group reductions --------------------------------------------------------
 * A loader L gives: using V; static V id(); static V comb(V, V); V load(int64_t k) const.
 * Groups are contiguous runs of G elements. */

__device__ __forceinline__ float2 shfl_xor(float2 v, int o) {
    return make_float2(__shfl_xor_sync(0xffffffffu, v.x, o), __shfl_xor_sync(0xffffffffu, v.y, o));
}
__device__ __forceinline__ double2 shfl_xor(double2 v, int o) {
    return make_double2(__shfl_xor_sync(0xffffffffu, v.x, o), __shfl_xor_sync(0xffffffffu, v.y, o));
}

/* 8 consecutive elements at k (a multiple of 8, 16-byte aligned) as floats, and back */
__device__ __forceinline__ void ld8(const float *p, int64_t k, float (&f)[8]) {
    float4 a = *reinterpret_cast<const float4 *>(p + k),
           b = *reinterpret_cast<const float4 *>(p + k + 4);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void ld8(const __nv_bfloat16 *p, int64_t k, float (&f)[8]) {
    unpack8(*reinterpret_cast<const uint4 *>(p + k), f);
}
__device__ __forceinline__ void st8(float *p, int64_t k, const float (&f)[8]) {
    *reinterpret_cast<float4 *>(p + k) = make_float4(f[0], f[1], f[2], f[3]);
    *reinterpret_cast<float4 *>(p + k + 4) = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ void st8(__nv_bfloat16 *p, int64_t k, const float (&f)[8]) {
    *reinterpret_cast<uint4 *>(p + k) = pack8(f);
}

template <class L> __device__ __forceinline__ typename L::V warp_reduce(typename L::V a) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = L::comb(a, shfl_xor(a, o));
    return a;
}

/* one warp per group: lanes stride the group, then a fixed shuffle tree. VEC (loaders with
 * load8, G % 8 == 0, data 16-byte aligned): each lane takes 8 consecutive elements at a time */
template <class L, bool VEC = false>
__global__ void reduce_warp_kernel(L l, int64_t ng, int64_t G, typename L::V *out) {
    int lane = threadIdx.x & 31;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t j = w; j < ng; j += nw) {
        typename L::V a = L::id();
        if constexpr (VEC)
            for (int64_t i = lane * 8; i < G; i += 256) a = L::comb(a, l.load8(j * G + i));
        else
            for (int64_t i = lane; i < G; i += 32) a = L::comb(a, l.load(j * G + i));
        a = warp_reduce<L>(a);
        if (lane == 0) out[j] = a;
    }
}

/* one block per (group, chunk): part[j * nch + c] */
template <class L>
__global__ void reduce_chunk_kernel(L l, int64_t ng, int64_t G, int64_t nch, typename L::V *part) {
    __shared__ typename L::V sh[kThreads / 32];
    for (int64_t e = blockIdx.x; e < ng * nch; e += gridDim.x) {
        int64_t j = e / nch, c = e % nch;
        int64_t lo = j * G + c * kChunk, hi = min(j * G + G, lo + kChunk);
        typename L::V a = L::id();
        for (int64_t k = lo + threadIdx.x; k < hi; k += blockDim.x) a = L::comb(a, l.load(k));
        a = warp_reduce<L>(a);
        __syncthreads(); /* the previous round's readers of sh are done */
        if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = a;
        __syncthreads();
        if (threadIdx.x < 32) {
            a = threadIdx.x < kThreads / 32 ? sh[threadIdx.x] : L::id();
            a = warp_reduce<L>(a);
            if (threadIdx.x == 0) part[e] = a;
        }
    }
}

/* a loader over partial results */
template <class L> struct PartLoader {
    using V = typename L::V;
    const V *p;
    __device__ static V id() {
        return L::id();
    }
    __device__ static V comb(V a, V b) {
        return L::comb(a, b);
    }
    __device__ V load(int64_t k) const {
        return p[k];
    }
};

/* out[j] = reduction of group j (ng groups of G); vec: the loader's load8 may be used */
template <class L>
void group_reduce(qt_cuda_ctx *c, Scratch &sc, const L &l, int64_t ng, int64_t G,
                  typename L::V *out, const char *what, bool vec = false) {
    using V = typename L::V;
    if (ng == 0) return;
    if (G <= kWarpGroup) {
        if constexpr (L::kVec8) {
            if (vec && G % 8 == 0) {
                reduce_warp_kernel<L, true>
                    <<<grid_for(c, ng * 32), kThreads, 0, c->stream>>>(l, ng, G, out);
                QT_CUDA_CHECK_LAUNCH(what);
                return;
            }
        }
        reduce_warp_kernel<L><<<grid_for(c, ng * 32), kThreads, 0, c->stream>>>(l, ng, G, out);
        QT_CUDA_CHECK_LAUNCH(what);
        return;
    }
    int64_t nch = (G + kChunk - 1) / kChunk;
    V *part = (V *)sc.get((size_t)(ng * nch) * sizeof(V));
    int64_t blocks = ng * nch, cap = (int64_t)c->sm_count * kBlocksPerSM;
    reduce_chunk_kernel<L>
        <<<(unsigned)(blocks < cap ? blocks : cap), kThreads, 0, c->stream>>>(l, ng, G, nch, part);
    QT_CUDA_CHECK_LAUNCH(what);
    PartLoader<L> pl{part};
    reduce_warp_kernel<PartLoader<L>>
        <<<grid_for(c, ng * 32), kThreads, 0, c->stream>>>(pl, ng, nch, out);
    QT_CUDA_CHECK_LAUNCH(what);
}

/* ---- INT formats --------------------------------------------------------------------------- */

template <class TX> struct AbsMaxL { /* (unused, max |x|), from 0 as the CPU's amax */
    using V = float2;
    static constexpr bool kVec8 = true;
    const TX *x;
    __device__ V load8(int64_t k) const { /* max is exact: any order gives the same */
        float f[8], m = 0.0f;
        ld8(x, k, f);
#pragma unroll
        for (int u = 0; u < 8; u++) m = fmaxf(m, fabsf(f[u]));
        return make_float2(0.0f, m);
    }
    __device__ static V id() {
        return make_float2(0.0f, 0.0f);
    }
    __device__ static V comb(V a, V b) {
        return make_float2(0.0f, fmaxf(a.y, b.y));
    }
    __device__ V load(int64_t k) const {
        return make_float2(0.0f, fabsf(ld(x, k)));
    }
};
template <class TX> struct MinMaxL { /* (min, max) */
    using V = float2;
    static constexpr bool kVec8 = true;
    const TX *x;
    __device__ V load8(int64_t k) const {
        float f[8];
        ld8(x, k, f);
        V a = id();
#pragma unroll
        for (int u = 0; u < 8; u++) a = make_float2(fminf(a.x, f[u]), fmaxf(a.y, f[u]));
        return a;
    }
    __device__ static V id() {
        return make_float2(INFINITY, -INFINITY);
    }
    __device__ static V comb(V a, V b) {
        return make_float2(fminf(a.x, b.x), fmaxf(a.y, b.y));
    }
    __device__ V load(int64_t k) const {
        float v = ld(x, k);
        return make_float2(v, v);
    }
};

/* dynamic scales from the statistics: symmetric amax/qmax, asymmetric (max-min)/qmax, min */
__global__ void int_dyn_scales_kernel(const float2 *st, int64_t ng, int sym, int qmax, float *s,
                                      float *b) {
    QT_GRID_STRIDE(j, ng) {
        float2 v = st[j];
        if (sym) {
            s[j] = __fdiv_rn(v.y, (float)qmax);
            b[j] = 0.0f;
        } else {
            s[j] = __fdiv_rn(__fsub_rn(v.y, v.x), (float)qmax);
            b[j] = v.x;
        }
    }
}

struct IntArgs {
    int qmin, qmax, sym, learned;
    int64_t n, G;
};

/* one element of an INT format: y, and whether it lies inside the grid (the mask bit) */
__device__ __forceinline__ float int_elem(float xi, float sj, float bj, const IntArgs &a,
                                          bool &inside) {
    inside = true;
    if (sj == 0.0f) return bj; /* an all-zero (or constant) group is exact */
    float t = __fdiv_rn(__fsub_rn(xi, bj), sj);
    float q = fminf(fmaxf(rintf(t), (float)a.qmin), (float)a.qmax);
    inside = !a.learned || (t >= (float)a.qmin && t <= (float)a.qmax);
    return a.sym ? __fmul_rn(q, sj) : __fadd_rn(__fmul_rn(q, sj), bj);
}

/* one thread per mask byte (8 elements): y and the byte; bits past n are 0. VEC (G % 8 == 0,
 * x and y 16-byte aligned): the 8 elements share a group and move as vectors */
template <class TX, class TY, bool VEC>
__global__ void int_fwd_kernel(const TX *x, const float *s, const float *b, TY *y, uint8_t *mask,
                               IntArgs a) {
    int64_t nbytes = (a.n + 7) / 8;
    QT_GRID_STRIDE(m, nbytes) {
        unsigned bits = 0;
        bool inside;
        if (VEC && m * 8 + 8 <= a.n) {
            const int64_t j = m * 8 / a.G;
            const float sj = s[j], bj = (a.sym || !b) ? 0.0f : b[j];
            float v[8];
            ld8(x, m * 8, v);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                v[u] = int_elem(v[u], sj, bj, a, inside);
                bits |= (unsigned)inside << u;
            }
            st8(y, m * 8, v);
        } else {
            for (int u = 0; u < 8; u++) {
                int64_t k = m * 8 + u;
                if (k >= a.n) break;
                int64_t j = k / a.G;
                float sj = s[j], bj = (a.sym || !b) ? 0.0f : b[j];
                st(y, k, int_elem(ld(x, k), sj, bj, a, inside));
                bits |= (unsigned)inside << u;
            }
        }
        if (mask) mask[m] = (uint8_t)bits;
    }
}

/* ---- GGUF Q4_0 / Q8_0: one warp per 32-element block --------------------------------------- */

template <class TX, class TY>
__global__ void q4_0_kernel(const TX *x, TY *y, uint8_t *mask, int64_t nblk) {
    int lane = threadIdx.x & 31;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t blk = w; blk < nblk; blk += nw) {
        int64_t k = blk * 32 + lane;
        float v = ld(x, k), av = fabsf(v);
        float amax = fmaxf(0.0f, av); /* NaN never wins, as `amax < fabsf(v)` */
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        /* the serial loop keeps the first element of the largest magnitude; +0 if all are 0 */
        unsigned hit = __ballot_sync(0xffffffffu, av == amax);
        float vmax = __shfl_sync(0xffffffffu, v, hit ? __ffs(hit) - 1 : 0);
        if (!(amax > 0.0f)) vmax = 0.0f;
        const float d = __fdiv_rn(vmax, -8.0f);
        const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        const float df = __half2float(__float2half_rn(d));
        /* (int8_t)(x*id + 8.5f): truncation toward zero, in range here */
        int xi = __float2int_rz(__fadd_rn(__fmul_rn(v, id), 8.5f));
        xi = (int)(int8_t)xi;
        bool inside = xi <= 15;
        int q = xi < 15 ? xi : 15;
        st(y, k, __fmul_rn((float)(q - 8), df));
        unsigned bits = __ballot_sync(0xffffffffu, inside);
        if (mask && lane == 0) *reinterpret_cast<uint32_t *>(mask + blk * 4) = bits;
    }
}

template <class TX, class TY> __global__ void q8_0_kernel(const TX *x, TY *y, int64_t nblk) {
    int lane = threadIdx.x & 31;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t blk = w; blk < nblk; blk += nw) {
        int64_t k = blk * 32 + lane;
        float v = ld(x, k);
        float amax = fmaxf(0.0f, fabsf(v));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = __fdiv_rn(amax, 127.0f);
        const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        const float df = __half2float(__float2half_rn(d));
        float r = roundf(__fmul_rn(v, id)); /* half away from zero, as the reference */
        int q = r == r ? (int)(int8_t)(int)r : 0;
        st(y, k, __fmul_rn((float)q, df));
    }
}

/* ---- GGUF Q4_K: eight lanes per super-block ----------------------------------------------- */

__device__ __forceinline__ int clamp15(int l) {
    return l < 0 ? 0 : (l > 15 ? 15 : l);
}

__device__ __forceinline__ int nearest_int(float f) {
    int i = __float_as_int(__fadd_rn(f, 12582912.f));
    return (i & 0x007fffff) - 0x00400000;
}

/* ggml's make_qkx2_quants(32, 15, x, w, L, &min, Laux, -1, 0.1, 20, 0), serial */
__device__ float make_qkx2_32(const float *x, const float *w, uint8_t *L, float *the_min) {
    uint8_t Laux[32];
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = __fmul_rn(sum_w, x[0]);
    for (int i = 1; i < 32; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w = __fadd_rn(sum_w, w[i]);
        sum_x = __fadd_rn(sum_x, __fmul_rn(w[i], x[i]));
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < 32; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = __fdiv_rn(15.f, __fsub_rn(max, min));
    float scale = __fdiv_rn(1.f, iscale);
    float best_error = 0;
    for (int i = 0; i < 32; ++i) {
        int l = nearest_int(__fmul_rn(iscale, __fsub_rn(x[i], min)));
        L[i] = (uint8_t)clamp15(l);
        float diff = __fsub_rn(__fadd_rn(__fmul_rn(scale, (float)L[i]), min), x[i]);
        diff = __fmul_rn(diff, diff);
        best_error = __fadd_rn(best_error, __fmul_rn(w[i], diff));
    }
    for (int is = 0; is <= 20; ++is) {
        iscale = __fdiv_rn(__fadd_rn(__fadd_rn(-1.f, __fmul_rn(0.1f, (float)is)), 15.f),
                           __fsub_rn(max, min));
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < 32; ++i) {
            int l = nearest_int(__fmul_rn(iscale, __fsub_rn(x[i], min)));
            l = clamp15(l);
            Laux[i] = (uint8_t)l;
            float wl = __fmul_rn(w[i], (float)l);
            sum_l = __fadd_rn(sum_l, wl);
            sum_l2 = __fadd_rn(sum_l2, __fmul_rn(wl, (float)l));
            sum_xl = __fadd_rn(sum_xl, __fmul_rn(wl, x[i]));
        }
        float D = __fsub_rn(__fmul_rn(sum_w, sum_l2), __fmul_rn(sum_l, sum_l));
        if (D > 0) {
            float this_scale =
                __fdiv_rn(__fsub_rn(__fmul_rn(sum_w, sum_xl), __fmul_rn(sum_x, sum_l)), D);
            float this_min =
                __fdiv_rn(__fsub_rn(__fmul_rn(sum_l2, sum_x), __fmul_rn(sum_l, sum_xl)), D);
            if (this_min > 0) {
                this_min = 0;
                this_scale = __fdiv_rn(sum_xl, sum_l2);
            }
            float cur_error = 0;
            for (int i = 0; i < 32; ++i) {
                float diff =
                    __fsub_rn(__fadd_rn(__fmul_rn(this_scale, (float)Laux[i]), this_min), x[i]);
                diff = __fmul_rn(diff, diff);
                cur_error = __fadd_rn(cur_error, __fmul_rn(w[i], diff));
            }
            if (cur_error < best_error) {
                for (int i = 0; i < 32; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* lane = 8 * (super-block in warp) + sub-block; quantize_row_q4_K_ref + dequantize_row_q4_K */
template <class TX, class TY>
__global__ void q4_K_kernel(const TX *x, TY *y, uint8_t *mask, int64_t nsb) {
    int lane = threadIdx.x & 31, j = lane & 7;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t base = w * 4; base < nsb; base += nw * 4) { /* 4 super-blocks per warp */
        int64_t sb = base + (lane >> 3);
        bool ok = sb < nsb;
        const TX *xs = x + (ok ? sb : 0) * kQK_K + 32 * j;
        float xv[32], wv[32];
        uint8_t L[32];
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) {
            xv[l] = ok ? ld(xs, l) : 0.0f;
            sum_x2 = __fadd_rn(sum_x2, __fmul_rn(xv[l], xv[l]));
        }
        float av_x = __fsqrt_rn(__fdiv_rn(sum_x2, 32.f));
        for (int l = 0; l < 32; ++l) wv[l] = __fadd_rn(av_x, fabsf(xv[l]));
        float mn;
        float scale = make_qkx2_32(xv, wv, L, &mn);
        /* the super-block's largest scale and min (from 0, NaN never wins) */
        float max_scale = fmaxf(0.0f, scale), max_min = fmaxf(0.0f, mn);
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) {
            max_scale = fmaxf(max_scale, __shfl_xor_sync(0xffffffffu, max_scale, o));
            max_min = fmaxf(max_min, __shfl_xor_sync(0xffffffffu, max_min, o));
        }
        float inv_scale = max_scale > 0 ? __fdiv_rn(63.f, max_scale) : 0.f;
        float inv_min = max_min > 0 ? __fdiv_rn(63.f, max_min) : 0.f;
        /* the 6-bit packing of the 12 scale bytes unpacks to these same values */
        uint8_t ls = (uint8_t)nearest_int(__fmul_rn(inv_scale, scale));
        uint8_t lm = (uint8_t)nearest_int(__fmul_rn(inv_min, mn));
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        const float dS = __half2float(__float2half_rn(__fdiv_rn(max_scale, 63.f)));
        const float dM = __half2float(__float2half_rn(__fdiv_rn(max_min, 63.f)));
        const float d = __fmul_rn(dS, (float)ls), dm = __fmul_rn(dM, (float)lm);
        uint32_t bits = 0;
        for (int l = 0; l < 32; ++l) {
            bool inside = true;
            if (d != 0.0f) { /* else L keeps make_qkx2_quants' levels */
                int q = nearest_int(__fdiv_rn(__fadd_rn(xv[l], dm), d));
                inside = q >= 0 && q <= 15;
                L[l] = (uint8_t)clamp15(q);
            }
            bits |= (uint32_t)inside << l;
            if (ok) st(y, sb * kQK_K + 32 * j + l, __fsub_rn(__fmul_rn(d, (float)L[l]), dm));
        }
        if (ok && mask) *reinterpret_cast<uint32_t *>(mask + (sb * kQK_K + 32 * j) / 8) = bits;
    }
}

/* ---- NF4 ------------------------------------------------------------------------------------ */

/* absmax of each block of bs (the last one partial): one warp per block */
template <class TX>
__global__ void nf4_absmax_kernel(const TX *x, int64_t n, int bs, int64_t nb, float *amax) {
    int lane = threadIdx.x & 31;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t b = w; b < nb; b += nw) {
        int64_t lo = b * bs, hi = min(lo + bs, n);
        float a = 0.0f;
        for (int64_t i = lo + lane; i < hi; i += 32) a = fmaxf(a, fabsf(ld(x, i)));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        if (lane == 0) amax[b] = a;
    }
}

/* offset = (float)(sum / nb), sum the CPU's double sum of the absmax in index order. When
 * the values' exponent range and count leave every partial sum exact in a double, any order
 * gives that sum: a tree then; otherwise one thread adds in order. One block of 1024. */
__global__ void __launch_bounds__(1024) nf4_mean_kernel(const float *amax, int64_t nb, float *out) {
    __shared__ int s_emax, s_emin;
    __shared__ double s_part[32];
    if (threadIdx.x == 0) {
        s_emax = 0;
        s_emin = 1 << 30;
    }
    __syncthreads();
    int emax = 0, emin = 1 << 30;
    for (int64_t i = threadIdx.x; i < nb; i += blockDim.x) {
        uint32_t u = __float_as_uint(amax[i]) & 0x7fffffffu;
        if (u == 0) continue;
        int e = (int)(u >> 23);
        if (e == 0) e = 1; /* subnormal: the same unit as the smallest normal exponent */
        emax = max(emax, e);
        emin = min(emin, e);
    }
    atomicMax(&s_emax, emax); /* max / min: the order of these atomics cannot matter */
    atomicMin(&s_emin, emin);
    __syncthreads();
    int lg = 0;
    while (((int64_t)1 << lg) < nb) lg++;
    bool exact = s_emax == 0 || s_emax == 255 || (s_emax - s_emin) + 24 + lg <= 53;
    double sum = 0.0;
    if (exact) {
        double a = 0.0;
        for (int64_t i = threadIdx.x; i < nb; i += blockDim.x) a += (double)amax[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = a;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int k = 0; k < (int)(blockDim.x >> 5); k++) sum += s_part[k];
            *out = (float)(sum / (double)nb);
        }
    } else if (threadIdx.x == 0) {
        for (int64_t i = 0; i < nb; i++) sum += (double)amax[i];
        *out = (float)(sum / (double)nb);
    }
}

/* double quantization round trip of the absmax: one block of 256 per nested block */
__global__ void __launch_bounds__(QT_NF4_NESTED_BLOCK)
    nf4_dq_kernel(const float *amax, int64_t nb, const float *offset, DynMap map, float *out) {
    __shared__ float s_map[256];
    __shared__ float s_red[QT_NF4_NESTED_BLOCK / 32];
    s_map[threadIdx.x] = map.m[threadIdx.x];
    const float off = *offset;
    for (int64_t blk = blockIdx.x; blk * QT_NF4_NESTED_BLOCK < nb; blk += gridDim.x) {
        int64_t i = blk * QT_NF4_NESTED_BLOCK + threadIdx.x;
        bool in = i < nb;
        float c = in ? __fsub_rn(amax[i], off) : 0.0f;
        float a = fabsf(c);
        a = in ? a : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        __syncthreads(); /* s_map written / the previous round's s_red readers done */
        if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = a;
        __syncthreads();
        float m2 = 0.0f;
        for (int k = 0; k < QT_NF4_NESTED_BLOCK / 32; k++) m2 = fmaxf(m2, s_red[k]);
        float inv = __fdiv_rn(1.0f, m2);
        if (in) {
            int q = qt_dynmap_search(s_map, __fmul_rn(c, inv));
            out[i] = __fadd_rn(__fmul_rn(s_map[q], m2), off);
        }
    }
}

template <class TX, class TY>
__global__ void nf4_apply_kernel(const TX *x, int64_t n, int bs, const float *amax,
                                 const float *amax_dq, Nf4Table tab, TY *y) {
    QT_GRID_STRIDE(i, n) {
        int64_t b = i / bs;
        float inv = __fdiv_rn(1.0f, amax[b]);
        float v = __fmul_rn(ld(x, i), inv);
        int c = 0;
#pragma unroll
        for (int t = 0; t < 15; t++) c += v > tab.thresh[t];
        st(y, i, __fmul_rn(tab.code[c], amax_dq[b]));
    }
}

/* ---- backward kernels ------------------------------------------------------------------------ */

/* STE: gx = beta*gx + (mask ? gy : 0); no mask: pass everything through */
template <class TG, class TX>
__global__ void ste_kernel(const TG *gy, const uint8_t *mask, TX *gx, int64_t n, bool acc) {
    QT_GRID_STRIDE(i, n) {
        float v = !mask || (mask[i >> 3] >> (i & 7)) & 1 ? ld(gy, i) : 0.0f;
        st(gx, i, acc ? __fadd_rn(ld(gx, i), v) : v);
    }
}

struct LsqArgs {
    int qmin, qmax, sym;
    int64_t G;
};

/* LSQ sums per scale: (sum gy * (rint(t) - t | qmin | qmax), sum gy outside) in f64 */
template <class TX, class TG> struct LsqL {
    using V = double2;
    static constexpr bool kVec8 = false;
    const TX *x;
    const TG *gy;
    const float *s, *b;
    LsqArgs a;
    __device__ static V id() {
        return make_double2(0.0, 0.0);
    }
    __device__ static V comb(V u, V v) {
        return make_double2(u.x + v.x, u.y + v.y);
    }
    __device__ V load(int64_t k) const {
        int64_t j = k / a.G;
        float sj = s[j], bj = a.sym ? 0.0f : b[j];
        float t = __fdiv_rn(__fsub_rn(ld(x, k), bj), sj);
        double g = (double)ld(gy, k);
        if (t < (float)a.qmin) return make_double2(g * a.qmin, g);
        if (t > (float)a.qmax) return make_double2(g * a.qmax, g);
        return make_double2(g * ((double)rintf(t) - (double)t), 0.0);
    }
};

/* LSQ's x gradient: gy inside the grid, 0 outside (t compared as the CPU does) */
template <class TX, class TG>
__global__ void lsq_gx_kernel(const TX *x, const TG *gy, const float *s, const float *b, LsqArgs a,
                              TX *gx, int64_t n, bool acc) {
    QT_GRID_STRIDE(k, n) {
        int64_t j = k / a.G;
        float sj = s[j], bj = a.sym ? 0.0f : b[j];
        float t = __fdiv_rn(__fsub_rn(ld(x, k), bj), sj);
        float v = (t < (float)a.qmin || t > (float)a.qmax) ? 0.0f : ld(gy, k);
        st(gx, k, acc ? __fadd_rn(ld(gx, k), v) : v);
    }
}

/* gscale / goffset = (float)(sum * g), set or added */
__global__ void lsq_finish_kernel(const double2 *sums, int64_t ns, double g, float *gs, bool acc_s,
                                  float *go, bool acc_o) {
    QT_GRID_STRIDE(j, ns) {
        double2 v = sums[j];
        if (gs) {
            float a = (float)(v.x * g);
            gs[j] = acc_s ? __fadd_rn(gs[j], a) : a;
        }
        if (go) {
            float a = (float)(v.y * g);
            go[j] = acc_o ? __fadd_rn(go[j], a) : a;
        }
    }
}

/* ---- host side ------------------------------------------------------------------------------- */

void check_f32_cuda(const qt_tensor *t, const char *what, const char *name) {
    QT_CHECK(t->device == QT_CUDA && t->dtype == QT_F32, "%s: %s must be an f32 CUDA tensor", what,
             name);
}
void check_float_cuda(const qt_tensor *t, const char *what, const char *name) {
    QT_CHECK(t->device == QT_CUDA && (t->dtype == QT_F32 || t->dtype == QT_BF16),
             "%s: %s must be an f32 or bf16 CUDA tensor (got %s)", what, name,
             qt_dtype_name(t->dtype));
}

template <class TX, class TY>
void fwd_int(qt_cuda_ctx *c, Scratch &sc, const qt_fq_format *f, const qt_node *nd, uint8_t *mask) {
    const qt_tensor *x = nd->in[0];
    int64_t n = qt_numel(x);
    int64_t G = qt_fq_group_size(f, x->ndim, x->shape), ng = G ? n / G : 0;
    if (ng == 0) return;
    IntArgs a;
    qt_fq_range(f, &a.qmin, &a.qmax);
    a.sym = f->symmetric;
    a.learned = f->scale_mode == QT_FQ_LEARNED;
    a.n = n;
    a.G = G;
    const TX *xp = (const TX *)x->data;
    const bool vec = ((uintptr_t)xp & 15) == 0; /* 8-element vectors where G allows */
    const float *s, *b;
    if (a.learned) {
        check_f32_cuda(nd->in[1], "fakequant", "scale");
        QT_CHECK(qt_numel(nd->in[1]) == ng, "fakequant: %lld scales for %lld groups",
                 (long long)qt_numel(nd->in[1]), (long long)ng);
        s = (const float *)nd->in[1]->data;
        b = nullptr;
        if (!a.sym) {
            QT_CHECK(nd->in[2] && qt_numel(nd->in[2]) == ng, "fakequant: offsets missing");
            check_f32_cuda(nd->in[2], "fakequant", "offset");
            b = (const float *)nd->in[2]->data;
        }
    } else {
        float2 *st = (float2 *)sc.get((size_t)ng * sizeof(float2));
        if (a.sym)
            group_reduce(c, sc, AbsMaxL<TX>{xp}, ng, G, st, "launching fakequant absmax", vec);
        else
            group_reduce(c, sc, MinMaxL<TX>{xp}, ng, G, st, "launching fakequant min/max", vec);
        float *sv = (float *)sc.get((size_t)ng * sizeof(float));
        float *bv = (float *)sc.get((size_t)ng * sizeof(float));
        int_dyn_scales_kernel<<<grid_for(c, ng), kThreads, 0, c->stream>>>(st, ng, a.sym, a.qmax,
                                                                           sv, bv);
        QT_CUDA_CHECK_LAUNCH("launching fakequant dynamic scales");
        s = sv;
        b = bv;
    }
    TY *yp = (TY *)nd->out->data;
    if (vec && G % 8 == 0 && ((uintptr_t)yp & 15) == 0)
        int_fwd_kernel<TX, TY, true>
            <<<grid_for(c, (n + 7) / 8), kThreads, 0, c->stream>>>(xp, s, b, yp, mask, a);
    else
        int_fwd_kernel<TX, TY, false>
            <<<grid_for(c, (n + 7) / 8), kThreads, 0, c->stream>>>(xp, s, b, yp, mask, a);
    QT_CUDA_CHECK_LAUNCH("launching fakequant INT forward");
}

template <class TX, class TY>
void fwd_nf4(qt_cuda_ctx *c, Scratch &sc, const qt_fq_format *f, const qt_node *nd) {
    const qt_tensor *x = nd->in[0];
    int64_t n = qt_numel(x);
    int bs = f->blocksize ? f->blocksize : QT_NF4_BLOCK_DEFAULT;
    int64_t nb = (n + bs - 1) / bs;
    const TX *xp = (const TX *)x->data;
    float *amax = (float *)sc.get((size_t)nb * sizeof(float));
    nf4_absmax_kernel<TX><<<grid_for(c, nb * 32), kThreads, 0, c->stream>>>(xp, n, bs, nb, amax);
    QT_CUDA_CHECK_LAUNCH("launching fakequant NF4 absmax");
    const float *amax_dq = amax;
    if (!f->nf4_plain) {
        float *off = (float *)sc.get(sizeof(float));
        nf4_mean_kernel<<<1, 1024, 0, c->stream>>>(amax, nb, off);
        QT_CUDA_CHECK_LAUNCH("launching fakequant NF4 absmax mean");
        DynMap map;
        QT_CHECK(qt_dynmap_default(map.m) == 0, "fakequant: the dynamic map failed");
        float *dq = (float *)sc.get((size_t)nb * sizeof(float));
        int64_t nblk = (nb + QT_NF4_NESTED_BLOCK - 1) / QT_NF4_NESTED_BLOCK;
        int64_t cap = (int64_t)c->sm_count * kBlocksPerSM;
        nf4_dq_kernel<<<(unsigned)(nblk < cap ? nblk : cap), QT_NF4_NESTED_BLOCK, 0, c->stream>>>(
            amax, nb, off, map, dq);
        QT_CUDA_CHECK_LAUNCH("launching fakequant NF4 double quantization");
        amax_dq = dq;
    }
    Nf4Table tab;
    for (int i = 0; i < 16; i++) tab.code[i] = qt_nf4_code[i];
    for (int i = 0; i < 15; i++) tab.thresh[i] = kNf4Thresh[i];
    nf4_apply_kernel<TX, TY><<<grid_for(c, n), kThreads, 0, c->stream>>>(xp, n, bs, amax, amax_dq,
                                                                         tab, (TY *)nd->out->data);
    QT_CUDA_CHECK_LAUNCH("launching fakequant NF4 round trip");
}

template <class TX, class TY>
void fwd_typed(qt_ctx *ctx, const qt_fq_format *f, const qt_node *nd, uint8_t *mask) {
    qt_cuda_ctx *c = cuda_of(ctx);
    int64_t n = qt_numel(nd->in[0]);
    const TX *xp = (const TX *)nd->in[0]->data;
    TY *yp = (TY *)nd->out->data;
    Scratch sc(ctx, "fakequant");
    switch (f->kind) {
    case QT_FQ_INT:
        fwd_int<TX, TY>(c, sc, f, nd, mask);
        break;
    case QT_FQ_Q4_0:
        q4_0_kernel<TX, TY><<<grid_for(c, n), kThreads, 0, c->stream>>>(xp, yp, mask, n / 32);
        QT_CUDA_CHECK_LAUNCH("launching fakequant Q4_0");
        break;
    case QT_FQ_Q8_0:
        q8_0_kernel<TX, TY><<<grid_for(c, n), kThreads, 0, c->stream>>>(xp, yp, n / 32);
        QT_CUDA_CHECK_LAUNCH("launching fakequant Q8_0");
        if (mask) qt_cuda_fill_bytes(c, mask, 0xff, (size_t)((n + 7) / 8)); /* never clips */
        break;
    case QT_FQ_Q4_K:
        q4_K_kernel<TX, TY>
            <<<grid_for(c, (n / kQK_K) * 8), kThreads, 0, c->stream>>>(xp, yp, mask, n / kQK_K);
        QT_CUDA_CHECK_LAUNCH("launching fakequant Q4_K");
        break;
    case QT_FQ_NF4:
        fwd_nf4<TX, TY>(c, sc, f, nd);
        if (mask) qt_cuda_fill_bytes(c, mask, 0xff, (size_t)((n + 7) / 8)); /* never clips */
        break;
    default:
        QT_CHECK(0, "fakequant: unknown format kind %d", (int)f->kind);
    }
}

template <class TX>
void fwd_x(qt_ctx *ctx, const qt_fq_format *f, const qt_node *nd, uint8_t *mask) {
    if (nd->out->dtype == QT_F32)
        fwd_typed<TX, float>(ctx, f, nd, mask);
    else
        fwd_typed<TX, __nv_bfloat16>(ctx, f, nd, mask);
}

/* gx (x's dtype) = beta*gx + STE(gy) (gy of the output's dtype) */
template <class TG>
void ste_g(qt_cuda_ctx *c, const qt_tensor *gy, const uint8_t *mask, qt_tensor *gx, bool acc) {
    int64_t n = qt_numel(gx);
    if (gx->dtype == QT_F32)
        ste_kernel<TG, float><<<grid_for(c, n), kThreads, 0, c->stream>>>(
            (const TG *)gy->data, mask, (float *)gx->data, n, acc);
    else
        ste_kernel<TG, __nv_bfloat16><<<grid_for(c, n), kThreads, 0, c->stream>>>(
            (const TG *)gy->data, mask, (__nv_bfloat16 *)gx->data, n, acc);
    QT_CUDA_CHECK_LAUNCH("launching fakequant STE backward");
}

template <class TX, class TG>
void lsq_bwd(qt_ctx *ctx, const qt_node *nd, const LsqArgs &a, int qmax, float *gs, bool acc_s,
             float *go, bool acc_o, TX *gx, bool acc_x) {
    qt_cuda_ctx *c = cuda_of(ctx);
    const qt_tensor *x = nd->in[0];
    int64_t n = qt_numel(x), ns = qt_numel(nd->in[1]);
    const TX *xp = (const TX *)x->data;
    const TG *gyp = (const TG *)nd->out->grad->data;
    const float *s = (const float *)nd->in[1]->data;
    const float *b = nd->in[2] ? (const float *)nd->in[2]->data : nullptr;
    QT_CHECK(a.sym || b, "fakequant backward: an asymmetric format needs its offsets");
    if (gx) {
        lsq_gx_kernel<TX, TG>
            <<<grid_for(c, n), kThreads, 0, c->stream>>>(xp, gyp, s, b, a, gx, n, acc_x);
        QT_CUDA_CHECK_LAUNCH("launching fakequant LSQ x gradient");
    }
    if (gs || go) {
        Scratch sc(ctx, "fakequant");
        double2 *sums = (double2 *)sc.get((size_t)ns * sizeof(double2));
        group_reduce(c, sc, LsqL<TX, TG>{xp, gyp, s, b, a}, ns, a.G, sums,
                     "launching fakequant LSQ scale-gradient sums");
        double g = 1.0 / sqrt((double)a.G * (double)qmax);
        lsq_finish_kernel<<<grid_for(c, ns), kThreads, 0, c->stream>>>(sums, ns, g, gs, acc_s, go,
                                                                       acc_o);
        QT_CUDA_CHECK_LAUNCH("launching fakequant LSQ scale gradients");
    }
}

template <class TX>
void lsq_x(qt_ctx *ctx, const qt_node *nd, const LsqArgs &a, int qmax, float *gs, bool acc_s,
           float *go, bool acc_o, void *gx, bool acc_x) {
    if (nd->out->grad->dtype == QT_F32)
        lsq_bwd<TX, float>(ctx, nd, a, qmax, gs, acc_s, go, acc_o, (TX *)gx, acc_x);
    else
        lsq_bwd<TX, __nv_bfloat16>(ctx, nd, a, qmax, gs, acc_s, go, acc_o, (TX *)gx, acc_x);
}

} // namespace

/* ---- entries ----------------------------------------------------------------------------- */

extern "C" void qt_cuda_fakequant_fwd(qt_ctx *ctx, qt_node *nd) {
    const qt_fq_format *f = (const qt_fq_format *)nd->extra;
    qt_tensor *x = nd->in[0];
    check_float_cuda(x, "fakequant", "x");
    check_float_cuda(nd->out, "fakequant", "the output");
    QT_CHECK(qt_numel(nd->out) == qt_numel(x), "fakequant: output size");
    QT_CHECK(f && qt_fq_check(f, x->ndim, x->shape) == 0, "fakequant: bad format for '%s'",
             x->name);
    QT_CHECK(ctx->cuda, "fakequant: context without a CUDA backend");
    uint8_t *mask = nd->saved[0] ? (uint8_t *)nd->saved[0]->data : nullptr;
    if (mask) QT_CHECK(nd->saved[0]->device == QT_CUDA, "fakequant: mask not on CUDA");
    if (qt_numel(x) == 0) return;
    if (x->dtype == QT_F32)
        fwd_x<float>(ctx, f, nd, mask);
    else
        fwd_x<__nv_bfloat16>(ctx, f, nd, mask);
}

extern "C" void qt_cuda_fakequant_bwd(qt_ctx *ctx, qt_node *nd) {
    const qt_fq_format *f = (const qt_fq_format *)nd->extra;
    qt_tensor *x = nd->in[0];
    qt_cuda_ctx *c = cuda_of(ctx);
    qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == nd->out->dtype && gy->device == QT_CUDA &&
                 qt_numel(gy) == qt_numel(x),
             "fakequant backward: missing or mismatched output gradient");
    int64_t n = qt_numel(x);
    qt_fq_backward kind = (qt_fq_backward)nd->ip[0];
    float beta;
    if (kind != QT_FQ_LSQ) {
        if (!qt_needs_grad(x)) return;
        const uint8_t *mask = nullptr;
        if (kind == QT_FQ_STE) { /* pass-through: the output gradient itself when it can be */
            if (gy->dtype == x->dtype && qt_grad_handover(ctx, x, gy)) return;
        } else {
            QT_CHECK(nd->saved[0], "fakequant backward: clipped STE without a saved mask");
            mask = (const uint8_t *)nd->saved[0]->data;
        }
        qt_tensor *gx = qt_grad_acquire(ctx, x, false, &beta);
        if (n == 0) return;
        if (gy->dtype == QT_F32)
            ste_g<float>(c, gy, mask, gx, beta != 0.0f);
        else
            ste_g<__nv_bfloat16>(c, gy, mask, gx, beta != 0.0f);
        return;
    }
    QT_CHECK(f->kind == QT_FQ_INT && f->scale_mode == QT_FQ_LEARNED && nd->in[1],
             "fakequant backward: LSQ needs a learned INT format");
    check_f32_cuda(nd->in[1], "fakequant backward", "scale");
    int64_t ns = qt_numel(nd->in[1]);
    int64_t G = qt_fq_group_size(f, x->ndim, x->shape);
    QT_CHECK(G > 0 && ns * G == n, "fakequant backward: %lld scales for %lld elements",
             (long long)ns, (long long)n);
    LsqArgs a;
    int qmin, qmax;
    qt_fq_range(f, &qmin, &qmax);
    a.qmin = qmin;
    a.qmax = qmax;
    a.sym = f->symmetric;
    a.G = G;
    /* gradients first (in the CPU's order: x, scale, offset), then the scratch */
    void *gx = nullptr;
    float *gs = nullptr, *go = nullptr;
    bool acc_x = false, acc_s = false, acc_o = false;
    if (qt_needs_grad(x)) {
        gx = qt_grad_acquire(ctx, x, false, &beta)->data;
        acc_x = beta != 0.0f;
    }
    if (qt_needs_grad(nd->in[1])) {
        gs = (float *)qt_grad_acquire(ctx, nd->in[1], false, &beta)->data;
        acc_s = beta != 0.0f;
    }
    if (nd->in[2] && qt_needs_grad(nd->in[2])) {
        go = (float *)qt_grad_acquire(ctx, nd->in[2], false, &beta)->data;
        acc_o = beta != 0.0f;
    }
    if (n == 0) return;
    if (x->dtype == QT_F32)
        lsq_x<float>(ctx, nd, a, qmax, gs, acc_s, go, acc_o, gx, acc_x);
    else
        lsq_x<__nv_bfloat16>(ctx, nd, a, qmax, gs, acc_s, go, acc_o, gx, acc_x);
}
