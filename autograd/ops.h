/* ops.h - the op table and the public op functions.
 * Every op is one entry of qt_op_table: a forward and a backward kernel per device. The public
 * functions below check shapes and dtypes (always on), allocate the output in the step arena,
 * and run the node through qt_node_run, which dispatches to the context's device and records
 * the node when a gradient will be needed. Layout conventions: activations are [B, T, ...]
 * row-major; attention tensors are [B, T, heads, head_dim]; a linear weight is [out, in]
 * (Hugging Face's layout), applied as y = x · Wᵀ with qt_matmul(x, W, false, true). */
#ifndef QT_OPS_H
#define QT_OPS_H

#include "context.h"
#include "quant/fakequant.h"

typedef enum {
    QT_OP_EMBEDDING,     /* out[..., D] = W[ids[...], :] */
    QT_OP_MATMUL,        /* out = op(A) · op(B), batched or with B shared across A's batch */
    QT_OP_ADD,           /* a + b, same shape */
    QT_OP_MUL,           /* a * b, same shape */
    QT_OP_SCALE,         /* x * s */
    QT_OP_BIAS_ADD,      /* x[..., N] + b[N] */
    QT_OP_RMSNORM,       /* x / sqrt(mean(x²) + eps) * w */
    QT_OP_ROPE,          /* rotate-half rotary embedding (Hugging Face convention) */
    QT_OP_SILU,          /* x * sigmoid(x) */
    QT_OP_SWIGLU,        /* silu(gate) * up */
    QT_OP_ATTENTION,     /* causal GQA attention with an optional document/padding mask */
    QT_OP_SOFTMAX,       /* over the last dim */
    QT_OP_CROSS_ENTROPY, /* mean over non-ignored targets (ignore index -100) */
    QT_OP_DROPOUT,       /* counter-based (Philox) mask, regenerated in backward */
    QT_OP_RESHAPE,       /* a view: same data, new shape */
    QT_OP_PERMUTE,       /* transpose copy */
    QT_OP_CONCAT,        /* along one dim */
    QT_OP_SLICE,         /* a range of one dim (split = several slices) */
    QT_OP_CAST,          /* between F32, BF16, F16, round-to-nearest-even */
    QT_OP_CHECKPOINT,    /* a checkpointed span: replayed in backward */
    QT_OP_NF4_MATMUL,    /* x · dequant(W_nf4)ᵀ, W frozen and never kept dequantized */
    QT_OP_FAKEQUANT,     /* dequant(quant(x)) with STE / clipped STE / LSQ backward */
    QT_OP_LINEAR_CE,     /* cross_entropy(h · Wᵀ) in vocabulary chunks: no [N, V] logits kept */
    QT_OP_LORA_ADD,      /* y + s · u · Bᵀ into y's own buffer: LoRA's up-projection fused */
    QT_OP_COUNT
} qt_op;

struct qt_node;
typedef void (*qt_kernel)(qt_ctx *ctx, struct qt_node *n);

typedef struct {
    const char *name;
    qt_kernel fwd[QT_DEVICE_COUNT];
    qt_kernel bwd[QT_DEVICE_COUNT];
} qt_op_def;

const qt_op_def *qt_op_get(qt_op op);
const char *qt_op_name(qt_op op);

/* ---- the ops (shapes in brackets; every input must be on the context's device) ---- */

/* W [V, D] f32, ids [...] i32 -> [..., D] */
qt_tensor *qt_embedding(qt_ctx *ctx, qt_tensor *W, qt_tensor *ids);
/* a [..., M, K] (or [..., K, M] with ta), b [K, N] (or [N, K] with tb) shared across the batch,
 * or b with the same leading dims as a -> [..., M, N] */
qt_tensor *qt_matmul(qt_ctx *ctx, qt_tensor *a, qt_tensor *b, bool ta, bool tb);
/* a [..., M, K] · op(b) + c -> [..., M, N] in c's buffer (b shared: [K, N], or [N, K] with tb).
 * c must be a fresh step tensor that nothing else reads (LoRA's up-projection: its sum with
 * the base product is made in the GEMM's epilogue). */
qt_tensor *qt_matmul_add(qt_ctx *ctx, qt_tensor *a, qt_tensor *b, bool tb, qt_tensor *c);
qt_tensor *qt_add(qt_ctx *ctx, qt_tensor *a, qt_tensor *b);
qt_tensor *qt_mul(qt_ctx *ctx, qt_tensor *a, qt_tensor *b);
qt_tensor *qt_scale(qt_ctx *ctx, qt_tensor *x, float s);
/* x [..., N], b [N] */
qt_tensor *qt_bias_add(qt_ctx *ctx, qt_tensor *x, qt_tensor *b);
/* x [..., D], w [D] */
qt_tensor *qt_rmsnorm(qt_ctx *ctx, qt_tensor *x, qt_tensor *w, float eps);
/* x [B, T, H, hd], pos [B, T] i32, inv_freq [hd/2] f32 (qt_rope_inv_freq); cos and sin are
 * multiplied by attn_scale (1 for llama/llama3). qt_rope_inplace writes the output over x's
 * data: the caller promises that nothing else reads x (a projection's fresh output). */
qt_tensor *qt_rope(qt_ctx *ctx, qt_tensor *x, qt_tensor *pos, qt_tensor *inv_freq,
                   float attn_scale);
qt_tensor *qt_rope_inplace(qt_ctx *ctx, qt_tensor *x, qt_tensor *pos, qt_tensor *inv_freq,
                           float attn_scale);
qt_tensor *qt_silu(qt_ctx *ctx, qt_tensor *x);
qt_tensor *qt_swiglu(qt_ctx *ctx, qt_tensor *gate, qt_tensor *up);
/* q [B, T, Hq, hd], k and v [B, T, Hkv, hd] (Hq a multiple of Hkv), doc [B, T] i32 or NULL:
 * query i sees key j iff j <= i and doc[j] == doc[i]; doc < 0 marks padding (its output is 0).
 * -> [B, T, Hq, hd] */
qt_tensor *qt_attention(qt_ctx *ctx, qt_tensor *q, qt_tensor *k, qt_tensor *v, qt_tensor *doc,
                        float scale);
qt_tensor *qt_softmax(qt_ctx *ctx, qt_tensor *x);
/* logits [N, V] f32, targets [N] i32 (-100 = ignore) -> [1]: sum of per-token losses divided
 * by denom, or by the number of non-ignored targets when denom <= 0 (0 if there are none). */
#define QT_IGNORE_INDEX (-100)
qt_tensor *qt_cross_entropy(qt_ctx *ctx, qt_tensor *logits, qt_tensor *targets, float denom);
/* LoRA's second half fused: y [..., out] + scale · u [..., r] · B [out, r]ᵀ, accumulated by one
 * GEMM into y's buffer, which the output takes over (y's gradient is the output's). y must be
 * a fresh op output that nothing else reads. y NULL: scale · u · Bᵀ alone, a fresh tensor for
 * qt_matmul_add / qt_nf4_matmul_add to add the base product into (train/linear.c). */
qt_tensor *qt_lora_add(qt_ctx *ctx, qt_tensor *y, qt_tensor *u, qt_tensor *B, float scale);
/* qt_cross_entropy(h · Wᵀ, targets, denom) without the [N, V] logits: h [N, D], W [V, D] (the
 * lm_head, same dtype), targets [N] i32 -> [1] f32. The logits exist one vocabulary chunk of
 * `chunk` columns at a time (0: a size that keeps a chunk near 64 MiB) and are computed again
 * in backward; only the row log-sum-exps [N] are kept. Same value and gradients as the
 * unfused pair, up to the order of the sums. */
qt_tensor *qt_linear_cross_entropy(qt_ctx *ctx, qt_tensor *h, qt_tensor *W, qt_tensor *targets,
                                   float denom, int64_t chunk);
/* Drops each element with probability p (0 <= p < 1), scaling the rest by 1/(1-p). The mask
 * comes from Philox4x32-10 keyed by the context's seed and a per-call offset. */
qt_tensor *qt_dropout(qt_ctx *ctx, qt_tensor *x, float p);
qt_tensor *qt_reshape(qt_ctx *ctx, qt_tensor *x, int ndim, const int64_t *shape);
/* out.shape[i] = x.shape[perm[i]] */
qt_tensor *qt_permute(qt_ctx *ctx, qt_tensor *x, const int *perm);
qt_tensor *qt_transpose(qt_ctx *ctx, qt_tensor *x, int d0, int d1);
qt_tensor *qt_concat(qt_ctx *ctx, int n, qt_tensor **xs, int dim);
qt_tensor *qt_slice(qt_ctx *ctx, qt_tensor *x, int dim, int64_t start, int64_t len);
/* n pieces of the given sizes along dim (they must add up to the dim) */
void qt_split(qt_ctx *ctx, qt_tensor *x, int dim, int n, const int64_t *sizes, qt_tensor **out);
qt_tensor *qt_cast(qt_ctx *ctx, qt_tensor *x, qt_dtype dt);
/* x itself when it already has dtype dt, else qt_cast (f32 masters meet bf16 activations) */
qt_tensor *qt_to_dtype(qt_ctx *ctx, qt_tensor *x, qt_dtype dt);

/* Fake quantization (QAT). The format (quant/fakequant.h) is data; the backward:
 *   QT_FQ_STE      gradient passes straight through
 *   QT_FQ_STE_CLIP passes where the input was not clipped (a 1-bit mask is saved, not x)
 *   QT_FQ_LSQ      learned step size: scale [num_scales] (and offset, asymmetric) trainable,
 *                  gradients scaled by 1/sqrt(N·Qp); x's gradient is clipped STE.
 * scale/offset are NULL for dynamic and deployment formats. */
typedef enum { QT_FQ_STE = 0, QT_FQ_STE_CLIP = 1, QT_FQ_LSQ = 2 } qt_fq_backward;
qt_tensor *qt_fakequant(qt_ctx *ctx, qt_tensor *x, const qt_fq_format *f, qt_tensor *scale,
                        qt_tensor *offset, qt_fq_backward bwd);
/* The same with the output in dtype `out`: the f32 result rounded once (a bf16 activation or
 * an f32 master quantized straight into the bf16 the GEMM reads). x and out are f32 on the
 * CPU; f32 or bf16 each on CUDA. x's gradient has x's dtype. */
qt_tensor *qt_fakequant_to(qt_ctx *ctx, qt_tensor *x, const qt_fq_format *f, qt_tensor *scale,
                           qt_tensor *offset, qt_fq_backward bwd, qt_dtype out);

/* A frozen linear weight [out, in] in NF4 (quant/nf4.h), its pieces as device tensors. */
typedef struct {
    int64_t out, in;
    int blocksize;
    int dtype;                /* qt_nf4_dtype of the original weight: dequantized values are
                                 rounded to it, as bitsandbytes' dequantize_4bit returns them */
    qt_tensor *codes;         /* [(out*in+1)/2] u8, first element in the high nibble */
    qt_tensor *absmax;        /* [nblocks] f32 when not double-quantized, else NULL */
    qt_tensor *absmax_q;      /* [nblocks] u8 codes of absmax - offset (double quant) */
    qt_tensor *nested_absmax; /* [ceil(nblocks/256)] f32 (double quant) */
    float offset;             /* mean of the first-level absmax (double quant) */
} qt_nf4_weight;

/* x [..., in] -> [..., out] = x · dequant(w)ᵀ. The weight is dequantized into scratch memory
 * that is released before the op returns (forward) and again in backward: only one layer's
 * dequantized weight ever exists. */
qt_tensor *qt_nf4_matmul(qt_ctx *ctx, qt_tensor *x, const qt_nf4_weight *w);
/* the same plus c [..., out] in c's buffer (c as qt_matmul_add's) */
qt_tensor *qt_nf4_matmul_add(qt_ctx *ctx, qt_tensor *x, const qt_nf4_weight *w, qt_tensor *c);
/* The weight the op multiplies by, [out, in] f32 on the host (for merging and export). */
void qt_nf4_weight_dequant(qt_ctx *ctx, const qt_nf4_weight *w, float *out);

#endif
