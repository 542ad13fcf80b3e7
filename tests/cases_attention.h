/* cases_attention.h - test cases of attention, softmax and cross-entropy (op_cases.h).
 * Attention: odd sizes, T = 1, GQA ratios 1, 2 and 3 (with one kv head), packed documents,
 * padding on either side, and a scale other than 1/sqrt(hd). Documents are contiguous runs of
 * one id, as sample packing makes them. */

/* ---- attention ---- */
static qt_tensor *fn_attention(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_attention(ctx, in[0], in[1], in[2], c->n_in > 3 ? in[3] : NULL, c->fp[0]);
}

/* doc patterns per batch row (T <= 8); -1 marks padding */
enum { DOC_NONE, DOC_TWO, DOC_PAD };
static const int32_t att_docs[][2][8] = {
    [DOC_TWO] = {{0, 0, 0, 1, 1, 1, 1, 1}, {4, 4, 9, 9, 9, 9, 9, 9}},
    [DOC_PAD] = {{0, 0, 0, 1, 1, -1, -1, -1}, {-1, -1, 2, 2, 2, 3, 3, 3}},
};

static int case_attention(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int64_t B, T, Hq, Hkv, hd;
        int doc;
        float scale; /* 0: 1/sqrt(hd) */
    } V[] = {
        {1, 1, 1, 1, 3, DOC_NONE, 0},   /* T = 1 */
        {2, 5, 2, 2, 3, DOC_NONE, 0},   /* Hq = Hkv, odd T and hd */
        {1, 6, 4, 2, 4, DOC_NONE, 0},   /* Hq = 2 Hkv */
        {2, 5, 3, 1, 5, DOC_TWO, 0},    /* Hq = 3 Hkv, Hkv = 1, two packed documents */
        {2, 7, 2, 1, 3, DOC_PAD, 0},    /* documents and padding, right and left */
        {1, 4, 2, 2, 2, DOC_TWO, 1.3f}, /* a scale that is not 1/sqrt(hd) */
        {2, 8, 6, 2, 2, DOC_PAD, 0.4f}, /* Hq = 3 Hkv, padding, small scale */
    };
    if (v >= (int)(sizeof V / sizeof V[0])) return 0;
    uint64_t s = seed;
    int64_t B = V[v].B, T = V[v].T, hd = V[v].hd;
    c->n_in = 3;
    c->in[0] = tc_uniform_leaf(ctx, &s, 4, TC_SHAPE(B, T, V[v].Hq, hd), -1.5, 1.5, true, "q");
    c->in[1] = tc_uniform_leaf(ctx, &s, 4, TC_SHAPE(B, T, V[v].Hkv, hd), -1.5, 1.5, true, "k");
    c->in[2] = tc_uniform_leaf(ctx, &s, 4, TC_SHAPE(B, T, V[v].Hkv, hd), -1, 1, true, "v");
    c->check[0] = c->check[1] = c->check[2] = true;
    if (V[v].doc != DOC_NONE) {
        int32_t d[2 * 8];
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++) d[b * T + t] = att_docs[V[v].doc][b][t];
        c->in[3] = tc_i32_leaf(ctx, 2, TC_SHAPE(B, T), d, "doc");
        c->n_in = 4;
    }
    c->fp[0] = V[v].scale != 0 ? V[v].scale : (float)(1.0 / sqrt((double)hd));
    c->fn = fn_attention;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "B%lld T%lld Hq%lld Hkv%lld hd%lld %s scale %.3g",
             (long long)B, (long long)T, (long long)V[v].Hq, (long long)V[v].Hkv, (long long)hd,
             V[v].doc == DOC_NONE  ? "nodoc"
             : V[v].doc == DOC_TWO ? "2docs"
                                   : "pad",
             (double)c->fp[0]);
    return 1;
}

/* ---- softmax ---- */
static qt_tensor *fn_softmax(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_softmax(ctx, in[0]);
}

static int case_softmax(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const int64_t S[][3] = {{1, 1, 7}, {1, 3, 5}, {2, 3, 4}, {1, 4, 1}};
    static const int nd[] = {1, 2, 3, 2};
    if (v >= 4) return 0;
    uint64_t s = seed;
    c->n_in = 1;
    c->in[0] = tc_uniform_leaf(ctx, &s, nd[v], S[v] + (3 - nd[v]), -3, 3, true, "x");
    c->check[0] = true;
    c->fn = fn_softmax;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dd last %lld", nd[v], (long long)S[v][2]);
    return 1;
}

/* ---- cross-entropy ---- */
static qt_tensor *fn_cross_entropy(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_cross_entropy(ctx, in[0], in[1], c->fp[0]);
}

static int case_cross_entropy(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int64_t N, Vc;
        int ignore_mod; /* rows with i % mod == 1 are ignored (0: none, 1: all) */
        float denom;
    } V[] = {
        {4, 5, 0, 0},     /* plain mean */
        {7, 3, 3, 0},     /* ignored rows, mean over the rest */
        {5, 11, 2, 9.5f}, /* ignored rows and an explicit denominator */
        {3, 4, 1, 0},     /* all ignored: 0, zero gradient */
        {1, 2, 0, 0},
    };
    if (v >= (int)(sizeof V / sizeof V[0])) return 0;
    uint64_t s = seed;
    int64_t N = V[v].N, Vc = V[v].Vc;
    int32_t t[16];
    for (int64_t i = 0; i < N; i++) {
        bool ign = V[v].ignore_mod == 1 || (V[v].ignore_mod > 1 && i % V[v].ignore_mod == 1);
        t[i] = ign ? QT_IGNORE_INDEX : (int32_t)(tc_next(&s) % (uint64_t)Vc);
    }
    c->n_in = 2;
    c->in[0] = tc_normal_leaf(ctx, &s, 2, TC_SHAPE(N, Vc), 2.0, true, "logits");
    c->in[1] = tc_i32_leaf(ctx, 1, TC_SHAPE(N), t, "targets");
    c->check[0] = true;
    c->fp[0] = V[v].denom;
    c->fn = fn_cross_entropy;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "N%lld V%lld ignore%%%d denom %g", (long long)N,
             (long long)Vc, V[v].ignore_mod, (double)V[v].denom);
    return 1;
}

/* ---- lm_head + cross-entropy in vocabulary chunks ---- */
static qt_tensor *fn_linear_ce(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_linear_cross_entropy(ctx, in[0], in[1], in[2], c->fp[0], c->ip[0]);
}

static int case_linear_ce(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int64_t N, D, V, chunk;
        int ignore_mod; /* as case_cross_entropy's */
        float denom;
        bool frozen_w; /* W without a gradient: on the GPU, dh made in the forward by rows */
    } S[] = {
        {4, 6, 11, 4, 0, 0, false},     /* three chunks, the last one short */
        {7, 5, 9, 0, 3, 0, false},      /* the automatic chunk (one), ignored rows */
        {5, 8, 13, 13, 2, 9.5f, false}, /* one exact chunk, explicit denominator */
        {3, 4, 7, 2, 1, 0, false},      /* all ignored: 0, zero gradients */
        {6, 3, 300, 64, 0, 0, false},   /* many chunks */
        {7, 5, 9, 0, 3, 0, true},       /* frozen W: one row block, ignored rows */
        {9, 4, 10, 2, 0, 7.0f, true},   /* frozen W: row blocks of 7 and 2, explicit divisor */
        {3, 4, 7, 2, 1, 0, true},       /* frozen W, all ignored */
    };
    if (v >= (int)(sizeof S / sizeof S[0])) return 0;
    uint64_t s = seed;
    int64_t N = S[v].N, D = S[v].D, V = S[v].V;
    int32_t t[16];
    for (int64_t i = 0; i < N; i++) {
        bool ign = S[v].ignore_mod == 1 || (S[v].ignore_mod > 1 && i % S[v].ignore_mod == 1);
        t[i] = ign ? QT_IGNORE_INDEX : (int32_t)(tc_next(&s) % (uint64_t)V);
    }
    c->n_in = 3;
    c->in[0] = tc_normal_leaf(ctx, &s, 2, TC_SHAPE(N, D), 1.0, true, "h");
    c->in[1] = tc_normal_leaf(ctx, &s, 2, TC_SHAPE(V, D), 0.7, !S[v].frozen_w, "W");
    c->in[2] = tc_i32_leaf(ctx, 1, TC_SHAPE(N), t, "targets");
    c->check[0] = true;
    c->check[1] = !S[v].frozen_w;
    c->fp[0] = S[v].denom;
    c->ip[0] = S[v].chunk;
    c->fn = fn_linear_ce;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "N%lld D%lld V%lld chunk %lld ignore%%%d denom %g%s",
             (long long)N, (long long)D, (long long)V, (long long)S[v].chunk, S[v].ignore_mod,
             (double)S[v].denom, S[v].frozen_w ? " frozen W" : "");
    return 1;
}

/* ---- LoRA's fused up-projection ---- */
static qt_tensor *fn_lora_add(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    /* a copy of the leaf: lora_add takes its y's buffer over and writes into it */
    qt_tensor *y = in[0] ? qt_cast(ctx, in[0], in[0]->dtype) : NULL;
    return qt_lora_add(ctx, y, in[1], in[2], c->fp[0]);
}

static int case_lora_add(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    /* the last three of the first six at the LoRA shapes' scale: wider outputs, more rows, r up
     * to 40; the last two without y (scale · u · Bᵀ alone) */
    static const int64_t S[][4] = {{1, 5, 6, 2},     {2, 3, 7, 4},    {1, 9, 4, 1},
                                   {2, 35, 264, 16}, {1, 67, 64, 32}, {1, 6, 16, 40},
                                   {2, 3, 7, 4},     {1, 35, 264, 16}};
    static const float scale[] = {2.0f, 0.5f, -1.25f, 2.0f, 0.25f, 1.5f, 0.5f, 2.0f};
    if (v >= 8) return 0;
    bool no_y = v >= 6;
    uint64_t s = seed;
    int64_t b = S[v][0], t = S[v][1], out = S[v][2], r = S[v][3];
    c->n_in = 3;
    c->in[0] = no_y ? NULL : tc_normal_leaf(ctx, &s, 3, TC_SHAPE(b, t, out), 1.0, true, "y");
    c->in[1] = tc_normal_leaf(ctx, &s, 3, TC_SHAPE(b, t, r), 1.0, true, "u");
    c->in[2] = tc_normal_leaf(ctx, &s, 2, TC_SHAPE(out, r), 1.0, true, "B");
    c->check[0] = !no_y;
    c->check[1] = c->check[2] = true;
    c->fp[0] = scale[v];
    c->fn = fn_lora_add;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "[%lld, %lld, %lld] r %lld scale %g%s", (long long)b,
             (long long)t, (long long)out, (long long)r, (double)scale[v], no_y ? " no y" : "");
    return 1;
}

#define QT_CASES_ATTENTION                                                                         \
    {QT_OP_ATTENTION, case_attention}, {QT_OP_SOFTMAX, case_softmax},                              \
        {QT_OP_CROSS_ENTROPY, case_cross_entropy}, {QT_OP_LINEAR_CE, case_linear_ce},              \
        {QT_OP_LORA_ADD, case_lora_add},
