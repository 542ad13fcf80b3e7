/* ops_embedding.c - embedding lookup: out[..., D] = W[ids[...], :]. The public op and its CPU
 * kernels. Backward scatter-adds the output gradient into W's gradient rows; ids (i32) never get
 * a gradient. */
#include <string.h>

#include "kernels.h"

qt_tensor *qt_embedding(qt_ctx *ctx, qt_tensor *W, qt_tensor *ids) {
    char b0[64], b1[64];
    QT_CHECK(W->ndim == 2 && (W->dtype == QT_F32 || W->dtype == QT_BF16 || W->dtype == QT_F16),
             "embedding: W must be a float [V, D], got %s %s", qt_dtype_name(W->dtype),
             qt_shape_str(W, b0, sizeof b0));
    QT_CHECK(ids->dtype == QT_I32 && ids->ndim < QT_MAX_DIMS,
             "embedding: ids must be i32 with at most %d dims, got %s %s", QT_MAX_DIMS - 1,
             qt_dtype_name(ids->dtype), qt_shape_str(ids, b1, sizeof b1));
    int64_t shape[QT_MAX_DIMS];
    for (int i = 0; i < ids->ndim; i++) shape[i] = ids->shape[i];
    shape[ids->ndim] = W->shape[1];
    qt_node n = {.op = QT_OP_EMBEDDING, .n_in = 2, .in = {W, ids}};
    n.out = qt_tensor_new(ctx, W->dtype, ids->ndim + 1, shape);
    qt_node_run(ctx, &n);
    return n.out;
}

void qt_cpu_embedding_fwd(qt_ctx *ctx, qt_node *n) {
    const float *W = qt_f32(n->in[0]);
    const int32_t *ids = qt_i32(n->in[1]);
    float *y = qt_f32(n->out);
    int64_t V = n->in[0]->shape[0], D = n->in[0]->shape[1], N = qt_numel(n->in[1]);
    /* checked before the parallel copy so a bad id is reported once, with its position */
    for (int64_t t = 0; t < N; t++)
        QT_CHECK(ids[t] >= 0 && ids[t] < V,
                 "embedding: id %d at position %lld is out of range [0, %lld) of '%s'", ids[t],
                 (long long)t, (long long)V, n->in[0]->name);
#pragma omp parallel for schedule(static) if (N * D > 65536)
    for (int64_t t = 0; t < N; t++)
        memcpy(y + t * D, W + (int64_t)ids[t] * D, (size_t)D * sizeof *y);
}

/* A token id may repeat, so rows of gW take several contributions. Each thread owns a chunk of
 * columns and walks all tokens in order: every element is summed in token order, whatever the
 * thread count. */
void qt_cpu_embedding_bwd(qt_ctx *ctx, qt_node *n) {
    if (!qt_needs_grad(n->in[0])) return;
    float beta;
    /* only the rows of ids are written: ask for a zero-filled buffer when it is fresh */
    float *gW = qt_f32(qt_grad_acquire(ctx, n->in[0], true, &beta));
    const int32_t *ids = qt_i32(n->in[1]);
    const float *gy = qt_f32(n->out->grad); /* [N, D] */
    int64_t D = n->in[0]->shape[1], N = qt_numel(n->in[1]);
    enum { CH = 64 };
    int64_t nch = (D + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (N * D > 65536)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t j0 = ch * CH, j1 = j0 + CH < D ? j0 + CH : D;
        for (int64_t t = 0; t < N; t++) {
            float *gr = gW + (int64_t)ids[t] * D;
            const float *g = gy + t * D;
            for (int64_t j = j0; j < j1; j++) gr[j] += g[j];
        }
    }
}
