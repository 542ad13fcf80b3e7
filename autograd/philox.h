/* philox.h - Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011;
 * the Random123 generator) and the dropout mask built on it. Header-only and written so the same
 * code compiles as C11 on the host and as CUDA device code: CPU and GPU kernels that include it
 * draw identical masks.
 *
 * The dropout mask (the contract every backend implements):
 *   for element i (flat index, 0-based) of a dropout call keyed by (seed, offset):
 *     counter = { (uint32)(i >> 2), (uint32)(i >> 34), (uint32)offset, (uint32)(offset >> 32) }
 *     key     = { (uint32)seed, (uint32)(seed >> 32) }
 *     word    = philox4x32_10(counter, key)[i & 3]
 *     u       = (word >> 8) * 2^-24            (exact in f32, in [0, 1))
 *     keep    = u >= p                         (p compared as f32)
 *   kept elements are scaled by (f32)(1 / (1 - p)) computed in f32 as 1.0f / (1.0f - p).
 * So four consecutive elements share one Philox block; seed is the context's rng_seed and each
 * dropout call takes the next offset of the context's rng_offset stream. */
#ifndef QT_PHILOX_H
#define QT_PHILOX_H

#include <stdbool.h>
#include <stdint.h>

#ifndef QT_HD
#ifdef __CUDACC__
#define QT_HD __host__ __device__
#else
#define QT_HD
#endif
#endif

#define QT_PHILOX_M0 0xD2511F53u
#define QT_PHILOX_M1 0xCD9E8D57u
#define QT_PHILOX_W0 0x9E3779B9u /* key bumps: golden ratio, sqrt(3) - 1 */
#define QT_PHILOX_W1 0xBB67AE85u

static inline QT_HD void qt_philox_round(uint32_t c[4], const uint32_t k[2]) {
    uint64_t p0 = (uint64_t)QT_PHILOX_M0 * c[0];
    uint64_t p1 = (uint64_t)QT_PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k[0];
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k[1];
    c[3] = lo0;
}

/* out = Philox4x32-10(counter, key); out may alias counter */
static inline QT_HD void qt_philox4x32_10(const uint32_t counter[4], const uint32_t key[2],
                                          uint32_t out[4]) {
    uint32_t c[4] = {counter[0], counter[1], counter[2], counter[3]};
    uint32_t k[2] = {key[0], key[1]};
    qt_philox_round(c, k);
    for (int r = 1; r < 10; r++) {
        k[0] += QT_PHILOX_W0;
        k[1] += QT_PHILOX_W1;
        qt_philox_round(c, k);
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

/* The four words of the block holding elements 4*blk .. 4*blk+3 of call (seed, offset). */
static inline QT_HD void qt_dropout_block(uint64_t seed, uint64_t offset, uint64_t blk,
                                          uint32_t out[4]) {
    const uint32_t c[4] = {(uint32_t)blk, (uint32_t)(blk >> 32), (uint32_t)offset,
                           (uint32_t)(offset >> 32)};
    const uint32_t k[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    qt_philox4x32_10(c, k, out);
}

/* u in [0, 1) with 24 random bits: exactly representable in f32 */
static inline QT_HD float qt_philox_uniform(uint32_t word) {
    return (float)(word >> 8) * (1.0f / 16777216.0f);
}

/* Whether element i of dropout call (seed, offset) with drop probability p is kept. Kernels
 * that walk elements in blocks of four call qt_dropout_block once per block instead. */
static inline QT_HD bool qt_dropout_keep(uint64_t seed, uint64_t offset, uint64_t i, float p) {
    uint32_t w[4];
    qt_dropout_block(seed, offset, i >> 2, w);
    return qt_philox_uniform(w[i & 3]) >= p;
}

#endif
