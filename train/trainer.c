/* trainer.c - see trainer.h. */
#include "trainer.h"

#include <stdlib.h>

#include "autograd/ops.h"
#include "autograd/tape.h"

static qt_tensor *upload_i32(qt_ctx *ctx, int ndim, const int64_t *shape, const int32_t *v) {
    qt_tensor *t = qt_tensor_new(ctx, QT_I32, ndim, shape);
    qt_tensor_upload(ctx, t, v);
    return t;
}

/* the tape's hook (optimizer in backward): a trainable tensor's gradient is complete */
typedef struct {
    qt_adamw *opt;
    int updated;
} bwd_hook;

static void on_grad_ready(qt_ctx *ctx, qt_tensor *t, void *user) {
    bwd_hook *h = user;
    int i = qt_adamw_find(h->opt, t);
    if (i < 0) return; /* not the optimizer's: its gradient stays until the step ends */
    if (qt_adamw_bwd_update(h->opt, ctx, i)) h->updated++;
    qt_grad_release(ctx, t);
}

int qt_train_step(qt_ctx *ctx, qt_llama *m, qt_adamw *opt, const qt_schedule *sched,
                  const qt_micro_batch *mb, int n_micro, double max_grad_norm, qt_step_stats *st,
                  qt_err *err) {
    qt_train_opts o = {.max_grad_norm = max_grad_norm};
    return qt_train_step_opts(ctx, m, opt, sched, mb, n_micro, &o, st, err);
}

int qt_train_step_opts(qt_ctx *ctx, qt_llama *m, qt_adamw *opt, const qt_schedule *sched,
                       const qt_micro_batch *mb, int n_micro, const qt_train_opts *o,
                       qt_step_stats *st, qt_err *err) {
    bool in_bwd = o->optimizer_in_bwd;
    if (in_bwd && n_micro != 1)
        return qt_err_set(err, QT_ERR_ARG,
                          "optimizer in backward: %d micro-batches in a step; it updates each "
                          "tensor as soon as its gradient is complete, so gradients cannot "
                          "accumulate (use one micro-batch per step)",
                          n_micro);
    if (in_bwd && o->max_grad_norm > 0)
        return qt_err_set(err, QT_ERR_ARG,
                          "optimizer in backward: cannot clip to max_grad_norm %g (clipping "
                          "needs every gradient before the first update); set it to 0",
                          o->max_grad_norm);
    /* the denominator first: every counted target of the whole step */
    int64_t total = 0;
    int32_t **targets = calloc((size_t)n_micro, sizeof *targets);
    if (!targets) return qt_err_set(err, QT_ERR_MEMORY, "out of memory");
    for (int k = 0; k < n_micro; k++) {
        int64_t n = mb[k].B * mb[k].T;
        targets[k] = malloc((size_t)(n ? n : 1) * sizeof **targets);
        if (!targets[k]) {
            for (int j = 0; j < k; j++) free(targets[j]);
            free(targets);
            return qt_err_set(err, QT_ERR_MEMORY, "out of memory");
        }
        qt_llama_shift_labels(mb[k].labels, targets[k], mb[k].B, mb[k].T);
        if (mb[k].doc) /* a target in the next document is not this token's next token */
            for (int64_t i = 0; i < n; i++)
                if ((i + 1) % mb[k].T == 0 || mb[k].doc[i + 1] != mb[k].doc[i] || mb[k].doc[i] < 0)
                    targets[k][i] = QT_IGNORE_INDEX;
        for (int64_t i = 0; i < n; i++) total += targets[k][i] != QT_IGNORE_INDEX;
    }
    double loss_sum = 0;
    st->lr = qt_schedule_lr(sched, opt->step);
    st->updated_early = 0;
    bwd_hook hook = {opt, 0};
    if (in_bwd) {
        int rc = qt_adamw_bwd_begin(opt, ctx, st->lr, err);
        if (rc) {
            for (int k = 0; k < n_micro; k++) free(targets[k]);
            free(targets);
            return rc;
        }
        qt_grad_ready_begin(ctx, on_grad_ready, &hook);
    }
    for (int k = 0; k < n_micro; k++) {
        qt_step_reset(ctx);
        int64_t bt[2] = {mb[k].B, mb[k].T}, n = mb[k].B * mb[k].T;
        qt_tensor *ids = upload_i32(ctx, 2, bt, mb[k].ids);
        qt_tensor *tgt = upload_i32(ctx, 1, &n, targets[k]);
        qt_tensor *pos = mb[k].pos ? upload_i32(ctx, 2, bt, mb[k].pos) : NULL;
        qt_tensor *doc = mb[k].doc ? upload_i32(ctx, 2, bt, mb[k].doc) : NULL;
        /* denom = the step's count: each micro-batch contributes its share of the mean */
        qt_tensor *loss = qt_llama_loss(ctx, m, ids, tgt, pos, doc, total ? (float)total : 1.0f);
        loss_sum += qt_tensor_get(ctx, loss, 0);
        if (loss->requires_grad) qt_backward(ctx, loss);
    }
    for (int k = 0; k < n_micro; k++) free(targets[k]);
    free(targets);
    st->tokens = total;
    st->loss = loss_sum;
    if (in_bwd) {
        /* what the hook did not see (a tensor passed into a checkpointed span is seen only
         * through its alias), then the step count; then every gradient is dropped */
        st->grad_norm = qt_adamw_bwd_end(opt, ctx);
        st->updated_early = hook.updated;
        qt_grad_ready_end(ctx);
        return QT_OK;
    }
    st->grad_norm = qt_grad_clip(ctx, m->train, m->n_train, o->max_grad_norm);
    qt_adamw_step(opt, ctx, st->lr);
    return QT_OK;
}
