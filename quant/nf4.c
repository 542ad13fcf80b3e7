/* nf4.c - NF4 blockwise quantization and bitsandbytes' double quantization of the block
 * scales (see nf4.h). Every rounding step mirrors bitsandbytes' CUDA kernels
 * (kQuantizeBlockwise / kDequantizeBlockwise, csrc/kernels.cu) so that the bytes agree. */
#include "nf4.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dynamic_map.h"
#include "half.h"

const float qt_nf4_code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* The decision thresholds of dQuantizeNF4, written with the kernel's literals: they are the
 * float64 midpoints of neighbouring codes rounded to fp32, not midpoints computed in fp32, and
 * the two can differ in the last bit. */
static const float nf4_thresh[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

int qt_nf4_blocksize_ok(int bs) {
    return bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0;
}

/* The kernel walks a binary tree of `x > threshold` tests; for sorted thresholds that is the
 * count of thresholds strictly below x. A value on a threshold takes the lower code, and NaN
 * (0 * inf from an all-zero block) fails every test and becomes code 0, as on the GPU. */
uint8_t qt_nf4_quantize_value(float x) {
    uint8_t c = 0;
    for (int i = 0; i < 15; i++) c += (uint8_t)(x > nf4_thresh[i]);
    return c;
}

int qt_nf4_quantize_f32(const float *x, int64_t n, int blocksize, uint8_t *packed, float *absmax) {
    if (!x || !packed || !absmax || n < 0 || !qt_nf4_blocksize_ok(blocksize)) return QT_Q_EARG;
    int64_t nb = (n + blocksize - 1) / blocksize;
    /* blocks are independent: threads (when built with OpenMP) change nothing in the result */
#pragma omp parallel for schedule(static) if (nb > 4096)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * blocksize, hi = lo + blocksize < n ? lo + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
        absmax[b] = amax;
        /* the kernel multiplies by an fp32 reciprocal rather than dividing */
        float inv = 1.0f / amax;
        /* blocksize is even, so pairs never straddle blocks; a missing second element is
         * loaded as 0 by the kernel and quantized like any other value */
        for (int64_t i = lo; i < hi; i += 2) {
            float v0 = x[i] * inv;
            float v1 = (i + 1 < hi ? x[i + 1] : 0.0f) * inv;
            packed[i / 2] = (uint8_t)(qt_nf4_quantize_value(v0) << 4 | qt_nf4_quantize_value(v1));
        }
    }
    return QT_Q_OK;
}

int qt_nf4_dequantize_f32(const uint8_t *packed, const float *absmax, int64_t n, int blocksize,
                          float *out) {
    if (!packed || !absmax || !out || n < 0 || !qt_nf4_blocksize_ok(blocksize)) return QT_Q_EARG;
    for (int64_t i = 0; i < n; i++) {
        uint8_t byte = packed[i / 2];
        uint8_t c = (i & 1) ? (byte & 0x0f) : (byte >> 4);
        out[i] = qt_nf4_code[c] * absmax[i / blocksize];
    }
    return QT_Q_OK;
}

/* bitsandbytes takes torch's CUDA mean (fp32 tree sum times fp32 1/n), whose summation order
 * cannot be reproduced here; the mean of the exact (double) sum is within an ulp of it. */
float qt_nf4_absmax_mean(const float *absmax, int64_t nblocks) {
    if (!absmax || nblocks <= 0) return 0.0f;
    double s = 0.0;
    for (int64_t i = 0; i < nblocks; i++) s += absmax[i];
    return (float)(s / (double)nblocks);
}

int qt_nf4_dq_compress(const float *absmax, int64_t nblocks, float offset, uint8_t *q,
                       float *nested_absmax) {
    if (!absmax || !q || !nested_absmax || nblocks < 0) return QT_Q_EARG;
    float map[256];
    int rc = qt_dynmap_default(map);
    if (rc) return rc;
    float *centered = malloc((size_t)(nblocks ? nblocks : 1) * sizeof(float));
    if (!centered) return QT_Q_ENOMEM;
    for (int64_t i = 0; i < nblocks; i++) centered[i] = absmax[i] - offset;
    rc =
        qt_dynmap_quantize_blockwise(centered, nblocks, QT_NF4_NESTED_BLOCK, map, q, nested_absmax);
    free(centered);
    return rc;
}

int qt_nf4_dq_decompress(const uint8_t *q, const float *nested_absmax, int64_t nblocks,
                         float offset, float *absmax) {
    if (!q || !nested_absmax || !absmax || nblocks < 0) return QT_Q_EARG;
    float map[256];
    int rc = qt_dynmap_default(map);
    if (rc) return rc;
    rc =
        qt_dynmap_dequantize_blockwise(q, nested_absmax, nblocks, QT_NF4_NESTED_BLOCK, map, absmax);
    if (rc) return rc;
    /* a separate rounding step: torch adds the offset to the dequantized fp32 tensor */
    for (int64_t i = 0; i < nblocks; i++) absmax[i] = absmax[i] + offset;
    return QT_Q_OK;
}

void qt_nf4_tensor_free(qt_nf4_tensor *t) {
    if (!t) return;
    free(t->data);
    free(t->absmax);
    free(t->absmax_q);
    free(t->nested_absmax);
    memset(t, 0, sizeof(*t));
}

int qt_nf4_tensor_alloc(qt_nf4_tensor *t, qt_nf4_dtype dtype, int ndim, const int64_t *shape,
                        int blocksize, int nested) {
    if (!t) return QT_Q_EARG;
    memset(t, 0, sizeof(*t));
    if (ndim < 1 || ndim > QT_NF4_MAX_DIMS || !shape || !qt_nf4_blocksize_ok(blocksize) ||
        (dtype != QT_NF4_F32 && dtype != QT_NF4_F16 && dtype != QT_NF4_BF16))
        return QT_Q_EARG;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && n > INT64_MAX / 4 / shape[d])) return QT_Q_EARG;
        t->shape[d] = shape[d];
        n *= shape[d];
    }
    t->ndim = ndim;
    t->numel = n;
    t->blocksize = blocksize;
    t->dtype = dtype;
    t->nested = nested ? 1 : 0;
    t->nblocks = (n + blocksize - 1) / blocksize;
    t->nested_blocksize = QT_NF4_NESTED_BLOCK;
    t->data = malloc((size_t)((n + 1) / 2) + 1);
    if (nested) {
        t->nested_nblocks = (t->nblocks + QT_NF4_NESTED_BLOCK - 1) / QT_NF4_NESTED_BLOCK;
        t->absmax_q = malloc((size_t)t->nblocks + 1);
        t->nested_absmax = malloc(((size_t)t->nested_nblocks + 1) * sizeof(float));
        if (!t->data || !t->absmax_q || !t->nested_absmax) goto oom;
    } else {
        t->absmax = malloc(((size_t)t->nblocks + 1) * sizeof(float));
        if (!t->data || !t->absmax) goto oom;
    }
    return QT_Q_OK;
oom:
    qt_nf4_tensor_free(t);
    return QT_Q_ENOMEM;
}

/* widening to fp32 is exact for every source dtype, as the kernel's (float)vals[j] */
static void to_f32(const void *src, qt_nf4_dtype dtype, int64_t n, float *dst) {
    if (dtype == QT_NF4_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
#pragma omp parallel for schedule(static) if (n > (1 << 20))
    for (int64_t i = 0; i < n; i++)
        dst[i] = dtype == QT_NF4_BF16 ? qt_bf16_to_f32(h[i]) : qt_f16_to_f32(h[i]);
}

int qt_nf4_tensor_quantize(qt_nf4_tensor *t, const void *src, qt_nf4_dtype dtype, int ndim,
                           const int64_t *shape, int blocksize, int nested) {
    if (!src) return QT_Q_EARG;
    int rc = qt_nf4_tensor_alloc(t, dtype, ndim, shape, blocksize, nested);
    if (rc) return rc;
    float *x = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    float *amax = malloc((size_t)(t->nblocks ? t->nblocks : 1) * sizeof(float));
    if (!x || !amax) {
        rc = QT_Q_ENOMEM;
        goto done;
    }
    to_f32(src, dtype, t->numel, x);
    rc = qt_nf4_quantize_f32(x, t->numel, blocksize, t->data, amax);
    if (rc) goto done;
    if (!nested) {
        memcpy(t->absmax, amax, (size_t)t->nblocks * sizeof(float));
    } else {
        t->offset = qt_nf4_absmax_mean(amax, t->nblocks);
        rc = qt_nf4_dq_compress(amax, t->nblocks, t->offset, t->absmax_q, t->nested_absmax);
    }
done:
    free(x);
    free(amax);
    if (rc) qt_nf4_tensor_free(t);
    return rc;
}

int qt_nf4_tensor_absmax(const qt_nf4_tensor *t, float *absmax) {
    if (!t || !absmax || !t->data) return QT_Q_EARG;
    if (!t->nested) {
        memcpy(absmax, t->absmax, (size_t)t->nblocks * sizeof(float));
        return QT_Q_OK;
    }
    return qt_nf4_dq_decompress(t->absmax_q, t->nested_absmax, t->nblocks, t->offset, absmax);
}

int qt_nf4_tensor_dequantize_f32(const qt_nf4_tensor *t, float *out) {
    if (!t || !out || !t->data) return QT_Q_EARG;
    float *amax = malloc((size_t)(t->nblocks ? t->nblocks : 1) * sizeof(float));
    if (!amax) return QT_Q_ENOMEM;
    int rc = qt_nf4_tensor_absmax(t, amax);
    if (!rc) rc = qt_nf4_dequantize_f32(t->data, amax, t->numel, t->blocksize, out);
    free(amax);
    return rc;
}

int qt_nf4_tensor_dequantize(const qt_nf4_tensor *t, void *out) {
    if (!t || !out) return QT_Q_EARG;
    if (t->dtype == QT_NF4_F32) return qt_nf4_tensor_dequantize_f32(t, out);
    float *tmp = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!tmp) return QT_Q_ENOMEM;
    int rc = qt_nf4_tensor_dequantize_f32(t, tmp);
    if (!rc) {
        uint16_t *h = out;
        for (int64_t i = 0; i < t->numel; i++)
            h[i] = t->dtype == QT_NF4_BF16 ? qt_f32_to_bf16(tmp[i]) : qt_f32_to_f16(tmp[i]);
    }
    free(tmp);
    return rc;
}
