/* ops_linear_ce.c - the lm_head and the cross-entropy as one op: loss = cross_entropy(h · Wᵀ,
 * targets, denom). The public function and the CPU reference kernels.
 *
 * Why one op: a [tokens, vocabulary] logits matrix and its gradient are the largest tensors of
 * a step (8192 x 128256 in bf16: 2 GiB each). The CUDA kernels (cuda/linear_ce.cu) never hold
 * more than one vocabulary chunk of them and compute the chunk again in backward. The CPU is
 * the reference: it materialises the logits (inside the kernel, freed before it returns) and
 * runs the cross-entropy's own CPU kernels on them, so on the CPU the fused op is bit for bit
 * the unfused matmul + cross_entropy pair.
 * Node: in = {h [N, D], W [V, D], targets [N] i32}, ip[0] = chunk, fp[0] = denom,
 * saved[0] = lse [N] f32, saved[1] = the divisor [1] f32 (as ops_loss.c's).
 * On the GPU, training with a frozen W (LoRA, QLoRA): ip[1] = 1 and saved[2] = dh [N, D] in h's
 * dtype, made by the forward for a loss gradient of 1 (rows of the whole vocabulary at a time,
 * no logit computed twice); the backward only scales it. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "kernels.h"

/* a vocabulary chunk of about 64 MiB of bf16 logits, at least 1024 columns: the chunk's
 * GEMMs are still large ([N, 4096+] x D), and the scratch stays small next to the model */
static int64_t auto_chunk(int64_t N, int64_t V) {
    int64_t c = N > 0 ? ((int64_t)1 << 25) / N : V;
    c = c < 1024 ? 1024 : c / 256 * 256;
    return c > V ? V : c;
}

qt_tensor *qt_linear_cross_entropy(qt_ctx *ctx, qt_tensor *h, qt_tensor *W, qt_tensor *targets,
                                   float denom, int64_t chunk) {
    char sh[64], sw[64], st[64];
    QT_CHECK(h->ndim == 2 && W->ndim == 2 && targets->ndim == 1 && W->shape[1] == h->shape[1] &&
                 targets->shape[0] == h->shape[0],
             "linear_cross_entropy: h must be [N, D], W [V, D], targets [N] (got %s, %s, %s)",
             qt_shape_str(h, sh, sizeof sh), qt_shape_str(W, sw, sizeof sw),
             qt_shape_str(targets, st, sizeof st));
    QT_CHECK((h->dtype == QT_F32 || h->dtype == QT_BF16 || h->dtype == QT_F16) &&
                 W->dtype == h->dtype,
             "linear_cross_entropy: h and W must share one float dtype (got %s, %s)",
             qt_dtype_name(h->dtype), qt_dtype_name(W->dtype));
    QT_CHECK(targets->dtype == QT_I32, "linear_cross_entropy: targets must be i32 (got %s)",
             qt_dtype_name(targets->dtype));
    QT_CHECK(!isnan(denom) && chunk >= 0, "linear_cross_entropy: bad denom or chunk");
    int64_t N = h->shape[0], V = W->shape[0];
    qt_node n = {.op = QT_OP_LINEAR_CE, .n_in = 3, .in = {h, W, targets}};
    n.out = qt_tensor_new(ctx, QT_F32, 1, (const int64_t[]){1});
    n.saved[0] = qt_tensor_new(ctx, QT_F32, 1, &N);
    n.saved[1] = qt_tensor_new(ctx, QT_F32, 1, (const int64_t[]){1});
    n.ip[0] = chunk > 0 ? (chunk < V ? chunk : V) : auto_chunk(N, V);
    n.fp[0] = denom;
    if (ctx->device == QT_CUDA && qt_grad_enabled(ctx) && h->requires_grad && !W->requires_grad) {
        n.ip[1] = 1;
        n.saved[2] = qt_tensor_new_like(ctx, h);
    }
    qt_node_run(ctx, &n);
    return n.out;
}

/* logits [N, V] = h · Wᵀ into a host tensor the cross-entropy kernels can take */
static qt_tensor logits_of(const qt_node *n) {
    int64_t N = n->in[0]->shape[0], D = n->in[0]->shape[1], V = n->in[1]->shape[0];
    qt_tensor x = {.dtype = QT_F32, .device = QT_CPU, .ndim = 2, .shape = {N, V}};
    x.data = malloc((size_t)(N * V > 0 ? N * V : 1) * sizeof(float));
    QT_CHECK(x.data, "linear_cross_entropy: out of host memory for [%lld, %lld] logits",
             (long long)N, (long long)V);
    if (N && V)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)V, (int)D, 1.0f,
                    qt_f32(n->in[0]), (int)D, qt_f32(n->in[1]), (int)D, 0.0f, x.data, (int)V);
    return x;
}

/* the cross-entropy node the fused one stands for, over the given logits */
static qt_node ce_node(const qt_node *n, qt_tensor *logits) {
    qt_node ce = {.op = QT_OP_CROSS_ENTROPY, .n_in = 2, .in = {logits, n->in[2]}, .out = n->out};
    ce.saved[0] = n->saved[0], ce.saved[1] = n->saved[1];
    ce.fp[0] = n->fp[0];
    return ce;
}

void qt_cpu_linear_ce_fwd(qt_ctx *ctx, qt_node *n) {
    qt_tensor x = logits_of(n);
    qt_node ce = ce_node(n, &x);
    qt_cpu_cross_entropy_fwd(ctx, &ce);
    free(x.data);
}

void qt_cpu_linear_ce_bwd(qt_ctx *ctx, qt_node *n) {
    qt_tensor *h = n->in[0], *W = n->in[1];
    if (!qt_needs_grad(h) && !qt_needs_grad(W)) return;
    int64_t N = h->shape[0], D = h->shape[1], V = W->shape[0];
    qt_tensor x = logits_of(n);
    x.requires_grad = true; /* the cross-entropy kernel asks for its gradient buffer */
    qt_node ce = ce_node(n, &x);
    qt_cpu_cross_entropy_bwd(ctx, &ce); /* x.grad: d loss / d logits [N, V], in the arena */
    const float *gl = qt_f32(x.grad);
    float beta;
    if (qt_needs_grad(h) && N && D) { /* dh [N, D] = dlogits · W */
        float *gh = qt_f32(qt_grad_acquire(ctx, h, false, &beta));
        if (V)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)D, (int)V, 1.0f, gl,
                        (int)V, qt_f32(W), (int)D, beta, gh, (int)D);
        else if (beta == 0.0f)
            for (int64_t i = 0; i < N * D; i++) gh[i] = 0.0f;
    }
    if (qt_needs_grad(W) && V && D) { /* dW [V, D] = dlogitsᵀ · h */
        float *gw = qt_f32(qt_grad_acquire(ctx, W, false, &beta));
        if (N)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)V, (int)D, (int)N, 1.0f, gl,
                        (int)V, qt_f32(h), (int)D, beta, gw, (int)D);
        else if (beta == 0.0f)
            for (int64_t i = 0; i < V * D; i++) gw[i] = 0.0f;
    }
    free(x.data);
}
