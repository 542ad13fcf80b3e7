/* gguf_blocks.h - GGUF / ggml block formats Q4_0, Q4_1, Q8_0, Q4_K, Q6_K: byte layouts as
 * ggml-common.h, quantization as ggml-quants.c's quantize_row_*_ref (the deterministic
 * reference llama.cpp writes model files with; Q4_K / Q6_K through make_qkx2_quants /
 * make_qx_quants, no importance matrix) and dequantize_row_*. fp16 scales round to nearest
 * even. Compiled without FP contraction (ISO C mode), so results equal the reference built the
 * same way; a build of ggml that fuses multiply-adds can differ in the last bit of a scale. */
#ifndef QT_GGUF_BLOCKS_H
#define QT_GGUF_BLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qerr.h"

enum { QT_QK4_0 = 32, QT_QK4_1 = 32, QT_QK8_0 = 32, QT_QK_K = 256, QT_K_SCALE_SIZE = 12 };

/* values are ggml's type ids (GGUF tensor types) */
typedef enum {
    QT_GGUF_Q4_0 = 2,
    QT_GGUF_Q4_1 = 3,
    QT_GGUF_Q8_0 = 8,
    QT_GGUF_Q4_K = 12,
    QT_GGUF_Q6_K = 14
} qt_gguf_type;

typedef struct {
    uint16_t d; /* fp16 delta */
    uint8_t qs[QT_QK4_0 / 2];
} qt_block_q4_0;

typedef struct {
    uint16_t d, m; /* fp16 delta, fp16 min */
    uint8_t qs[QT_QK4_1 / 2];
} qt_block_q4_1;

typedef struct {
    uint16_t d;
    int8_t qs[QT_QK8_0];
} qt_block_q8_0;

typedef struct {
    uint16_t d, dmin;                /* fp16 super-block scales of the scales and mins */
    uint8_t scales[QT_K_SCALE_SIZE]; /* 8 scales + 8 mins, 6 bits each */
    uint8_t qs[QT_QK_K / 2];
} qt_block_q4_K;

typedef struct {
    uint8_t ql[QT_QK_K / 2];     /* low 4 bits */
    uint8_t qh[QT_QK_K / 4];     /* high 2 bits */
    int8_t scales[QT_QK_K / 16]; /* 8-bit sub-block scales */
    uint16_t d;                  /* fp16 super-block scale */
} qt_block_q6_K;

_Static_assert(sizeof(qt_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(qt_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(qt_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(qt_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(qt_block_q6_K) == 210, "q6_K layout");

/* the reference's round-to-nearest through the fp32 mantissa (valid for |x| <= 4194303) */
static inline int qt_gguf_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int32_t i;
    memcpy(&i, &val, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* the 6-bit scale and min of sub-block j (0..7) of a Q4_K block's scales[12] */
static inline void qt_q4_K_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* elements per block (32 or 256), bytes per block; 0 for an unknown type */
int qt_gguf_block_elems(qt_gguf_type t);
size_t qt_gguf_block_bytes(qt_gguf_type t);
const char *qt_gguf_type_name(qt_gguf_type t);

/* n must be a multiple of the block size; dst holds n / elems blocks */
int qt_gguf_quantize_row(qt_gguf_type t, const float *x, void *dst, int64_t n);
int qt_gguf_dequantize_row(qt_gguf_type t, const void *src, float *y, int64_t n);

#endif
