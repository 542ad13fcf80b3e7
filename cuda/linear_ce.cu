/* linear_ce.cu - the lm_head fused with the cross-entropy (autograd/ops_linear_ce.c) on the
 * GPU, one vocabulary chunk at a time: the [N, V] logits never exist, only [N, chunk] of them.
 *
 * Forward, per chunk [c0, c0 + vc): logits_c = h · W_cᵀ (cuBLASLt, rounded to the storage
 * dtype exactly as the unfused matmul rounds them), then one block per row merges the chunk
 * into the row's running statistics: max m (f32) and Σ exp(x - m) (double), rescaled when the
 * max grows, and picks the target's logit when it falls in the chunk. A finishing block turns
 * them into lse and the loss with the cross-entropy's rules (ignored targets, the divisor, the
 * first bad target reported by name through one host read-back, skipped while capturing).
 * Backward, per chunk: the chunk's logits again, turned in place into d loss / d logits =
 * (softmax - onehot) · gout / divisor (the unfused backward's formula), then
 *   dh += dlogits_c · W_c   into an f32 accumulator (cuBLASLt, bf16 operands, f32 C), and
 *   dW_c = dlogits_cᵀ · h   straight into W's gradient rows (chunks are disjoint),
 * and dh, rounded once, into h's gradient. Scratch comes from the step arena and is rewound
 * before the kernel returns. Every reduction is a fixed tree: deterministic.
 * Storage: h, W and their gradients F32, BF16 or F16; statistics and the loss f32/double. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

constexpr int kRowThreads = 512;
constexpr int kFinishThreads = 1024;

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

__device__ __forceinline__ bool target_ok(int32_t t, int64_t V) {
    return t >= 0 && t < V;
}

__global__ void stats_init(float *m, double *s, float *tl, int64_t N) {
    QT_GRID_STRIDE(i, N) m[i] = -INFINITY, s[i] = 0.0, tl[i] = 0.0f;
}

/* grid: N rows of the chunk x [N, vc] */
template <typename T>
__global__ void stats_chunk(const T *__restrict__ x, int64_t vc, int64_t c0, int64_t V,
                            const int32_t *__restrict__ tgt, float *__restrict__ m,
                            double *__restrict__ s, float *__restrict__ tl) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    const int64_t i = blockIdx.x;
    const int32_t t = tgt[i];
    if (!target_ok(t, V)) return; /* ignored (or bad) rows keep no statistics */
    const T *xr = x + i * vc;
    float mc = -INFINITY;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
        float v = ld(xr, c);
        mc = v > mc ? v : mc;
    }
    mc = block_reduce(mc, -INFINITY, redf, MaxOp());
    double sc = 0;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x)
        sc += (double)expf(__fsub_rn(ld(xr, c), mc));
    sc = block_reduce(sc, 0.0, redd, SumOp());
    if (threadIdx.x == 0) {
        const float mo = m[i], mn = mc > mo ? mc : mo;
        s[i] = s[i] * exp((double)mo - (double)mn) + sc * exp((double)mc - (double)mn);
        m[i] = mn;
        if (t >= c0 && t < c0 + vc) tl[i] = ld(xr, t - c0);
    }
}

/* one block: lse, the loss, the divisor, and *bad = the first row whose target is neither -100
 * nor in [0, V) (N when none) */
__global__ void finish(const float *__restrict__ m, const double *__restrict__ s,
                       const float *__restrict__ tl, const int32_t *__restrict__ tgt, int64_t N,
                       int64_t V, float denom, float *__restrict__ lse, float *__restrict__ out,
                       float *__restrict__ divisor, int64_t *__restrict__ bad) {
    __shared__ double redd[32];
    __shared__ int64_t redi[32];
    double sum = 0, count = 0;
    int64_t first_bad = N;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        const int32_t t = tgt[i];
        if (target_ok(t, V)) {
            const double l = (double)m[i] + log(s[i]);
            lse[i] = (float)l;
            sum += l - (double)tl[i];
        } else {
            lse[i] = 0.0f;
        }
        count += t != QT_IGNORE_INDEX ? 1.0 : 0.0;
        if (t != QT_IGNORE_INDEX && !target_ok(t, V) && i < first_bad) first_bad = i;
    }
    sum = block_reduce(sum, 0.0, redd, SumOp());
    count = block_reduce(count, 0.0, redd, SumOp());
    first_bad = block_reduce(first_bad, N, redi, MinOp());
    if (threadIdx.x == 0) {
        const double div = count == 0 ? 0 : denom > 0 ? (double)denom : count;
        out[0] = div > 0 ? (float)(sum / div) : 0.0f;
        divisor[0] = (float)div;
        *bad = first_bad;
    }
}

/* grid: N rows. x [N, vc] becomes d loss / d x in place (gout NULL: a loss gradient of 1) */
template <typename T>
__global__ void grad_chunk(T *__restrict__ x, int64_t vc, int64_t c0, int64_t V,
                           const int32_t *__restrict__ tgt, const float *__restrict__ lse,
                           const float *__restrict__ divisor, const float *__restrict__ gout) {
    const int64_t i = blockIdx.x;
    const int32_t t = tgt[i];
    const float div = divisor[0];
    const double f = div > 0 ? (gout ? (double)gout[0] : 1.0) / div : 0.0;
    const bool on = target_ok(t, V) && f != 0.0;
    const float l = lse[i];
    T *xr = x + i * vc;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
        float v = 0.0f;
        if (on)
            v = (float)(((double)expf(__fsub_rn(ld(xr, c), l)) - (c0 + c == t ? 1.0 : 0.0)) * f);
        st(xr, c, v);
    }
}

/* the divisor alone (finish's rule), before any row's gradient needs it */
__global__ void divisor_of(const int32_t *__restrict__ tgt, int64_t N, float denom,
                           float *__restrict__ divisor) {
    __shared__ double redd[32];
    double count = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
        count += tgt[i] != QT_IGNORE_INDEX ? 1.0 : 0.0;
    count = block_reduce(count, 0.0, redd, SumOp());
    if (threadIdx.x == 0) divisor[0] = (float)(count == 0 ? 0 : denom > 0 ? (double)denom : count);
}

/* lse of rows whose statistics are complete (finish's formula) */
__global__ void lse_rows(const float *__restrict__ m, const double *__restrict__ s,
                         const int32_t *__restrict__ tgt, int64_t n, int64_t V,
                         float *__restrict__ lse) {
    QT_GRID_STRIDE(i, n) lse[i] = target_ok(tgt[i], V) ? (float)((double)m[i] + log(s[i])) : 0.0f;
}

/* g = (accumulate ? g + gout * d : gout * d), d the gradient the forward made */
template <typename T>
__global__ void scale_grad(T *__restrict__ g, const T *__restrict__ d,
                           const float *__restrict__ gout, int64_t n, int accumulate) {
    const float k = gout[0];
    QT_GRID_STRIDE(i, n) {
        const float v = __fmul_rn(k, ld(d, i));
        st(g, i, accumulate ? __fadd_rn(ld(g, i), v) : v);
    }
}

/* g = (accumulate ? g + acc : acc), rounded once into T */
template <typename T>
__global__ void store_grad(T *__restrict__ g, const float *__restrict__ acc, int64_t n,
                           int accumulate) {
    QT_GRID_STRIDE(i, n) st(g, i, accumulate ? __fadd_rn(ld(g, i), acc[i]) : acc[i]);
}

qt_dtype check_node(const qt_node *nd, const char *what) {
    const qt_tensor *h = nd->in[0], *W = nd->in[1], *t = nd->in[2];
    QT_CHECK(h->device == QT_CUDA && W->device == QT_CUDA && t->device == QT_CUDA &&
                 nd->out->device == QT_CUDA && nd->saved[0] && nd->saved[1],
             "%s: tensors are not on CUDA", what);
    QT_CHECK(h->dtype == W->dtype &&
                 (h->dtype == QT_F32 || h->dtype == QT_BF16 || h->dtype == QT_F16),
             "%s: h and W must share a float dtype", what);
    QT_CHECK(h->shape[0] < (1ll << 31), "%s: %lld rows are more than one grid holds", what,
             (long long)h->shape[0]);
    return h->dtype;
}

template <typename T> void fwd(qt_ctx *ctx, const qt_node *nd, qt_dtype dt) {
    qt_cuda_ctx *c = cuda_of(ctx);
    const qt_tensor *h = nd->in[0], *W = nd->in[1], *tgt = nd->in[2];
    const int64_t N = h->shape[0], D = h->shape[1], V = W->shape[0], chunk = nd->ip[0];
    const size_t es = qt_dtype_size(dt);
    const int32_t *t = (const int32_t *)tgt->data;
    int64_t bad;
    {
        Scratch sc(ctx, "linear_cross_entropy");
        T *x = (T *)sc.get((size_t)(N * chunk) * es);        /* a logits chunk */
        float *m = (float *)sc.get((size_t)N * 4);           /* row maxima */
        double *s = (double *)sc.get((size_t)N * 8);         /* row sums */
        float *tl = (float *)sc.get((size_t)N * 4);          /* target logits */
        int64_t *bad_d = (int64_t *)sc.get(sizeof(int64_t)); /* the first bad target */
        if (N > 0) {
            stats_init<<<grid_for(c, N), kThreads, 0, c->stream>>>(m, s, tl, N);
            QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's statistics init");
            for (int64_t c0 = 0; c0 < V; c0 += chunk) {
                const int64_t vc = V - c0 < chunk ? V - c0 : chunk;
                qt_cuda_gemm(ctx, dt, false, true, N, vc, D, h->data,
                             (const char *)W->data + c0 * D * es, x, 0.0f);
                stats_chunk<T>
                    <<<(unsigned)N, kRowThreads, 0, c->stream>>>(x, vc, c0, V, t, m, s, tl);
                QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's chunk statistics");
            }
        }
        finish<<<1, kFinishThreads, 0, c->stream>>>(
            m, s, tl, t, N, V, nd->fp[0], (float *)nd->saved[0]->data, (float *)nd->out->data,
            (float *)nd->saved[1]->data, bad_d);
        QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's loss");
        bad = qt_cuda_ce_bad_row(ctx, bad_d, N);
    } /* the scratch is rewound before the check can fail */
    qt_cuda_ce_check_row(ctx, t, bad, N, V);
}

/* Training with a frozen W (LoRA, QLoRA): the gradient of h is made here, in chunks of rows
 * with the whole vocabulary each (four times the logits of a vocabulary chunk: about 256 MiB
 * of bf16 with the automatic chunk; large row blocks keep dh's GEMM busy), so no logit is computed
 * twice: logits, the rows' statistics and lse, d loss / d logits in place (for a loss gradient
 * of 1), then dh = dlogits · W straight into saved[2] [N, D]. The backward scales it by the
 * real loss gradient. The loss itself comes out of the same statistics as in fwd. */
template <typename T> void fwd_fused(qt_ctx *ctx, const qt_node *nd, qt_dtype dt) {
    qt_cuda_ctx *c = cuda_of(ctx);
    const qt_tensor *h = nd->in[0], *W = nd->in[1], *tgt = nd->in[2];
    const int64_t N = h->shape[0], D = h->shape[1], V = W->shape[0];
    const size_t es = qt_dtype_size(dt);
    const int32_t *t = (const int32_t *)tgt->data;
    float *lse = (float *)nd->saved[0]->data, *div = (float *)nd->saved[1]->data;
    char *dh = (char *)nd->saved[2]->data;
    int64_t nc = V > 0 ? 4 * N * nd->ip[0] / V : N;
    nc = nc < 1 ? 1 : nc > N ? N : nc;
    int64_t bad;
    {
        Scratch sc(ctx, "linear_cross_entropy");
        T *x = (T *)sc.get((size_t)(nc * V) * es);           /* the logits of nc rows */
        float *m = (float *)sc.get((size_t)N * 4);           /* row maxima */
        double *s = (double *)sc.get((size_t)N * 8);         /* row sums */
        float *tl = (float *)sc.get((size_t)N * 4);          /* target logits */
        int64_t *bad_d = (int64_t *)sc.get(sizeof(int64_t)); /* the first bad target */
        divisor_of<<<1, kFinishThreads, 0, c->stream>>>(t, N, nd->fp[0], div);
        QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's divisor");
        if (N > 0) {
            stats_init<<<grid_for(c, N), kThreads, 0, c->stream>>>(m, s, tl, N);
            QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's statistics init");
        }
        for (int64_t r0 = 0; r0 < N; r0 += nc) {
            const int64_t nr = N - r0 < nc ? N - r0 : nc;
            const char *hr = (const char *)h->data + r0 * D * es;
            if (V == 0) break;
            qt_cuda_gemm(ctx, dt, false, true, nr, V, D, hr, W->data, x, 0.0f);
            stats_chunk<T><<<(unsigned)nr, kRowThreads, 0, c->stream>>>(x, V, 0, V, t + r0, m + r0,
                                                                        s + r0, tl + r0);
            QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's row statistics");
            lse_rows<<<grid_for(c, nr), kThreads, 0, c->stream>>>(m + r0, s + r0, t + r0, nr, V,
                                                                  lse + r0);
            QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's row lse");
            grad_chunk<T><<<(unsigned)nr, kRowThreads, 0, c->stream>>>(x, V, 0, V, t + r0, lse + r0,
                                                                       div, nullptr);
            QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's row gradients");
            /* dh rows [nr, D] = dlogits [nr, V] · W [V, D] */
            qt_cuda_gemm(ctx, dt, false, false, nr, D, V, x, W->data, dh + r0 * D * es, 0.0f);
        }
        if (V == 0 && N * D > 0) qt_cuda_memset0(c, dh, (size_t)(N * D) * es);
        finish<<<1, kFinishThreads, 0, c->stream>>>(m, s, tl, t, N, V, nd->fp[0], lse,
                                                    (float *)nd->out->data, div, bad_d);
        QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's loss");
        bad = qt_cuda_ce_bad_row(ctx, bad_d, N);
    } /* the scratch is rewound before the check can fail */
    qt_cuda_ce_check_row(ctx, t, bad, N, V);
}

template <typename T> void bwd_fused(qt_ctx *ctx, qt_node *nd) {
    qt_tensor *h = nd->in[0];
    QT_CHECK(!qt_needs_grad(nd->in[1]),
             "linear_cross_entropy backward: W's gradient was not made by the fused forward");
    if (!qt_needs_grad(h)) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == QT_F32 && qt_numel(gy) == 1,
             "linear_cross_entropy backward: the loss gradient must be f32 [1]");
    float beta = 0;
    void *gh = qt_grad_acquire(ctx, h, false, &beta)->data;
    int64_t n = qt_numel(h);
    if (n == 0) return;
    qt_cuda_ctx *c = cuda_of(ctx);
    scale_grad<T><<<grid_for(c, n), kThreads, 0, c->stream>>>(
        (T *)gh, (const T *)nd->saved[2]->data, (const float *)gy->data, n, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's dh scaling");
}

template <typename T> void bwd(qt_ctx *ctx, qt_node *nd, qt_dtype dt) {
    qt_cuda_ctx *c = cuda_of(ctx);
    qt_tensor *h = nd->in[0], *W = nd->in[1];
    const int64_t N = h->shape[0], D = h->shape[1], V = W->shape[0], chunk = nd->ip[0];
    const size_t es = qt_dtype_size(dt);
    const bool need_h = qt_needs_grad(h), need_w = qt_needs_grad(W);
    if (!need_h && !need_w) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == QT_F32 && qt_numel(gy) == 1,
             "linear_cross_entropy backward: the loss gradient must be f32 [1]");
    /* the gradient buffers first: they outlive the scratch */
    float beta_h = 0, beta_w = 0;
    void *gh = need_h ? qt_grad_acquire(ctx, h, false, &beta_h)->data : NULL;
    void *gw = need_w ? qt_grad_acquire(ctx, W, false, &beta_w)->data : NULL;
    Scratch sc(ctx, "linear_cross_entropy backward");
    T *x = (T *)sc.get((size_t)(N * chunk) * es);                      /* a logits chunk */
    float *acc = need_h ? (float *)sc.get((size_t)(N * D) * 4) : NULL; /* dh, f32 */
    const int32_t *t = (const int32_t *)nd->in[2]->data;
    bool first = true;
    for (int64_t c0 = 0; c0 < V && N > 0; c0 += chunk) {
        const int64_t vc = V - c0 < chunk ? V - c0 : chunk;
        const char *wc = (const char *)W->data + c0 * D * es;
        qt_cuda_gemm(ctx, dt, false, true, N, vc, D, h->data, wc, x, 0.0f);
        grad_chunk<T><<<(unsigned)N, kRowThreads, 0, c->stream>>>(
            x, vc, c0, V, t, (const float *)nd->saved[0]->data, (const float *)nd->saved[1]->data,
            (const float *)gy->data);
        QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's chunk gradient");
        if (need_h) /* acc [N, D] (+)= dlogits_c [N, vc] · W_c [vc, D] */
            qt_cuda_gemm_out(ctx, dt, QT_F32, false, false, N, D, vc, x, wc, acc,
                             first ? 0.0f : 1.0f);
        if (need_w) /* dW_c [vc, D] = dlogits_cᵀ · h */
            qt_cuda_gemm(ctx, dt, true, false, vc, D, N, x, h->data, (char *)gw + c0 * D * es,
                         beta_w);
        first = false;
    }
    if (need_h) {
        if (N > 0 && V == 0) qt_cuda_memset0(c, acc, (size_t)(N * D) * 4);
        if (N * D > 0) {
            store_grad<T><<<grid_for(c, N * D), kThreads, 0, c->stream>>>((T *)gh, acc, N * D,
                                                                          beta_h != 0.0f);
            QT_CUDA_CHECK_LAUNCH("launching linear_cross_entropy's dh store");
        }
    }
    if (need_w && N == 0 && beta_w == 0.0f) qt_cuda_memset0(c, gw, qt_nbytes(W));
}

} // namespace

extern "C" void qt_cuda_linear_ce_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "linear_cross_entropy");
    if (nd->ip[1]) {
        QT_FLOAT_DISPATCH(dt, T, "linear_cross_entropy", fwd_fused<T>(ctx, nd, dt));
    } else {
        QT_FLOAT_DISPATCH(dt, T, "linear_cross_entropy", fwd<T>(ctx, nd, dt));
    }
}

extern "C" void qt_cuda_linear_ce_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "linear_cross_entropy backward");
    if (nd->ip[1]) {
        QT_FLOAT_DISPATCH(dt, T, "linear_cross_entropy backward", bwd_fused<T>(ctx, nd));
    } else {
        QT_FLOAT_DISPATCH(dt, T, "linear_cross_entropy backward", bwd<T>(ctx, nd, dt));
    }
}
