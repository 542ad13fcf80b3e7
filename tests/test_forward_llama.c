/* test_forward_llama.c - forward values of the Llama ops against numbers derived by hand or from
 * the formulas in double precision: RoPE rotations (position 0 is the identity), the default and
 * llama3 frequency tables, RMSNorm, embedding lookup (and its scatter-add backward, and the
 * out-of-range id check), the Philox4x32-10 known-answer vectors of Random123, and the dropout
 * mask: its definition, its statistics, and its reproducibility from (seed, offset). */
#define _POSIX_C_SOURCE 200809L /* fork, pipe, dup2: the out-of-range id check aborts */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <omp.h>

#include "autograd/philox.h"
#include "op_cases.h"
#include "qt_test.h"

static qt_tensor *f32_leaf(qt_ctx *ctx, int nd, const int64_t *sh, const float *v, bool rg,
                           const char *name) {
    qt_tensor *t = qt_param_new(ctx, QT_F32, nd, sh, rg, name);
    qt_tensor_upload(ctx, t, v);
    return t;
}

/* ---- RoPE ------------------------------------------------------------------------------- */

static void test_rope_values(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    /* hd = 4, theta = 10000: inv_freq = {10000^0, 10000^-0.5} = {1, 0.01}; x = {1, 2, 3, 4} at
     * positions 0, 1 and 5. Pairs (x0, x2) and (x1, x3) turn by pos*1 and pos*0.01 radians:
     *   pos 1: (1cos1 - 3sin1, 3cos1 + sin1) = (-1.98411065, 2.4623779)
     *          (2cos.01 - 4sin.01, 4cos.01 + 2sin.01) = (1.95990067, 4.01979967)
     *   pos 5: (cos5 - 3sin5, 3cos5 + sin5) = (3.16043501, -0.107937718)
     *          (2cos.05 - 4sin.05, 4cos.05 + 2sin.05) = (1.79758384, 4.09495938) */
    float inv[2];
    qt_rope_inv_freq(inv, 4, 10000.0, NULL);
    QT_EXPECT(inv[0] == 1.0f && inv[1] == 0.01f, "inv_freq(10000, 4) = {1, 0.01}, got {%.9g, %.9g}",
              inv[0], inv[1]);
    float xv[12] = {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4};
    qt_tensor *x = f32_leaf(&ctx, 4, TC_SHAPE(1, 3, 1, 4), xv, true, "x");
    int32_t pv[3] = {0, 1, 5};
    qt_tensor *pos = tc_i32_leaf(&ctx, 2, TC_SHAPE(1, 3), pv, "pos");
    qt_tensor *fr = f32_leaf(&ctx, 1, TC_SHAPE(2), inv, false, "inv_freq");
    const float want[12] = {
        1,          2,           3,           4,           -1.98411065f,  1.95990067f,
        2.4623779f, 4.01979967f, 3.16043501f, 1.79758384f, -0.107937718f, 4.09495938f};
    for (int sc = 0; sc < 2; sc++) {
        float scale = sc ? 2.5f : 1.0f;
        qt_tensor *y = qt_rope(&ctx, x, pos, fr, scale);
        const float *yv = qt_f32(y);
        for (int i = 0; i < 4; i++)
            QT_EXPECT(yv[i] == xv[i] * scale, "rope: position 0 is the identity (times scale)");
        for (int i = 4; i < 12; i++) {
            char what[64];
            snprintf(what, sizeof what, "rope scale %g element %d", (double)scale, i);
            QT_EXPECT_CLOSE(yv[i], want[i] * scale, 1e-6, 1e-6, what);
        }
        if (sc == 0) {
            /* backward is the transposed rotation: feeding y back as the gradient returns x */
            qt_backward_from(&ctx, y, y);
            const float *g = qt_f32(x->grad);
            for (int i = 0; i < 12; i++) QT_EXPECT_CLOSE(g[i], xv[i], 1e-6, 1e-6, "rope: R^T R x");
        }
    }
    qt_ctx_free(&ctx);
}

/* the same formulas as transformers' modeling_rope_utils.py, in double */
static void ref_inv_freq(double *out, int hd, double theta, const qt_rope_scaling *sc) {
    for (int k = 0; k < hd / 2; k++) {
        double inv = 1.0 / pow(theta, (double)(2 * k) / hd);
        if (sc) {
            double old = (double)sc->original_max_position_embeddings;
            double lw = old / sc->low_freq_factor, hw = old / sc->high_freq_factor;
            double wl = 2.0 * 3.14159265358979323846 / inv;
            if (wl > lw) {
                inv = inv / sc->factor;
            } else if (wl >= hw) {
                double s =
                    (old / wl - sc->low_freq_factor) / (sc->high_freq_factor - sc->low_freq_factor);
                inv = (1 - s) * inv / sc->factor + s * inv;
            }
        }
        out[k] = inv;
    }
}

static void test_inv_freq(void) {
    static const struct {
        int hd;
        double theta;
        qt_rope_scaling sc;
    } C[] = {
        {64, 10000.0, {QT_ROPE_DEFAULT, 0, 0, 0, 0}},
        {128, 500000.0, {QT_ROPE_DEFAULT, 0, 0, 0, 0}},
        {64, 1000000.0, {QT_ROPE_DEFAULT, 0, 0, 0, 0}},
        {128, 500000.0, {QT_ROPE_LLAMA3, 8.0, 1.0, 4.0, 8192}},  /* Llama 3.1 */
        {64, 500000.0, {QT_ROPE_LLAMA3, 32.0, 1.0, 4.0, 8192}},  /* Llama 3.2 1B */
        {128, 500000.0, {QT_ROPE_LLAMA3, 32.0, 1.0, 4.0, 8192}}, /* Llama 3.2 3B */
        {16, 10000.0, {QT_ROPE_LLAMA3, 8.0, 1.0, 4.0, 16}},      /* tests/fixtures/hf/llama */
        {6, 10000.0, {QT_ROPE_LLAMA3, 4.0, 2.0, 3.0, 100}},
    };
    for (size_t c = 0; c < sizeof C / sizeof C[0]; c++) {
        const qt_rope_scaling *sc = C[c].sc.type == QT_ROPE_LLAMA3 ? &C[c].sc : NULL;
        float got[64];
        double want[64];
        qt_rope_inv_freq(got, C[c].hd, C[c].theta, sc);
        ref_inv_freq(want, C[c].hd, C[c].theta, sc);
        int bad = 0, scaled = 0, medium = 0;
        for (int k = 0; k < C[c].hd / 2; k++) {
            double base = 1.0 / pow(C[c].theta, (double)(2 * k) / C[c].hd);
            if (fabs(got[k] - want[k]) > 2e-6 * want[k] && bad++ < 3)
                fprintf(stderr, "  inv_freq case %zu [%d]: %.9g want %.9g\n", c, k, got[k],
                        want[k]);
            if (sc && fabs(want[k] - base / sc->factor) < 1e-9 * base) scaled++;
            if (sc && want[k] > base / sc->factor * 1.000001 && want[k] < base * 0.999999) medium++;
        }
        QT_EXPECT(bad == 0, "inv_freq case %zu (hd %d theta %g %s): %d elements off", c, C[c].hd,
                  C[c].theta, sc ? "llama3" : "default", bad);
        /* the llama3 cases must exercise all three regimes, or the test proves little */
        if (sc && C[c].hd >= 64)
            QT_EXPECT(scaled > 0 && medium > 0, "inv_freq case %zu: %d scaled, %d smoothed", c,
                      scaled, medium);
    }
    /* by hand: theta 10000, hd 4 -> {1, 0.01}: wavelengths 2pi and 200pi.
     * orig 64 (low/high wavelengths 64 and 16): 200pi > 64 is divided by 8 -> 0.00125, 2pi < 16
     * stays 1. orig 1024 (1024 and 256): 200pi = 628.3 is in between, smooth factor
     * s = (1024 / 628.3185 - 1) / 3 = 0.2099155, (1 - s) * 0.01 / 8 + s * 0.01 = 0.00308676097 */
    qt_rope_scaling s64 = {QT_ROPE_LLAMA3, 8.0, 1.0, 4.0, 64}, s1k = s64;
    s1k.original_max_position_embeddings = 1024;
    float v[2];
    qt_rope_inv_freq(v, 4, 10000.0, &s64);
    QT_EXPECT(v[0] == 1.0f && v[1] == 0.00125f, "llama3 orig 64: {%.9g, %.9g}", v[0], v[1]);
    qt_rope_inv_freq(v, 4, 10000.0, &s1k);
    QT_EXPECT(v[0] == 1.0f, "llama3 orig 1024: high frequency unchanged, got %.9g", v[0]);
    QT_EXPECT_CLOSE(v[1], 0.00308676097, 0, 1e-6, "llama3 orig 1024: smoothed frequency");
    /* theta 500000, hd 8: 500000^-(k/4) = 1, 0.0376060309, 0.00141421356, 5.31829590e-05 */
    float w[4];
    qt_rope_inv_freq(w, 8, 500000.0, NULL);
    const double wh[4] = {1, 0.0376060309, 0.00141421356, 5.31829590e-05};
    for (int k = 0; k < 4; k++) QT_EXPECT_CLOSE(w[k], wh[k], 0, 2e-7, "inv_freq(500000, 8)");
}

/* Bit-exact against transformers 5.17 + torch 2.11 (LlamaRotaryEmbedding(config).inv_freq, on
 * the GPU machine): the tiny fixture model's llama3 table and Llama 3.2 1B's. */
static void test_inv_freq_transformers(void) {
    static const uint32_t fixture[8] = {0x3f13786e, 0x3d21e89b, 0x3c4ccccd, 0x3b8186e3,
                                        0x3aa3d70a, 0x39cf3e38, 0x3903126f, 0x3825cb60};
    static const uint32_t l32_1b[32] = {
        0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad,
        0x3d681e67, 0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402,
        0x3b527720, 0x3aa9279b, 0x39e13620, 0x38cb98f7, 0x37a3418d, 0x3758ac81, 0x370fc8f8,
        0x36bed4f4, 0x367d45c3, 0x3628126b, 0x35df10c4, 0x359406cb, 0x35447610, 0x35025f34,
        0x34ad07a7, 0x3465a54d, 0x341864a7, 0x33ca41b0};
    qt_rope_scaling fx = {QT_ROPE_LLAMA3, 8.0, 1.0, 4.0, 16},
                    l32 = {QT_ROPE_LLAMA3, 32.0, 1.0, 4.0, 8192};
    float got[32];
    uint32_t bits[32];
    qt_rope_inv_freq(got, 16, 10000.0, &fx);
    memcpy(bits, got, sizeof got);
    QT_EXPECT(memcmp(bits, fixture, sizeof fixture) == 0, "inv_freq of the fixture model");
    qt_rope_inv_freq(got, 64, 500000.0, &l32);
    memcpy(bits, got, sizeof got);
    QT_EXPECT(memcmp(bits, l32_1b, sizeof l32_1b) == 0, "inv_freq of Llama 3.2 1B");
}

/* ---- RMSNorm ---------------------------------------------------------------------------- */

static void test_rmsnorm_values(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    /* row 0: mean(x²) = 30/4 = 7.5, rstd = 0.365148372; row 1: mean 25/4, rstd 0.4 exactly;
     * row 2: all zeros stay zero (eps keeps rstd finite) */
    float xv[12] = {1, 2, 3, 4, 3, -4, 0, 0, 0, 0, 0, 0};
    float wv[4] = {1, 1, 2, 0.5f};
    qt_tensor *x = f32_leaf(&ctx, 2, TC_SHAPE(3, 4), xv, false, "x");
    qt_tensor *w = f32_leaf(&ctx, 1, TC_SHAPE(4), wv, false, "w");
    const double want[12] = {0.365148372, 0.730296743, 2.19089023, 0.730296743, 1.2, -1.6,
                             0,           0,           0,          0,           0,   0};
    qt_tensor *y = qt_rmsnorm(&ctx, x, w, 0.0f);
    for (int i = 0; i < 8; i++) QT_EXPECT_CLOSE(qt_f32(y)[i], want[i], 0, 2e-7, "rmsnorm eps 0");
    y = qt_rmsnorm(&ctx, x, w, 1e-5f);
    for (int i = 0; i < 12; i++) /* eps shifts row 0 by a factor 1/sqrt(1 + 1e-5/7.5) */
        QT_EXPECT_CLOSE(qt_f32(y)[i], want[i] / sqrt(1 + (i < 4 ? 1e-5 / 7.5 : 1e-5 / 6.25)), 1e-30,
                        2e-7, "rmsnorm eps 1e-5");
    /* D = 1: x / |x| * w */
    float x1[3] = {-2, 0.5f, 3}, w1 = 3;
    y = qt_rmsnorm(&ctx, f32_leaf(&ctx, 2, TC_SHAPE(3, 1), x1, false, "x1"),
                   f32_leaf(&ctx, 1, TC_SHAPE(1), &w1, false, "w1"), 0.0f);
    QT_EXPECT(qt_f32(y)[0] == -3 && qt_f32(y)[1] == 3 && qt_f32(y)[2] == 3, "rmsnorm D=1");
    qt_ctx_free(&ctx);
}

/* ---- embedding -------------------------------------------------------------------------- */

static void test_embedding_values(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    float wv[12];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) wv[i * 3 + j] = (float)(10 * i + j);
    qt_tensor *W = f32_leaf(&ctx, 2, TC_SHAPE(4, 3), wv, true, "W");
    int32_t iv[4] = {3, 0, 3, 1};
    qt_tensor *ids = tc_i32_leaf(&ctx, 2, TC_SHAPE(2, 2), iv, "ids");
    qt_tensor *y = qt_embedding(&ctx, W, ids);
    QT_EXPECT(y->ndim == 3 && y->shape[0] == 2 && y->shape[1] == 2 && y->shape[2] == 3,
              "embedding: [2, 2] ids give [2, 2, 3]");
    int ok = 1;
    for (int t = 0; t < 4; t++)
        for (int j = 0; j < 3; j++) ok &= qt_f32(y)[t * 3 + j] == (float)(10 * iv[t] + j);
    QT_EXPECT(ok, "embedding: rows of W by id");
    /* backward with a gradient of ones: each row of W counts its ids, unused rows stay 0 */
    qt_tensor *ones = qt_tensor_new_like(&ctx, y);
    for (int i = 0; i < 12; i++) qt_f32(ones)[i] = 1.0f;
    qt_backward_from(&ctx, y, ones);
    const float cnt[4] = {1, 1, 0, 2};
    ok = 1;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) ok &= qt_f32(W->grad)[i * 3 + j] == cnt[i];
    QT_EXPECT(ok, "embedding backward: counts {1, 1, 0, 2} per row");
    qt_ctx_free(&ctx);
}

/* An out-of-range id is a failed check naming the id: run it in a child, read its stderr. */
static void test_embedding_bad_id(void) {
    int fd[2];
    if (pipe(fd) != 0) {
        QT_EXPECT(0, "pipe");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        qt_ctx ctx;
        qt_ctx_init(&ctx, QT_CPU, 1, NULL);
        float wv[6] = {0};
        qt_tensor *W = f32_leaf(&ctx, 2, TC_SHAPE(2, 3), wv, false, "W");
        int32_t iv[3] = {1, 0, 7};
        qt_embedding(&ctx, W, tc_i32_leaf(&ctx, 1, TC_SHAPE(3), iv, "ids"));
        _exit(0); /* not reached when the check works */
    }
    close(fd[1]);
    char buf[1024];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd[0], buf + n, sizeof buf - 1 - n)) > 0) n += r;
    buf[n] = 0;
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    QT_EXPECT(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "bad id: the child must fail");
    QT_EXPECT(strstr(buf, "id 7 at position 2") != NULL, "bad id: message names it, got: %s", buf);
}

/* ---- Philox and dropout ----------------------------------------------------------------- */

static void test_philox_kat(void) {
    /* Random123 kat_vectors, philox4x32 10: counter, key -> output */
    static const uint32_t K[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int v = 0; v < 3; v++) {
        uint32_t out[4];
        qt_philox4x32_10(K[v], K[v] + 4, out);
        QT_EXPECT(memcmp(out, K[v] + 6, sizeof out) == 0,
                  "philox4x32-10 KAT %d: %08x %08x %08x %08x", v, out[0], out[1], out[2], out[3]);
    }
}

/* The mask as philox.h defines it, built from the raw generator word by word. */
static bool ref_keep(uint64_t seed, uint64_t offset, uint64_t i, float p) {
    const uint32_t c[4] = {(uint32_t)(i >> 2), (uint32_t)(i >> 34), (uint32_t)offset,
                           (uint32_t)(offset >> 32)};
    const uint32_t k[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    qt_philox4x32_10(c, k, out);
    return (double)(out[i & 3] >> 8) / 16777216.0 >= (double)p;
}

static void test_dropout(void) {
    const uint64_t seed = 0x0123456789abcdefull;
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, seed, NULL);
    const int64_t N = 100003; /* not a multiple of 4: the last block is partial */
    float *xv = malloc(N * sizeof *xv);
    uint64_t s = 42;
    for (int64_t i = 0; i < N; i++) xv[i] = (float)(1.0 + tc_uniform(&s)); /* never 0 */
    qt_tensor *x = f32_leaf(&ctx, 1, &N, xv, false, "x");

    QT_EXPECT(qt_dropout(&ctx, x, 0.0f) == x && ctx.rng_offset == 0,
              "p = 0 returns x itself and consumes no offset");
    const float ps[2] = {0.1f, 0.5f};
    for (int pi = 0; pi < 2; pi++) {
        float p = ps[pi], scale = 1.0f / (1.0f - p);
        ctx.rng_offset = 7;
        qt_tensor *y1 = qt_dropout(&ctx, x, p);
        QT_EXPECT(ctx.rng_offset == 8, "a dropout call takes one offset");
        ctx.rng_offset = 7;
        qt_tensor *y2 = qt_dropout(&ctx, x, p);
        qt_tensor *y3 = qt_dropout(&ctx, x, p); /* offset 8 */
        const float *a = qt_f32(y1), *b = qt_f32(y2), *c = qt_f32(y3);
        int64_t kept = 0, differ = 0, badval = 0, badref = 0;
        for (int64_t i = 0; i < N; i++) {
            bool k = a[i] != 0.0f;
            kept += k;
            differ += k != (c[i] != 0.0f);
            if (k ? a[i] != xv[i] * scale : a[i] != 0.0f) badval++;
            if (k != ref_keep(seed, 7, (uint64_t)i, p)) badref++;
        }
        QT_EXPECT(memcmp(a, b, N * sizeof *a) == 0, "p=%g: same (seed, offset), same output",
                  (double)p);
        double mean = N * (1.0 - p), sd = sqrt(N * p * (1.0 - p));
        QT_EXPECT(fabs(kept - mean) <= 3 * sd, "p=%g: kept %lld of %lld, expected %.0f +- %.0f",
                  (double)p, (long long)kept, (long long)N, mean, 3 * sd);
        /* two independent masks disagree on a fraction 2p(1-p) of elements */
        double dmean = N * 2 * p * (1 - p), dsd = sqrt(N * 2 * p * (1 - p) * (1 - 2 * p * (1 - p)));
        QT_EXPECT(fabs(differ - dmean) <= 4 * dsd,
                  "p=%g: another offset gives another mask (%lld differ, expected %.0f)", (double)p,
                  (long long)differ, dmean);
        QT_EXPECT(badval == 0, "p=%g: kept values are x/(1-p), dropped are 0 (%lld bad)", (double)p,
                  (long long)badval);
        QT_EXPECT(badref == 0, "p=%g: mask follows philox.h's definition (%lld differ)", (double)p,
                  (long long)badref);
    }
    /* the counter's high words: an element beyond 2^34 and an offset beyond 2^32 */
    int bad = 0;
    for (uint64_t i = (1ull << 34) - 8; i < (1ull << 34) + 8; i++)
        for (uint64_t off = (1ull << 32) - 1; off <= (1ull << 32); off++)
            bad += qt_dropout_keep(seed, off, i, 0.5f) != ref_keep(seed, off, i, 0.5f);
    QT_EXPECT(bad == 0, "qt_dropout_keep follows the definition at high counters");
    free(xv);
    qt_ctx_free(&ctx);
}

/* Gradients that sum several contributions per element (RMSNorm's w, embedding rows) must not
 * depend on the thread count: run a case big enough to go parallel with 1 and with 4 threads. */
static void run_big(int threads, float *gx, float *gw, float *gW) {
    omp_set_num_threads(threads);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 5, NULL);
    uint64_t s = 77;
    const int64_t R = 300, D = 301, V = 50;
    qt_tensor *x = tc_normal_leaf(&ctx, &s, 2, TC_SHAPE(R, D), 1.0, true, "x");
    qt_tensor *w = tc_uniform_leaf(&ctx, &s, 1, &D, 0.5, 1.5, true, "w");
    qt_tensor *W = tc_normal_leaf(&ctx, &s, 2, TC_SHAPE(V, D), 1.0, true, "W");
    int32_t *iv = malloc(R * sizeof *iv);
    for (int64_t i = 0; i < R; i++) iv[i] = (int32_t)(tc_next(&s) % V);
    qt_tensor *ids = tc_i32_leaf(&ctx, 1, &R, iv, "ids");
    qt_tensor *y = qt_mul(&ctx, qt_rmsnorm(&ctx, x, w, 1e-5f), qt_embedding(&ctx, W, ids));
    qt_tensor *g = tc_normal_leaf(&ctx, &s, 2, TC_SHAPE(R, D), 1.0, false, "g");
    qt_backward_from(&ctx, y, g);
    memcpy(gx, qt_f32(x->grad), R * D * sizeof *gx);
    memcpy(gw, qt_f32(w->grad), D * sizeof *gw);
    memcpy(gW, qt_f32(W->grad), V * D * sizeof *gW);
    free(iv);
    qt_ctx_free(&ctx);
}

static void test_thread_determinism(void) {
    const size_t nx = 300 * 301, nw = 301, nW = 50 * 301;
    float *a = malloc((nx + nw + nW) * sizeof *a), *b = malloc((nx + nw + nW) * sizeof *b);
    int t0 = omp_get_max_threads();
    run_big(1, a, a + nx, a + nx + nw);
    run_big(4, b, b + nx, b + nx + nw);
    omp_set_num_threads(t0);
    QT_EXPECT(memcmp(a, b, nx * sizeof *a) == 0, "rmsnorm x gradient: same for 1 and 4 threads");
    QT_EXPECT(memcmp(a + nx, b + nx, nw * sizeof *a) == 0,
              "rmsnorm w gradient: thread-independent");
    QT_EXPECT(memcmp(a + nx + nw, b + nx + nw, nW * sizeof *a) == 0,
              "embedding gradient: thread-independent");
    free(a);
    free(b);
}

int main(void) {
    test_embedding_bad_id(); /* first: fork before OpenMP starts its threads */
    test_rope_values();
    test_inv_freq();
    test_inv_freq_transformers();
    test_rmsnorm_values();
    test_embedding_values();
    test_philox_kat();
    test_dropout();
    test_thread_determinism();
    return qt_test_finish("forward_llama");
}
