/* softmax_loss.cu - softmax over the last dim and cross-entropy over a vocabulary on the GPU
 * (the references: autograd/ops_softmax.c, autograd/ops_loss.c), one block per row.
 *
 * Row statistics follow the CPU: the maximum in f32, Σ exp(x - max) accumulated in double, lse
 * = max + log(Σ) in double; the per-element exponentials are f32 expf of the f32 difference
 * (an ulp or two from the CPU's double exp: well inside the f32 tolerance). Block reductions are
 * fixed trees (warp butterflies, then the warps' values in order), so results depend only on the
 * shape.
 * Cross-entropy node (ops_loss.c): in = {logits [N, V], targets [N] i32}, fp[0] = denom,
 * saved[0] = lse [N] f32 (0 for ignored rows), saved[1] = the divisor [1] f32 (0 when no
 * target counted: loss 0, gradient 0). Forward: a row kernel writes lse and the row's loss
 * (double, step-arena scratch); one finishing block sums the losses in row order (a fixed
 * tree), counts the targets, picks the divisor and writes the loss, and finds the first bad
 * target (outside [0, V) and not -100) with a min-reduction. The host reads that one value back
 * and fails the CPU's QT_CHECK naming the row: this synchronises the stream once per loss call;
 * while the stream is being captured into a CUDA graph the read-back is skipped (the kernels
 * treat a bad row as ignored, never reading outside the row). The backward reads the output
 * gradient and the divisor on the device: no host round trip.
 * Storage: x, logits, y and the gradients F32, BF16 or F16; loss, lse, divisor f32. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

constexpr int kFinishThreads = 1024;

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

/* ---- softmax ------------------------------------------------------------------------------ */

/* grid: rows; x, y [rows, cols] */
template <typename T>
__global__ void softmax_fwd_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t cols) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    const T *xr = x + (int64_t)blockIdx.x * cols;
    T *yr = y + (int64_t)blockIdx.x * cols;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = MaxOp()(m, ld(xr, c));
    m = block_reduce(m, -INFINITY, redf, MaxOp());
    double s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        s += (double)expf(__fsub_rn(ld(xr, c), m));
    s = block_reduce(s, 0.0, redd, SumOp());
    const double inv = 1.0 / s; /* s >= 1: the maximum contributes exp(0) */
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        st(yr, c, (float)((double)expf(__fsub_rn(ld(xr, c), m)) * inv));
}

/* grid: rows; gx = (gx +) y * (gy - Σ gy·y) */
template <typename T>
__global__ void softmax_bwd_kernel(const T *__restrict__ y, const T *__restrict__ gy,
                                   T *__restrict__ gx, int64_t cols, int accumulate) {
    __shared__ double red[32];
    const int64_t off = (int64_t)blockIdx.x * cols;
    double dot = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dot += (double)ld(gy, off + c) * (double)ld(y, off + c);
    dot = block_reduce(dot, 0.0, red, SumOp());
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (float)((double)ld(y, off + c) * ((double)ld(gy, off + c) - dot));
        st(gx, off + c, accumulate ? __fadd_rn(ld(gx, off + c), v) : v);
    }
}

/* ---- cross-entropy ------------------------------------------------------------------------ */

__device__ __forceinline__ bool target_ok(int32_t t, int64_t V) {
    return t >= 0 && t < V;
}

/* grid: N rows. lse[i] and loss[i] = lse - x[t]; ignored (and bad) rows: 0, 0 */
template <typename T>
__global__ void ce_row_kernel(const T *__restrict__ x, const int32_t *__restrict__ tgt,
                              float *__restrict__ lse, double *__restrict__ loss, int64_t V) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    const int64_t i = blockIdx.x;
    const int32_t t = tgt[i];
    if (!target_ok(t, V)) { /* the whole block leaves together: t is the same for all */
        if (threadIdx.x == 0) {
            lse[i] = 0.0f;
            loss[i] = 0.0;
        }
        return;
    }
    const T *xr = x + i * V;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) m = MaxOp()(m, ld(xr, c));
    m = block_reduce(m, -INFINITY, redf, MaxOp());
    double s = 0;
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x)
        s += (double)expf(__fsub_rn(ld(xr, c), m));
    s = block_reduce(s, 0.0, redd, SumOp());
    if (threadIdx.x == 0) {
        const double l = (double)m + log(s);
        lse[i] = (float)l;
        loss[i] = l - (double)ld(xr, t);
    }
}

/* one block: the loss, the divisor, and *bad = the first row whose target is neither -100 nor
 * in [0, V) (N when there is none) */
__global__ void ce_finish_kernel(const double *__restrict__ loss, const int32_t *__restrict__ tgt,
                                 int64_t N, int64_t V, float denom, float *__restrict__ out,
                                 float *__restrict__ divisor, int64_t *__restrict__ bad) {
    __shared__ double redd[32];
    __shared__ int64_t redi[32];
    double sum = 0, count = 0;
    int64_t first_bad = N;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        const int32_t t = tgt[i];
        sum += loss[i];
        count += t != QT_IGNORE_INDEX ? 1.0 : 0.0;
        if (t != QT_IGNORE_INDEX && !target_ok(t, V) && i < first_bad) first_bad = i;
    }
    sum = block_reduce(sum, 0.0, redd, SumOp());
    count = block_reduce(count, 0.0, redd, SumOp()); /* exact: integers below 2^53 */
    first_bad = block_reduce(first_bad, N, redi, MinOp());
    if (threadIdx.x == 0) {
        const double div = count == 0 ? 0 : denom > 0 ? (double)denom : count;
        out[0] = div > 0 ? (float)(sum / div) : 0.0f;
        divisor[0] = (float)div;
        *bad = first_bad;
    }
}

/* grid: N rows. d loss / d x = (softmax(x) - onehot(t)) * gout / divisor; 0 for ignored rows */
template <typename T>
__global__ void ce_bwd_kernel(const T *__restrict__ x, const int32_t *__restrict__ tgt,
                              const float *__restrict__ lse, const float *__restrict__ divisor,
                              const float *__restrict__ gout, T *__restrict__ g, int64_t V,
                              int accumulate) {
    const int64_t i = blockIdx.x;
    const int32_t t = tgt[i];
    const float div = divisor[0];
    const double f = div > 0 ? (double)gout[0] / div : 0.0;
    const bool on = target_ok(t, V) && f != 0.0;
    const float l = lse[i];
    const int64_t off = i * V;
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
        float v = 0.0f;
        if (on)
            v = (float)(((double)expf(__fsub_rn(ld(x, off + c), l)) - (c == t ? 1.0 : 0.0)) * f);
        st(g, off + c, accumulate ? __fadd_rn(ld(g, off + c), v) : v);
    }
}

/* ---- launchers ---------------------------------------------------------------------------- */

void check_rows(int64_t rows, const char *what) {
    QT_CHECK(rows < (1ll << 31), "%s: %lld rows are more than one grid holds", what,
             (long long)rows);
}

template <typename T> void launch_softmax_fwd(qt_ctx *ctx, const qt_node *nd) {
    qt_cuda_ctx *c = cuda_of(ctx);
    int64_t rows = qt_rows(nd->out), cols = qt_cols(nd->out);
    if (rows == 0 || cols == 0) return;
    check_rows(rows, "softmax");
    softmax_fwd_kernel<T><<<(unsigned)rows, row_threads(cols), 0, c->stream>>>(
        (const T *)nd->in[0]->data, (T *)nd->out->data, cols);
    QT_CUDA_CHECK_LAUNCH("launching softmax forward");
}

template <typename T>
void launch_softmax_bwd(qt_ctx *ctx, const qt_node *nd, void *gx, float beta) {
    qt_cuda_ctx *c = cuda_of(ctx);
    int64_t rows = qt_rows(nd->out), cols = qt_cols(nd->out);
    if (rows == 0 || cols == 0) return;
    check_rows(rows, "softmax backward");
    softmax_bwd_kernel<T><<<(unsigned)rows, row_threads(cols), 0, c->stream>>>(
        (const T *)nd->out->data, (const T *)nd->out->grad->data, (T *)gx, cols, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH("launching softmax backward");
}

/* Row losses go to step-arena scratch, given back (rewound) once the host has read the check's
 * result: the stream has run every kernel that uses it by then (or, while capturing, runs them
 * before any later user of that memory). */
template <typename T> void launch_ce_fwd(qt_ctx *ctx, const qt_node *nd) {
    qt_cuda_ctx *c = cuda_of(ctx);
    const qt_tensor *x = nd->in[0], *tgt = nd->in[1];
    int64_t N = x->shape[0], V = x->shape[1];
    check_rows(N, "cross_entropy");
    qt_arena *a = &ctx->data;
    qt_arena_mark mark = qt_arena_get_mark(a);
    double *loss = (double *)qt_arena_alloc(a, (size_t)(N ? N : 1) * sizeof(double));
    int64_t *bad_d = (int64_t *)qt_arena_alloc(a, sizeof(int64_t));
    QT_CHECK(loss && bad_d, "cross_entropy: out of device memory for %lld row losses",
             (long long)N);
    if (N > 0) {
        ce_row_kernel<T><<<(unsigned)N, row_threads(V), 0, c->stream>>>(
            (const T *)x->data, (const int32_t *)tgt->data, (float *)nd->saved[0]->data, loss, V);
        QT_CUDA_CHECK_LAUNCH("launching cross_entropy rows");
    }
    ce_finish_kernel<<<1, kFinishThreads, 0, c->stream>>>(loss, (const int32_t *)tgt->data, N, V,
                                                          nd->fp[0], (float *)nd->out->data,
                                                          (float *)nd->saved[1]->data, bad_d);
    QT_CUDA_CHECK_LAUNCH("launching cross_entropy mean");

    int64_t bad = qt_cuda_ce_bad_row(ctx, bad_d, N);
    qt_arena_rewind(a, mark);
    qt_cuda_ce_check_row(ctx, (const int32_t *)tgt->data, bad, N, V);
}

template <typename T> void launch_ce_bwd(qt_ctx *ctx, const qt_node *nd, void *g, float beta) {
    qt_cuda_ctx *c = cuda_of(ctx);
    const qt_tensor *x = nd->in[0];
    int64_t N = x->shape[0], V = x->shape[1];
    if (N == 0 || V == 0) return;
    check_rows(N, "cross_entropy backward");
    ce_bwd_kernel<T><<<(unsigned)N, row_threads(V), 0, c->stream>>>(
        (const T *)x->data, (const int32_t *)nd->in[1]->data, (const float *)nd->saved[0]->data,
        (const float *)nd->saved[1]->data, (const float *)nd->out->grad->data, (T *)g, V,
        beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH("launching cross_entropy backward");
}

qt_dtype check_softmax(const qt_node *nd, const char *what) {
    const qt_tensor *x = nd->in[0], *y = nd->out;
    QT_CHECK(x->device == QT_CUDA && y->device == QT_CUDA, "%s: tensors are not on CUDA", what);
    QT_CHECK(y->dtype == x->dtype && qt_numel(y) == qt_numel(x), "%s: out differs from x", what);
    return x->dtype;
}

qt_dtype check_ce(const qt_node *nd, const char *what) {
    const qt_tensor *x = nd->in[0], *t = nd->in[1], *out = nd->out;
    const qt_tensor *lse = nd->saved[0], *div = nd->saved[1];
    QT_CHECK(x->device == QT_CUDA && t->device == QT_CUDA && out->device == QT_CUDA && lse &&
                 lse->device == QT_CUDA && div && div->device == QT_CUDA,
             "%s: tensors are not on CUDA", what);
    QT_CHECK(x->ndim == 2 && t->dtype == QT_I32 && qt_numel(t) == x->shape[0],
             "%s: logits must be [N, V] and targets i32 [N]", what);
    QT_CHECK(out->dtype == QT_F32 && qt_numel(out) == 1 && lse->dtype == QT_F32 &&
                 qt_numel(lse) == x->shape[0] && div->dtype == QT_F32 && qt_numel(div) == 1,
             "%s: loss, lse and divisor must be f32 [1], [N], [1]", what);
    return x->dtype;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_softmax_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_softmax(nd, "softmax");
    QT_FLOAT_DISPATCH(dt, T, "softmax", launch_softmax_fwd<T>(ctx, nd));
}

extern "C" void qt_cuda_softmax_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_softmax(nd, "softmax backward");
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "softmax backward: missing or mismatched output gradient");
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    QT_FLOAT_DISPATCH(dt, T, "softmax backward", launch_softmax_bwd<T>(ctx, nd, g->data, beta));
}

extern "C" void qt_cuda_cross_entropy_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_ce(nd, "cross_entropy");
    QT_FLOAT_DISPATCH(dt, T, "cross_entropy", launch_ce_fwd<T>(ctx, nd));
}

extern "C" void qt_cuda_cross_entropy_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_ce(nd, "cross_entropy backward");
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gout = nd->out->grad;
    QT_CHECK(gout && gout->dtype == QT_F32 && qt_numel(gout) == 1,
             "cross_entropy backward: the loss gradient must be f32 [1]");
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    QT_FLOAT_DISPATCH(dt, T, "cross_entropy backward", launch_ce_bwd<T>(ctx, nd, g->data, beta));
}

/* ---- the target check, shared with linear_ce.cu --------------------------------------------- */

extern "C" int64_t qt_cuda_ce_bad_row(qt_ctx *ctx, const int64_t *bad_d, int64_t N) {
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    QT_CUDA_CHECK(cudaStreamIsCapturing(c->stream, &cap),
                  "asking whether the stream is being captured (cross_entropy)");
    int64_t bad = N;
    if (cap == cudaStreamCaptureStatusNone) qt_cuda_copy_d2h(c, &bad, bad_d, sizeof bad);
    return bad;
}

extern "C" void qt_cuda_ce_check_row(qt_ctx *ctx, const int32_t *tgt_d, int64_t bad, int64_t N,
                                     int64_t V) {
    if (bad >= N) return;
    int32_t t = 0;
    qt_cuda_copy_d2h((qt_cuda_ctx *)ctx->cuda, &t, tgt_d + bad, sizeof t);
    QT_CHECK(0,
             "cross_entropy: target %d at row %lld is outside [0, %lld) and is not the ignore "
             "index %d",
             (int)t, (long long)bad, (long long)V, QT_IGNORE_INDEX);
}
