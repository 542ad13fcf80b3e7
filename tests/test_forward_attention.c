/* test_forward_attention.c - forward values of attention, softmax and cross-entropy against
 * hand-computed ones: literal numbers where they can be written down, the written-out formula
 * in double otherwise; packed documents that cannot see each other, padding rows that output
 * zeros and get zero gradients, grouped-query heads equal to duplicated kv heads, ignored
 * targets, an explicit denominator, the all-ignored batch, and a bad target refused by name. */
#define _POSIX_C_SOURCE 200809L /* fork, pipe, dup2 for the bad-target check */

#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "op_cases.h"
#include "qt_test.h"

static qt_tensor *from_host(qt_ctx *ctx, int ndim, const int64_t *shape, const float *vals, bool rg,
                            const char *name) {
    qt_tensor *t = qt_param_new(ctx, QT_F32, ndim, shape, rg, name);
    qt_tensor_upload(ctx, t, vals);
    return t;
}

static qt_tensor *rand_leaf(qt_ctx *ctx, uint64_t *s, int64_t B, int64_t T, int64_t H, int64_t hd,
                            const char *name) {
    return tc_uniform_leaf(ctx, s, 4, TC_SHAPE(B, T, H, hd), -1.5, 1.5, true, name);
}

/* the lse the last attention node saved (grad enabled, an input requiring grad) */
static const float *last_saved(qt_ctx *ctx, int k) {
    QT_CHECK(ctx->tape_len > 0, "nothing recorded");
    return qt_f32(ctx->tape[ctx->tape_len - 1].saved[k]);
}

static double max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* ---- attention ------------------------------------------------------------------------ */

/* Chosen so the weights are simple: k = [1,0], [0,1], [1,1], scale 1.
 * row 0: only key 0 -> o = v0.  row 1: scores (0, ln 3) -> weights 1/4, 3/4.
 * row 2: scores (ln 2, 0, ln 2) -> weights 2/5, 1/5, 2/5. Row 1's score with the future key 2
 * would be ln 3 too: seeing it would change the result. */
static void test_attention_literal(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    const double l2 = log(2.0), l3 = log(3.0);
    float q[] = {0.5f, 0, 0, (float)l3, (float)l2, 0};
    float k[] = {1, 0, 0, 1, 1, 1};
    float v[] = {1, 2, 3, 4, 5, 6};
    const int64_t *sh = TC_SHAPE(1, 3, 1, 2);
    qt_tensor *Q = from_host(&ctx, 4, sh, q, true, "q"), *K = from_host(&ctx, 4, sh, k, true, "k");
    qt_tensor *V = from_host(&ctx, 4, sh, v, true, "v");
    qt_tensor *o = qt_attention(&ctx, Q, K, V, NULL, 1.0f);
    const float want[] = {1, 2, 2.5f, 3.5f, 3, 4};
    for (int i = 0; i < 6; i++) {
        char what[32];
        snprintf(what, sizeof what, "literal o[%d]", i);
        QT_EXPECT_CLOSE(qt_f32(o)[i], want[i], 1e-6, 1e-6, what);
    }
    const float *lse = last_saved(&ctx, 0); /* [B, H, T] */
    QT_EXPECT_CLOSE(lse[0], 0.5, 1e-6, 1e-6, "lse row 0 = its one score");
    QT_EXPECT_CLOSE(lse[1], log(4.0), 1e-6, 1e-6, "lse row 1 = ln(1 + 3)");
    QT_EXPECT_CLOSE(lse[2], log(5.0), 1e-6, 1e-6, "lse row 2 = ln(2 + 1 + 2)");
    qt_ctx_free(&ctx);
}

/* T = 3, one head, hd = 2, scale 0.7: the softmax weights written out row by row */
static void test_attention_formula(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    float q[] = {0.3f, -1.2f, 1.1f, 0.4f, -0.7f, 0.9f};
    float k[] = {0.8f, 0.1f, -0.5f, 1.3f, 0.2f, -0.9f};
    float v[] = {1.5f, -0.5f, 0.25f, 2.0f, -1.0f, 0.75f};
    const double sc = 0.7;
    const int64_t *sh = TC_SHAPE(1, 3, 1, 2);
    qt_tensor *o = qt_attention(&ctx, from_host(&ctx, 4, sh, q, false, "q"),
                                from_host(&ctx, 4, sh, k, false, "k"),
                                from_host(&ctx, 4, sh, v, false, "v"), NULL, (float)sc);
#define S(i, j) (sc * ((double)q[2 * (i)] * k[2 * (j)] + (double)q[2 * (i) + 1] * k[2 * (j) + 1]))
    double e10 = exp(S(1, 0)), e11 = exp(S(1, 1));
    double e20 = exp(S(2, 0)), e21 = exp(S(2, 1)), e22 = exp(S(2, 2));
#undef S
    double w[3][3] = {{1, 0, 0},
                      {e10 / (e10 + e11), e11 / (e10 + e11), 0},
                      {e20 / (e20 + e21 + e22), e21 / (e20 + e21 + e22), e22 / (e20 + e21 + e22)}};
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < 2; d++) {
            double want = w[i][0] * v[d] + w[i][1] * v[2 + d] + w[i][2] * v[4 + d];
            char what[32];
            snprintf(what, sizeof what, "formula o[%d][%d]", i, d);
            QT_EXPECT_CLOSE(qt_f32(o)[i * 2 + d], want, 1e-6, 1e-5, what);
        }
    qt_ctx_free(&ctx);
}

/* Copies positions [t0, t0 + n) of batch row b of x [B, T, H, hd] into a new [1, n, H, hd] leaf. */
static qt_tensor *take(qt_ctx *ctx, const qt_tensor *x, int64_t b, int64_t t0, int64_t n,
                       const char *name) {
    int64_t T = x->shape[1], row = x->shape[2] * x->shape[3];
    return from_host(ctx, 4, TC_SHAPE(1, n, x->shape[2], x->shape[3]),
                     qt_f32(x) + (b * T + t0) * row, true, name);
}

/* Rows [t0, t0 + n) of batch b of the full output equal attention over that span alone. */
static void expect_span(qt_ctx *ctx, const qt_tensor *o, qt_tensor *q, qt_tensor *k, qt_tensor *v,
                        int64_t b, int64_t t0, int64_t n, float scale, const char *what) {
    qt_tensor *os = qt_attention(ctx, take(ctx, q, b, t0, n, "qs"), take(ctx, k, b, t0, n, "ks"),
                                 take(ctx, v, b, t0, n, "vs"), NULL, scale);
    int64_t row = o->shape[2] * o->shape[3];
    double d = max_abs_diff(qt_f32(o) + (b * o->shape[1] + t0) * row, qt_f32(os), n * row);
    QT_EXPECT(d <= 1e-6, "%s: differs from the span computed alone by %g", what, d);
}

static void test_packed_documents(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    uint64_t s = 11;
    int64_t B = 1, T = 6, Hq = 2, Hkv = 1, hd = 3;
    qt_tensor *q = rand_leaf(&ctx, &s, B, T, Hq, hd, "q"),
              *k = rand_leaf(&ctx, &s, B, T, Hkv, hd, "k");
    qt_tensor *v = rand_leaf(&ctx, &s, B, T, Hkv, hd, "v");
    int32_t d[] = {0, 0, 0, 1, 1, 1};
    qt_tensor *doc = tc_i32_leaf(&ctx, 2, TC_SHAPE(B, T), d, "doc");
    float sc = 0.6f;
    qt_tensor *o = qt_attention(&ctx, q, k, v, doc, sc);
    expect_span(&ctx, o, q, k, v, 0, 0, 3, sc, "document 0");
    expect_span(&ctx, o, q, k, v, 0, 3, 3, sc, "document 1 (cannot see document 0)");
    /* and without the mask the second document's rows do change */
    qt_tensor *o_all = qt_attention(&ctx, q, k, v, NULL, sc);
    double dd = max_abs_diff(qt_f32(o) + 3 * Hq * hd, qt_f32(o_all) + 3 * Hq * hd, 3 * Hq * hd);
    QT_EXPECT(dd > 1e-3, "the mask matters: unmasked rows of document 1 differ by %g", dd);
    qt_ctx_free(&ctx);
}

static void test_padding(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    uint64_t s = 23;
    int64_t B = 2, T = 5, H = 2, hd = 3, row = H * hd;
    qt_tensor *q = rand_leaf(&ctx, &s, B, T, H, hd, "q"),
              *k = rand_leaf(&ctx, &s, B, T, H, hd, "k");
    qt_tensor *v = rand_leaf(&ctx, &s, B, T, H, hd, "v");
    /* right padding in row 0, left padding in row 1 */
    int32_t d[] = {0, 0, 0, -1, -1, -1, -1, 1, 1, 1};
    qt_tensor *doc = tc_i32_leaf(&ctx, 2, TC_SHAPE(B, T), d, "doc");
    float sc = (float)(1.0 / sqrt(3.0));
    qt_tensor *o = qt_attention(&ctx, q, k, v, doc, sc);
    int zeros = 1;
    for (int64_t bt = 0; bt < B * T; bt++)
        if (d[bt] < 0)
            for (int64_t e = 0; e < row; e++) zeros &= qt_f32(o)[bt * row + e] == 0.0f;
    QT_EXPECT(zeros, "padding rows output exactly zero");
    const float *lse = last_saved(&ctx, 0); /* [B, H, T] */
    QT_EXPECT(isinf(lse[3]) && lse[3] < 0 && isinf(lse[(1 * H + 1) * T + 0]),
              "padding rows save lse = -inf");
    expect_span(&ctx, o, q, k, v, 0, 0, 3, sc, "row 0 before its padding");
    expect_span(&ctx, o, q, k, v, 1, 2, 3, sc, "row 1 after its padding");

    /* a gradient arriving at padding rows goes nowhere; padding keys get none */
    qt_step_reset(&ctx);
    o = qt_attention(&ctx, q, k, v, doc, sc);
    qt_tensor *go = tc_uniform_leaf(&ctx, &s, 4, TC_SHAPE(B, T, H, hd), -1, 1, false, "go");
    qt_backward_from(&ctx, o, go);
    int zq = 1, zkv = 1, nonzero = 0;
    for (int64_t bt = 0; bt < B * T; bt++)
        for (int64_t e = 0; e < row; e++) {
            float gq = qt_f32(q->grad)[bt * row + e], gk = qt_f32(k->grad)[bt * row + e];
            float gv = qt_f32(v->grad)[bt * row + e];
            if (d[bt] < 0) {
                zq &= gq == 0.0f;
                zkv &= gk == 0.0f && gv == 0.0f;
            } else {
                nonzero += gq != 0.0f && gv != 0.0f;
            }
        }
    QT_EXPECT(zq, "padding queries get zero gradient");
    QT_EXPECT(zkv, "padding keys and values get zero gradient");
    QT_EXPECT(nonzero > 0, "real positions do get gradients");
    qt_ctx_free(&ctx);
}

/* Hq = 4 over Hkv = 2 equals Hkv = 4 with each kv head duplicated (query head h reads kv head
 * h / 2); the shared heads' gradients are the sums over the duplicates. */
static void test_gqa(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    uint64_t s = 37;
    int64_t B = 2, T = 5, Hq = 4, Hkv = 2, hd = 3, n2 = B * T * Hkv * hd, n4 = 2 * n2;
    qt_tensor *q = rand_leaf(&ctx, &s, B, T, Hq, hd, "q");
    qt_tensor *k = rand_leaf(&ctx, &s, B, T, Hkv, hd, "k"),
              *v = rand_leaf(&ctx, &s, B, T, Hkv, hd, "v");
    float *k4h = malloc((size_t)n4 * sizeof *k4h), *v4h = malloc((size_t)n4 * sizeof *v4h);
    for (int64_t bt = 0; bt < B * T; bt++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t e = 0; e < hd; e++) {
                k4h[(bt * Hq + h) * hd + e] = qt_f32(k)[(bt * Hkv + h / 2) * hd + e];
                v4h[(bt * Hq + h) * hd + e] = qt_f32(v)[(bt * Hkv + h / 2) * hd + e];
            }
    qt_tensor *k4 = from_host(&ctx, 4, TC_SHAPE(B, T, Hq, hd), k4h, true, "k4");
    qt_tensor *v4 = from_host(&ctx, 4, TC_SHAPE(B, T, Hq, hd), v4h, true, "v4");
    qt_tensor *q4 = from_host(&ctx, 4, q->shape, qt_f32(q), true, "q4");
    float sc = 0.5f;
    qt_tensor *o2 = qt_attention(&ctx, q, k, v, NULL, sc);
    qt_tensor *o4 = qt_attention(&ctx, q4, k4, v4, NULL, sc);
    int64_t no = qt_numel(o2);
    QT_EXPECT(max_abs_diff(qt_f32(o2), qt_f32(o4), no) <= 1e-6,
              "GQA output equals duplicated kv heads");
    qt_tensor *go = tc_uniform_leaf(&ctx, &s, 4, o2->shape, -1, 1, false, "go");
    qt_backward_from(&ctx, o2, go);
    qt_tensor *go4 = from_host(&ctx, 4, o2->shape, qt_f32(go), false, "go4");
    qt_step_reset(&ctx);
    o4 = qt_attention(&ctx, q4, k4, v4, NULL, sc);
    qt_backward_from(&ctx, o4, go4);
    QT_EXPECT(max_abs_diff(qt_f32(q->grad), qt_f32(q4->grad), no) <= 1e-6,
              "GQA query gradient equals the duplicated one");
    double dk = 0, dv = 0;
    for (int64_t bt = 0; bt < B * T; bt++)
        for (int64_t g = 0; g < Hkv; g++)
            for (int64_t e = 0; e < hd; e++) {
                int64_t a = (bt * Hq + 2 * g) * hd + e, b = a + hd;
                double sk = (double)qt_f32(k4->grad)[a] + qt_f32(k4->grad)[b];
                double sv = (double)qt_f32(v4->grad)[a] + qt_f32(v4->grad)[b];
                dk = fmax(dk, fabs(qt_f32(k->grad)[(bt * Hkv + g) * hd + e] - sk));
                dv = fmax(dv, fabs(qt_f32(v->grad)[(bt * Hkv + g) * hd + e] - sv));
            }
    QT_EXPECT(dk <= 1e-5 && dv <= 1e-5,
              "GQA kv gradients are the sums over duplicates (dk %g, dv %g)", dk, dv);
    free(k4h);
    free(v4h);
    qt_ctx_free(&ctx);
}

/* ---- cross-entropy --------------------------------------------------------------------- */

/* logits [[0, 0], [ln 3, 0]]: row 0's loss with target 0 is ln 2, row 1's with target 1 is
 * ln 4 - 0 = ln 4 (softmax [3/4, 1/4]). Runs loss and backward from 1; returns the loss. */
static float ce_run(qt_ctx *ctx, const int32_t *targets, float denom, float *grad) {
    qt_step_reset(ctx);
    float x[] = {0, 0, (float)log(3.0), 0};
    qt_tensor *lg = from_host(ctx, 2, TC_SHAPE(2, 2), x, true, "logits");
    qt_tensor *t = tc_i32_leaf(ctx, 1, TC_SHAPE(2), targets, "targets");
    qt_tensor *loss = qt_cross_entropy(ctx, lg, t, denom);
    qt_backward(ctx, loss);
    QT_EXPECT(lg->grad && lg->grad_valid, "logits get a gradient");
    if (lg->grad) memcpy(grad, qt_f32(lg->grad), 4 * sizeof *grad);
    return qt_f32(loss)[0];
}

static void expect_grad(const float *g, const float *want, const char *what) {
    for (int i = 0; i < 4; i++) {
        char w[64];
        snprintf(w, sizeof w, "%s grad[%d]", what, i);
        QT_EXPECT_CLOSE(g[i], want[i], 1e-6, 1e-6, w);
    }
}

static void test_cross_entropy(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    const double l2 = log(2.0), l4 = log(4.0);
    float g[4];

    float L = ce_run(&ctx, (const int32_t[]){0, QT_IGNORE_INDEX}, 0, g);
    QT_EXPECT_CLOSE(L, l2, 1e-6, 1e-6, "one ignored token: mean over the other = ln 2");
    expect_grad(g, (const float[]){-0.5f, 0.5f, 0, 0}, "one ignored");

    L = ce_run(&ctx, (const int32_t[]){0, QT_IGNORE_INDEX}, 4.0f, g);
    QT_EXPECT_CLOSE(L, l2 / 4, 1e-6, 1e-6, "denom 4: ln 2 / 4");
    expect_grad(g, (const float[]){-0.125f, 0.125f, 0, 0}, "denom 4");

    L = ce_run(&ctx, (const int32_t[]){0, 1}, 0, g);
    QT_EXPECT_CLOSE(L, (l2 + l4) / 2, 1e-6, 1e-6, "no ignored token: (ln 2 + ln 4) / 2");
    expect_grad(g, (const float[]){-0.25f, 0.25f, 0.375f, -0.375f}, "none ignored");

    for (int dn = 0; dn < 2; dn++) {
        L = ce_run(&ctx, (const int32_t[]){QT_IGNORE_INDEX, QT_IGNORE_INDEX}, dn ? 8.0f : 0, g);
        QT_EXPECT(L == 0.0f, "all ignored (denom %d): loss is 0, got %g", dn ? 8 : 0, (double)L);
        expect_grad(g, (const float[]){0, 0, 0, 0}, "all ignored");
    }
    qt_ctx_free(&ctx);
}

/* A target outside [0, V) that is not the ignore index is a programming error: the check
 * aborts and names it. Run in a child, before this process has started any OpenMP threads. */
static void test_cross_entropy_bad_target(void) {
    int fd[2];
    QT_CHECK(pipe(fd) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    QT_CHECK(pid >= 0, "fork");
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        qt_ctx ctx;
        qt_ctx_init(&ctx, QT_CPU, 1, NULL);
        float x[] = {0, 0, 0, 0};
        qt_tensor *lg = from_host(&ctx, 2, TC_SHAPE(2, 2), x, false, "logits");
        qt_tensor *t = tc_i32_leaf(&ctx, 1, TC_SHAPE(2), (const int32_t[]){0, 2}, "targets");
        qt_cross_entropy(&ctx, lg, t, 0);
        _exit(0); /* not reached when the check works */
    }
    close(fd[1]);
    char msg[2048];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof msg - 1 && (r = read(fd[0], msg + len, sizeof msg - 1 - len)) > 0)
        len += (size_t)r;
    msg[len] = 0;
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    QT_EXPECT(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "a bad target aborts (status %d)", st);
    QT_EXPECT(strstr(msg, "target 2 at row 1") != NULL, "the message names the target: '%s'", msg);
}

/* ---- softmax --------------------------------------------------------------------------- */

static void test_softmax(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    /* rows: (0, ln 3) -> (1/4, 3/4); (-5, -5) -> halves; (1000, 999) must not overflow:
     * (1, e^-1) / (1 + e^-1) */
    float x[] = {0, (float)log(3.0), -5, -5, 1000, 999};
    qt_tensor *X = from_host(&ctx, 2, TC_SHAPE(3, 2), x, true, "x");
    qt_tensor *y = qt_softmax(&ctx, X);
    const double want[] = {0.25, 0.75, 0.5, 0.5, 0.7310585786300049, 0.2689414213699951};
    for (int i = 0; i < 6; i++) {
        char what[32];
        snprintf(what, sizeof what, "softmax y[%d]", i);
        QT_EXPECT_CLOSE(qt_f32(y)[i], want[i], 1e-7, 1e-6, what);
    }
    /* gy = (1, 0) on row 0: gx = y * (gy - 1/4) = (3/16, -3/16) */
    float gy[] = {1, 0, 0, 0, 0, 0};
    qt_backward_from(&ctx, y, from_host(&ctx, 2, TC_SHAPE(3, 2), gy, false, "gy"));
    QT_EXPECT_CLOSE(qt_f32(X->grad)[0], 0.1875, 1e-7, 1e-6, "softmax gx[0]");
    QT_EXPECT_CLOSE(qt_f32(X->grad)[1], -0.1875, 1e-7, 1e-6, "softmax gx[1]");

    /* a 4-wide row: e^k / Σ e^k for k = 1..4 */
    float x4[] = {1, 2, 3, 4};
    qt_tensor *y4 = qt_softmax(&ctx, from_host(&ctx, 1, TC_SHAPE(4), x4, false, "x4"));
    const double w4[] = {0.03205860328008499, 0.08714431874203257, 0.23688281808991013,
                         0.6439142598879722};
    for (int i = 0; i < 4; i++) QT_EXPECT_CLOSE(qt_f32(y4)[i], w4[i], 1e-7, 1e-6, "softmax 1..4");
    qt_ctx_free(&ctx);
}

int main(void) {
    test_cross_entropy_bad_target(); /* first: it forks */
    test_attention_literal();
    test_attention_formula();
    test_packed_documents();
    test_padding();
    test_gqa();
    test_cross_entropy();
    test_softmax();
    return qt_test_finish("forward_attention");
}
