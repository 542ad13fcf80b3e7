/* ops_elementwise.c - add, mul, scale, bias add, SiLU, SwiGLU: the public functions and their
 * CPU reference kernels (f32, OpenMP over elements), plus the axpby helper backward uses. */
#include <math.h>
#include <string.h>

#include "kernels.h"

#ifdef QT_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

/* ---- helpers -------------------------------------------------------------------------- */

void qt_cpu_axpby_f32(float *dst, const float *src, int64_t n, float beta) {
    if (beta == 0.0f) {
        memcpy(dst, src, (size_t)n * sizeof *dst);
        return;
    }
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

void qt_k_axpby(qt_ctx *ctx, qt_tensor *dst, const qt_tensor *src, float beta) {
    QT_CHECK(qt_numel(dst) == qt_numel(src) && dst->dtype == src->dtype, "axpby mismatch");
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        qt_cuda_axpby(ctx, dst, src, beta);
        return;
#endif
    }
    if (dst->dtype == QT_F32) {
        qt_cpu_axpby_f32(dst->data, src->data, qt_numel(dst), beta);
        return;
    }
    QT_CHECK(beta == 0.0f, "CPU accumulation needs f32 (got %s)", qt_dtype_name(dst->dtype));
    memcpy(dst->data, src->data, qt_nbytes(dst));
}

static qt_tensor *run1(qt_ctx *ctx, qt_op op, qt_tensor *out, int n_in, qt_tensor *a, qt_tensor *b,
                       float f0) {
    qt_node n = {.op = op, .n_in = n_in, .out = out};
    n.in[0] = a;
    n.in[1] = b;
    n.fp[0] = f0;
    qt_node_run(ctx, &n);
    return out;
}

/* ---- public ops ----------------------------------------------------------------------- */

qt_tensor *qt_add(qt_ctx *ctx, qt_tensor *a, qt_tensor *b) {
    QT_CHECK(qt_same_shape(a, b) && a->dtype == b->dtype, "add: shapes/dtypes differ");
    return run1(ctx, QT_OP_ADD, qt_tensor_new_like(ctx, a), 2, a, b, 0);
}

qt_tensor *qt_mul(qt_ctx *ctx, qt_tensor *a, qt_tensor *b) {
    QT_CHECK(qt_same_shape(a, b) && a->dtype == b->dtype, "mul: shapes/dtypes differ");
    return run1(ctx, QT_OP_MUL, qt_tensor_new_like(ctx, a), 2, a, b, 0);
}

qt_tensor *qt_scale(qt_ctx *ctx, qt_tensor *x, float s) {
    return run1(ctx, QT_OP_SCALE, qt_tensor_new_like(ctx, x), 1, x, NULL, s);
}

qt_tensor *qt_bias_add(qt_ctx *ctx, qt_tensor *x, qt_tensor *b) {
    QT_CHECK(b->ndim == 1 && b->shape[0] == qt_cols(x) && b->dtype == x->dtype,
             "bias_add: bias must be [%lld]", (long long)qt_cols(x));
    return run1(ctx, QT_OP_BIAS_ADD, qt_tensor_new_like(ctx, x), 2, x, b, 0);
}

qt_tensor *qt_silu(qt_ctx *ctx, qt_tensor *x) {
    return run1(ctx, QT_OP_SILU, qt_tensor_new_like(ctx, x), 1, x, NULL, 0);
}

qt_tensor *qt_swiglu(qt_ctx *ctx, qt_tensor *gate, qt_tensor *up) {
    QT_CHECK(qt_same_shape(gate, up) && gate->dtype == up->dtype, "swiglu: shapes differ");
    return run1(ctx, QT_OP_SWIGLU, qt_tensor_new_like(ctx, gate), 2, gate, up, 0);
}

/* ---- CPU kernels ---------------------------------------------------------------------- */

#define QT_PAR _Pragma("omp parallel for schedule(static) if (n > 65536)")
/* First contribution (beta 0) overwrites: never 0 * g, since a fresh buffer may hold NaN bits */
#define ACC(g, beta, v) ((beta) != 0.0f ? (g) + (v) : (v))

void qt_cpu_add_fwd(qt_ctx *ctx, qt_node *nd) {
    const float *a = qt_f32(nd->in[0]), *b = qt_f32(nd->in[1]);
    float *y = qt_f32(nd->out);
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void qt_cpu_add_bwd(qt_ctx *ctx, qt_node *nd) {
    float beta;
    bool self = nd->in[0] == nd->in[1], handed = false;
    for (int k = 0; k < 2; k++) {
        if (!qt_needs_grad(nd->in[k])) continue;
        /* gy is dead after this op: one input may take it (as on the GPU) */
        if (!self && !handed && qt_grad_handover(ctx, nd->in[k], nd->out->grad)) {
            handed = true;
            continue;
        }
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[k], false, &beta);
        qt_cpu_axpby_f32(qt_f32(g), qt_f32(nd->out->grad), qt_numel(g), beta);
    }
}

void qt_cpu_mul_fwd(qt_ctx *ctx, qt_node *nd) {
    const float *a = qt_f32(nd->in[0]), *b = qt_f32(nd->in[1]);
    float *y = qt_f32(nd->out);
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
}

void qt_cpu_mul_bwd(qt_ctx *ctx, qt_node *nd) {
    const float *gy = qt_f32(nd->out->grad);
    int64_t n = qt_numel(nd->out);
    float beta;
    for (int k = 0; k < 2; k++) {
        if (!qt_needs_grad(nd->in[k])) continue;
        const float *o = qt_f32(nd->in[1 - k]);
        float *g = qt_f32(qt_grad_acquire(ctx, nd->in[k], false, &beta));
        QT_PAR for (int64_t i = 0; i < n; i++) g[i] = ACC(g[i], beta, gy[i] * o[i]);
    }
}

void qt_cpu_scale_fwd(qt_ctx *ctx, qt_node *nd) {
    const float *x = qt_f32(nd->in[0]);
    float *y = qt_f32(nd->out), s = nd->fp[0];
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) y[i] = x[i] * s;
}

void qt_cpu_scale_bwd(qt_ctx *ctx, qt_node *nd) {
    float beta, s = nd->fp[0];
    const float *gy = qt_f32(nd->out->grad);
    float *g = qt_f32(qt_grad_acquire(ctx, nd->in[0], false, &beta));
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) g[i] = ACC(g[i], beta, gy[i] * s);
}

void qt_cpu_bias_add_fwd(qt_ctx *ctx, qt_node *nd) {
    const float *x = qt_f32(nd->in[0]), *b = qt_f32(nd->in[1]);
    float *y = qt_f32(nd->out);
    int64_t rows = qt_rows(nd->out), cols = qt_cols(nd->out);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] + b[c];
}

void qt_cpu_bias_add_bwd(qt_ctx *ctx, qt_node *nd) {
    float beta;
    const float *gy = qt_f32(nd->out->grad);
    int64_t rows = qt_rows(nd->out), cols = qt_cols(nd->out);
    if (qt_needs_grad(nd->in[0])) {
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
        qt_cpu_axpby_f32(qt_f32(g), gy, rows * cols, beta);
    }
    if (qt_needs_grad(nd->in[1])) {
        float *gb = qt_f32(qt_grad_acquire(ctx, nd->in[1], false, &beta));
        /* per column, rows summed in order: the same result whatever the thread count */
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
        for (int64_t c = 0; c < cols; c++) {
            double s = 0;
            for (int64_t r = 0; r < rows; r++) s += gy[r * cols + c];
            gb[c] = ACC(gb[c], beta, (float)s);
        }
    }
}

static inline float sigmoidf(float x) {
    return 1.0f / (1.0f + expf(-x));
}

void qt_cpu_silu_fwd(qt_ctx *ctx, qt_node *nd) {
    const float *x = qt_f32(nd->in[0]);
    float *y = qt_f32(nd->out);
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(x[i]);
}

/* d silu/dx = s(x) * (1 + x * (1 - s(x))) */
void qt_cpu_silu_bwd(qt_ctx *ctx, qt_node *nd) {
    float beta;
    const float *x = qt_f32(nd->in[0]), *gy = qt_f32(nd->out->grad);
    float *g = qt_f32(qt_grad_acquire(ctx, nd->in[0], false, &beta));
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) {
        float s = sigmoidf(x[i]);
        g[i] = ACC(g[i], beta, gy[i] * s * (1.0f + x[i] * (1.0f - s)));
    }
}

void qt_cpu_swiglu_fwd(qt_ctx *ctx, qt_node *nd) {
    const float *a = qt_f32(nd->in[0]), *u = qt_f32(nd->in[1]);
    float *y = qt_f32(nd->out);
    int64_t n = qt_numel(nd->out);
    QT_PAR for (int64_t i = 0; i < n; i++) y[i] = a[i] * sigmoidf(a[i]) * u[i];
}

void qt_cpu_swiglu_bwd(qt_ctx *ctx, qt_node *nd) {
    float beta;
    const float *a = qt_f32(nd->in[0]), *u = qt_f32(nd->in[1]), *gy = qt_f32(nd->out->grad);
    int64_t n = qt_numel(nd->out);
    if (qt_needs_grad(nd->in[0])) {
        float *g = qt_f32(qt_grad_acquire(ctx, nd->in[0], false, &beta));
        QT_PAR for (int64_t i = 0; i < n; i++) {
            float s = sigmoidf(a[i]);
            g[i] = ACC(g[i], beta, gy[i] * u[i] * s * (1.0f + a[i] * (1.0f - s)));
        }
    }
    if (qt_needs_grad(nd->in[1])) {
        float *g = qt_f32(qt_grad_acquire(ctx, nd->in[1], false, &beta));
        QT_PAR for (int64_t i = 0; i < n; i++) g[i] =
            ACC(g[i], beta, gy[i] * a[i] * sigmoidf(a[i]));
    }
}
