/* cases_quant.h - test cases of the quantized ops: the NF4 base matmul (included by
 * op_cases.h). */
#include "quant/nf4.h"

/* Quantizes a random [out, in] weight and uploads its pieces as frozen tensors of ctx. */
static inline qt_nf4_weight tc_nf4_weight(qt_ctx *ctx, uint64_t *s, int64_t out, int64_t in,
                                          int bs, int nested, int dtype) {
    int64_t n = out * in;
    float *w = malloc((size_t)n * sizeof *w);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) w[i] = (float)(0.2 * tc_normal(s));
    const void *src = w;
    if (dtype == QT_NF4_BF16) {
        for (int64_t i = 0; i < n; i++) h[i] = qt_f32_to_bf16(w[i]);
        src = h;
    }
    qt_nf4_tensor t;
    int64_t shape[2] = {out, in};
    QT_CHECK(qt_nf4_tensor_quantize(&t, src, (qt_nf4_dtype)dtype, 2, shape, bs, nested) == 0,
             "nf4 quantize");
    qt_nf4_weight q = {.out = out, .in = in, .blocksize = bs, .dtype = dtype};
    int64_t nb = t.nblocks, nc = (n + 1) / 2;
    q.codes = qt_param_new(ctx, QT_U8, 1, &nc, false, "codes");
    qt_tensor_upload(ctx, q.codes, t.data);
    if (nested) {
        int64_t nn = t.nested_nblocks;
        q.absmax_q = qt_param_new(ctx, QT_U8, 1, &nb, false, "absmax_q");
        qt_tensor_upload(ctx, q.absmax_q, t.absmax_q);
        q.nested_absmax = qt_param_new(ctx, QT_F32, 1, &nn, false, "nested_absmax");
        qt_tensor_upload(ctx, q.nested_absmax, t.nested_absmax);
        q.offset = t.offset;
    } else {
        q.absmax = qt_param_new(ctx, QT_F32, 1, &nb, false, "absmax");
        qt_tensor_upload(ctx, q.absmax, t.absmax);
    }
    qt_nf4_tensor_free(&t);
    free(w);
    free(h);
    return q;
}

static qt_tensor *fn_nf4_matmul(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    qt_nf4_weight w = {.out = c->ip[0], .in = c->ip[1], .blocksize = (int)c->ip[2],
                       .dtype = (int)c->ip[3], .codes = in[1], .offset = c->fp[0]};
    if (c->ip[4]) {
        w.absmax_q = in[2];
        w.nested_absmax = in[3];
    } else {
        w.absmax = in[2];
    }
    return qt_nf4_matmul(ctx, in[0], &w);
}

static int case_nf4_matmul(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    /* {out, in, blocksize, nested, dtype, x rows} */
    static const int V[][6] = {{8, 16, 64, 1, QT_NF4_F32, 3},
                               {7, 9, 32, 1, QT_NF4_BF16, 5}, /* odd count: pad nibble */
                               {24, 40, 64, 0, QT_NF4_F32, 4},
                               {33, 300, 64, 1, QT_NF4_BF16, 2}}; /* > 256 blocks: nested */
    if (v >= 4) return 0;
    uint64_t s = seed;
    qt_nf4_weight w = tc_nf4_weight(ctx, &s, V[v][0], V[v][1], V[v][2], V[v][3], V[v][4]);
    c->n_in = 4;
    c->in[0] = tc_uniform_leaf(ctx, &s, 2, TC_SHAPE(V[v][5], V[v][1]), -1, 1, true, "x");
    c->in[1] = w.codes;
    c->in[2] = V[v][3] ? w.absmax_q : w.absmax;
    c->in[3] = V[v][3] ? w.nested_absmax : NULL;
    c->check[0] = true;
    c->ip[0] = V[v][0], c->ip[1] = V[v][1], c->ip[2] = V[v][2], c->ip[3] = V[v][4];
    c->ip[4] = V[v][3];
    c->fp[0] = w.offset;
    c->fn = fn_nf4_matmul;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dx%d bs%d %s %s", V[v][0], V[v][1], V[v][2],
             V[v][3] ? "dq" : "plain", V[v][4] == QT_NF4_BF16 ? "bf16" : "f32");
    return 1;
}

#define QT_CASES_QUANT {QT_OP_NF4_MATMUL, case_nf4_matmul},
