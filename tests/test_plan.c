/* test_plan.c - `qtune plan`'s persistent memory is exact: for the llama and qwen2 fixtures in
 * full, LoRA and QLoRA modes, the planned bytes equal what the CPU run holds after loading,
 * AdamW's set-up and one backward (every gradient allocated); with optimizer_in_bwd, after a
 * training step (no persistent gradient), and the gradients alive at once stay within the
 * planned estimate. */
#include <stdio.h>

#include "autograd/tape.h"
#include "qt_test.h"
#include "train/hf_model.h"
#include "train/optim.h"
#include "train/plan.h"
#include "train/trainer.h"

static void check(const char *model, int adapter, bool in_bwd) {
    char yaml[600], cfgp[256];
    snprintf(yaml, sizeof yaml,
             "base_model: %s\nadapter: %s\nlora_r: 4\nlora_target_linear: true\n"
             "datasets:\n  - path: x.jsonl\n    type: pretokenized\noutput_dir: /tmp/x\n%s",
             model,
             adapter == QT_ADAPTER_NONE   ? "none"
             : adapter == QT_ADAPTER_LORA ? "lora"
                                          : "qlora",
             in_bwd ? "optimizer_in_bwd: true\nmax_grad_norm: 0\n" : "");
    qt_job_config job;
    qt_err err = {0};
    qt_job_config_init(&job);
    QT_CHECK(qt_job_config_parse_text(&job, yaml, strlen(yaml), "test", &err) == 0 &&
                 qt_job_config_finish(&job, &err) == 0,
             "%s", err.msg);
    qt_model_config mc;
    snprintf(cfgp, sizeof cfgp, "%s/config.json", model);
    QT_CHECK(qt_model_config_load(&mc, cfgp, &err) == 0, "%s", err.msg);
    qt_plan p;
    qt_plan_make(&job, &mc, QT_CPU, &p, &err);

    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_model_opts o;
    QT_CHECK(qt_job_config_model_opts(&job, &o, &err) == 0, "%s", err.msg);
    qt_llama m;
    QT_CHECK(qt_llama_load(&ctx, &m, model, &o, &err) == 0, "%s", err.msg);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0, &err);
    int32_t ids[8] = {3, 9, 27, 81, 243 % 250, 5, 6, 7}, tg[8];
    qt_llama_shift_labels(ids, tg, 1, 8);
    qt_tensor *it = qt_tensor_new(&ctx, QT_I32, 2, (int64_t[]){1, 8});
    qt_tensor_upload(&ctx, it, ids);
    qt_tensor *tt = qt_tensor_new(&ctx, QT_I32, 1, (int64_t[]){8});
    qt_tensor_upload(&ctx, tt, tg);
    if (in_bwd) {
        qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 1e-3};
        qt_micro_batch mb = {.B = 1, .T = 8, .ids = ids, .labels = ids};
        qt_train_opts to = {.optimizer_in_bwd = true};
        qt_step_stats st;
        QT_CHECK(qt_train_step_opts(&ctx, &m, &opt, &sch, &mb, 1, &to, &st, &err) == 0, "%s",
                 err.msg);
        QT_EXPECT(ctx.grad_arena.high_water > 0 &&
                      (double)ctx.grad_arena.high_water <= p.grad_bytes,
                  "%s %s in bwd: %zu gradient bytes alive at once, planned at most %.0f", model,
                  qt_job_adapter_name(adapter), ctx.grad_arena.high_water, p.grad_bytes);
    } else {
        qt_backward(&ctx, qt_llama_loss(&ctx, &m, it, tt, NULL, NULL, 0));
    }
    QT_EXPECT((double)ctx.persist_bytes == p.persistent_bytes,
              "%s %s%s: planned %.0f persistent bytes, the run holds %zu", model,
              qt_job_adapter_name(adapter), in_bwd ? " in bwd" : "", p.persistent_bytes,
              ctx.persist_bytes);
    printf("%s %-5s%s: %.0f bytes planned, %zu held; %.0f trainable; gradients alive at once: "
           "%zu, planned %.0f\n",
           model, qt_job_adapter_name(adapter), in_bwd ? " in bwd" : "       ", p.persistent_bytes,
           ctx.persist_bytes, p.trainable_params, ctx.grad_arena.high_water, p.grad_bytes);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    qt_job_config_free(&job);
}

int main(void) {
    const char *models[2] = {"tests/fixtures/hf/llama", "tests/fixtures/hf/qwen2"};
    for (int i = 0; i < 2; i++)
        for (int a = QT_ADAPTER_NONE; a <= QT_ADAPTER_QLORA; a++)
            for (int ib = 0; ib < 2; ib++) check(models[i], a, ib);
    return qt_test_finish("plan");
}
