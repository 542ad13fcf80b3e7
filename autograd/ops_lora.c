/* ops_lora.c - LoRA's up-projection fused with the scale and the residual add:
 * out = y + scale · u · Bᵀ, y [..., out] the base layer's output, u [..., r] = dropout(x) · Aᵀ,
 * B [out, r]. The public function and the CPU reference kernels.
 *
 * Why: unfused, a LoRA layer writes and reads three [tokens, out] tensors after the base GEMM
 * (u · Bᵀ, its scaling, the sum); here one GEMM adds scale · u · Bᵀ into y's buffer with
 * beta 1, and the output takes that buffer over (a view, as reshape's). In backward the output's
 * gradient is y's gradient as it stands (the buffer is handed over, not copied), and
 *   du = scale · dout · B,   dB = scale · doutᵀ · u
 * are two GEMMs with alpha = scale. y must be read by nothing else: a fresh op output.
 * y may be NULL: out = scale · u · Bᵀ, a fresh tensor that the base layer's GEMM then adds its
 * product into (qt_matmul_add, qt_nf4_matmul_add) inside its epilogue, where reading C costs
 * next to nothing: the base output is not written and read back by a pass of its own.
 * Node: in = {y or NULL, u, B}, fp[0] = scale; out aliases y's data. */
#include <cblas.h>
#include <string.h>

#include "kernels.h"

qt_tensor *qt_lora_add(qt_ctx *ctx, qt_tensor *y, qt_tensor *u, qt_tensor *B, float scale) {
    char sy[64], su[64], sb[64];
    if (!y) { /* out = scale · u · Bᵀ alone */
        QT_CHECK(B->ndim == 2 && B->shape[1] == qt_cols(u) && qt_cols(u) > 0 &&
                     u->dtype == B->dtype,
                 "lora_add: u %s and B %s do not fit", qt_shape_str(u, su, sizeof su),
                 qt_shape_str(B, sb, sizeof sb));
        int64_t shape[QT_MAX_DIMS];
        for (int i = 0; i < u->ndim; i++) shape[i] = u->shape[i];
        shape[u->ndim - 1] = B->shape[0];
        qt_node nd = {.op = QT_OP_LORA_ADD, .n_in = 3, .in = {NULL, u, B}};
        nd.out = qt_tensor_new(ctx, u->dtype, u->ndim, shape);
        nd.fp[0] = scale;
        qt_node_run(ctx, &nd);
        return nd.out;
    }
    int64_t out = qt_cols(y), r = qt_cols(u);
    QT_CHECK(B->ndim == 2 && B->shape[0] == out && B->shape[1] == r && qt_rows(u) == qt_rows(y),
             "lora_add: y [..., %lld], u [..., %lld] and B [%lld, %lld] do not fit (%s, %s, %s)",
             (long long)out, (long long)r, (long long)out, (long long)r,
             qt_shape_str(y, sy, sizeof sy), qt_shape_str(u, su, sizeof su),
             qt_shape_str(B, sb, sizeof sb));
    QT_CHECK(y->dtype == u->dtype && y->dtype == B->dtype &&
                 (y->dtype == QT_F32 || y->dtype == QT_BF16 || y->dtype == QT_F16),
             "lora_add: y, u and B must share one float dtype");
    QT_CHECK(!y->persistent && !y->is_view, "lora_add: y must be a fresh step tensor");
    qt_tensor *o = qt_tensor_view(ctx, y, y->ndim, y->shape);
    qt_node nd = {.op = QT_OP_LORA_ADD, .n_in = 3, .in = {y, u, B}, .out = o};
    nd.fp[0] = scale;
    qt_node_run(ctx, &nd);
    return o;
}

/* y's gradient is o's, handed over (y has no other reader; o took y's buffer over) */
void qt_pass_grad(qt_ctx *ctx, qt_tensor *y, qt_tensor *o) {
    if (!y || !qt_needs_grad(y) || qt_grad_handover(ctx, y, o->grad)) return;
    float beta; /* y already had a buffer (never in train/linear.c): copy into it */
    qt_k_axpby(ctx, qt_grad_acquire(ctx, y, false, &beta), o->grad, beta);
}

void qt_cpu_lora_add_fwd(qt_ctx *ctx, qt_node *n) {
    const qt_tensor *u = n->in[1], *B = n->in[2];
    int64_t rows = qt_rows(u), r = qt_cols(u), out = B->shape[0];
    if (rows && out && r)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)r, n->fp[0],
                    qt_f32(u), (int)r, qt_f32(B), (int)r, n->in[0] ? 1.0f : 0.0f, qt_f32(n->out),
                    (int)out);
}

void qt_cpu_lora_add_bwd(qt_ctx *ctx, qt_node *n) {
    qt_tensor *u = n->in[1], *B = n->in[2];
    const float *g = qt_f32(n->out->grad);
    int64_t rows = qt_rows(u), r = qt_cols(u), out = B->shape[0];
    float s = n->fp[0], beta;
    if (qt_needs_grad(u)) { /* du [rows, r] = s · dout · B */
        float *gu = qt_f32(qt_grad_acquire(ctx, u, false, &beta));
        if (rows && r)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)r, (int)out, s,
                        g, (int)out, qt_f32(B), (int)r, beta, gu, (int)r);
    }
    if (qt_needs_grad(B)) { /* dB [out, r] = s · doutᵀ · u */
        float *gb = qt_f32(qt_grad_acquire(ctx, B, false, &beta));
        if (out && r)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)r, (int)rows, s, g,
                        (int)out, qt_f32(u), (int)r, beta, gb, (int)r);
    }
    qt_pass_grad(ctx, n->in[0], n->out); /* last: y's gradient buffer is the output's */
}
