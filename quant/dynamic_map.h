/* dynamic_map.h - bitsandbytes' 8-bit "dynamic" quantization map (create_dynamic_map) and
 * blockwise 8-bit quantization with it (quantize_blockwise / dequantize_blockwise), as its CUDA
 * kernels compute them. The NF4 double quantization uses the signed map with block 256. */
#ifndef QT_DYNAMIC_MAP_H
#define QT_DYNAMIC_MAP_H

#include <stdint.h>

#include "qerr.h"

enum { QT_DYNMAP_SIZE = 256 };

/* create_dynamic_map(signed, max_exponent_bits, total_bits): 256 sorted floats (maps of fewer
 * than 8 bits are padded with zeros, as the Python pads them before sorting). Returns
 * QT_Q_EARG for parameters the Python asserts on. */
int qt_dynmap_create(int is_signed, int max_exponent_bits, int total_bits, float map[256]);
/* the map bitsandbytes uses by default: signed, 7 exponent bits, 8 bits */
int qt_dynmap_default(float map[256]);

/* the code of an already scaled value x (x * 1/absmax) in a sorted 256-entry map: the
 * kernel's 7-step binary search (dQuantize<0>) and its midpoint rule */
uint8_t qt_dynmap_quantize_value(const float map[256], float x);

/* The search itself, one source for the CPU and the CUDA kernels (cuda/optim8.cu,
 * cuda/fakequant.cu): seven halving steps from pivot 127 narrow x to a neighbourhood, then x
 * goes to the nearer of pivot and the neighbour on its side, by fp32 midpoint (an add then a
 * halving: nothing a compiler may contract); exactly on the midpoint it stays at the pivot.
 * NaN fails every `>` and so walks down, ending at code 0. */
#ifdef __CUDACC__
#define QT_DYNMAP_FN static inline __host__ __device__
#else
#define QT_DYNMAP_FN static inline
#endif
QT_DYNMAP_FN int qt_dynmap_search(const float *map, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = map[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
    }
    if (upper_pivot == 255) upper = map[upper_pivot];
    if (lower_pivot == 0) lower = map[lower_pivot];
    if (x > val) return x > (upper + val) * 0.5f ? upper_pivot : pivot;
    return x < (lower + val) * 0.5f ? lower_pivot : pivot;
}

/* Blockwise 8-bit: per block of `blocksize` (64..4096, power of two) absmax in fp32, codes of
 * x * (1/absmax). q gets n codes, absmax ceil(n/blocksize) floats. */
int qt_dynmap_quantize_blockwise(const float *x, int64_t n, int blocksize, const float map[256],
                                 uint8_t *q, float *absmax);
/* out[i] = map[q[i]] * absmax[i / blocksize] */
int qt_dynmap_dequantize_blockwise(const uint8_t *q, const float *absmax, int64_t n, int blocksize,
                                   const float map[256], float *out);

#endif
