/* linear.c - see linear.h. */
#include "linear.h"

#include <stdio.h>

#include "autograd/ops.h"
#include "quant/fakequant.h"

/* u = d · Aᵀ [..., r]. A checkpointed span's first forward keeps a copy of u (a few hundred KB
 * per layer) and the span's replay records the GEMM without running it, reading the copy: the
 * replay is the same computation on the same inputs, so the values are the same, and the GEMM,
 * which reads all of d, is saved. */
static qt_tensor *lora_down(qt_ctx *ctx, qt_linear *l, qt_tensor *d, qt_tensor *A) {
    int64_t rows = qt_rows(d), r = A->shape[0];
    bool replay =
        ctx->replaying && l->u_stash && l->u_rows == rows && l->u_stash->dtype == d->dtype;
    if (replay) {
        ctx->skip_values++;
        qt_tensor *u = qt_matmul(ctx, d, A, false, true);
        ctx->skip_values--;
        u->data = l->u_stash->data;
        return u;
    }
    qt_tensor *u = qt_matmul(ctx, d, A, false, true);
    l->u_rows = 0; /* no copy for a replay to trust unless made below */
    if (ctx->in_checkpoint && !ctx->replaying && qt_grad_enabled(ctx) && !ctx->skip_values) {
        if (!l->u_stash || l->u_cap < rows || l->u_stash->dtype != d->dtype) {
            char name[96];
            snprintf(name, sizeof name, "%.60s.u_stash", l->name);
            int64_t shape[2] = {rows, r};
            l->u_stash = qt_param_new(ctx, d->dtype, 2, shape, false, name);
            l->u_cap = rows;
        }
        qt_tensor dst = *l->u_stash; /* its first rows, shaped like u */
        dst.ndim = 2, dst.shape[0] = rows, dst.shape[1] = r;
        qt_tensor_copy(ctx, &dst, u);
        l->u_rows = rows;
    }
    return u;
}

/* unread: the ops that only make y's value (the base GEMM, the bias, LoRA's up-projection) are
 * recorded without running; their operands are still made, since backwards read them */
static qt_tensor *linear_fwd(qt_ctx *ctx, qt_linear *l, qt_tensor *x, bool unread) {
    QT_CHECK(qt_cols(x) == l->in, "%s: input has %lld features, the layer takes %lld", l->name,
             (long long)qt_cols(x), (long long)l->in);
    /* the activations' dtype is the compute dtype; f32 trainable tensors are cast to it */
    qt_dtype dt = x->dtype;
    qt_tensor *y, *c = NULL;
    if (l->aq) x = qt_fakequant_to(ctx, x, l->aq, NULL, NULL, QT_FQ_STE, dt);
    if (l->lora_a && !l->wq) {
        /* LoRA first: c = scale · dropout(x) · Aᵀ · Bᵀ, then the base GEMM adds its product
         * into c in its epilogue (beta 1), where reading c is nearly free; the other order
         * reads and writes the base output once more in a memory-bound pass of its own */
        qt_tensor *d = qt_dropout(ctx, x, l->lora_dropout);
        qt_tensor *u = lora_down(ctx, l, d, qt_to_dtype(ctx, l->lora_a, dt)); /* [..., r] */
        qt_tensor *B = qt_to_dtype(ctx, l->lora_b, dt);
        ctx->skip_values += unread;
        c = qt_lora_add(ctx, NULL, u, B, l->lora_scale); /* [..., out] */
        ctx->skip_values -= unread;
    }
    if (l->is_nf4) {
        ctx->skip_values += unread;
        y = c ? qt_nf4_matmul_add(ctx, x, &l->nf4, c) : qt_nf4_matmul(ctx, x, &l->nf4);
        ctx->skip_values -= unread;
    } else {
        qt_tensor *w = l->w; /* [out, in] f32 */
        if (l->wq) {
            if (l->lora_a) /* QAT + LoRA: quantize the merged weight, so export = training */
                w = qt_add(ctx, w,
                           qt_scale(ctx, qt_matmul(ctx, l->lora_b, l->lora_a, false, false),
                                    l->lora_scale));
            /* quantized straight into the compute dtype: no f32 copy of the weight per use */
            w = qt_fakequant_to(ctx, w, l->wq, l->wq_scale, l->wq_offset,
                                l->wq_scale ? QT_FQ_LSQ : QT_FQ_STE_CLIP, dt);
        } else {
            w = qt_to_dtype(ctx, w, dt);
        }
        ctx->skip_values += unread;
        y = c ? qt_matmul_add(ctx, x, w, true, c) : qt_matmul(ctx, x, w, false, true);
        ctx->skip_values -= unread;
    }
    if (l->bias) {
        qt_tensor *b = qt_to_dtype(ctx, l->bias, dt);
        ctx->skip_values += unread;
        y = qt_bias_add(ctx, y, b);
        ctx->skip_values -= unread;
    }
    return y;
}

qt_tensor *qt_linear_fwd(qt_ctx *ctx, qt_linear *l, qt_tensor *x) {
    return linear_fwd(ctx, l, x, false);
}

qt_tensor *qt_linear_fwd_unread(qt_ctx *ctx, qt_linear *l, qt_tensor *x) {
    return linear_fwd(ctx, l, x, true);
}
