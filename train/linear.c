/* linear.c - see linear.h. */
#include "linear.h"

#include "autograd/ops.h"
#include "quant/fakequant.h"

qt_tensor *qt_linear_fwd(qt_ctx *ctx, qt_linear *l, qt_tensor *x) {
    QT_CHECK(qt_cols(x) == l->in, "%s: input has %lld features, the layer takes %lld", l->name,
             (long long)qt_cols(x), (long long)l->in);
    /* the activations' dtype is the compute dtype; f32 trainable tensors are cast to it */
    qt_dtype dt = x->dtype;
    qt_tensor *y;
    if (l->aq) x = qt_fakequant_to(ctx, x, l->aq, NULL, NULL, QT_FQ_STE, dt);
    if (l->is_nf4) {
        y = qt_nf4_matmul(ctx, x, &l->nf4);
    } else if (l->wq) {
        qt_tensor *w = l->w; /* [out, in] f32 */
        if (l->lora_a)       /* QAT + LoRA: quantize the merged weight, so export = training */
            w = qt_add(
                ctx, w,
                qt_scale(ctx, qt_matmul(ctx, l->lora_b, l->lora_a, false, false), l->lora_scale));
        /* quantized straight into the compute dtype: no f32 copy of the weight per use */
        w = qt_fakequant_to(ctx, w, l->wq, l->wq_scale, l->wq_offset,
                            l->wq_scale ? QT_FQ_LSQ : QT_FQ_STE_CLIP, dt);
        y = qt_matmul(ctx, x, w, false, true);
    } else {
        y = qt_matmul(ctx, x, qt_to_dtype(ctx, l->w, dt), false, true);
    }
    if (l->bias) y = qt_bias_add(ctx, y, qt_to_dtype(ctx, l->bias, dt));
    if (l->lora_a && !l->wq) {
        qt_tensor *d = qt_dropout(ctx, x, l->lora_dropout);
        qt_tensor *u =
            qt_matmul(ctx, d, qt_to_dtype(ctx, l->lora_a, dt), false, true); /* [..., r] */
        /* y += scale · u · Bᵀ in y's own buffer: y is the base layer's fresh output */
        y = qt_lora_add(ctx, y, u, qt_to_dtype(ctx, l->lora_b, dt), l->lora_scale);
    }
    return y;
}
