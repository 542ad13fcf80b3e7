/* test_optim.c - AdamW, clipping and the schedules against hand-computed values (the 3-step
 * comparison with torch's AdamW through PEFT lives in the model tests). */
#include <stdio.h>

#include "qt_test.h"
#include "autograd/tape.h"
#include "train/optim.h"

static void test_schedules(void) {
    qt_schedule s = {.kind = QT_SCHED_COSINE, .lr = 1.0, .warmup = 1, .total = 3};
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 0), 0.0, 1e-12, 0, "cosine step 0 (warmup)");
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 1), 1.0, 1e-12, 0, "cosine step 1 (peak)");
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 2), 0.5, 1e-12, 0, "cosine step 2 (half way)");
    s.warmup = 4, s.total = 12;
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 2), 0.5, 1e-12, 0, "warmup is linear");
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 12), 0.0, 1e-12, 0, "cosine ends at 0");
    s.min_ratio = 0.1;
    QT_EXPECT_CLOSE(qt_schedule_lr(&s, 12), 0.1, 1e-12, 0, "cosine floor");
    qt_schedule l = {.kind = QT_SCHED_LINEAR, .lr = 2.0, .warmup = 2, .total = 10};
    QT_EXPECT_CLOSE(qt_schedule_lr(&l, 6), 2.0 * 4.0 / 8.0, 1e-12, 0, "linear decay");
    QT_EXPECT_CLOSE(qt_schedule_lr(&l, 11), 0.0, 1e-12, 0, "linear clamps at 0");
    qt_schedule c = {.kind = QT_SCHED_CONSTANT_WITH_WARMUP, .lr = 3.0, .warmup = 3, .total = 9};
    QT_EXPECT_CLOSE(qt_schedule_lr(&c, 1), 1.0, 1e-12, 0, "constant warmup");
    QT_EXPECT_CLOSE(qt_schedule_lr(&c, 7), 3.0, 1e-12, 0, "constant after warmup");
    qt_sched_kind k;
    QT_EXPECT(qt_schedule_parse("cosine", &k) == 0 && k == QT_SCHED_COSINE, "parse cosine");
    QT_EXPECT(qt_schedule_parse("cosin", &k) == -1, "unknown schedule name");
}

static void test_adamw(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_tensor *p = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){2}, true, "p");
    qt_f32(p)[0] = 1.0f, qt_f32(p)[1] = -2.0f;
    qt_adamw opt;
    bool decay[1] = {true};
    QT_EXPECT(qt_adamw_init(&opt, &ctx, &p, decay, 1, 0.9, 0.999, 1e-8, 0.1, NULL) == 0, "init");
    float beta;
    qt_tensor *g = qt_grad_acquire(&ctx, p, false, &beta);
    qt_f32(g)[0] = 0.5f, qt_f32(g)[1] = 0.0f;
    qt_adamw_step(&opt, &ctx, 0.1);
    /* p *= 1 - lr*wd; the first Adam step moves by lr * sign(g) */
    QT_EXPECT_CLOSE(qt_f32(p)[0], 0.99 - 0.1, 1e-6, 0, "AdamW step 1, element 0");
    QT_EXPECT_CLOSE(qt_f32(p)[1], -2.0 * 0.99, 1e-6, 0, "zero gradient: decay only");
    QT_EXPECT(!p->grad_valid, "the step empties the gradient");
    /* step 2 with g = 0.5 again: m = 0.095, v = 0.00049975; bc1 = 0.19, bc2 = 0.001999 */
    g = qt_grad_acquire(&ctx, p, false, &beta);
    qt_f32(g)[0] = 0.5f, qt_f32(g)[1] = 0.0f;
    qt_adamw_step(&opt, &ctx, 0.1);
    double w = 0.89 * 0.99;
    double m = 0.095, v = 0.999 * 0.00025 + 0.001 * 0.25;
    w -= (0.1 / 0.19) * m / (sqrt(v) / sqrt(1 - 0.999 * 0.999) + 1e-8);
    QT_EXPECT_CLOSE(qt_f32(p)[0], w, 0, 1e-5, "AdamW step 2 (f32 arithmetic)");
    qt_adamw_free(&opt);

    /* clipping: grads (3, 4) have norm 5; max_norm 1 scales them by 1 / (5 + 1e-6) */
    qt_tensor *q = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){2}, true, "q");
    g = qt_grad_acquire(&ctx, q, false, &beta);
    qt_f32(g)[0] = 3.0f, qt_f32(g)[1] = 4.0f;
    double n = qt_grad_clip(&ctx, &q, 1, 1.0);
    QT_EXPECT_CLOSE(n, 5.0, 1e-6, 0, "global norm");
    QT_EXPECT_CLOSE(qt_f32(g)[0], 0.6, 1e-6, 0, "clipped 0");
    QT_EXPECT_CLOSE(qt_f32(g)[1], 0.8, 1e-6, 0, "clipped 1");
    n = qt_grad_clip(&ctx, &q, 1, 10.0);
    QT_EXPECT_CLOSE(qt_f32(g)[0], 0.6, 1e-6, 0, "below max_norm: unchanged");
    qt_ctx_free(&ctx);
}

int main(void) {
    test_schedules();
    test_adamw();
    return qt_test_finish("optim");
}
