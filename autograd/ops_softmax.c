/* ops_softmax.c - softmax over the last dim: the public function and the CPU reference kernels
 * (max-subtracted, double sums, OpenMP over rows). The backward needs only the output:
 * gx = y * (gy - Σ gy·y). */
#include <math.h>

#include "kernels.h"

qt_tensor *qt_softmax(qt_ctx *ctx, qt_tensor *x) {
    QT_CHECK(x->ndim >= 1, "softmax: needs at least one dim");
    QT_CHECK(x->dtype == QT_F32 || x->dtype == QT_BF16 || x->dtype == QT_F16,
             "softmax: needs a float tensor (got %s)", qt_dtype_name(x->dtype));
    qt_node n = {.op = QT_OP_SOFTMAX, .n_in = 1, .in = {x}};
    n.out = qt_tensor_new_like(ctx, x);
    qt_node_run(ctx, &n);
    return n.out;
}

void qt_cpu_softmax_fwd(qt_ctx *ctx, qt_node *n) {
    const float *x = qt_f32(n->in[0]); /* [rows, cols] */
    float *y = qt_f32(n->out);         /* [rows, cols] */
    int64_t rows = qt_rows(n->out), cols = qt_cols(n->out);
#pragma omp parallel for schedule(static) if (rows * cols > 16384)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = -INFINITY;
        for (int64_t c = 0; c < cols; c++) m = xr[c] > m ? xr[c] : m;
        double s = 0;
        for (int64_t c = 0; c < cols; c++) s += exp((double)xr[c] - m);
        double inv = 1.0 / s; /* s >= 1: the maximum contributes exp(0) */
        for (int64_t c = 0; c < cols; c++) yr[c] = (float)(exp((double)xr[c] - m) * inv);
    }
}

void qt_cpu_softmax_bwd(qt_ctx *ctx, qt_node *n) {
    const float *y = qt_f32(n->out), *gy = qt_f32(n->out->grad); /* [rows, cols] */
    float beta;
    float *gx = qt_f32(qt_grad_acquire(ctx, n->in[0], false, &beta)); /* [rows, cols] */
    int64_t rows = qt_rows(n->out), cols = qt_cols(n->out);
#pragma omp parallel for schedule(static) if (rows * cols > 16384)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * cols, *gr = gy + r * cols;
        float *xr = gx + r * cols;
        double dot = 0;
        for (int64_t c = 0; c < cols; c++) dot += (double)gr[c] * yr[c];
        for (int64_t c = 0; c < cols; c++) {
            float v = (float)(yr[c] * (gr[c] - dot));
            xr[c] = beta != 0.0f ? xr[c] + v : v;
        }
    }
}
