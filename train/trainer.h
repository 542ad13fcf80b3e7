/* trainer.h - one optimizer step over gradient-accumulated micro-batches, as Hugging Face's
 * Trainer does it: the loss is the sum of per-token losses over the non-ignored targets of all
 * the step's micro-batches divided by their total count (so accumulation over k micro-batches
 * equals one k-times larger batch), then global-norm clipping, the schedule's learning rate and
 * one AdamW step. */
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
    int64_t tokens; /* counted (non-ignored) targets */
} qt_step_stats;

/* Runs forward+backward on each micro-batch, then clip + AdamW at step opt->step. */
int qt_train_step(qt_ctx *ctx, qt_llama *m, qt_adamw *opt, const qt_schedule *sched,
                  const qt_micro_batch *mb, int n_micro, double max_grad_norm, qt_step_stats *st,
                  qt_err *err);

#endif
