/* test_export.c - exports of a trained LoRA and QLoRA checkpoint:
 *   hf: qtune reads the exported directory back (LoRA merged, bf16) and its loss matches the
 *       checkpoint's within bf16 rounding (stated: 2e-3 relative); sharded with an index when
 *       over the shard size, with the same result;
 *   the merge is onto dequant(NF4) for QLoRA: the merged weight equals dequant + (α/r)·B·A;
 *   bnb-nf4: the six bitsandbytes keys per linear layer and quantization_config;
 *   peft: adapter_config.json and PEFT's tensor names with the trained values. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "qt_test.h"
#include "quant/safetensors.h"
#include "train/checkpoint.h"
#include "train/export.h"
#include "train/trainer.h"

#define MODEL "tests/fixtures/hf/llama"
static char dir[256];

static double loss_of(qt_ctx *ctx, qt_llama *m) {
    int32_t ids[16], tg[16];
    for (int i = 0; i < 16; i++) ids[i] = 3 + (i * 29) % 250;
    qt_llama_shift_labels(ids, tg, 1, 16);
    qt_step_reset(ctx);
    qt_no_grad_begin(ctx);
    qt_tensor *it = qt_tensor_new(ctx, QT_I32, 2, (int64_t[]){1, 16});
    qt_tensor_upload(ctx, it, ids);
    qt_tensor *tt = qt_tensor_new(ctx, QT_I32, 1, (int64_t[]){16});
    qt_tensor_upload(ctx, tt, tg);
    double l = qt_tensor_get(ctx, qt_llama_loss(ctx, m, it, tt, NULL, NULL, 0), 0);
    qt_no_grad_end(ctx);
    return l;
}

/* trains a few steps and saves a checkpoint; returns the trained model's loss */
static double make_ckpt(qt_train_mode mode, const char *path) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 3, NULL);
    qt_model_opts o = qt_model_opts_default();
    o.mode = mode, o.lora_r = 4, o.lora_alpha = 8, o.seed = 2;
    qt_llama m;
    qt_err err = {0};
    QT_CHECK(qt_llama_load(&ctx, &m, MODEL, &o, &err) == 0, "%s", err.msg);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0, &err);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 2e-2};
    for (int s = 0; s < 4; s++) {
        int32_t ids[24];
        for (int i = 0; i < 24; i++) ids[i] = 3 + (s * 13 + i * 7) % 250;
        qt_micro_batch mb = {.B = 2, .T = 12, .ids = ids, .labels = ids};
        qt_step_stats st;
        qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, &st, &err);
    }
    qt_ckpt_info info = {.step = 4, .sched = sch, .opts = o};
    snprintf(info.base_model_path, sizeof info.base_model_path, "%s", MODEL);
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", m.identity);
    QT_CHECK(qt_ckpt_save(path, &ctx, &info, &opt, &err) == 0, "%s", err.msg);
    double l = loss_of(&ctx, &m);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    return l;
}

static int do_export(const char *ckpt, qt_export_format f, const char *out, size_t shard) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    qt_err err = {0};
    QT_CHECK(qt_model_open(&ctx, &m, ckpt, base, sizeof base, &err) == 0, "%s", err.msg);
    qt_export_opts o = {.format = f, .out = out, .base_dir = base, .shard_bytes = shard,
                        .lora_r = 4, .lora_alpha = 8, .lora_targets = QT_PROJ_ALL};
    int rc = qt_export(&ctx, &m, &o, &err);
    QT_EXPECT(rc == 0, "export: %s", err.msg);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    return rc;
}

static double open_loss(const char *path) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    qt_err err = {0};
    double l = -1;
    if (qt_model_open(&ctx, &m, path, base, sizeof base, &err) == 0) {
        l = loss_of(&ctx, &m);
        qt_llama_free(&m);
    } else {
        QT_EXPECT(0, "open %s: %s", path, err.msg);
    }
    qt_ctx_free(&ctx);
    return l;
}

static void test_qlora_merge(const char *ckpt) {
    /* merged = dequant(NF4 base) + (α/r)·B·A, computed independently here */
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    qt_err err = {0};
    QT_CHECK(qt_model_open(&ctx, &m, ckpt, base, sizeof base, &err) == 0, "%s", err.msg);
    qt_linear *l = &m.layer[1].gate;
    QT_EXPECT(l->is_nf4 && l->lora_a, "the QLoRA layer has an NF4 base and LoRA");
    int64_t n = l->out * l->in, r = 4;
    float *w = malloc((size_t)n * 4), *d = malloc((size_t)n * 4);
    float *A = malloc((size_t)(r * l->in) * 4), *B = malloc((size_t)(l->out * r) * 4);
    qt_linear_merged(&ctx, l, w);
    qt_nf4_weight_dequant(&ctx, &l->nf4, d);
    qt_tensor_download(&ctx, l->lora_a, A);
    qt_tensor_download(&ctx, l->lora_b, B);
    double e = 0, bmax = 0;
    for (int64_t i = 0; i < l->out; i++)
        for (int64_t j = 0; j < l->in; j++) {
            double s = 0;
            for (int64_t k = 0; k < r; k++) s += (double)B[i * r + k] * A[k * l->in + j];
            e = fmax(e, fabs(w[i * l->in + j] - (d[i * l->in + j] + 2.0 * s)));
            bmax = fmax(bmax, fabs(s));
        }
    QT_EXPECT(bmax > 1e-4 && e < 1e-6, "merge onto dequant(NF4): max error %.3g (LoRA term %.3g)",
              e, bmax);
    free(w), free(d), free(A), free(B);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

static void test_bnb_files(const char *out) {
    char p[400], msg[256];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    qt_st_file f;
    QT_EXPECT(qt_st_load_file(&f, p, msg, sizeof msg) == 0, "%s", msg);
    const char *keys[6] = {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                           ".quant_state.bitsandbytes__nf4"};
    for (int k = 0; k < 6; k++) {
        char name[200];
        snprintf(name, sizeof name, "model.layers.0.mlp.down_proj.weight%s", keys[k]);
        QT_EXPECT(qt_st_find(&f, name) != NULL, "bnb key %s", name);
    }
    QT_EXPECT(qt_st_find(&f, "lm_head.weight") && qt_st_find(&f, "lm_head.weight")->dtype ==
                                                      QT_ST_BF16,
              "lm_head stays bf16");
    qt_st_free(&f);
    snprintf(p, sizeof p, "%s/config.json", out);
    FILE *cf = fopen(p, "r");
    char buf[8192] = "";
    size_t n = cf ? fread(buf, 1, sizeof buf - 1, cf) : 0;
    if (cf) fclose(cf);
    buf[n] = 0;
    QT_EXPECT(strstr(buf, "\"quant_method\":\t\"bitsandbytes\"") ||
                  strstr(buf, "\"quant_method\": \"bitsandbytes\""),
              "quantization_config in config.json");
}

static void test_peft(const char *ckpt, const char *out) {
    char p[400], msg[256];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
    qt_st_file f;
    QT_EXPECT(qt_st_load_file(&f, p, msg, sizeof msg) == 0, "%s", msg);
    const qt_st_tensor *t =
        qt_st_find(&f, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
    QT_EXPECT(t && t->shape[0] == 32 && t->shape[1] == 4, "PEFT name and shape of lora_B");
    QT_EXPECT(f.ntensors == 2 * 7 * 2, "every adapter exported (%d)", f.ntensors);
    /* the values are the checkpoint's */
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    qt_err err = {0};
    QT_CHECK(qt_model_open(&ctx, &m, ckpt, base, sizeof base, &err) == 0, "%s", err.msg);
    float *v = malloc(qt_nbytes(m.layer[1].v.lora_b));
    qt_tensor_download(&ctx, m.layer[1].v.lora_b, v);
    QT_EXPECT(t && !memcmp(t->data, v, qt_nbytes(m.layer[1].v.lora_b)), "lora_B values");
    free(v);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    qt_st_free(&f);
    snprintf(p, sizeof p, "%s/adapter_config.json", out);
    FILE *cf = fopen(p, "r");
    char buf[4096] = "";
    size_t n = cf ? fread(buf, 1, sizeof buf - 1, cf) : 0;
    if (cf) fclose(cf);
    buf[n] = 0;
    cJSON *c = cJSON_Parse(buf);
    QT_EXPECT(c && cJSON_GetObjectItem(c, "r")->valueint == 4 &&
                  cJSON_GetObjectItem(c, "lora_alpha")->valuedouble == 8 &&
                  cJSON_GetArraySize(cJSON_GetObjectItem(c, "target_modules")) == 7 &&
                  !strcmp(cJSON_GetObjectItem(c, "peft_type")->valuestring, "LORA"),
              "adapter_config.json");
    cJSON_Delete(c);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/qt_export.%ld", (long)getpid());
    char cmd[400], ckpt[300], q_ckpt[300], out[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    snprintf(ckpt, sizeof ckpt, "%s/lora.h5", dir);
    snprintf(q_ckpt, sizeof q_ckpt, "%s/qlora.h5", dir);
    double l_lora = make_ckpt(QT_MODE_LORA, ckpt);
    double l_qlora = make_ckpt(QT_MODE_QLORA, q_ckpt);

    snprintf(out, sizeof out, "%s/hf", dir);
    do_export(ckpt, QT_EXPORT_HF, out, 0);
    double l = open_loss(out);
    printf("LoRA: checkpoint loss %.6f, exported hf %.6f\n", l_lora, l);
    QT_EXPECT(fabs(l - l_lora) < 2e-3 * l_lora, "hf export reproduces the LoRA loss");

    snprintf(out, sizeof out, "%s/hf-sharded", dir);
    do_export(ckpt, QT_EXPORT_HF, out, 100000);
    snprintf(cmd, sizeof cmd, "%s/model.safetensors.index.json", out);
    QT_EXPECT(access(cmd, F_OK) == 0, "sharded, with an index");
    snprintf(cmd, sizeof cmd, "%s/model.safetensors", out);
    QT_EXPECT(access(cmd, F_OK) != 0, "no single-file weights beside the shards");
    QT_EXPECT(open_loss(out) == l, "the sharded export loads to the same model");

    snprintf(out, sizeof out, "%s/hf-q", dir);
    do_export(q_ckpt, QT_EXPORT_HF, out, 0);
    l = open_loss(out);
    printf("QLoRA: checkpoint loss %.6f, exported hf %.6f\n", l_qlora, l);
    QT_EXPECT(fabs(l - l_qlora) < 2e-3 * l_qlora, "hf export reproduces the QLoRA loss");
    test_qlora_merge(q_ckpt);

    snprintf(out, sizeof out, "%s/bnb", dir);
    do_export(q_ckpt, QT_EXPORT_BNB_NF4, out, 0);
    test_bnb_files(out);

    snprintf(out, sizeof out, "%s/peft", dir);
    do_export(ckpt, QT_EXPORT_PEFT, out, 0);
    test_peft(ckpt, out);

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return qt_test_finish("export");
}
