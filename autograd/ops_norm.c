/* ops_norm.c - RMSNorm as Hugging Face's LlamaRMSNorm computes it: statistics in f32,
 * y = w * (x * rstd) with rstd = rsqrt(mean(x²) + eps) per row. The public op and its CPU
 * kernels; rstd is saved for backward. */
#include <math.h>
#include <stdbool.h>

#include "kernels.h"

qt_tensor *qt_rmsnorm(qt_ctx *ctx, qt_tensor *x, qt_tensor *w, float eps) {
    char b0[64], b1[64];
    QT_CHECK(x->ndim >= 1 && (x->dtype == QT_F32 || x->dtype == QT_BF16 || x->dtype == QT_F16),
             "rmsnorm: x must be a float tensor, got %s", qt_dtype_name(x->dtype));
    QT_CHECK(w->ndim == 1 && w->shape[0] == qt_cols(x) && w->dtype == x->dtype,
             "rmsnorm: w must be %s [%lld] for x %s, got %s %s", qt_dtype_name(x->dtype),
             (long long)qt_cols(x), qt_shape_str(x, b0, sizeof b0), qt_dtype_name(w->dtype),
             qt_shape_str(w, b1, sizeof b1));
    QT_CHECK(eps >= 0, "rmsnorm: eps %g must not be negative", (double)eps);
    qt_node n = {.op = QT_OP_RMSNORM, .n_in = 2, .in = {x, w}};
    n.out = qt_tensor_new_like(ctx, x);
    int64_t rows = qt_rows(x);
    n.saved[0] = qt_tensor_new(ctx, QT_F32, 1, &rows); /* rstd [rows] */
    n.fp[0] = eps;
    qt_node_run(ctx, &n);
    return n.out;
}

void qt_cpu_rmsnorm_fwd(qt_ctx *ctx, qt_node *n) {
    const float *x = qt_f32(n->in[0]), *w = qt_f32(n->in[1]);
    float *y = qt_f32(n->out), *rstd = qt_f32(n->saved[0]), eps = n->fp[0];
    int64_t rows = qt_rows(n->out), D = qt_cols(n->out);
#pragma omp parallel for schedule(static) if (rows * D > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double ss = 0;
        for (int64_t j = 0; j < D; j++) ss += (double)xr[j] * xr[j];
        float var = (float)(ss / (double)D);
        float rs = 1.0f / sqrtf(var + eps);
        rstd[r] = rs;
        for (int64_t j = 0; j < D; j++) yr[j] = w[j] * (xr[j] * rs);
    }
}

/* With r = rstd: dy_j/dx_k = w_j r δ_jk - w_j x_j r³ x_k / D, so
 *   gx_k = r (w_k gy_k - x_k r² (Σ_j gy_j w_j x_j) / D),   gw_j = Σ_rows gy_j x_j r. */
void qt_cpu_rmsnorm_bwd(qt_ctx *ctx, qt_node *n) {
    const float *x = qt_f32(n->in[0]), *w = qt_f32(n->in[1]);
    const float *gy = qt_f32(n->out->grad), *rstd = qt_f32(n->saved[0]);
    int64_t rows = qt_rows(n->out), D = qt_cols(n->out);
    float beta; /* 0: overwrite (not beta * g: a fresh buffer may hold NaN bits) */
    if (qt_needs_grad(n->in[0])) {
        float *gx = qt_f32(qt_grad_acquire(ctx, n->in[0], false, &beta));
#pragma omp parallel for schedule(static) if (rows * D > 65536)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * D, *gr = gy + r * D;
            float *gxr = gx + r * D;
            double rs = rstd[r], dot = 0;
            for (int64_t j = 0; j < D; j++) dot += (double)gr[j] * w[j] * xr[j];
            double k = rs * rs * rs * dot / (double)D;
            for (int64_t j = 0; j < D; j++) {
                float v = (float)(rs * (double)w[j] * gr[j] - k * xr[j]);
                gxr[j] = beta != 0.0f ? gxr[j] + v : v;
            }
        }
    }
    if (qt_needs_grad(n->in[1])) {
        float *gw = qt_f32(qt_grad_acquire(ctx, n->in[1], false, &beta));
        /* column chunks, rows summed in order inside each: the same result for any thread count */
        enum { CH = 64 };
        int64_t nch = (D + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (rows * D > 65536)
        for (int64_t ch = 0; ch < nch; ch++) {
            int64_t j0 = ch * CH, j1 = j0 + CH < D ? j0 + CH : D;
            double acc[CH] = {0};
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * D, *gr = gy + r * D;
                double rs = rstd[r];
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += (double)gr[j] * xr[j] * rs;
            }
            for (int64_t j = j0; j < j1; j++)
                gw[j] = beta != 0.0f ? gw[j] + (float)acc[j - j0] : (float)acc[j - j0];
        }
    }
}
