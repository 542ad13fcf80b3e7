/* trainer.h - one optimizer step over gradient-accumulated micro-batches, as Hugging Face's
 * Trainer does it: the loss is the sum of per-token losses over the non-ignored targets of all
 * the step's micro-batches divided by their total count (so accumulation over k micro-batches
 * equals one k-times larger batch), then global-norm clipping, the schedule's learning rate and
 * one AdamW step; or, with the optimizer in backward, AdamW on each tensor during the backward. */
#ifndef QT_TRAINER_H
#define QT_TRAINER_H

#include "train/llama.h"
#include "train/optim.h"

/* One micro-batch, host side: ids and labels [B, T] (labels -100 = ignored; the shift to next
 * tokens happens here), optional positions and document ids for packed rows. */
typedef struct {
    int64_t B, T;
    const int32_t *ids, *labels;
    const int32_t *pos, *doc; /* NULL: 0..T-1 and one document per row */
} qt_micro_batch;

typedef struct {
    double loss;      /* mean over the step's counted tokens */
    double grad_norm; /* before clipping */
    double lr;
    int64_t tokens;    /* counted (non-ignored) targets */
    int updated_early; /* optimizer in backward: tensors updated during the backward (the
                        * rest, whose last use backward does not see, right after it) */
} qt_step_stats;

typedef struct {
    double max_grad_norm; /* clip the global gradient norm to this; 0: no clipping */
    /* Optimizer in backward (torchtune's optimizer_in_bwd): each trainable tensor is updated
     * by AdamW as soon as its gradient is complete, in the middle of the backward, and the
     * gradient is dropped, so the full set of gradients never exists at once (a full
     * fine-tune holds no persistent f32 gradients, 4 B per parameter; the embedding's and about
     * one block's are alive at a time, in ctx->grad_arena). Needs one
     * micro-batch per step and max_grad_norm 0 (clipping needs every gradient first): else
     * QT_ERR_ARG. The result is the normal step's, bit for bit; grad_norm is still reported. */
    bool optimizer_in_bwd;
} qt_train_opts;

/* Runs forward+backward on each micro-batch, then clip + AdamW at step opt->step. */
int qt_train_step(qt_ctx *ctx, qt_llama *m, qt_adamw *opt, const qt_schedule *sched,
                  const qt_micro_batch *mb, int n_micro, double max_grad_norm, qt_step_stats *st,
                  qt_err *err);
/* The same with the options above. */
int qt_train_step_opts(qt_ctx *ctx, qt_llama *m, qt_adamw *opt, const qt_schedule *sched,
                       const qt_micro_batch *mb, int n_micro, const qt_train_opts *o,
                       qt_step_stats *st, qt_err *err);

#endif
