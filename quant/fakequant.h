/* fakequant.h - the fake-quant op of QAT as pure functions: y = dequant(quant(x)) for a format
 * given as data, a 1-bit clip mask for clipped straight-through gradients, and the LSQ / LSQ+
 * gradients of learned scales and offsets. autograd's fake-quant op calls these.
 *
 * Tensor view: x (any rank) is [rows, cols], cols = the last dimension.
 * Integer formats (bits b in 2..8), t = (x - offset) / scale, q = clamp(rint(t), qmin, qmax):
 *   symmetric:  qmin = -2^(b-1), qmax = 2^(b-1) - 1, offset 0,   y = q * scale
 *   asymmetric: qmin = 0,        qmax = 2^b - 1,     offset β,  y = q * scale + β
 * rint rounds half to even (torch.round, CUDA rintf). Scales per tensor [1], per channel or per
 * token (one per row) [rows], or per group of g along the last dimension [rows, cols/g].
 *   dynamic symmetric:  scale = absmax / qmax             (int8 per token: absmax / 127)
 *   dynamic asymmetric: scale = (max - min) / (2^b - 1), β = min
 *   learned: scale (> 0) and β (asymmetric) are given.
 * Deployment-exact formats call the codecs, so y is bit for bit what a file written by them
 * dequantizes to: GGUF Q4_0 / Q8_0 / Q4_K (rows of cols, cols a multiple of 32 / 256) and NF4
 * (bitsandbytes blocks over the flattened tensor, double-quantized scales by default).
 *
 * Clip mask: bit i (byte i/8, bit i%8) set = x[i] is not clipped. Learned scales clip where
 * t < qmin or t > qmax (a value exactly on an edge is representable, so inside). Dynamic
 * scales cover their group, so nothing clips; Q4_0 clips where its min(15, .) bites, Q4_K where
 * its [0, 15] clamp bites; Q8_0 and NF4 never clip. */
#ifndef QT_FAKEQUANT_H
#define QT_FAKEQUANT_H

#include <stdint.h>

#include "qerr.h"

typedef enum {
    QT_FQ_INT = 0,
    QT_FQ_Q4_0,
    QT_FQ_Q8_0,
    QT_FQ_Q4_K,
    QT_FQ_NF4,
} qt_fq_kind;

typedef enum {
    QT_FQ_PER_TENSOR = 0,
    QT_FQ_PER_CHANNEL, /* one scale per row of [rows, cols] (weights: output channels) */
    QT_FQ_PER_GROUP,   /* groups of `group` along the last dimension */
    QT_FQ_PER_TOKEN,   /* one scale per row of the flattened [tokens, dim] (activations) */
} qt_fq_granularity;

typedef enum { QT_FQ_DYNAMIC = 0, QT_FQ_LEARNED } qt_fq_scale_mode;

typedef struct {
    qt_fq_kind kind;
    /* QT_FQ_INT */
    int bits;      /* 2..8 */
    int symmetric; /* 1: symmetric, 0: asymmetric (learned or min/max offset) */
    qt_fq_granularity granularity;
    int group; /* QT_FQ_PER_GROUP */
    qt_fq_scale_mode scale_mode;
    /* QT_FQ_NF4 */
    int blocksize; /* 0 = 64 */
    int nf4_plain; /* 1: keep fp32 block absmax (no double quantization) */
} qt_fq_format;

/* 0 if f can quantize a tensor of that shape, else QT_Q_EARG */
int qt_fq_check(const qt_fq_format *f, int ndim, const int64_t *shape);
/* scales (and offsets) an INT format uses on that shape; 0 for the other kinds */
int64_t qt_fq_num_scales(const qt_fq_format *f, int ndim, const int64_t *shape);
/* elements sharing one scale (N of LSQ's gradient scale) */
int64_t qt_fq_group_size(const qt_fq_format *f, int ndim, const int64_t *shape);
/* the integer grid of an INT format */
void qt_fq_range(const qt_fq_format *f, int *qmin, int *qmax);

/* y = fake_quant(x). INT learned: scale (and offset when asymmetric) are read. INT dynamic:
 * the scales (and offsets) used are written when the pointers are non-NULL. mask: NULL or
 * (n+7)/8 bytes. y may alias x. */
int qt_fq_forward(const qt_fq_format *f, const float *x, int ndim, const int64_t *shape,
                  float *scale, float *offset, float *y, uint8_t *mask);

/* straight-through backward: gx = gy where the mask bit is set, else 0 (mask NULL: gx = gy) */
int qt_fq_backward_ste(const float *gy, const uint8_t *mask, int64_t n, float *gx);

/* LSQ (Esser et al. 2020) / LSQ+ (Bhalgat et al. 2020) backward for a learned INT format:
 *   gx     = gy inside [qmin, qmax], 0 outside
 *   gscale = g * sum gy * (rint(t) - t inside; qmin below; qmax above)
 *   goffset= g * sum gy * (0 inside; 1 outside)          (asymmetric only)
 * with g = 1 / sqrt(N * qmax), N the elements per scale. gscale / goffset are overwritten
 * (num_scales each); any output may be NULL. */
int qt_fq_backward_lsq(const qt_fq_format *f, const float *x, int ndim, const int64_t *shape,
                       const float *scale, const float *offset, const float *gy, float *gx,
                       float *gscale, float *goffset);

/* int8 symmetric per-token dynamic fake-quant of activations [tokens, dim]: scale = absmax/127;
 * scale may be NULL */
int qt_fq_int8_per_token(const float *x, int64_t tokens, int64_t dim, float *y, float *scale);

#endif
