/* dynamic_map.c - bitsandbytes' dynamic 8-bit map, generated the way the Python generates it
 * (bitsandbytes/functional.py create_dynamic_map, on torch's CPU), and blockwise 8-bit
 * quantization with it as kQuantizeBlockwise<..., General8bit> does. */
#include "dynamic_map.h"

#include <math.h>
#include <stdlib.h>

/* torch.linspace(start, end, steps, dtype=float32) on the CPU: fp32 step, the first half
 * counted up from start and the second half down from end. torch's CPU kernels are built with
 * FMA contraction, so start + step*i is one fused rounding (checked against torch's output in
 * tests/fixtures/bnb: a separate multiply and add differs in up to 12 of 65 values). */
static void linspace_f32(float start, float end, int steps, float *out) {
    float step = (end - start) / (float)(steps - 1);
    int halfway = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] =
            i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* adds the fp32 products scale * means[j] (and their negatives when signed) to data */
static int append_means(int items, float scale, int is_signed, float *data, int n, int cap) {
    float b[130];
    if (items < 2 || items > 129) return -1;
    linspace_f32(0.1f, 1.0f, items, b);
    for (int j = 0; j + 1 < items; j++) {
        float mean = (b[j] + b[j + 1]) / 2.0f;
        if (n >= cap) return -1;
        data[n++] = scale * mean;
    }
    if (is_signed)
        for (int j = 0; j + 1 < items; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            if (n >= cap) return -1;
            data[n++] = -scale * mean;
        }
    return n;
}

int qt_dynmap_create(int is_signed, int max_exponent_bits, int total_bits, float map[256]) {
    if (!map || total_bits < 2 || total_bits > 8 || max_exponent_bits < 1 ||
        max_exponent_bits > total_bits - 1)
        return QT_Q_EARG;
    float data[256];
    int n = 0;
    int non_sign_bits = total_bits - 1;
    int additional = (1 << (non_sign_bits - max_exponent_bits)) - 1;
    int i = 0;
    for (i = 0; i < max_exponent_bits; i++) {
        int items = is_signed ? (1 << (i + non_sign_bits - max_exponent_bits)) + 1
                              : (1 << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
        /* Python: a float 10**k (k < 0) or an int, cast to fp32 by torch's scalar multiply */
        float scale = (float)pow(10.0, (double)(-(max_exponent_bits - 1) + i));
        n = append_means(items, scale, is_signed, data, n, 254);
        if (n < 0) return QT_Q_EARG;
    }
    if (additional > 0) {
        /* the Python reuses the loop's last i here */
        float scale = (float)pow(10.0, (double)(-(max_exponent_bits - 1) + (i - 1)));
        n = append_means(additional + 1, scale, is_signed, data, n, 254);
        if (n < 0) return QT_Q_EARG;
    }
    data[n++] = 0.0f;
    data[n++] = 1.0f;
    if (n != (1 << total_bits)) return QT_Q_EARG;
    for (; n < 256; n++) data[n] = 0.0f;
    qsort(data, 256, sizeof(float), cmp_float);
    for (int k = 0; k < 256; k++) map[k] = data[k];
    return QT_Q_OK;
}

int qt_dynmap_default(float map[256]) {
    return qt_dynmap_create(1, 7, 8, map);
}

uint8_t qt_dynmap_quantize_value(const float map[256], float x) {
    return (uint8_t)qt_dynmap_search(map, x);
}

static int blocksize8_ok(int bs) {
    return bs >= 64 && bs <= 4096 && (bs & (bs - 1)) == 0;
}

int qt_dynmap_quantize_blockwise(const float *x, int64_t n, int blocksize, const float map[256],
                                 uint8_t *q, float *absmax) {
    if (!x || !map || !q || !absmax || n < 0 || !blocksize8_ok(blocksize)) return QT_Q_EARG;
    int64_t nb = (n + blocksize - 1) / blocksize;
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * blocksize, hi = lo + blocksize < n ? lo + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
        absmax[b] = amax;
        float inv = 1.0f / amax; /* the kernel's reciprocal, not a division per element */
        for (int64_t i = lo; i < hi; i++) q[i] = qt_dynmap_quantize_value(map, x[i] * inv);
    }
    return QT_Q_OK;
}

int qt_dynmap_dequantize_blockwise(const uint8_t *q, const float *absmax, int64_t n, int blocksize,
                                   const float map[256], float *out) {
    if (!q || !absmax || !map || !out || n < 0 || !blocksize8_ok(blocksize)) return QT_Q_EARG;
    for (int64_t i = 0; i < n; i++) out[i] = map[q[i]] * absmax[i / blocksize];
    return QT_Q_OK;
}
