/* test_optim.c - AdamW, clipping and the schedules against hand-computed values (the 3-step
 * comparison with torch's AdamW through PEFT lives in the model tests). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qt_test.h"
#include "autograd/tape.h"
#include "quant/dynamic_map.h"
#include "quant/safetensors.h"
#include "train/optim.h"

static void test_schedules(void) {
    qt_schedule s = {.kind = QT_SCHED_COSINE, .lr = 1.0, .warmup = 1, .total = 3};
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 0), 0.0, 1e-12, 0, "cosine step 0 (warmup)");
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 1), 1.0, 1e-12, 0, "cosine step 1 (peak)");
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 2), 0.5, 1e-12, 0, "cosine step 2 (half way)");
    s.warmup = 4, s.total = 12;
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 2), 0.5, 1e-12, 0, "warmup is linear");
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 12), 0.0, 1e-12, 0, "cosine ends at 0");
    s.min_ratio = 0.1;
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 12), 0.1, 1e-12, 0, "cosine floor");
    qt_schedule l = {.kind = QT_SCHED_LINEAR, .lr = 2.0, .warmup = 2, .total = 10};
    QT_EXPECT_CLOSE(qt_schedule_lr(&l, 6), 2.0 * 4.0 / 8.0, 1e-12, 0, "linear decay");
    QT_EXPECT_CLOSE(qt_schedule_lr(&l, 11), 0.0, 1e-12, 0, "linear clamps at 0");
    qt_schedule c = {.kind = QT_SCHED_CONSTANT_WITH_WARMUP, .lr = 3.0, .warmup = 3, .total = 9};
    QT_EXPECT_CLOSE(qt_schedule_lr(&c, 1), 1.0, 1e-12, 0, "constant warmup");
    QT_EXPECT_CLOSE(qt_schedule_lr(&c, 7), 3.0, 1e-12, 0, "constant after warmup");
    qt_sched_kind k;
    QT_EXPECT(qt_schedule_parse("cosine", &k) == 0 && k == QT_SCHED_COSINE, "parse cosine");
    QT_EXPECT(qt_schedule_parse("cosin", &k) == -1, "unknown schedule name");
}

static void test_adamw(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *p = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){2}, true, "p");
    qt_f32(p)[0] = 1.0f, qt_f32(p)[1] = -2.0f;
    qt_adamw opt;
    bool decay[1] = {true};
    QT_EXPECT(qt_adamw_init(&opt, &ctx, &p, decay, 1, 0.9, 0.999, 1e-8, 0.1, NULL) == 0, "init");
    float beta;
    qt_tensor *g = qt_grad_acquire(&ctx, p, false, &beta);
    qt_f32(g)[0] = 0.5f, qt_f32(g)[1] = 0.0f;
    qt_adamw_step(&opt, &ctx, 0.1);
    /* p *= 1 - lr*wd; the first Adam step moves by lr * sign(g) */
    QT_EXPECT_CLOSE(qt_f32(p)[0], 0.99 - 0.1, 1e-6, 0, "AdamW step 1, element 0");
    QT_EXPECT_CLOSE(qt_f32(p)[1], -2.0 * 0.99, 1e-6, 0, "zero gradient: decay only");
    QT_EXPECT(!p->grad_valid, "the step empties the gradient");
    /* step 2 with g = 0.5 again: m = 0.095, v = 0.00049975; bc1 = 0.19, bc2 = 0.001999 */
    g = qt_grad_acquire(&ctx, p, false, &beta);
    qt_f32(g)[0] = 0.5f, qt_f32(g)[1] = 0.0f;
    qt_adamw_step(&opt, &ctx, 0.1);
    double w = 0.89 * 0.99;
    double m = 0.095, v = 0.999 * 0.00025 + 0.001 * 0.25;
    w -= (0.1 / 0.19) * m / (sqrt(v) / sqrt(1 - 0.999 * 0.999) + 1e-8);
    QT_EXPECT_CLOSE(qt_f32(p)[0], w, 0, 1e-5, "AdamW step 2 (f32 arithmetic)");
    qt_adamw_free(&opt);

    /* clipping: grads (3, 4) have norm 5; max_norm 1 scales them by 1 / (5 + 1e-6) */
    qt_tensor *q = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){2}, true, "q");
    g = qt_grad_acquire(&ctx, q, false, &beta);
    qt_f32(g)[0] = 3.0f, qt_f32(g)[1] = 4.0f;
    double n = qt_grad_clip(&ctx, &q, 1, 1.0);
    QT_EXPECT_CLOSE(n, 5.0, 1e-6, 0, "global norm");
    QT_EXPECT_CLOSE(qt_f32(g)[0], 0.6, 1e-6, 0, "clipped 0");
    QT_EXPECT_CLOSE(qt_f32(g)[1], 0.8, 1e-6, 0, "clipped 1");
    n = qt_grad_clip(&ctx, &q, 1, 10.0);
    QT_EXPECT_CLOSE(qt_f32(g)[0], 0.6, 1e-6, 0, "below max_norm: unchanged");
    qt_ctx_free(&ctx);
}

/* 8-bit AdamW (bitsandbytes' AdamW8bit) on the CPU: one step from zero state, element by element
 * against the formulas, the codes against the nearest code of the maps, a non-finite gradient,
 * and the 32-bit state of small tensors */
static void test_adamw8(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    enum { N = 5000 }; /* 19 full blocks of 256 and a partial one */
    qt_tensor *p = qt_param_new(&ctx, QT_F32, 2, (int64_t[]){50, 100}, true, "big");
    qt_tensor *q = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){1000}, true, "small");
    qt_tensor *sd = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){4095}, true, "small_decay");
    qt_tensor *ps[3] = {p, q, sd};
    bool decay[3] = {true, false, true};
    static float w0[N], g[N];
    uint64_t r = 7;
    for (int i = 0; i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        w0[i] = (float)((double)(r >> 40) / (double)(1ull << 24) - 0.5);
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        g[i] = (float)(((double)(r >> 40) / (double)(1ull << 24) - 0.5) * (i % 256 == 3 ? 40 : 1));
    }
    g[7] = NAN;
    memcpy(p->data, w0, sizeof w0);
    qt_adamw opt;
    double lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    QT_EXPECT(qt_adamw_init_bits(&opt, &ctx, ps, decay, 3, b1, b2, eps, wd, 8, NULL) == 0,
              "8-bit init");
    QT_EXPECT(opt.slot[0].m8 && !opt.slot[0].m && opt.slot[1].m && !opt.slot[1].m8 &&
                  opt.slot[2].m && !opt.slot[2].m8,
              "8-bit state for >= 4096 elements, fp32 moments below");
    for (int i = 0; i < 4095; i++) qt_f32(sd)[i] = w0[i];
    float beta;
    memcpy(qt_grad_acquire(&ctx, p, false, &beta)->data, g, sizeof g);
    qt_tensor *gq = qt_grad_acquire(&ctx, q, false, &beta);
    for (int i = 0; i < 1000; i++) qt_f32(gq)[i] = 0.25f;
    qt_tensor *gr = qt_grad_acquire(&ctx, sd, false, &beta);
    for (int i = 0; i < 4095; i++) qt_f32(gr)[i] = isfinite(g[i]) ? g[i] : 0.0f;
    qt_adamw_step(&opt, &ctx, lr);

    /* step 1 from zero moments: m = (1-b1) g, v = (1-b2) g^2, with 1-b1 and 1-b2 taken in f32
     * as the optimizer (and bitsandbytes) does */
    double omb1 = 1.0f - (float)b1, omb2 = 1.0f - (float)b2;
    float corr2 = (float)sqrt(1 - b2), step_size = (float)(-lr * sqrt(1 - b2) / (1 - b1));
    const float *map_m = opt.maps, *map_v = opt.maps + 256;
    const uint8_t *m8 = opt.slot[0].m8->data, *v8 = opt.slot[0].v8->data;
    const float *am = qt_f32(opt.slot[0].m_absmax), *av = qt_f32(opt.slot[0].v_absmax);
    double worst = 0;
    int off_m = 0, off_v = 0, bad_absmax = 0;
    for (int blk = 0; blk * 256 < N; blk++) {
        double a1 = 0, a2 = 0;
        for (int i = blk * 256; i < N && i < blk * 256 + 256; i++) {
            if (!isfinite(g[i])) continue;
            a1 = fmax(a1, fabs(omb1 * g[i]));
            a2 = fmax(a2, omb2 * g[i] * (double)g[i]);
        }
        if (fabs(am[blk] - a1) > 1e-6 * a1 || fabs(av[blk] - a2) > 1e-6 * a2) bad_absmax++;
        for (int i = blk * 256; i < N && i < blk * 256 + 256; i++) {
            double m = isfinite(g[i]) ? (1 - b1) * g[i] : 0,
                   v = isfinite(g[i]) ? (1 - b2) * g[i] * (double)g[i] : 0;
            double want = w0[i];
            if (isfinite(g[i]))
                want = (want + step_size * (m / (sqrt(v) + eps * corr2))) * (1 - lr * wd);
            worst = fmax(worst, fabs(qt_f32(p)[i] - want)); /* f32 vs f64: ~1e-7 */
            /* the stored codes: the nearest of the 256 (sign kept for m) */
            int bm = 0, bv = 0;
            for (int k = 1; k < 256; k++) {
                if (fabs(map_m[k] * am[blk] - m) < fabs(map_m[bm] * am[blk] - m)) bm = k;
                if (fabs(map_v[k] * av[blk] - v) < fabs(map_v[bv] * av[blk] - v)) bv = k;
            }
            off_m += fabs(map_m[m8[i]] * am[blk] - map_m[bm] * am[blk]) > 1e-7 * am[blk];
            off_v += fabs(map_v[v8[i]] * av[blk] - map_v[bv] * av[blk]) > 1e-7 * av[blk];
        }
    }
    QT_EXPECT(worst < 1e-6,
              "8-bit AdamW step 1 vs the formulas (steps of lr = 1e-2): worst error "
              "%.2e",
              worst);
    QT_EXPECT(bad_absmax == 0, "%d blocks with a wrong absmax", bad_absmax);
    /* the kernel's binary search picks the nearest code but at exact midpoints, and m's code
     * moves one step when the nearest has the other sign: rare */
    QT_EXPECT(off_m * 100 <= N && off_v * 100 <= N, "codes not the nearest: m %d, v %d of %d",
              off_m, off_v, N);
    QT_EXPECT(qt_f32(p)[7] == w0[7] && map_m[m8[7]] * am[0] == 0.0f && map_v[v8[7]] == 0.0f,
              "a non-finite gradient leaves the element and zeroes its moments");
    /* the small tensor took the 32-bit path: the first step moves by lr (no decay) */
    QT_EXPECT_CLOSE(qt_f32(q)[0], -lr, 1e-6, 0, "small tensor: 32-bit AdamW step");
    /* with decay, as bitsandbytes' 32-bit kernel: the decay after the update (torch decays
     * first: lr wd lr = 1e-5 apart here) */
    double worst32 = 0;
    for (int i = 0; i < 4095; i++) {
        double gi = isfinite(g[i]) ? g[i] : 0, m = omb1 * gi, v = omb2 * gi * gi;
        double want = (w0[i] + step_size * (m / (sqrt(v) + eps * corr2))) * (1 - lr * wd);
        worst32 = fmax(worst32, fabs(qt_f32(sd)[i] - want));
    }
    QT_EXPECT(worst32 < 1e-6,
              "small tensor with decay: bitsandbytes' 32-bit form (decay after the update): "
              "worst error %.2e",
              worst32);
    printf("adamw8: step 1 within %.1e of the formulas; codes off the nearest: m %d, v %d of %d\n",
           worst, off_m, off_v, N);
    qt_adamw_free(&opt);
    qt_ctx_free(&ctx);
}

/* qtune's 8-bit AdamW against the real bitsandbytes AdamW8bit (tests/fixtures/bnb/
 * bnb_adamw8bit.safetensors, made by tools/make_adamw8bit_fixture.py with its CUDA kernel):
 * the same start and gradients, three steps, then parameters, codes and absmax. bitsandbytes'
 * kernel uses fast-math intrinsics (__fdividef, __powf), so the comparison is to rounding: the
 * parameters within 2e-6, absmax within 1e-5 relative, and codes equal but where the fp32 values
 * sit on a code boundary. */
static const float *st_f32(const qt_st_file *f, const char *name, int64_t n) {
    const qt_st_tensor *t = qt_st_find(f, name);
    QT_CHECK(t && qt_st_numel(t) == n, "fixture tensor %s missing or not %lld long", name,
             (long long)n);
    return (const float *)t->data; /* safetensors data is 8-byte aligned after its header */
}

static void test_adamw8_bnb(void) {
    qt_st_file f;
    char e[256];
    if (qt_st_load_file(&f, "tests/fixtures/bnb/bnb_adamw8bit.safetensors", e, sizeof e) != 0) {
        QT_EXPECT(0, "bitsandbytes AdamW8bit fixture: %s (run tools/make_adamw8bit_fixture.py)", e);
        return;
    }
    enum { N = 5000, NB = 20 };
    const float *hp = st_f32(&f, "hparams", 5);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *p = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){N}, true, "p");
    memcpy(p->data, st_f32(&f, "p0", N), N * 4);
    qt_adamw opt;
    bool decay = true;
    QT_CHECK(qt_adamw_init_bits(&opt, &ctx, &p, &decay, 1, hp[1], hp[2], hp[3], hp[4], 8, NULL) ==
                 0,
             "init");
    const float *q1 = st_f32(&f, "qmap1", 256), *q2 = st_f32(&f, "qmap2", 256);
    QT_EXPECT(!memcmp(q1, opt.maps, 1024) && !memcmp(q2, opt.maps + 256, 1024),
              "the signed and unsigned dynamic maps are bitsandbytes' bit for bit");
    for (int k = 1; k <= 3; k++) {
        char nm[32];
        float beta;
        snprintf(nm, sizeof nm, "g%d", k);
        memcpy(qt_grad_acquire(&ctx, p, false, &beta)->data, st_f32(&f, nm, N), N * 4);
        qt_adamw_step(&opt, &ctx, hp[0]);
        snprintf(nm, sizeof nm, "p%d", k);
        const float *pw = st_f32(&f, nm, N);
        double dp = 0, da = 0;
        for (int i = 0; i < N; i++) dp = fmax(dp, fabs(qt_f32(p)[i] - pw[i]));
        int dc[2] = {0, 0};
        for (int s = 0; s < 2; s++) {
            snprintf(nm, sizeof nm, "absmax%d_%d", s + 1, k);
            const float *a = st_f32(&f, nm, NB);
            const float *ours = qt_f32(s ? opt.slot[0].v_absmax : opt.slot[0].m_absmax);
            for (int b = 0; b < NB; b++) da = fmax(da, fabs(ours[b] - a[b]) / (fabs(a[b]) + 1e-30));
            snprintf(nm, sizeof nm, "state%d_%d", s + 1, k);
            const qt_st_tensor *c = qt_st_find(&f, nm);
            QT_CHECK(c && qt_st_numel(c) == N, "fixture tensor %s", nm);
            const uint8_t *oc = (s ? opt.slot[0].v8 : opt.slot[0].m8)->data;
            for (int i = 0; i < N; i++) dc[s] += oc[i] != c->data[i];
        }
        QT_EXPECT(dp <= 2e-6, "step %d: parameters %.2e from bitsandbytes'", k, dp);
        QT_EXPECT(da <= 1e-5, "step %d: absmax %.2e relative from bitsandbytes'", k, da);
        QT_EXPECT(dc[0] * 200 <= N && dc[1] * 200 <= N,
                  "step %d: codes differing from bitsandbytes': m %d, v %d of %d", k, dc[0], dc[1],
                  N);
        printf("adamw8 vs bitsandbytes, step %d: parameters within %.1e, absmax %.1e relative, "
               "codes differing m %d, v %d of %d\n",
               k, dp, da, dc[0], dc[1], N);
    }
    qt_adamw_free(&opt);
    qt_ctx_free(&ctx);
    qt_st_free(&f);
}

/* The four-tensor fixture of tools/make_adamw8bit_fixtures.py (the real AdamW8bit, CUDA, three
 * steps with a changing learning rate): 8-bit state at 4097 and exactly 4096 elements, 32-bit
 * state at 1000 and 300 (bitsandbytes' own 32-bit Adam kernel: decay after the update), each
 * with and without weight decay; zero, outlier and NaN gradients. Start and gradients are exact
 * dyadic values from the script's integer hash, regenerated here. The outlier (x 32 in a's step
 * 1) puts its block's small second moments below the unsigned map's first nonzero code: their
 * codes are 0, so at step 2 those elements move by m / (eps sqrt(1 - b2^t)), to ~1e3.
 * bitsandbytes does exactly that; the comparison holds it. */
static uint32_t fx_hash(uint32_t t, uint32_t i, uint32_t k) {
    uint32_t x = i * 0x9E3779B1u + k * 0x85EBCA77u + t * 0xC2B2AE3Du + 0x27D4EB2Fu;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    x ^= x >> 12;
    x *= 0x297A2D39u;
    x ^= x >> 15;
    return x;
}

static float fx_start(uint32_t t, uint32_t i) {
    return (float)((int)(fx_hash(t, i, 0) % 2049) - 1024) / 2048.0f;
}

static float fx_grad(uint32_t t, uint32_t i, uint32_t k) {
    float g = (float)((int)(fx_hash(t, i, k) % 2049) - 1024) / 1024.0f;
    if (t == 0 && k == 1 && i % 256 == 5) g *= 32.0f;
    if (k == 2 && fx_hash(t, i, k) % 7 == 0) g = 0.0f;
    if (t == 2 && i < 8) g = 0.0f;
    if (t == 0 && k == 3 && i == 300) g = NAN;
    return g;
}

static void test_adamw8_bnb_groups(void) {
    const char *path = "tests/fixtures/bnb/bnb_adamw8bit_groups.safetensors";
    qt_st_file f;
    char e[256];
    if (qt_st_load_file(&f, path, e, sizeof e) != 0) {
        QT_EXPECT(0,
                  "fixture missing: run tools/make_adamw8bit_fixtures.py on the GPU machine "
                  "(%s)",
                  e);
        return;
    }
    enum { NT = 4 };
    const char *tn[NT] = {"a", "b", "c", "d"};
    const int64_t tsz[NT] = {4097, 1000, 4096, 300};
    const bool decay[NT] = {true, true, false, false}, eight[NT] = {true, false, true, false};
    const float *hp = st_f32(&f, "hparams", 7);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *p[NT];
    for (int t = 0; t < NT; t++) {
        p[t] = qt_param_new(&ctx, QT_F32, 1, &tsz[t], true, tn[t]);
        for (int64_t i = 0; i < tsz[t]; i++) qt_f32(p[t])[i] = fx_start(t, (uint32_t)i);
    }
    /* the generator against the script's (bitwise: the first 64 values of a) */
    bool gen_ok = !memcmp(st_f32(&f, "gen.p0", 64), qt_f32(p[0]), 64 * 4);
    for (int k = 1; k <= 3; k++) {
        char nm[32];
        snprintf(nm, sizeof nm, "gen.g%d", k);
        const float *gg = st_f32(&f, nm, 64);
        for (uint32_t i = 0; i < 64; i++) {
            float x = fx_grad(0, i, (uint32_t)k);
            gen_ok &= !memcmp(&x, &gg[i], 4);
        }
    }
    QT_EXPECT(gen_ok, "the start and gradients regenerate the script's bit for bit");
    /* bitsandbytes takes beta, eps, weight decay and lr as fp32: the same values here */
    qt_adamw opt;
    QT_CHECK(qt_adamw_init_bits(&opt, &ctx, p, decay, NT, hp[0], hp[1], hp[2], hp[3], 8, NULL) == 0,
             "init");
    for (int t = 0; t < NT; t++)
        QT_EXPECT((opt.slot[t].m8 != NULL) == eight[t] && (opt.slot[t].m != NULL) == !eight[t],
                  "tensor %s (%lld elements): %s state", tn[t], (long long)tsz[t],
                  eight[t] ? "8-bit" : "32-bit");
    QT_EXPECT(!memcmp(st_f32(&f, "qmap1", 256), opt.maps, 1024) &&
                  !memcmp(st_f32(&f, "qmap2", 256), opt.maps + 256, 1024),
              "the signed and unsigned dynamic maps are bitsandbytes' bit for bit");
    for (int k = 1; k <= 3; k++) {
        char nm[48];
        float beta;
        for (int t = 0; t < NT; t++) {
            float *g = qt_f32(qt_grad_acquire(&ctx, p[t], false, &beta));
            for (int64_t i = 0; i < tsz[t]; i++) g[i] = fx_grad(t, (uint32_t)i, (uint32_t)k);
        }
        float a300 = qt_f32(p[0])[300];
        qt_adamw_step(&opt, &ctx, hp[3 + k]);
        if (k == 3)
            QT_EXPECT(qt_f32(p[0])[300] == a300 &&
                          st_f32(&f, "a.p3", 4097)[300] == st_f32(&f, "a.p2", 4097)[300],
                      "a NaN gradient leaves its element where it was (bitsandbytes too)");
        for (int t = 0; t < NT; t++) {
            int64_t n = tsz[t], nb = (n + QT_ADAMW8_BLOCK - 1) / QT_ADAMW8_BLOCK;
            snprintf(nm, sizeof nm, "%s.p%d", tn[t], k);
            const float *pw = st_f32(&f, nm, n);
            /* parameters: 2e-6, relative above 1 (the outlier's block grows some to ~1e3) */
            double dp = 0, da = 0, ds = 0, wmax = 0;
            for (int64_t i = 0; i < n; i++) {
                double w = qt_f32(p[t])[i], ref = pw[i];
                dp = fmax(dp, fabs(w - ref) / fmax(1.0, fabs(ref)));
                wmax = fmax(wmax, fabs(ref));
            }
            QT_EXPECT(dp <= 2e-6, "step %d, %s: parameters %.2e from bitsandbytes'", k, tn[t], dp);
            int dc[2] = {0, 0};
            for (int s = 0; s < 2 && eight[t]; s++) {
                snprintf(nm, sizeof nm, "%s.absmax%d_%d", tn[t], s + 1, k);
                const float *a = st_f32(&f, nm, nb);
                const float *ours = qt_f32(s ? opt.slot[t].v_absmax : opt.slot[t].m_absmax);
                for (int64_t b = 0; b < nb; b++)
                    da = fmax(da, fabs(ours[b] - a[b]) / (fabs(a[b]) + 1e-30));
                snprintf(nm, sizeof nm, "%s.state%d_%d", tn[t], s + 1, k);
                const qt_st_tensor *c = qt_st_find(&f, nm);
                QT_CHECK(c && qt_st_numel(c) == n, "fixture tensor %s", nm);
                const uint8_t *oc = (s ? opt.slot[t].v8 : opt.slot[t].m8)->data;
                for (int64_t i = 0; i < n; i++) dc[s] += oc[i] != c->data[i];
            }
            for (int s = 0; s < 2 && !eight[t] && k == 3; s++) {
                /* fp32 moments: bitsandbytes' kernel fuses multiply-adds, so to rounding */
                snprintf(nm, sizeof nm, "%s.state%d_3", tn[t], s + 1);
                const float *ref = st_f32(&f, nm, n),
                            *ours = qt_f32(s ? opt.slot[t].v : opt.slot[t].m);
                double big = 0;
                ds = 0;
                for (int64_t i = 0; i < n; i++) {
                    big = fmax(big, fabs(ref[i]));
                    ds = fmax(ds, fabs(ours[i] - ref[i]));
                }
                ds /= big > 0 ? big : 1;
                QT_EXPECT(ds <= 1e-6, "%s: %s %.2e (relative to its largest) from bitsandbytes'",
                          tn[t], s ? "exp_avg_sq" : "exp_avg", ds);
            }
            QT_EXPECT(da <= 1e-5, "step %d, %s: absmax %.2e relative from bitsandbytes'", k, tn[t],
                      da);
            QT_EXPECT(dc[0] * 200 <= n && dc[1] * 200 <= n,
                      "step %d, %s: codes differing from bitsandbytes': m %d, v %d of %lld", k,
                      tn[t], dc[0], dc[1], (long long)n);
            if (eight[t])
                printf("adamw8 vs bitsandbytes (groups), step %d, %s (%lld, 8-bit%s): parameters "
                       "within %.1e (largest %.3g), absmax %.1e relative, codes differing m %d, "
                       "v %d\n",
                       k, tn[t], (long long)n, decay[t] ? ", decay" : "", dp, wmax, da, dc[0],
                       dc[1]);
            else
                printf("adamw8 vs bitsandbytes (groups), step %d, %s (%lld, 32-bit%s): parameters "
                       "within %.1e%s\n",
                       k, tn[t], (long long)n, decay[t] ? ", decay" : "", dp,
                       k == 3 ? ", moments checked" : "");
        }
    }
    qt_adamw_free(&opt);
    qt_ctx_free(&ctx);
    qt_st_free(&f);
}

int main(void) {
    test_schedules();
    test_adamw();
    test_adamw8();
    test_adamw8_bnb();
    test_adamw8_bnb_groups();
    return qt_test_finish("optim");
}
