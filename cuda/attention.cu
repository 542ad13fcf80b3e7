/* attention.cu - causal grouped-query attention with the document / padding mask on the GPU:
 * the flash-attention-2 forward and backward, memory linear in T (no [T, T] matrix exists).
 * Same semantics and node layout as the CPU twin (autograd/ops_attention.c): q [B,T,Hq,hd],
 * k/v [B,T,Hkv,hd], doc [B,T] i32 or NULL, query i sees key j iff j <= i and doc[j] == doc[i]
 * >= 0; a padding row (doc < 0) outputs zeros with lse -inf; saved[0] = lse [B,Hq,T] f32,
 * fp[0] = scale. Query head h reads kv head h / (Hq/Hkv).
 *
 * Two implementations of the same algorithm:
 *  - tensor cores (bf16 storage, hd 64 or 128): mma.sync m16n8k16 bf16 -> f32. Forward: a
 *    block owns 64 queries (16 per warp), loops over 64-key tiles with the online softmax
 *    (running max and sum in f32, exp2 domain). Backward: D = rowsum(dO*O); pass 1 owns 64
 *    queries and accumulates dQ over key tiles, recomputing P from lse; pass 2 owns 64 keys
 *    and accumulates dK, dV over the group's query heads and query tiles (64 for hd 64, 32
 *    for hd 128: register room) in a fixed order.
 *    P and dS are rounded to bf16 as mma operands (as flash-attention does); sums are f32.
 *    The streamed tiles (K/V, or Q/dO in pass 2) are double-buffered: the next tile's
 *    cp.async copies are in flight while the block does this one's math.
 *  - CUDA cores (any float storage, any hd <= 256): the same loops with one query (forward,
 *    pass 1) or one key (pass 2) per warp and one key / query per lane of a 32-wide tile.
 * Both are deterministic: every output element is accumulated by one thread in a fixed
 * order, no atomics. Tiles that the causal or document mask empties entirely are skipped:
 * a small table holds each 32-row tile's range of document ids (padding excluded).
 * Scratch (D and that table) comes from the step arena and is rewound before returning. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kTile = 32; /* rows per entry of the document-range table */

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"
/* gradient rule: beta 0 overwrites (the old value is never read), beta 1 adds */
template <typename T> __device__ __forceinline__ void put(T *p, int64_t i, float v, bool acc) {
    st(p, i, acc ? ld(p, i) + v : v);
}

/* ---- geometry ---------------------------------------------------------------------------- */

struct Geom {
    int B, T, Hq, Hkv, hd, grp;
    float scale;
    int ntiles; /* ceil(T / kTile): entries per batch row of the document-range table */
};

__device__ __forceinline__ int64_t q_at(const Geom &g, int b, int i, int h) { /* [B,T,Hq,hd] */
    return ((int64_t)(b * (int64_t)g.T + i) * g.Hq + h) * g.hd;
}
__device__ __forceinline__ int64_t kv_at(const Geom &g, int b, int j, int kh) { /* [B,T,Hkv,hd] */
    return ((int64_t)(b * (int64_t)g.T + j) * g.Hkv + kh) * g.hd;
}
__device__ __forceinline__ int64_t row_at(const Geom &g, int b, int h, int i) { /* [B,Hq,T] */
    return ((int64_t)b * g.Hq + h) * g.T + i;
}

/* document ranges: (min, max) of the non-negative ids of a run of rows; empty = (INT_MAX,
 * INT_MIN). Two runs can hold a visible pair only when their ranges meet. */
__device__ __forceinline__ int2 range_empty() {
    return make_int2(INT32_MAX, INT32_MIN);
}
__device__ __forceinline__ int2 range_join(int2 a, int2 b) {
    return make_int2(min(a.x, b.x), max(a.y, b.y));
}
__device__ __forceinline__ bool ranges_meet(int2 a, int2 b) {
    return a.x <= a.y && b.x <= b.y && a.x <= b.y && b.x <= a.y;
}
/* the range of rows [r0, r1) of batch row b from the table (r1 > r0) */
__device__ __forceinline__ int2 table_range(const int2 *tab, const Geom &g, int b, int r0, int r1) {
    int2 r = range_empty();
    int t1 = min((r1 - 1) / kTile, g.ntiles - 1);
    for (int t = r0 / kTile; t <= t1; t++) r = range_join(r, tab[(int64_t)b * g.ntiles + t]);
    return r;
}

/* tab[b, t] = range of doc[b, 32t .. 32t+31] */
__global__ void doc_ranges_kernel(const int32_t *doc, int2 *tab, Geom g) {
    int64_t n = (int64_t)g.B * g.ntiles;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int b = (int)(e / g.ntiles), t = (int)(e % g.ntiles);
        int2 r = range_empty();
        for (int i = t * kTile; i < min((t + 1) * kTile, g.T); i++) {
            int d = doc[(int64_t)b * g.T + i];
            if (d >= 0) r = make_int2(min(r.x, d), max(r.y, d));
        }
        tab[e] = r;
    }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- D = rowsum(dO * O) (f32 [B,Hq,T]; 0 on padding rows) -------------------------------- */

template <typename T>
__global__ void attn_rowdot_kernel(const T *go, const T *o, const int32_t *doc, float *D, Geom g) {
    int64_t rows = (int64_t)g.B * g.Hq * g.T;
    int lane = threadIdx.x & 31;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t r = w; r < rows; r += nw) { /* r = (b, h, i), D's layout */
        int b = (int)(r / ((int64_t)g.Hq * g.T)), h = (int)((r / g.T) % g.Hq), i = (int)(r % g.T);
        int64_t at = q_at(g, b, i, h);
        float s = 0.0f;
        for (int d = lane; d < g.hd; d += 32) s += ld(go, at + d) * ld(o, at + d);
        s = warp_sum(s);
        if (lane == 0) D[r] = (doc && doc[(int64_t)b * g.T + i] < 0) ? 0.0f : s;
    }
}

/* the same, one thread per row adding in d order with fmaf: the CUDA-core dP = dO.v is
 * summed the same way, so a row whose only visible key is its own (O = v exactly) gets
 * dP - D = 0 exactly, as on the CPU */
template <typename T>
__global__ void attn_rowdot_seq_kernel(const T *go, const T *o, const int32_t *doc, float *D,
                                       Geom g) {
    int64_t rows = (int64_t)g.B * g.Hq * g.T;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows;
         r += (int64_t)gridDim.x * blockDim.x) {
        int b = (int)(r / ((int64_t)g.Hq * g.T)), h = (int)((r / g.T) % g.Hq), i = (int)(r % g.T);
        int64_t at = q_at(g, b, i, h);
        float s = 0.0f;
        for (int d = 0; d < g.hd; d++) s = fmaf(ld(go, at + d), ld(o, at + d), s);
        D[r] = (doc && doc[(int64_t)b * g.T + i] < 0) ? 0.0f : s;
    }
}

/* =========================================================================================
 * CUDA-core path: any float storage, hd <= 256
 * ========================================================================================= */

constexpr int kGW = 8;   /* warps per block: queries (forward, pass 1) or keys (pass 2) */
constexpr int kMaxC = 8; /* columns per lane: hd <= 32 * kMaxC */
constexpr int kGenMaxHd = 32 * kMaxC;

/* odd row stride for tiles that lanes read row-wise (lane l reads row l): no bank conflicts */
__host__ __device__ __forceinline__ int odd_stride(int hd) {
    return hd | 1;
}

/* the block's rows [r0, r0 + kGW): the range of their documents (warp 0 computes it) */
__device__ __forceinline__ int2 block_doc_range(const int32_t *doc, const Geom &g, int b, int r0) {
    __shared__ int2 sh;
    if (threadIdx.x < 32) {
        int lane = threadIdx.x, r = r0 + lane;
        int d = (lane < kGW && r < g.T) ? doc[(int64_t)b * g.T + r] : -1;
        int lo = d >= 0 ? d : INT32_MAX, hi = d >= 0 ? d : INT32_MIN;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
            hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
        }
        if (lane == 0) sh = make_int2(lo, hi);
    }
    __syncthreads();
    return sh;
}

/* grid (Hq, B, ceil(T/kGW)); one query row per warp, 32 keys per tile (one per lane).
 * smem: K tile [32][odd], V tile [32][hd], q rows [kGW][hd], key docs [32] */
template <typename T>
__global__ void __launch_bounds__(kGW * 32)
    attn_fwd_generic(const T *q, const T *k, const T *v, const int32_t *doc, const int2 *tab, T *o,
                     float *lse, Geom g) {
    extern __shared__ float smem[];
    const int hd = g.hd, sk = odd_stride(hd);
    float *ks = smem, *vs = ks + 32 * sk, *qs = vs + 32 * hd;
    int *kdoc = (int *)(qs + kGW * hd);
    const int h = blockIdx.x, b = blockIdx.y, kh = h / g.grp;
    const int i0 = (gridDim.z - 1 - blockIdx.z) * kGW; /* the costliest (last) rows first */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, i = i0 + warp;
    const bool row_ok = i < g.T;
    const int di = (doc && row_ok) ? doc[(int64_t)b * g.T + i] : 0;
    const bool live = row_ok && di >= 0;
    for (int d = lane; d < hd; d += 32)
        qs[warp * hd + d] = row_ok ? ld(q, q_at(g, b, i, h) + d) : 0.0f;
    int2 qr = doc ? block_doc_range(doc, g, b, i0) : range_empty();
    const int i_last = min(i0 + kGW, g.T) - 1;

    float m = -INFINITY, l = 0.0f, acc[kMaxC];
#pragma unroll
    for (int c = 0; c < kMaxC; c++) acc[c] = 0.0f;
    for (int j0 = 0; j0 <= i_last; j0 += 32) {
        if (doc && !ranges_meet(qr, table_range(tab, g, b, j0, j0 + 32))) continue; /* uniform */
        __syncthreads(); /* the previous tile's readers are done */
        for (int e = threadIdx.x; e < 32 * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            bool in = j < g.T;
            ks[jj * sk + d] = in ? ld(k, kv_at(g, b, j, kh) + d) : 0.0f;
            vs[jj * hd + d] = in ? ld(v, kv_at(g, b, j, kh) + d) : 0.0f;
        }
        if (doc && threadIdx.x < 32)
            kdoc[threadIdx.x] =
                j0 + (int)threadIdx.x < g.T ? doc[(int64_t)b * g.T + j0 + threadIdx.x] : -1;
        __syncthreads();
        if (!live || j0 > i) continue; /* warp-uniform */
        const int j = j0 + lane;
        const bool vis = j <= i && (!doc || kdoc[lane] == di);
        float s = -INFINITY;
        if (vis) {
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot = fmaf(qs[warp * hd + d], ks[lane * sk + d], dot);
            s = dot * g.scale;
        }
        const float mnew = fmaxf(m, warp_max(s));
        if (mnew == -INFINITY) continue;    /* nothing visible yet */
        const float alpha = expf(m - mnew); /* m = -inf: 0 */
        const float p = vis ? expf(s - mnew) : 0.0f;
        l = l * alpha + warp_sum(p);
#pragma unroll
        for (int c = 0; c < kMaxC; c++) acc[c] *= alpha;
        for (int jj = 0; jj < 32; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            if (pj == 0.0f) continue; /* the same pj in every lane: uniform */
#pragma unroll
            for (int c = 0; c < kMaxC; c++)
                if (c * 32 + lane < hd) acc[c] = fmaf(pj, vs[jj * hd + c * 32 + lane], acc[c]);
        }
        m = mnew;
    }
    if (!row_ok) return;
    const int64_t at = q_at(g, b, i, h);
    const bool any = l > 0.0f; /* false only for padding rows: the diagonal is always seen */
#pragma unroll
    for (int c = 0; c < kMaxC; c++)
        if (c * 32 + lane < hd) st(o, at + c * 32 + lane, any ? acc[c] / l : 0.0f);
    if (lane == 0) lse[row_at(g, b, h, i)] = any ? m + logf(l) : -INFINITY;
}

/* pass 1: dQ. grid (Hq, B, ceil(T/kGW)); one query per warp, 32 keys per tile.
 * smem: K tile [32][odd], V tile [32][odd], q rows [kGW][hd], dO rows [kGW][hd], key docs */
template <typename T>
__global__ void __launch_bounds__(kGW * 32)
    attn_dq_generic(const T *q, const T *k, const T *v, const int32_t *doc, const int2 *tab,
                    const T *go, const float *lse, const float *D, T *gq, bool acc_q, Geom g) {
    extern __shared__ float smem[];
    const int hd = g.hd, sk = odd_stride(hd);
    float *ks = smem, *vs = ks + 32 * sk, *qs = vs + 32 * sk, *dos = qs + kGW * hd;
    int *kdoc = (int *)(dos + kGW * hd);
    const int h = blockIdx.x, b = blockIdx.y, kh = h / g.grp;
    const int i0 = (gridDim.z - 1 - blockIdx.z) * kGW;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, i = i0 + warp;
    const bool row_ok = i < g.T;
    const int di = (doc && row_ok) ? doc[(int64_t)b * g.T + i] : 0;
    const bool live = row_ok && di >= 0;
    for (int d = lane; d < hd; d += 32) {
        qs[warp * hd + d] = row_ok ? ld(q, q_at(g, b, i, h) + d) : 0.0f;
        dos[warp * hd + d] = row_ok ? ld(go, q_at(g, b, i, h) + d) : 0.0f;
    }
    const float lse_i = live ? lse[row_at(g, b, h, i)] : 0.0f;
    const float D_i = live ? D[row_at(g, b, h, i)] : 0.0f;
    int2 qr = doc ? block_doc_range(doc, g, b, i0) : range_empty();
    const int i_last = min(i0 + kGW, g.T) - 1;

    float acc[kMaxC];
#pragma unroll
    for (int c = 0; c < kMaxC; c++) acc[c] = 0.0f;
    for (int j0 = 0; j0 <= i_last; j0 += 32) {
        if (doc && !ranges_meet(qr, table_range(tab, g, b, j0, j0 + 32))) continue;
        __syncthreads();
        for (int e = threadIdx.x; e < 32 * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            bool in = j < g.T;
            ks[jj * sk + d] = in ? ld(k, kv_at(g, b, j, kh) + d) : 0.0f;
            vs[jj * sk + d] = in ? ld(v, kv_at(g, b, j, kh) + d) : 0.0f;
        }
        if (doc && threadIdx.x < 32)
            kdoc[threadIdx.x] =
                j0 + (int)threadIdx.x < g.T ? doc[(int64_t)b * g.T + j0 + threadIdx.x] : -1;
        __syncthreads();
        if (!live || j0 > i) continue;
        const int j = j0 + lane;
        const bool vis = j <= i && (!doc || kdoc[lane] == di);
        float ds = 0.0f;
        if (vis) {
            float sq = 0.0f, sv = 0.0f;
            for (int d = 0; d < hd; d++) {
                sq = fmaf(qs[warp * hd + d], ks[lane * sk + d], sq);
                sv = fmaf(dos[warp * hd + d], vs[lane * sk + d], sv);
            }
            float p = expf(sq * g.scale - lse_i);
            ds = p * (sv - D_i);
        }
        for (int jj = 0; jj < 32; jj++) {
            float dj = __shfl_sync(0xffffffffu, ds, jj);
            if (dj == 0.0f) continue;
#pragma unroll
            for (int c = 0; c < kMaxC; c++)
                if (c * 32 + lane < hd) acc[c] = fmaf(dj, ks[jj * sk + c * 32 + lane], acc[c]);
        }
    }
    if (!row_ok) return;
    const int64_t at = q_at(g, b, i, h);
#pragma unroll
    for (int c = 0; c < kMaxC; c++)
        if (c * 32 + lane < hd) put(gq, at + c * 32 + lane, g.scale * acc[c], acc_q);
}

/* pass 2: dK and dV. grid (Hkv, B, ceil(T/kGW)); one key per warp; for each query head of
 * the group, 32 queries per tile (one per lane), in a fixed order.
 * smem: Q tile [32][odd], dO tile [32][odd], k rows [kGW][hd], v rows [kGW][hd], lse/D/doc
 * of the query tile [32] each */
template <typename T>
__global__ void __launch_bounds__(kGW * 32)
    attn_dkv_generic(const T *q, const T *k, const T *v, const int32_t *doc, const int2 *tab,
                     const T *go, const float *lse, const float *D, T *gk, T *gv, bool need_k,
                     bool need_v, bool acc_k, bool acc_v, Geom g) {
    extern __shared__ float smem[];
    const int hd = g.hd, sq = odd_stride(hd);
    float *qs = smem, *dos = qs + 32 * sq, *kr = dos + 32 * sq, *vr = kr + kGW * hd;
    float *qlse = vr + kGW * hd, *qD = qlse + 32;
    int *qdoc = (int *)(qD + 32);
    const int kh = blockIdx.x, b = blockIdx.y;
    const int j0 = blockIdx.z * kGW; /* the costliest (first) keys first */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, j = j0 + warp;
    const bool key_ok = j < g.T;
    const int dj = (doc && key_ok) ? doc[(int64_t)b * g.T + j] : 0;
    const bool live = key_ok && dj >= 0; /* a padding key is seen by no query */
    for (int d = lane; d < hd; d += 32) {
        kr[warp * hd + d] = key_ok ? ld(k, kv_at(g, b, j, kh) + d) : 0.0f;
        vr[warp * hd + d] = key_ok ? ld(v, kv_at(g, b, j, kh) + d) : 0.0f;
    }
    int2 kr_range = doc ? block_doc_range(doc, g, b, j0) : range_empty();

    float ak[kMaxC], av[kMaxC];
#pragma unroll
    for (int c = 0; c < kMaxC; c++) ak[c] = av[c] = 0.0f;
    for (int h = kh * g.grp; h < (kh + 1) * g.grp; h++) {
        for (int i0 = (j0 / 32) * 32; i0 < g.T; i0 += 32) {
            if (doc && !ranges_meet(kr_range, table_range(tab, g, b, i0, i0 + 32))) continue;
            __syncthreads();
            for (int e = threadIdx.x; e < 32 * hd; e += blockDim.x) {
                int ii = e / hd, d = e % hd, i = i0 + ii;
                bool in = i < g.T;
                qs[ii * sq + d] = in ? ld(q, q_at(g, b, i, h) + d) : 0.0f;
                dos[ii * sq + d] = in ? ld(go, q_at(g, b, i, h) + d) : 0.0f;
            }
            if (threadIdx.x < 32) {
                int i = i0 + threadIdx.x;
                bool in = i < g.T;
                qlse[threadIdx.x] = in ? lse[row_at(g, b, h, i)] : 0.0f;
                qD[threadIdx.x] = in ? D[row_at(g, b, h, i)] : 0.0f;
                qdoc[threadIdx.x] = (doc && in) ? doc[(int64_t)b * g.T + i] : (in ? 0 : -1);
            }
            __syncthreads();
            if (!live || i0 + 31 < j) continue;
            const int i = i0 + lane;
            const bool vis = i >= j && i < g.T && (!doc || qdoc[lane] == dj);
            float p = 0.0f, ds = 0.0f;
            if (vis) {
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < hd; d++) {
                    s = fmaf(qs[lane * sq + d], kr[warp * hd + d], s);
                    dp = fmaf(dos[lane * sq + d], vr[warp * hd + d], dp);
                }
                p = expf(s * g.scale - qlse[lane]);
                ds = p * (dp - qD[lane]);
            }
            for (int ii = 0; ii < 32; ii++) {
                float pi = __shfl_sync(0xffffffffu, p, ii), di = __shfl_sync(0xffffffffu, ds, ii);
                if (pi == 0.0f && di == 0.0f) continue;
#pragma unroll
                for (int c = 0; c < kMaxC; c++)
                    if (c * 32 + lane < hd) {
                        av[c] = fmaf(pi, dos[ii * sq + c * 32 + lane], av[c]);
                        ak[c] = fmaf(di, qs[ii * sq + c * 32 + lane], ak[c]);
                    }
            }
        }
    }
    if (!key_ok) return;
    const int64_t at = kv_at(g, b, j, kh);
    /* dK before dV, by the same thread: k and v may be one tensor (then dV adds to dK) */
#pragma unroll
    for (int c = 0; c < kMaxC; c++)
        if (c * 32 + lane < hd) {
            if (need_k) put(gk, at + c * 32 + lane, g.scale * ak[c], acc_k);
            if (need_v) put(gv, at + c * 32 + lane, av[c], acc_v);
        }
}

/* =========================================================================================
 * Tensor-core path: bf16 storage, hd 64 or 128, mma.sync.m16n8k16 (f32 accumulators)
 * Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
 *   A 16x16 row-major: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
 *   B 16x8 (k x n):    b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g)
 *   C 16x8:            c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
 * The lower index of a pair sits in the low 16 bits. A C tile pair (n 0..7, 8..15) is the A
 * fragment of the next product, so P and dS never leave registers. B operands whose k runs
 * along the rows of a row-major tile (V in P V, K in dS K, dO and Q in pass 2) come from
 * ldmatrix .trans, which hands each thread (k 2t..2t+1, n g) of an 8x8 block. Shared-memory
 * tiles are padded by 8 bf16 per row: fragment loads are then free of bank conflicts.
 * ========================================================================================= */

constexpr int kMW = 4;        /* warps per block */
constexpr int kBQ = 16 * kMW; /* forward / pass 1: queries per block */
constexpr int kBK = 64;       /* forward / pass 1: keys per tile; pass 2: keys per block */

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi); /* .x = lo: the low half */
    return *reinterpret_cast<uint32_t *>(&h);
}

/* a 32-bit word (two bf16) of a shared tile with `ld` bf16 per row */
__device__ __forceinline__ uint32_t w32(const __nv_bfloat16 *s, int ld, int row, int col) {
    return *reinterpret_cast<const uint32_t *>(s + row * ld + col);
}

/* the A fragment of rows r0..r0+15, columns c0..c0+15 of a row-major shared tile */
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const __nv_bfloat16 *s, int ld, int r0,
                                       int c0, int lane) {
    int g = lane >> 2, t = lane & 3;
    a[0] = w32(s, ld, r0 + g, c0 + 2 * t);
    a[1] = w32(s, ld, r0 + g + 8, c0 + 2 * t);
    a[2] = w32(s, ld, r0 + g, c0 + 2 * t + 8);
    a[3] = w32(s, ld, r0 + g + 8, c0 + 2 * t + 8);
}
/* the B fragment (k c0..c0+15, n r0..r0+7) of a tile stored n-major: s[n][k] */
__device__ __forceinline__ void frag_b(uint32_t &b0, uint32_t &b1, const __nv_bfloat16 *s, int ld,
                                       int r0, int c0, int lane) {
    int g = lane >> 2, t = lane & 3;
    b0 = w32(s, ld, r0 + g, c0 + 2 * t);
    b1 = w32(s, ld, r0 + g, c0 + 2 * t + 8);
}

/* B fragments of two n-tiles (n n0..n0+7 and n0+8..n0+15) for k k0..k0+15 of a row-major
 * tile s[k][n]: b[0], b[1] of the first n-tile, b[2], b[3] of the second. Lanes 8m..8m+7 give
 * the row addresses of 8x8 block m: (k +0 / +8) x (n +0 / +8). */
__device__ __forceinline__ void frag_b_trans(uint32_t (&b)[4], const __nv_bfloat16 *s, int ld,
                                             int k0, int n0, int lane) {
    int row = k0 + (lane & 7) + ((lane >> 3) & 1) * 8, col = n0 + (lane >> 4) * 8;
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(s + row * ld + col);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                 : "r"(addr));
}

/* rows [r0, r0+rows) of a [.., heads, HD] bf16 tensor at head h, into a shared tile [rows][ld]
 * (16-byte copies; rows past T are zero) */
template <int HD>
__device__ __forceinline__ void load_rows(__nv_bfloat16 *s, int ld, const __nv_bfloat16 *x,
                                          const Geom &g, int b, int heads, int h, int r0,
                                          int rows) {
    constexpr int CH = HD / 8; /* 16-byte chunks per row */
    for (int e = threadIdx.x; e < rows * CH; e += blockDim.x) {
        int r = e / CH, c = e % CH, i = r0 + r;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (i < g.T)
            val = *reinterpret_cast<const uint4 *>(x + (((int64_t)b * g.T + i) * heads + h) * HD +
                                                   c * 8);
        *reinterpret_cast<uint4 *>(s + r * ld + c * 8) = val;
    }
}

__device__ __forceinline__ void load_docs(int *sdoc, const int32_t *doc, const Geom &g, int b,
                                          int r0, int rows) {
    for (int e = threadIdx.x; e < rows; e += blockDim.x) {
        int i = r0 + e;
        sdoc[e] = i < g.T ? (doc ? doc[(int64_t)b * g.T + i] : 0) : -1;
    }
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* rows [r0, r0+rows) as load_rows, but through cp.async (16 bytes, L2 only): the copies land
 * while the block computes on the other buffer; cp_wait + __syncthreads make them visible.
 * Rows past T are zero-filled with ordinary stores (into the same idle buffer). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
/* every group but the newest one has landed (this thread's copies) */
__device__ __forceinline__ void cp_wait_but_newest() {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}
__device__ __forceinline__ void cp_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

template <int HD>
__device__ __forceinline__ void cp_rows(__nv_bfloat16 *s, int ld, const __nv_bfloat16 *x,
                                        const Geom &g, int b, int heads, int h, int r0, int rows) {
    constexpr int CH = HD / 8;
    for (int e = threadIdx.x; e < rows * CH; e += blockDim.x) {
        int r = e / CH, c = e % CH, i = r0 + r;
        if (i < g.T)
            cp_async16(s + r * ld + c * 8, x + (((int64_t)b * g.T + i) * heads + h) * HD + c * 8);
        else
            *reinterpret_cast<uint4 *>(s + r * ld + c * 8) = make_uint4(0, 0, 0, 0);
    }
}

template <int HD> struct MmaSmem {
    static constexpr int LD = HD + 8;              /* row-major tiles [rows][HD] */
    static constexpr int BQ2 = HD <= 64 ? 64 : 32; /* pass 2: queries per tile (registers) */
    static constexpr int TILE = kBK * LD;          /* elements of a 64-row tile */
    /* K and V twice (double buffer; Q passes through the second before the loop), key docs
     * twice */
    static constexpr size_t fwd = (size_t)(4 * TILE) * 2 + 2 * kBK * 4;
    /* pass 1 double-buffers K / V at hd 64; at hd 128 one buffer lets 3 blocks share an SM */
    static constexpr int DQ_BUFS = HD <= 64 ? 2 : 1;
    /* Q, dO; K and V once or twice; key docs as often */
    static constexpr size_t dq =
        (size_t)(2 * kBQ * LD + DQ_BUFS * 2 * TILE) * 2 + DQ_BUFS * kBK * 4;
    /* K, V; Q and dO tiles of BQ2 twice; lse, D, docs of the query tile twice */
    static constexpr size_t dkv = (size_t)(2 * TILE + 4 * BQ2 * LD) * 2 + 2 * 3 * BQ2 * 4;
};

/* acc[n] += A B over HD / 8 n-tiles, B from a row-major tile s[k][n] at rows k0..k0+15 */
template <int HD>
__device__ __forceinline__ void mma_rows_b(float (&acc)[HD / 8][4], const uint32_t (&a)[4],
                                           const __nv_bfloat16 *s, int ld, int k0, int lane) {
#pragma unroll
    for (int n = 0; n < HD / 16; n++) {
        uint32_t bb[4];
        frag_b_trans(bb, s, ld, k0, n * 16, lane);
        mma16816(acc[2 * n], a, bb[0], bb[1]);
        mma16816(acc[2 * n + 1], a, bb[2], bb[3]);
    }
}

/* The key-tile loop of the forward and pass 1: tiles the document table proves empty are
 * skipped (a block-uniform test); the next tile's copies are in flight during this one's
 * math. next_key_tile returns the first tile >= k0 that is not skipped (> i_last: none). */
__device__ __forceinline__ int next_key_tile(int k0, int i_last, const int32_t *doc,
                                             const int2 *tab, const Geom &g, int b, int2 qr) {
    while (k0 <= i_last && doc && !ranges_meet(qr, table_range(tab, g, b, k0, min(k0 + kBK, g.T))))
        k0 += kBK;
    return k0;
}

/* forward. grid (Hq, B, ceil(T/64)). The kernel is latency-bound (mma results feed the next
 * instruction): blocks per SM is what speeds it up, so registers are capped to fit 3 (hd 128) or
 * 4 (hd 64) blocks and Q, needed only as register fragments, borrows the second K/V buffer. */
template <int HD> constexpr int fwd_min_blocks() {
    return HD <= 64 ? 4 : 3;
}
template <int HD>
__global__ void __launch_bounds__(kMW * 32, fwd_min_blocks<HD>())
    attn_fwd_mma(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                 const int32_t *doc, const int2 *tab, __nv_bfloat16 *o, float *lse, Geom g) {
    using S = MmaSmem<HD>;
    static_assert(kBQ <= kBK, "Q must fit in a K/V buffer");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *kv = reinterpret_cast<__nv_bfloat16 *>(smem_raw); /* [buf][K, V][64][LD] */
    __nv_bfloat16 *qs = kv + 2 * S::TILE; /* the second buffer, until the loop starts */
    int *kdoc0 = reinterpret_cast<int *>(kv + 4 * S::TILE); /* [buf][64] */
    const int h = blockIdx.x, b = blockIdx.y, kh = h / g.grp;
    const int i0 = (gridDim.z - 1 - blockIdx.z) * kBQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    const int ra = i0 + warp * 16 + gr, rb = ra + 8; /* this thread's two query rows */
    const int da = ra < g.T ? (doc ? doc[(int64_t)b * g.T + ra] : 0) : -1;
    const int db = rb < g.T ? (doc ? doc[(int64_t)b * g.T + rb] : 0) : -1;
    const float sl2 = g.scale * kLog2e;

    int2 qr = range_empty();
    if (doc) qr = table_range(tab, g, b, i0, min(i0 + kBQ, g.T));
    const int i_last = min(i0 + kBQ, g.T) - 1, w_last = i0 + warp * 16 + 15;
    const bool warp_live = i0 + warp * 16 < g.T;
    int k0 = next_key_tile(0, i_last, doc, tab, g, b, qr);
    if (k0 <= i_last) {
        cp_rows<HD>(kv, S::LD, k, g, b, g.Hkv, kh, k0, kBK);
        cp_rows<HD>(kv + S::TILE, S::LD, v, g, b, g.Hkv, kh, k0, kBK);
        load_docs(kdoc0, doc, g, b, k0, kBK);
    }
    cp_commit();
    load_rows<HD>(qs, S::LD, q, g, b, g.Hq, h, i0, kBQ);
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++) frag_a(qf[kc], qs, S::LD, warp * 16, kc * 16, lane);
    __syncthreads(); /* every warp has its Q fragments: the second buffer is free */

    float oacc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

    for (int buf = 0; k0 <= i_last; buf ^= 1) {
        const int kn = next_key_tile(k0 + kBK, i_last, doc, tab, g, b, qr);
        if (kn <= i_last) { /* the other buffer: its readers passed the last barrier */
            __nv_bfloat16 *nk = kv + (buf ^ 1) * 2 * S::TILE;
            cp_rows<HD>(nk, S::LD, k, g, b, g.Hkv, kh, kn, kBK);
            cp_rows<HD>(nk + S::TILE, S::LD, v, g, b, g.Hkv, kh, kn, kBK);
            load_docs(kdoc0 + (buf ^ 1) * kBK, doc, g, b, kn, kBK);
        }
        cp_commit();
        cp_wait_but_newest();
        __syncthreads();
        const __nv_bfloat16 *ks = kv + buf * 2 * S::TILE, *vs = ks + S::TILE;
        const int *kdoc = kdoc0 + buf * kBK;
        if (k0 <= w_last && warp_live) { /* warp-uniform */
            float s[kBK / 8][4];
#pragma unroll
            for (int n = 0; n < kBK / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc++)
#pragma unroll
                for (int n = 0; n < kBK / 8; n++) {
                    uint32_t b0, b1;
                    frag_b(b0, b1, ks, S::LD, n * 8, kc * 16, lane);
                    mma16816(s[n], qf[kc], b0, b1);
                }
            /* mask, scale to the exp2 domain, row maxima. A tile wholly below the diagonal
             * of this warp's rows, without documents, has nothing to mask (warp-uniform) */
            float mxa = -INFINITY, mxb = -INFINITY;
            if (!doc && k0 + kBK - 1 <= i0 + warp * 16 && w_last < g.T) {
#pragma unroll
                for (int n = 0; n < kBK / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float x = s[n][e] * sl2;
                        s[n][e] = x;
                        if (e < 2)
                            mxa = fmaxf(mxa, x);
                        else
                            mxb = fmaxf(mxb, x);
                    }
            } else {
#pragma unroll
                for (int n = 0; n < kBK / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int jj = n * 8 + 2 * tq + (e & 1), j = k0 + jj;
                        int ri = e < 2 ? ra : rb, dr = e < 2 ? da : db;
                        bool vis = j <= ri && dr >= 0 && kdoc[jj] == dr;
                        float x = vis ? s[n][e] * sl2 : -INFINITY;
                        s[n][e] = x;
                        if (e < 2)
                            mxa = fmaxf(mxa, x);
                        else
                            mxb = fmaxf(mxb, x);
                    }
            }
            const float mna = fmaxf(ma, quad_max(mxa)), mnb = fmaxf(mb, quad_max(mxb));
            const float ua = mna == -INFINITY ? 0.0f : mna, ub = mnb == -INFINITY ? 0.0f : mnb;
            const float alpha_a = exp2f(ma - ua), alpha_b = exp2f(mb - ub);
            ma = mna;
            mb = mnb;
            float suma = 0.0f, sumb = 0.0f;
#pragma unroll
            for (int n = 0; n < kBK / 8; n++) {
                s[n][0] = exp2f(s[n][0] - ua);
                s[n][1] = exp2f(s[n][1] - ua);
                s[n][2] = exp2f(s[n][2] - ub);
                s[n][3] = exp2f(s[n][3] - ub);
                suma += s[n][0] + s[n][1];
                sumb += s[n][2] + s[n][3];
            }
            la = la * alpha_a + suma;
            lb = lb * alpha_b + sumb;
#pragma unroll
            for (int n = 0; n < HD / 8; n++) {
                oacc[n][0] *= alpha_a;
                oacc[n][1] *= alpha_a;
                oacc[n][2] *= alpha_b;
                oacc[n][3] *= alpha_b;
            }
            /* O += P V: P from the S accumulators, V from shared memory */
#pragma unroll
            for (int kc = 0; kc < kBK / 16; kc++) {
                uint32_t a[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]),
                                 pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                                 pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                 pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
                mma_rows_b<HD>(oacc, a, vs, S::LD, kc * 16, lane);
            }
        }
        __syncthreads(); /* this buffer is free for the copies two tiles on */
        k0 = kn;
    }
    la = quad_sum(la);
    lb = quad_sum(lb);
    const float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        int d = n * 8 + 2 * tq;
        if (ra < g.T)
            *reinterpret_cast<__nv_bfloat162 *>(o + q_at(g, b, ra, h) + d) =
                __floats2bfloat162_rn(oacc[n][0] * ia, oacc[n][1] * ia);
        if (rb < g.T)
            *reinterpret_cast<__nv_bfloat162 *>(o + q_at(g, b, rb, h) + d) =
                __floats2bfloat162_rn(oacc[n][2] * ib, oacc[n][3] * ib);
    }
    if (tq == 0) {
        if (ra < g.T) lse[row_at(g, b, h, ra)] = la > 0.0f ? ma * kLn2 + logf(la) : -INFINITY;
        if (rb < g.T) lse[row_at(g, b, h, rb)] = lb > 0.0f ? mb * kLn2 + logf(lb) : -INFINITY;
    }
}

/* pass 1: dQ. grid (Hq, B, ceil(T/64)). Latency-bound like the forward: registers capped for 3
 * blocks per SM; at hd 128 the K/V tiles are single-buffered for the shared memory (the
 * other blocks on the SM hide the copies). */
template <int HD>
__global__ void __launch_bounds__(kMW * 32, 3)
    attn_dq_mma(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                const int32_t *doc, const int2 *tab, const __nv_bfloat16 *go, const float *lse,
                const float *D, __nv_bfloat16 *gq, bool acc_q, Geom g) {
    using S = MmaSmem<HD>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *qs = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *dos = qs + kBQ * S::LD, *kv = dos + kBQ * S::LD; /* kv: [buf][K, V] */
    int *kdoc0 = reinterpret_cast<int *>(kv + S::DQ_BUFS * 2 * S::TILE);
    const int h = blockIdx.x, b = blockIdx.y, kh = h / g.grp;
    const int i0 = (gridDim.z - 1 - blockIdx.z) * kBQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    const int ra = i0 + warp * 16 + gr, rb = ra + 8;
    const int da = ra < g.T ? (doc ? doc[(int64_t)b * g.T + ra] : 0) : -1;
    const int db = rb < g.T ? (doc ? doc[(int64_t)b * g.T + rb] : 0) : -1;
    const float sl2 = g.scale * kLog2e;
    /* lse in the exp2 domain; rows that see nothing are masked before these are used */
    const float La = da >= 0 ? lse[row_at(g, b, h, ra)] * kLog2e : 0.0f;
    const float Lb = db >= 0 ? lse[row_at(g, b, h, rb)] * kLog2e : 0.0f;
    const float Da = da >= 0 ? D[row_at(g, b, h, ra)] : 0.0f;
    const float Db = db >= 0 ? D[row_at(g, b, h, rb)] : 0.0f;

    int2 qr = range_empty();
    if (doc) qr = table_range(tab, g, b, i0, min(i0 + kBQ, g.T));
    const int i_last = min(i0 + kBQ, g.T) - 1, w_last = i0 + warp * 16 + 15;
    const bool warp_live = i0 + warp * 16 < g.T;
    int k0 = next_key_tile(0, i_last, doc, tab, g, b, qr);
    if (k0 <= i_last) {
        cp_rows<HD>(kv, S::LD, k, g, b, g.Hkv, kh, k0, kBK);
        cp_rows<HD>(kv + S::TILE, S::LD, v, g, b, g.Hkv, kh, k0, kBK);
        load_docs(kdoc0, doc, g, b, k0, kBK);
    }
    cp_commit();
    load_rows<HD>(qs, S::LD, q, g, b, g.Hq, h, i0, kBQ);
    load_rows<HD>(dos, S::LD, go, g, b, g.Hq, h, i0, kBQ);
    float dq[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    constexpr bool kDouble = S::DQ_BUFS == 2;
    for (int buf = 0; k0 <= i_last; buf = kDouble ? buf ^ 1 : 0) {
        const int kn = next_key_tile(k0 + kBK, i_last, doc, tab, g, b, qr);
        if (kDouble && kn <= i_last) {
            __nv_bfloat16 *nk = kv + (buf ^ 1) * 2 * S::TILE;
            cp_rows<HD>(nk, S::LD, k, g, b, g.Hkv, kh, kn, kBK);
            cp_rows<HD>(nk + S::TILE, S::LD, v, g, b, g.Hkv, kh, kn, kBK);
            load_docs(kdoc0 + (buf ^ 1) * kBK, doc, g, b, kn, kBK);
        }
        cp_commit();
        if (kDouble)
            cp_wait_but_newest();
        else
            cp_wait_all();
        __syncthreads();
        const __nv_bfloat16 *ks = kv + buf * 2 * S::TILE, *vs = ks + S::TILE;
        const int *kdoc = kdoc0 + buf * kBK;
        if (k0 <= w_last && warp_live) {
            float s[kBK / 8][4], dp[kBK / 8][4];
#pragma unroll
            for (int n = 0; n < kBK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc++) {
                uint32_t aq[4], ado[4];
                frag_a(aq, qs, S::LD, warp * 16, kc * 16, lane);
                frag_a(ado, dos, S::LD, warp * 16, kc * 16, lane);
#pragma unroll
                for (int n = 0; n < kBK / 8; n++) {
                    uint32_t b0, b1;
                    frag_b(b0, b1, ks, S::LD, n * 8, kc * 16, lane);
                    mma16816(s[n], aq, b0, b1);
                    frag_b(b0, b1, vs, S::LD, n * 8, kc * 16, lane);
                    mma16816(dp[n], ado, b0, b1);
                }
            }
            /* dS = P (dP - D), P = exp2(S scale log2e - lse log2e) where visible (all of a
             * tile below this warp's diagonal without documents) */
            const bool full = !doc && k0 + kBK - 1 <= i0 + warp * 16 && w_last < g.T;
#pragma unroll
            for (int n = 0; n < kBK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int jj = n * 8 + 2 * tq + (e & 1), j = k0 + jj;
                    int ri = e < 2 ? ra : rb, dr = e < 2 ? da : db;
                    bool vis = full || (j <= ri && dr >= 0 && kdoc[jj] == dr);
                    float p = vis ? exp2f(s[n][e] * sl2 - (e < 2 ? La : Lb)) : 0.0f;
                    s[n][e] = p * (dp[n][e] - (e < 2 ? Da : Db));
                }
#pragma unroll
            for (int kc = 0; kc < kBK / 16; kc++) {
                uint32_t a[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]),
                                 pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                                 pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                 pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
                mma_rows_b<HD>(dq, a, ks, S::LD, kc * 16, lane);
            }
        }
        __syncthreads();
        if (!kDouble && kn <= i_last) { /* the one buffer is free again: the next tile */
            cp_rows<HD>(kv, S::LD, k, g, b, g.Hkv, kh, kn, kBK);
            cp_rows<HD>(kv + S::TILE, S::LD, v, g, b, g.Hkv, kh, kn, kBK);
            load_docs(kdoc0, doc, g, b, kn, kBK);
        }
        k0 = kn;
    }
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        int d = n * 8 + 2 * tq;
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            int r = hr ? rb : ra;
            if (r >= g.T) continue;
            int64_t at = q_at(g, b, r, h) + d;
            put(gq, at, g.scale * dq[n][2 * hr], acc_q);
            put(gq, at + 1, g.scale * dq[n][2 * hr + 1], acc_q);
        }
    }
}

/* the query tiles of pass 2, in order: (head h of the group, tile i0), heads outer; tiles the
 * document table proves empty are skipped. Returns false past the last one. */
template <int BQ2>
__device__ __forceinline__ bool next_query_tile(int &h, int &i0, int h_end, int i_start,
                                                const int32_t *doc, const int2 *tab, const Geom &g,
                                                int b, int2 kr) {
    for (;;) {
        if (i0 >= g.T) {
            if (++h >= h_end) return false;
            i0 = i_start;
        }
        if (!doc || ranges_meet(kr, table_range(tab, g, b, i0, min(i0 + BQ2, g.T)))) return true;
        i0 += BQ2;
    }
}

/* pass 2: dK, dV. grid (Hkv, B, ceil(T/64)); 16 keys per warp; the group's query heads and
 * query tiles of BQ2 in a fixed order */
template <int HD> constexpr int dkv_min_blocks() { /* hd 128 holds dK, dV: no room for 3 */
    return HD <= 64 ? 3 : 2;
}
template <int HD>
__global__ void __launch_bounds__(kMW * 32, dkv_min_blocks<HD>())
    attn_dkv_mma(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                 const int32_t *doc, const int2 *tab, const __nv_bfloat16 *go, const float *lse,
                 const float *D, __nv_bfloat16 *gk, __nv_bfloat16 *gv, bool need_k, bool need_v,
                 bool acc_k, bool acc_v, Geom g) {
    using S = MmaSmem<HD>;
    constexpr int kBQ2 = S::BQ2, QTILE = kBQ2 * S::LD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *ks = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *vs = ks + S::TILE, *qd = vs + S::TILE;    /* qd: [buf][Q, dO][BQ2][LD] */
    float *side = reinterpret_cast<float *>(qd + 4 * QTILE); /* [buf][lse, D, doc][BQ2] */
    const int kh = blockIdx.x, b = blockIdx.y;
    const int k0 = blockIdx.z * kBK; /* the costliest (first) keys first */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    const int ja = k0 + warp * 16 + gr, jb = ja + 8; /* this thread's two key rows */
    const int da = ja < g.T ? (doc ? doc[(int64_t)b * g.T + ja] : 0) : -1;
    const int db = jb < g.T ? (doc ? doc[(int64_t)b * g.T + jb] : 0) : -1;
    const float sl2 = g.scale * kLog2e;
    const int w_first = k0 + warp * 16;

    int2 kr = range_empty();
    if (doc) kr = table_range(tab, g, b, k0, min(k0 + kBK, g.T));
    const int h_end = (kh + 1) * g.grp, i_start = (k0 / kBQ2) * kBQ2;
    /* stages the query tile (h, i0) into buffer nb */
    auto stage = [&](int h, int i0, int nb) {
        __nv_bfloat16 *dst = qd + nb * 2 * QTILE;
        cp_rows<HD>(dst, S::LD, q, g, b, g.Hq, h, i0, kBQ2);
        cp_rows<HD>(dst + QTILE, S::LD, go, g, b, g.Hq, h, i0, kBQ2);
        float *sl = side + nb * 3 * kBQ2;
        for (int e = threadIdx.x; e < kBQ2; e += blockDim.x) {
            int i = i0 + e;
            int di = i < g.T ? (doc ? doc[(int64_t)b * g.T + i] : 0) : -1;
            sl[e] = di >= 0 ? lse[row_at(g, b, h, i)] * kLog2e : 0.0f;
            sl[kBQ2 + e] = di >= 0 ? D[row_at(g, b, h, i)] : 0.0f;
            sl[2 * kBQ2 + e] = __int_as_float(di);
        }
    };
    int h = kh * g.grp, i0 = i_start;
    bool have = next_query_tile<kBQ2>(h, i0, h_end, i_start, doc, tab, g, b, kr);
    if (have) stage(h, i0, 0);
    cp_commit();
    load_rows<HD>(ks, S::LD, k, g, b, g.Hkv, kh, k0, kBK);
    load_rows<HD>(vs, S::LD, v, g, b, g.Hkv, kh, k0, kBK);
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;

    for (int buf = 0; have; buf ^= 1) {
        int hn = h, in = i0 + kBQ2;
        const bool more = next_query_tile<kBQ2>(hn, in, h_end, i_start, doc, tab, g, b, kr);
        if (more) stage(hn, in, buf ^ 1);
        cp_commit();
        cp_wait_but_newest();
        __syncthreads();
        const __nv_bfloat16 *qs = qd + buf * 2 * QTILE, *dos = qs + QTILE;
        const float *qlse = side + buf * 3 * kBQ2, *qD = qlse + kBQ2;
        const float *qdoc = qD + kBQ2;
        if (i0 + kBQ2 - 1 >= w_first && w_first < g.T) { /* warp-uniform */
            float s[kBQ2 / 8][4], dp[kBQ2 / 8][4];
#pragma unroll
            for (int n = 0; n < kBQ2 / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
                    /* S^T = K Q^T, dP^T = V dO^T (rows: this warp's 16 keys; columns: the queries)
                     */
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc++) {
                uint32_t ak[4], avv[4];
                frag_a(ak, ks, S::LD, warp * 16, kc * 16, lane);
                frag_a(avv, vs, S::LD, warp * 16, kc * 16, lane);
#pragma unroll
                for (int n = 0; n < kBQ2 / 8; n++) {
                    uint32_t b0, b1;
                    frag_b(b0, b1, qs, S::LD, n * 8, kc * 16, lane);
                    mma16816(s[n], ak, b0, b1);
                    frag_b(b0, b1, dos, S::LD, n * 8, kc * 16, lane);
                    mma16816(dp[n], avv, b0, b1);
                }
            }
            /* P^T and dS^T = P^T (dP^T - D) (all visible: a query tile at or past this
             * warp's last key, inside T, without documents) */
            const bool full = !doc && i0 >= w_first + 15 && i0 + kBQ2 - 1 < g.T;
#pragma unroll
            for (int n = 0; n < kBQ2 / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int ii = n * 8 + 2 * tq + (e & 1), i = i0 + ii;
                    int j = e < 2 ? ja : jb, dj = e < 2 ? da : db;
                    bool vis = full || (i >= j && dj >= 0 && __float_as_int(qdoc[ii]) == dj);
                    float p = vis ? exp2f(s[n][e] * sl2 - qlse[ii]) : 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - qD[ii]);
                }
                /* dV += P^T dO, dK += dS^T Q */
#pragma unroll
            for (int kc = 0; kc < kBQ2 / 16; kc++) {
                uint32_t ap[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]),
                                  pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                                  pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                  pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
                uint32_t ads[4] = {pack_bf16(dp[2 * kc][0], dp[2 * kc][1]),
                                   pack_bf16(dp[2 * kc][2], dp[2 * kc][3]),
                                   pack_bf16(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                                   pack_bf16(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
                mma_rows_b<HD>(dv, ap, dos, S::LD, kc * 16, lane);
                mma_rows_b<HD>(dk, ads, qs, S::LD, kc * 16, lane);
            }
        }
        __syncthreads();
        h = hn;
        i0 = in;
        have = more;
    }
    /* dK before dV, by the same thread: k and v may be one tensor (then dV adds to dK) */
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        int d = n * 8 + 2 * tq;
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            int j = hr ? jb : ja;
            if (j >= g.T) continue;
            int64_t at = kv_at(g, b, j, kh) + d;
            if (need_k) {
                put(gk, at, g.scale * dk[n][2 * hr], acc_k);
                put(gk, at + 1, g.scale * dk[n][2 * hr + 1], acc_k);
            }
            if (need_v) {
                put(gv, at, dv[n][2 * hr], acc_v);
                put(gv, at + 1, dv[n][2 * hr + 1], acc_v);
            }
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------- */

Geom geom_of(const qt_node *n) {
    const qt_tensor *q = n->in[0], *k = n->in[1];
    Geom g;
    g.B = (int)q->shape[0];
    g.T = (int)q->shape[1];
    g.Hq = (int)q->shape[2];
    g.Hkv = (int)k->shape[2];
    g.hd = (int)q->shape[3];
    g.grp = g.Hq / g.Hkv;
    g.scale = n->fp[0];
    g.ntiles = (g.T + kTile - 1) / kTile;
    return g;
}

void check_node(const qt_node *n, const char *what) {
    for (int i = 0; i < 3; i++)
        QT_CHECK(n->in[i] && n->in[i]->device == QT_CUDA, "%s: input %d is not on CUDA", what, i);
    QT_CHECK(!n->in[3] || (n->in[3]->device == QT_CUDA && n->in[3]->dtype == QT_I32),
             "%s: doc must be an i32 CUDA tensor", what);
    QT_CHECK(n->out->device == QT_CUDA && n->saved[0] && n->saved[0]->dtype == QT_F32,
             "%s: output / lse not on CUDA", what);
    const qt_tensor *q = n->in[0];
    QT_CHECK(q->shape[0] * q->shape[1] * q->shape[2] < INT32_MAX && q->shape[1] < INT32_MAX / 2,
             "%s: shape too large for the CUDA kernels", what);
    QT_CHECK((q->shape[1] + kGW - 1) / kGW <= 65535 && q->shape[0] <= 65535,
             "%s: T = %lld or B = %lld is too large for the CUDA grid", what,
             (long long)q->shape[1], (long long)q->shape[0]);
    QT_CHECK(q->shape[3] <= kGenMaxHd, "%s: head_dim %lld > %d is not supported on CUDA", what,
             (long long)q->shape[3], kGenMaxHd);
}

bool aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

/* the tensor-core path: bf16, hd 64 or 128, 16-byte aligned rows */
bool use_mma(const qt_node *n, const Geom &g) {
    if (n->in[0]->dtype != QT_BF16 || (g.hd != 64 && g.hd != 128)) return false;
    for (int i = 0; i < 3; i++)
        if (!aligned16(n->in[i]->data)) return false;
    if (n->out->grad && !aligned16(n->out->grad->data)) return false;
    return aligned16(n->out->data);
}

const int2 *make_doc_table(qt_ctx *ctx, Scratch &sc, const int32_t *doc, const Geom &g) {
    if (!doc) return nullptr;
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    int64_t n = (int64_t)g.B * g.ntiles;
    int2 *tab = (int2 *)sc.get((size_t)n * sizeof(int2));
    unsigned blocks = (unsigned)((n + 255) / 256);
    doc_ranges_kernel<<<blocks, 256, 0, c->stream>>>(doc, tab, g);
    QT_CUDA_CHECK_LAUNCH("launching the attention document-range table");
    return tab;
}

template <typename K> void set_smem(K kernel, size_t bytes, const char *what) {
    QT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
        what);
}

template <typename T>
void fwd_generic(cudaStream_t s, const qt_node *n, const int2 *tab, const Geom &g) {
    size_t smem = (size_t)(32 * odd_stride(g.hd) + 32 * g.hd + kGW * g.hd) * 4 + 32 * 4;
    set_smem(attn_fwd_generic<T>, smem, "raising attention forward shared memory");
    dim3 grid(g.Hq, g.B, (g.T + kGW - 1) / kGW);
    attn_fwd_generic<T><<<grid, kGW * 32, smem, s>>>(
        (const T *)n->in[0]->data, (const T *)n->in[1]->data, (const T *)n->in[2]->data,
        n->in[3] ? (const int32_t *)n->in[3]->data : nullptr, tab, (T *)n->out->data,
        (float *)n->saved[0]->data, g);
    QT_CUDA_CHECK_LAUNCH("launching attention forward (CUDA cores)");
}

template <int HD> void fwd_mma(cudaStream_t s, const qt_node *n, const int2 *tab, const Geom &g) {
    size_t smem = MmaSmem<HD>::fwd;
    set_smem(attn_fwd_mma<HD>, smem, "raising attention forward shared memory");
    dim3 grid(g.Hq, g.B, (g.T + kBQ - 1) / kBQ);
    attn_fwd_mma<HD><<<grid, kMW * 32, smem, s>>>(
        (const __nv_bfloat16 *)n->in[0]->data, (const __nv_bfloat16 *)n->in[1]->data,
        (const __nv_bfloat16 *)n->in[2]->data, n->in[3] ? (const int32_t *)n->in[3]->data : nullptr,
        tab, (__nv_bfloat16 *)n->out->data, (float *)n->saved[0]->data, g);
    QT_CUDA_CHECK_LAUNCH("launching attention forward (tensor cores)");
}

template <typename T>
void rowdot(qt_cuda_ctx *c, const void *go, const void *o, const int32_t *doc, float *D,
            const Geom &g, bool sequential) {
    int64_t rows = (int64_t)g.B * g.Hq * g.T, cap = (int64_t)c->sm_count * 8;
    int64_t blocks = ((sequential ? rows : rows * 32) + 255) / 256;
    if (blocks > cap) blocks = cap;
    if (sequential)
        attn_rowdot_seq_kernel<T>
            <<<(unsigned)blocks, 256, 0, c->stream>>>((const T *)go, (const T *)o, doc, D, g);
    else
        attn_rowdot_kernel<T>
            <<<(unsigned)blocks, 256, 0, c->stream>>>((const T *)go, (const T *)o, doc, D, g);
    QT_CUDA_CHECK_LAUNCH("launching attention backward D = rowsum(dO O)");
}

struct BwdArgs {
    void *gq, *gk, *gv;
    bool acc_q, acc_k, acc_v;
    const float *D;
    const int2 *tab;
};

template <typename T>
void bwd_generic(cudaStream_t s, const qt_node *n, const BwdArgs &a, const Geom &g) {
    const T *q = (const T *)n->in[0]->data, *k = (const T *)n->in[1]->data,
            *v = (const T *)n->in[2]->data, *go = (const T *)n->out->grad->data;
    const int32_t *doc = n->in[3] ? (const int32_t *)n->in[3]->data : nullptr;
    const float *lse = (const float *)n->saved[0]->data;
    if (a.gq) {
        size_t smem = (size_t)(2 * 32 * odd_stride(g.hd) + 2 * kGW * g.hd) * 4 + 32 * 4;
        set_smem(attn_dq_generic<T>, smem, "raising attention dQ shared memory");
        dim3 grid(g.Hq, g.B, (g.T + kGW - 1) / kGW);
        attn_dq_generic<T>
            <<<grid, kGW * 32, smem, s>>>(q, k, v, doc, a.tab, go, lse, a.D, (T *)a.gq, a.acc_q, g);
        QT_CUDA_CHECK_LAUNCH("launching attention backward dQ (CUDA cores)");
    }
    if (a.gk || a.gv) {
        size_t smem = (size_t)(2 * 32 * odd_stride(g.hd) + 2 * kGW * g.hd + 3 * 32) * 4;
        set_smem(attn_dkv_generic<T>, smem, "raising attention dK/dV shared memory");
        dim3 grid(g.Hkv, g.B, (g.T + kGW - 1) / kGW);
        attn_dkv_generic<T><<<grid, kGW * 32, smem, s>>>(q, k, v, doc, a.tab, go, lse, a.D,
                                                         (T *)a.gk, (T *)a.gv, a.gk != nullptr,
                                                         a.gv != nullptr, a.acc_k, a.acc_v, g);
        QT_CUDA_CHECK_LAUNCH("launching attention backward dK/dV (CUDA cores)");
    }
}

template <int HD> void bwd_mma(cudaStream_t s, const qt_node *n, const BwdArgs &a, const Geom &g) {
    using B16 = __nv_bfloat16;
    const B16 *q = (const B16 *)n->in[0]->data, *k = (const B16 *)n->in[1]->data,
              *v = (const B16 *)n->in[2]->data, *go = (const B16 *)n->out->grad->data;
    const int32_t *doc = n->in[3] ? (const int32_t *)n->in[3]->data : nullptr;
    const float *lse = (const float *)n->saved[0]->data;
    if (a.gq) {
        size_t smem = MmaSmem<HD>::dq;
        set_smem(attn_dq_mma<HD>, smem, "raising attention dQ shared memory");
        dim3 grid(g.Hq, g.B, (g.T + kBQ - 1) / kBQ);
        attn_dq_mma<HD><<<grid, kMW * 32, smem, s>>>(q, k, v, doc, a.tab, go, lse, a.D, (B16 *)a.gq,
                                                     a.acc_q, g);
        QT_CUDA_CHECK_LAUNCH("launching attention backward dQ (tensor cores)");
    }
    if (a.gk || a.gv) {
        size_t smem = MmaSmem<HD>::dkv;
        set_smem(attn_dkv_mma<HD>, smem, "raising attention dK/dV shared memory");
        dim3 grid(g.Hkv, g.B, (g.T + kBK - 1) / kBK);
        attn_dkv_mma<HD><<<grid, kMW * 32, smem, s>>>(q, k, v, doc, a.tab, go, lse, a.D,
                                                      (B16 *)a.gk, (B16 *)a.gv, a.gk != nullptr,
                                                      a.gv != nullptr, a.acc_k, a.acc_v, g);
        QT_CUDA_CHECK_LAUNCH("launching attention backward dK/dV (tensor cores)");
    }
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_attention_fwd(qt_ctx *ctx, qt_node *n) {
    check_node(n, "attention");
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    QT_CHECK(c, "attention: context without a CUDA backend");
    Geom g = geom_of(n);
    if ((int64_t)g.B * g.T * g.Hq == 0 || g.hd == 0) {
        if (qt_numel(n->saved[0]))
            qt_cuda_fill_bytes(c, n->saved[0]->data, 0xff, qt_nbytes(n->saved[0])); /* NaN */
        return;
    }
    Scratch sc(ctx, "attention");
    const int2 *tab =
        make_doc_table(ctx, sc, n->in[3] ? (const int32_t *)n->in[3]->data : nullptr, g);
    if (use_mma(n, g)) {
        if (g.hd == 64)
            fwd_mma<64>(c->stream, n, tab, g);
        else
            fwd_mma<128>(c->stream, n, tab, g);
        return;
    }
    QT_FLOAT_DISPATCH(n->in[0]->dtype, T, "attention", fwd_generic<T>(c->stream, n, tab, g));
}

extern "C" void qt_cuda_attention_bwd(qt_ctx *ctx, qt_node *n) {
    check_node(n, "attention backward");
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    const qt_tensor *go = n->out->grad;
    QT_CHECK(go && go->dtype == n->out->dtype && qt_numel(go) == qt_numel(n->out) &&
                 go->device == QT_CUDA,
             "attention backward: missing or mismatched output gradient");
    Geom g = geom_of(n);
    bool need_q = qt_needs_grad(n->in[0]), need_k = qt_needs_grad(n->in[1]),
         need_v = qt_needs_grad(n->in[2]);
    /* acquired in this order (as on the CPU) so that a tensor passed twice sets, then adds;
     * the passes run in the same order: dQ, then dK, then dV (same thread) */
    BwdArgs a = {};
    float beta;
    if (need_q) {
        a.gq = qt_grad_acquire(ctx, n->in[0], false, &beta)->data;
        a.acc_q = beta != 0.0f;
    }
    if (need_k) {
        a.gk = qt_grad_acquire(ctx, n->in[1], false, &beta)->data;
        a.acc_k = beta != 0.0f;
    }
    if (need_v) {
        a.gv = qt_grad_acquire(ctx, n->in[2], false, &beta)->data;
        a.acc_v = beta != 0.0f;
    }
    if ((!need_q && !need_k && !need_v) || (int64_t)g.B * g.T * g.Hq == 0 || g.hd == 0) return;

    /* scratch after the gradients: rewinding must not free them */
    Scratch sc(ctx, "attention");
    const int32_t *doc = n->in[3] ? (const int32_t *)n->in[3]->data : nullptr;
    a.tab = make_doc_table(ctx, sc, doc, g);
    int64_t rows = (int64_t)g.B * g.Hq * g.T;
    float *D = (float *)sc.get((size_t)rows * sizeof(float));
    a.D = D;
    const bool mma = use_mma(n, g);
    QT_FLOAT_DISPATCH(n->out->dtype, T, "attention backward",
                      rowdot<T>(c, go->data, n->out->data, doc, D, g, !mma));
    if (mma) {
        if (g.hd == 64)
            bwd_mma<64>(c->stream, n, a, g);
        else
            bwd_mma<128>(c->stream, n, a, g);
        return;
    }
    QT_FLOAT_DISPATCH(n->in[0]->dtype, T, "attention backward", bwd_generic<T>(c->stream, n, a, g));
}
