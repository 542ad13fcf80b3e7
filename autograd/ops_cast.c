/* ops_cast.c - cast between F32, BF16 and F16 with round-to-nearest-even (quant/half.h), the
 * same rounding as CUDA's __float2bfloat16_rn / __float2half_rn. Backward casts the gradient
 * back to the input's dtype (accumulating in f32, then rounding once). */
#include "kernels.h"
#include "quant/half.h"

static bool is_float(qt_dtype dt) {
    return dt == QT_F32 || dt == QT_BF16 || dt == QT_F16;
}

qt_tensor *qt_cast(qt_ctx *ctx, qt_tensor *x, qt_dtype dt) {
    QT_CHECK(is_float(x->dtype) && is_float(dt), "cast: %s -> %s is not supported",
             qt_dtype_name(x->dtype), qt_dtype_name(dt));
    qt_node nd = {.op = QT_OP_CAST, .n_in = 1, .in = {x}};
    nd.out = qt_tensor_new(ctx, dt, x->ndim, x->shape);
    qt_node_run(ctx, &nd);
    return nd.out;
}

qt_tensor *qt_to_dtype(qt_ctx *ctx, qt_tensor *x, qt_dtype dt) {
    return x->dtype == dt ? x : qt_cast(ctx, x, dt);
}

static inline float load(const void *p, qt_dtype dt, int64_t i) {
    switch (dt) {
    case QT_BF16:
        return qt_bf16_to_f32(((const uint16_t *)p)[i]);
    case QT_F16:
        return qt_f16_to_f32(((const uint16_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

static inline void store(void *p, qt_dtype dt, int64_t i, float v) {
    switch (dt) {
    case QT_BF16:
        ((uint16_t *)p)[i] = qt_f32_to_bf16(v);
        break;
    case QT_F16:
        ((uint16_t *)p)[i] = qt_f32_to_f16(v);
        break;
    default:
        ((float *)p)[i] = v;
        break;
    }
}

void qt_cpu_cast_fwd(qt_ctx *ctx, qt_node *n) {
    qt_dtype si = n->in[0]->dtype, so = n->out->dtype;
    const void *x = n->in[0]->data;
    void *y = n->out->data;
    int64_t cnt = qt_numel(n->out);
#pragma omp parallel for schedule(static) if (cnt > 65536)
    for (int64_t i = 0; i < cnt; i++) store(y, so, i, load(x, si, i));
}

void qt_cpu_cast_bwd(qt_ctx *ctx, qt_node *n) {
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, n->in[0], false, &beta);
    const qt_tensor *gy = n->out->grad;
    int64_t cnt = qt_numel(g);
#pragma omp parallel for schedule(static) if (cnt > 65536)
    for (int64_t i = 0; i < cnt; i++) {
        float v = load(gy->data, gy->dtype, i);
        if (beta != 0.0f) v += load(g->data, g->dtype, i);
        store(g->data, g->dtype, i, v);
    }
}
