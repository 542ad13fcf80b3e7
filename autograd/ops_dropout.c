/* ops_dropout.c - dropout with a counter-based mask (philox.h defines it exactly): the public op
 * and its CPU kernels. A call takes the context's seed and the next offset of its dropout
 * stream; the node keeps (seed, offset) and backward regenerates the mask from them, so no mask
 * is stored and the CPU and CUDA kernels draw the same one. */
#include "kernels.h"
#include "philox.h"

qt_tensor *qt_dropout(qt_ctx *ctx, qt_tensor *x, float p) {
    QT_CHECK(p >= 0.0f && p < 1.0f, "dropout: p = %g must be in [0, 1)", (double)p);
    QT_CHECK(x->dtype == QT_F32 || x->dtype == QT_BF16 || x->dtype == QT_F16,
             "dropout: x must be a float tensor, got %s", qt_dtype_name(x->dtype));
    /* no node and no offset consumed: p = 0 is the identity (evaluation, lora_dropout 0) */
    if (p == 0.0f) return x;
    qt_node n = {.op = QT_OP_DROPOUT, .n_in = 1, .in = {x}};
    n.out = qt_tensor_new_like(ctx, x);
    n.ip[0] = (int64_t)ctx->rng_seed;
    n.ip[1] = (int64_t)ctx->rng_offset++;
    n.fp[0] = p;
    qt_node_run(ctx, &n);
    return n.out;
}

/* y = beta * y + mask(seed, offset) * x / (1 - p): the forward (beta 0) and, applied to the
 * output gradient, the backward (the mask is its own transpose) */
static void dropout_apply(const float *x, float *y, int64_t n, uint64_t seed, uint64_t offset,
                          float p, float beta) {
    float scale = 1.0f / (1.0f - p);
    int64_t nblk = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t b = 0; b < nblk; b++) {
        uint32_t w[4];
        qt_dropout_block(seed, offset, (uint64_t)b, w);
        for (int64_t i = 4 * b, k = 0; k < 4 && i < n; i++, k++) {
            float v = qt_philox_uniform(w[k]) >= p ? x[i] * scale : 0.0f;
            y[i] = beta != 0.0f ? y[i] + v : v;
        }
    }
}

void qt_cpu_dropout_fwd(qt_ctx *ctx, qt_node *n) {
    dropout_apply(qt_f32(n->in[0]), qt_f32(n->out), qt_numel(n->out), (uint64_t)n->ip[0],
                  (uint64_t)n->ip[1], n->fp[0], 0.0f);
}

void qt_cpu_dropout_bwd(qt_ctx *ctx, qt_node *n) {
    if (!qt_needs_grad(n->in[0])) return;
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, n->in[0], false, &beta);
    dropout_apply(qt_f32(n->out->grad), qt_f32(g), qt_numel(n->out), (uint64_t)n->ip[0],
                  (uint64_t)n->ip[1], n->fp[0], beta);
}
