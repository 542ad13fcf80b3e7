/* test_gpu_nf4.c - the GPU's NF4 base layer and matmul beyond the parity suite (label gpu).
 *
 *   dequant     random NF4 weights (odd counts, more than 256 blocks, block sizes 32..4096,
 *               plain and double-quantized, f32/bf16/f16 originals, an all-zero block) are
 *               dequantized on the GPU into f32, bf16 and f16 storage, with every tile size of
 *               the vectorized kernel and through the byte kernel (unaligned codes or output):
 *               the bytes must equal the CPU's values (autograd/ops_nf4.c's path through
 *               quant/nf4.c, rounded to the weight's dtype, then to the storage dtype) exactly.
 *   matmul      f32 and bf16 storage (the parity suite's bf16 section covers the elementwise
 *               ops only), shapes up to [300 x 200] x [200 x 500]: every geometry (transposes,
 *               batched, a shared right operand flattened or run per batch, an operand used
 *               twice so that its gradient accumulates) forward and backward, against a
 *               double-precision host reference rounded the way the GPU stores (once, or after
 *               each contribution where it accumulates in storage). Every case runs twice:
 *               the two results must be bit-identical.
 *   nf4_matmul  f32 and bf16 activations against the host reference with the CPU's dequantized
 *               weight (rounded to bf16 where the GPU's scratch is bf16); x used twice so that
 *               its gradient accumulates.
 *   bandwidth   the dequantization of an 11008 x 4096 double-quantized weight into bf16 and
 *               f32: (bytes read + bytes written) / time, median of 20 after 3 warm-ups
 *               (CUDA events around each call), next to a device-to-device copy of the bf16
 *               output's size measured the same way. A measurement, not an assertion.
 * Tolerances (|gpu - ref| <= rtol |ref| + afrac max|ref|): f32 1e-5 / 1e-6, bf16 1e-2 / 1e-3.
 * Without a CUDA build or a GPU: SKIPPED, exit 77. QT_SEED replays the random data;
 * QT_NF4_NO_BENCH=1 leaves the bandwidth run out (under compute-sanitizer). */
#include <stdio.h>

#include "qt_test.h"

#ifndef QT_HAVE_CUDA

int main(void) {
    return qt_test_skip("gpu_nf4", "this build has no CUDA backend (QTUNE_CUDA=OFF) (no GPU)");
}

#else

#include <stdint.h>
#include <time.h>

#include "autograd/kernels.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_ops.h"
#include "quant/half.h"
#include "quant/nf4.h"
#include "qt_rand.h"

/* ---- storage rounding on the host ---------------------------------------------------------- */

static float round_to(qt_dtype dt, double v) {
    float f = (float)v;
    if (dt == QT_BF16) return qt_bf16_to_f32(qt_f32_to_bf16(f));
    if (dt == QT_F16) return qt_f16_to_f32(qt_f32_to_f16(f));
    return f;
}

/* n floats into dt's bytes (out: n * size of dt) */
static void encode(qt_dtype dt, const float *x, int64_t n, void *out) {
    for (int64_t i = 0; i < n; i++) {
        if (dt == QT_F32) {
            memcpy((char *)out + 4 * i, &x[i], 4);
        } else {
            uint16_t h = dt == QT_BF16 ? qt_f32_to_bf16(x[i]) : qt_f32_to_f16(x[i]);
            memcpy((char *)out + 2 * i, &h, 2);
        }
    }
}

static float *download_f32(qt_ctx *ctx, const qt_tensor *t) {
    int64_t n = qt_numel(t);
    size_t es = qt_dtype_size(t->dtype);
    unsigned char *raw = malloc((size_t)(n ? n : 1) * es);
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    QT_CHECK(raw && f, "out of host memory");
    qt_tensor_download(ctx, t, raw);
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        if (t->dtype == QT_F32) {
            memcpy(&f[i], raw + 4 * i, 4);
            continue;
        }
        memcpy(&h, raw + 2 * i, 2);
        f[i] = t->dtype == QT_BF16 ? qt_bf16_to_f32(h) : qt_f16_to_f32(h);
    }
    free(raw);
    return f;
}

/* largest normalised error max|d| / max|ref|; *ok = all within rtol |ref| + afrac max|ref| */
static double compare(const char *what, const float *got, const double *ref, int64_t n, double rtol,
                      double afrac, int *ok) {
    double refmax = 0, maxd = 0;
    for (int64_t i = 0; i < n; i++) refmax = fmax(refmax, fabs(ref[i]));
    double atol = afrac * refmax + 1e-30;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!isnan(d)) maxd = fmax(maxd, d);
        if (isnan(d) || d > atol + rtol * fabs(ref[i])) {
            if (bad++ < 3)
                fprintf(stderr, "    %s[%lld]: gpu %.9g ref %.9g (|d| %.3g, allowed %.3g)\n", what,
                        (long long)i, got[i], ref[i], d, atol + rtol * fabs(ref[i]));
        }
    }
    *ok = bad == 0;
    return refmax > 0 ? maxd / refmax : maxd;
}

static int bytes_equal(qt_ctx *ctx, const qt_tensor *t, const void *host) {
    size_t n = qt_nbytes(t);
    unsigned char *x = malloc(n ? n : 1);
    qt_tensor_download(ctx, t, x);
    int eq = memcmp(x, host, n) == 0;
    free(x);
    return eq;
}

/* ---- NF4 weights ------------------------------------------------------------------------- */

typedef struct {
    int64_t out, in;
    int bs, nested, wdtype;
} nf4_cfg;

typedef struct {
    qt_nf4_tensor t; /* the host pieces */
    qt_nf4_weight w; /* the same pieces on the GPU */
    float *ref;      /* [out * in] the CPU op's values (rounded to the weight's dtype) */
} nf4_case;

static void nf4_make(qt_ctx *gpu, const nf4_cfg *c, uint64_t seed, nf4_case *k) {
    int64_t n = c->out * c->in;
    float *x = malloc((size_t)n * sizeof *x);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    QT_CHECK(x && h, "out of host memory");
    uint64_t s = seed | 1;
    for (int64_t r = 0; r < c->out; r++) {
        double scale = 0.05 * (1 + r % 7); /* rows of different spread: varied block scales */
        for (int64_t j = 0; j < c->in; j++) x[r * c->in + j] = (float)(scale * gauss(&s));
    }
    for (int64_t i = 0; i < n && i < 64; i++) x[i] = 0.0f; /* an all-zero first block */
    const void *src = x;
    if (c->wdtype != QT_NF4_F32) {
        for (int64_t i = 0; i < n; i++)
            h[i] = c->wdtype == QT_NF4_BF16 ? qt_f32_to_bf16(x[i]) : qt_f32_to_f16(x[i]);
        src = h;
    }
    int64_t shape[2] = {c->out, c->in};
    QT_CHECK(qt_nf4_tensor_quantize(&k->t, src, (qt_nf4_dtype)c->wdtype, 2, shape, c->bs,
                                    c->nested) == 0,
             "nf4 quantize");
    /* the CPU op's values: autograd/ops_nf4.c's dequant_scratch */
    int64_t nb = k->t.nblocks;
    float *absmax = malloc((size_t)nb * sizeof *absmax);
    k->ref = malloc((size_t)n * sizeof *k->ref);
    QT_CHECK(absmax && k->ref, "out of host memory");
    if (c->nested)
        qt_nf4_dq_decompress(k->t.absmax_q, k->t.nested_absmax, nb, k->t.offset, absmax);
    else
        memcpy(absmax, k->t.absmax, (size_t)nb * sizeof *absmax);
    qt_nf4_dequantize_f32(k->t.data, absmax, n, c->bs, k->ref);
    for (int64_t i = 0; i < n; i++) {
        if (c->wdtype == QT_NF4_BF16) k->ref[i] = qt_bf16_to_f32(qt_f32_to_bf16(k->ref[i]));
        if (c->wdtype == QT_NF4_F16) k->ref[i] = qt_f16_to_f32(qt_f32_to_f16(k->ref[i]));
    }
    free(absmax);

    qt_nf4_weight *w = &k->w;
    memset(w, 0, sizeof *w);
    w->out = c->out, w->in = c->in, w->blocksize = c->bs, w->dtype = c->wdtype;
    int64_t nc = (n + 1) / 2;
    w->codes = qt_param_new(gpu, QT_U8, 1, &nc, false, "codes");
    qt_tensor_upload(gpu, w->codes, k->t.data);
    if (c->nested) {
        int64_t nn = k->t.nested_nblocks;
        w->absmax_q = qt_param_new(gpu, QT_U8, 1, &nb, false, "absmax_q");
        qt_tensor_upload(gpu, w->absmax_q, k->t.absmax_q);
        w->nested_absmax = qt_param_new(gpu, QT_F32, 1, &nn, false, "nested_absmax");
        qt_tensor_upload(gpu, w->nested_absmax, k->t.nested_absmax);
        w->offset = k->t.offset;
    } else {
        w->absmax = qt_param_new(gpu, QT_F32, 1, &nb, false, "absmax");
        qt_tensor_upload(gpu, w->absmax, k->t.absmax);
    }
    free(x);
    free(h);
}

static void nf4_free(nf4_case *k) {
    qt_nf4_tensor_free(&k->t);
    free(k->ref);
}

/* ---- dequantization: bit for bit -------------------------------------------------------- */

static const char *wname(int wdtype) {
    return wdtype == QT_NF4_BF16 ? "bf16" : wdtype == QT_NF4_F16 ? "f16" : "f32";
}

/* layouts: 0..2 the tile kernel with 1, 2, 4 loads per lane; 3 codes one byte off 16-byte
 * alignment; 4 the output one element off (both: the byte kernel) */
static void dequant_check(qt_ctx *gpu, const nf4_cfg *c, uint64_t seed) {
    nf4_case k;
    nf4_make(gpu, c, seed, &k);
    int64_t n = c->out * c->in, nc = (n + 1) / 2;
    /* a codes tensor whose data starts one byte past an aligned allocation */
    int64_t nc1 = nc + 1;
    qt_tensor *shifted = qt_param_new(gpu, QT_U8, 1, &nc1, false, "codes+1");
    unsigned char *hc = malloc((size_t)nc1);
    hc[0] = 0xa5;
    memcpy(hc + 1, k.t.data, (size_t)nc);
    qt_tensor_upload(gpu, shifted, hc);
    qt_tensor codes1 = *shifted;
    codes1.shape[0] = nc;
    codes1.data = (char *)shifted->data + 1;

    static const qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    int all = 1;
    for (int d = 0; d < 3; d++) {
        qt_dtype dt = dts[d];
        size_t es = qt_dtype_size(dt);
        unsigned char *want = malloc((size_t)n * es);
        float *r = malloc((size_t)n * sizeof *r);
        for (int64_t i = 0; i < n; i++) r[i] = round_to(dt, k.ref[i]);
        encode(dt, r, n, want);
        int64_t n1 = n + 1;
        for (int layout = 0; layout < 5; layout++) {
            qt_step_reset(gpu);
            qt_tensor *o = qt_tensor_new(gpu, dt, 1, &n1);
            qt_cuda_fill_bytes((qt_cuda_ctx *)gpu->cuda, o->data, 0xff, qt_nbytes(o));
            qt_nf4_weight w = k.w;
            if (layout == 3) w.codes = &codes1;
            qt_tensor view = *o;
            view.shape[0] = n;
            if (layout == 4) view.data = (char *)o->data + es;
            qt_cuda_nf4_dequant_ex(gpu, &w, dt, view.data, layout < 3 ? 1 << layout : 0);
            int eq = bytes_equal(gpu, &view, want);
            QT_EXPECT(eq, "dequant %lldx%lld bs%d %s %s -> %s layout %d: GPU bytes differ",
                      (long long)c->out, (long long)c->in, c->bs, c->nested ? "dq" : "plain",
                      wname(c->wdtype), qt_dtype_name(dt), layout);
            all &= eq;
        }
        free(want);
        free(r);
    }
    printf("  dequant %5lldx%-5lld bs%-4d %-5s %-4s (%lld blocks) -> f32/bf16/f16, 5 layouts: %s\n",
           (long long)c->out, (long long)c->in, c->bs, c->nested ? "dq" : "plain", wname(c->wdtype),
           (long long)k.t.nblocks, all ? "bit-exact" : "FAIL");
    free(hc);
    nf4_free(&k);
}

/* ---- matmul against a double reference ------------------------------------------------------ */

typedef struct {
    int an, bn;
    int64_t a[3], b[3];
    int ta, tb;
    int self; /* a used as both operands: matmul(a, a) */
} mm_cfg;

typedef struct {
    int64_t batch, M, N, K;
    int shared, ta, tb;
} mm_geom;

static mm_geom geom(const mm_cfg *c) {
    mm_geom g = {.ta = c->ta, .tb = c->tb, .shared = c->bn == 2};
    int64_t ar = c->a[c->an - 2], ac = c->a[c->an - 1];
    int64_t br = c->b[c->bn - 2], bc = c->b[c->bn - 1];
    g.M = c->ta ? ac : ar;
    g.K = c->ta ? ar : ac;
    g.N = c->tb ? br : bc;
    g.batch = c->an == 3 ? c->a[0] : 1;
    return g;
}

static int64_t numel_of(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= s[i];
    return n;
}

/* element (m, k) of Ā_i and (k, n) of B̄_i */
static double abar(const mm_geom *g, const float *A, int64_t i, int64_t m, int64_t k) {
    const float *a = A + i * g->M * g->K;
    return g->ta ? a[k * g->M + m] : a[m * g->K + k];
}
static double bbar(const mm_geom *g, const float *B, int64_t i, int64_t k, int64_t n) {
    const float *b = g->shared ? B : B + i * g->K * g->N;
    return g->tb ? b[n * g->K + k] : b[k * g->N + n];
}

/* C, dA, dB of one case (a, b, gc host values already rounded to the storage dtype dt),
 * rounded where the GPU stores partial results: a shared right operand's gradient summed per
 * batch in storage (ta), and self's second contribution added to the stored first. */
static void mm_reference(const mm_cfg *c, qt_dtype dt, const float *A, const float *B,
                         const float *GC, double *C, double *dA, double *dB) {
    mm_geom g = geom(c);
    for (int64_t i = 0; i < g.batch; i++)
        for (int64_t m = 0; m < g.M; m++)
            for (int64_t n = 0; n < g.N; n++) {
                double s = 0;
                for (int64_t k = 0; k < g.K; k++)
                    s += abar(&g, A, i, m, k) * bbar(&g, B, i, k, n);
                C[(i * g.M + m) * g.N + n] = s;
            }
    /* dA: dĀ[m, k] = Σ_n dC[m, n] B̄[k, n], stored transposed when ta */
    for (int64_t i = 0; i < g.batch; i++)
        for (int64_t m = 0; m < g.M; m++)
            for (int64_t k = 0; k < g.K; k++) {
                double s = 0;
                for (int64_t n = 0; n < g.N; n++)
                    s += (double)GC[(i * g.M + m) * g.N + n] * bbar(&g, B, i, k, n);
                int64_t at = g.ta ? k * g.M + m : m * g.K + k;
                dA[i * g.M * g.K + at] = s;
            }
    /* dB: dB̄[k, n] = Σ_m Ā[m, k] dC[m, n] per batch (summed over batches when shared) */
    double *acc = calloc((size_t)(g.K * g.N), sizeof *acc);
    for (int64_t i = 0; i < g.batch; i++) {
        for (int64_t k = 0; k < g.K; k++)
            for (int64_t n = 0; n < g.N; n++) {
                double s = 0;
                for (int64_t m = 0; m < g.M; m++)
                    s += abar(&g, A, i, m, k) * (double)GC[(i * g.M + m) * g.N + n];
                int64_t bt = g.tb ? n * g.K + k : k * g.N + n;
                if (!g.shared)
                    dB[i * g.K * g.N + bt] = s;
                else if (g.ta) /* per batch, accumulated in storage */
                    acc[bt] = round_to(dt, (i ? acc[bt] : 0.0) + s);
                else
                    acc[bt] += s;
            }
    }
    if (g.shared)
        for (int64_t j = 0; j < g.K * g.N; j++) dB[j] = acc[j];
    free(acc);
    if (c->self) /* a's gradient: dA (stored) + dB */
        for (int64_t j = 0; j < numel_of(c->an, c->a); j++)
            dA[j] = round_to(dt, round_to(dt, dA[j]) + dB[j]);
}

static float *rand_host(int64_t n, qt_dtype dt, uint64_t *s) {
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = round_to(dt, 2 * unif01(s) - 1);
    return x;
}

static qt_tensor *leaf(qt_ctx *ctx, qt_dtype dt, int nd, const int64_t *shape, const float *x,
                       bool rg, const char *name) {
    qt_tensor *t = qt_param_new(ctx, dt, nd, shape, rg, name);
    void *raw = malloc(qt_nbytes(t) ? qt_nbytes(t) : 1);
    encode(dt, x, qt_numel(t), raw);
    qt_tensor_upload(ctx, t, raw);
    free(raw);
    return t;
}

static void keep_bytes(qt_ctx *ctx, const qt_tensor *t, unsigned char **out) {
    *out = malloc(qt_nbytes(t) ? qt_nbytes(t) : 1);
    qt_tensor_download(ctx, t, *out);
}

static double tol_r(qt_dtype dt) {
    return dt == QT_BF16 ? 1e-2 : 1e-5;
}
static double tol_a(qt_dtype dt) {
    return dt == QT_BF16 ? 1e-3 : 1e-6;
}

static void matmul_check(qt_ctx *gpu, const mm_cfg *c, qt_dtype dt, uint64_t seed) {
    mm_geom g = geom(c);
    uint64_t s = seed | 1;
    int64_t na = numel_of(c->an, c->a), nb = numel_of(c->bn, c->b), nc = g.batch * g.M * g.N;
    float *A = rand_host(na, dt, &s), *B = c->self ? A : rand_host(nb, dt, &s);
    float *GC = rand_host(nc, dt, &s);
    double *C = malloc((size_t)nc * sizeof *C), *dA = malloc((size_t)na * sizeof *dA);
    double *dB = malloc((size_t)(c->self ? na : nb) * sizeof *dB);
    mm_reference(c, dt, A, B, GC, C, dA, dB);
    for (int64_t i = 0; i < nc; i++) C[i] = round_to(dt, C[i]);
    if (!c->self) {
        for (int64_t i = 0; i < na; i++) dA[i] = round_to(dt, dA[i]);
        for (int64_t i = 0; i < nb; i++) dB[i] = round_to(dt, dB[i]);
    }

    qt_tensor *a = leaf(gpu, dt, c->an, c->a, A, true, "a");
    qt_tensor *b = c->self ? a : leaf(gpu, dt, c->bn, c->b, B, true, "b");
    unsigned char *first[3] = {0};
    int ok_all = 1, same = 1;
    double err = 0;
    for (int run = 0; run < 2; run++) {
        qt_step_reset(gpu);
        qt_grad_zero(a);
        qt_grad_zero(b);
        qt_tensor *y = qt_matmul(gpu, a, b, c->ta, c->tb);
        qt_tensor *gy = qt_tensor_new_like(gpu, y);
        void *raw = malloc(qt_nbytes(gy));
        encode(dt, GC, nc, raw);
        qt_tensor_upload(gpu, gy, raw);
        free(raw);
        qt_backward_from(gpu, y, gy);
        const qt_tensor *res[3] = {y, a->grad, c->self ? NULL : b->grad};
        if (run == 0) {
            int ok;
            float *got = download_f32(gpu, y);
            err = fmax(err, compare("matmul out", got, C, nc, tol_r(dt), tol_a(dt), &ok));
            ok_all &= ok;
            free(got);
            got = download_f32(gpu, a->grad);
            err = fmax(err, compare("matmul dA", got, dA, na, tol_r(dt), tol_a(dt), &ok));
            ok_all &= ok;
            free(got);
            if (!c->self) {
                got = download_f32(gpu, b->grad);
                err = fmax(err, compare("matmul dB", got, dB, nb, tol_r(dt), tol_a(dt), &ok));
                ok_all &= ok;
                free(got);
            }
            for (int j = 0; j < 3; j++)
                if (res[j]) keep_bytes(gpu, res[j], &first[j]);
        } else {
            for (int j = 0; j < 3; j++)
                if (res[j]) same &= bytes_equal(gpu, res[j], first[j]);
        }
    }
    QT_EXPECT(ok_all, "matmul %s a%lld b%lld ta=%d tb=%d: GPU differs from the reference (seed %llu)",
              qt_dtype_name(dt), (long long)na, (long long)nb, c->ta, c->tb,
              (unsigned long long)seed);
    QT_EXPECT(same, "matmul %s: two GPU runs differ", qt_dtype_name(dt));
    char shp[96];
    snprintf(shp, sizeof shp, "[%lld%s%lldx%lld]x[%lld%s%lldx%lld]%s",
             (long long)(c->an == 3 ? c->a[0] : 0), c->an == 3 ? "," : "", (long long)c->a[c->an - 2],
             (long long)c->a[c->an - 1], (long long)(c->bn == 3 ? c->b[0] : 0),
             c->bn == 3 ? "," : "", (long long)c->b[c->bn - 2], (long long)c->b[c->bn - 1],
             c->self ? " self" : "");
    printf("  matmul %-4s %-34s ta=%d tb=%d: max err %.1e (rtol %.0e), twice identical %s: %s\n",
           qt_dtype_name(dt), shp, c->ta, c->tb, err, tol_r(dt), same ? "yes" : "NO",
           ok_all && same ? "ok" : "FAIL");
    for (int j = 0; j < 3; j++) free(first[j]);
    free(A);
    if (!c->self) free(B);
    free(GC);
    free(C);
    free(dA);
    free(dB);
}

/* ---- nf4_matmul against the host reference ---------------------------------------------- */

static void nf4_matmul_check(qt_ctx *gpu, const nf4_cfg *c, int64_t rows, qt_dtype dt,
                             uint64_t seed) {
    nf4_case k;
    nf4_make(gpu, c, seed, &k);
    uint64_t s = seed ^ 0x9e3779b97f4a7c15ull;
    int64_t O = c->out, I = c->in, no = rows * O, nx = rows * I;
    float *X = rand_host(nx, dt, &s), *GY = rand_host(no, dt, &s);
    /* y = x Wᵀ + x Wᵀ (x used twice: its gradient is set, then accumulated) */
    double *Y = malloc((size_t)no * sizeof *Y), *GX = malloc((size_t)nx * sizeof *GX);
    float *W = malloc((size_t)(O * I) * sizeof *W);
    for (int64_t i = 0; i < O * I; i++) W[i] = round_to(dt, k.ref[i]); /* the GPU's scratch */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < O; o++) {
            double acc = 0;
            for (int64_t j = 0; j < I; j++) acc += (double)X[r * I + j] * W[o * I + j];
            float y1 = round_to(dt, acc);
            Y[r * O + o] = round_to(dt, (double)y1 + y1);
        }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < I; j++) {
            double acc = 0;
            for (int64_t o = 0; o < O; o++) acc += (double)GY[r * O + o] * W[o * I + j];
            float g1 = round_to(dt, acc);
            GX[r * I + j] = round_to(dt, (double)g1 + acc);
        }
    qt_step_reset(gpu);
    int64_t xs[2] = {rows, I};
    qt_tensor *x = leaf(gpu, dt, 2, xs, X, true, "x");
    qt_tensor *y = qt_add(gpu, qt_nf4_matmul(gpu, x, &k.w), qt_nf4_matmul(gpu, x, &k.w));
    qt_tensor *gy = qt_tensor_new_like(gpu, y);
    void *raw = malloc(qt_nbytes(gy));
    encode(dt, GY, no, raw);
    qt_tensor_upload(gpu, gy, raw);
    free(raw);
    qt_backward_from(gpu, y, gy);
    int ok1, ok2;
    float *got = download_f32(gpu, y);
    double e1 = compare("nf4_matmul out", got, Y, no, tol_r(dt), tol_a(dt), &ok1);
    free(got);
    got = download_f32(gpu, x->grad);
    double e2 = compare("nf4_matmul dx", got, GX, nx, tol_r(dt), tol_a(dt), &ok2);
    free(got);
    QT_EXPECT(ok1 && ok2, "nf4_matmul %s %lldx%lld: GPU differs from the reference (seed %llu)",
              qt_dtype_name(dt), (long long)O, (long long)I, (unsigned long long)seed);
    printf("  nf4_matmul %-4s x[%lld,%lld] W %lldx%lld bs%d %s %s: out %.1e, dx %.1e (rtol %.0e): "
           "%s\n",
           qt_dtype_name(dt), (long long)rows, (long long)I, (long long)O, (long long)I, c->bs,
           c->nested ? "dq" : "plain", wname(c->wdtype), e1, e2, tol_r(dt),
           ok1 && ok2 ? "ok" : "FAIL");
    free(X);
    free(GY);
    free(Y);
    free(GX);
    free(W);
    nf4_free(&k);
}

/* ---- bandwidth ---------------------------------------------------------------------------- */

typedef struct {
    const qt_nf4_weight *w;
    qt_dtype dt;
    void *out;
    int loads;
    void *src; /* copy: src -> out, bytes */
    size_t bytes;
} bench_arg;

static void enqueue_dequant(qt_ctx *ctx, void *p) {
    bench_arg *b = p;
    qt_cuda_nf4_dequant_ex(ctx, b->w, b->dt, b->out, b->loads);
}

static void enqueue_copy(qt_ctx *ctx, void *p) {
    bench_arg *b = p;
    qt_cuda_copy_d2d((qt_cuda_ctx *)ctx->cuda, b->out, b->src, b->bytes);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* median ms of 20 timed calls after 3 warm-ups */
static float median_ms(qt_ctx *gpu, void (*fn)(qt_ctx *, void *), bench_arg *b) {
    float ms[23];
    qt_cuda_time_ms(gpu, fn, b, 23, ms);
    qsort(ms + 3, 20, sizeof(float), cmp_float);
    return 0.5f * (ms[3 + 9] + ms[3 + 10]);
}

static void bandwidth(qt_ctx *gpu, uint64_t seed) {
    nf4_cfg c = {11008, 4096, 64, 1, QT_NF4_BF16};
    nf4_case k;
    nf4_make(gpu, &c, seed, &k);
    free(k.ref);
    k.ref = NULL;
    int64_t n = c.out * c.in;
    /* read: the codes, the 8-bit block scales, the nested absmax */
    double rd = (double)((n + 1) / 2) + (double)k.t.nblocks + 4.0 * (double)k.t.nested_nblocks;
    qt_step_reset(gpu);
    void *out = qt_arena_alloc(&gpu->data, (size_t)n * 4);
    void *src = qt_arena_alloc(&gpu->data, (size_t)n * 2);
    QT_CHECK(out && src, "out of device memory for the bandwidth run");
    qt_cuda_memset0((qt_cuda_ctx *)gpu->cuda, src, (size_t)n * 2);
    bench_arg cp = {.out = out, .src = src, .bytes = (size_t)n * 2};
    float tc = median_ms(gpu, enqueue_copy, &cp);
    double copy_gbs = 2.0 * (double)n * 2 / (tc * 1e-3) / 1e9;
    printf("  bandwidth: %s\n", qt_cuda_device_name((qt_cuda_ctx *)gpu->cuda));
    printf("  bandwidth: device copy of %.1f MB: %.1f us, %.0f GB/s (read + written)\n",
           (double)n * 2 / 1e6, tc * 1e3, copy_gbs);
    static const qt_dtype dts[2] = {QT_BF16, QT_F32};
    for (int d = 0; d < 2; d++)
        for (int loads = 1; loads <= 4; loads *= 2) {
            bench_arg b = {.w = &k.w, .dt = dts[d], .out = out, .loads = loads};
            float t = median_ms(gpu, enqueue_dequant, &b);
            double bytes = rd + (double)n * (double)qt_dtype_size(dts[d]);
            double gbs = bytes / (t * 1e-3) / 1e9;
            printf("  bandwidth: NF4+DQ dequant 11008x4096 -> %-4s tile %d x16B/lane%s: %.1f us, "
                   "%.1f MB moved, %.0f GB/s (%.0f%% of copy)\n",
                   qt_dtype_name(dts[d]), loads, loads == 1 ? " (default)" : "", t * 1e3,
                   bytes / 1e6, gbs, 100.0 * gbs / copy_gbs);
        }
    nf4_free(&k);
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(void) {
    if (!qt_cuda_available()) return qt_test_skip("gpu_nf4", "no CUDA device found (no GPU)");
    const char *env = getenv("QT_SEED");
    uint64_t seed0 = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    static qt_ctx gpu;
    qt_err err = {0};
    if (qt_ctx_init(&gpu, QT_CUDA, 1, &err) != 0) {
        fprintf(stderr, "gpu_nf4: a GPU is present but the CUDA context failed: %s\n", err.msg);
        QT_EXPECT(0, "CUDA context creation");
        return qt_test_finish("gpu_nf4");
    }
    printf("gpu_nf4: %s; seed %llu (set QT_SEED to replay)\n",
           qt_cuda_device_name((qt_cuda_ctx *)gpu.cuda), (unsigned long long)seed0);

    static const nf4_cfg dq[] = {
        {7, 9, 32, 1, QT_NF4_BF16},       /* 63 elements: odd, the pad nibble */
        {8, 16, 64, 1, QT_NF4_F32},       {33, 300, 64, 1, QT_NF4_BF16},
        {100, 300, 64, 1, QT_NF4_F32},    /* 469 blocks: two nested blocks */
        {257, 1031, 64, 1, QT_NF4_F16},   /* odd count, whole tiles and a tail */
        {512, 1024, 128, 0, QT_NF4_F32},  /* plain absmax, whole tiles only */
        {300, 700, 32, 1, QT_NF4_BF16},   /* 32-element blocks: 64 per 2048-element tile */
        {96, 2048, 2048, 0, QT_NF4_BF16}, {64, 4096, 4096, 1, QT_NF4_BF16}, /* block > tile */
        {1111, 1777, 256, 1, QT_NF4_F32}, /* 1,974,247 elements, 7712 blocks */
    };
    for (size_t i = 0; i < sizeof dq / sizeof dq[0]; i++) dequant_check(&gpu, &dq[i], seed0 + i);

    static const mm_cfg mm[] = {
        {2, 2, {3, 5}, {5, 4}, 0, 0, 0},
        {2, 2, {7, 3}, {6, 3}, 0, 1, 0},
        {2, 2, {5, 3}, {5, 4}, 1, 0, 0},
        {2, 2, {5, 3}, {2, 5}, 1, 1, 0},
        {3, 3, {2, 3, 4}, {2, 4, 5}, 0, 0, 0},
        {3, 3, {2, 4, 3}, {2, 5, 4}, 1, 1, 0},
        {3, 2, {3, 5, 7}, {6, 7}, 0, 1, 0},
        {3, 2, {2, 7, 5}, {7, 3}, 1, 0, 0},
        {2, 2, {300, 200}, {200, 500}, 0, 0, 0},
        {2, 2, {256, 512}, {384, 512}, 0, 1, 0},
        {2, 2, {129, 67}, {129, 93}, 1, 0, 0},
        {3, 3, {2, 64, 96}, {2, 80, 96}, 0, 1, 0},
        {3, 3, {5, 33, 17}, {5, 33, 40}, 1, 0, 0},
        {3, 3, {3, 40, 24}, {3, 56, 40}, 1, 1, 0},
        {3, 2, {4, 37, 129}, {129, 65}, 0, 0, 0}, /* shared b: one flattened GEMM */
        {3, 2, {3, 129, 37}, {65, 129}, 1, 1, 0}, /* shared b, ta: per batch, dB summed */
        {3, 2, {3, 64, 31}, {64, 48}, 1, 0, 0},
        {2, 2, {37, 50}, {37, 50}, 0, 1, 1}, /* a · aᵀ: a's gradient accumulates */
    };
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++)
            matmul_check(&gpu, &mm[i], d ? QT_BF16 : QT_F32, seed0 * 31 + i + 100 * d);

    static const struct {
        nf4_cfg c;
        int64_t rows;
    } nm[] = {
        {{96, 200, 64, 1, QT_NF4_F32}, 37},
        {{256, 512, 64, 1, QT_NF4_BF16}, 64},
        {{7, 9, 32, 1, QT_NF4_BF16}, 5},
        {{130, 260, 128, 0, QT_NF4_F16}, 19},
    };
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof nm / sizeof nm[0]; i++)
            nf4_matmul_check(&gpu, &nm[i].c, nm[i].rows, d ? QT_BF16 : QT_F32,
                             seed0 * 17 + i + 100 * d);

    if (!getenv("QT_NF4_NO_BENCH")) /* set under compute-sanitizer: timings mean nothing there */
        bandwidth(&gpu, seed0);
    qt_ctx_free(&gpu);
    return qt_test_finish("gpu_nf4");
}

#endif
