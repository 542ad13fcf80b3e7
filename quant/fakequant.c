/* fakequant.c - fake quantization forward, clip masks and STE / LSQ / LSQ+ gradients (see
 * fakequant.h). Every scale group is a contiguous run of the flattened tensor (a whole tensor,
 * a row, or g consecutive elements of a row), which keeps the indexing one division. */
#include "fakequant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_blocks.h"
#include "half.h"
#include "nf4.h"

static int view(int ndim, const int64_t *shape, int64_t *rows, int64_t *cols) {
    if (ndim < 1 || ndim > 8 || !shape) return QT_Q_EARG;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return QT_Q_EARG;
        n *= shape[d];
    }
    *cols = shape[ndim - 1];
    *rows = *cols ? n / *cols : 0;
    return QT_Q_OK;
}

void qt_fq_range(const qt_fq_format *f, int *qmin, int *qmax) {
    if (f->symmetric) {
        *qmin = -(1 << (f->bits - 1));
        *qmax = (1 << (f->bits - 1)) - 1;
    } else {
        *qmin = 0;
        *qmax = (1 << f->bits) - 1;
    }
}

int qt_fq_check(const qt_fq_format *f, int ndim, const int64_t *shape) {
    int64_t rows, cols;
    if (!f || view(ndim, shape, &rows, &cols)) return QT_Q_EARG;
    switch (f->kind) {
    case QT_FQ_INT:
        if (f->bits < 2 || f->bits > 8) return QT_Q_EARG;
        if (f->scale_mode != QT_FQ_DYNAMIC && f->scale_mode != QT_FQ_LEARNED) return QT_Q_EARG;
        switch (f->granularity) {
        case QT_FQ_PER_TENSOR:
        case QT_FQ_PER_CHANNEL:
        case QT_FQ_PER_TOKEN:
            return QT_Q_OK;
        case QT_FQ_PER_GROUP:
            return f->group > 0 && cols % f->group == 0 ? QT_Q_OK : QT_Q_EARG;
        }
        return QT_Q_EARG;
    case QT_FQ_Q4_0:
    case QT_FQ_Q8_0:
        return cols % 32 == 0 ? QT_Q_OK : QT_Q_EARG;
    case QT_FQ_Q4_K:
        return cols % QT_QK_K == 0 ? QT_Q_OK : QT_Q_EARG;
    case QT_FQ_NF4:
        return f->blocksize == 0 || qt_nf4_blocksize_ok(f->blocksize) ? QT_Q_OK : QT_Q_EARG;
    }
    return QT_Q_EARG;
}

int64_t qt_fq_group_size(const qt_fq_format *f, int ndim, const int64_t *shape) {
    int64_t rows, cols;
    if (qt_fq_check(f, ndim, shape) || view(ndim, shape, &rows, &cols)) return 0;
    if (f->kind != QT_FQ_INT) return 0;
    switch (f->granularity) {
    case QT_FQ_PER_TENSOR:
        return rows * cols;
    case QT_FQ_PER_CHANNEL:
    case QT_FQ_PER_TOKEN:
        return cols;
    case QT_FQ_PER_GROUP:
        return f->group;
    }
    return 0;
}

int64_t qt_fq_num_scales(const qt_fq_format *f, int ndim, const int64_t *shape) {
    int64_t rows, cols, g = qt_fq_group_size(f, ndim, shape);
    if (!g || view(ndim, shape, &rows, &cols)) return 0;
    return rows * cols / g;
}

static void mask_set(uint8_t *mask, int64_t i, int inside) {
    if (!mask) return;
    if (inside)
        mask[i >> 3] |= (uint8_t)(1u << (i & 7));
    else
        mask[i >> 3] &= (uint8_t) ~(1u << (i & 7));
}

static int fq_int(const qt_fq_format *f, const float *x, int64_t n, int64_t G, float *scale,
                  float *offset, float *y, uint8_t *mask) {
    int qmin, qmax;
    qt_fq_range(f, &qmin, &qmax);
    int learned = f->scale_mode == QT_FQ_LEARNED;
    if (learned && (!scale || (!f->symmetric && !offset))) return QT_Q_EARG;
    int64_t ng = G ? n / G : 0;
    if (learned)
        for (int64_t j = 0; j < ng; j++)
            if (!(scale[j] > 0.0f) || !isfinite(scale[j])) return QT_Q_EARG;
    for (int64_t j = 0; j < ng; j++) {
        const float *xs = x + j * G;
        float s, b = 0.0f;
        if (learned) {
            s = scale[j];
            if (!f->symmetric) b = offset[j];
        } else if (f->symmetric) {
            float amax = 0.0f;
            for (int64_t i = 0; i < G; i++) amax = fmaxf(amax, fabsf(xs[i]));
            s = amax / (float)qmax;
        } else {
            float mn = xs[0], mx = xs[0];
            for (int64_t i = 1; i < G; i++) {
                mn = fminf(mn, xs[i]);
                mx = fmaxf(mx, xs[i]);
            }
            s = (mx - mn) / (float)qmax;
            b = mn;
        }
        if (!learned) {
            if (scale) scale[j] = s;
            if (offset && !f->symmetric) offset[j] = b;
        }
        for (int64_t i = 0; i < G; i++) {
            int64_t k = j * G + i;
            float xi = x[k];
            if (s == 0.0f) { /* an all-zero (or constant) group is exact */
                y[k] = b;
                mask_set(mask, k, 1);
                continue;
            }
            float t = (xi - b) / s;
            float q = rintf(t);
            q = fminf(fmaxf(q, (float)qmin), (float)qmax);
            y[k] = f->symmetric ? q * s : q * s + b;
            /* dynamic ranges contain their group: only rounding noise can push t past an edge */
            mask_set(mask, k, !learned || (t >= (float)qmin && t <= (float)qmax));
        }
    }
    return QT_Q_OK;
}

/* Q4_0 clips where (int8)(x/d + 8.5) exceeds 15: recompute the reference's id per block */
static void mask_q4_0(const float *x, int64_t n, uint8_t *mask) {
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) mask_set(mask, 32 * b + j, (int8_t)(xb[j] * id + 8.5f) <= 15);
    }
}

/* Q4_K clips where its last [0, 15] clamp bites, with the block's stored fp16 scales */
static void mask_q4_K(const float *x, const qt_block_q4_K *blk, int64_t n, uint8_t *mask) {
    for (int64_t b = 0; b < n / QT_QK_K; b++) {
        const float *xb = x + QT_QK_K * b;
        for (int j = 0; j < QT_QK_K / 32; j++) {
            uint8_t sc, m;
            qt_q4_K_scale_min(j, blk[b].scales, &sc, &m);
            const float d = qt_f16_to_f32(blk[b].d) * sc;
            const float dm = qt_f16_to_f32(blk[b].dmin) * m;
            for (int ii = 0; ii < 32; ii++) {
                int inside = 1;
                if (d) {
                    int l = qt_gguf_nearest_int((xb[32 * j + ii] + dm) / d);
                    inside = l >= 0 && l <= 15;
                }
                mask_set(mask, QT_QK_K * b + 32 * j + ii, inside);
            }
        }
    }
}

static int fq_gguf(qt_gguf_type t, const float *x, int64_t n, float *y, uint8_t *mask) {
    size_t nb = (size_t)(n / qt_gguf_block_elems(t));
    void *blk = malloc((nb ? nb : 1) * qt_gguf_block_bytes(t));
    if (!blk) return QT_Q_ENOMEM;
    int rc = qt_gguf_quantize_row(t, x, blk, n);
    if (!rc && mask) {
        if (t == QT_GGUF_Q4_0)
            mask_q4_0(x, n, mask);
        else if (t == QT_GGUF_Q4_K)
            mask_q4_K(x, blk, n, mask);
        else
            memset(mask, 0xff, (size_t)((n + 7) / 8));
    }
    if (!rc) rc = qt_gguf_dequantize_row(t, blk, y, n);
    free(blk);
    return rc;
}

static int fq_nf4(const qt_fq_format *f, const float *x, int64_t n, float *y, uint8_t *mask) {
    int bs = f->blocksize ? f->blocksize : QT_NF4_BLOCK_DEFAULT;
    int64_t nb = (n + bs - 1) / bs;
    uint8_t *packed = malloc((size_t)(n + 1) / 2 + 1);
    float *amax = malloc((size_t)(nb + 1) * sizeof(float));
    uint8_t *q8 = malloc((size_t)nb + 1);
    float *nested = malloc((size_t)(nb / QT_NF4_NESTED_BLOCK + 2) * sizeof(float));
    int rc = QT_Q_ENOMEM;
    if (packed && amax && q8 && nested) {
        rc = qt_nf4_quantize_f32(x, n, bs, packed, amax);
        if (!rc && !f->nf4_plain) {
            float off = qt_nf4_absmax_mean(amax, nb);
            rc = qt_nf4_dq_compress(amax, nb, off, q8, nested);
            if (!rc) rc = qt_nf4_dq_decompress(q8, nested, nb, off, amax);
        }
        if (!rc) rc = qt_nf4_dequantize_f32(packed, amax, n, bs, y);
        if (!rc && mask) memset(mask, 0xff, (size_t)((n + 7) / 8));
    }
    free(packed);
    free(amax);
    free(q8);
    free(nested);
    return rc;
}

int qt_fq_forward(const qt_fq_format *f, const float *x, int ndim, const int64_t *shape,
                  float *scale, float *offset, float *y, uint8_t *mask) {
    int64_t rows, cols;
    if (!x || !y || qt_fq_check(f, ndim, shape) || view(ndim, shape, &rows, &cols))
        return QT_Q_EARG;
    int64_t n = rows * cols;
    switch (f->kind) {
    case QT_FQ_INT:
        return fq_int(f, x, n, qt_fq_group_size(f, ndim, shape), scale, offset, y, mask);
    case QT_FQ_Q4_0:
        return fq_gguf(QT_GGUF_Q4_0, x, n, y, mask);
    case QT_FQ_Q8_0:
        return fq_gguf(QT_GGUF_Q8_0, x, n, y, mask);
    case QT_FQ_Q4_K:
        return fq_gguf(QT_GGUF_Q4_K, x, n, y, mask);
    case QT_FQ_NF4:
        return fq_nf4(f, x, n, y, mask);
    }
    return QT_Q_EARG;
}

int qt_fq_backward_ste(const float *gy, const uint8_t *mask, int64_t n, float *gx) {
    if (!gy || !gx || n < 0) return QT_Q_EARG;
    for (int64_t i = 0; i < n; i++) gx[i] = (!mask || (mask[i >> 3] >> (i & 7) & 1)) ? gy[i] : 0.0f;
    return QT_Q_OK;
}

int qt_fq_backward_lsq(const qt_fq_format *f, const float *x, int ndim, const int64_t *shape,
                       const float *scale, const float *offset, const float *gy, float *gx,
                       float *gscale, float *goffset) {
    int64_t rows, cols;
    if (!x || !gy || !scale || qt_fq_check(f, ndim, shape) || f->kind != QT_FQ_INT ||
        view(ndim, shape, &rows, &cols))
        return QT_Q_EARG;
    if (!f->symmetric && !offset) return QT_Q_EARG;
    int qmin, qmax;
    qt_fq_range(f, &qmin, &qmax);
    int64_t G = qt_fq_group_size(f, ndim, shape), ng = G ? rows * cols / G : 0;
    /* LSQ's gradient scale keeps the step-size update in proportion to the weight updates */
    double g = 1.0 / sqrt((double)G * (double)qmax);
    for (int64_t j = 0; j < ng; j++) {
        float s = scale[j], b = f->symmetric ? 0.0f : offset[j];
        if (!(s > 0.0f)) return QT_Q_EARG;
        double as = 0.0, ab = 0.0;
        for (int64_t i = 0; i < G; i++) {
            int64_t k = j * G + i;
            float t = (x[k] - b) / s;
            if (t < (float)qmin) {
                as += (double)gy[k] * qmin;
                ab += gy[k];
                if (gx) gx[k] = 0.0f;
            } else if (t > (float)qmax) {
                as += (double)gy[k] * qmax;
                ab += gy[k];
                if (gx) gx[k] = 0.0f;
            } else {
                as += (double)gy[k] * ((double)rintf(t) - (double)t);
                if (gx) gx[k] = gy[k];
            }
        }
        if (gscale) gscale[j] = (float)(as * g);
        if (goffset && !f->symmetric) goffset[j] = (float)(ab * g);
    }
    return QT_Q_OK;
}

int qt_fq_int8_per_token(const float *x, int64_t tokens, int64_t dim, float *y, float *scale) {
    qt_fq_format f = {.kind = QT_FQ_INT,
                      .bits = 8,
                      .symmetric = 1,
                      .granularity = QT_FQ_PER_TOKEN,
                      .scale_mode = QT_FQ_DYNAMIC};
    int64_t shape[2] = {tokens, dim};
    return qt_fq_forward(&f, x, 2, shape, scale, NULL, y, NULL);
}
