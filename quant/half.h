/* half.h - IEEE fp16 and bfloat16 <-> fp32 conversions, round-to-nearest-even.
 * Bit-level so that the CPU reference, the GGUF codecs and the CUDA kernels agree exactly
 * (CUDA's __float2half_rn / __float2bfloat16_rn round the same way). No libm, no globals. */
#ifndef QT_HALF_H
#define QT_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t qt_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float qt_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* bf16 is the top half of an fp32; NaNs stay quiet NaNs (rounding could carry them to inf). */
static inline uint16_t qt_f32_to_bf16(float f) {
    uint32_t u = qt_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float qt_bf16_to_f32(uint16_t h) {
    return qt_f32_from_bits((uint32_t)h << 16);
}

uint16_t qt_f32_to_f16(float f);
float qt_f16_to_f32(uint16_t h);

#endif
