/* linear.c - see linear.h. */
#include "linear.h"

#include "autograd/ops.h"
#include "quant/fakequant.h"

qt_tensor *qt_linear_fwd(qt_ctx *ctx, qt_linear *l, qt_tensor *x) {
    QT_CHECK(qt_cols(x) == l->in, "%s: input has %lld features, the layer takes %lld", l->name,
             (long long)qt_cols(x), (long long)l->in);
    qt_tensor *y;
    if (l->aq) x = qt_fakequant(ctx, x, l->aq, NULL, NULL, QT_FQ_STE);
    if (l->is_nf4) {
        y = qt_nf4_matmul(ctx, x, &l->nf4);
    } else if (l->wq) {
        qt_tensor *w = l->w;
        if (l->lora_a) /* QAT + LoRA: quantize the merged weight, so export = training */
            w = qt_add(
                ctx, w,
                qt_scale(ctx, qt_matmul(ctx, l->lora_b, l->lora_a, false, false), l->lora_scale));
        y = qt_matmul(ctx, x, qt_fakequant(ctx, w, l->wq, l->wq_scale, l->wq_offset,
                                         l->wq_scale ? QT_FQ_LSQ : QT_FQ_STE_CLIP), false, true);
    } else {
        y = qt_matmul(ctx, x, l->w, false, true);
    }
    if (l->bias) y = qt_bias_add(ctx, y, l->bias);
    if (l->lora_a && !l->wq) {
        qt_tensor *d = qt_dropout(ctx, x, l->lora_dropout);
        qt_tensor *z =
            qt_matmul(ctx, qt_matmul(ctx, d, l->lora_a, false, true), l->lora_b, false, true);
        y = qt_add(ctx, y, qt_scale(ctx, z, l->lora_scale));
    }
    return y;
}
