/* cases_basic.h - test cases of matmul, the elementwise ops, the shape ops, cast and the
 * checkpointed span (included by op_cases.h). */

/* ---- matmul ---- */
static qt_tensor *fn_matmul(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    if (c->n_in == 3) /* matmul_add: onto a copy of the leaf c, whose buffer it takes over */
        return qt_matmul_add(ctx, in[0], in[1], c->ip[1], qt_cast(ctx, in[2], in[2]->dtype));
    return qt_matmul(ctx, in[0], in[1], c->ip[0], c->ip[1]);
}

static int case_matmul(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    /* {a dims..., b dims..., ta, tb, + c}: 2-D, transposes, batched, shared b with batch, odd
     * sizes; matmul_add (shared b, with and without tb) */
    static const struct {
        int an, bn;
        int64_t a[3], b[3];
        int ta, tb, add;
    } V[] = {
        {2, 2, {3, 5}, {5, 4}, 0, 0, 0},       {2, 2, {7, 3}, {6, 3}, 0, 1, 0},
        {2, 2, {5, 3}, {5, 4}, 1, 0, 0},       {2, 2, {5, 3}, {2, 5}, 1, 1, 0},
        {3, 3, {2, 3, 4}, {2, 4, 5}, 0, 0, 0}, {3, 3, {2, 4, 3}, {2, 5, 4}, 1, 1, 0},
        {3, 2, {3, 5, 7}, {6, 7}, 0, 1, 0},    {3, 2, {2, 7, 5}, {7, 3}, 1, 0, 0},
        {3, 2, {2, 3, 7}, {6, 7}, 0, 1, 1},    {2, 2, {9, 5}, {5, 4}, 0, 0, 1},
    };
    if (v >= (int)(sizeof V / sizeof V[0])) return 0;
    uint64_t s = seed;
    c->n_in = 2;
    c->in[0] = tc_uniform_leaf(ctx, &s, V[v].an, V[v].a, -1, 1, true, "a");
    c->in[1] = tc_uniform_leaf(ctx, &s, V[v].bn, V[v].b, -1, 1, true, "b");
    c->check[0] = c->check[1] = true;
    if (V[v].add) { /* c shaped like the product */
        int64_t cs[3];
        for (int i = 0; i < V[v].an - 1; i++) cs[i] = V[v].a[i];
        cs[V[v].an - 1] = V[v].tb ? V[v].b[0] : V[v].b[1];
        c->n_in = 3;
        c->in[2] = tc_uniform_leaf(ctx, &s, V[v].an, cs, -1, 1, true, "c");
        c->check[2] = true;
    }
    c->ip[0] = V[v].ta;
    c->ip[1] = V[v].tb;
    c->fn = fn_matmul;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "a%dd b%dd ta=%d tb=%d%s", V[v].an, V[v].bn, V[v].ta, V[v].tb,
             V[v].add ? " + c" : "");
    return 1;
}

/* ---- elementwise ---- */
static const int64_t ew_shapes[][4] = {{1, 1, 1, 7}, {1, 1, 3, 5}, {1, 2, 3, 4}};

static qt_tensor *fn_add(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_add(ctx, in[0], in[1]);
}
static qt_tensor *fn_add_self(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_add(ctx, in[0], in[0]); /* the same tensor twice: set, then accumulate */
}
static qt_tensor *fn_mul(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_mul(ctx, in[0], in[1]);
}
static qt_tensor *fn_mul_self(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_mul(ctx, in[0], in[0]);
}
static qt_tensor *fn_scale(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_scale(ctx, in[0], c->fp[0]);
}
static qt_tensor *fn_bias_add(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_bias_add(ctx, in[0], in[1]);
}
static qt_tensor *fn_silu(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_silu(ctx, in[0]);
}
static qt_tensor *fn_swiglu(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_swiglu(ctx, in[0], in[1]);
}

/* variants 0..2: shapes; variant 3 (for binary ops): the same tensor as both operands */
static int ew_case(qt_ctx *ctx, int v, uint64_t seed, op_case *c, int arity, op_case_fn fn,
                   op_case_fn self_fn, double lo, double hi) {
    int nshape = (int)(sizeof ew_shapes / sizeof ew_shapes[0]);
    if (v > nshape || (v == nshape && !self_fn)) return 0;
    uint64_t s = seed;
    const int64_t *sh = ew_shapes[v < nshape ? v : 1];
    int nd = v == 0 ? 1 : v == 1 ? 2 : 3;
    c->n_in = v == nshape ? 1 : arity;
    for (int i = 0; i < c->n_in; i++) {
        c->in[i] = tc_uniform_leaf(ctx, &s, nd, sh + (4 - nd), lo, hi, true, i ? "b" : "a");
        c->check[i] = true;
    }
    c->fn = v == nshape ? self_fn : fn;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%s %dd", v == nshape ? "self" : "shape", nd);
    return 1;
}

static int case_add(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    return ew_case(ctx, v, seed, c, 2, fn_add, fn_add_self, -1, 1);
}
static int case_mul(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    return ew_case(ctx, v, seed, c, 2, fn_mul, fn_mul_self, -1, 1);
}
static int case_scale(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    c->fp[0] = -1.7f;
    return ew_case(ctx, v, seed, c, 1, fn_scale, NULL, -1, 1);
}
static int case_silu(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    return ew_case(ctx, v, seed, c, 1, fn_silu, NULL, -4, 4);
}
static int case_swiglu(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    return ew_case(ctx, v, seed, c, 2, fn_swiglu, NULL, -4, 4);
}

static int case_bias_add(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const int64_t S[][3] = {{1, 1, 5}, {1, 4, 3}, {2, 3, 7}};
    if (v >= 3) return 0;
    uint64_t s = seed;
    int nd = v + 1;
    c->n_in = 2;
    c->in[0] = tc_uniform_leaf(ctx, &s, nd, S[v] + (3 - nd), -1, 1, true, "x");
    c->in[1] = tc_uniform_leaf(ctx, &s, 1, &S[v][2], -1, 1, true, "b");
    c->check[0] = c->check[1] = true;
    c->fn = fn_bias_add;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dd", nd);
    return 1;
}

/* ---- shape ops ---- */
static qt_tensor *fn_reshape(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    /* reshape, then a non-linear op so the view's gradient is not trivially the identity */
    qt_tensor *r = qt_reshape(ctx, in[0], (int)c->ip[0], c->ip + 1);
    return qt_mul(ctx, r, r);
}

static int case_reshape(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    if (v >= 2) return 0;
    uint64_t s = seed;
    c->n_in = 1;
    c->in[0] = tc_uniform_leaf(ctx, &s, 3, TC_SHAPE(2, 3, 5), -1, 1, true, "x");
    c->check[0] = true;
    if (v == 0) {
        c->ip[0] = 2;
        c->ip[1] = 6;
        c->ip[2] = 5;
    } else {
        c->ip[0] = 4;
        c->ip[1] = 5;
        c->ip[2] = 1;
        c->ip[3] = 3;
        c->ip[4] = 2;
    }
    c->fn = fn_reshape;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "to %lldd", (long long)c->ip[0]);
    return 1;
}

static qt_tensor *fn_permute(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    int perm[4] = {(int)c->ip[0], (int)c->ip[1], (int)c->ip[2], (int)c->ip[3]};
    return qt_permute(ctx, in[0], perm);
}

static int case_permute(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int nd;
        int64_t sh[4];
        int perm[4];
    } V[] = {{2, {3, 5}, {1, 0}},
             {3, {2, 3, 4}, {0, 2, 1}},
             {4, {2, 3, 4, 5}, {0, 2, 1, 3}},
             {4, {3, 1, 2, 5}, {3, 0, 2, 1}}};
    if (v >= 4) return 0;
    uint64_t s = seed;
    c->n_in = 1;
    c->in[0] = tc_uniform_leaf(ctx, &s, V[v].nd, V[v].sh, -1, 1, true, "x");
    c->check[0] = true;
    for (int i = 0; i < 4; i++) c->ip[i] = V[v].perm[i];
    c->fn = fn_permute;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dd", V[v].nd);
    return 1;
}

static qt_tensor *fn_concat(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_concat(ctx, c->n_in, in, (int)c->ip[0]);
}

static int case_concat(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    if (v >= 3) return 0;
    uint64_t s = seed;
    int dim = v; /* concat along dim 0, 1, 2 of [2, 3, 4]-like pieces */
    c->n_in = 3;
    for (int k = 0; k < 3; k++) {
        int64_t sh[3] = {2, 3, 4};
        sh[dim] = k + 1;
        c->in[k] = tc_uniform_leaf(ctx, &s, 3, sh, -1, 1, true, "x");
        c->check[k] = true;
    }
    c->ip[0] = dim;
    c->fn = fn_concat;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "dim %d", dim);
    return 1;
}

static qt_tensor *fn_slice(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    if (c->ip[3]) { /* split into three and recombine two of them, weighted */
        qt_tensor *p[3];
        int64_t sizes[3] = {1, 2, in[0]->shape[c->ip[0]] - 3};
        qt_split(ctx, in[0], (int)c->ip[0], 3, sizes, p);
        return qt_add(ctx, qt_scale(ctx, p[0], 2.0f), qt_slice(ctx, p[1], (int)c->ip[0], 1, 1));
    }
    return qt_slice(ctx, in[0], (int)c->ip[0], c->ip[1], c->ip[2]);
}

static int case_slice(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    if (v >= 4) return 0;
    uint64_t s = seed;
    c->n_in = 1;
    c->in[0] = tc_uniform_leaf(ctx, &s, 3, TC_SHAPE(3, 5, 4), -1, 1, true, "x");
    c->check[0] = true;
    int dim = v < 3 ? v : 1;
    c->ip[0] = dim;
    c->ip[1] = 1;
    c->ip[2] = 2;
    c->ip[3] = v == 3;
    c->fn = fn_slice;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, v == 3 ? "split dim %d" : "dim %d", dim);
    return 1;
}

/* ---- cast: inputs exactly representable and a step that keeps them so, making the rounding
 * exact and the finite difference meaningful ---- */
static qt_tensor *fn_cast(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    qt_tensor *h = qt_cast(ctx, in[0], (qt_dtype)c->ip[0]);
    return qt_cast(ctx, qt_mul(ctx, qt_cast(ctx, h, QT_F32), in[0]), QT_F32);
}

static int case_cast(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    if (v >= 2) return 0;
    uint64_t s = seed;
    int64_t n = 9;
    float h[9];
    for (int i = 0; i < n; i++) { /* multiples of 2^-6 in [0.5, 2): exact in bf16 and f16 */
        int k = 32 + (int)(tc_uniform(&s) * 96);
        h[i] = (float)k / 64.0f * (i % 2 ? -1.0f : 1.0f);
    }
    c->n_in = 1;
    c->in[0] = qt_param_new(ctx, QT_F32, 1, &n, true, "x");
    qt_tensor_upload(ctx, c->in[0], h);
    c->check[0] = true;
    c->ip[0] = v == 0 ? QT_BF16 : QT_F16;
    c->fn = fn_cast;
    c->eps = 1.0 / 64.0;
    /* the gradient of a bf16/f16 tensor is itself stored in bf16/f16: its rounding bounds
     * the agreement */
    c->tol = v == 0 ? 8e-3 : 1e-3;
    snprintf(c->desc, sizeof c->desc, "f32->%s->f32", v == 0 ? "bf16" : "f16");
    return 1;
}

/* ---- a checkpointed span: x -> silu(x · W1ᵀ) * (x · W2ᵀ) with W1, W2 reached through the
 * user pointer (like a block's parameters), replayed in backward ---- */
static qt_tensor *span_mlp(qt_ctx *ctx, qt_tensor **in, void *user) {
    const op_case *c = user;
    qt_tensor *g = qt_matmul(ctx, in[0], c->in[1], false, true);
    qt_tensor *u = qt_matmul(ctx, in[0], c->in[2], false, true);
    return qt_swiglu(ctx, g, u);
}

static qt_tensor *fn_checkpoint(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    /* a differentiable op before the span so the span's input gradient flows on */
    qt_tensor *x = qt_scale(ctx, in[0], 1.5f);
    qt_tensor *y = qt_checkpoint(ctx, span_mlp, 1, &x, (void *)c);
    return qt_mul(ctx, y, y);
}

static int case_checkpoint(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    if (v >= 2) return 0;
    uint64_t s = seed;
    c->n_in = 3;
    int64_t T = v ? 5 : 3, D = 4, F = v ? 7 : 6;
    c->in[0] = tc_uniform_leaf(ctx, &s, 2, TC_SHAPE(T, D), -1, 1, true, "x");
    c->in[1] = tc_uniform_leaf(ctx, &s, 2, TC_SHAPE(F, D), -1, 1, true, "w1");
    /* variant 1: w2 frozen, as a frozen base weight would be */
    c->in[2] = tc_uniform_leaf(ctx, &s, 2, TC_SHAPE(F, D), -1, 1, v == 0, "w2");
    c->check[0] = c->check[1] = true;
    c->check[2] = v == 0;
    c->fn = fn_checkpoint;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, v ? "frozen w2" : "all trainable");
    return 1;
}

#define QT_CASES_BASIC                                                                             \
    {QT_OP_MATMUL, case_matmul}, {QT_OP_ADD, case_add}, {QT_OP_MUL, case_mul},                     \
        {QT_OP_SCALE, case_scale}, {QT_OP_BIAS_ADD, case_bias_add}, {QT_OP_SILU, case_silu},       \
        {QT_OP_SWIGLU, case_swiglu}, {QT_OP_RESHAPE, case_reshape}, {QT_OP_PERMUTE, case_permute}, \
        {QT_OP_CONCAT, case_concat}, {QT_OP_SLICE, case_slice}, {QT_OP_CAST, case_cast},           \
        {QT_OP_CHECKPOINT, case_checkpoint},
