/* test_quant_gguf.c - GGUF block codecs: byte layouts, hand-derived blocks, bytes equal to
 * ggml's quantize_row_*_ref (FNV-1a hashes of its output on a deterministic input, computed
 * with ggml's ggml-quants.c built in ISO C mode, i.e. without FP contraction), and round-trip
 * error bounds on Gaussian, Laplace and Student-t data. Bounds (max |x - y| per element, d =
 * the block's fp16 scale): Q8_0 <= d/2 * (1 + 2^-10) + d*127*2^-11; Q4_0 <= |d| (a value on the
 * side opposite the block's extreme can clip one step) ; Q4_1 <= d/2 + fp16 slack; Q4_K / Q6_K
 * by relative RMSE (documented in docs/QUANT.md). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qt_rand.h"
#include "qt_test.h"
#include "quant/gguf_blocks.h"
#include "quant/half.h"

/* 24-bit uniform, exact in float and double: the golden input is the same on every IEEE host */
static double rng_unif(uint64_t *s) {
    return (double)(rng_next(s) >> 40) / 16777216.0;
}
static float det_value(uint64_t *s, int64_t i) {
    double v = rng_unif(s) + rng_unif(s) + rng_unif(s) + rng_unif(s) - 2.0;
    float x = (float)(v * 0.03);
    if (i % 997 == 0) x *= 40.0f;
    if (i < 256) x = 0.0f;
    return x;
}
static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}


static const qt_gguf_type types[5] = {QT_GGUF_Q4_0, QT_GGUF_Q4_1, QT_GGUF_Q8_0, QT_GGUF_Q4_K,
                                      QT_GGUF_Q6_K};

static void test_layouts(void) {
    QT_EXPECT(qt_gguf_block_bytes(QT_GGUF_Q4_0) == 18 && qt_gguf_block_elems(QT_GGUF_Q4_0) == 32,
              "q4_0");
    QT_EXPECT(qt_gguf_block_bytes(QT_GGUF_Q4_1) == 20, "q4_1");
    QT_EXPECT(qt_gguf_block_bytes(QT_GGUF_Q8_0) == 34, "q8_0");
    QT_EXPECT(qt_gguf_block_bytes(QT_GGUF_Q4_K) == 144 && qt_gguf_block_elems(QT_GGUF_Q4_K) == 256,
              "q4_K");
    QT_EXPECT(qt_gguf_block_bytes(QT_GGUF_Q6_K) == 210, "q6_K");
    float x[64] = {0};
    uint8_t buf[400];
    QT_EXPECT(qt_gguf_quantize_row(QT_GGUF_Q4_0, x, buf, 33) == QT_Q_EARG, "n not multiple");
    QT_EXPECT(qt_gguf_quantize_row(QT_GGUF_Q4_K, x, buf, 64) == QT_Q_EARG, "n < 256");
    QT_EXPECT(qt_gguf_quantize_row((qt_gguf_type)5, x, buf, 32) == QT_Q_EARG, "bad type");
}

static void test_hand(void) {
    /* Q4_0: integers -8..7 with -8 the extreme: d = -8/-8 = 1, q = x + 8, exact round trip;
     * element j goes to the low nibble of qs[j], element j+16 to its high nibble */
    float x[32], y[32];
    for (int j = 0; j < 32; j++) x[j] = (float)((j * 5) % 16 - 8);
    qt_block_q4_0 b0;
    qt_gguf_quantize_row(QT_GGUF_Q4_0, x, &b0, 32);
    QT_EXPECT(b0.d == 0x3C00, "q4_0 d = 1.0 (got 0x%04x)", b0.d);
    int ok = 1;
    for (int j = 0; j < 16; j++)
        ok &= b0.qs[j] == (uint8_t)(((int)x[j] + 8) | (((int)x[j + 16] + 8) << 4));
    QT_EXPECT(ok, "q4_0 nibble layout");
    qt_gguf_dequantize_row(QT_GGUF_Q4_0, &b0, y, 32);
    QT_EXPECT(!memcmp(x, y, sizeof x), "q4_0 exact integers");
    /* Q4_0 clipping: extreme -8 gives d = 1; +7.5 lands on (int)(16.0) = 16 -> 15 -> 7 */
    x[1] = 7.5f;
    x[2] = nextafterf(7.5f, 0.0f);
    qt_gguf_quantize_row(QT_GGUF_Q4_0, x, &b0, 32);
    qt_gguf_dequantize_row(QT_GGUF_Q4_0, &b0, y, 32);
    QT_EXPECT(y[1] == 7.0f && y[2] == 7.0f, "q4_0 clip at +7.5 (%g %g)", y[1], y[2]);
    /* Q8_0: x = j - 16: amax 16, d = 16/127, q = roundf(x * 127/16) (half away from zero) */
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16);
    qt_block_q8_0 b8;
    qt_gguf_quantize_row(QT_GGUF_Q8_0, x, &b8, 32);
    QT_EXPECT(b8.d == qt_f32_to_f16(16.0f / 127.0f), "q8_0 d");
    ok = 1;
    for (int j = 0; j < 32; j++) ok &= b8.qs[j] == (int8_t)roundf(x[j] * (127.0f / 16.0f));
    QT_EXPECT(ok && b8.qs[0] == -127 && b8.qs[16] == 0, "q8_0 codes");
    /* Q4_K dequant of a hand-built block: d = 1, dmin = 0.5; sub-block 0 scale 1 min 2; sub-block
     * 4 scale 33 (high bits in scales[0] bits 6-7) min 0 */
    qt_block_q4_K k4;
    memset(&k4, 0, sizeof k4);
    k4.d = 0x3C00;
    k4.dmin = 0x3800;
    k4.scales[0] = 1 | (2 << 6); /* sc0 = 1, sc4 high bits = 33 >> 4 = 2 */
    k4.scales[4] = 2;            /* m0 = 2 */
    k4.scales[8] = 33 & 15;      /* sc4 low bits, m4 = 0 */
    k4.qs[0] = 0x05;             /* element 0: 5, element 32 (sub-block 1): 0 */
    k4.qs[64] = 0x02;            /* element 128 (sub-block 4): 2 */
    float yk[256];
    qt_gguf_dequantize_row(QT_GGUF_Q4_K, &k4, yk, 256);
    QT_EXPECT(yk[0] == 1.0f * 1 * 5 - 0.5f * 2, "q4_K element 0 = %g", yk[0]);
    QT_EXPECT(yk[128] == 66.0f, "q4_K element 128 = %g", yk[128]);
    QT_EXPECT(yk[1] == -1.0f, "q4_K element 1 = %g", yk[1]);
    /* Q6_K: d = 1, scales[0] = 2, element 0: ql low 5 | qh bits 0-1 = 2 -> 37 - 32 = 5 -> 10;
     * element 64: ql[0] high nibble 3 | qh bits 4-5 = 1 -> 19 - 32 = -13, scale scales[4] = -3 */
    qt_block_q6_K k6;
    memset(&k6, 0, sizeof k6);
    k6.d = 0x3C00;
    k6.scales[0] = 2;
    k6.scales[4] = -3;
    k6.ql[0] = 0x35;
    k6.qh[0] = 2 | (1 << 4);
    qt_gguf_dequantize_row(QT_GGUF_Q6_K, &k6, yk, 256);
    QT_EXPECT(yk[0] == 10.0f && yk[64] == 39.0f, "q6_K hand block: %g %g", yk[0], yk[64]);
    /* all-zero input: every format dequantizes to exact zeros */
    float z[256] = {0};
    uint8_t buf[256 * 2];
    for (int k = 0; k < 5; k++) {
        qt_gguf_quantize_row(types[k], z, buf, 256);
        qt_gguf_dequantize_row(types[k], buf, yk, 256);
        int zero = 1;
        for (int i = 0; i < 256; i++) zero &= yk[i] == 0.0f;
        QT_EXPECT(zero, "%s: zeros round trip", qt_gguf_type_name(types[k]));
    }
}

static void test_golden(void) {
    static const uint64_t want[5] = {0xe17117ea93a62c8aull, 0xfb64c00a280c3e3eull,
                                     0xf2995763fa7d4e52ull, 0xa18973195f651f72ull,
                                     0xe90ae0a215dae4a0ull};
    int64_t n = 256 * 64;
    float *x = malloc((size_t)n * 4);
    uint8_t *b = malloc((size_t)n * 2);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < n; i++) x[i] = det_value(&s, i);
    for (int k = 0; k < 5; k++) {
        qt_gguf_quantize_row(types[k], x, b, n);
        size_t bytes = (size_t)(n / qt_gguf_block_elems(types[k])) * qt_gguf_block_bytes(types[k]);
        uint64_t h = fnv(b, bytes);
        QT_EXPECT(h == want[k], "%s: bytes differ from ggml's reference (hash 0x%016llx)",
                  qt_gguf_type_name(types[k]), (unsigned long long)h);
    }
    free(x);
    free(b);
}

static void test_roundtrip(void) {
    int64_t n = 256 * 1024;
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    uint8_t *b = malloc((size_t)n * 2);
    /* relative RMSE limits (rmse / rms(x)), a little above what was measured (docs/QUANT.md) */
    static const double rel_limit[3][5] = {
        {0.099, 0.090, 0.0062, 0.082,
         0.0205}, /* Gaussian; measured .0859 .0783 .0054 .0713 .0178 */
        {0.123, 0.105, 0.0078, 0.097, 0.0250}, /* Laplace; .1069 .0916 .0067 .0845 .0217 */
        {0.147, 0.116, 0.0098, 0.106, 0.0295}, /* Student-t(3); .1274 .1005 .0085 .0923 .0256 */
    };
    static const char *const dname[3] = {"gaussian", "laplace", "student-t3"};
    for (int dist = 0; dist < 3; dist++) {
        fill(x, n, dist, 1234 + (uint64_t)dist);
        for (int k = 0; k < 5; k++) {
            qt_gguf_type t = types[k];
            QT_EXPECT(qt_gguf_quantize_row(t, x, b, n) == 0, "quantize");
            QT_EXPECT(qt_gguf_dequantize_row(t, b, y, n) == 0, "dequantize");
            double se = 0, sx = 0;
            int bound_ok = 1;
            int qk = qt_gguf_block_elems(t);
            for (int64_t i = 0; i < n; i++) {
                double e = (double)x[i] - y[i];
                se += e * e;
                sx += (double)x[i] * x[i];
                if (t == QT_GGUF_Q8_0 || t == QT_GGUF_Q4_0 || t == QT_GGUF_Q4_1) {
                    const uint8_t *blk = b + (size_t)(i / qk) * qt_gguf_block_bytes(t);
                    uint16_t dh;
                    memcpy(&dh, blk, 2);
                    double d = fabs(qt_f16_to_f32(dh));
                    double lim = t == QT_GGUF_Q8_0   ? d * (0.5 + 0.5 / 1024 + 127.0 / 2048)
                                 : t == QT_GGUF_Q4_0 ? d * (1.0 + 8.0 / 2048) + 1e-12
                                                     : d * (0.5 + 15.0 / 2048) + 1e-4 * fabs(x[i]);
                    if (fabs(e) > lim + 1e-9) bound_ok = 0;
                }
            }
            double rel = sqrt(se / sx);
            printf("  %-10s %s: relative rmse %.5f\n", dname[dist], qt_gguf_type_name(t), rel);
            QT_EXPECT(rel <= rel_limit[dist][k], "%s %s: relative rmse %.5f > %.5f", dname[dist],
                      qt_gguf_type_name(t), rel, rel_limit[dist][k]);
            QT_EXPECT(bound_ok, "%s %s: per-element bound violated", dname[dist],
                      qt_gguf_type_name(t));
        }
    }
    free(x);
    free(y);
    free(b);
}

int main(void) {
    test_layouts();
    test_hand();
    test_golden();
    test_roundtrip();
    return qt_test_finish("quant_gguf");
}
