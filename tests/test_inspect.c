/* test_inspect.c - `qtune inspect` reports what is in each kind of file: a model directory (its
 * config and tensors), a bitsandbytes NF4 safetensors file, a GGUF file and a qtune checkpoint
 * (step, base model, trainable tensors, config text), and refuses an unknown file by name. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <unistd.h>

#include "qt_test.h"
#include "train/checkpoint.h"
#include "train/gguf.h"
#include "train/hf_model.h"
#include "train/inspect.h"

static char *run(const char *path, int *rc) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    qt_err err = {0};
    *rc = qt_inspect(path, m, &err);
    if (*rc) fprintf(m, "ERROR %s", err.msg);
    fclose(m);
    return buf;
}

static void expect_has(const char *path, const char *const *want, int n) {
    int rc;
    char *out = run(path, &rc);
    QT_EXPECT(rc == 0, "%s: inspect failed: %s", path, out);
    for (int i = 0; i < n; i++)
        QT_EXPECT(strstr(out, want[i]), "%s: output lacks '%s'", path, want[i]);
    free(out);
}

int main(void) {
    expect_has("tests/fixtures/hf/llama",
               (const char *[]){"llama model: 2 layers", "llama3 scaling",
                                "model.layers.1.mlp.down_proj.weight", "F32   [64, 96]"},
               4);
    expect_has("tests/fixtures/bnb/bnb_linear4bit.safetensors",
               (const char *[]){"bitsandbytes NF4", "weight.absmax"}, 2);

    char g[256], c[256];
    snprintf(g, sizeof g, "/tmp/qt_inspect.%ld.gguf", (long)getpid());
    snprintf(c, sizeof c, "/tmp/qt_inspect.%ld.h5", (long)getpid());
    qt_gguf_writer *w = qt_gguf_writer_new(32);
    qt_gguf_set_str(w, "general.architecture", "llama");
    float x[32] = {0};
    qt_err err = {0};
    qt_gguf_add_tensor(w, "token_embd.weight", QT_GGML_F32, 1, (uint64_t[]){32}, x, sizeof x, &err);
    qt_gguf_write(w, g, &err);
    qt_gguf_writer_free(w);
    expect_has(g, (const char *[]){"GGUF v3", "general.architecture", "llama", "token_embd.weight"},
               4);

    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.lora_r = 2, o.lora_targets = QT_PROJ_Q;
    QT_CHECK(qt_llama_load(&ctx, &m, "tests/fixtures/hf/llama", &o, &err) == 0, "%s", err.msg);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0, &err);
    qt_ckpt_info info = {.step = 42, .config_yaml = "adapter: lora\nlora_r: 2\n"};
    snprintf(info.base_model_path, sizeof info.base_model_path, "tests/fixtures/hf/llama");
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", m.identity);
    QT_EXPECT(qt_ckpt_save(c, &ctx, &info, &opt, &err) == 0, "save: %s", err.msg);
    expect_has(c,
               (const char *[]){"step 42", "tests/fixtures/hf/llama", m.identity,
                                "layers.1.self_attn.q_proj.lora_B", "| lora_r: 2"},
               5);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);

    int rc;
    char *out = run("README.md", &rc);
    QT_EXPECT(rc != 0 && strstr(out, "README.md") && strstr(out, "not a file qtune knows"),
              "unknown file refused: %s", out);
    free(out);
    unlink(g);
    unlink(c);
    return qt_test_finish("inspect");
}
