/* norm.cu - RMSNorm on the GPU (the reference: autograd/ops_norm.c): kernel -> launcher ->
 * checked entry, the same node layout (saved[0] = rstd [rows] f32) and gradient rule.
 *
 * Forward: one block per row computes the statistics and writes the output (fused): the sum of
 * squares in double, as the CPU does, then rstd = 1 / sqrtf(f32(ss / D) + eps) with correctly
 * rounded f32 operations and y = w * (x * rstd) in the CPU's order: rstd and y match the CPU
 * except where the double sums' different order flips a rounding.
 * Backward: one block per tile of kRowTile rows (one row when no weight gradient is wanted).
 * Per row it reduces Σ gy·w·x (double), writes
 * gx, and adds gy·x·rstd to the tile's per-column partial sums (double, in shared memory; each
 * thread owns the same columns for every row, so no thread reads another's). A second kernel
 * sums the tiles' partials column by column in tile order. No atomics: the result depends only
 * on the shape, never on scheduling.
 * Storage: F32, BF16 or F16 (x, w, y and the gradients share it); statistics f32/double. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

constexpr int kRowTile = 32; /* rows per backward block: the tile of one partial-sum row */

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

/* ---- kernels ---------------------------------------------------------------------------- */

/* grid: rows; y, x [rows, D], w [D], rstd [rows] */
template <typename T>
__global__ void rmsnorm_fwd_kernel(const T *__restrict__ x, const T *__restrict__ w,
                                   T *__restrict__ y, float *__restrict__ rstd, int64_t D,
                                   float eps) {
    __shared__ double red[32];
    const int64_t r = blockIdx.x;
    const T *xr = x + r * D;
    T *yr = y + r * D;
    double ss = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        double v = ld(xr, j);
        ss += v * v;
    }
    ss = block_reduce(ss, 0.0, red, SumOp());
    float var = (float)(ss / (double)D);
    float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        st(yr, j, __fmul_rn(ld(w, j), __fmul_rn(ld(xr, j), rs)));
}

/* ---- bf16 rows in 16-byte vectors (D % 8 == 0): the same arithmetic per element, 8 values
 * per load; the sums' order differs from the scalar kernels' (deterministically) ----------- */

/* grid: rows; D8 = D / 8 vectors per row */
__global__ void rmsnorm_fwd_bf16x8(const uint4 *__restrict__ x, const uint4 *__restrict__ w,
                                   uint4 *__restrict__ y, float *__restrict__ rstd, int64_t D8,
                                   float eps) {
    __shared__ double red[32];
    const int64_t r = blockIdx.x;
    const uint4 *xr = x + r * D8;
    double ss = 0;
    for (int64_t j = threadIdx.x; j < D8; j += blockDim.x) {
        float v[8];
        unpack8(xr[j], v);
#pragma unroll
        for (int k = 0; k < 8; k++) ss += (double)v[k] * (double)v[k];
    }
    ss = block_reduce(ss, 0.0, red, SumOp());
    float var = (float)(ss / (double)(D8 * 8));
    float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int64_t j = threadIdx.x; j < D8; j += blockDim.x) {
        float v[8], wv[8], o[8];
        unpack8(xr[j], v);
        unpack8(w[j], wv);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = __fmul_rn(wv[k], __fmul_rn(v[k], rs));
        y[r * D8 + j] = pack8(o);
    }
}

/* grid: rows; gx only (the weight is frozen): gx = r (w gy - x r² (Σ gy w x) / D) */
__global__ void rmsnorm_bwd_bf16x8(const uint4 *__restrict__ x, const uint4 *__restrict__ w,
                                   const uint4 *__restrict__ gy, const float *__restrict__ rstd,
                                   uint4 *__restrict__ gx, int64_t D8, int accumulate) {
    __shared__ double red[32];
    const int64_t r = blockIdx.x;
    const uint4 *xr = x + r * D8, *gr = gy + r * D8;
    const double rs = rstd[r];
    double dot = 0;
    for (int64_t j = threadIdx.x; j < D8; j += blockDim.x) {
        float xv[8], wv[8], g[8];
        unpack8(xr[j], xv);
        unpack8(w[j], wv);
        unpack8(gr[j], g);
#pragma unroll
        for (int k = 0; k < 8; k++) dot += (double)g[k] * (double)wv[k] * (double)xv[k];
    }
    dot = block_reduce(dot, 0.0, red, SumOp());
    const double kk = rs * rs * rs * dot / (double)(D8 * 8);
    for (int64_t j = threadIdx.x; j < D8; j += blockDim.x) {
        float xv[8], wv[8], g[8], o[8];
        unpack8(xr[j], xv);
        unpack8(w[j], wv);
        unpack8(gr[j], g);
        if (accumulate) unpack8(gx[r * D8 + j], o);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float v = (float)(rs * (double)wv[k] * (double)g[k] - kk * (double)xv[k]);
            o[k] = accumulate ? __fadd_rn(o[k], v) : v;
        }
        gx[r * D8 + j] = pack8(o);
    }
}

/* threads for a row of D8 vectors: a multiple of 32 up to 256, about one vector each */
int vec_threads(int64_t D8) {
    int t = 32;
    while (t < 256 && t < D8) t *= 2;
    return t;
}

bool vec_ok(const qt_node *nd, int64_t D, const void *extra) {
    if (nd->in[0]->dtype != QT_BF16 || D % 8) return false;
    const void *p[4] = {nd->in[0]->data, nd->in[1]->data, nd->out->data, extra};
    for (int k = 0; k < 4; k++)
        if (p[k] && ((uintptr_t)p[k] & 15)) return false;
    return true;
}

/* grid: ceil(rows / kRowTile); dynamic shared memory: D doubles when want_gw.
 *   gx_k = r (w_k gy_k - x_k r² (Σ_j gy_j w_j x_j) / D)   (beta: accumulate_gx)
 *   part[tile, j] = Σ_{rows of the tile} gy_j x_j r */
template <typename T>
__global__ void rmsnorm_bwd_kernel(const T *__restrict__ x, const T *__restrict__ w,
                                   const T *__restrict__ gy, const float *__restrict__ rstd,
                                   T *__restrict__ gx, double *__restrict__ part, int64_t rows,
                                   int64_t D, int want_gx, int accumulate_gx, int want_gw,
                                   int64_t tile) {
    extern __shared__ double gw_acc[]; /* [D], column j owned by thread j % blockDim.x */
    __shared__ double red[32];
    const int64_t r0 = (int64_t)blockIdx.x * tile;
    const int64_t r1 = r0 + tile < rows ? r0 + tile : rows;
    if (want_gw)
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) gw_acc[j] = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        const T *xr = x + r * D, *gr = gy + r * D;
        const double rs = rstd[r];
        double k = 0;
        if (want_gx) {
            double dot = 0;
            for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
                dot += (double)ld(gr, j) * (double)ld(w, j) * (double)ld(xr, j);
            dot = block_reduce(dot, 0.0, red, SumOp());
            k = rs * rs * rs * dot / (double)D;
        }
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            const double g = ld(gr, j), xv = ld(xr, j);
            if (want_gx) {
                float v = (float)(rs * (double)ld(w, j) * g - k * xv);
                st(gx, r * D + j, accumulate_gx ? __fadd_rn(ld(gx, r * D + j), v) : v);
            }
            if (want_gw) gw_acc[j] += g * xv * rs;
        }
    }
    if (want_gw)
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            part[(int64_t)blockIdx.x * D + j] = gw_acc[j];
}

/* gw[j] (= gw[j] +) f32(Σ_tiles part[t, j]), tiles in order */
template <typename T>
__global__ void rmsnorm_gw_kernel(const double *__restrict__ part, T *__restrict__ gw,
                                  int64_t tiles, int64_t D, int accumulate) {
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < D;
         j += (int64_t)gridDim.x * blockDim.x) {
        double s = 0;
        for (int64_t t = 0; t < tiles; t++) s += part[t * D + j];
        float v = (float)s;
        st(gw, j, accumulate ? __fadd_rn(ld(gw, j), v) : v);
    }
}

/* ---- launchers -------------------------------------------------------------------------- */

template <typename T> void launch_fwd(qt_ctx *ctx, const qt_node *nd, int64_t rows, int64_t D) {
    qt_cuda_ctx *c = cuda_of(ctx);
    if (vec_ok(nd, D, NULL)) {
        rmsnorm_fwd_bf16x8<<<(unsigned)rows, vec_threads(D / 8), 0, c->stream>>>(
            (const uint4 *)nd->in[0]->data, (const uint4 *)nd->in[1]->data, (uint4 *)nd->out->data,
            (float *)nd->saved[0]->data, D / 8, nd->fp[0]);
        QT_CUDA_CHECK_LAUNCH("launching rmsnorm forward (bf16 x 8)");
        return;
    }
    rmsnorm_fwd_kernel<T><<<(unsigned)rows, row_threads(D), 0, c->stream>>>(
        (const T *)nd->in[0]->data, (const T *)nd->in[1]->data, (T *)nd->out->data,
        (float *)nd->saved[0]->data, D, nd->fp[0]);
    QT_CUDA_CHECK_LAUNCH("launching rmsnorm forward");
}

/* Step-arena scratch for the partial sums, given back (rewound) once the kernels that use it
 * are queued: the stream runs them before any later user of that memory. */
template <typename T>
void launch_bwd(qt_ctx *ctx, const qt_node *nd, void *gx, float beta_gx, void *gw, float beta_gw,
                int64_t rows, int64_t D) {
    qt_cuda_ctx *c = cuda_of(ctx);
    if (!gw && gx && vec_ok(nd, D, gx) && ((uintptr_t)nd->out->grad->data & 15) == 0) {
        rmsnorm_bwd_bf16x8<<<(unsigned)rows, vec_threads(D / 8), 0, c->stream>>>(
            (const uint4 *)nd->in[0]->data, (const uint4 *)nd->in[1]->data,
            (const uint4 *)nd->out->grad->data, (const float *)nd->saved[0]->data, (uint4 *)gx,
            D / 8, beta_gx != 0.0f);
        QT_CUDA_CHECK_LAUNCH("launching rmsnorm backward (bf16 x 8)");
        return;
    }
    /* rows share a block only to share its weight-gradient partial sums: without gw, one
     * row per block keeps every multiprocessor busy */
    const int64_t tile = gw ? kRowTile : 1;
    const int64_t tiles = (rows + tile - 1) / tile;
    qt_arena *a = &ctx->data; /* backward never runs inside a span's untaped forward */
    qt_arena_mark mark = qt_arena_get_mark(a);
    double *part = NULL;
    size_t smem = 0;
    if (gw) {
        part = (double *)qt_arena_alloc(a, (size_t)(tiles * D) * sizeof(double));
        QT_CHECK(part, "rmsnorm backward: out of device memory for %lld x %lld partial sums",
                 (long long)tiles, (long long)D);
        smem = (size_t)D * sizeof(double);
        if (smem > 48 * 1024) { /* beyond the default: opt in, up to what the device allows */
            int optin = 0;
            QT_CUDA_CHECK(
                cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->device),
                "asking for the shared memory limit (rmsnorm backward)");
            QT_CHECK(smem <= (size_t)optin,
                     "rmsnorm backward: D = %lld needs %zu bytes of shared memory, the device "
                     "allows %d",
                     (long long)D, smem, optin);
            QT_CUDA_CHECK(cudaFuncSetAttribute(rmsnorm_bwd_kernel<T>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)smem),
                          "raising the shared memory limit of rmsnorm backward");
        }
    }
    rmsnorm_bwd_kernel<T><<<(unsigned)tiles, row_threads(D), smem, c->stream>>>(
        (const T *)nd->in[0]->data, (const T *)nd->in[1]->data, (const T *)nd->out->grad->data,
        (const float *)nd->saved[0]->data, (T *)gx, part, rows, D, gx != NULL, beta_gx != 0.0f,
        gw != NULL, tile);
    QT_CUDA_CHECK_LAUNCH("launching rmsnorm backward");
    if (gw) {
        int64_t blocks = (D + 255) / 256;
        rmsnorm_gw_kernel<T>
            <<<(unsigned)blocks, 256, 0, c->stream>>>(part, (T *)gw, tiles, D, beta_gw != 0.0f);
        QT_CUDA_CHECK_LAUNCH("launching rmsnorm weight-gradient column sums");
    }
    qt_arena_rewind(a, mark);
}

/* the checks of a node: x, w, out (and its gradient) on CUDA in one float dtype, rstd f32 */
qt_dtype check_node(const qt_node *nd, const char *what) {
    const qt_tensor *x = nd->in[0], *w = nd->in[1], *y = nd->out, *rs = nd->saved[0];
    qt_dtype dt = x->dtype;
    QT_CHECK(x->device == QT_CUDA && w->device == QT_CUDA && y->device == QT_CUDA,
             "%s: tensors are not on CUDA", what);
    QT_CHECK(w->dtype == dt && y->dtype == dt, "%s: x %s, w %s, out %s differ", what,
             qt_dtype_name(dt), qt_dtype_name(w->dtype), qt_dtype_name(y->dtype));
    QT_CHECK(qt_numel(w) == qt_cols(x) && qt_numel(y) == qt_numel(x), "%s: shapes differ", what);
    QT_CHECK(rs && rs->dtype == QT_F32 && rs->device == QT_CUDA && qt_numel(rs) == qt_rows(x),
             "%s: rstd must be f32 [%lld] on CUDA", what, (long long)qt_rows(x));
    QT_CHECK(qt_rows(x) < (1ll << 31), "%s: %lld rows are more than one grid holds", what,
             (long long)qt_rows(x));
    return dt;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_rmsnorm_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "rmsnorm");
    int64_t rows = qt_rows(nd->out), D = qt_cols(nd->out);
    if (rows == 0) return;
    QT_FLOAT_DISPATCH(dt, T, "rmsnorm", launch_fwd<T>(ctx, nd, rows, D));
}

extern "C" void qt_cuda_rmsnorm_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "rmsnorm backward");
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "rmsnorm backward: missing or mismatched output gradient");
    int64_t rows = qt_rows(nd->out), D = qt_cols(nd->out);
    float beta_gx = 0.0f, beta_gw = 0.0f;
    void *gx = NULL, *gw = NULL;
    /* 0: overwrite (never beta * g: a fresh buffer may hold NaN bits) */
    if (qt_needs_grad(nd->in[0])) gx = qt_grad_acquire(ctx, nd->in[0], false, &beta_gx)->data;
    if (qt_needs_grad(nd->in[1])) gw = qt_grad_acquire(ctx, nd->in[1], false, &beta_gw)->data;
    if ((!gx && !gw) || D == 0) return;
    if (rows == 0) { /* gw is a sum over no rows: 0 when fresh, unchanged when accumulating */
        if (gw && beta_gw == 0.0f)
            qt_cuda_memset0((qt_cuda_ctx *)ctx->cuda, gw, qt_nbytes(nd->in[1]->grad));
        return;
    }
    QT_FLOAT_DISPATCH(dt, T, "rmsnorm backward",
                      launch_bwd<T>(ctx, nd, gx, beta_gx, gw, beta_gw, rows, D));
}
