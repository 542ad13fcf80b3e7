/* ops_matmul.c - matmul with transpose flags, batched or with a shared right operand: the
 * public functions and the CPU kernels (OpenBLAS sgemm). ip[0] = ta, ip[1] = tb. With a third
 * input c (qt_matmul_add): out = a · op(b) + c in c's buffer, the GEMM's beta = 1. */
#include <cblas.h>

#include "kernels.h"

qt_mm_geom qt_mm_geom_of(const qt_tensor *a, const qt_tensor *b, bool ta, bool tb) {
    QT_CHECK(a->ndim >= 2 && b->ndim >= 2, "matmul: operands need 2+ dims");
    qt_mm_geom g = {.ta = ta, .tb = tb};
    int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    g.M = ta ? ac : ar;
    g.K = ta ? ar : ac;
    int64_t kb = tb ? bc : br;
    g.N = tb ? br : bc;
    QT_CHECK(g.K == kb, "matmul: inner dims %lld and %lld differ", (long long)g.K, (long long)kb);
    g.batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) g.batch *= a->shape[i];
    g.shared_b = b->ndim == 2;
    if (!g.shared_b) {
        QT_CHECK(b->ndim == a->ndim, "matmul: batched operands need the same rank");
        for (int i = 0; i < a->ndim - 2; i++)
            QT_CHECK(a->shape[i] == b->shape[i], "matmul: batch dim %d differs", i);
    }
    return g;
}

qt_tensor *qt_matmul(qt_ctx *ctx, qt_tensor *a, qt_tensor *b, bool ta, bool tb) {
    QT_CHECK(a->dtype == b->dtype, "matmul: dtypes differ");
    qt_mm_geom g = qt_mm_geom_of(a, b, ta, tb);
    int64_t shape[QT_MAX_DIMS];
    for (int i = 0; i < a->ndim - 2; i++) shape[i] = a->shape[i];
    shape[a->ndim - 2] = g.M;
    shape[a->ndim - 1] = g.N;
    qt_node n = {.op = QT_OP_MATMUL, .n_in = 2, .in = {a, b}};
    n.out = qt_tensor_new(ctx, a->dtype, a->ndim, shape);
    n.ip[0] = ta;
    n.ip[1] = tb;
    qt_node_run(ctx, &n);
    return n.out;
}

qt_tensor *qt_matmul_add(qt_ctx *ctx, qt_tensor *a, qt_tensor *b, bool tb, qt_tensor *c) {
    char sa[64], sb[64], sc[64];
    QT_CHECK(a->dtype == b->dtype && c->dtype == a->dtype, "matmul_add: dtypes differ");
    QT_CHECK(b->ndim == 2, "matmul_add: b must be 2-D (a shared right operand)");
    qt_mm_geom g = qt_mm_geom_of(a, b, false, tb);
    QT_CHECK(c->ndim == a->ndim && qt_rows(c) == g.batch * g.M && qt_cols(c) == g.N,
             "matmul_add: c %s does not fit a %s times b %s", qt_shape_str(c, sc, sizeof sc),
             qt_shape_str(a, sa, sizeof sa), qt_shape_str(b, sb, sizeof sb));
    QT_CHECK(!c->persistent && !c->is_view, "matmul_add: c must be a fresh step tensor");
    qt_node n = {.op = QT_OP_MATMUL, .n_in = 3, .in = {a, b, c}};
    n.out = qt_tensor_view(ctx, c, c->ndim, c->shape);
    n.ip[0] = false;
    n.ip[1] = tb;
    qt_node_run(ctx, &n);
    return n.out;
}

/* C[M, N] = beta * C + op(X) · op(Y), row-major, X is [M, K] or [K, M], Y is [K, N] or [N, K] */
static void sgemm(bool tx, bool ty, int64_t M, int64_t N, int64_t K, const float *X, const float *Y,
                  float *C, float beta) {
    if (M == 0 || N == 0) return;
    cblas_sgemm(CblasRowMajor, tx ? CblasTrans : CblasNoTrans, ty ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, 1.0f, X, tx ? (int)M : (int)K, Y, ty ? (int)K : (int)N,
                beta, C, (int)N);
}

void qt_cpu_matmul_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_mm_geom g = qt_mm_geom_of(nd->in[0], nd->in[1], nd->ip[0], nd->ip[1]);
    const float *a = qt_f32(nd->in[0]), *b = qt_f32(nd->in[1]);
    float *c = qt_f32(nd->out);
    if (g.shared_b && !g.ta) { /* one GEMM over all rows of a (onto c's values: matmul_add) */
        sgemm(false, g.tb, g.batch * g.M, g.N, g.K, a, b, c, nd->n_in == 3 ? 1.0f : 0.0f);
        return;
    }
    QT_CHECK(nd->n_in == 2, "matmul_add: only with a shared right operand");
    for (int64_t i = 0; i < g.batch; i++)
        sgemm(g.ta, g.tb, g.M, g.N, g.K, a + i * g.M * g.K, g.shared_b ? b : b + i * g.K * g.N,
              c + i * g.M * g.N, 0.0f);
}

/* With C = Ā·B̄ (Ā = op(A), B̄ = op(B)): dĀ = dC·B̄ᵀ and dB̄ = Āᵀ·dC, transposed back when the
 * operand was given transposed. */
void qt_cpu_matmul_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_mm_geom g = qt_mm_geom_of(nd->in[0], nd->in[1], nd->ip[0], nd->ip[1]);
    const float *a = qt_f32(nd->in[0]), *b = qt_f32(nd->in[1]), *gc = qt_f32(nd->out->grad);
    int64_t sa = g.M * g.K, sb = g.shared_b ? 0 : g.K * g.N, sc = g.M * g.N;
    float beta;
    if (nd->n_in == 3) qt_pass_grad(ctx, nd->in[2], nd->out); /* d(+ c) = dout, handed over */
    if (qt_needs_grad(nd->in[0])) {
        float *ga = qt_f32(qt_grad_acquire(ctx, nd->in[0], false, &beta));
        for (int64_t i = 0; i < g.batch; i++) {
            if (!g.ta) /* dA[M,K] = dC · B̄ᵀ */
                sgemm(false, !g.tb, g.M, g.K, g.N, gc + i * sc, b + i * sb, ga + i * sa, beta);
            else /* dA[K,M] = B̄ · dCᵀ */
                sgemm(g.tb, true, g.K, g.M, g.N, b + i * sb, gc + i * sc, ga + i * sa, beta);
        }
    }
    if (qt_needs_grad(nd->in[1])) {
        float *gb = qt_f32(qt_grad_acquire(ctx, nd->in[1], false, &beta));
        if (g.shared_b && !g.ta) {
            int64_t rows = g.batch * g.M;
            if (!g.tb) /* dB[K,N] = Aᵀ · dC over all rows */
                sgemm(true, false, g.K, g.N, rows, a, gc, gb, beta);
            else /* dB[N,K] = dCᵀ · A */
                sgemm(true, false, g.N, g.K, rows, gc, a, gb, beta);
            return;
        }
        for (int64_t i = 0; i < g.batch; i++) {
            /* a shared B sums its batches' contributions, in batch order */
            float bi = g.shared_b ? (i ? 1.0f : beta) : beta;
            float *dst = gb + i * sb;
            if (!g.tb) /* dB[K,N] = Āᵀ · dC */
                sgemm(!g.ta, false, g.K, g.N, g.M, a + i * sa, gc + i * sc, dst, bi);
            else /* dB[N,K] = dCᵀ · Ā */
                sgemm(true, g.ta, g.N, g.K, g.M, gc + i * sc, a + i * sa, dst, bi);
        }
    }
}
