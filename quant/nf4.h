/* nf4.h - NF4 4-bit blockwise quantization with double-quantized block scales, byte for byte
 * as bitsandbytes' quantize_4bit(quant_type="nf4", compress_statistics=True) on CUDA.
 *
 * Layout: the tensor is flattened row-major and cut into blocks of `blocksize` (64 default,
 * 32..4096 powers of two), the last one partial. Each block keeps its fp32 absmax; an element
 * becomes the index of the nearest of the 16 NF4 values to x * (1/absmax) (fp32 reciprocal,
 * decisions on the kernel's midpoint thresholds, a tie goes to the lower code). Two codes per
 * byte, the first element in the high nibble; for an odd count the last low nibble is the code
 * of a zero pad value (0x7), as the kernel writes it. Double quantization: offset =
 * mean(absmax); (absmax - offset) quantized with the signed 8-bit dynamic map (dynamic_map.h)
 * in blocks of 256 with their own fp32 absmax: 4 + 8/64 + 32/(64*256) = 4.127 bits/param. */
#ifndef QT_NF4_H
#define QT_NF4_H

#include <stdint.h>

#include "qerr.h"

enum { QT_NF4_BLOCK_DEFAULT = 64, QT_NF4_NESTED_BLOCK = 256, QT_NF4_MAX_DIMS = 4 };

/* the dtype the weight had before quantization (dequantization returns it) */
typedef enum { QT_NF4_F32 = 0, QT_NF4_F16 = 1, QT_NF4_BF16 = 2 } qt_nf4_dtype;

/* the 16 NF4 values, as bitsandbytes' nf4_dequantization_lut (code 7 is 0, 15 is 1) */
extern const float qt_nf4_code[16];

/* 1 when bs is a block size bitsandbytes accepts for 4-bit (32..4096, power of two) */
int qt_nf4_blocksize_ok(int bs);

/* the 4-bit code of an already scaled value (x * 1/absmax), as dQuantizeNF4 */
uint8_t qt_nf4_quantize_value(float x);

/* Blockwise NF4 of n floats: packed gets (n+1)/2 bytes, absmax ceil(n/bs) floats. */
int qt_nf4_quantize_f32(const float *x, int64_t n, int blocksize, uint8_t *packed, float *absmax);
/* out[i] = code[nibble i] * absmax[i / bs], in fp32 */
int qt_nf4_dequantize_f32(const uint8_t *packed, const float *absmax, int64_t n, int blocksize,
                          float *out);

/* Double quantization of a first-level absmax vector of nblocks floats.
 * offset: pass qt_nf4_absmax_mean(absmax, nblocks) (or a value read from a file).
 * q gets nblocks codes, nested_absmax ceil(nblocks/256) floats. */
float qt_nf4_absmax_mean(const float *absmax, int64_t nblocks);
int qt_nf4_dq_compress(const float *absmax, int64_t nblocks, float offset, uint8_t *q,
                       float *nested_absmax);
/* absmax[i] = map[q[i]] * nested_absmax[i/256] + offset, rounded after each step (the
 * kernel's product, then torch's fp32 add) */
int qt_nf4_dq_decompress(const uint8_t *q, const float *nested_absmax, int64_t nblocks,
                         float offset, float *absmax);

/* A quantized weight: what a bitsandbytes Params4bit + QuantState holds. */
typedef struct {
    int ndim;
    int64_t shape[QT_NF4_MAX_DIMS];
    int64_t numel;
    int blocksize;
    qt_nf4_dtype dtype;     /* of the original weight */
    uint8_t *data;          /* (numel+1)/2 packed codes */
    int64_t nblocks;        /* ceil(numel / blocksize) */
    int nested;             /* 1: the block absmax is double-quantized */
    float *absmax;          /* nested == 0: nblocks floats; else NULL */
    uint8_t *absmax_q;      /* nested == 1: nblocks 8-bit codes of absmax - offset */
    float offset;           /* nested == 1: mean of the first-level absmax */
    int nested_blocksize;   /* 256 */
    int64_t nested_nblocks; /* ceil(nblocks / 256) */
    float *nested_absmax;   /* nested == 1: nested_nblocks floats */
} qt_nf4_tensor;

/* Quantizes src (dtype, shape) into t (allocated here; free with qt_nf4_tensor_free). */
int qt_nf4_tensor_quantize(qt_nf4_tensor *t, const void *src, qt_nf4_dtype dtype, int ndim,
                           const int64_t *shape, int blocksize, int nested);
/* Allocates an empty tensor of that geometry (for a reader to fill). */
int qt_nf4_tensor_alloc(qt_nf4_tensor *t, qt_nf4_dtype dtype, int ndim, const int64_t *shape,
                        int blocksize, int nested);
/* The first-level absmax (recovered through the double quantization when nested). */
int qt_nf4_tensor_absmax(const qt_nf4_tensor *t, float *absmax);
/* numel floats */
int qt_nf4_tensor_dequantize_f32(const qt_nf4_tensor *t, float *out);
/* numel elements of t->dtype (fp32 products rounded to bf16/f16 to nearest even, as the
 * kernel stores them) */
int qt_nf4_tensor_dequantize(const qt_nf4_tensor *t, void *out);
void qt_nf4_tensor_free(qt_nf4_tensor *t);

#endif
