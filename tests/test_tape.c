/* test_tape.c - the tape's contract: gradients set then accumulate, frozen tensors never get a
 * gradient buffer, no-grad regions record nothing, step reset releases activations but keeps
 * parameter gradients accumulating, the arena reuses its chunks, and a checkpointed span gives
 * bit-identical gradients to the same span run plainly while keeping fewer activations; with
 * the gradient-ready hook (optimizer in backward) each trainable tensor is reported once, when
 * its gradient is complete, except a checkpointed span's input, which waits. */
#include <stdio.h>

#include "op_cases.h"
#include "qt_test.h"

static qt_tensor *leaf(qt_ctx *ctx, int64_t r, int64_t c, bool rg, uint64_t seed, const char *n) {
    uint64_t s = seed;
    return tc_uniform_leaf(ctx, &s, 2, TC_SHAPE(r, c), -1, 1, rg, n);
}

static void test_accumulate(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *w = leaf(&ctx, 3, 4, true, 1, "w");
    qt_tensor *frozen = leaf(&ctx, 3, 4, false, 2, "frozen");
    /* y = w*frozen + w: w's gradient is frozen + 1, from two contributions */
    qt_tensor *y = qt_add(&ctx, qt_mul(&ctx, w, frozen), w);
    QT_EXPECT(y->requires_grad, "output of a trainable input requires grad");
    QT_EXPECT(ctx.tape_len == 2, "two nodes recorded, got %d", ctx.tape_len);
    qt_tensor *ones = qt_tensor_new_like(&ctx, y);
    for (int i = 0; i < 12; i++) qt_f32(ones)[i] = 1.0f;
    qt_backward_from(&ctx, y, ones);
    QT_EXPECT(frozen->grad == NULL, "a frozen tensor gets no gradient buffer");
    int ok = 1;
    for (int i = 0; i < 12; i++) ok &= qt_f32(w->grad)[i] == qt_f32(frozen)[i] + 1.0f;
    QT_EXPECT(ok, "set-then-accumulate gives frozen + 1");

    /* a second micro-step accumulates into the persistent gradient */
    qt_step_reset(&ctx);
    QT_EXPECT(ctx.tape_len == 0, "reset clears the tape");
    y = qt_add(&ctx, qt_mul(&ctx, w, frozen), w);
    ones = qt_tensor_new_like(&ctx, y);
    for (int i = 0; i < 12; i++) qt_f32(ones)[i] = 1.0f;
    qt_backward_from(&ctx, y, ones);
    ok = 1;
    for (int i = 0; i < 12; i++) /* (1 + f) + 1 + f, rounded at each add */
        ok &= fabsf(qt_f32(w->grad)[i] - 2.0f * (qt_f32(frozen)[i] + 1.0f)) < 1e-6f;
    QT_EXPECT(ok, "parameter gradients accumulate across micro-steps");
    qt_grad_zero(w);
    qt_step_reset(&ctx);
    y = qt_mul(&ctx, w, frozen);
    ones = qt_tensor_new_like(&ctx, y);
    for (int i = 0; i < 12; i++) qt_f32(ones)[i] = 1.0f;
    qt_backward_from(&ctx, y, ones);
    ok = 1;
    for (int i = 0; i < 12; i++) ok &= qt_f32(w->grad)[i] == qt_f32(frozen)[i];
    QT_EXPECT(ok, "after qt_grad_zero the next contribution sets");
    qt_ctx_free(&ctx);
}

static void test_no_grad(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *w = leaf(&ctx, 2, 2, true, 1, "w");
    qt_tensor *f = leaf(&ctx, 2, 2, false, 2, "f");
    qt_no_grad_begin(&ctx);
    qt_tensor *y = qt_mul(&ctx, w, w);
    qt_no_grad_end(&ctx);
    QT_EXPECT(!y->requires_grad && ctx.tape_len == 0, "no-grad region records nothing");
    y = qt_mul(&ctx, f, f);
    QT_EXPECT(!y->requires_grad && ctx.tape_len == 0, "ops on frozen tensors record nothing");
    QT_EXPECT(qt_grad_enabled(&ctx), "grad mode restored");
    qt_ctx_free(&ctx);
}

static void test_arena_reuse(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *w = leaf(&ctx, 64, 64, true, 1, "w");
    size_t reserved = 0;
    for (int step = 0; step < 5; step++) {
        qt_step_reset(&ctx);
        qt_tensor *y = w;
        for (int i = 0; i < 20; i++) y = qt_matmul(&ctx, y, w, false, true);
        if (step == 1) reserved = ctx.data.reserved;
        if (step > 1)
            QT_EXPECT(ctx.data.reserved == reserved, "step %d reserved more memory (%zu > %zu)",
                      step, ctx.data.reserved, reserved);
    }
    qt_ctx_free(&ctx);
}

/* ---- checkpointing ---- */
typedef struct {
    qt_tensor *w1, *w2;
} mlp;

static qt_tensor *block(qt_ctx *ctx, qt_tensor **in, void *user) {
    mlp *m = user;
    qt_tensor *h = qt_swiglu(ctx, qt_matmul(ctx, in[0], m->w1, false, true),
                             qt_matmul(ctx, in[0], m->w2, false, true));
    return qt_add(ctx, in[0], qt_matmul(ctx, h, m->w1, false, false)); /* residual */
}

static void run_net(qt_ctx *ctx, mlp *m, int nblocks, qt_tensor *x, bool ckpt, float *gw1,
                    float *gw2, float *gx, size_t *peak) {
    qt_step_reset(ctx);
    qt_grad_zero(m->w1);
    qt_grad_zero(m->w2);
    qt_grad_zero(x);
    ctx->data.high_water = 0;
    qt_tensor *h = x;
    for (int b = 0; b < nblocks; b++)
        h = ckpt ? qt_checkpoint(ctx, block, 1, &h, m) : block(ctx, &h, m);
    qt_tensor *g = qt_tensor_new_like(ctx, h);
    for (int64_t i = 0; i < qt_numel(g); i++) qt_f32(g)[i] = (float)((i % 7) - 3) * 0.1f;
    qt_backward_from(ctx, h, g);
    memcpy(gw1, m->w1->grad->data, qt_nbytes(m->w1));
    memcpy(gw2, m->w2->grad->data, qt_nbytes(m->w2));
    memcpy(gx, x->grad->data, qt_nbytes(x));
    *peak = ctx->data.high_water;
}

static void test_checkpoint(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    int64_t T = 64, D = 16, F = 48;
    mlp m = {leaf(&ctx, F, D, true, 11, "w1"), leaf(&ctx, F, D, true, 12, "w2")};
    qt_tensor *x = leaf(&ctx, T, D, true, 13, "x");
    float *a1 = malloc(F * D * 4), *a2 = malloc(F * D * 4), *ax = malloc(T * D * 4);
    float *b1 = malloc(F * D * 4), *b2 = malloc(F * D * 4), *bx = malloc(T * D * 4);
    size_t peak_plain, peak_ckpt;
    run_net(&ctx, &m, 6, x, false, a1, a2, ax, &peak_plain);
    run_net(&ctx, &m, 6, x, true, b1, b2, bx, &peak_ckpt);
    QT_EXPECT(!memcmp(a1, b1, F * D * 4) && !memcmp(a2, b2, F * D * 4) &&
                  !memcmp(ax, bx, T * D * 4),
              "checkpointed gradients are bit-identical to plain ones");
    QT_EXPECT(peak_ckpt < peak_plain, "checkpointing lowers peak activation memory (%zu vs %zu)",
              peak_ckpt, peak_plain);
    printf("checkpoint: peak step memory %zu bytes plain, %zu checkpointed\n", peak_plain,
           peak_ckpt);
    free(a1), free(a2), free(ax), free(b1), free(b2), free(bx);
    qt_ctx_free(&ctx);
}

/* spans whose output is not shaped like their input: [T, D] -> [T, F] -> [T, D] */
static qt_tensor *up_span(qt_ctx *ctx, qt_tensor **in, void *user) {
    mlp *m = user;
    return qt_swiglu(ctx, qt_matmul(ctx, in[0], m->w1, false, true),
                     qt_matmul(ctx, in[0], m->w2, false, true));
}
static qt_tensor *down_span(qt_ctx *ctx, qt_tensor **in, void *user) {
    mlp *m = user;
    return qt_silu(ctx, qt_matmul(ctx, in[0], m->w1, false, false));
}

static void run_reshaping(qt_ctx *ctx, mlp *m, qt_tensor *x, bool ckpt, float *out) {
    qt_step_reset(ctx);
    qt_grad_zero(m->w1);
    qt_grad_zero(m->w2);
    qt_grad_zero(x);
    qt_tensor *h = x;
    for (int b = 0; b < 3; b++) {
        h = ckpt ? qt_checkpoint(ctx, up_span, 1, &h, m) : up_span(ctx, &h, m);
        h = ckpt ? qt_checkpoint(ctx, down_span, 1, &h, m) : down_span(ctx, &h, m);
    }
    qt_tensor *g = qt_tensor_new_like(ctx, h);
    for (int64_t i = 0; i < qt_numel(g); i++) qt_f32(g)[i] = (float)((i % 5) - 2) * 0.1f;
    qt_backward_from(ctx, h, g);
    size_t nw = (size_t)qt_numel(m->w1), nx = (size_t)qt_numel(x);
    memcpy(out, h->data, nx * 4);
    memcpy(out + nx, m->w1->grad->data, nw * 4);
    memcpy(out + nx + nw, m->w2->grad->data, nw * 4);
    memcpy(out + nx + 2 * nw, x->grad->data, nx * 4);
}

static void test_checkpoint_reshaping(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    int64_t T = 32, D = 16, F = 40;
    mlp m = {leaf(&ctx, F, D, true, 21, "w1"), leaf(&ctx, F, D, true, 22, "w2")};
    qt_tensor *x = leaf(&ctx, T, D, true, 23, "x");
    size_t n = (size_t)(2 * T * D + 2 * F * D);
    float *a = malloc(n * 4), *b = malloc(n * 4);
    run_reshaping(&ctx, &m, x, false, a);
    run_reshaping(&ctx, &m, x, true, b);
    QT_EXPECT(!memcmp(a, b, n * 4),
              "spans that change the shape: output and gradients bit-identical to plain ones");
    free(a), free(b);
    qt_ctx_free(&ctx);
}

/* ---- gradients ready during the backward (optimizer in backward) ---- */
typedef struct {
    int n;
    qt_tensor *t[8];
    float *g[8]; /* the gradient as the hook saw it */
} ready_log;

static void on_ready(qt_ctx *ctx, qt_tensor *t, void *user) {
    ready_log *l = user;
    QT_CHECK(l->n < 8, "hook called too often");
    l->t[l->n] = t;
    l->g[l->n] = malloc(qt_nbytes(t));
    memcpy(l->g[l->n++], t->grad->data, qt_nbytes(t));
    qt_grad_release(ctx, t);
    QT_EXPECT(t->grad == NULL && !t->grad_valid, "released: no gradient");
}

/* The six-block net above with the hook on: w1 and w2 (used 2 and 1 times in every block, all
 * blocks sharing them) are reported once each, after the first block's backward, with the
 * normal run's gradients; x is reported too when the blocks run plainly, but not when it is
 * the first checkpointed span's input (the replay sees an alias): then its gradient stays
 * valid after the backward, until qt_grad_ready_end drops it. None is persistent. */
static void test_grad_ready(void) {
    int64_t T = 64, D = 16, F = 48;
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        qt_ctx ra, rb;
        qt_ctx_init(&ra, QT_CPU, 1, NULL);
        qt_ctx_init(&rb, QT_CPU, 1, NULL);
        mlp ma = {leaf(&ra, F, D, true, 11, "w1"), leaf(&ra, F, D, true, 12, "w2")};
        mlp mb = {leaf(&rb, F, D, true, 11, "w1"), leaf(&rb, F, D, true, 12, "w2")};
        qt_tensor *xa = leaf(&ra, T, D, true, 13, "x"), *xb = leaf(&rb, T, D, true, 13, "x");
        float *a1 = malloc(F * D * 4), *a2 = malloc(F * D * 4), *ax = malloc(T * D * 4);
        size_t peak;
        run_net(&ra, &ma, 6, xa, ckpt, a1, a2, ax, &peak);
        size_t persist0 = rb.persist_bytes;
        ready_log l = {0};
        qt_grad_ready_begin(&rb, on_ready, &l);
        qt_tensor *h = xb;
        for (int b = 0; b < 6; b++)
            h = ckpt ? qt_checkpoint(&rb, block, 1, &h, &mb) : block(&rb, &h, &mb);
        qt_tensor *g = qt_tensor_new_like(&rb, h);
        for (int64_t i = 0; i < qt_numel(g); i++) qt_f32(g)[i] = (float)((i % 7) - 3) * 0.1f;
        qt_backward_from(&rb, h, g);
        int i1 = -1, i2 = -1, ix = -1;
        for (int k = 0; k < l.n; k++) {
            if (l.t[k] == mb.w1) i1 = i1 < 0 ? k : 99;
            if (l.t[k] == mb.w2) i2 = i2 < 0 ? k : 99;
            if (l.t[k] == xb) ix = ix < 0 ? k : 99;
        }
        QT_EXPECT(i1 >= 0 && i1 < 99 && i2 >= 0 && i2 < 99,
                  "%s: w1 and w2 reported once each (%d, %d; %d calls)", ckpt ? "ckpt" : "plain",
                  i1, i2, l.n);
        if (i1 >= 0 && i1 < 99 && i2 >= 0 && i2 < 99)
            QT_EXPECT(!memcmp(l.g[i1], a1, F * D * 4) && !memcmp(l.g[i2], a2, F * D * 4),
                      "%s: reported gradients equal the normal run's", ckpt ? "ckpt" : "plain");
        if (!ckpt) {
            QT_EXPECT(ix >= 0 && ix < 99 && l.n == 3 && !memcmp(l.g[ix], ax, T * D * 4),
                      "plain: x reported once, with its gradient (%d calls)", l.n);
        } else {
            QT_EXPECT(ix < 0 && l.n == 2, "ckpt: a span's input is not reported (%d calls)", l.n);
            QT_EXPECT(xb->grad && xb->grad_valid && !memcmp(xb->grad->data, ax, T * D * 4),
                      "ckpt: x's gradient waits, complete, after the backward");
        }
        QT_EXPECT(rb.persist_bytes == persist0, "no persistent gradient was made");
        QT_EXPECT(rb.grad_arena.high_water > 0, "the gradients came from the gradient arena");
        size_t hw = rb.grad_arena.high_water;
        qt_grad_ready_end(&rb);
        QT_EXPECT(xb->grad == NULL && !xb->grad_valid && rb.n_grad_live == 0 &&
                      rb.grad_ready == NULL && rb.grad_arena.in_use == 0,
                  "the hook's end drops what is left");
        printf("grad ready (%s): %d gradients reported during the backward, arena high water "
               "%zu bytes\n",
               ckpt ? "checkpointed" : "plain", l.n, hw);
        for (int k = 0; k < l.n; k++) free(l.g[k]);
        free(a1), free(a2), free(ax);
        qt_ctx_free(&ra), qt_ctx_free(&rb);
    }
}

int main(void) {
    test_grad_ready();
    test_accumulate();
    test_no_grad();
    test_arena_reuse();
    test_checkpoint();
    test_checkpoint_reshaping();
    return qt_test_finish("tape");
}
