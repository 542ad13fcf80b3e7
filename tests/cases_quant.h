/* cases_quant.h - test cases of the quantized ops: the NF4 base matmul (included by
 * op_cases.h). */
#include "quant/fakequant.h"
#include "quant/nf4.h"

/* Quantizes a random [out, in] weight and uploads its pieces as frozen tensors of ctx. */
static inline qt_nf4_weight tc_nf4_weight(qt_ctx *ctx, uint64_t *s, int64_t out, int64_t in, int bs,
                                          int nested, int dtype) {
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
    qt_nf4_weight w = {.out = c->ip[0],
                       .in = c->ip[1],
                       .blocksize = (int)c->ip[2],
                       .dtype = (int)c->ip[3],
                       .codes = in[1],
                       .offset = c->fp[0]};
    if (c->ip[4]) {
        w.absmax_q = in[2];
        w.nested_absmax = in[3];
    } else {
        w.absmax = in[2];
    }
    if (c->n_in == 5) /* nf4_matmul_add: onto a copy of the leaf c */
        return qt_nf4_matmul_add(ctx, in[0], &w, qt_cast(ctx, in[4], in[4]->dtype));
    return qt_nf4_matmul(ctx, in[0], &w);
}

static int case_nf4_matmul(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    /* {out, in, blocksize, nested, dtype, x rows, + c} */
    static const int V[][7] = {{8, 16, 64, 1, QT_NF4_F32, 3, 0},
                               {7, 9, 32, 1, QT_NF4_BF16, 5, 0}, /* odd count: pad nibble */
                               {24, 40, 64, 0, QT_NF4_F32, 4, 0},
                               {33, 300, 64, 1, QT_NF4_BF16, 2, 0}, /* > 256 blocks: nested */
                               {8, 16, 64, 1, QT_NF4_BF16, 3, 1},
                               {24, 40, 64, 0, QT_NF4_F32, 4, 1}};
    if (v >= 6) return 0;
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
    if (V[v][6]) { /* c [rows, out] */
        c->n_in = 5;
        c->in[4] = tc_uniform_leaf(ctx, &s, 2, TC_SHAPE(V[v][5], V[v][0]), -1, 1, true, "c");
        c->check[4] = true;
    }
    c->fn = fn_nf4_matmul;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dx%d bs%d %s %s%s", V[v][0], V[v][1], V[v][2],
             V[v][3] ? "dq" : "plain", V[v][4] == QT_NF4_BF16 ? "bf16" : "f32",
             V[v][6] ? " + c" : "");
    return 1;
}

/* ---- fake quantization: the backward is a surrogate (STE, clipped STE, LSQ), so the finite
 * differences are taken of the smooth function it is the exact gradient of, frozen at the
 * case's starting point: inside the grid y = x + S·R0 with R0 = rint(t0) - t0, outside
 * y = S·q_edge + B, where S = g·s + (1-g)·s0 and B = g·b + (1-g)·b0 carry LSQ's gradient
 * scale g = 1/sqrt(N·Qp). Formats without learned scales: y = x + (fq(x0) - x0) where x0 was
 * not clipped, fq(x0) where it was. ---- */
typedef struct {
    qt_fq_format f;
    int64_t n, ns, G;
    int qmin, qmax, learned, sym;
    double g;
    float *x0, *s0, *b0, *y0;
    uint8_t *mask0;
} fq_base;

static qt_fq_format fq_format_of(const op_case *c) {
    return ((const fq_base *)c->user)->f;
}

static qt_tensor *fn_fakequant(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    qt_fq_format f = fq_format_of(c);
    return qt_fakequant(ctx, in[0], &f, in[1], in[2], (qt_fq_backward)c->ip[0]);
}

static qt_tensor *ref_fakequant(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    const fq_base *b = c->user;
    float *x = malloc((size_t)b->n * sizeof *x), *y = malloc((size_t)b->n * sizeof *y);
    float *s = malloc((size_t)(b->ns + 1) * sizeof *s), *o = malloc((size_t)(b->ns + 1) * 4);
    qt_tensor_download(ctx, in[0], x);
    if (b->learned) qt_tensor_download(ctx, in[1], s);
    if (b->learned && !b->sym) qt_tensor_download(ctx, in[2], o);
    for (int64_t i = 0; i < b->n; i++) {
        bool inside = (b->mask0[i >> 3] >> (i & 7)) & 1;
        if (!b->learned) {
            y[i] = inside ? (float)((double)x[i] + ((double)b->y0[i] - b->x0[i])) : b->y0[i];
            continue;
        }
        int64_t k = i / b->G;
        double S = b->g * s[k] + (1 - b->g) * b->s0[k];
        double B = b->sym ? 0 : b->g * o[k] + (1 - b->g) * b->b0[k];
        double t0 = ((double)b->x0[i] - (b->sym ? 0 : b->b0[k])) / b->s0[k];
        if (inside)
            y[i] = (float)((double)x[i] + S * (rint(t0) - t0));
        else
            y[i] = (float)(S * (t0 > b->qmax ? b->qmax : b->qmin) + B);
    }
    qt_tensor *out = qt_tensor_new_like(ctx, in[0]);
    qt_tensor_upload(ctx, out, y);
    free(x), free(y), free(s), free(o);
    return out;
}

static int case_fakequant(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    /* format, backward, shape */
    static const struct {
        qt_fq_format f;
        qt_fq_backward bwd;
        int64_t rows, cols;
        const char *desc;
    } V[] = {
        {{.kind = QT_FQ_INT, .bits = 4, .symmetric = 1, .granularity = QT_FQ_PER_GROUP, .group = 8},
         QT_FQ_STE,
         3,
         16,
         "int4 g8 dynamic, STE"},
        {{.kind = QT_FQ_INT, .bits = 8, .symmetric = 1, .granularity = QT_FQ_PER_TOKEN},
         QT_FQ_STE,
         5,
         7,
         "int8 per-token dynamic, STE"},
        {{.kind = QT_FQ_Q4_0}, QT_FQ_STE_CLIP, 2, 64, "Q4_0, clipped STE"},
        {{.kind = QT_FQ_NF4, .blocksize = 32}, QT_FQ_STE_CLIP, 3, 22, "NF4 bs32, clipped STE"},
        {{.kind = QT_FQ_INT,
          .bits = 4,
          .symmetric = 1,
          .granularity = QT_FQ_PER_CHANNEL,
          .scale_mode = QT_FQ_LEARNED},
         QT_FQ_LSQ,
         4,
         9,
         "int4 per-channel, LSQ"},
        {{.kind = QT_FQ_INT,
          .bits = 3,
          .symmetric = 0,
          .granularity = QT_FQ_PER_TENSOR,
          .scale_mode = QT_FQ_LEARNED},
         QT_FQ_LSQ,
         3,
         5,
         "int3 asymmetric, LSQ+"},
        {{.kind = QT_FQ_INT,
          .bits = 2,
          .symmetric = 1,
          .granularity = QT_FQ_PER_GROUP,
          .group = 4,
          .scale_mode = QT_FQ_LEARNED},
         QT_FQ_LSQ,
         2,
         12,
         "int2 g4, LSQ"},
    };
    if (v >= (int)(sizeof V / sizeof V[0])) return 0;
    uint64_t s = seed;
    int64_t shape[2] = {V[v].rows, V[v].cols}, n = shape[0] * shape[1];
    const qt_fq_format *f = &V[v].f;
    bool learned = f->scale_mode == QT_FQ_LEARNED;
    int64_t ns = learned ? qt_fq_num_scales(f, 2, shape) : 0;
    size_t bytes =
        sizeof(fq_base) + (size_t)(3 * n + 2 * ns + 2) * sizeof(float) + (size_t)(n + 7) / 8 + 8;
    fq_base *b = calloc(1, bytes);
    b->f = *f;
    b->n = n, b->ns = ns, b->learned = learned, b->sym = f->symmetric;
    b->x0 = (float *)(b + 1), b->y0 = b->x0 + n, b->s0 = b->y0 + n, b->b0 = b->s0 + ns + 1;
    b->mask0 = (uint8_t *)(b->b0 + ns + 1);
    c->user = b;
    c->n_in = 3;
    c->in[0] = tc_normal_leaf(ctx, &s, 2, shape, 1.0, true, "x");
    c->check[0] = true;
    qt_tensor_download(ctx, c->in[0], b->x0);
    if (learned) {
        qt_fq_range(f, &b->qmin, &b->qmax);
        b->G = qt_fq_group_size(f, 2, shape);
        b->g = 1.0 / sqrt((double)b->G * b->qmax);
        /* scales that clip some elements and not others: ~0.6 of the group's range */
        for (int64_t k = 0; k < ns; k++) {
            float mx = 0, mn = 0;
            for (int64_t i = k * b->G; i < (k + 1) * b->G; i++)
                mx = fmaxf(mx, b->x0[i]), mn = fminf(mn, b->x0[i]);
            b->s0[k] = 0.6f * (f->symmetric ? fmaxf(mx, -mn) / b->qmax : (mx - mn) / b->qmax);
            b->b0[k] = f->symmetric ? 0.0f : 0.8f * mn;
        }
        int64_t nsh = ns;
        c->in[1] = qt_param_new(ctx, QT_F32, 1, &nsh, true, "scale");
        qt_tensor_upload(ctx, c->in[1], b->s0);
        c->check[1] = true;
        if (!f->symmetric) {
            c->in[2] = qt_param_new(ctx, QT_F32, 1, &nsh, true, "offset");
            qt_tensor_upload(ctx, c->in[2], b->b0);
            c->check[2] = true;
        }
    }
    QT_CHECK(qt_fq_forward(f, b->x0, 2, shape, learned ? b->s0 : NULL,
                           learned && !f->symmetric ? b->b0 : NULL, b->y0, b->mask0) == 0,
             "fake-quant reference forward");
    if (V[v].bwd == QT_FQ_STE) memset(b->mask0, 0xff, (size_t)(n + 7) / 8);
    c->ip[0] = V[v].bwd;
    c->fn = fn_fakequant;
    c->ref_fn = ref_fakequant;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%s", V[v].desc);
    return 1;
}

#define QT_CASES_QUANT {QT_OP_NF4_MATMUL, case_nf4_matmul}, {QT_OP_FAKEQUANT, case_fakequant},
