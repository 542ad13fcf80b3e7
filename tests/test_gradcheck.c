/* test_gradcheck.c - the table-driven finite-difference gradient check. It walks the op table:
 * an op without a case in tests/op_cases.h fails the test. For each case variant, on fresh
 * random inputs, the analytic gradient of L = sum(out * R) (R random) is compared with the
 * central difference of L evaluated in float64. Seeds come from QT_SEED or the clock and are
 * printed, so a failure can be replayed. */
#include <stdio.h>
#include <time.h>

#include "qt_test.h"
#include "op_cases.h"

/* L = sum(out * R) in double */
static double loss_of(qt_ctx *ctx, const qt_tensor *out, const double *R) {
    int64_t n = qt_numel(out);
    double L = 0;
    for (int64_t i = 0; i < n; i++) L += (double)qt_tensor_get(ctx, out, i) * R[i];
    return L;
}

static double eval_loss(qt_ctx *ctx, op_case *c, const double *R, uint64_t rng0) {
    qt_step_reset(ctx);
    ctx->rng_offset = rng0;
    qt_no_grad_begin(ctx);
    qt_tensor *out = (c->ref_fn ? c->ref_fn : c->fn)(ctx, c->in, c);
    double L = loss_of(ctx, out, R);
    qt_no_grad_end(ctx);
    return L;
}

static void check_case(const char *opname, op_case_builder build, int v, uint64_t seed) {
    qt_ctx ctx;
    QT_CHECK(qt_ctx_init(&ctx, QT_CPU, seed, NULL) == 0, "ctx");
    op_case c;
    memset(&c, 0, sizeof c);
    if (!build(&ctx, v, seed, &c)) {
        qt_ctx_free(&ctx);
        return;
    }
    uint64_t rng0 = ctx.rng_offset;
    /* analytic */
    qt_tensor *out = c.fn(&ctx, c.in, &c);
    int64_t no = qt_numel(out);
    double *R = malloc((size_t)no * sizeof *R);
    float *Rf = malloc((size_t)no * sizeof *Rf);
    uint64_t s = seed ^ 0x5eedull;
    for (int64_t i = 0; i < no; i++) Rf[i] = (float)(2.0 * tc_uniform(&s) - 1.0), R[i] = Rf[i];
    QT_CHECK(out->dtype == QT_F32, "case outputs must be f32");
    qt_tensor *gR = qt_tensor_new_like(&ctx, out);
    qt_tensor_upload(&ctx, gR, Rf);
    QT_EXPECT(out->requires_grad, "%s[%d] %s: output does not require grad", opname, v, c.desc);
    if (out->requires_grad) qt_backward_from(&ctx, out, gR);

    for (int k = 0; k < c.n_in; k++) {
        if (!c.check[k]) continue;
        qt_tensor *x = c.in[k];
        int64_t n = qt_numel(x);
        QT_EXPECT(x->grad && x->grad_valid, "%s[%d] %s: input %d got no gradient", opname, v,
                  c.desc, k);
        if (!x->grad || !x->grad_valid) continue;
        float *xa = malloc((size_t)n * sizeof *xa), *ga = malloc((size_t)n * sizeof *ga);
        qt_tensor_download(&ctx, x, xa);
        qt_tensor_download(&ctx, x->grad, ga);
        double gmax = 0;
        for (int64_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(ga[i]));
        /* every element of small inputs, a random sample of 48 of large ones */
        int64_t m = n <= 96 ? n : 48;
        int bad = 0;
        for (int64_t t = 0; t < m; t++) {
            int64_t i = n <= 96 ? t : (int64_t)(tc_next(&s) % (uint64_t)n);
            float x0 = xa[i];
            double eps = c.eps > 0 ? c.eps : 1e-3 * fmax(1.0, fabs(x0));
            double num = 0, err = 0, lim = 0, num0 = 0;
            /* A central difference is biased when a kink of a piecewise function (a clip or
             * quantization boundary of the surrogates) lies within eps, and noisy where the
             * gradient is tiny next to the f32 loss: then a second step of eps/4 is taken and
             * the analytic value must agree with it or lie between the two estimates. A wrong
             * gradient is wrong at both steps. */
            for (int tries = 0; tries < 2; tries++, eps /= 4) {
                float xp = (float)(x0 + eps), xm = (float)(x0 - eps);
                xa[i] = xp;
                qt_tensor_upload(&ctx, x, xa);
                double Lp = eval_loss(&ctx, &c, R, rng0);
                xa[i] = xm;
                qt_tensor_upload(&ctx, x, xa);
                double Lm = eval_loss(&ctx, &c, R, rng0);
                xa[i] = x0;
                qt_tensor_upload(&ctx, x, xa);
                num = (Lp - Lm) / ((double)xp - (double)xm);
                err = fabs(num - ga[i]);
                lim = c.tol * (fabs(num) + gmax) + 1e-6;
                if (err <= lim) break;
                if (tries == 0) {
                    num0 = num;
                } else if (ga[i] >= fmin(num0, num) - lim && ga[i] <= fmax(num0, num) + lim) {
                    err = 0; /* bracketed by the two estimates */
                }
            }
            if (err > lim && bad++ < 3)
                fprintf(stderr, "  %s[%d] %s: d/d in%d[%lld]: analytic %.7g numeric %.7g\n", opname,
                        v, c.desc, k, (long long)i, ga[i], num);
        }
        QT_EXPECT(bad == 0, "%s[%d] %s: input %d: %d of %lld elements off (seed %llu)", opname, v,
                  c.desc, k, bad, (long long)m, (unsigned long long)seed);
        free(xa);
        free(ga);
    }
    free(R);
    free(Rf);
    free(c.user);
    qt_ctx_free(&ctx);
}

int main(void) {
    const char *env = getenv("QT_SEED");
    uint64_t seed0 = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("gradcheck: seed %llu (set QT_SEED to replay)\n", (unsigned long long)seed0);
    int ncases = (int)(sizeof qt_op_cases / sizeof qt_op_cases[0]);
    for (int op = 0; op < QT_OP_COUNT; op++) {
        const char *name = qt_op_name((qt_op)op);
        QT_EXPECT(qt_op_get((qt_op)op)->name != NULL, "op %d is not in the op table", op);
        QT_EXPECT(qt_op_get((qt_op)op)->bwd[QT_CPU] != NULL, "op %s has no CPU backward", name);
        int found = 0, variants = 0;
        for (int e = 0; e < ncases; e++) {
            if (qt_op_cases[e].op != (qt_op)op) continue;
            found = 1;
            for (int v = 0; v < 64; v++) {
                qt_ctx probe;
                QT_CHECK(qt_ctx_init(&probe, QT_CPU, 0, NULL) == 0, "ctx");
                op_case tmp;
                memset(&tmp, 0, sizeof tmp);
                int exists = qt_op_cases[e].build(&probe, v, 1, &tmp);
                free(tmp.user);
                qt_ctx_free(&probe);
                if (!exists) break;
                uint64_t seed = seed0 * 1000003ull + (uint64_t)op * 101 + (uint64_t)v;
                check_case(name, qt_op_cases[e].build, v, seed);
                variants++;
            }
        }
        QT_EXPECT(found, "op %s has no finite-difference gradient check", name);
        if (found) printf("  %-14s %d variants\n", name, variants);
    }
    return qt_test_finish("gradcheck");
}
