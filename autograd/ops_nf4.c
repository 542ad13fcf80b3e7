/* ops_nf4.c - the QLoRA base layer: y = x · dequant(W)ᵀ with W frozen in NF4 + double quant.
 * CPU reference: dequantize the whole weight into arena scratch (rewound before returning),
 * then one sgemm. With c (qt_nf4_matmul_add): out = x · dequant(W)ᵀ + c in c's buffer (beta 1).
 * Node: in = {x, codes, absmax or absmax_q, nested_absmax, c}, n_in 5 with c, ip = {blocksize,
 * out, in, dtype, nested}, fp[0] = offset. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "quant/half.h"
#include "quant/nf4.h"

qt_tensor *qt_nf4_matmul_add(qt_ctx *ctx, qt_tensor *x, const qt_nf4_weight *w, qt_tensor *c) {
    QT_CHECK(qt_cols(x) == w->in, "nf4_matmul: x has %lld features, the weight takes %lld",
             (long long)qt_cols(x), (long long)w->in);
    QT_CHECK(qt_nf4_blocksize_ok(w->blocksize), "nf4_matmul: block size %d", w->blocksize);
    int64_t n = w->out * w->in, nblocks = (n + w->blocksize - 1) / w->blocksize;
    QT_CHECK(w->codes && w->codes->dtype == QT_U8 && qt_numel(w->codes) == (n + 1) / 2,
             "nf4_matmul: codes must be %lld u8", (long long)((n + 1) / 2));
    bool nested = w->absmax_q != NULL;
    if (nested) {
        QT_CHECK(w->absmax_q->dtype == QT_U8 && qt_numel(w->absmax_q) == nblocks,
                 "nf4_matmul: absmax codes must be %lld u8", (long long)nblocks);
        QT_CHECK(w->nested_absmax && w->nested_absmax->dtype == QT_F32 &&
                     qt_numel(w->nested_absmax) == (nblocks + 255) / 256,
                 "nf4_matmul: nested absmax size");
    } else {
        QT_CHECK(w->absmax && w->absmax->dtype == QT_F32 && qt_numel(w->absmax) == nblocks,
                 "nf4_matmul: absmax must be %lld f32", (long long)nblocks);
    }
    int64_t shape[QT_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = w->out;
    qt_node nd = {.op = QT_OP_NF4_MATMUL, .n_in = 4};
    nd.in[0] = x;
    nd.in[1] = w->codes;
    nd.in[2] = nested ? w->absmax_q : w->absmax;
    nd.in[3] = nested ? w->nested_absmax : NULL;
    if (c) {
        char sc[64];
        QT_CHECK(c->dtype == x->dtype && c->ndim == x->ndim && qt_rows(c) == qt_rows(x) &&
                     qt_cols(c) == w->out,
                 "nf4_matmul_add: c %s does not fit [..., %lld]", qt_shape_str(c, sc, sizeof sc),
                 (long long)w->out);
        QT_CHECK(!c->persistent && !c->is_view, "nf4_matmul_add: c must be a fresh step tensor");
        nd.n_in = 5;
        nd.in[4] = c;
        nd.out = qt_tensor_view(ctx, c, c->ndim, c->shape);
    } else {
        nd.out = qt_tensor_new(ctx, x->dtype, x->ndim, shape);
    }
    nd.ip[0] = w->blocksize, nd.ip[1] = w->out, nd.ip[2] = w->in, nd.ip[3] = w->dtype;
    nd.ip[4] = nested;
    nd.fp[0] = w->offset;
    qt_node_run(ctx, &nd);
    return nd.out;
}

qt_tensor *qt_nf4_matmul(qt_ctx *ctx, qt_tensor *x, const qt_nf4_weight *w) {
    return qt_nf4_matmul_add(ctx, x, w, NULL);
}

/* Dequantizes the node's weight into f32 scratch [out, in] from the step arena. */
static float *dequant_scratch(qt_ctx *ctx, const qt_node *n) {
    int64_t out = n->ip[1], in = n->ip[2], cnt = out * in;
    int bs = (int)n->ip[0];
    int64_t nblocks = (cnt + bs - 1) / bs;
    float *w = qt_arena_alloc(&ctx->data, (size_t)cnt * sizeof *w);
    float *absmax = qt_arena_alloc(&ctx->data, (size_t)nblocks * sizeof *absmax);
    QT_CHECK(w && absmax, "nf4_matmul: out of memory for the dequantization scratch");
    if (n->ip[4])
        qt_nf4_dq_decompress(n->in[2]->data, n->in[3]->data, nblocks, n->fp[0], absmax);
    else
        memcpy(absmax, n->in[2]->data, (size_t)nblocks * sizeof *absmax);
    qt_nf4_dequantize_f32(n->in[1]->data, absmax, cnt, bs, w);
    int dt = (int)n->ip[3];
    if (dt == QT_NF4_BF16) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < cnt; i++) w[i] = qt_bf16_to_f32(qt_f32_to_bf16(w[i]));
    } else if (dt == QT_NF4_F16) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < cnt; i++) w[i] = qt_f16_to_f32(qt_f32_to_f16(w[i]));
    }
    return w;
}

void qt_cpu_nf4_matmul_fwd(qt_ctx *ctx, qt_node *n) {
    int64_t out = n->ip[1], in = n->ip[2], M = qt_rows(n->in[0]);
    qt_arena_mark mark = qt_arena_get_mark(&ctx->data);
    float *w = dequant_scratch(ctx, n);
    if (M > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)out, (int)in, 1.0f,
                    qt_f32(n->in[0]), (int)in, w, (int)in, n->n_in == 5 ? 1.0f : 0.0f,
                    qt_f32(n->out), (int)out);
    qt_arena_rewind(&ctx->data, mark);
}

void qt_cpu_nf4_matmul_bwd(qt_ctx *ctx, qt_node *n) {
    if (n->n_in == 5) qt_pass_grad(ctx, n->in[4], n->out); /* d(+ c) = dout, handed over */
    if (!qt_needs_grad(n->in[0])) return;
    int64_t out = n->ip[1], in = n->ip[2], M = qt_rows(n->in[0]);
    float beta;
    /* the gradient buffer is taken before the mark so the rewind keeps it */
    float *gx = qt_f32(qt_grad_acquire(ctx, n->in[0], false, &beta));
    qt_arena_mark mark = qt_arena_get_mark(&ctx->data);
    float *w = dequant_scratch(ctx, n);
    if (M > 0) /* dx [M, in] = dy [M, out] · W [out, in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)in, (int)out, 1.0f,
                    qt_f32(n->out->grad), (int)out, w, (int)in, beta, gx, (int)in);
    qt_arena_rewind(&ctx->data, mark);
}

void qt_nf4_weight_dequant(qt_ctx *ctx, const qt_nf4_weight *w, float *out) {
    int64_t cnt = w->out * w->in, nb = (cnt + w->blocksize - 1) / w->blocksize;
    bool nested = w->absmax_q != NULL;
    /* the pieces may live on the GPU: bring them to the host, then the CPU kernel's path */
    uint8_t *codes = malloc((size_t)(cnt + 1) / 2), *aq = nested ? malloc((size_t)nb) : NULL;
    float *absmax = malloc((size_t)nb * sizeof *absmax);
    float *nest = nested ? malloc((size_t)((nb + 255) / 256) * sizeof *nest) : NULL;
    QT_CHECK(codes && absmax && (!nested || (aq && nest)), "out of memory");
    qt_tensor_download(ctx, w->codes, codes);
    if (nested) {
        qt_tensor_download(ctx, w->absmax_q, aq);
        qt_tensor_download(ctx, w->nested_absmax, nest);
        qt_nf4_dq_decompress(aq, nest, nb, w->offset, absmax);
    } else {
        qt_tensor_download(ctx, w->absmax, absmax);
    }
    qt_nf4_dequantize_f32(codes, absmax, cnt, w->blocksize, out);
    for (int64_t i = 0; i < cnt; i++) {
        if (w->dtype == QT_NF4_BF16)
            out[i] = qt_bf16_to_f32(qt_f32_to_bf16(out[i]));
        else if (w->dtype == QT_NF4_F16)
            out[i] = qt_f16_to_f32(qt_f32_to_f16(out[i]));
    }
    free(codes), free(aq), free(absmax), free(nest);
}
