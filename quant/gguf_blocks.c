/* gguf_blocks.c - ggml's reference block quantizers and dequantizers (see gguf_blocks.h).
 * Expressions keep the reference's operation order, since each fp32 rounding shows up in the
 * bytes. */
#include "gguf_blocks.h"

#include <math.h>
#include <string.h>

#include "half.h"

#define GROUP_MAX_EPS 1e-15f
#define MAXI(a, b)    ((a) > (b) ? (a) : (b))
#define MINI(a, b)    ((a) < (b) ? (a) : (b))

#define nearest_int      qt_gguf_nearest_int
#define get_scale_min_k4 qt_q4_K_scale_min

static void q4_0_quantize(const float *x, qt_block_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QT_QK4_0; j++) {
            const float v = x[i * QT_QK4_0 + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = qt_f32_to_f16(d);
        for (int j = 0; j < QT_QK4_0 / 2; ++j) {
            const float x0 = x[i * QT_QK4_0 + j] * id;
            const float x1 = x[i * QT_QK4_0 + QT_QK4_0 / 2 + j] * id;
            const uint8_t xi0 = (uint8_t)MINI(15, (int8_t)(x0 + 8.5f));
            const uint8_t xi1 = (uint8_t)MINI(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

static void q4_0_dequantize(const qt_block_q4_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qt_f16_to_f32(x[i].d);
        for (int j = 0; j < QT_QK4_0 / 2; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[i * QT_QK4_0 + j] = x0 * d;
            y[i * QT_QK4_0 + j + QT_QK4_0 / 2] = x1 * d;
        }
    }
}

static void q4_1_quantize(const float *x, qt_block_q4_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float min = 3.402823466e+38f, max = -3.402823466e+38f;
        for (int j = 0; j < QT_QK4_1; j++) {
            const float v = x[i * QT_QK4_1 + j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = qt_f32_to_f16(d);
        y[i].m = qt_f32_to_f16(min);
        for (int j = 0; j < QT_QK4_1 / 2; ++j) {
            const float x0 = (x[i * QT_QK4_1 + j] - min) * id;
            const float x1 = (x[i * QT_QK4_1 + QT_QK4_1 / 2 + j] - min) * id;
            const uint8_t xi0 = (uint8_t)MINI(15, (int8_t)(x0 + 0.5f));
            const uint8_t xi1 = (uint8_t)MINI(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

static void q4_1_dequantize(const qt_block_q4_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qt_f16_to_f32(x[i].d);
        const float m = qt_f16_to_f32(x[i].m);
        for (int j = 0; j < QT_QK4_1 / 2; ++j) {
            const int x0 = x[i].qs[j] & 0x0F;
            const int x1 = x[i].qs[j] >> 4;
            y[i * QT_QK4_1 + j] = x0 * d + m;
            y[i * QT_QK4_1 + j + QT_QK4_1 / 2] = x1 * d + m;
        }
    }
}

static void q8_0_quantize(const float *x, qt_block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QT_QK8_0; j++) amax = fmaxf(amax, fabsf(x[i * QT_QK8_0 + j]));
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = qt_f32_to_f16(d);
        for (int j = 0; j < QT_QK8_0; ++j) {
            const float x0 = x[i * QT_QK8_0 + j] * id;
            /* the reference stores roundf() straight into int8; NaN (undefined there) -> 0 */
            float r = roundf(x0);
            y[i].qs[j] = (int8_t)(r == r ? (int)r : 0);
        }
    }
}

static void q8_0_dequantize(const qt_block_q8_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qt_f16_to_f32(x[i].d);
        for (int j = 0; j < QT_QK8_0; ++j) y[i * QT_QK8_0 + j] = x[i].qs[j] * d;
    }
}

/* ggml's make_qkx2_quants: a 4-bit (nmax) affine grid for n values, trying nstep+1 scales
 * around nmax/(max-min) and keeping the least weighted error */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                              int use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)MAXI(0, MINI(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = MAXI(0, MINI(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* ggml's make_qx_quants: a symmetric grid of 2*nmax levels; rmse_type 1 weighs by x^2 and
 * searches 18 scales around nmax/max */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type,
                            const float *qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            L[i] = (int8_t)(nmax + MAXI(-nmax, MINI(nmax - 1, l)));
        }
        return 1 / iscale;
    }
    int return_early = 0;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = 1;
    }
#define QX_WEIGHT(i)                                                                               \
    (qw               ? qw[i]                                                                      \
     : rmse_type == 1 ? x[i] * x[i]                                                                \
     : rmse_type == 2 ? 1                                                                          \
     : rmse_type == 3 ? fabsf(x[i])                                                                \
                      : sqrtf(fabsf(x[i])))
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAXI(-nmax, MINI(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = QX_WEIGHT(i);
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAXI(-nmax, MINI(nmax - 1, l));
            float w = QX_WEIGHT(i);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + MAXI(-nmax, MINI(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
#undef QX_WEIGHT
    return scale;
}

static void q4_K_quantize(const float *x, qt_block_q4_K *y, int64_t nb) {
    uint8_t L[QT_QK_K];
    uint8_t Laux[32];
    float weights[32];
    float mins[QT_QK_K / 32];
    float scales[QT_QK_K / 32];
    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0; /* mins are subtracted, so scales are never negative */
        float max_min = 0;
        for (int j = 0; j < QT_QK_K / 32; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
            float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
            scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                         -1.f, 0.1f, 20, 0);
            float scale = scales[j];
            if (scale > max_scale) max_scale = scale;
            float min = mins[j];
            if (min > max_min) max_min = min;
        }
        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < QT_QK_K / 32; ++j) {
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
            ls = MINI(63, ls);
            lm = MINI(63, lm);
            if (j < 4) {
                y[i].scales[j] = ls;
                y[i].scales[j + 4] = lm;
            } else {
                y[i].scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
                y[i].scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
                y[i].scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        y[i].d = qt_f32_to_f16(max_scale / 63.f);
        y[i].dmin = qt_f32_to_f16(max_min / 63.f);
        uint8_t sc, m;
        for (int j = 0; j < QT_QK_K / 32; ++j) {
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = qt_f16_to_f32(y[i].d) * sc;
            if (!d) continue;
            const float dm = qt_f16_to_f32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = nearest_int((x[32 * j + ii] + dm) / d);
                l = MAXI(0, MINI(15, l));
                L[32 * j + ii] = (uint8_t)l;
            }
        }
        uint8_t *q = y[i].qs;
        for (int j = 0; j < QT_QK_K; j += 64) {
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
            q += 32;
        }
        x += QT_QK_K;
    }
}

static void q4_K_dequantize(const qt_block_q4_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = qt_f16_to_f32(x[i].d);
        const float min = qt_f16_to_f32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QT_QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc;
            const float m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc;
            const float m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

static void q6_K_quantize(const float *x, qt_block_q6_K *y, int64_t nb) {
    int8_t L[QT_QK_K];
    float scales[QT_QK_K / 16];
    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0;
        float max_abs_scale = 0;
        for (int ib = 0; ib < QT_QK_K / 16; ++ib) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, NULL);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(qt_block_q6_K));
            y[i].d = qt_f32_to_f16(0.f);
            x += QT_QK_K;
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = qt_f32_to_f16(1 / iscale);
        for (int ib = 0; ib < QT_QK_K / 16; ++ib)
            y[i].scales[ib] = (int8_t)MINI(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QT_QK_K / 16; ++j) {
            float d = qt_f16_to_f32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = MAXI(-32, MINI(31, l));
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        uint8_t *ql = y[i].ql;
        uint8_t *qh = y[i].qh;
        for (int j = 0; j < QT_QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
            ql += 64;
            qh += 32;
        }
        x += QT_QK_K;
    }
}

static void q6_K_dequantize(const qt_block_q6_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qt_f16_to_f32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < QT_QK_K; n += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l / 16;
                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

int qt_gguf_block_elems(qt_gguf_type t) {
    switch (t) {
    case QT_GGUF_Q4_0:
    case QT_GGUF_Q4_1:
    case QT_GGUF_Q8_0:
        return 32;
    case QT_GGUF_Q4_K:
    case QT_GGUF_Q6_K:
        return QT_QK_K;
    }
    return 0;
}

size_t qt_gguf_block_bytes(qt_gguf_type t) {
    switch (t) {
    case QT_GGUF_Q4_0:
        return sizeof(qt_block_q4_0);
    case QT_GGUF_Q4_1:
        return sizeof(qt_block_q4_1);
    case QT_GGUF_Q8_0:
        return sizeof(qt_block_q8_0);
    case QT_GGUF_Q4_K:
        return sizeof(qt_block_q4_K);
    case QT_GGUF_Q6_K:
        return sizeof(qt_block_q6_K);
    }
    return 0;
}

const char *qt_gguf_type_name(qt_gguf_type t) {
    switch (t) {
    case QT_GGUF_Q4_0:
        return "Q4_0";
    case QT_GGUF_Q4_1:
        return "Q4_1";
    case QT_GGUF_Q8_0:
        return "Q8_0";
    case QT_GGUF_Q4_K:
        return "Q4_K";
    case QT_GGUF_Q6_K:
        return "Q6_K";
    }
    return "?";
}

int qt_gguf_quantize_row(qt_gguf_type t, const float *x, void *dst, int64_t n) {
    int qk = qt_gguf_block_elems(t);
    if (!qk || !x || !dst || n < 0 || n % qk) return QT_Q_EARG;
    int64_t nb = n / qk;
    switch (t) {
    case QT_GGUF_Q4_0:
        q4_0_quantize(x, dst, nb);
        break;
    case QT_GGUF_Q4_1:
        q4_1_quantize(x, dst, nb);
        break;
    case QT_GGUF_Q8_0:
        q8_0_quantize(x, dst, nb);
        break;
    case QT_GGUF_Q4_K:
        q4_K_quantize(x, dst, nb);
        break;
    case QT_GGUF_Q6_K:
        q6_K_quantize(x, dst, nb);
        break;
    }
    return QT_Q_OK;
}

int qt_gguf_dequantize_row(qt_gguf_type t, const void *src, float *y, int64_t n) {
    int qk = qt_gguf_block_elems(t);
    if (!qk || !src || !y || n < 0 || n % qk) return QT_Q_EARG;
    int64_t nb = n / qk;
    switch (t) {
    case QT_GGUF_Q4_0:
        q4_0_dequantize(src, y, nb);
        break;
    case QT_GGUF_Q4_1:
        q4_1_dequantize(src, y, nb);
        break;
    case QT_GGUF_Q8_0:
        q8_0_dequantize(src, y, nb);
        break;
    case QT_GGUF_Q4_K:
        q4_K_dequantize(src, y, nb);
        break;
    case QT_GGUF_Q6_K:
        q6_K_dequantize(src, y, nb);
        break;
    }
    return QT_Q_OK;
}
