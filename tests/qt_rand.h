/* qt_rand.h - the seeded test data of the quant tests: xorshift64, uniform, Gaussian, and
 * fill() with Gaussian (0), Laplace (1) or Student-t(3) (2) values scaled to std ~0.02, the
 * spread of trained weights. Shared so that every format is measured on the same data. */
#ifndef QT_RAND_H
#define QT_RAND_H

#include <math.h>
#include <stdint.h>

static inline uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static inline double unif01(uint64_t *s) {
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}
static inline double gauss(uint64_t *s) {
    return sqrt(-2.0 * log(unif01(s))) * cos(6.283185307179586 * unif01(s));
}
static inline void fill(float *x, int64_t n, int dist, uint64_t seed) {
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        double v;
        if (dist == 0) {
            v = gauss(&s);
        } else if (dist == 1) {
            v = (unif01(&s) < 0.5 ? -1 : 1) * log(unif01(&s)) / sqrt(2.0);
        } else {
            double g = gauss(&s), c = 0;
            for (int k = 0; k < 3; k++) {
                double z = gauss(&s);
                c += z * z;
            }
            v = g / sqrt(c / 3.0) / sqrt(3.0);
        }
        x[i] = (float)(0.02 * v);
    }
}

#endif
