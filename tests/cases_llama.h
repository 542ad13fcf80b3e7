/* cases_llama.h - test cases of embedding, RMSNorm, RoPE and dropout (included by op_cases.h). */
#include "autograd/rope.h"

/* ---- embedding: repeated ids (their rows take several contributions), 1-3-D ids ---- */
static qt_tensor *fn_embedding(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_embedding(ctx, in[0], in[1]);
}

static int case_embedding(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int64_t V, D;
        int nd;
        int64_t ids[3];
    } S[] = {{5, 1, 1, {7}}, {7, 7, 2, {2, 3}}, {11, 33, 2, {2, 5}}, {4, 3, 3, {2, 1, 3}}};
    if (v >= (int)(sizeof S / sizeof S[0])) return 0;
    uint64_t s = seed;
    c->n_in = 2;
    c->in[0] = tc_normal_leaf(ctx, &s, 2, TC_SHAPE(S[v].V, S[v].D), 1.0, true, "W");
    int64_t n = 1;
    for (int i = 0; i < S[v].nd; i++) n *= S[v].ids[i];
    int32_t ids[16];
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(tc_next(&s) % (uint64_t)S[v].V);
    ids[n - 1] = ids[0]; /* at least one repeat */
    c->in[1] = tc_i32_leaf(ctx, S[v].nd, S[v].ids, ids, "ids");
    c->check[0] = true;
    c->fn = fn_embedding;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "V=%lld D=%lld ids %dd", (long long)S[v].V, (long long)S[v].D,
             S[v].nd);
    return 1;
}

/* ---- RMSNorm: D = 1 (x kept away from 0, where x/|x| is steep), 7, 33; 1-3-D x ---- */
static qt_tensor *fn_rmsnorm(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_rmsnorm(ctx, in[0], in[1], c->fp[0]);
}

static int case_rmsnorm(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int nd;
        int64_t sh[3];
        float eps;
        bool frozen_w; /* as a LoRA model's norms: only x's gradient (the GPU's 8-wide path) */
    } S[] = {{2, {5, 1}, 0.1f, false},   {1, {7}, 1e-5f, false},
             {2, {3, 33}, 1e-6f, false}, {3, {2, 3, 7}, 1e-5f, false},
             {2, {6, 64}, 1e-5f, true},  {3, {2, 3, 256}, 1e-6f, true}};
    if (v >= (int)(sizeof S / sizeof S[0])) return 0;
    uint64_t s = seed;
    int nd = S[v].nd;
    int64_t D = S[v].sh[nd - 1];
    c->n_in = 2;
    if (D == 1)
        c->in[0] = tc_uniform_leaf(ctx, &s, nd, S[v].sh, 0.5, 1.5, true, "x");
    else
        c->in[0] = tc_normal_leaf(ctx, &s, nd, S[v].sh, 1.0, true, "x");
    c->in[1] = tc_uniform_leaf(ctx, &s, 1, &D, 0.5, 1.5, !S[v].frozen_w, "w");
    c->check[0] = true;
    c->check[1] = !S[v].frozen_w;
    c->fp[0] = S[v].eps;
    c->fn = fn_rmsnorm;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dd D=%lld eps=%g%s", nd, (long long)D, (double)S[v].eps,
             S[v].frozen_w ? " w frozen" : "");
    return 1;
}

/* ---- RoPE: default and llama3 frequencies, attn_scale != 1, positions that restart per packed
 * document, H = 3, odd T, hd = 2 ---- */
static qt_tensor *fn_rope(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_rope(ctx, in[0], in[1], in[2], c->fp[0]);
}

static int case_rope(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int64_t B, T, H, hd;
        double theta;
        int64_t orig; /* llama3's original_max_position_embeddings; 0 = default frequencies */
        float scale;
        int maxpos;
    } S[] = {
        {1, 3, 1, 4, 10000.0, 0, 1.0f, 6},     {2, 5, 3, 16, 10000.0, 16, 1.3f, 100},
        {1, 7, 2, 2, 500000.0, 0, 0.7f, 3000}, {3, 2, 3, 8, 10000.0, 64, 1.0f, 50},
        {2, 9, 1, 6, 10000.0, 0, 1.0f, 20},    {2, 9, 2, 32, 500000.0, 0, 1.0f, 2000},
    };
    if (v >= (int)(sizeof S / sizeof S[0])) return 0;
    uint64_t s = seed;
    int64_t B = S[v].B, T = S[v].T, hd = S[v].hd;
    c->n_in = 3;
    c->in[0] = tc_normal_leaf(ctx, &s, 4, TC_SHAPE(B, T, S[v].H, hd), 1.0, true, "x");
    int32_t pos[32];
    for (int64_t b = 0; b < B; b++) {
        int32_t p = (int32_t)(tc_next(&s) % (uint64_t)S[v].maxpos);
        for (int64_t t = 0; t < T; t++) {
            /* a new document now and then: positions restart at 0 */
            if (t > 0 && tc_next(&s) % 4 == 0) p = 0;
            pos[b * T + t] = p++;
        }
    }
    c->in[1] = tc_i32_leaf(ctx, 2, TC_SHAPE(B, T), pos, "pos");
    float inv[16];
    qt_rope_scaling sc = {QT_ROPE_LLAMA3, 8.0, 1.0, 4.0, S[v].orig};
    qt_rope_inv_freq(inv, (int)hd, S[v].theta, S[v].orig ? &sc : NULL);
    int64_t h = hd / 2;
    c->in[2] = qt_param_new(ctx, QT_F32, 1, &h, false, "inv_freq");
    qt_tensor_upload(ctx, c->in[2], inv);
    c->check[0] = true;
    c->keep_f32[2] = true;
    c->fp[0] = S[v].scale;
    c->fn = fn_rope;
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "[%lld,%lld,%lld,%lld] %s scale=%g", (long long)B,
             (long long)T, (long long)S[v].H, (long long)hd, S[v].orig ? "llama3" : "default",
             (double)S[v].scale);
    return 1;
}

/* ---- dropout: the mask must be the same in every forward (the harness rewinds the offset)
 * and in backward (regenerated from seed and offset); the last variants run it inside a
 * checkpointed span, whose replay must draw the same masks again ---- */
static qt_tensor *fn_dropout(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    return qt_dropout(ctx, in[0], c->fp[0]);
}

static qt_tensor *span_dropout(qt_ctx *ctx, qt_tensor **in, void *user) {
    const op_case *c = user;
    /* two calls: the second takes the next offset of the stream */
    qt_tensor *a = qt_dropout(ctx, in[0], c->fp[0]);
    qt_tensor *b = qt_dropout(ctx, in[0], c->fp[0]);
    return qt_mul(ctx, a, b);
}

static qt_tensor *fn_dropout_ckpt(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    qt_tensor *x = qt_scale(ctx, in[0], 1.5f);
    return qt_checkpoint(ctx, span_dropout, 1, &x, (void *)c);
}

static int case_dropout(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const struct {
        int nd;
        int64_t sh[3];
        float p;
        int ckpt;
    } S[] = {{1, {7}, 0.1f, 0},      {2, {3, 33}, 0.5f, 0}, {3, {2, 3, 5}, 0.5f, 0},
             {2, {4, 100}, 0.1f, 0}, {2, {3, 5}, 0.0f, 0},  {2, {5, 7}, 0.5f, 1},
             {1, {9}, 0.1f, 1}};
    if (v >= (int)(sizeof S / sizeof S[0])) return 0;
    uint64_t s = seed;
    c->n_in = 1;
    c->in[0] = tc_uniform_leaf(ctx, &s, S[v].nd, S[v].sh, -1, 1, true, "x");
    c->check[0] = true;
    c->fp[0] = S[v].p;
    c->fn = S[v].ckpt ? fn_dropout_ckpt : fn_dropout;
    /* a stream position that is not 0, with a high word, to exercise the counter layout */
    ctx->rng_offset = (tc_next(&s) & 0xffff) | (v % 2 ? (uint64_t)3 << 32 : 0);
    c->tol = 2e-3;
    snprintf(c->desc, sizeof c->desc, "%dd p=%g%s", S[v].nd, (double)S[v].p,
             S[v].ckpt ? " in checkpoint" : "");
    return 1;
}

#define QT_CASES_LLAMA                                                                             \
    {QT_OP_EMBEDDING, case_embedding}, {QT_OP_RMSNORM, case_rmsnorm}, {QT_OP_ROPE, case_rope},     \
        {QT_OP_DROPOUT, case_dropout},
