/* test_quant_fakequant.c - the fake-quant op's pure functions: deployment-exact formats equal
 * their codec's dequant(quant(x)) bit for bit; intN formats round-trip within half a step
 * (dynamic scales); scale layouts per tensor / channel / group / token; the clip mask at the
 * edges (exactly on, one ulp inside, one ulp outside); STE; LSQ / LSQ+ gradients against
 * finite differences of their surrogate s * clamp(t + c, qmin, qmax) (+ offset) with the
 * rounding residue c = rint(t0) - t0 frozen at the evaluation point, computed in double. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qt_rand.h"
#include "qt_test.h"
#include "quant/fakequant.h"
#include "quant/gguf_blocks.h"
#include "quant/nf4.h"

static int bit(const uint8_t *m, int64_t i) {
    return m[i >> 3] >> (i & 7) & 1;
}

static void test_exact_codecs(void) {
    int64_t shape[2] = {24, 512}, n = 24 * 512;
    float *x = malloc(n * 4), *y = malloc(n * 4), *r = malloc(n * 4);
    uint8_t *blk = malloc(n * 2), *mask = malloc(n / 8 + 1);
    for (int d = 0; d < 2; d++) {
        fill(x, n, d, 5 + (uint64_t)d);
        x[17] = 0.9f; /* an outlier */
        struct {
            qt_fq_kind k;
            qt_gguf_type t;
        } g[3] = {
            {QT_FQ_Q4_0, QT_GGUF_Q4_0}, {QT_FQ_Q8_0, QT_GGUF_Q8_0}, {QT_FQ_Q4_K, QT_GGUF_Q4_K}};
        for (int k = 0; k < 3; k++) {
            qt_fq_format f = {.kind = g[k].k};
            QT_EXPECT(qt_fq_forward(&f, x, 2, shape, NULL, NULL, y, mask) == 0, "forward");
            for (int64_t row = 0; row < shape[0]; row++) { /* the codec, one row at a time */
                qt_gguf_quantize_row(g[k].t, x + row * 512, blk, 512);
                qt_gguf_dequantize_row(g[k].t, blk, r + row * 512, 512);
            }
            QT_EXPECT(!memcmp(y, r, n * 4), "%s fake-quant is bitwise the codec",
                      qt_gguf_type_name(g[k].t));
        }
        for (int nested = 0; nested < 2; nested++)
            for (int bs = 64; bs <= 128; bs *= 2) {
                int64_t odd[1] = {n - 3};
                qt_fq_format f = {.kind = QT_FQ_NF4, .blocksize = bs, .nf4_plain = !nested};
                QT_EXPECT(qt_fq_forward(&f, x, 1, odd, NULL, NULL, y, mask) == 0, "nf4 fwd");
                qt_nf4_tensor t;
                qt_nf4_tensor_quantize(&t, x, QT_NF4_F32, 1, odd, bs, nested);
                qt_nf4_tensor_dequantize_f32(&t, r);
                QT_EXPECT(!memcmp(y, r, (n - 3) * 4), "NF4 (block %d, nested %d) is the codec", bs,
                          nested);
                qt_nf4_tensor_free(&t);
            }
    }
    /* in place */
    qt_fq_format f = {.kind = QT_FQ_Q4_0};
    memcpy(y, x, n * 4);
    qt_fq_forward(&f, y, 2, shape, NULL, NULL, y, NULL);
    qt_fq_forward(&f, x, 2, shape, NULL, NULL, r, NULL);
    QT_EXPECT(!memcmp(y, r, n * 4), "y may alias x");
    int64_t bad[2] = {2, 100};
    QT_EXPECT(qt_fq_forward(&f, x, 2, bad, NULL, NULL, y, NULL) == QT_Q_EARG, "Q4_0 cols 100");
    f.kind = QT_FQ_Q4_K;
    int64_t bad2[2] = {2, 128};
    QT_EXPECT(qt_fq_forward(&f, x, 2, bad2, NULL, NULL, y, NULL) == QT_Q_EARG, "Q4_K cols 128");
    free(x);
    free(y);
    free(r);
    free(blk);
    free(mask);
}

static void test_int_dynamic(void) {
    int64_t shape[3] = {4, 6, 64}, n = 4 * 6 * 64;
    float *x = malloc(n * 4), *y = malloc(n * 4), sc[24 * 8], off[24 * 8];
    uint8_t mask[n / 8];
    fill(x, n, 1, 21);
    static const qt_fq_granularity gr[4] = {QT_FQ_PER_TENSOR, QT_FQ_PER_CHANNEL, QT_FQ_PER_GROUP,
                                            QT_FQ_PER_TOKEN};
    static const int64_t nsc[4] = {1, 24, 24 * 8, 24};
    for (int sym = 0; sym < 2; sym++)
        for (int bits = 2; bits <= 8; bits += 2)
            for (int g = 0; g < 4; g++) {
                qt_fq_format f = {.kind = QT_FQ_INT,
                                  .bits = bits,
                                  .symmetric = sym,
                                  .granularity = gr[g],
                                  .group = 8};
                QT_EXPECT(qt_fq_num_scales(&f, 3, shape) == nsc[g], "num scales");
                memset(mask, 0, sizeof mask);
                QT_EXPECT(qt_fq_forward(&f, x, 3, shape, sc, off, y, mask) == 0, "forward");
                int qmin, qmax;
                qt_fq_range(&f, &qmin, &qmax);
                int64_t G = n / nsc[g];
                int ok = 1, scale_ok = 1, levels_ok = 1, mask_ok = 1;
                for (int64_t j = 0; j < nsc[g]; j++) {
                    float amax = 0, mn = x[j * G], mx = x[j * G];
                    for (int64_t i = j * G; i < (j + 1) * G; i++) {
                        amax = fmaxf(amax, fabsf(x[i]));
                        mn = fminf(mn, x[i]);
                        mx = fmaxf(mx, x[i]);
                    }
                    float s = sym ? amax / (float)qmax : (mx - mn) / (float)qmax;
                    scale_ok &= sc[j] == s && (sym || off[j] == mn);
                    for (int64_t i = j * G; i < (j + 1) * G; i++) {
                        ok &= fabs((double)x[i] - y[i]) <= 0.5 * s * (1 + 1e-5) + 1e-12;
                        double q = sym ? y[i] / s : (y[i] - mn) / s; /* an integer level */
                        levels_ok &= fabs(q - rint(q)) < 1e-3 && rint(q) >= qmin && rint(q) <= qmax;
                        mask_ok &= bit(mask, i);
                    }
                }
                QT_EXPECT(ok, "int%d %s gran %d: |x - y| <= step/2", bits, sym ? "sym" : "asym", g);
                QT_EXPECT(scale_ok, "int%d gran %d: dynamic scales", bits, g);
                QT_EXPECT(levels_ok, "int%d gran %d: outputs on the grid", bits, g);
                QT_EXPECT(mask_ok, "dynamic scales clip nothing");
            }
    /* constant and zero groups are exact */
    for (int64_t i = 0; i < 64; i++) x[i] = 0.25f;
    for (int64_t i = 64; i < 128; i++) x[i] = 0.0f;
    qt_fq_format f = {.kind = QT_FQ_INT, .bits = 4, .symmetric = 0, .granularity = QT_FQ_PER_TOKEN};
    qt_fq_forward(&f, x, 3, shape, NULL, NULL, y, NULL);
    QT_EXPECT(y[5] == 0.25f && y[70] == 0.0f, "constant / zero rows exact (%g %g)", y[5], y[70]);
    f.symmetric = 1;
    qt_fq_forward(&f, x, 3, shape, NULL, NULL, y, NULL);
    QT_EXPECT(y[5] == 0.25f && y[70] == 0.0f, "symmetric constant / zero rows");
    /* int8 per token */
    fill(x, n, 0, 8);
    float y2[4 * 6 * 64], s8[24];
    QT_EXPECT(qt_fq_int8_per_token(x, 24, 64, y, s8) == 0, "int8 per token");
    f = (qt_fq_format){
        .kind = QT_FQ_INT, .bits = 8, .symmetric = 1, .granularity = QT_FQ_PER_TOKEN};
    qt_fq_forward(&f, x, 3, shape, NULL, NULL, y2, NULL);
    float a0 = 0;
    for (int i = 0; i < 64; i++) a0 = fmaxf(a0, fabsf(x[i]));
    QT_EXPECT(!memcmp(y, y2, n * 4) && s8[0] == a0 / 127.0f, "int8 per token = absmax/127");
    /* bad formats */
    f.bits = 1;
    QT_EXPECT(qt_fq_check(&f, 3, shape) == QT_Q_EARG, "bits 1");
    f.bits = 9;
    QT_EXPECT(qt_fq_check(&f, 3, shape) == QT_Q_EARG, "bits 9");
    f.bits = 4;
    f.granularity = QT_FQ_PER_GROUP;
    f.group = 48;
    QT_EXPECT(qt_fq_check(&f, 3, shape) == QT_Q_EARG, "group 48 does not divide 64");
    free(x);
    free(y);
}

static void test_mask_edges(void) {
    /* learned int4 symmetric, s = 0.5: grid -8..7, representable [-4, 3.5] */
    qt_fq_format f = {.kind = QT_FQ_INT,
                      .bits = 4,
                      .symmetric = 1,
                      .granularity = QT_FQ_PER_TENSOR,
                      .scale_mode = QT_FQ_LEARNED};
    float x[8] = {3.5f,  nextafterf(3.5f, 0.0f),  nextafterf(3.5f, 9.0f),
                  -4.0f, nextafterf(-4.0f, 0.0f), nextafterf(-4.0f, -9.0f),
                  3.74f, /* t = 7.48: rounds to 7 but lies past the edge: clipped */
                  0.26f};
    float s = 0.5f, y[8], gy[8] = {1, 2, 3, 4, 5, 6, 7, 8}, gx[8], gx2[8];
    uint8_t mask[1] = {0};
    int64_t shape[1] = {8};
    QT_EXPECT(qt_fq_forward(&f, x, 1, shape, &s, NULL, y, mask) == 0, "forward");
    static const int want[8] = {1, 1, 0, 1, 1, 0, 0, 1};
    for (int i = 0; i < 8; i++)
        QT_EXPECT(bit(mask, i) == want[i], "mask bit %d (x = %.9g) = %d", i, x[i], bit(mask, i));
    QT_EXPECT(y[0] == 3.5f && y[2] == 3.5f && y[3] == -4.0f && y[5] == -4.0f && y[6] == 3.5f &&
                  y[7] == 0.5f,
              "clamped values");
    qt_fq_backward_ste(gy, mask, 8, gx);
    for (int i = 0; i < 8; i++) QT_EXPECT(gx[i] == (want[i] ? gy[i] : 0.0f), "clipped STE %d", i);
    qt_fq_backward_ste(gy, NULL, 8, gx);
    QT_EXPECT(!memcmp(gx, gy, sizeof gx), "plain STE passes everything");
    float gs;
    qt_fq_backward_lsq(&f, x, 1, shape, &s, NULL, gy, gx2, &gs, NULL);
    for (int i = 0; i < 8; i++) QT_EXPECT(gx2[i] == (want[i] ? gy[i] : 0.0f), "LSQ gx %d", i);
    /* by hand: inside values contribute gy*(rint(t)-t), t = x/s; clipped ones gy*qmin/qmax */
    double acc = 0;
    for (int i = 0; i < 8; i++) {
        double t = (double)(x[i] / s);
        acc += want[i] ? gy[i] * (rint(t) - t) : gy[i] * (t < 0 ? -8.0 : 7.0);
    }
    double g = 1.0 / sqrt(8.0 * 7.0);
    QT_EXPECT_CLOSE(gs, acc * g, 1e-6, 1e-5, "LSQ scale gradient by hand, g = 1/sqrt(N*Qp)");

    /* learned asymmetric int3, s = 0.25, offset -0.5: grid 0..7 -> [-0.5, 1.25] */
    qt_fq_format fa = f;
    fa.bits = 3;
    fa.symmetric = 0;
    float sa = 0.25f, b = -0.5f,
          xa[6] = {
              -0.5f, nextafterf(-0.5f, -9.f), 1.25f, nextafterf(1.25f, 9.f), nextafterf(1.25f, 0.f),
              0.1f};
    int64_t sh6[1] = {6};
    qt_fq_forward(&fa, xa, 1, sh6, &sa, &b, y, mask);
    static const int wa[6] = {1, 0, 1, 0, 1, 1};
    for (int i = 0; i < 6; i++) QT_EXPECT(bit(mask, i) == wa[i], "asym mask bit %d", i);
    QT_EXPECT(y[1] == -0.5f && y[3] == 1.25f && y[5] == 0.0f, "asym clamp %g %g %g", y[1], y[3],
              y[5]);

    /* Q4_0's edge: with the block extreme -8 (d = 1), x = 7.5 gives (int8)(16.0) = 16 > 15;
     * so does 7.5 - 2^-21, since 16 - 2^-21 rounds (to even) to 16; 7.5 - 2^-20 stays inside */
    float xq[32];
    for (int i = 0; i < 32; i++) xq[i] = (float)(i % 15) - 7.0f;
    xq[0] = -8.0f;
    xq[1] = 7.5f;
    xq[2] = nextafterf(nextafterf(7.5f, 0.f), 0.f);
    xq[3] = nextafterf(7.5f, 9.f);
    xq[4] = 7.0f;
    qt_fq_format f40 = {.kind = QT_FQ_Q4_0};
    int64_t sh32[2] = {1, 32};
    uint8_t m4[4];
    float yq[32];
    qt_fq_forward(&f40, xq, 2, sh32, NULL, NULL, yq, m4);
    QT_EXPECT(bit(m4, 0) && !bit(m4, 1) && bit(m4, 2) && !bit(m4, 3) && bit(m4, 4),
              "Q4_0 mask at 7.5: %d %d %d %d %d", bit(m4, 0), bit(m4, 1), bit(m4, 2), bit(m4, 3),
              bit(m4, 4));
    QT_EXPECT(yq[1] == 7.0f && yq[3] == 7.0f && yq[2] == 7.0f, "Q4_0 clipped values");
    /* Q8_0 and NF4 never clip */
    qt_fq_format f8 = {.kind = QT_FQ_Q8_0}, fn = {.kind = QT_FQ_NF4};
    memset(m4, 0, 4);
    qt_fq_forward(&f8, xq, 2, sh32, NULL, NULL, yq, m4);
    QT_EXPECT(m4[0] == 0xff && m4[3] == 0xff, "Q8_0 mask all set");
    memset(m4, 0, 4);
    qt_fq_forward(&fn, xq, 2, sh32, NULL, NULL, yq, m4);
    QT_EXPECT(m4[0] == 0xff && m4[3] == 0xff, "NF4 mask all set");
    /* learned scales must be positive */
    float zero = 0.0f;
    QT_EXPECT(qt_fq_forward(&f, x, 1, shape, &zero, NULL, y, NULL) == QT_Q_EARG, "s = 0");
    QT_EXPECT(qt_fq_forward(&f, x, 1, shape, NULL, NULL, y, NULL) == QT_Q_EARG, "no scale");
}

/* Q4_K's mask is where its final [0, 15] clamp bites: compare with values that the codec
 * reproduces to within a step */
static void test_q4k_mask(void) {
    int64_t n = 256 * 8, shape[2] = {8, 256};
    float *x = malloc(n * 4), *y = malloc(n * 4);
    uint8_t *m = malloc(n / 8);
    fill(x, n, 1, 77);
    for (int i = 0; i < n; i += 97) x[i] *= 30; /* outliers that the 6-bit scales may clip */
    qt_fq_format f = {.kind = QT_FQ_Q4_K};
    qt_fq_forward(&f, x, 2, shape, NULL, NULL, y, m);
    int64_t clipped = 0;
    for (int64_t i = 0; i < n; i++) clipped += !bit(m, i);
    printf("  Q4_K: %lld of %lld values clipped\n", (long long)clipped, (long long)n);
    QT_EXPECT(clipped < n / 20, "few clipped");
    free(x);
    free(y);
    free(m);
}

/* surrogate of LSQ(+), in double: sum_i r_i * (s * clamp(t_i + c_i, qmin, qmax) + b) */
static double surrogate(const float *x, const double *c, const double *r, int64_t n, double s,
                        double b, int qmin, int qmax) {
    double L = 0;
    for (int64_t i = 0; i < n; i++) {
        double t = ((double)x[i] - b) / s + c[i];
        t = fmin(fmax(t, qmin), qmax);
        L += r[i] * (s * t + b);
    }
    return L;
}

static void test_lsq_fd(void) {
    for (int sym = 1; sym >= 0; sym--) {
        qt_fq_format f = {.kind = QT_FQ_INT,
                          .bits = 4,
                          .symmetric = sym,
                          .granularity = QT_FQ_PER_GROUP,
                          .group = 32,
                          .scale_mode = QT_FQ_LEARNED};
        int64_t shape[2] = {4, 64}, n = 256, ng = 8;
        int qmin, qmax;
        qt_fq_range(&f, &qmin, &qmax);
        float x[256], s[8], b[8], gy[256], gx[256], gs[8], gb[8];
        double r[256], c[256];
        uint64_t st = 1234 + (uint64_t)sym;
        for (int64_t j = 0; j < ng; j++) {
            s[j] = (float)(0.01 + 0.02 * unif01(&st));
            b[j] = sym ? 0.0f : (float)(-0.05 + 0.02 * unif01(&st));
        }
        /* x on purpose: t well inside (away from the edges by > 0.5 + margin and away from
         * rounding ties), or well outside on either side */
        for (int64_t i = 0; i < n; i++) {
            int64_t j = i / 32;
            double t;
            do {
                double u = unif01(&st);
                t = u < 0.15  ? qmin - 1.0 - 3 * unif01(&st)
                    : u < 0.3 ? qmax + 1.0 + 3 * unif01(&st)
                              : qmin + 0.6 + (qmax - qmin - 1.2) * unif01(&st);
            } while (fabs(t - floor(t) - 0.5) < 0.01);
            x[i] = (float)(t * s[j] + b[j]);
            r[i] = gauss(&st);
            gy[i] = (float)r[i];
        }
        QT_EXPECT(qt_fq_backward_lsq(&f, x, 2, shape, s, sym ? NULL : b, gy, gx, gs, gb) == 0,
                  "lsq");
        double g = 1.0 / sqrt(32.0 * qmax);
        for (int64_t j = 0; j < ng; j++) {
            const float *xj = x + 32 * j;
            for (int k = 0; k < 32; k++) {
                double t0 = ((double)xj[k] - b[j]) / s[j];
                c[32 * j + k] = rint(t0) - t0;
            }
            double h = 1e-6 * s[j];
            double fd = (surrogate(xj, c + 32 * j, r + 32 * j, 32, s[j] + h, b[j], qmin, qmax) -
                         surrogate(xj, c + 32 * j, r + 32 * j, 32, s[j] - h, b[j], qmin, qmax)) /
                        (2 * h);
            QT_EXPECT_CLOSE(gs[j], g * fd, 1e-4 * g * 32, 1e-3, "d/ds (finite difference)");
            if (!sym) {
                double hb = 1e-6;
                double fdb =
                    (surrogate(xj, c + 32 * j, r + 32 * j, 32, s[j], b[j] + hb, qmin, qmax) -
                     surrogate(xj, c + 32 * j, r + 32 * j, 32, s[j], b[j] - hb, qmin, qmax)) /
                    (2 * hb);
                QT_EXPECT_CLOSE(gb[j], g * fdb, 1e-4 * g * 32, 1e-3, "d/db (LSQ+ offset)");
            }
            /* d/dx_i of the surrogate: r_i inside, 0 outside */
            for (int k = 0; k < 32; k += 5) {
                double hx = 1e-4 * s[j];
                float xp[1] = {(float)(xj[k] + hx)}, xm[1] = {(float)(xj[k] - hx)};
                double dxp = (double)xp[0] - xj[k], dxm = xj[k] - (double)xm[0];
                double fdx =
                    (surrogate(xp, c + 32 * j + k, r + 32 * j + k, 1, s[j], b[j], qmin, qmax) -
                     surrogate(xm, c + 32 * j + k, r + 32 * j + k, 1, s[j], b[j], qmin, qmax)) /
                    (dxp + dxm);
                QT_EXPECT_CLOSE(gx[32 * j + k], fdx, 1e-3, 1e-3, "d/dx");
            }
        }
    }
}

int main(void) {
    test_exact_codecs();
    test_int_dynamic();
    test_mask_edges();
    test_q4k_mask();
    test_lsq_fd();
    return qt_test_finish("quant_fakequant");
}
