/* ops_loss.c - cross-entropy over a vocabulary with ignored targets: the public function and the
 * CPU reference kernels. loss = Σ_i (lse_i - logits_i[t_i]) over targets != QT_IGNORE_INDEX,
 * divided by denom when denom > 0 (gradient accumulation: the token count of every micro-batch
 * of the step) or else by the number of counted targets. With no counted target the loss is 0
 * and so is its gradient; Hugging Face's mean would give NaN (0/0), which would poison the
 * accumulated gradients of a whole step because of one fully masked micro-batch.
 * Node: in = {logits [N, V], targets [N] i32}, fp[0] = denom, saved[0] = lse [N] f32,
 * saved[1] = the divisor [1] f32 (0 when nothing was counted: no gradient). */
#include <math.h>
#include <stdlib.h>

#include "kernels.h"

qt_tensor *qt_cross_entropy(qt_ctx *ctx, qt_tensor *logits, qt_tensor *targets, float denom) {
    char sl[64], st[64];
    QT_CHECK(logits->ndim == 2 && targets->ndim == 1 && targets->shape[0] == logits->shape[0],
             "cross_entropy: logits must be [N, V] and targets [N] (got %s and %s)",
             qt_shape_str(logits, sl, sizeof sl), qt_shape_str(targets, st, sizeof st));
    QT_CHECK(logits->dtype == QT_F32 || logits->dtype == QT_BF16 || logits->dtype == QT_F16,
             "cross_entropy: logits must be float (got %s)", qt_dtype_name(logits->dtype));
    QT_CHECK(targets->dtype == QT_I32, "cross_entropy: targets must be i32 (got %s)",
             qt_dtype_name(targets->dtype));
    QT_CHECK(!isnan(denom), "cross_entropy: denom is NaN");
    qt_node n = {.op = QT_OP_CROSS_ENTROPY, .n_in = 2, .in = {logits, targets}};
    n.out = qt_tensor_new(ctx, QT_F32, 1, (const int64_t[]){1});
    n.saved[0] = qt_tensor_new(ctx, QT_F32, 1, (const int64_t[]){logits->shape[0]});
    n.saved[1] = qt_tensor_new(ctx, QT_F32, 1, (const int64_t[]){1});
    n.fp[0] = denom;
    qt_node_run(ctx, &n);
    return n.out;
}

void qt_cpu_cross_entropy_fwd(qt_ctx *ctx, qt_node *n) {
    const float *x = qt_f32(n->in[0]);   /* [N, V] */
    const int32_t *t = qt_i32(n->in[1]); /* [N] */
    float *lse = qt_f32(n->saved[0]);    /* [N] */
    int64_t N = n->in[0]->shape[0], V = n->in[0]->shape[1];
    /* before any parallel region: a bad target is a caller's bug, named here */
    int64_t count = 0;
    for (int64_t i = 0; i < N; i++) {
        QT_CHECK(t[i] == QT_IGNORE_INDEX || (t[i] >= 0 && t[i] < V),
                 "cross_entropy: target %d at row %lld is outside [0, %lld) and is not the "
                 "ignore index %d",
                 (int)t[i], (long long)i, (long long)V, QT_IGNORE_INDEX);
        count += t[i] != QT_IGNORE_INDEX;
    }
    double *loss = malloc((size_t)(N ? N : 1) * sizeof *loss); /* [N] */
    QT_CHECK(loss, "out of host memory");
#pragma omp parallel for schedule(static) if (N * V > 16384)
    for (int64_t i = 0; i < N; i++) {
        const float *xr = x + i * V;
        if (t[i] == QT_IGNORE_INDEX) {
            lse[i] = 0;
            loss[i] = 0;
            continue;
        }
        float m = -INFINITY;
        for (int64_t c = 0; c < V; c++) m = xr[c] > m ? xr[c] : m;
        double s = 0;
        for (int64_t c = 0; c < V; c++) s += exp((double)xr[c] - m);
        double l = m + log(s);
        lse[i] = (float)l;
        loss[i] = l - xr[t[i]];
    }
    double sum = 0; /* in row order: the same whatever the thread count */
    for (int64_t i = 0; i < N; i++) sum += loss[i];
    free(loss);
    double div = count == 0 ? 0 : n->fp[0] > 0 ? (double)n->fp[0] : (double)count;
    qt_f32(n->out)[0] = div > 0 ? (float)(sum / div) : 0.0f;
    qt_f32(n->saved[1])[0] = (float)div;
}

/* d loss / d logits_i = (softmax(logits_i) - onehot(t_i)) / divisor, 0 for ignored rows */
void qt_cpu_cross_entropy_bwd(qt_ctx *ctx, qt_node *n) {
    const float *x = qt_f32(n->in[0]);   /* [N, V] */
    const int32_t *t = qt_i32(n->in[1]); /* [N] */
    const float *lse = qt_f32(n->saved[0]);
    float div = qt_f32(n->saved[1])[0];
    double f = div > 0 ? (double)qt_f32(n->out->grad)[0] / div : 0.0;
    int64_t N = n->in[0]->shape[0], V = n->in[0]->shape[1];
    float beta;
    float *g = qt_f32(qt_grad_acquire(ctx, n->in[0], false, &beta)); /* [N, V] */
#pragma omp parallel for schedule(static) if (N * V > 16384)
    for (int64_t i = 0; i < N; i++) {
        const float *xr = x + i * V;
        float *gr = g + i * V;
        bool on = t[i] != QT_IGNORE_INDEX && f != 0.0;
        for (int64_t c = 0; c < V; c++) {
            float v = on ? (float)((exp((double)xr[c] - lse[i]) - (c == t[i])) * f) : 0.0f;
            gr[c] = beta != 0.0f ? gr[c] + v : v;
        }
    }
}
