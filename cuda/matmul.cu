/* matmul.cu - matmul on the GPU through cuBLASLt, with the CPU reference's semantics
 * (autograd/ops_matmul.c): transpose flags ip[0] = ta, ip[1] = tb; a batched right operand or
 * one 2-D right operand shared by every batch of the left; the same backward formulas and
 * gradient rule (beta 0 overwrites without reading, beta 1 accumulates). Also qt_cuda_gemm,
 * the one row-major GEMM helper the other GPU ops (the NF4 base layer, ...) call.
 *
 * Row-major onto column-major: a row-major C[m, n] is a column-major C^T[n, m], so
 * C = op(A) · op(B) runs as C^T = op(B)^T · op(A)^T with B as cuBLASLt's "A" and A as its "B",
 * the transpose flags unchanged. Storage F32 (CUBLAS_COMPUTE_32F: true fp32 math, no TF32, so
 * results match the CPU's sgemm to rounding), BF16 or F16 (fp32 accumulation, the result
 * rounded once into the storage dtype; beta 1 reads the stored value back and adds in fp32).
 *
 * Descriptors: the op descriptor, the three layouts (C and D share one), the preference and
 * the algorithm picked by the heuristic are created once per distinct problem and kept in the
 * context's matmul_cache, keyed by (dtype, transposes, m, n, k, batch, strides, beta != 0,
 * pointer alignments). A warm call is one lookup and one cublasLtMatmul. The algorithm of a
 * key never changes (re-created the same way if evicted), and cuBLASLt's kernels are
 * bit-reproducible for a fixed algorithm on one GPU: the results are deterministic.
 * A shared right operand whose batches cannot be flattened (ta) runs as one GEMM per batch in
 * batch order; the shared operand's gradient then accumulates with beta 1, in that order. */
#include <string.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

extern "C" {
#include "autograd/kernels.h"
}

namespace {

#include "cuda/cuda_common.cuh"

/* key[0] of this file's cache entries: "MM" and the storage dtype (other files may add
 * entries of their own kinds to the same cache) */
constexpr int64_t kKeyTag = (int64_t)0x4d4d << 16;

cudaDataType_t lt_type(qt_dtype dt) {
    switch (dt) {
    case QT_F32:
        return CUDA_R_32F;
    case QT_BF16:
        return CUDA_R_16BF;
    case QT_F16:
        return CUDA_R_16F;
    default:
        QT_CHECK(0, "matmul: dtype %s is not supported on CUDA", qt_dtype_name(dt));
    }
    return CUDA_R_32F;
}

/* the largest power of two up to 256 that divides the address: cuBLASLt's heuristic must
 * only offer kernels that accept it (its default assumption is 256) */
uint32_t alignment_of(const void *p) {
    uintptr_t u = (uintptr_t)p;
    uint32_t a = 256;
    while (a > 1 && (u & (a - 1))) a >>= 1;
    return a;
}

void entry_destroy(qt_cuda_matmul_entry *m) {
    if (m->pref) QT_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(m->pref), "freeing a preference");
    if (m->a) QT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(m->a), "freeing a matrix layout");
    if (m->b) QT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(m->b), "freeing a matrix layout");
    if (m->c) QT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(m->c), "freeing a matrix layout");
    if (m->d) QT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(m->d), "freeing a matrix layout");
    if (m->op) QT_CUBLAS_CHECK(cublasLtMatmulDescDestroy(m->op), "freeing a matmul descriptor");
    memset(m, 0, sizeof *m);
}

/* a column-major layout rows x cols (leading dimension ld), batched when batch > 1 */
cublasLtMatrixLayout_t make_layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld,
                                   int64_t batch, int64_t stride) {
    cublasLtMatrixLayout_t l = NULL;
    QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, (uint64_t)rows, (uint64_t)cols, ld),
                    "creating a cuBLASLt matrix layout");
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        QT_CUBLAS_CHECK(
            cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc),
            "setting a layout's batch count");
        QT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
                            l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride),
                        "setting a layout's batch stride");
    }
    return l;
}

/* One row-major problem: C[m, n] (+)= op(A) · op(B), batch of them at element strides
 * sa, sb, sc; A is [m, k] or (ta) [k, m], B is [k, n] or (tb) [n, k], all packed. */
struct Problem {
    qt_dtype dt, ct; /* A and B's storage; C's (F32 with BF16/F16 A, B: fp32 accumulators) */
    bool ta, tb;
    int64_t m, n, k, batch, sa, sb, sc;
    float beta;
    float alpha; /* 0 means 1 (aggregate initialisers below leave it out) */
    const void *A, *B;
    void *C;
};

/* Fills entry e for problem p (key already set): descriptors, preference, heuristic algo. */
void entry_build(qt_cuda_ctx *c, qt_cuda_matmul_entry *e, const Problem &p, const uint32_t al[3]) {
    cudaDataType_t t = lt_type(p.dt), tc = lt_type(p.ct);
    QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    "creating a cuBLASLt matmul descriptor");
    /* cuBLASLt's A is our B, its B our A (C^T = op(B)^T op(A)^T) */
    cublasOperation_t opa = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                      opb = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    QT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa),
        "setting transa");
    QT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb),
        "setting transb");
    /* stored shapes, column-major: B^T is [n, k] (ld n) or, tb, [k, n] (ld k); A^T is [k, m]
     * (ld k) or, ta, [m, k] (ld m); C^T is [n, m] (ld n) */
    e->a = p.tb ? make_layout(t, p.k, p.n, p.k, p.batch, p.sb)
                : make_layout(t, p.n, p.k, p.n, p.batch, p.sb);
    e->b = p.ta ? make_layout(t, p.m, p.k, p.m, p.batch, p.sa)
                : make_layout(t, p.k, p.m, p.k, p.batch, p.sa);
    e->c = make_layout(tc, p.n, p.m, p.n, p.batch, p.sc);
    e->d = NULL; /* D is C (in place): one layout serves both */

    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&e->pref), "creating a matmul preference");
    uint64_t ws = c->lt_workspace_bytes;
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                        e->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                    "setting the workspace limit");
    /* split-K partial sums are added in fp32 (or not split): never rounded to a bf16 output
     * between the parts, which costs more than one rounding of the result */
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                        e->pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red),
                    "setting the split-K reduction schemes");
    /* cuBLASLt's A/B are our B/A */
    uint32_t alb = al[1], ala = al[0], alc = al[2];
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                        e->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alb, sizeof alb),
                    "setting A's alignment");
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                        e->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ala, sizeof ala),
                    "setting B's alignment");
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                        e->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alc, sizeof alc),
                    "setting C's alignment");
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                        e->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alc, sizeof alc),
                    "setting D's alignment");

    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    memset(&res, 0, sizeof res);
    QT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, e->op, e->a, e->b, e->c, e->c, e->pref, 1,
                                                   &res, &found),
                    "asking cuBLASLt for a matmul algorithm");
    QT_CHECK(found > 0 && res.state == CUBLAS_STATUS_SUCCESS,
             "matmul: cuBLASLt has no algorithm for %s [%lld x %lld] * [%lld x %lld] (ta %d tb "
             "%d, batch %lld)",
             qt_dtype_name(p.dt), (long long)p.m, (long long)p.k, (long long)p.k, (long long)p.n,
             (int)p.ta, (int)p.tb, (long long)p.batch);
    e->algo = res.algo;
    e->has_algo = 1;
    e->valid = 1;
}

/* The cache entry of problem p: found, or built in a free slot, or built over one of this
 * file's own entries when the cache is full (the victim is picked by the key's hash, so the
 * choice does not depend on call history beyond the keys themselves). */
qt_cuda_matmul_entry *entry_get(qt_cuda_ctx *c, const Problem &p) {
    uint32_t al[3] = {alignment_of(p.A), alignment_of(p.B), alignment_of(p.C)};
    int64_t key[12] = {kKeyTag | (int64_t)p.dt | (int64_t)p.ct << 8,
                       (int64_t)p.ta,
                       (int64_t)p.tb,
                       p.m,
                       p.n,
                       p.k,
                       p.batch,
                       p.sa,
                       p.sb,
                       p.sc,
                       p.beta != 0.0f,
                       (int64_t)al[0] | (int64_t)al[1] << 10 | (int64_t)al[2] << 20};
    for (int i = 0; i < c->matmul_cache_n; i++) {
        qt_cuda_matmul_entry *e = &c->matmul_cache[i];
        if (e->valid && !memcmp(e->key, key, sizeof key)) return e;
    }
    qt_cuda_matmul_entry *e = NULL;
    if (c->matmul_cache_n < QT_CUDA_MATMUL_CACHE) {
        e = &c->matmul_cache[c->matmul_cache_n++];
    } else {
        uint64_t h = 1469598103934665603ull; /* FNV-1a over the key */
        for (int j = 0; j < 12; j++) h = (h ^ (uint64_t)key[j]) * 1099511628211ull;
        for (int j = 0; j < QT_CUDA_MATMUL_CACHE && !e; j++) {
            qt_cuda_matmul_entry *v = &c->matmul_cache[(h + (uint64_t)j) % QT_CUDA_MATMUL_CACHE];
            if (!v->valid || (v->key[0] & ~(int64_t)0xffff) == kKeyTag) e = v;
        }
        QT_CHECK(e, "matmul: the descriptor cache is full of other kinds of entries");
        entry_destroy(e);
    }
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, sizeof key);
    entry_build(c, e, p, al);
    return e;
}

void run(qt_cuda_ctx *c, const Problem &p) {
    if (p.m == 0 || p.n == 0 || p.batch == 0) return;
    size_t es = qt_dtype_size(p.ct);
    if (p.k == 0) { /* an empty sum: C = beta * C */
        if (p.beta == 0.0f) {
            QT_CHECK(p.batch == 1 || p.sc == p.m * p.n, "matmul: empty product with gaps in C");
            qt_cuda_memset0(c, p.C, (size_t)(p.batch * p.m * p.n) * es);
        }
        return;
    }
    qt_cuda_matmul_entry *e = entry_get(c, p);
    const float alpha = p.alpha != 0.0f ? p.alpha : 1.0f, beta = p.beta;
    QT_CUBLAS_CHECK(cublasLtMatmul(c->lt, e->op, &alpha, p.B, e->a, p.A, e->b, &beta, p.C, e->c,
                                   p.C, e->c, &e->algo, c->lt_workspace, c->lt_workspace_bytes,
                                   c->stream),
                    "running a cuBLASLt matmul");
}

/* ---- the op's geometry (as autograd/ops_matmul.c) ---------------------------------------- */

typedef qt_mm_geom Geom;

qt_dtype check_node(const qt_node *nd, const char *what) {
    qt_dtype dt = nd->out->dtype;
    QT_CHECK(dt == QT_F32 || dt == QT_BF16 || dt == QT_F16, "%s: dtype %s is not supported on CUDA",
             what, qt_dtype_name(dt));
    QT_CHECK(nd->out->device == QT_CUDA, "%s: output is not on CUDA", what);
    for (int k = 0; k < 2; k++) {
        QT_CHECK(nd->in[k] && nd->in[k]->device == QT_CUDA, "%s: input %d is not on CUDA", what, k);
        QT_CHECK(nd->in[k]->dtype == dt, "%s: input %d is %s, output %s", what, k,
                 qt_dtype_name(nd->in[k]->dtype), qt_dtype_name(dt));
    }
    return dt;
}

const char *at(const void *p, int64_t elems, size_t es) {
    return (const char *)p + elems * (int64_t)es;
}

} // namespace

/* ---- the GEMM helpers ----------------------------------------------------------------------- */

extern "C" void qt_cuda_gemm_strided(qt_ctx *ctx, qt_dtype dt, bool ta, bool tb, int64_t m,
                                     int64_t n, int64_t k, int64_t batch, const void *A, int64_t sa,
                                     const void *B, int64_t sb, void *C, int64_t sc, float beta) {
    QT_CHECK(beta == 0.0f || beta == 1.0f, "gemm: beta must be 0 or 1 (got %g)", (double)beta);
    QT_CHECK(m >= 0 && n >= 0 && k >= 0 && batch >= 0 && batch <= INT32_MAX, "gemm: bad sizes");
    Problem p = {dt, dt, ta, tb, m, n, k, batch, sa, sb, sc, beta, 1.0f, A, B, C};
    if (batch == 1) p.sa = p.sb = p.sc = 0; /* strides are meaningless: one key for all */
    run(cuda_of(ctx), p);
}

extern "C" void qt_cuda_gemm(qt_ctx *ctx, qt_dtype dt, bool ta, bool tb, int64_t m, int64_t n,
                             int64_t k, const void *A, const void *B, void *C, float beta) {
    qt_cuda_gemm_strided(ctx, dt, ta, tb, m, n, k, 1, A, 0, B, 0, C, 0, beta);
}

extern "C" void qt_cuda_gemm_out(qt_ctx *ctx, qt_dtype dt, qt_dtype ct, bool ta, bool tb, int64_t m,
                                 int64_t n, int64_t k, const void *A, const void *B, void *C,
                                 float beta) {
    qt_cuda_gemm_alpha(ctx, dt, ct, ta, tb, m, n, k, 1.0f, A, B, C, beta);
}

extern "C" void qt_cuda_gemm_alpha(qt_ctx *ctx, qt_dtype dt, qt_dtype ct, bool ta, bool tb,
                                   int64_t m, int64_t n, int64_t k, float alpha, const void *A,
                                   const void *B, void *C, float beta) {
    QT_CHECK(beta == 0.0f || beta == 1.0f, "gemm: beta must be 0 or 1 (got %g)", (double)beta);
    QT_CHECK(ct == dt || ct == QT_F32, "gemm: C must be %s or f32, got %s", qt_dtype_name(dt),
             qt_dtype_name(ct));
    QT_CHECK(alpha != 0.0f, "gemm: alpha 0");
    Problem p = {dt, ct, ta, tb, m, n, k, 1, 0, 0, 0, beta, alpha, A, B, C};
    run(cuda_of(ctx), p);
}

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_matmul_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "matmul");
    const qt_tensor *a = nd->in[0], *b = nd->in[1];
    Geom g = qt_mm_geom_of(a, b, nd->ip[0], nd->ip[1]);
    size_t es = qt_dtype_size(dt);
    void *c = nd->out->data;
    int64_t sa = g.M * g.K, sc = g.M * g.N;
    if (g.shared_b && !g.ta) { /* one GEMM over all rows of a: C[batch*M, N] (+ C: matmul_add) */
        qt_cuda_gemm(ctx, dt, false, g.tb, g.batch * g.M, g.N, g.K, a->data, b->data, c,
                     nd->n_in == 3 ? 1.0f : 0.0f);
        return;
    }
    QT_CHECK(nd->n_in == 2, "matmul_add: only with a shared right operand");
    if (g.shared_b) { /* ta: a's batches are [K, M] blocks; one GEMM each */
        for (int64_t i = 0; i < g.batch; i++)
            qt_cuda_gemm(ctx, dt, true, g.tb, g.M, g.N, g.K, at(a->data, i * sa, es), b->data,
                         (void *)at(c, i * sc, es), 0.0f);
    } else {
        qt_cuda_gemm_strided(ctx, dt, g.ta, g.tb, g.M, g.N, g.K, g.batch, a->data, sa, b->data,
                             g.K * g.N, c, sc, 0.0f);
    }
}

/* With C = Ā·B̄ (Ā = op(A), B̄ = op(B)): dĀ = dC·B̄ᵀ and dB̄ = Āᵀ·dC, transposed back when the
 * operand was given transposed (the CPU's formulas, call for call where the batches differ). */
extern "C" void qt_cuda_matmul_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "matmul backward");
    const qt_tensor *a = nd->in[0], *b = nd->in[1], *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "matmul backward: missing or mismatched output gradient");
    Geom g = qt_mm_geom_of(a, b, nd->ip[0], nd->ip[1]);
    size_t es = qt_dtype_size(dt);
    const void *gc = gy->data;
    int64_t sa = g.M * g.K, sb = g.shared_b ? 0 : g.K * g.N, sc = g.M * g.N;
    float beta;
    if (nd->n_in == 3) qt_pass_grad(ctx, nd->in[2], nd->out); /* d(+ c) = dout, handed over */
    if (qt_needs_grad(nd->in[0])) {
        void *ga = qt_grad_acquire(ctx, nd->in[0], false, &beta)->data;
        if (!g.ta && g.shared_b) /* dA[batch*M, K] = dC[batch*M, N] · B̄ᵀ */
            qt_cuda_gemm(ctx, dt, false, !g.tb, g.batch * g.M, g.K, g.N, gc, b->data, ga, beta);
        else if (!g.ta) /* dA_i[M, K] = dC_i · B̄_iᵀ */
            qt_cuda_gemm_strided(ctx, dt, false, !g.tb, g.M, g.K, g.N, g.batch, gc, sc, b->data, sb,
                                 ga, sa, beta);
        else if (g.shared_b) /* dA_i[K, M] = B̄ · dC_iᵀ, B̄ shared: one GEMM per batch */
            for (int64_t i = 0; i < g.batch; i++)
                qt_cuda_gemm(ctx, dt, g.tb, true, g.K, g.M, g.N, b->data, at(gc, i * sc, es),
                             (void *)at(ga, i * sa, es), beta);
        else /* dA_i[K, M] = B̄_i · dC_iᵀ */
            qt_cuda_gemm_strided(ctx, dt, g.tb, true, g.K, g.M, g.N, g.batch, b->data, sb, gc, sc,
                                 ga, sa, beta);
    }
    if (qt_needs_grad(nd->in[1])) {
        void *gb = qt_grad_acquire(ctx, nd->in[1], false, &beta)->data;
        if (g.shared_b && !g.ta) { /* one GEMM over all rows of a and dC */
            int64_t rows = g.batch * g.M;
            if (!g.tb) /* dB[K, N] = Aᵀ · dC */
                qt_cuda_gemm(ctx, dt, true, false, g.K, g.N, rows, a->data, gc, gb, beta);
            else /* dB[N, K] = dCᵀ · A */
                qt_cuda_gemm(ctx, dt, true, false, g.N, g.K, rows, gc, a->data, gb, beta);
        } else if (g.shared_b) { /* the batches' contributions summed in batch order */
            for (int64_t i = 0; i < g.batch; i++) {
                float bi = i ? 1.0f : beta;
                const void *ai = at(a->data, i * sa, es), *ci = at(gc, i * sc, es);
                if (!g.tb) /* dB[K, N] += Ā_iᵀ · dC_i, Ā_i = A_iᵀ */
                    qt_cuda_gemm(ctx, dt, false, false, g.K, g.N, g.M, ai, ci, gb, bi);
                else /* dB[N, K] += dC_iᵀ · Ā_i */
                    qt_cuda_gemm(ctx, dt, true, true, g.N, g.K, g.M, ci, ai, gb, bi);
            }
        } else if (!g.tb) { /* dB_i[K, N] = Ā_iᵀ · dC_i */
            qt_cuda_gemm_strided(ctx, dt, !g.ta, false, g.K, g.N, g.M, g.batch, a->data, sa, gc, sc,
                                 gb, g.K * g.N, beta);
        } else { /* dB_i[N, K] = dC_iᵀ · Ā_i */
            qt_cuda_gemm_strided(ctx, dt, true, g.ta, g.N, g.K, g.M, g.batch, gc, sc, a->data, sa,
                                 gb, g.N * g.K, beta);
        }
    }
}
