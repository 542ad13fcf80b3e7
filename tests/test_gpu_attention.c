/* test_gpu_attention.c - the CUDA attention kernels at training sizes against the CPU op
 * (label gpu). tests/test_gpu_ops.c covers the small odd shapes of tests/cases_attention.h;
 * here: T = 512 and 2048 with several packed documents and padding on either side (and
 * without documents), Hq = 32 / Hkv = 8, hd 64 and 128 (the tensor-core path in bf16), plus
 * hd 80 in bf16 and f16 and odd T (the CUDA-core path in 16-bit storage). For every case:
 *   - forward output and the gradients of q, k, v (backward from one random dO) against the
 *     CPU op run on the same values (16-bit cases: the CPU gets the rounded values in f32);
 *   - determinism: the GPU case run twice, bitwise equal.
 * Tolerances, |gpu - cpu| <= rtol |cpu| + afrac max|cpu| per element:
 *   f32 storage        rtol 1e-4, afrac 1e-5 (f32 sums over up to 8192 terms vs the CPU's f64)
 *   bf16 / f16 storage rtol 2e-2, afrac 1e-2 (outputs and gradients stored in 16 bits, P and dS
 *                      rounded to bf16 as tensor-core operands, D from the bf16 output)
 * Then a timing printout (a measurement, not an assertion): forward, and forward + backward, at
 * B=4, T=2048, Hq=32, Hkv=8, hd=64 and B=2, T=2048, Hq=Hkv=32, hd=128 (the 1B and 7B benchmark
 * shapes), bf16, causal, without and with packed documents; CUDA events
 * (qt_cuda_time_ms), median of 10 after 3 warm-ups.
 * Also the fake-quant op (cuda/fakequant.cu) at sizes the parity cases do not reach, against
 * the CPU op on the same x: every INT granularity, dynamic and learned, symmetric and not
 * (per-tensor groups larger than one warp's share: the chunked reductions), Q4_0 (sign ties
 * of the block maximum, an all-zero block), Q8_0, Q4_K (zero and constant super-blocks), NF4
 * plain and double-quantized with more than 256 blocks and an odd count. Bar: forward output,
 * clip mask and x gradient bit-identical; LSQ scale / offset gradients within 1e-6 (f64 sums in
 * another order).
 * QT_QUICK=1 runs small cases only and no timing (for compute-sanitizer).
 * Without a CUDA build or without a GPU: prints SKIPPED and exits 77. Seeds from QT_SEED or the
 * clock, printed. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>

#include "qt_test.h"

#ifndef QT_HAVE_CUDA

int main(void) {
    return qt_test_skip("gpu_attention",
                        "this build has no CUDA backend (QTUNE_CUDA=OFF) (no GPU)");
}

#else

#include <stdint.h>
#include <time.h>

#include "autograd/kernels.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_ops.h"
#include "quant/fakequant.h"
#include "quant/half.h"

typedef struct {
    int B, T, Hq, Hkv, hd;
    qt_dtype dt;
    int docs; /* 1: packed documents with padding */
} acase;

static const acase cases[] = {
    {2, 512, 32, 8, 64, QT_F32, 1},    {2, 512, 32, 8, 128, QT_BF16, 1},
    {2, 512, 32, 8, 64, QT_BF16, 0},   {2, 512, 32, 8, 64, QT_BF16, 1},
    {1, 2048, 32, 8, 128, QT_F32, 1},  {1, 2048, 32, 8, 64, QT_BF16, 1},
    {1, 2048, 32, 8, 128, QT_BF16, 0}, {1, 2048, 32, 8, 64, QT_F32, 0},
    {2, 333, 6, 2, 80, QT_BF16, 1},    {1, 301, 4, 4, 80, QT_F16, 1},
    {1, 200, 8, 2, 64, QT_BF16, 1}, /* T not a multiple of the 64-row tiles */
};

/* ---- host data ------------------------------------------------------------------------------ */

static uint64_t sm_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double sm_unif(uint64_t *s) {
    return ((double)(sm_next(s) >> 11) + 0.5) / 9007199254740992.0;
}
static double sm_gauss(uint64_t *s) {
    return sqrt(-2.0 * log(sm_unif(s))) * cos(6.283185307179586 * sm_unif(s));
}

/* values representable in dt, so that both devices see the same inputs */
static float round_to(qt_dtype dt, float v) {
    if (dt == QT_BF16) return qt_bf16_to_f32(qt_f32_to_bf16(v));
    if (dt == QT_F16) return qt_f16_to_f32(qt_f32_to_f16(v));
    return v;
}

static float *gauss_array(int64_t n, double std, qt_dtype dt, uint64_t *s) {
    float *x = malloc((size_t)n * sizeof *x);
    QT_CHECK(x, "out of host memory");
    for (int64_t i = 0; i < n; i++) x[i] = round_to(dt, (float)(std * sm_gauss(s)));
    return x;
}

/* Per batch row: left padding (odd rows), documents of random lengths (one of length 1), right
 * padding (even rows); ids increase along the row from a random base. */
static int32_t *make_docs(int B, int T, uint64_t *s) {
    int32_t *d = malloc((size_t)B * T * sizeof *d);
    QT_CHECK(d, "out of host memory");
    for (int b = 0; b < B; b++) {
        int32_t *r = d + (int64_t)b * T;
        int left = b % 2 ? 1 + (int)(sm_next(s) % (uint64_t)(T / 16)) : 0;
        int right = b % 2 ? 0 : 1 + (int)(sm_next(s) % (uint64_t)(T / 12));
        int id = (int)(sm_next(s) % 100), t = 0, ndoc = 0;
        for (; t < left; t++) r[t] = -1;
        while (t < T - right) {
            int len = ndoc == 1 ? 1 : 1 + (int)(sm_next(s) % (uint64_t)(T / 3));
            for (int u = 0; u < len && t < T - right; u++) r[t++] = id;
            id += 1 + (int)(sm_next(s) % 3);
            ndoc++;
        }
        for (; t < T; t++) r[t] = -1;
    }
    return d;
}

/* ---- tensors ------------------------------------------------------------------------------- */

static qt_tensor *leaf(qt_ctx *ctx, qt_dtype dt, const int64_t *shape, const float *x, bool rg,
                       const char *name) {
    qt_tensor *t = qt_param_new(ctx, dt, 4, shape, rg, name);
    int64_t n = qt_numel(t);
    if (dt == QT_F32) {
        qt_tensor_upload(ctx, t, x);
        return t;
    }
    uint16_t *h = malloc((size_t)n * sizeof *h);
    QT_CHECK(h, "out of host memory");
    for (int64_t i = 0; i < n; i++)
        h[i] = dt == QT_BF16 ? qt_f32_to_bf16(x[i]) : qt_f32_to_f16(x[i]);
    qt_tensor_upload(ctx, t, h);
    free(h);
    return t;
}

static float *download_f32(qt_ctx *ctx, const qt_tensor *t) {
    int64_t n = qt_numel(t);
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    QT_CHECK(f, "out of host memory");
    if (t->dtype == QT_F32) {
        qt_tensor_download(ctx, t, f);
        return f;
    }
    uint16_t *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    QT_CHECK(h, "out of host memory");
    qt_tensor_download(ctx, t, h);
    for (int64_t i = 0; i < n; i++)
        f[i] = t->dtype == QT_BF16 ? qt_bf16_to_f32(h[i]) : qt_f16_to_f32(h[i]);
    free(h);
    return f;
}

typedef struct {
    qt_tensor *q, *k, *v, *doc, *go;
    float scale;
} att_leaves;

typedef struct {
    float *o, *g[3]; /* host f32: output, dq, dk, dv */
} att_result;

static att_leaves make_leaves(qt_ctx *ctx, const acase *c, qt_dtype dt, float *const host[4],
                              const int32_t *doc) {
    att_leaves L;
    const int64_t sq[4] = {c->B, c->T, c->Hq, c->hd}, skv[4] = {c->B, c->T, c->Hkv, c->hd};
    L.q = leaf(ctx, dt, sq, host[0], true, "q");
    L.k = leaf(ctx, dt, skv, host[1], true, "k");
    L.v = leaf(ctx, dt, skv, host[2], true, "v");
    L.go = leaf(ctx, dt, sq, host[3], false, "dO");
    L.doc = NULL;
    if (doc) {
        L.doc = qt_param_new(ctx, QT_I32, 2, (const int64_t[]){c->B, c->T}, false, "doc");
        qt_tensor_upload(ctx, L.doc, doc);
    }
    L.scale = (float)(1.0 / sqrt((double)c->hd));
    return L;
}

/* forward + backward from dO on fresh gradients; downloads when r is not NULL */
static void run_once(qt_ctx *ctx, const att_leaves *L, att_result *r) {
    qt_step_reset(ctx);
    qt_grad_zero(L->q);
    qt_grad_zero(L->k);
    qt_grad_zero(L->v);
    qt_tensor *o = qt_attention(ctx, L->q, L->k, L->v, L->doc, L->scale);
    qt_backward_from(ctx, o, L->go);
    if (!r) return;
    r->o = download_f32(ctx, o);
    r->g[0] = download_f32(ctx, L->q->grad);
    r->g[1] = download_f32(ctx, L->k->grad);
    r->g[2] = download_f32(ctx, L->v->grad);
}

static void free_result(att_result *r) {
    free(r->o);
    for (int i = 0; i < 3; i++) free(r->g[i]);
}

/* elementwise |got - ref| <= rtol |ref| + afrac max|ref|; prints the normalised max error */
static int compare(const char *what, const float *got, const float *ref, int64_t n, double rtol,
                   double afrac, double *norm_err) {
    double refmax = 0, maxd = 0, se = 0, sr = 0;
    for (int64_t i = 0; i < n; i++) refmax = fmax(refmax, fabs(ref[i]));
    double atol = afrac * refmax + 1e-30;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) || d > atol + rtol * fabs(ref[i])) {
            if (bad < 3)
                fprintf(stderr, "    %s[%lld]: gpu %.9g cpu %.9g (|d| %.3g, allowed %.3g)\n", what,
                        (long long)i, got[i], ref[i], d, atol + rtol * fabs(ref[i]));
            bad++;
        }
        if (!isnan(d)) maxd = fmax(maxd, d);
        se += d * d;
        sr += (double)ref[i] * ref[i];
    }
    *norm_err = refmax > 0 ? maxd / refmax : maxd;
    printf("    %-4s max|d|/max|ref| %.2e  rms rel %.2e  %s\n", what, *norm_err,
           sr > 0 ? sqrt(se / sr) : sqrt(se), bad ? "FAIL" : "ok");
    if (bad)
        fprintf(stderr, "    %s: %lld of %lld elements off\n", what, (long long)bad, (long long)n);
    return bad == 0;
}

static int same_bits(const float *a, const float *b, int64_t n) {
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

static void check_case(qt_ctx *cpu, qt_ctx *gpu, const acase *c, uint64_t seed, double worst[2]) {
    uint64_t s = seed;
    int64_t nq = (int64_t)c->B * c->T * c->Hq * c->hd, nkv = (int64_t)c->B * c->T * c->Hkv * c->hd;
    float *host[4] = {gauss_array(nq, 1.0, c->dt, &s), gauss_array(nkv, 1.0, c->dt, &s),
                      gauss_array(nkv, 1.0, c->dt, &s), gauss_array(nq, 1.0, c->dt, &s)};
    int32_t *doc = c->docs ? make_docs(c->B, c->T, &s) : NULL;
    const char *dn = qt_dtype_name(c->dt);
    printf("  B%d T%d Hq%d Hkv%d hd%d %s %s (seed %llu)\n", c->B, c->T, c->Hq, c->Hkv, c->hd, dn,
           c->docs ? "docs+padding" : "causal", (unsigned long long)seed);

    att_leaves Lc = make_leaves(cpu, c, QT_F32, host, doc);
    att_leaves Lg = make_leaves(gpu, c, c->dt, host, doc);
    att_result rc, r1, r2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_once(cpu, &Lc, &rc);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    run_once(gpu, &Lg, &r1);
    run_once(gpu, &Lg, &r2);

    int f32 = c->dt == QT_F32;
    double rtol = f32 ? 1e-4 : 2e-2, afrac = f32 ? 1e-5 : 1e-2, e;
    const char *names[4] = {"out", "dq", "dk", "dv"};
    const int64_t ns[4] = {nq, nq, nkv, nkv};
    int ok = 1, det = 1;
    for (int t = 0; t < 4; t++) {
        const float *got = t ? r1.g[t - 1] : r1.o, *ref = t ? rc.g[t - 1] : rc.o;
        const float *again = t ? r2.g[t - 1] : r2.o;
        int good = compare(names[t], got, ref, ns[t], rtol, afrac, &e);
        QT_EXPECT(good, "attention %s B%d T%d hd%d %s docs%d: %s differs from the CPU (seed %llu)",
                  dn, c->B, c->T, c->hd, dn, c->docs, names[t], (unsigned long long)seed);
        ok &= good;
        worst[!f32] = fmax(worst[!f32], isnan(e) ? INFINITY : e);
        int same = same_bits(got, again, ns[t]);
        QT_EXPECT(same, "attention %s T%d hd%d: %s differs between two GPU runs", dn, c->T, c->hd,
                  names[t]);
        det &= same;
    }
    printf("    rtol %.0e afrac %.0e: %s; two GPU runs bit-identical: %s (CPU reference %.2f s)\n",
           rtol, afrac, ok ? "ok" : "FAIL", det ? "yes" : "NO",
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    free_result(&rc);
    free_result(&r1);
    free_result(&r2);
    for (int i = 0; i < 4; i++) free(host[i]);
    free(doc);
}

/* ---- fake quantization ----------------------------------------------------------------------- */

typedef struct {
    qt_fq_format f;
    int64_t rows, cols;
    const char *desc;
} fqcase;

#define FQ_INT(b, sym, gran, grp, mode)                                                            \
    {                                                                                              \
        .kind = QT_FQ_INT, .bits = b, .symmetric = sym, .granularity = gran, .group = grp,         \
        .scale_mode = mode                                                                         \
    }

static const fqcase fq_cases[] = {
    {FQ_INT(4, 1, QT_FQ_PER_GROUP, 32, QT_FQ_DYNAMIC), 96, 256, "int4 g32 dynamic"},
    {FQ_INT(8, 1, QT_FQ_PER_TOKEN, 0, QT_FQ_DYNAMIC), 77, 2048, "int8 per-token dynamic"},
    {FQ_INT(8, 1, QT_FQ_PER_TOKEN, 0, QT_FQ_DYNAMIC), 5, 9000, "int8 per-token, long rows"},
    {FQ_INT(4, 0, QT_FQ_PER_CHANNEL, 0, QT_FQ_DYNAMIC), 64, 300, "int4 per-channel asym"},
    {FQ_INT(3, 0, QT_FQ_PER_TENSOR, 0, QT_FQ_DYNAMIC), 41, 999, "int3 per-tensor asym"},
    {FQ_INT(2, 1, QT_FQ_PER_TENSOR, 0, QT_FQ_DYNAMIC), 7, 5, "int2 per-tensor tiny"},
    {FQ_INT(8, 0, QT_FQ_PER_TENSOR, 0, QT_FQ_LEARNED), 37, 1001, "int8 per-tensor LSQ+"},
    {FQ_INT(4, 1, QT_FQ_PER_GROUP, 64, QT_FQ_LEARNED), 50, 512, "int4 g64 LSQ"},
    {FQ_INT(4, 1, QT_FQ_PER_CHANNEL, 0, QT_FQ_LEARNED), 33, 5000, "int4 per-channel LSQ"},
    {FQ_INT(3, 0, QT_FQ_PER_TOKEN, 0, QT_FQ_LEARNED), 40, 96, "int3 per-token LSQ+"},
    {{.kind = QT_FQ_Q4_0}, 70, 256, "Q4_0"},
    {{.kind = QT_FQ_Q8_0}, 70, 288, "Q8_0"},
    {{.kind = QT_FQ_Q4_K}, 24, 512, "Q4_K"},
    {{.kind = QT_FQ_NF4}, 300, 200, "NF4 bs64 double-quant"},
    {{.kind = QT_FQ_NF4, .blocksize = 128, .nf4_plain = 1}, 31, 333, "NF4 bs128 plain"},
    {{.kind = QT_FQ_NF4, .blocksize = 32}, 1, 20001, "NF4 bs32 odd count"},
    {{.kind = QT_FQ_NF4, .blocksize = 4096}, 123, 457, "NF4 bs4096"},
};

/* x with the awkward blocks the codecs have rules for: an all-zero block, a block whose
 * largest magnitudes tie with opposite signs (+a first at one place, -a first at another), a
 * constant block */
static float *fq_data(int64_t n, uint64_t *s) {
    float *x = malloc((size_t)n * sizeof *x);
    QT_CHECK(x, "out of host memory");
    for (int64_t i = 0; i < n; i++) x[i] = (float)(0.05 * sm_gauss(s));
    if (n >= 1024) {
        for (int64_t i = 256; i < 512; i++) x[i] = 0.0f;     /* zero super-block */
        for (int64_t i = 512; i < 768; i++) x[i] = 0.03125f; /* constant */
        x[800] = -0.5f, x[810] = 0.5f;                       /* -a first */
        x[840] = 0.5f, x[850] = -0.5f;                       /* +a first */
        x[900] = -0.0f;
    }
    return x;
}

static float *host_f32(qt_ctx *ctx, const qt_tensor *t) {
    float *h = malloc((size_t)(qt_numel(t) ? qt_numel(t) : 1) * sizeof *h);
    QT_CHECK(h, "out of host memory");
    qt_tensor_download(ctx, t, h);
    return h;
}

typedef struct {
    float *y, *gx, *gs, *go;
    uint8_t *mask;
} fq_result;

static void fq_run(qt_ctx *ctx, const fqcase *c, const float *x, const float *sc, const float *of,
                   int64_t ns, const float *gy, fq_result *r) {
    qt_step_reset(ctx);
    const int64_t shape[2] = {c->rows, c->cols}, n = c->rows * c->cols;
    bool learned = c->f.kind == QT_FQ_INT && c->f.scale_mode == QT_FQ_LEARNED;
    qt_tensor *xt = qt_param_new(ctx, QT_F32, 2, shape, true, "x"), *st = NULL, *ot = NULL;
    qt_tensor_upload(ctx, xt, x);
    if (learned) {
        st = qt_param_new(ctx, QT_F32, 1, &ns, true, "scale");
        qt_tensor_upload(ctx, st, sc);
        if (!c->f.symmetric) {
            ot = qt_param_new(ctx, QT_F32, 1, &ns, true, "offset");
            qt_tensor_upload(ctx, ot, of);
        }
    }
    qt_tensor *y = qt_fakequant(ctx, xt, &c->f, st, ot, learned ? QT_FQ_LSQ : QT_FQ_STE_CLIP);
    QT_CHECK(ctx->tape_len > 0, "the fake-quant node was not recorded");
    const qt_tensor *mt = ctx->tape[ctx->tape_len - 1].saved[0];
    qt_tensor *gyt = qt_tensor_new_like(ctx, y);
    qt_tensor_upload(ctx, gyt, gy);
    qt_backward_from(ctx, y, gyt);
    r->y = host_f32(ctx, y);
    r->gx = host_f32(ctx, xt->grad);
    r->gs = st ? host_f32(ctx, st->grad) : NULL;
    r->go = ot ? host_f32(ctx, ot->grad) : NULL;
    r->mask = malloc((size_t)(n + 7) / 8 + 1);
    QT_CHECK(r->mask, "out of host memory");
    qt_tensor_download(ctx, mt, r->mask);
}

static void fq_free(fq_result *r) {
    free(r->y), free(r->gx), free(r->gs), free(r->go), free(r->mask);
}

static int64_t bits_differ(const float *a, const float *b, int64_t n) {
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++) d += memcmp(&a[i], &b[i], 4) != 0;
    return d;
}

static void check_fakequant(qt_ctx *cpu, qt_ctx *gpu, const fqcase *c, uint64_t seed) {
    uint64_t s = seed;
    const int64_t shape[2] = {c->rows, c->cols}, n = c->rows * c->cols;
    bool learned = c->f.kind == QT_FQ_INT && c->f.scale_mode == QT_FQ_LEARNED;
    int64_t ns = learned ? qt_fq_num_scales(&c->f, 2, shape) : 0;
    QT_CHECK(qt_fq_check(&c->f, 2, shape) == 0, "fake-quant case %s: bad format", c->desc);
    float *x = fq_data(n, &s), *gy = malloc((size_t)n * sizeof *gy);
    float *sc = malloc((size_t)(ns + 1) * sizeof *sc), *of = malloc((size_t)(ns + 1) * sizeof *of);
    QT_CHECK(gy && sc && of, "out of host memory");
    for (int64_t i = 0; i < n; i++) gy[i] = (float)(2 * sm_unif(&s) - 1);
    if (learned) { /* scales that clip some elements: ~0.6 of each group's range */
        int qmin, qmax;
        qt_fq_range(&c->f, &qmin, &qmax);
        int64_t G = n / ns;
        for (int64_t k = 0; k < ns; k++) {
            float mx = 0, mn = 0;
            for (int64_t i = k * G; i < (k + 1) * G; i++)
                mx = fmaxf(mx, x[i]), mn = fminf(mn, x[i]);
            float span = c->f.symmetric ? fmaxf(mx, -mn) : mx - mn;
            sc[k] = 0.6f * (span > 0 ? span : 1.0f) / (float)qmax;
            of[k] = 0.8f * mn;
        }
    }
    fq_result rc, rg;
    fq_run(cpu, c, x, sc, of, ns, gy, &rc);
    fq_run(gpu, c, x, sc, of, ns, gy, &rg);
    int64_t dy = bits_differ(rg.y, rc.y, n), dgx = bits_differ(rg.gx, rc.gx, n), dm = 0;
    for (int64_t i = 0; i < n; i++) dm += ((rg.mask[i >> 3] ^ rc.mask[i >> 3]) >> (i & 7)) & 1;
    double es = 0, eo = 0;
    int ok = dy == 0 && dgx == 0 && dm == 0;
    for (int k = 0; k < 2 && learned; k++) {
        const float *a = k ? rg.go : rg.gs, *b = k ? rc.go : rc.gs;
        if (!a || !b) continue;
        double mx = 0, e = 0;
        for (int64_t j = 0; j < ns; j++) mx = fmax(mx, fabs(b[j]));
        for (int64_t j = 0; j < ns; j++) {
            double d = fabs((double)a[j] - b[j]);
            e = fmax(e, d / (mx > 0 ? mx : 1));
            if (!(d <= 1e-6 * fabs(b[j]) + 1e-6 * mx)) ok = 0;
        }
        if (k)
            eo = e;
        else
            es = e;
    }
    if (dy)
        for (int64_t i = 0, shown = 0; i < n && shown < 3; i++)
            if (memcmp(&rg.y[i], &rc.y[i], 4)) {
                fprintf(stderr, "    y[%lld]: gpu %.9g cpu %.9g (x %.9g)\n", (long long)i, rg.y[i],
                        rc.y[i], x[i]);
                shown++;
            }
    printf("  fakequant %-28s [%lld, %lld]: y %lld, mask %lld, dx %lld bits differ; dscale %.1e, "
           "doffset %.1e: %s\n",
           c->desc, (long long)c->rows, (long long)c->cols, (long long)dy, (long long)dm,
           (long long)dgx, es, eo, ok ? "ok" : "FAIL");
    QT_EXPECT(ok, "fakequant %s differs from the CPU (seed %llu)", c->desc,
              (unsigned long long)seed);
    fq_free(&rc);
    fq_free(&rg);
    free(x), free(gy), free(sc), free(of);
}

/* ---- timing ------------------------------------------------------------------------------- */

typedef struct {
    att_leaves L;
    int backward;
} timing_arg;

static void enqueue_step(qt_ctx *ctx, void *p) {
    timing_arg *a = p;
    qt_step_reset(ctx);
    qt_grad_zero(a->L.q);
    qt_grad_zero(a->L.k);
    qt_grad_zero(a->L.v);
    qt_tensor *o = qt_attention(ctx, a->L.q, a->L.k, a->L.v, a->L.doc, a->L.scale);
    if (a->backward) qt_backward_from(ctx, o, a->L.go);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void timing(qt_ctx *gpu, const acase c, uint64_t seed) {
    uint64_t s = seed;
    int64_t nq = (int64_t)c.B * c.T * c.Hq * c.hd, nkv = (int64_t)c.B * c.T * c.Hkv * c.hd;
    float *host[4] = {gauss_array(nq, 1.0, c.dt, &s), gauss_array(nkv, 1.0, c.dt, &s),
                      gauss_array(nkv, 1.0, c.dt, &s), gauss_array(nq, 1.0, c.dt, &s)};
    int32_t *doc = make_docs(c.B, c.T, &s);
    /* causal FLOPs: QK^T and PV, each 2 B Hq T^2 hd / 2; the backward recomputes QK^T and adds
     * dP, dV, dQ, dK: 2.5x the forward */
    double fwd_flop = 2.0 * 2.0 * c.B * c.Hq * (double)c.T * c.T * c.hd / 2.0;
    printf("  timing: B%d T%d Hq%d Hkv%d hd%d bf16, median of 10 after 3 warm-ups (CUDA "
           "events)\n",
           c.B, c.T, c.Hq, c.Hkv, c.hd);
    for (int withdoc = 0; withdoc < 2; withdoc++) {
        timing_arg a = {make_leaves(gpu, &c, c.dt, host, withdoc ? doc : NULL), 0};
        for (int bwd = 0; bwd < 2; bwd++) {
            a.backward = bwd;
            float ms[13];
            qt_cuda_time_ms(gpu, enqueue_step, &a, 13, ms);
            qsort(ms + 3, 10, sizeof(float), cmp_float);
            double med = 0.5 * (ms[3 + 4] + ms[3 + 5]);
            double flop = bwd ? 3.5 * fwd_flop : fwd_flop;
            printf("    %-18s %-9s %8.3f ms  (%.0f TFLOP/s causal-equivalent)\n",
                   bwd ? "forward+backward" : "forward", withdoc ? "docs" : "causal", med,
                   flop / (med * 1e-3) / 1e12);
        }
    }
    for (int i = 0; i < 4; i++) free(host[i]);
    free(doc);
}

int main(void) {
    if (!qt_cuda_available()) return qt_test_skip("gpu_attention", "no CUDA device found (no GPU)");
    const char *env = getenv("QT_SEED");
    uint64_t seed0 = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    static qt_ctx cpu, gpu;
    qt_err err = {0};
    QT_CHECK(qt_ctx_init(&cpu, QT_CPU, 1, NULL) == 0, "CPU context");
    if (qt_ctx_init(&gpu, QT_CUDA, 1, &err) != 0) {
        fprintf(stderr, "gpu_attention: a GPU is present but the CUDA context failed: %s\n",
                err.msg);
        QT_EXPECT(0, "CUDA context creation");
        qt_ctx_free(&cpu);
        return qt_test_finish("gpu_attention");
    }
    printf("gpu_attention: %s; seed %llu (set QT_SEED to replay)\n",
           qt_cuda_device_name((qt_cuda_ctx *)gpu.cuda), (unsigned long long)seed0);
    const char *quick_env = getenv("QT_QUICK");
    int quick = quick_env && atoi(quick_env) != 0;
    double worst[2] = {0, 0};
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        if (quick && cases[i].T > 512) continue;
        acase c = cases[i];
        if (quick) { /* small: a sanitizer runs this */
            c.T = c.T > 200 ? 130 : c.T;
            c.B = 1;
        }
        check_case(&cpu, &gpu, &c, seed0 * 7919u + (uint64_t)i, worst);
    }
    printf("gpu_attention: largest normalised error: f32 %.2e, 16-bit %.2e\n", worst[0], worst[1]);
    int nf = (int)(sizeof fq_cases / sizeof fq_cases[0]);
    for (int i = 0; i < nf; i++)
        check_fakequant(&cpu, &gpu, &fq_cases[i], seed0 * 104729u + (uint64_t)i);
    if (!quick) { /* the benchmark's shapes: Llama-3.2-1B and Llama-2-7B */
        timing(&gpu, (acase){4, 2048, 32, 8, 64, QT_BF16, 0}, seed0 + 17);
        timing(&gpu, (acase){2, 2048, 32, 32, 128, QT_BF16, 0}, seed0 + 18);
    }
    qt_ctx_free(&gpu);
    qt_ctx_free(&cpu);
    return qt_test_finish("gpu_attention");
}

#endif
