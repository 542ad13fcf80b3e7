/* lora.cu - LoRA's fused up-projection (autograd/ops_lora.c) on the GPU: out = y + s · u · Bᵀ
 * as one cuBLASLt GEMM with alpha = s and beta = 1 into y's buffer (beta 0 without y);
 * backward du = s · dout · B and dB = s · doutᵀ · u, two GEMMs with alpha = s, and y's
 * gradient handed over. */
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

extern "C" {
#include "autograd/kernels.h"
}

static qt_dtype check_node(const qt_node *nd, const char *what) {
    for (int i = 0; i < 3; i++)
        QT_CHECK((!i && !nd->in[i]) || (nd->in[i] && nd->in[i]->device == QT_CUDA),
                 "%s: input %d is not on CUDA", what, i);
    return nd->in[1]->dtype;
}

extern "C" void qt_cuda_lora_add_fwd(qt_ctx *ctx, qt_node *n) {
    qt_dtype dt = check_node(n, "lora_add");
    const qt_tensor *u = n->in[1], *B = n->in[2];
    int64_t rows = qt_rows(u), r = qt_cols(u), out = B->shape[0];
    if (rows && out && r)
        qt_cuda_gemm_alpha(ctx, dt, dt, false, true, rows, out, r, n->fp[0], u->data, B->data,
                           n->out->data, n->in[0] ? 1.0f : 0.0f);
}

extern "C" void qt_cuda_lora_add_bwd(qt_ctx *ctx, qt_node *n) {
    qt_dtype dt = check_node(n, "lora_add backward");
    qt_tensor *u = n->in[1], *B = n->in[2];
    const qt_tensor *g = n->out->grad;
    QT_CHECK(g && g->dtype == dt, "lora_add backward: missing or mismatched output gradient");
    int64_t rows = qt_rows(u), r = qt_cols(u), out = B->shape[0];
    float s = n->fp[0], beta;
    if (qt_needs_grad(u)) {
        void *gu = qt_grad_acquire(ctx, u, false, &beta)->data;
        if (rows && r)
            qt_cuda_gemm_alpha(ctx, dt, dt, false, false, rows, r, out, s, g->data, B->data, gu,
                               beta);
    }
    if (qt_needs_grad(B)) {
        void *gb = qt_grad_acquire(ctx, B, false, &beta)->data;
        if (out && r)
            qt_cuda_gemm_alpha(ctx, dt, dt, true, false, out, r, rows, s, g->data, u->data, gb,
                               beta);
    }
    qt_pass_grad(ctx, n->in[0], n->out);
}
