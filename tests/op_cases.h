/* op_cases.h - one list of test cases per op, shared by the finite-difference gradient check
 * (test_gradcheck.c, CPU) and the CPU-vs-CUDA parity test (test_gpu_ops.c).
 * A builder makes the leaves of variant v of an op's case on the given context from a seed,
 * so the same seed gives the same inputs on every device. It returns 0 when there is no such
 * variant. Each op family adds its builders in tests/cases_<family>.h, included below, and
 * registers them in QT_OP_CASES. */
#ifndef QT_OP_CASES_H
#define QT_OP_CASES_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "quant/half.h"

typedef struct op_case op_case;
typedef qt_tensor *(*op_case_fn)(qt_ctx *ctx, qt_tensor **in, const op_case *c);

struct op_case {
    int n_in;
    qt_tensor *in[QT_MAX_IN]; /* leaves: persistent tensors on the context's device */
    bool check[QT_MAX_IN];    /* finite-difference this input (float, requires grad) */
    bool keep_f32[QT_MAX_IN]; /* an f32 table the op takes as f32 in any storage mode */
    op_case_fn fn;            /* recomputes the op's output from the leaves */
    float fp[4];
    int64_t ip[8];
    double tol; /* relative tolerance of the gradient check (f32 kernels, f64 reference) */
    double eps; /* finite-difference step (0: 1e-3 * max(1, |x|)) */
    /* For ops whose backward is a defined surrogate (straight-through estimators, LSQ), the
     * smooth function whose exact gradient the backward claims: finite differences are taken
     * of ref_fn instead of fn. user: the case's own data (freed by the harness). */
    op_case_fn ref_fn;
    void *user;
    char desc[96];
};

typedef int (*op_case_builder)(qt_ctx *ctx, int variant, uint64_t seed, op_case *c);

/* ---- deterministic host randomness (splitmix64) ---------------------------------------- */

static inline uint64_t tc_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline double tc_uniform(uint64_t *s) { /* [0, 1) */
    return (double)(tc_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static inline double tc_normal(uint64_t *s) {
    double u1 = tc_uniform(s), u2 = tc_uniform(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* A leaf with values uniform in [lo, hi). */
static inline qt_tensor *tc_uniform_leaf(qt_ctx *ctx, uint64_t *s, int ndim, const int64_t *shape,
                                         double lo, double hi, bool rg, const char *name) {
    qt_tensor *t = qt_param_new(ctx, QT_F32, ndim, shape, rg, name);
    int64_t n = qt_numel(t);
    float *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = (float)(lo + (hi - lo) * tc_uniform(s));
    qt_tensor_upload(ctx, t, h);
    free(h);
    return t;
}

static inline qt_tensor *tc_normal_leaf(qt_ctx *ctx, uint64_t *s, int ndim, const int64_t *shape,
                                        double std, bool rg, const char *name) {
    qt_tensor *t = qt_param_new(ctx, QT_F32, ndim, shape, rg, name);
    int64_t n = qt_numel(t);
    float *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = (float)(std * tc_normal(s));
    qt_tensor_upload(ctx, t, h);
    free(h);
    return t;
}

/* An i32 leaf from host values. */
static inline qt_tensor *tc_i32_leaf(qt_ctx *ctx, int ndim, const int64_t *shape,
                                     const int32_t *vals, const char *name) {
    qt_tensor *t = qt_param_new(ctx, QT_I32, ndim, shape, false, name);
    qt_tensor_upload(ctx, t, vals);
    return t;
}

#define TC_SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* ---- the families' cases --------------------------------------------------------------- */
#include "cases_basic.h"
#include "cases_llama.h"
#include "cases_attention.h"
#include "cases_quant.h"

/* ---- the registry: op -> builder (an op may appear more than once) ------------------------ */
typedef struct {
    qt_op op;
    op_case_builder build;
} op_case_entry;

static const op_case_entry qt_op_cases[] = {
    QT_CASES_BASIC QT_CASES_LLAMA QT_CASES_ATTENTION QT_CASES_QUANT};

#endif
