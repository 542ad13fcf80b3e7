/* linear.h - one linear layer of a model, y = x · Wᵀ + b, in every training mode:
 *   full   W trainable (f32 here; bf16 + fp32 master on the GPU)
 *   lora   W frozen; y += (α/r) · dropout(x) · Aᵀ · Bᵀ with A [r, in], B [out, r] trainable
 *   qlora  as lora, W frozen as NF4 + double quant, dequantized inside the op, never resident
 *   qat    W_eff = fakequant(W) (full) or fakequant(W + (α/r)·B·A) (with LoRA) in forward
 * Weight layout [out, in], as Hugging Face stores it. */
#ifndef QT_LINEAR_H
#define QT_LINEAR_H

#include "autograd/ops.h"

typedef struct {
    int64_t in, out;
    qt_tensor *w; /* [out, in], NULL when the base is NF4 */
    bool is_nf4;  /* the base is nf4 (QLoRA), frozen */
    qt_nf4_weight nf4;
    qt_tensor *bias;   /* [out] or NULL */
    qt_tensor *lora_a; /* [r, in] or NULL */
    qt_tensor *lora_b; /* [out, r] */
    float lora_scale;  /* α/r, or α/√r with rsLoRA */
    float lora_dropout;
    const qt_fq_format *wq; /* QAT weight format or NULL */
    const qt_fq_format *aq; /* QAT activation format (input) or NULL */
    qt_tensor *wq_scale;    /* learned (LSQ) weight scales [num_scales], or NULL */
    qt_tensor *wq_offset;   /* learned offsets (asymmetric, LSQ+), or NULL */
    /* LoRA's u = dropout(x) · Aᵀ as a checkpointed span's first forward made it, [u_rows, r]
     * in a persistent buffer of u_cap rows: the span's replay takes it instead of running the
     * GEMM again (lazily allocated, grown when a step has more rows) */
    qt_tensor *u_stash;
    int64_t u_rows, u_cap;
    char name[64]; /* e.g. "layers.0.self_attn.q_proj" */
} qt_linear;

/* x [..., in] -> [..., out] */
qt_tensor *qt_linear_fwd(qt_ctx *ctx, qt_linear *l, qt_tensor *x);
/* The same ops recorded for the backward, but the output's value is not computed (its GEMMs and
 * LoRA's up-projection are skipped): for a checkpoint replay whose caller knows that nothing
 * reads this output's value, only its gradient. What the backward needs is still computed:
 * fake-quantized inputs and weights, LoRA's down-projection u (in a checkpoint replay, the
 * copy the span's first forward kept). */
qt_tensor *qt_linear_fwd_unread(qt_ctx *ctx, qt_linear *l, qt_tensor *x);

#endif
