/* ops_fakequant.c - the QAT fake-quant op over quant/fakequant.h's reference functions.
 * Node: in = {x, scale or NULL, offset or NULL}, extra = a copy of the format, ip[0] = the
 * backward kind, saved[0] = the clip mask [(n+7)/8] u8 (clipped STE and LSQ). Forward output
 * equals the format's codec round trip bit for bit (deployment formats call the codecs). */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "quant/fakequant.h"

qt_tensor *qt_fakequant(qt_ctx *ctx, qt_tensor *x, const qt_fq_format *f, qt_tensor *scale,
                        qt_tensor *offset, qt_fq_backward bwd) {
    return qt_fakequant_to(ctx, x, f, scale, offset, bwd, x->dtype);
}

qt_tensor *qt_fakequant_to(qt_ctx *ctx, qt_tensor *x, const qt_fq_format *f, qt_tensor *scale,
                           qt_tensor *offset, qt_fq_backward bwd, qt_dtype out) {
    if (ctx->device == QT_CPU)
        QT_CHECK(x->dtype == QT_F32 && out == QT_F32,
                 "fakequant: x and output must be f32 on the CPU");
    else
        QT_CHECK((x->dtype == QT_F32 || x->dtype == QT_BF16) && (out == QT_F32 || out == QT_BF16),
                 "fakequant: x and output must be f32 or bf16 (x is %s)", qt_dtype_name(x->dtype));
    QT_CHECK(qt_fq_check(f, x->ndim, x->shape) == 0, "fakequant: the format cannot quantize '%s'",
             x->name);
    bool learned = f->kind == QT_FQ_INT && f->scale_mode == QT_FQ_LEARNED;
    int64_t ns = qt_fq_num_scales(f, x->ndim, x->shape);
    if (learned) {
        QT_CHECK(scale && scale->dtype == QT_F32 && qt_numel(scale) == ns,
                 "fakequant: learned scales must be %lld f32", (long long)ns);
        QT_CHECK(f->symmetric || (offset && qt_numel(offset) == ns && offset->dtype == QT_F32),
                 "fakequant: an asymmetric learned format needs %lld offsets", (long long)ns);
    } else {
        QT_CHECK(!scale && !offset, "fakequant: only learned formats take scale tensors");
        QT_CHECK(bwd != QT_FQ_LSQ, "fakequant: LSQ needs a learned format");
    }
    qt_fq_format *fc =
        qt_arena_alloc(ctx->in_checkpoint ? &ctx->span_meta : &ctx->meta, sizeof *fc);
    QT_CHECK(fc, "host arena exhausted");
    *fc = *f;
    qt_node nd = {.op = QT_OP_FAKEQUANT, .n_in = 3, .in = {x, scale, f->symmetric ? NULL : offset}};
    nd.out = qt_tensor_new(ctx, out, x->ndim, x->shape);
    nd.extra = fc;
    nd.ip[0] = bwd;
    if (bwd != QT_FQ_STE) {
        int64_t nm = (qt_numel(x) + 7) / 8;
        nd.saved[0] = qt_tensor_new(ctx, QT_U8, 1, &nm);
    }
    qt_node_run(ctx, &nd);
    return nd.out;
}

void qt_cpu_fakequant_fwd(qt_ctx *ctx, qt_node *n) {
    const qt_fq_format *f = n->extra;
    qt_tensor *x = n->in[0];
    int rc = qt_fq_forward(f, qt_f32(x), x->ndim, x->shape, n->in[1] ? qt_f32(n->in[1]) : NULL,
                           n->in[2] ? qt_f32(n->in[2]) : NULL, qt_f32(n->out),
                           n->saved[0] ? n->saved[0]->data : NULL);
    QT_CHECK(rc == 0, "fakequant forward failed (%d)", rc);
}

void qt_cpu_fakequant_bwd(qt_ctx *ctx, qt_node *n) {
    const qt_fq_format *f = n->extra;
    qt_tensor *x = n->in[0];
    int64_t cnt = qt_numel(x);
    const float *gy = qt_f32(n->out->grad);
    qt_fq_backward kind = (qt_fq_backward)n->ip[0];
    float beta;
    if (kind != QT_FQ_LSQ) {
        if (!qt_needs_grad(x)) return;
        if (kind == QT_FQ_STE && qt_grad_handover(ctx, x, n->out->grad)) return;
        float *gx = qt_f32(qt_grad_acquire(ctx, x, false, &beta));
        if (kind == QT_FQ_STE) {
            qt_cpu_axpby_f32(gx, gy, cnt, beta);
            return;
        }
        float *tmp = malloc((size_t)cnt * sizeof *tmp);
        QT_CHECK(tmp, "out of memory");
        qt_fq_backward_ste(gy, n->saved[0]->data, cnt, tmp);
        qt_cpu_axpby_f32(gx, tmp, cnt, beta);
        free(tmp);
        return;
    }
    int64_t ns = qt_numel(n->in[1]);
    float *tmp = malloc((size_t)(cnt + 2 * ns) * sizeof *tmp);
    QT_CHECK(tmp, "out of memory");
    float *gs = tmp + cnt, *go = gs + ns;
    int rc =
        qt_fq_backward_lsq(f, qt_f32(x), x->ndim, x->shape, qt_f32(n->in[1]),
                           n->in[2] ? qt_f32(n->in[2]) : NULL, gy, tmp, gs, n->in[2] ? go : NULL);
    QT_CHECK(rc == 0, "fakequant LSQ backward failed (%d)", rc);
    if (qt_needs_grad(x))
        qt_cpu_axpby_f32(qt_f32(qt_grad_acquire(ctx, x, false, &beta)), tmp, cnt, beta);
    if (qt_needs_grad(n->in[1]))
        qt_cpu_axpby_f32(qt_f32(qt_grad_acquire(ctx, n->in[1], false, &beta)), gs, ns, beta);
    if (n->in[2] && qt_needs_grad(n->in[2]))
        qt_cpu_axpby_f32(qt_f32(qt_grad_acquire(ctx, n->in[2], false, &beta)), go, ns, beta);
    free(tmp);
}
