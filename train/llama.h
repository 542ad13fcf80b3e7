/* llama.h - the Llama-family model (llama, mistral, qwen2) built from autograd ops: embedding,
 * per block RMSNorm -> q/k/v projections (+ biases) -> RoPE -> causal GQA attention -> o_proj
 * -> residual -> RMSNorm -> SwiGLU MLP -> residual, final RMSNorm, lm_head (tied or not).
 * Every linear layer is a qt_linear: a base weight (f32, or frozen NF4 for QLoRA), an optional
 * bias, an optional LoRA pair, an optional fake-quant format (QAT). Blocks can be checkpointed. */
#ifndef QT_LLAMA_H
#define QT_LLAMA_H

#include "autograd/context.h"
#include "train/linear.h"
#include "train/model_config.h"

typedef struct {
    qt_tensor *in_norm, *post_norm; /* input_layernorm, post_attention_layernorm [D] */
    qt_linear q, k, v, o, gate, up, down;
} qt_llama_layer;

typedef struct {
    qt_model_config cfg;
    qt_tensor *embed;   /* [V, D] */
    qt_tensor *norm;    /* [D] */
    qt_tensor *lm_head; /* [V, D]; the embedding itself when tied */
    qt_llama_layer *layer;
    qt_tensor *inv_freq; /* [head_dim/2] */
    bool checkpoint;     /* activation checkpointing per block */
    qt_dtype dtype;      /* compute dtype of activations; trainable f32 tensors are cast to it */
    char identity[17];   /* hash of config.json and the tensor index (checkpoints check it) */
    qt_fq_format qat_w, qat_a; /* the QAT formats the layers point to (owned here) */
    qt_tensor **train;         /* what the optimizer trains (filled by the loader) */
    bool *train_decay;
    int n_train;
} qt_llama;

/* Calls fn on every linear layer of the model (7 per block), in HF order. */
void qt_llama_each_linear(qt_llama *m, void (*fn)(qt_linear *l, void *user), void *user);

/* Hidden states after the final norm: ids [B, T] i32, pos [B, T] i32 (NULL: 0..T-1 per row),
 * doc [B, T] i32 (NULL: one document per row) -> [B, T, D]. */
qt_tensor *qt_llama_hidden(qt_ctx *ctx, qt_llama *m, qt_tensor *ids, qt_tensor *pos,
                           qt_tensor *doc);
/* -> logits [B, T, V] */
qt_tensor *qt_llama_logits(qt_ctx *ctx, qt_llama *m, qt_tensor *ids, qt_tensor *pos,
                           qt_tensor *doc);
/* Next-token loss, as transformers computes it: targets [B*T] i32 are the labels shifted left
 * by one (qt_llama_shift_labels), -100 ignored; the sum over tokens is divided by denom, or by
 * the number of non-ignored targets when denom <= 0. -> [1] */
qt_tensor *qt_llama_loss(qt_ctx *ctx, qt_llama *m, qt_tensor *ids, qt_tensor *targets,
                         qt_tensor *pos, qt_tensor *doc, float denom);
/* targets[b, t] = labels[b, t+1], and -100 at the last position of each row */
void qt_llama_shift_labels(const int32_t *labels, int32_t *targets, int64_t B, int64_t T);

#endif
