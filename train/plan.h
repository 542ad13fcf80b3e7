/* plan.h - `qtune plan`: the memory a job will need, from its config and the model's
 * config.json alone (no weights are read): the frozen base (f32/bf16, or NF4 + double quant at
 * 4.127 bits per weight), the trainable tensors with their gradients, fp32 masters and AdamW
 * moments (with optimizer_in_bwd the gradients are not persistent: the most alive at once is
 * estimated instead), and the step's activations (with gradient checkpointing: every block's input
 * plus one block's working set, and the logits). Persistent memory is computed exactly as the
 * loader allocates it; activations are an estimate (the formula is printed with it). */
#ifndef QT_PLAN_H
#define QT_PLAN_H

#include <stdio.h>

#include "autograd/tensor.h"
#include "train/config.h"
#include "train/model_config.h"

typedef struct {
    double base_bytes;       /* frozen weights (quantized or not) */
    double trainable_params; /* elements */
    double train_bytes;      /* trainable tensors + gradients + moments (the tensors are f32:
                              * their own masters); with optimizer_in_bwd no gradients */
    double grad_bytes;       /* optimizer_in_bwd: the most gradient bytes alive at once,
                              * estimated (train/plan.c says how); else 0 */
    double persistent_bytes; /* base + train (+ RoPE table) */
    double activation_bytes; /* per optimizer micro-step, estimated */
    double total_bytes;
} qt_plan;

/* device: the storage the backend uses (CPU: f32 everywhere; CUDA: bf16 storage, fp32
 * masters and moments). */
int qt_plan_make(const qt_job_config *job, const qt_model_config *mc, qt_device device, qt_plan *p,
                 qt_err *err);
void qt_plan_print(const qt_job_config *job, const qt_model_config *mc, qt_device device,
                   const qt_plan *p, FILE *out);

#endif
