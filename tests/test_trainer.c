/* test_trainer.c - gradient accumulation is Hugging Face's: two micro-batches of one row give
 * the same loss, gradient norm and updated weights as one batch of both rows (the loss is
 * normalised by the step's total count of non-ignored targets, not per micro-batch), and
 * packing two rows into one sequence with document ids and restarting positions gives the
 * same loss as keeping them apart. */
#include <stdio.h>

#include "qt_test.h"
#include "train/hf_model.h"
#include "train/trainer.h"

static void run(int mode, qt_step_stats *st, float *w_out) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_LORA, o.lora_r = 4, o.lora_alpha = 8, o.seed = 3;
    qt_err err = {0};
    QT_CHECK(qt_llama_load(&ctx, &m, "tests/fixtures/hf/llama", &o, &err) == 0, "%s", err.msg);
    /* B starts at zero: give it values so that A's gradient is not zero */
    for (int i = 0; i < m.n_train; i++)
        if (strstr(m.train[i]->name, "lora_B"))
            for (int64_t j = 0; j < qt_numel(m.train[i]); j++)
                qt_f32(m.train[i])[j] = 0.01f * (float)((j * 7 + i) % 11 - 5);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0.0, &err);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 1e-3};
    /* two rows of different lengths' worth of labels: row 0 has 3 ignored prompt tokens */
    int32_t ids[2][10], lab[2][10];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 10; t++) {
            ids[r][t] = 3 + (r * 37 + t * 11) % 250;
            lab[r][t] = (r == 0 && t < 3) ? -100 : ids[r][t];
        }
    if (mode == 0) { /* one micro-batch [2, 10] */
        qt_micro_batch mb = {.B = 2, .T = 10, .ids = &ids[0][0], .labels = &lab[0][0]};
        qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, st, &err);
    } else if (mode == 1) { /* two micro-batches [1, 10] */
        qt_micro_batch mb[2] = {{.B = 1, .T = 10, .ids = ids[0], .labels = lab[0]},
                                {.B = 1, .T = 10, .ids = ids[1], .labels = lab[1]}};
        qt_train_step(&ctx, &m, &opt, &sch, mb, 2, 1.0, st, &err);
    } else { /* both rows packed into one [1, 20] sequence */
        int32_t pos[20], doc[20];
        for (int i = 0; i < 20; i++) pos[i] = i % 10, doc[i] = i / 10;
        qt_micro_batch mb = {.B = 1, .T = 20, .ids = &ids[0][0], .labels = &lab[0][0],
                             .pos = pos, .doc = doc};
        qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, st, &err);
    }
    int64_t off = 0;
    for (int i = 0; i < m.n_train; i++) {
        memcpy(w_out + off, m.train[i]->data, qt_nbytes(m.train[i]));
        off += qt_numel(m.train[i]);
    }
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

int main(void) {
    static float w[3][20000];
    qt_step_stats st[3];
    for (int mode = 0; mode < 3; mode++) run(mode, &st[mode], w[mode]);
    printf("loss: batch %.7f, accumulated %.7f, packed %.7f; grad norm %.6g %.6g %.6g\n",
           st[0].loss, st[1].loss, st[2].loss, st[0].grad_norm, st[1].grad_norm,
           st[2].grad_norm);
    QT_EXPECT(st[0].tokens == 16 && st[1].tokens == 16 && st[2].tokens == 16,
              "counted targets: %lld %lld %lld (want 7 + 9)", (long long)st[0].tokens,
              (long long)st[1].tokens, (long long)st[2].tokens);
    for (int mode = 1; mode < 3; mode++) {
        QT_EXPECT_CLOSE(st[mode].loss, st[0].loss, 0, 1e-6, "loss equals the one-batch loss");
        QT_EXPECT_CLOSE(st[mode].grad_norm, st[0].grad_norm, 0, 1e-5, "gradient norm");
        double e = 0;
        for (int i = 0; i < 20000; i++) e = fmax(e, fabs(w[mode][i] - w[0][i]));
        QT_EXPECT(e < 1e-6, "mode %d: weights after the step differ by %.3g", mode, e);
    }
    return qt_test_finish("trainer");
}
