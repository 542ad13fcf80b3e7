/* test_config.c - the YAML job file (train/config.h): every configs/ example parses without
 * errors or warnings; defaults; each kind of error with its exact file:line:column and key;
 * --set overrides and their errors; the emit -> parse round trip; the qt_model_opts mapping;
 * docs/CONFIG.md holds the schema table. `test_config --print-schema` prints that table. */
#define _POSIX_C_SOURCE 200809L
#include <glob.h>
#include <stdlib.h>
#include <unistd.h>

#include "qt_test.h"
#include "train/config.h"
#include "train/optim.h"

static char tmp_dir[64];
static char tmp_path[128]; /* the job file each case writes */

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    QT_EXPECT(f != NULL, "cannot write %s", path);
    if (!f) exit(1);
    fputs(text, f);
    fclose(f);
}

/* writes yaml to the job file, then init + parse + sets + finish */
static int load(const char *yaml, const char *const *sets, int nsets, qt_job_config *c,
                qt_err *err) {
    write_text(tmp_path, yaml);
    err->code = QT_OK, err->msg[0] = 0;
    return qt_job_config_load(c, tmp_path, sets, nsets, err);
}

/* the three required keys, lines 1-5; cases append from line 6 */
#define BASE "base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\noutput_dir: out\n"

/* want: ":L:C: message" (after the job file's path) or "--set ..." (whole message) */
static void expect_error_at(int line, const char *yaml, const char *set, const char *want) {
    qt_job_config c;
    qt_err err;
    const char *sets[1] = {set};
    int rc = load(yaml, sets, set ? 1 : 0, &c, &err);
    char full[1400];
    if (want[0] == ':')
        snprintf(full, sizeof full, "%s%s", tmp_path, want);
    else
        snprintf(full, sizeof full, "%s", want);
    qt_test_report(rc != 0 && !strcmp(err.msg, full), __FILE__, line,
                   "error\n  got  (rc %d) %s\n  want %s", rc, err.msg, full);
    if (!rc) qt_job_config_free(&c);
}
#define EXPECT_ERROR(yaml, set, want) expect_error_at(__LINE__, yaml, set, want)

/* loads (must succeed) and checks the warnings: want[i] after the path, in order */
static void expect_warnings_at(int line, const char *yaml, const char *set, int n,
                               const char *const *want) {
    qt_job_config c;
    qt_err err;
    const char *sets[1] = {set};
    int rc = load(yaml, sets, set ? 1 : 0, &c, &err);
    qt_test_report(rc == 0, __FILE__, line, "load failed: %s", err.msg);
    if (rc) return;
    qt_test_report(c.n_warnings == n, __FILE__, line, "%d warnings, want %d%s%s", c.n_warnings, n,
                   c.n_warnings ? "; first: " : "", c.n_warnings ? c.warnings[0] : "");
    for (int i = 0; i < n && i < c.n_warnings; i++) {
        char full[1400];
        if (want[i][0] == ':')
            snprintf(full, sizeof full, "%s%s", tmp_path, want[i]);
        else
            snprintf(full, sizeof full, "%s", want[i]);
        qt_test_report(!strcmp(c.warnings[i], full), __FILE__, line,
                       "warning %d\n  got  %s\n  want %s", i, c.warnings[i], full);
    }
    qt_job_config_free(&c);
}

/* emit -> parse -> finish gives the identical config, and emitting again the identical text */
static void roundtrip_at(int line, qt_job_config *c, const char *what) {
    char *t1 = NULL, *t2 = NULL;
    size_t n1 = 0, n2 = 0;
    qt_err err;
    int rc = qt_job_config_emit(c, &t1, &n1, &err);
    qt_test_report(rc == 0, __FILE__, line, "%s: emit: %s", what, err.msg);
    if (rc) return;
    qt_job_config d;
    qt_job_config_init(&d);
    rc = qt_job_config_parse_text(&d, t1, n1, "emitted", &err);
    if (!rc) rc = qt_job_config_finish(&d, &err);
    qt_test_report(rc == 0, __FILE__, line, "%s: re-parse: %s\n%s", what, err.msg, t1);
    char which[64] = "";
    qt_test_report(!rc && qt_job_config_equal(c, &d, which, sizeof which), __FILE__, line,
                   "%s: round trip differs at '%s'\n%s", what, which, t1);
    qt_test_report(!rc && d.n_warnings == c->n_warnings - c->n_parse_warnings, __FILE__, line,
                   "%s: re-parse warnings %d (want %d)", what, d.n_warnings,
                   c->n_warnings - c->n_parse_warnings);
    if (!rc && !qt_job_config_emit(&d, &t2, &n2, &err))
        qt_test_report(n1 == n2 && !memcmp(t1, t2, n1), __FILE__, line,
                       "%s: second emission differs:\n%s\n---\n%s", what, t1, t2);
    free(t1);
    free(t2);
    qt_job_config_free(&d);
}
#define ROUNDTRIP(c, what) roundtrip_at(__LINE__, c, what)

/* ---- the examples ------------------------------------------------------------------------ */

static void test_examples(void) {
    glob_t g;
    int grc = glob("configs/*.yaml", 0, NULL, &g);
    QT_EXPECT(grc == 0, "no configs/*.yaml (run with the repository root as working directory)");
    if (grc) return;
    const char *need[] = {"configs/demo.yaml", "configs/qlora.yaml", "configs/lora.yaml",
                          "configs/qat.yaml", "configs/full.yaml"};
    for (int i = 0; i < 5; i++) {
        bool found = false;
        for (size_t j = 0; j < g.gl_pathc; j++) found |= !strcmp(g.gl_pathv[j], need[i]);
        QT_EXPECT(found, "%s is missing", need[i]);
    }
    for (size_t j = 0; j < g.gl_pathc; j++) {
        qt_job_config c;
        qt_err err;
        int rc = qt_job_config_load(&c, g.gl_pathv[j], NULL, 0, &err);
        QT_EXPECT(rc == 0, "%s: %s", g.gl_pathv[j], err.msg);
        if (rc) continue;
        QT_EXPECT(c.n_warnings == 0, "%s: warning: %s", g.gl_pathv[j],
                  c.n_warnings ? c.warnings[0] : "");
        ROUNDTRIP(&c, g.gl_pathv[j]);
        qt_job_config_free(&c);
    }
    globfree(&g);

    /* what the examples say, as parsed */
    qt_job_config c;
    qt_err err;
    if (qt_job_config_load(&c, "configs/demo.yaml", NULL, 0, &err) == 0) {
        QT_EXPECT(!strcmp(c.base_model, "data/demo/model"), "demo base_model %s", c.base_model);
        QT_EXPECT(c.adapter == QT_ADAPTER_QLORA && c.load_in_4bit, "demo is qlora");
        QT_EXPECT(c.n_datasets >= 1 && !strncmp(c.datasets[0].path, "data/demo/", 10),
                  "demo data under data/demo/");
        qt_job_config_free(&c);
    }
    if (qt_job_config_load(&c, "configs/qat.yaml", NULL, 0, &err) == 0) {
        QT_EXPECT(c.qat.weight_format == QT_QATW_INT4 && c.qat.weight_group_size == 32 &&
                      c.qat.activation_format == QT_QATA_INT8_PER_TOKEN && !c.qat.with_lora &&
                      c.adapter == QT_ADAPTER_NONE,
                  "qat example: int4 g32 weights, int8 per-token activations, full weights");
        qt_job_config_free(&c);
    }
    if (qt_job_config_load(&c, "configs/lora.yaml", NULL, 0, &err) == 0) {
        QT_EXPECT(c.lora_target_modules == (QT_PROJ_Q | QT_PROJ_K | QT_PROJ_V | QT_PROJ_O),
                  "lora example targets %#x", c.lora_target_modules);
        QT_EXPECT(c.val_set_size == 200 && c.datasets[0].type == QT_DS_CHAT &&
                      c.datasets[0].chat_template == QT_CHAT_LLAMA3,
                  "lora example data");
        qt_job_config_free(&c);
    }
    if (qt_job_config_load(&c, "configs/full.yaml", NULL, 0, &err) == 0) {
        QT_EXPECT(c.datasets[0].type == QT_DS_COMPLETION && !strcmp(c.datasets[0].field, "content"),
                  "full example: completion field content");
        QT_EXPECT(c.lr_scheduler == QT_SCHED_CONSTANT_WITH_WARMUP && c.max_steps == 2000,
                  "full example schedule");
        qt_job_config_free(&c);
    }
}

/* ---- defaults ---------------------------------------------------------------------------- */

static void test_defaults(void) {
    qt_job_config c;
    qt_err err;
    int rc = load(BASE, NULL, 0, &c, &err);
    QT_EXPECT(rc == 0, "minimal job: %s", err.msg);
    if (rc) return;
    QT_EXPECT(!strcmp(c.base_model, "m") && !strcmp(c.output_dir, "out"), "strings");
    QT_EXPECT(c.n_datasets == 1 && !strcmp(c.datasets[0].path, "d.jsonl") &&
                  c.datasets[0].type == QT_DS_ALPACA && !strcmp(c.datasets[0].field, "text") &&
                  c.datasets[0].chat_template == QT_CHAT_TOKENIZER_DEFAULT,
              "dataset defaults");
    QT_EXPECT(c.adapter == QT_ADAPTER_NONE && !c.load_in_4bit, "full fine-tune by default");
    QT_EXPECT(c.lora_r == 8 && c.lora_alpha == 16 && c.lora_dropout == 0 &&
                  c.lora_target_modules == QT_PROJ_ALL && !c.lora_target_linear &&
                  !c.peft_use_rslora,
              "lora defaults");
    QT_EXPECT(c.val_set_size == 0 && c.sequence_len == 512 && !c.sample_packing &&
                  !c.train_on_inputs,
              "data defaults");
    QT_EXPECT(c.micro_batch_size == 1 && c.gradient_accumulation_steps == 1 && c.num_epochs == 1 &&
                  c.max_steps == 0,
              "step defaults");
    QT_EXPECT(c.optimizer == QT_OPTIM_ADAMW_TORCH && c.lr_scheduler == QT_SCHED_COSINE &&
                  c.learning_rate == 2e-4 && c.warmup_steps == 0 && c.warmup_ratio == 0 &&
                  c.weight_decay == 0 && c.adam_beta1 == 0.9 && c.adam_beta2 == 0.999 &&
                  c.adam_epsilon == 1e-8 && c.max_grad_norm == 1 && !c.optimizer_in_bwd &&
                  !c.gradient_checkpointing,
              "optimizer defaults");
    qt_job_config_free(&c);
    /* the 8-bit names (axolotl's, bitsandbytes' paged one included) */
    const char *eight[3] = {"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"};
    for (int i = 0; i < 3; i++) {
        char text[256];
        snprintf(text, sizeof text, BASE "optimizer: %s\n", eight[i]);
        rc = load(text, NULL, 0, &c, &err);
        QT_EXPECT(rc == 0 && c.optimizer >= QT_OPTIM_ADAMW_8BIT, "optimizer %s: %s", eight[i],
                  rc ? err.msg : "parsed as 32-bit");
        if (!rc) qt_job_config_free(&c);
    }
    rc = load(BASE, NULL, 0, &c, &err);
    QT_EXPECT(c.save_steps == 0 && c.save_total_limit == 0 && c.eval_steps == 0 &&
                  c.logging_steps == 1 && c.resume_from_checkpoint == NULL && c.seed == 42 &&
                  c.bf16 == QT_BF16_AUTO,
              "run defaults");
    QT_EXPECT(c.qat.weight_format == QT_QATW_NONE && c.qat.weight_group_size == 0 &&
                  c.qat.activation_format == QT_QATA_NONE && !c.qat.learn_scales &&
                  !c.qat.with_lora && c.qat.start_step == 0 && !qt_job_config_qat(&c),
              "qat defaults");
    QT_EXPECT(c.n_warnings == 0, "no warnings");
    QT_EXPECT(qt_job_config_bf16(&c, true) && !qt_job_config_bf16(&c, false), "bf16 auto");
    ROUNDTRIP(&c, "minimal");
    qt_job_config_free(&c);

    /* lr_scheduler's values are qt_sched_kind's, by name */
    const char *sch[] = {"constant", "constant_with_warmup", "linear", "cosine"};
    for (int i = 0; i < 4; i++) {
        qt_job_config_init(&c);
        rc = qt_job_config_set(&c, "lr_scheduler", sch[i], &err);
        qt_sched_kind k;
        QT_EXPECT(rc == 0 && qt_schedule_parse(sch[i], &k) == 0 && (int)k == c.lr_scheduler,
                  "lr_scheduler %s", sch[i]);
        qt_job_config_free(&c);
    }

    /* axolotl's empty values are null = the default; quoted "null" is a string */
    rc = load(BASE "resume_from_checkpoint:\nlora_r: ~\nwarmup_steps: null\nadapter:\n"
                   "base_model: \"null\"\n",
              NULL, 0, &c, &err);
    QT_EXPECT(rc != 0, "duplicate base_model");
    rc = load("base_model: \"null\"\ndatasets:\n  - {path: d.jsonl, type: alpaca}\n"
              "output_dir: out\nresume_from_checkpoint:\nlora_r: ~\nwarmup_steps: null\n"
              "adapter:\nbf16: yes\nsample_packing: on\n",
              NULL, 0, &c, &err);
    QT_EXPECT(rc == 0, "nulls: %s", err.msg);
    if (!rc) {
        QT_EXPECT(!strcmp(c.base_model, "null") && c.resume_from_checkpoint == NULL &&
                      c.lora_r == 8 && c.warmup_steps == 0 && c.adapter == QT_ADAPTER_NONE,
                  "nulls are defaults");
        QT_EXPECT(c.bf16 == QT_BF16_TRUE && c.sample_packing, "YAML 1.1 booleans");
        ROUNDTRIP(&c, "quoted null string");
        qt_job_config_free(&c);
    }

    /* numbers as axolotl writes them */
    rc = load(BASE "learning_rate: 2e-4\nadam_epsilon: 1.0e-8\nval_set_size: 200\n"
                   "num_epochs: 0.5\nmax_steps: 1_000\n",
              NULL, 0, &c, &err);
    QT_EXPECT(rc == 0, "numbers: %s", err.msg);
    if (!rc) {
        QT_EXPECT(c.learning_rate == 2e-4 && c.adam_epsilon == 1e-8 && c.val_set_size == 200 &&
                      c.num_epochs == 0.5 && c.max_steps == 1000,
                  "number values");
        qt_job_config_free(&c);
    }
}

/* ---- errors ------------------------------------------------------------------------------ */

static void test_errors(void) {
    /* wrong types */
    EXPECT_ERROR(BASE "lora_r: sixteen\n", NULL,
                 ":6:9: lora_r: expected an integer, got 'sixteen'");
    EXPECT_ERROR(BASE "lora_r: 1.5\n", NULL, ":6:9: lora_r: expected an integer, got '1.5'");
    EXPECT_ERROR(BASE "sample_packing: maybe\n", NULL,
                 ":6:17: sample_packing: expected true or false, got 'maybe'");
    EXPECT_ERROR(BASE "learning_rate: fast\n", NULL,
                 ":6:16: learning_rate: expected a number, got 'fast'");
    EXPECT_ERROR(BASE "bf16: half\n", NULL, ":6:7: bf16: expected true, false or auto, got 'half'");
    EXPECT_ERROR(BASE "lora_r: [8]\n", NULL, ":6:9: lora_r: expected an integer, got a list");
    EXPECT_ERROR(BASE "output_dir2: x\n", NULL,
                 ":6:1: unknown key 'output_dir2' (did you mean 'output_dir'?)");
    EXPECT_ERROR("base_model:\n  path: m\n", NULL,
                 ":2:3: base_model: expected a string, got a mapping");
    EXPECT_ERROR(BASE "val_set_size: some\n", NULL,
                 ":6:15: val_set_size: expected a fraction below 1 or a row count, got 'some'");
    EXPECT_ERROR(BASE "qat: int4\n", NULL,
                 ":6:6: qat: expected a mapping of qat keys (weight_format: ...), got a scalar");
    EXPECT_ERROR(BASE "lora_target_modules: {q_proj: 1}\n", NULL,
                 ":6:22: lora_target_modules: expected a module name, a list of module names, or "
                 "all-linear, got a mapping");
    /* out of range */
    EXPECT_ERROR(BASE "lora_dropout: 1.5\n", NULL,
                 ":6:15: lora_dropout: 1.5 is out of range: must be in [0, 1)");
    EXPECT_ERROR(BASE "lora_r: 0\n", NULL, ":6:9: lora_r: 0 is out of range: must be 1..4096");
    EXPECT_ERROR(BASE "learning_rate: 0\n", NULL,
                 ":6:16: learning_rate: 0 is out of range: must be in (0, 10]");
    EXPECT_ERROR(BASE "max_grad_norm: -1\n", NULL,
                 ":6:16: max_grad_norm: -1 is out of range: must be >= 0");
    EXPECT_ERROR(BASE "seed: 99999999999999999999\n", NULL,
                 ":6:7: seed: 99999999999999999999 is out of range: must be >= 0");
    EXPECT_ERROR(BASE "val_set_size: 1.5\n", NULL,
                 ":6:15: val_set_size: 1.5 is neither a fraction below 1 nor a whole row count");
    EXPECT_ERROR(BASE "val_set_size: -0.1\n", NULL,
                 ":6:15: val_set_size: -0.1 is out of range: must be a fraction in [0, 1) or a "
                 "row count >= 1");
    EXPECT_ERROR(BASE "qat:\n  weight_format: int4\n  weight_group_size: -32\n", NULL,
                 ":8:22: qat.weight_group_size: -32 is out of range: must be 0..65536");
    /* bad enum values */
    EXPECT_ERROR(BASE "adapter: qlroa\n", NULL,
                 ":6:10: adapter: 'qlroa' is not a valid value; valid: none, lora, qlora (did you "
                 "mean 'qlora'?)");
    EXPECT_ERROR(BASE "optimizer: lion_8bit\n", NULL,
                 ":6:12: optimizer: 'lion_8bit' is not supported (qtune implements AdamW only); "
                 "supported: adamw_torch, adamw, adamw_torch_fused, adamw_8bit, adamw_bnb_8bit, "
                 "paged_adamw_8bit");
    /* a misspelt 8-bit name: the nearest valid one */
    EXPECT_ERROR(BASE "optimizer: adamw_8bt\n", NULL,
                 ":6:12: optimizer: 'adamw_8bt' is not supported (qtune implements AdamW only); "
                 "supported: adamw_torch, adamw, adamw_torch_fused, adamw_8bit, adamw_bnb_8bit, "
                 "paged_adamw_8bit (did you mean 'adamw_8bit'?)");
    EXPECT_ERROR(BASE "optimizer: paged_adamw_8bits\n", NULL,
                 ":6:12: optimizer: 'paged_adamw_8bits' is not supported (qtune implements AdamW "
                 "only); supported: adamw_torch, adamw, adamw_torch_fused, adamw_8bit, "
                 "adamw_bnb_8bit, paged_adamw_8bit (did you mean 'paged_adamw_8bit'?)");
    EXPECT_ERROR(BASE "lr_scheduler: cosine_with_restarts\n", NULL,
                 ":6:15: lr_scheduler: 'cosine_with_restarts' is not supported (qtune implements "
                 "four of Hugging Face's schedules); supported: constant, constant_with_warmup, "
                 "linear, cosine");
    EXPECT_ERROR(BASE "qat:\n  weight_format: int9\n", NULL,
                 ":7:18: qat.weight_format: 'int9' is not a valid value; valid: none, int2, int3, "
                 "int4, int5, int6, int7, int8, q4_0, q8_0, q4_k, nf4 (did you mean 'int2'?)");
    EXPECT_ERROR("base_model: m\ndatasets:\n  - path: d.jsonl\n    type: sharegpt\n", NULL,
                 ":4:11: datasets[0].type: 'sharegpt' is not a valid value; valid: alpaca, "
                 "completion, chat, text, pretokenized");
    EXPECT_ERROR(BASE "lora_target_modules: [q_proj, v_prj]\n", NULL,
                 ":6:31: lora_target_modules: unknown module 'v_prj' (did you mean 'v_proj'?); "
                 "valid: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, "
                 "all-linear");
    /* unknown keys */
    EXPECT_ERROR(BASE "lora_alpah: 16\n", NULL,
                 ":6:1: unknown key 'lora_alpah' (did you mean 'lora_alpha'?)");
    EXPECT_ERROR(BASE "learning_rat: 1e-4\n", NULL,
                 ":6:1: unknown key 'learning_rat' (did you mean 'learning_rate'?)");
    EXPECT_ERROR(BASE "frobnicate: 1\n", NULL,
                 ":6:1: unknown key 'frobnicate' (docs/CONFIG.md lists the keys)");
    EXPECT_ERROR("base_model: m\ndatasets:\n  - path: d.jsonl\n    typ: alpaca\n", NULL,
                 ":4:5: unknown key 'datasets[0].typ' (did you mean 'datasets[0].type'?)");
    EXPECT_ERROR(BASE "qat:\n  weight_fromat: int4\n", NULL,
                 ":7:3: unknown key 'qat.weight_fromat' (did you mean 'qat.weight_format'?)");
    /* duplicate keys */
    EXPECT_ERROR(BASE "lora_r: 8\nseed: 1\nlora_r: 16\n", NULL,
                 ":8:1: duplicate key 'lora_r' (first at line 6)");
    EXPECT_ERROR("base_model: m\ndatasets:\n  - path: d.jsonl\n    path: e.jsonl\n", NULL,
                 ":4:5: duplicate key 'datasets[0].path' (first at line 3)");
    /* missing required keys */
    EXPECT_ERROR("base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n", NULL,
                 ":1:1: missing required key 'output_dir'");
    EXPECT_ERROR("# a comment first\n\noutput_dir: o\nbase_model: m\n", NULL,
                 ":3:1: missing required key 'datasets'");
    EXPECT_ERROR("output_dir: o\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n", NULL,
                 ":1:1: missing required key 'base_model'");
    EXPECT_ERROR("base_model: m\noutput_dir: o\ndatasets:\n  - path: d.jsonl\n", NULL,
                 ":4:5: datasets[0]: missing required key 'type' (one of: alpaca, completion, "
                 "chat, text, pretokenized)");
    EXPECT_ERROR("base_model: m\noutput_dir: o\ndatasets: []\n", NULL,
                 ":3:11: datasets: needs at least one dataset");
    EXPECT_ERROR("base_model: m\noutput_dir: o\ndatasets:\n  - data.jsonl\n", NULL,
                 ":4:5: datasets[0]: expected a mapping like {path: data.jsonl, type: alpaca}, got "
                 "a scalar");
    EXPECT_ERROR(BASE "qat:\n  start_step: 10\n", NULL,
                 ":7:3: qat: missing required key 'qat.weight_format' (one of: int2..int8, q4_0, "
                 "q8_0, q4_k, nf4; none turns QAT off)");
    /* a duplicate is reported at the second one's key */
    EXPECT_ERROR(BASE "base_model: \"\"\n", NULL,
                 ":6:1: duplicate key 'base_model' (first at line 1)");
    EXPECT_ERROR("output_dir: o\nbase_model: \"\"\n", NULL, ":2:13: base_model: must not be empty");
    /* cross-key rules */
    /* optimizer_in_bwd: no clipping (max_grad_norm defaults to 1), no accumulation */
    EXPECT_ERROR(BASE "optimizer_in_bwd: true\n", NULL,
                 ":6:1: optimizer_in_bwd: cannot be used with max_grad_norm: 1 (the default, as "
                 "in Hugging Face's Trainer): clipping scales every gradient by the global norm, "
                 "which is known only after the last one, and by then the others are applied; "
                 "set max_grad_norm: 0 (the norm is still logged) or optimizer_in_bwd: false");
    EXPECT_ERROR(BASE "max_grad_norm: 0.5\noptimizer_in_bwd: true\n", NULL,
                 ":7:1: optimizer_in_bwd: cannot be used with max_grad_norm: 0.5 (line 6): "
                 "clipping scales every gradient by the global norm, which is known only after "
                 "the last one, and by then the others are applied; set max_grad_norm: 0 (the "
                 "norm is still logged) or optimizer_in_bwd: false");
    EXPECT_ERROR(BASE "max_grad_norm: 0\noptimizer_in_bwd: true\ngradient_accumulation_steps: 4\n",
                 NULL,
                 ":7:1: optimizer_in_bwd: cannot be used with gradient_accumulation_steps: 4 "
                 "(line 8): each tensor is updated as soon as its gradient is complete, so "
                 "gradients cannot accumulate over micro-batches; set gradient_accumulation_steps: "
                 "1 (a larger micro_batch_size instead) or optimizer_in_bwd: false");
    {
        qt_job_config c;
        qt_err err;
        int rc = load(BASE "max_grad_norm: 0\noptimizer_in_bwd: true\n", NULL, 0, &c, &err);
        QT_EXPECT(rc == 0 && c.optimizer_in_bwd && c.max_grad_norm == 0,
                  "optimizer_in_bwd with max_grad_norm 0: %s", err.msg);
        if (!rc) qt_job_config_free(&c);
    }
    EXPECT_ERROR(BASE "warmup_steps: 10\nwarmup_ratio: 0.1\n", NULL,
                 ":7:1: warmup_ratio: cannot be used together with warmup_steps (line 6); set "
                 "only one");
    EXPECT_ERROR(BASE "warmup_ratio: 0.1\nseed: 3\nwarmup_steps: 10\n", NULL,
                 ":8:1: warmup_steps: cannot be used together with warmup_ratio (line 6); set "
                 "only one");
    EXPECT_ERROR(BASE "adapter: qlora\nqat:\n  weight_format: int4\n", NULL,
                 ":8:3: qat: cannot be combined with adapter: qlora (line 6): QAT fake-quantizes "
                 "full-precision weights, QLoRA freezes a 4-bit base; use adapter: lora with "
                 "qat.with_lora: true for QAT on adapters");
    EXPECT_ERROR(BASE "load_in_4bit: true\nqat:\n  weight_format: q4_0\n", NULL,
                 ":8:3: qat: cannot be combined with load_in_4bit: true (line 6): QAT "
                 "fake-quantizes full-precision weights, QLoRA freezes a 4-bit base; use adapter: "
                 "lora with qat.with_lora: true for QAT on adapters");
    EXPECT_ERROR(
        BASE "adapter: qlora\nload_in_4bit: false\n", NULL,
        ":7:1: load_in_4bit: false contradicts adapter: qlora (QLoRA's base is 4-bit NF4)");
    EXPECT_ERROR(BASE "load_in_4bit: true\n", NULL,
                 ":6:1: load_in_4bit: a 4-bit base cannot be fully fine-tuned; add adapter: qlora");
    EXPECT_ERROR(BASE "adapter: lora\nqat:\n  weight_format: int4\n  with_lora: false\n", NULL,
                 ":9:3: qat.with_lora: false contradicts adapter: lora (line 6); drop the adapter "
                 "for full-weight QAT");
    EXPECT_ERROR(BASE "adapter: lora\nlora_dropout: 0.1\nqat:\n  weight_format: q4_0\n", NULL,
                 ":7:1: lora_dropout: must be 0 with qat.with_lora (the merged weight W + "
                 "(alpha/r)·B·A is what gets fake-quantized)");
    EXPECT_ERROR(BASE "qat:\n  weight_format: q4_0\n  weight_group_size: 32\n", NULL,
                 ":8:3: qat.weight_group_size: only for int2..int8 weights (q4_0 has its own "
                 "block size)");
    EXPECT_ERROR(BASE "qat:\n  weight_format: nf4\n  learn_scales: true\n", NULL,
                 ":8:3: qat.learn_scales: only for int2..int8 weights (nf4 scales are computed as "
                 "the file format does)");
    /* axolotl keys qtune refuses */
    EXPECT_ERROR(BASE "load_in_8bit: true\n", NULL,
                 ":6:1: load_in_8bit: not supported by qtune: 8-bit base weights are not "
                 "supported; use adapter: qlora (4-bit NF4)");
    /* YAML syntax errors: libyaml's problem, 1-based */
    EXPECT_ERROR(BASE "lora_r: 8\n  lora_alpha: 16\n", NULL,
                 ":7:13: YAML syntax error: mapping values are not allowed in this context");
    EXPECT_ERROR(BASE "lora_target_modules: [q_proj, v_proj\n", NULL,
                 ":7:1: YAML syntax error: did not find expected ',' or ']' (while parsing a flow "
                 "sequence at line 6 column 22)");
    EXPECT_ERROR(BASE "seed:\t1\n\tlora_r: 8\n", NULL,
                 ":7:1: YAML syntax error: found a tab character that violates indentation "
                 "(while scanning a plain scalar at line 6 column 7)");
    EXPECT_ERROR("", NULL, ":1:1: empty job file (expected key: value lines)");
    EXPECT_ERROR("# only a comment\n", NULL, ":1:1: empty job file (expected key: value lines)");
    EXPECT_ERROR("- base_model: m\n", NULL,
                 ":1:1: a job file is a mapping of keys (key: value lines), got a list");
    EXPECT_ERROR(BASE "---\nseed: 1\n", NULL, ":7:1: a second YAML document; a job file holds one");

    /* a missing file */
    qt_job_config c;
    qt_err err;
    int rc = qt_job_config_load(&c, "/nonexistent/job.yaml", NULL, 0, &err);
    QT_EXPECT(rc == QT_ERR_IO && strstr(err.msg, "/nonexistent/job.yaml: cannot open"),
              "missing file: %s", err.msg);
}

/* ---- resolution and warnings ----------------------------------------------------------- */

static void test_resolution(void) {
    qt_job_config c;
    qt_err err;
    /* axolotl: lora + load_in_4bit = qlora; qlora implies load_in_4bit */
    int rc = load(BASE "adapter: lora\nload_in_4bit: true\n", NULL, 0, &c, &err);
    QT_EXPECT(rc == 0 && c.adapter == QT_ADAPTER_QLORA, "lora + 4 bit = qlora: %s", err.msg);
    if (!rc) ROUNDTRIP(&c, "lora + load_in_4bit"), qt_job_config_free(&c);
    rc = load(BASE "adapter: qlora\n", NULL, 0, &c, &err);
    QT_EXPECT(rc == 0 && c.load_in_4bit, "qlora implies load_in_4bit: %s", err.msg);
    if (!rc) qt_job_config_free(&c);
    /* qat + adapter lora: QAT on the adapters */
    rc = load(BASE "adapter: lora\nqat:\n  weight_format: q4_0\n", NULL, 0, &c, &err);
    QT_EXPECT(rc == 0 && c.qat.with_lora, "qat + lora -> with_lora: %s", err.msg);
    if (!rc) ROUNDTRIP(&c, "qat + lora"), qt_job_config_free(&c);
    /* lora_target_linear overrides the list */
    rc = load(BASE "adapter: lora\nlora_target_modules: q_proj\nlora_target_linear: true\n", NULL,
              0, &c, &err);
    QT_EXPECT(rc == 0 && c.lora_target_modules == QT_PROJ_Q &&
                  qt_job_config_lora_targets(&c) == QT_PROJ_ALL,
              "lora_target_linear: %s", err.msg);
    if (!rc) qt_job_config_free(&c);
    rc = load(BASE "adapter: lora\nlora_target_modules: [q_proj, all-linear]\n", NULL, 0, &c, &err);
    QT_EXPECT(rc == 0 && c.lora_target_modules == QT_PROJ_ALL, "a list with all-linear");
    if (!rc) qt_job_config_free(&c);
    /* axolotl's chat_template dataset type is chat */
    rc = load("base_model: m\noutput_dir: o\ndatasets:\n  - path: c.jsonl\n"
              "    type: chat_template\n    chat_template: chatml\n",
              NULL, 0, &c, &err);
    QT_EXPECT(rc == 0 && c.datasets[0].type == QT_DS_CHAT &&
                  c.datasets[0].chat_template == QT_CHAT_CHATML,
              "type chat_template: %s", err.msg);
    if (!rc) ROUNDTRIP(&c, "chat alias"), qt_job_config_free(&c);

    /* warnings, with their places */
    expect_warnings_at(
        __LINE__, BASE "lora_r: 16\nlora_alpha: 16\nlora_target_linear: true\n", NULL, 2,
        (const char *const[]){":6:1: lora_r has no effect without an adapter (this is a full "
                              "fine-tune); add adapter: lora or qlora",
                              ":8:1: lora_target_linear has no effect without an adapter (this is "
                              "a full fine-tune); add adapter: lora or qlora"});
    expect_warnings_at(
        __LINE__, BASE "eval_steps: 10\n", NULL, 1,
        (const char *const[]){":6:1: eval_steps: there is no validation set (val_set_size is 0)"});
    expect_warnings_at(
        __LINE__, BASE "flash_attention: true\nwandb_project:\nstrict: false\n", NULL, 1,
        (const char *const[]){":6:1: flash_attention: an axolotl key qtune does not use; ignored"});
    expect_warnings_at(
        __LINE__,
        "base_model: m\noutput_dir: o\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n"
        "    field: body\n    chat_template: llama3\n",
        NULL, 2,
        (const char *const[]){":6:5: datasets[0].field: only used by type completion; ignored",
                              ":7:5: datasets[0].chat_template: only used by type chat; ignored"});
    expect_warnings_at(__LINE__, BASE, "qat.start_step=5", 1,
                       (const char *const[]){
                           "--set: qat.start_step is set but qat.weight_format is none; ignored"});
    /* input warnings (file, --set) come before finish's */
    expect_warnings_at(
        __LINE__, BASE "lora_r: 16\n", "flash_attention=true", 2,
        (const char *const[]){"--set flash_attention=true: an axolotl key qtune does not use; "
                              "ignored",
                              ":6:1: lora_r has no effect without an adapter (this is a full "
                              "fine-tune); add adapter: lora or qlora"});
    /* lora_* keys at their defaults say nothing (a saved full-run config re-parses quietly) */
    expect_warnings_at(__LINE__, BASE "lora_r: 8\nlora_alpha: 16\n", NULL, 0, NULL);
    /* qat.with_lora without an adapter uses the lora keys: no warning */
    expect_warnings_at(__LINE__, BASE "lora_r: 4\nqat:\n  weight_format: int8\n  with_lora: true\n",
                       NULL, 0, NULL);
    /* finish is idempotent: its warnings are not doubled */
    rc = load(BASE "lora_r: 16\n", NULL, 0, &c, &err);
    if (!rc) {
        rc = qt_job_config_finish(&c, &err);
        QT_EXPECT(rc == 0 && c.n_warnings == 1, "finish twice: %d warnings", c.n_warnings);
        qt_job_config_free(&c);
    }
}

/* ---- --set ------------------------------------------------------------------------------- */

static void test_set(void) {
    qt_job_config c;
    qt_err err;
    const char *sets[] = {
        "lora_r=16",          "adapter=lora",           "lora_target_modules=q_proj, v_proj",
        "learning_rate=1e-4", "output_dir=runs/x y",    "resume_from_checkpoint=latest",
        "bf16=false",         "qat.weight_format=q4_0", "qat.start_step=100",
        "val_set_size=0.05"};
    int rc = load(BASE "lora_r: 8\nresume_from_checkpoint: old.h5\n", sets, 10, &c, &err);
    QT_EXPECT(rc == 0, "sets: %s", err.msg);
    if (!rc) {
        QT_EXPECT(c.lora_r == 16 && c.adapter == QT_ADAPTER_LORA &&
                      c.lora_target_modules == (QT_PROJ_Q | QT_PROJ_V) && c.learning_rate == 1e-4 &&
                      !strcmp(c.output_dir, "runs/x y") &&
                      !strcmp(c.resume_from_checkpoint, "latest") && c.bf16 == QT_BF16_FALSE &&
                      c.qat.weight_format == QT_QATW_Q4_0 && c.qat.start_step == 100 &&
                      c.qat.with_lora && c.val_set_size == 0.05,
                  "set values");
        QT_EXPECT(c.loc[3].line == -1, "an override's place is --set");
        ROUNDTRIP(&c, "after --set");
        qt_job_config_free(&c);
    }
    /* lists, mappings and null as values */
    const char *sets2[] = {"lora_target_modules=[k_proj, o_proj]",
                           "datasets=[{path: a.jsonl, type: text}, {path: b.jsonl, type: chat}]",
                           "resume_from_checkpoint=",
                           "qat={weight_format: int4, "
                           "weight_group_size: 64}"};
    rc = load(BASE "resume_from_checkpoint: old.h5\n", sets2, 4, &c, &err);
    QT_EXPECT(rc == 0, "sets2: %s", err.msg);
    if (!rc) {
        QT_EXPECT(c.lora_target_modules == (QT_PROJ_K | QT_PROJ_O) && c.n_datasets == 2 &&
                      !strcmp(c.datasets[1].path, "b.jsonl") && c.datasets[1].type == QT_DS_CHAT &&
                      c.resume_from_checkpoint == NULL && c.qat.weight_format == QT_QATW_INT4 &&
                      c.qat.weight_group_size == 64,
                  "set lists / null / block");
        qt_job_config_free(&c);
    }
    /* the base_model-less job completed by --set */
    const char *sets3[] = {"base_model=models/x"};
    rc = load("datasets:\n  - {path: d.jsonl, type: text}\noutput_dir: o\n", sets3, 1, &c, &err);
    QT_EXPECT(rc == 0 && !strcmp(c.base_model, "models/x"), "set a required key: %s", err.msg);
    if (!rc) qt_job_config_free(&c);

    /* errors */
    EXPECT_ERROR(BASE, "lora_r=sixteen",
                 "--set lora_r=sixteen: lora_r: expected an integer, got "
                 "'sixteen'");
    EXPECT_ERROR(BASE, "lora_r=0", "--set lora_r=0: lora_r: 0 is out of range: must be 1..4096");
    EXPECT_ERROR(BASE, "qat.weight_fromat=q4_0",
                 "--set qat.weight_fromat=q4_0: unknown key 'qat.weight_fromat' (did you mean "
                 "'qat.weight_format'?)");
    EXPECT_ERROR(BASE, "lora_alpah=32",
                 "--set lora_alpah=32: unknown key 'lora_alpah' (did you mean 'lora_alpha'?)");
    EXPECT_ERROR(BASE, "weight_format=q4_0",
                 "--set weight_format=q4_0: unknown key 'weight_format' (did you mean "
                 "'qat.weight_format'?)");
    EXPECT_ERROR(BASE, "qat.weight_format=q5_0",
                 "--set qat.weight_format=q5_0: qat.weight_format: 'q5_0' is not a valid value; "
                 "valid: none, int2, int3, int4, int5, int6, int7, int8, q4_0, q8_0, q4_k, nf4 "
                 "(did you mean 'q4_0'?)");
    EXPECT_ERROR(BASE, "lora_r", "--set lora_r: expected key=value");
    EXPECT_ERROR(BASE, "=3", "--set =3: expected key=value");
    EXPECT_ERROR(BASE, "lora_target_modules=[q_proj",
                 "--set lora_target_modules=[q_proj: lora_target_modules: the value is not valid "
                 "YAML: did not find expected ',' or ']'");
    EXPECT_ERROR(BASE, "output_dir=", ":1:1: missing required key 'output_dir'");
    EXPECT_ERROR(BASE "gradient_accumulation_steps: 2\nmax_grad_norm: 0\n", "optimizer_in_bwd=true",
                 "--set: optimizer_in_bwd: cannot be used with gradient_accumulation_steps: 2 "
                 "(line 6): each tensor is updated as soon as its gradient is complete, so "
                 "gradients cannot accumulate over micro-batches; set gradient_accumulation_steps: "
                 "1 (a larger micro_batch_size instead) or optimizer_in_bwd: false");
    EXPECT_ERROR(BASE "warmup_steps: 10\n", "warmup_ratio=0.1",
                 "--set: warmup_ratio: cannot be used together with warmup_steps (line 6); set "
                 "only one");
    EXPECT_ERROR(BASE "warmup_ratio: 0.1\n", "warmup_steps=5",
                 "--set: warmup_steps: cannot be used together with warmup_ratio (line 6); set "
                 "only one");
    EXPECT_ERROR(BASE "adapter: qlora\n", "qat.weight_format=int4",
                 "--set: qat: cannot be combined with adapter: qlora (line 6): QAT "
                 "fake-quantizes full-precision weights, QLoRA freezes a 4-bit base; use adapter: "
                 "lora with qat.with_lora: true for QAT on adapters");
    EXPECT_ERROR(BASE, "fp16=true",
                 "--set fp16=true: fp16: not supported by qtune: fp16 training is not supported; "
                 "use bf16");
}

/* ---- emission ------------------------------------------------------------------------------ */

static void test_emit(void) {
    qt_job_config c;
    qt_err err;
    /* strings that need quoting, every kind of value away from its default */
    int rc = load("base_model: \"models/my: model #1\"\n"
                  "datasets:\n"
                  "  - {path: \"null\", type: completion, field: \" body \"}\n"
                  "  - {path: 'it''s.jsonl', type: chat, chat_template: llama2}\n"
                  "  - {path: \"日本語.jsonl\", type: pretokenized}\n"
                  "output_dir: \"yes\"\nadapter: lora\nlora_r: 64\nlora_alpha: 0.5\n"
                  "lora_target_modules: [down_proj, gate_proj]\npeft_use_rslora: true\n"
                  "val_set_size: 0.1\nsequence_len: 8192\nsample_packing: true\n"
                  "train_on_inputs: true\nmicro_batch_size: 3\ngradient_accumulation_steps: 7\n"
                  "num_epochs: 2.5\noptimizer: adamw\nlr_scheduler: linear\n"
                  "learning_rate: 0.000123456789\nwarmup_ratio: 0.1\nweight_decay: 0.01\n"
                  "adam_beta1: 0.8\nadam_beta2: 0.95\nadam_epsilon: 1e-6\nmax_grad_norm: 0\n"
                  "gradient_checkpointing: true\nsave_steps: 10\nsave_total_limit: 1\n"
                  "eval_steps: 5\nlogging_steps: 2\nresume_from_checkpoint: \"~\"\n"
                  "seed: 9007199254740993\nbf16: true\n"
                  "qat:\n  weight_format: int3\n  weight_group_size: 16\n"
                  "  activation_format: int8_per_token\n  learn_scales: true\n  start_step: 7\n",
                  NULL, 0, &c, &err);
    QT_EXPECT(rc == 0, "emit job: %s", err.msg);
    if (rc) return;
    QT_EXPECT(!strcmp(c.base_model, "models/my: model #1") && !strcmp(c.datasets[0].path, "null") &&
                  !strcmp(c.datasets[0].field, " body ") &&
                  !strcmp(c.datasets[1].path, "it's.jsonl") && !strcmp(c.output_dir, "yes") &&
                  !strcmp(c.resume_from_checkpoint, "~") && c.seed == 9007199254740993LL &&
                  c.qat.with_lora,
              "quoted values");
    ROUNDTRIP(&c, "everything set");

    /* the text: schema order, the qat block nested, values as written */
    char *t = NULL;
    size_t n = 0;
    if (qt_job_config_emit(&c, &t, &n, &err) == 0) {
        const char *order[] = {"\nbase_model:",
                               "\nadapter: lora\n",
                               "\nlora_r: 64\n",
                               "\nlora_alpha: 0.5\n",
                               "\nlora_target_modules: [gate_proj, down_proj]\n",
                               "\ndatasets:\n",
                               "\nval_set_size: 0.1\n",
                               "\nlearning_rate: 0.000123456789\n",
                               "\nadam_epsilon: 1e-06\n",
                               "\noutput_dir: \"yes\"\n",
                               "\nseed: 9007199254740993\n",
                               "\nbf16: true\n",
                               "\nqat:\n  weight_format: int3\n",
                               "\n  start_step: 7\n"};
        const char *at = t;
        for (int i = 0; i < (int)(sizeof order / sizeof order[0]); i++) {
            const char *hit = strstr(at, order[i]);
            QT_EXPECT(hit != NULL, "emitted text lacks (in order) '%s':\n%s", order[i], t);
            if (hit) at = hit;
        }
        QT_EXPECT(strlen(t) == n && t[0] == '#', "a comment first, NUL-terminated");
        free(t);
    }

    /* written to a file atomically, loaded back */
    char path[200];
    snprintf(path, sizeof path, "%s/config.yaml", tmp_dir);
    rc = qt_job_config_write(&c, path, &err);
    QT_EXPECT(rc == 0, "write: %s", err.msg);
    qt_job_config d;
    rc = qt_job_config_load(&d, path, NULL, 0, &err);
    QT_EXPECT(rc == 0, "load written: %s", err.msg);
    if (!rc) {
        char which[64];
        QT_EXPECT(qt_job_config_equal(&c, &d, which, sizeof which), "written differs at %s", which);
        qt_job_config_free(&d);
    }
    /* emit_file */
    FILE *f = fopen(path, "w");
    if (f) {
        rc = qt_job_config_emit_file(&c, f, &err);
        fclose(f);
        QT_EXPECT(rc == 0, "emit_file: %s", err.msg);
        rc = qt_job_config_load(&d, path, NULL, 0, &err);
        QT_EXPECT(rc == 0 && qt_job_config_equal(&c, &d, NULL, 0), "emit_file round trip");
        if (!rc) qt_job_config_free(&d);
    }
    unlink(path);
    /* equal notices a difference */
    qt_job_config_init(&d);
    char which[64];
    QT_EXPECT(!qt_job_config_equal(&c, &d, which, sizeof which) && !strcmp(which, "base_model"),
              "unequal at base_model, got %s", which);
    qt_job_config_free(&d);
    qt_job_config_free(&c);
}

/* ---- qt_model_opts --------------------------------------------------------------------- */

static void test_model_opts(void) {
    qt_job_config c;
    qt_err err;
    qt_model_opts o;
    if (qt_job_config_load(&c, "configs/qlora.yaml", NULL, 0, &err) == 0) {
        QT_EXPECT(qt_job_config_model_opts(&c, &o, &err) == 0, "opts: %s", err.msg);
        QT_EXPECT(o.mode == QT_MODE_QLORA && o.lora_r == 32 && o.lora_alpha == 16 &&
                      o.lora_dropout == 0.05 && o.lora_targets == QT_PROJ_ALL && !o.rslora &&
                      o.nf4_blocksize == 64 && o.nf4_double_quant && !o.qat_weight && !o.qat_act &&
                      o.checkpoint && o.seed == 42,
                  "qlora opts");
        qt_job_config_free(&c);
    }
    if (qt_job_config_load(&c, "configs/qat.yaml", NULL, 0, &err) == 0) {
        QT_EXPECT(qt_job_config_model_opts(&c, &o, &err) == 0, "opts: %s", err.msg);
        const qt_fq_format *w = o.qat_weight, *a = o.qat_act;
        QT_EXPECT(o.mode == QT_MODE_QAT && !o.qat_lora && w == &c.fq_weight && a == &c.fq_act,
                  "qat opts");
        QT_EXPECT(w && w->kind == QT_FQ_INT && w->bits == 4 && w->symmetric &&
                      w->granularity == QT_FQ_PER_GROUP && w->group == 32 &&
                      w->scale_mode == QT_FQ_DYNAMIC,
                  "int4 group-32 weights");
        QT_EXPECT(a && a->kind == QT_FQ_INT && a->bits == 8 && a->symmetric &&
                      a->granularity == QT_FQ_PER_TOKEN && a->scale_mode == QT_FQ_DYNAMIC,
                  "int8 per-token activations");
        qt_job_config_free(&c);
    }
    if (qt_job_config_load(&c, "configs/lora.yaml", NULL, 0, &err) == 0) {
        qt_job_config_model_opts(&c, &o, &err);
        QT_EXPECT(o.mode == QT_MODE_LORA && o.lora_r == 16 && o.lora_alpha == 32 &&
                      o.lora_targets == (QT_PROJ_Q | QT_PROJ_K | QT_PROJ_V | QT_PROJ_O) &&
                      o.seed == 1234,
                  "lora opts");
        qt_job_config_free(&c);
    }
    if (qt_job_config_load(&c, "configs/full.yaml", NULL, 0, &err) == 0) {
        qt_job_config_model_opts(&c, &o, &err);
        QT_EXPECT(o.mode == QT_MODE_FULL && !o.qat_weight && o.seed == 7, "full opts");
        qt_job_config_free(&c);
    }
    /* every weight format; QAT on LoRA; learned scales; per-channel */
    static const struct {
        const char *fmt;
        qt_fq_kind kind;
        int bits;
    } fm[] = {{"int2", QT_FQ_INT, 2},  {"int8", QT_FQ_INT, 8},  {"q4_0", QT_FQ_Q4_0, 0},
              {"q8_0", QT_FQ_Q8_0, 0}, {"q4_k", QT_FQ_Q4_K, 0}, {"nf4", QT_FQ_NF4, 0}};
    for (int i = 0; i < 6; i++) {
        char y[400];
        snprintf(y, sizeof y,
                 BASE "adapter: lora\nlora_r: 4\nlora_target_modules: [up_proj]\n"
                      "peft_use_rslora: true\ngradient_checkpointing: true\n"
                      "qat:\n  weight_format: %s\n",
                 fm[i].fmt);
        int rc = load(y, NULL, 0, &c, &err);
        QT_EXPECT(rc == 0, "%s: %s", fm[i].fmt, err.msg);
        if (rc) continue;
        qt_job_config_model_opts(&c, &o, &err);
        QT_EXPECT(o.mode == QT_MODE_QAT && o.qat_lora && o.lora_r == 4 &&
                      o.lora_targets == QT_PROJ_UP && o.rslora && o.checkpoint && !o.qat_act &&
                      o.qat_weight && o.qat_weight->kind == fm[i].kind &&
                      o.qat_weight->bits == fm[i].bits,
                  "%s on LoRA", fm[i].fmt);
        if (fm[i].kind == QT_FQ_INT)
            QT_EXPECT(o.qat_weight->granularity == QT_FQ_PER_CHANNEL && o.qat_weight->symmetric,
                      "%s per channel", fm[i].fmt);
        if (fm[i].kind == QT_FQ_NF4)
            QT_EXPECT(o.qat_weight->blocksize == 64 && !o.qat_weight->nf4_plain, "nf4 block 64");
        qt_job_config_free(&c);
    }
    const char *ls[] = {"qat.weight_format=int4", "qat.learn_scales=true"};
    if (load(BASE, ls, 2, &c, &err) == 0) {
        qt_job_config_model_opts(&c, &o, &err);
        QT_EXPECT(o.qat_weight && o.qat_weight->scale_mode == QT_FQ_LEARNED && !o.qat_lora &&
                      o.mode == QT_MODE_QAT,
                  "learn_scales -> LSQ");
        qt_job_config_free(&c);
    }
}

/* ---- docs/CONFIG.md ---------------------------------------------------------------------- */

static void test_docs(void) {
    char *md = NULL;
    size_t mdn = 0;
    FILE *m = open_memstream(&md, &mdn);
    qt_job_config_schema_markdown(m);
    fclose(m);
    FILE *f = fopen("docs/CONFIG.md", "r");
    QT_EXPECT(f != NULL, "docs/CONFIG.md missing");
    if (f) {
        char *doc = calloc(1, 1 << 20);
        size_t n = fread(doc, 1, (1 << 20) - 1, f);
        fclose(f);
        doc[n] = 0;
        QT_EXPECT(strstr(doc, md) != NULL,
                  "docs/CONFIG.md does not hold the current schema table: regenerate it with "
                  "`build/test_config --print-schema`");
        free(doc);
    }
    free(md);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--print-schema")) {
        qt_job_config_schema_markdown(stdout);
        return 0;
    }
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/qt_cfg_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(tmp_path, sizeof tmp_path, "%s/job.yaml", tmp_dir);
    test_examples();
    test_defaults();
    test_errors();
    test_resolution();
    test_set();
    test_emit();
    test_model_opts();
    test_docs();
    unlink(tmp_path);
    rmdir(tmp_dir);
    return qt_test_finish("config");
}
