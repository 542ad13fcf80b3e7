/* optim.h - AdamW with decoupled weight decay and bias correction (torch.optim.AdamW's
 * arithmetic, step for step), global-norm gradient clipping (torch's clip_grad_norm_), and the
 * learning-rate schedules of Hugging Face transformers (constant, constant_with_warmup, linear,
 * cosine, each with warmup). Moments and masters are fp32; a trainable tensor stored in bf16
 * keeps an fp32 master copy that the update is applied to, then rounded into the tensor.
 *
 * 8-bit AdamW (bits = 8; axolotl's adamw_bnb_8bit): bitsandbytes' blockwise AdamW8bit. Tensors
 * of at least QT_ADAMW8_MIN_SIZE elements keep each moment as 8-bit codes of the dynamic map
 * (signed for m, unsigned for v) with an fp32 absmax per block of QT_ADAMW8_BLOCK: 2 bytes of
 * state per parameter instead of 8. Per block: dequantize, m and v updated in fp32, the new
 * absmax, the parameter from those fp32 moments (bitsandbytes' form: step size
 * lr sqrt(1-b2^t)/(1-b1^t), eps scaled by sqrt(1-b2^t), weight decay applied after the update),
 * then the nearest codes (m's moved one step when that code has the other sign). Smaller tensors
 * (norms, biases) keep fp32 moments, as bitsandbytes keeps 32-bit state below its min_8bit_size,
 * and are updated as its 32-bit kernel updates them: torch's moments, with the step size, eps and
 * weight decay (after the update) of the 8-bit form. With bits = 32 nothing of this applies. */
#ifndef QT_OPTIM_H
#define QT_OPTIM_H

#include "autograd/context.h"

typedef enum {
    QT_SCHED_CONSTANT,
    QT_SCHED_CONSTANT_WITH_WARMUP,
    QT_SCHED_LINEAR,
    QT_SCHED_COSINE,
} qt_sched_kind;

typedef struct {
    qt_sched_kind kind;
    double lr;        /* peak learning rate */
    int64_t warmup;   /* warmup steps */
    int64_t total;    /* training steps (for linear / cosine decay) */
    double min_ratio; /* floor as a fraction of lr (cosine_min_lr_ratio); 0 = Hugging Face */
} qt_schedule;

/* The learning rate used by optimizer step `step` (0-based), as Hugging Face's LambdaLR gives
 * it: lr * lambda(step). */
double qt_schedule_lr(const qt_schedule *s, int64_t step);
/* "cosine" -> QT_SCHED_COSINE; returns -1 when the name is unknown */
int qt_schedule_parse(const char *name, qt_sched_kind *out);

enum { QT_ADAMW8_BLOCK = 256, QT_ADAMW8_MIN_SIZE = 4096 };

typedef struct {
    qt_tensor *param;               /* the trained tensor (f32 or bf16) */
    qt_tensor *master;              /* fp32 copy when param is not f32, else NULL */
    qt_tensor *m, *v;               /* fp32 moments, or NULL for 8-bit state */
    qt_tensor *m8, *v8;             /* 8-bit state: u8 codes [numel] */
    qt_tensor *m_absmax, *v_absmax; /* f32 [ceil(numel / QT_ADAMW8_BLOCK)] */
    bool decay; /* weight decay applies (not to norms and biases by convention) */
} qt_adamw_slot;

typedef struct {
    double beta1, beta2, eps, weight_decay;
    int64_t step; /* steps taken */
    int bits;     /* 32, or 8: bitsandbytes' blockwise 8-bit state */
    int n;
    qt_adamw_slot *slot;
    float maps[2 * 256]; /* 8-bit: the signed (m) and unsigned (v) dynamic maps */
    qt_tensor *maps_dev; /* the same on the context's device (8-bit on CUDA), else NULL */
    /* optimizer in backward: the open step (qt_adamw_bwd_begin .. _end) */
    bool bwd_on;
    double bwd_lr;
    bool *bwd_done;    /* [n]: updated in this step */
    double *bwd_sumsq; /* [n]: the consumed gradient's sum of squares (CPU; CUDA at _end) */
} qt_adamw;

/* Registers the trainable tensors (moments zeroed, masters copied from the tensors). */
int qt_adamw_init(qt_adamw *opt, qt_ctx *ctx, qt_tensor **params, const bool *decay, int n,
                  double beta1, double beta2, double eps, double weight_decay, qt_err *err);
/* the same with the state's bits: 32, or 8 (8-bit AdamW) */
int qt_adamw_init_bits(qt_adamw *opt, qt_ctx *ctx, qt_tensor **params, const bool *decay, int n,
                       double beta1, double beta2, double eps, double weight_decay, int bits,
                       qt_err *err);
void qt_adamw_free(qt_adamw *opt);

/* sqrt(sum over tensors of ||g||²), computed as torch does: the norm of the per-tensor norms.
 * Tensors whose gradient never arrived count as zero. */
double qt_grad_global_norm(qt_ctx *ctx, qt_tensor **params, int n);
/* Scales every gradient by min(1, max_norm / (norm + 1e-6)) when max_norm > 0; returns the
 * norm before clipping. */
double qt_grad_clip(qt_ctx *ctx, qt_tensor **params, int n, double max_norm);

/* One AdamW step with learning rate lr over the registered tensors, then their gradients
 * are marked empty (qt_grad_zero). */
void qt_adamw_step(qt_adamw *opt, qt_ctx *ctx, double lr);

/* The same step one tensor at a time, as each gradient is complete (the optimizer in
 * backward, torchtune's optimizer_in_bwd; train/trainer.c drives it from the tape's hook):
 *   qt_adamw_bwd_begin(opt, ctx, lr)   opens step opt->step + 1 at learning rate lr;
 *   qt_adamw_bwd_update(opt, ctx, i)   updates slot i from its gradient (when it has one and
 *                                      was not updated yet: returns whether it did), takes
 *                                      the gradient's sum of squares, marks it empty;
 *   qt_adamw_bwd_end(opt, ctx)         updates the slots whose gradient is still waiting,
 *                                      counts the step, returns the global gradient norm.
 * Each tensor gets exactly qt_adamw_step's arithmetic with the same bias corrections (the step
 * count moves once, after every tensor), 32-bit or 8-bit, CPU or CUDA: the result is the
 * normal step's bit for bit when that one clips nothing (max_grad_norm 0) and there is one
 * micro-batch. The norm is qt_grad_global_norm's: the same per-tensor sums, combined in slot
 * order. No clipping (it needs every gradient before the first update). */
int qt_adamw_bwd_begin(qt_adamw *opt, qt_ctx *ctx, double lr, qt_err *err);
bool qt_adamw_bwd_update(qt_adamw *opt, qt_ctx *ctx, int i);
double qt_adamw_bwd_end(qt_adamw *opt, qt_ctx *ctx);
/* the slot of tensor t, or -1 */
int qt_adamw_find(const qt_adamw *opt, const qt_tensor *t);

#endif
