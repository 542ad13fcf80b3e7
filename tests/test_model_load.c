/* test_model_load.c - the contract of the Hugging Face model loader (train/model_config.c,
 * train/hf_model.c). It proves:
 *   config.json: the legacy rope keys (rope_theta + rope_scaling, with "rope_type" or "type")
 *     and the newer rope_parameters block give the same qt_model_config; head_dim defaults to
 *     hidden/heads, an explicit one wins; num_key_value_heads defaults to the heads;
 *     tie_word_embeddings; attention_bias biases q, k, v, o on llama; qwen2 always biases q, k,
 *     v (not o); mistral; eos_token_id given as a list (Llama 3.x Instruct) is accepted;
 *     every error names the file and the key: unknown model_type (listing the supported
 *     ones), missing hidden_size, non-integer num_hidden_layers, heads not a multiple of the kv
 *     heads, an unsupported rope type, invalid JSON (with its line number).
 *   loading: tests/fixtures/hf/eval_mistral (bf16, 3 shards through the index, legacy rope
 *     keys) loads and reproduces transformers' eval loss (1e-5 relative); model directories
 *     assembled in a temp dir from the llama fixture with a missing tensor, a wrong shape, a
 *     wrong dtype, a truncated file, a garbage header, no model files, an index pointing to a
 *     missing shard, an index without one tensor, and model_type "gpt2" each fail with a
 *     non-zero code and a message naming the file / tensor, in full and QLoRA mode, never a
 *     crash (this test also runs in the ASan + UBSan build).
 *   sharding: the llama fixture split into two files + an index gives logits bit-identical to
 *     the single-file load. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "qt_test.h"
#include "quant/safetensors.h"
#include "train/hf_model.h"

/* ---- config.json ------------------------------------------------------------------------- */

static qt_model_config cfg_ok(const char *json, const char *what) {
    qt_model_config c;
    qt_err err = {0};
    int rc = qt_model_config_parse(&c, json, what, &err);
    QT_EXPECT(rc == 0, "%s: parse failed: %s", what, err.msg);
    return c;
}

/* parse must fail; the message must contain every one of the NULL-terminated strings */
static void cfg_bad(const char *json, const char *what, ...) {
    qt_model_config c;
    qt_err err = {0};
    int rc = qt_model_config_parse(&c, json, what, &err);
    QT_EXPECT(rc != 0 && err.code != 0, "%s: parse should fail", what);
    va_list ap;
    va_start(ap, what);
    for (const char *s; (s = va_arg(ap, const char *));)
        QT_EXPECT(strstr(err.msg, s), "%s: message '%s' should contain '%s'", what, err.msg, s);
    va_end(ap);
    printf("  %-28s -> %s\n", what, err.msg);
}

static int cfg_equal(const qt_model_config *a, const qt_model_config *b) {
    return a->arch == b->arch && !strcmp(a->model_type, b->model_type) && a->vocab == b->vocab &&
           a->hidden == b->hidden && a->ffn == b->ffn && a->layers == b->layers &&
           a->heads == b->heads && a->kv_heads == b->kv_heads && a->head_dim == b->head_dim &&
           a->max_pos == b->max_pos && a->rms_eps == b->rms_eps && a->rope_theta == b->rope_theta &&
           a->rope.type == b->rope.type && a->rope.factor == b->rope.factor &&
           a->rope.low_freq_factor == b->rope.low_freq_factor &&
           a->rope.high_freq_factor == b->rope.high_freq_factor &&
           a->rope.original_max_position_embeddings == b->rope.original_max_position_embeddings &&
           a->tie_embeddings == b->tie_embeddings && a->qkv_bias == b->qkv_bias &&
           a->o_bias == b->o_bias && a->mlp_bias == b->mlp_bias && a->bos_id == b->bos_id &&
           a->eos_id == b->eos_id;
}

#define BASE                                                                                       \
    "\"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 96, "                        \
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"rms_norm_eps\": 1e-05, "              \
    "\"max_position_embeddings\": 128, \"bos_token_id\": 1, \"eos_token_id\": 2"

static void test_config(void) {
    printf("config.json:\n");
    /* the three spellings of llama3 rope scaling */
    const char *legacy =
        "{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 2, "
        "\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
        "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
        "\"original_max_position_embeddings\": 16}}";
    const char *legacy_type =
        "{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 2, "
        "\"rope_theta\": 500000.0, \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8.0, "
        "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
        "\"original_max_position_embeddings\": 16}}";
    const char *modern =
        "{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 2, "
        "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, "
        "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
        "\"original_max_position_embeddings\": 16}}";
    qt_model_config a = cfg_ok(legacy, "legacy"), b = cfg_ok(legacy_type, "legacy type"),
                    c = cfg_ok(modern, "rope_parameters");
    QT_EXPECT(cfg_equal(&a, &c), "legacy rope keys and rope_parameters give the same config");
    QT_EXPECT(cfg_equal(&a, &b), "rope_scaling 'type' and 'rope_type' give the same config");
    QT_EXPECT(a.rope.type == QT_ROPE_LLAMA3 && a.rope.factor == 8.0 &&
                  a.rope.low_freq_factor == 1.0 && a.rope.high_freq_factor == 4.0 &&
                  a.rope.original_max_position_embeddings == 16 && a.rope_theta == 500000.0,
              "llama3 rope values read");
    QT_EXPECT(a.arch == QT_ARCH_LLAMA && a.vocab == 256 && a.hidden == 64 && a.ffn == 96 &&
                  a.layers == 2 && a.heads == 4 && a.kv_heads == 2 && a.max_pos == 128 &&
                  a.rms_eps == 1e-5 && a.bos_id == 1 && a.eos_id == 2,
              "llama shape read");
    QT_EXPECT(a.head_dim == 16, "head_dim defaults to hidden/heads (got %lld)",
              (long long)a.head_dim);
    QT_EXPECT(!a.tie_embeddings && !a.qkv_bias && !a.o_bias && !a.mlp_bias,
              "llama defaults: untied, no biases");

    /* the same model on the legacy keys and on rope_parameters, unscaled */
    qt_model_config d = cfg_ok("{\"model_type\": \"llama\", " BASE ", \"rope_theta\": 1000.0}",
                               "default rope legacy"),
                    e = cfg_ok("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": null, "
                               "\"rope_parameters\": {\"rope_type\": \"default\", "
                               "\"rope_theta\": 1000.0}}",
                               "default rope parameters");
    QT_EXPECT(cfg_equal(&d, &e) && d.rope.type == QT_ROPE_DEFAULT && d.rope_theta == 1000.0,
              "unscaled rope: both forms agree");
    QT_EXPECT(d.kv_heads == 4, "num_key_value_heads defaults to num_attention_heads (got %lld)",
              (long long)d.kv_heads);
    qt_model_config f =
        cfg_ok("{\"model_type\": \"llama\", " BASE ", \"head_dim\": 32}", "explicit head_dim");
    QT_EXPECT(f.head_dim == 32, "explicit head_dim wins over hidden/heads (got %lld)",
              (long long)f.head_dim);
    qt_model_config g =
        cfg_ok("{\"model_type\": \"llama\", " BASE ", \"rope_theta\": 10000.0}", "no rope keys");
    QT_EXPECT(g.rope_theta == 10000.0 && g.rope.type == QT_ROPE_DEFAULT, "rope_theta read");
    qt_model_config h = cfg_ok("{\"model_type\": \"llama\", " BASE "}", "rope default");
    QT_EXPECT(h.rope_theta == 10000.0, "rope_theta defaults to 10000 (got %g)", h.rope_theta);

    qt_model_config t = cfg_ok("{\"model_type\": \"llama\", " BASE ", \"tie_word_embeddings\": "
                               "true, \"attention_bias\": true}",
                               "tied + attention_bias");
    QT_EXPECT(t.tie_embeddings, "tie_word_embeddings read");
    QT_EXPECT(t.qkv_bias && t.o_bias && !t.mlp_bias, "llama attention_bias biases q, k, v and o");
    qt_model_config q = cfg_ok("{\"model_type\": \"qwen2\", " BASE ", \"num_key_value_heads\": 2, "
                               "\"tie_word_embeddings\": true}",
                               "qwen2");
    QT_EXPECT(q.arch == QT_ARCH_QWEN2 && q.qkv_bias && !q.o_bias && !q.mlp_bias && q.tie_embeddings,
              "qwen2 always biases q, k, v (not o)");
    qt_model_config qa = cfg_ok("{\"model_type\": \"qwen2\", " BASE ", \"attention_bias\": false}",
                                "qwen2 attention_bias false");
    QT_EXPECT(qa.qkv_bias && !qa.o_bias, "qwen2 biases q, k, v whatever attention_bias says");
    qt_model_config m =
        cfg_ok("{\"model_type\": \"mistral\", " BASE ", \"num_key_value_heads\": 1, "
               "\"sliding_window\": null, \"rope_theta\": 1000000.0}",
               "mistral");
    QT_EXPECT(m.arch == QT_ARCH_MISTRAL && !m.qkv_bias && !m.o_bias && m.kv_heads == 1 &&
                  m.rope_theta == 1e6 && !strcmp(m.model_type, "mistral"),
              "mistral read");
    /* Llama 3.x Instruct configs list several end-of-sequence ids */
    qt_model_config l3 = cfg_ok("{\"model_type\": \"llama\", \"vocab_size\": 256, "
                                "\"hidden_size\": 64, \"intermediate_size\": 96, "
                                "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                                "\"bos_token_id\": 128000, "
                                "\"eos_token_id\": [128001, 128008, 128009]}",
                                "eos_token_id list");
    QT_EXPECT(l3.eos_id == 128001 && l3.bos_id == 128000,
              "eos_token_id list: the first id is taken (got %lld)", (long long)l3.eos_id);

    /* errors: the file name and the key */
    cfg_bad("{\"model_type\": \"gpt2\", " BASE "}", "cfg/gpt2.json", "cfg/gpt2.json", "gpt2",
            "llama", "mistral", "qwen2", (char *)NULL);
    cfg_bad("{" BASE "}", "cfg/no_type.json", "cfg/no_type.json", "model_type", (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", \"vocab_size\": 256, \"intermediate_size\": 96, "
            "\"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
            "cfg/no_hidden.json", "cfg/no_hidden.json", "hidden_size", (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, "
            "\"intermediate_size\": 96, \"num_hidden_layers\": 2.5, \"num_attention_heads\": 4}",
            "cfg/layers_frac.json", "cfg/layers_frac.json", "num_hidden_layers", "integer",
            (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, "
            "\"intermediate_size\": 96, \"num_hidden_layers\": \"2\", \"num_attention_heads\": 4}",
            "cfg/layers_str.json", "cfg/layers_str.json", "num_hidden_layers", "integer",
            (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 3}", "cfg/gqa.json",
            "cfg/gqa.json", "num_attention_heads", "num_key_value_heads", (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"yarn\", "
            "\"factor\": 4.0}}",
            "cfg/yarn.json", "cfg/yarn.json", "rope_scaling", "yarn", (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", " BASE ", \"rope_parameters\": {\"rope_type\": \"yarn\", "
            "\"factor\": 4.0, \"rope_theta\": 10000.0}}",
            "cfg/yarn2.json", "cfg/yarn2.json", "rope_parameters", "yarn", (char *)NULL);
    cfg_bad("{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", "
            "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0}}",
            "cfg/llama3_short.json", "cfg/llama3_short.json", "original_max_position_embeddings",
            (char *)NULL);
    /* a missing comma at the end of line 3: the error is found on line 4 */
    cfg_bad("{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 64\n  \"vocab_size\": 256\n}\n",
            "cfg/bad.json", "cfg/bad.json:4:", (char *)NULL);
    cfg_bad("", "cfg/empty.json", "cfg/empty.json", (char *)NULL);
    cfg_bad("[1, 2]", "cfg/array.json", "cfg/array.json", (char *)NULL);

    /* qt_model_config_load: a missing file is an error naming it */
    qt_model_config x;
    qt_err err = {0};
    int rc = qt_model_config_load(&x, "tests/fixtures/hf/no_such_model/config.json", &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, "no_such_model/config.json"),
              "a missing config.json is named: %s", err.msg);
}

/* ---- helpers: files in a temp dir -------------------------------------------------------- */

static char tmpdir[64];
static char made[64][512]; /* everything written, removed at the end */
static int nmade;

static void note_made(const char *path) {
    for (int i = 0; i < nmade; i++)
        if (!strcmp(made[i], path)) return;
    QT_CHECK(nmade < 64, "too many temp files");
    snprintf(made[nmade++], sizeof made[0], "%s", path);
}

static void mkdir_model(const char *sub, char *dir, size_t n) {
    snprintf(dir, n, "%s/%s", tmpdir, sub);
    QT_CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
    note_made(dir);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    QT_CHECK(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    QT_CHECK(b && fread(b, 1, (size_t)n, f) == (size_t)n, "cannot read %s", path);
    b[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

static void write_bytes(const char *dir, const char *name, const void *data, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    QT_CHECK(f && fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
    note_made(path);
}

/* config.json of the llama fixture, with model_type replaced when `type` is given */
static void write_config(const char *dir, const char *type) {
    char *text = read_all("tests/fixtures/hf/llama/config.json", NULL);
    if (type) {
        char *p = strstr(text, "\"model_type\": \"llama\"");
        QT_CHECK(p, "fixture config has no model_type llama");
        char *out = malloc(strlen(text) + 64);
        sprintf(out, "%.*s\"model_type\": \"%s\"%s", (int)(p - text), text, type,
                p + strlen("\"model_type\": \"llama\""));
        free(text);
        text = out;
    }
    write_bytes(dir, "config.json", text, strlen(text));
    free(text);
}

/* the fixture's tensors as writer entries */
static qt_st_entry *entries_of(const qt_st_file *f) {
    qt_st_entry *e = calloc((size_t)f->ntensors, sizeof *e);
    for (int i = 0; i < f->ntensors; i++) {
        const qt_st_tensor *t = &f->tensors[i];
        e[i].name = t->name;
        e[i].dtype = t->dtype;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        e[i].data = t->data;
    }
    return e;
}

static int entry_index(const qt_st_entry *e, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return i;
    QT_CHECK(0, "no tensor %s", name);
}

static void save_st(const char *dir, const char *name, const qt_st_entry *e, int n) {
    char path[512], msg[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    QT_CHECK(qt_st_save_file(path, e, n, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    note_made(path);
}

/* load must fail in every mode listed; the message must contain each string */
static void load_bad(const char *dir, const char *what, const char *s1, const char *s2,
                     const char *s3) {
    const qt_train_mode modes[2] = {QT_MODE_FULL, QT_MODE_QLORA};
    for (int k = 0; k < 2; k++) {
        qt_ctx ctx;
        qt_ctx_init(&ctx, QT_CPU, 1, NULL);
        qt_llama m;
        qt_model_opts o = qt_model_opts_default();
        o.mode = modes[k];
        qt_err err = {0};
        int rc = qt_llama_load(&ctx, &m, dir, &o, &err);
        QT_EXPECT(rc != 0 && err.code != 0, "%s: load should fail", what);
        const char *s[3] = {s1, s2, s3};
        for (int i = 0; i < 3; i++)
            if (s[i])
                QT_EXPECT(strstr(err.msg, s[i]), "%s: message '%s' should contain '%s'", what,
                          err.msg, s[i]);
        if (k == 0) printf("  %-20s -> %s\n", what, err.msg);
        if (rc == 0) qt_llama_free(&m);
        qt_ctx_free(&ctx);
    }
}

/* logits of the model in dir on fixed ids (malloc'd, B*T*V floats) */
static float *logits_of(const char *dir, int64_t *count) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_FULL;
    qt_err err = {0};
    int rc = qt_llama_load(&ctx, &m, dir, &o, &err);
    QT_EXPECT(rc == 0, "%s: load: %s", dir, err.msg);
    if (rc) {
        qt_ctx_free(&ctx);
        return NULL;
    }
    qt_no_grad_begin(&ctx);
    int64_t B = 2, T = 9;
    int32_t ids[18];
    for (int i = 0; i < 18; i++) ids[i] = (int32_t)((i * 37 + 5) % m.cfg.vocab);
    qt_tensor *idt = qt_tensor_new(&ctx, QT_I32, 2, (int64_t[]){B, T});
    qt_tensor_upload(&ctx, idt, ids);
    qt_tensor *lg = qt_llama_logits(&ctx, &m, idt, NULL, NULL);
    *count = qt_numel(lg);
    float *out = malloc((size_t)*count * sizeof *out);
    memcpy(out, qt_f32(lg), (size_t)*count * sizeof *out);
    qt_no_grad_end(&ctx);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    return out;
}

/* ---- eval_mistral: bf16, 3 shards, legacy rope keys; transformers' eval loss ------------- */

static void test_eval_mistral(void) {
    const char *dir = "tests/fixtures/hf/eval_mistral";
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_FULL;
    qt_err err = {0};
    int rc = qt_llama_load(&ctx, &m, dir, &o, &err);
    QT_EXPECT(rc == 0, "eval_mistral: load: %s", err.msg);
    if (rc) {
        qt_ctx_free(&ctx);
        return;
    }
    const qt_model_config *c = &m.cfg;
    QT_EXPECT(c->arch == QT_ARCH_MISTRAL && c->layers == 3 && c->heads == 6 && c->kv_heads == 2 &&
                  c->head_dim == 8 && c->hidden == 48 && c->vocab == 300 &&
                  c->rope_theta == 500.0 && c->rope.type == QT_ROPE_DEFAULT && !c->tie_embeddings,
              "eval_mistral config (legacy rope keys)");
    char path[256];
    snprintf(path, sizeof path, "%s/eval.jsonl", dir);
    char *text = read_all(path, NULL);
    double total = 0;
    int64_t count = 0, rows = 0;
    qt_no_grad_begin(&ctx);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *row = cJSON_Parse(line);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "input_ids");
        const cJSON *lab = cJSON_GetObjectItemCaseSensitive(row, "labels");
        int64_t T = cJSON_GetArraySize(ids);
        int32_t *iv = malloc((size_t)T * sizeof *iv), *lv = malloc((size_t)T * sizeof *lv),
                *tv = malloc((size_t)T * sizeof *tv);
        for (int64_t t = 0; t < T; t++) {
            iv[t] = (int32_t)cJSON_GetArrayItem(ids, (int)t)->valuedouble;
            lv[t] = lab ? (int32_t)cJSON_GetArrayItem(lab, (int)t)->valuedouble : iv[t];
        }
        qt_llama_shift_labels(lv, tv, 1, T);
        for (int64_t t = 0; t < T; t++) count += tv[t] != QT_IGNORE_INDEX;
        qt_tensor *idt = qt_tensor_new(&ctx, QT_I32, 2, (int64_t[]){1, T});
        qt_tensor *tgt = qt_tensor_new(&ctx, QT_I32, 1, &T);
        qt_tensor_upload(&ctx, idt, iv);
        qt_tensor_upload(&ctx, tgt, tv);
        qt_tensor *loss = qt_llama_loss(&ctx, &m, idt, tgt, NULL, NULL, 1.0f); /* the sum */
        total += qt_f32(loss)[0];
        rows++;
        free(iv), free(lv), free(tv);
        cJSON_Delete(row);
        qt_step_reset(&ctx);
    }
    qt_no_grad_end(&ctx);
    free(text);
    snprintf(path, sizeof path, "%s/eval_ref.json", dir);
    text = read_all(path, NULL);
    cJSON *ref = cJSON_Parse(text);
    double want = cJSON_GetObjectItemCaseSensitive(ref, "loss")->valuedouble;
    int64_t want_n = (int64_t)cJSON_GetObjectItemCaseSensitive(ref, "tokens")->valuedouble;
    QT_EXPECT(count == want_n && rows == 5, "eval_mistral: %lld tokens (transformers %lld)",
              (long long)count, (long long)want_n);
    QT_EXPECT_CLOSE(total / count, want, 0, 1e-5, "eval_mistral loss vs transformers");
    printf("eval_mistral (bf16, 3 shards, legacy rope): loss %.7f over %lld tokens "
           "(transformers %.7f)\n",
           total / count, (long long)count, want);
    cJSON_Delete(ref);
    free(text);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

/* ---- broken model directories ------------------------------------------------------------ */

static void test_bad_dirs(void) {
    printf("broken model directories:\n");
    qt_st_file fx;
    char msg[512], dir[256];
    QT_CHECK(qt_st_load_file(&fx, "tests/fixtures/hf/llama/model.safetensors", msg, sizeof msg) ==
                 0,
             "%s", msg);
    int n = fx.ntensors;
    qt_st_entry *e = entries_of(&fx);
    const char *victim = "model.layers.1.self_attn.k_proj.weight";
    int vi = entry_index(e, n, victim);
    qt_st_entry keep = e[vi];

    /* a missing tensor */
    mkdir_model("missing", dir, sizeof dir);
    write_config(dir, NULL);
    e[vi] = e[n - 1];
    save_st(dir, "model.safetensors", e, n - 1);
    e[vi] = keep;
    load_bad(dir, "missing tensor", dir, victim, "missing");

    /* a wrong shape: k_proj [32, 64] stored as [64, 32] */
    mkdir_model("shape", dir, sizeof dir);
    write_config(dir, NULL);
    e[vi].shape[0] = keep.shape[1], e[vi].shape[1] = keep.shape[0];
    save_st(dir, "model.safetensors", e, n);
    e[vi] = keep;
    load_bad(dir, "wrong shape", victim, "[64, 32]", "[32, 64]");

    /* a wrong dtype: the same bytes as I32 */
    mkdir_model("dtype", dir, sizeof dir);
    write_config(dir, NULL);
    QT_CHECK(keep.dtype == QT_ST_F32, "the llama fixture is f32");
    e[vi].dtype = QT_ST_I32;
    save_st(dir, "model.safetensors", e, n);
    e[vi] = keep;
    load_bad(dir, "wrong dtype", victim, "I32", "model.safetensors");

    /* the fixture's bytes, cut in the middle of the data section */
    size_t len;
    char *bytes = read_all("tests/fixtures/hf/llama/model.safetensors", &len);
    size_t data0 = 8 + (size_t)fx.header_len;
    mkdir_model("truncated", dir, sizeof dir);
    write_config(dir, NULL);
    write_bytes(dir, "model.safetensors", bytes, data0 + (len - data0) / 2);
    load_bad(dir, "truncated file", "model.safetensors", "truncated", NULL);

    /* garbage header: a plausible length followed by non-JSON */
    mkdir_model("garbage", dir, sizeof dir);
    write_config(dir, NULL);
    memcpy(bytes + 8, "{\"model.embed_tokens.weight\": {\"dtype\": ###", 44);
    write_bytes(dir, "model.safetensors", bytes, len);
    load_bad(dir, "garbage header", "model.safetensors", "header", NULL);

    /* random bytes from the start (a huge header length) */
    mkdir_model("random", dir, sizeof dir);
    write_config(dir, NULL);
    uint32_t s = 12345;
    for (size_t i = 0; i < 4096 && i < len; i++) {
        s = s * 1664525u + 1013904223u;
        bytes[i] = (char)(s >> 24);
    }
    write_bytes(dir, "model.safetensors", bytes, len);
    load_bad(dir, "random bytes", "model.safetensors", "safetensors", NULL);
    free(bytes);

    /* an empty file */
    mkdir_model("empty", dir, sizeof dir);
    write_config(dir, NULL);
    write_bytes(dir, "model.safetensors", "", 0);
    load_bad(dir, "empty file", "model.safetensors", "truncated", NULL);

    /* no model files at all */
    mkdir_model("nofiles", dir, sizeof dir);
    write_config(dir, NULL);
    load_bad(dir, "no model files", dir, "model.safetensors", NULL);

    /* no config.json */
    mkdir_model("noconfig", dir, sizeof dir);
    save_st(dir, "model.safetensors", e, n);
    load_bad(dir, "no config.json", "config.json", NULL, NULL);

    /* an index pointing to a shard that is not there */
    mkdir_model("noshard", dir, sizeof dir);
    write_config(dir, NULL);
    save_st(dir, "model-00001-of-00002.safetensors", e, n);
    {
        cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
        for (int i = 0; i < n; i++)
            cJSON_AddStringToObject(wm, e[i].name,
                                    i == vi ? "model-00002-of-00002.safetensors"
                                            : "model-00001-of-00002.safetensors");
        char *t = cJSON_Print(idx);
        write_bytes(dir, "model.safetensors.index.json", t, strlen(t));
        free(t);
        cJSON_Delete(idx);
    }
    load_bad(dir, "missing shard", "model-00002-of-00002.safetensors", NULL, NULL);

    /* an index whose weight_map forgets a tensor */
    mkdir_model("noentry", dir, sizeof dir);
    write_config(dir, NULL);
    save_st(dir, "model-00001-of-00001.safetensors", e, n);
    {
        cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
        for (int i = 0; i < n; i++)
            if (i != vi) cJSON_AddStringToObject(wm, e[i].name, "model-00001-of-00001.safetensors");
        char *t = cJSON_Print(idx);
        write_bytes(dir, "model.safetensors.index.json", t, strlen(t));
        free(t);
        cJSON_Delete(idx);
    }
    load_bad(dir, "index lacks a tensor", "model.safetensors.index.json", victim, NULL);

    /* an index that is not JSON */
    mkdir_model("badindex", dir, sizeof dir);
    write_config(dir, NULL);
    write_bytes(dir, "model.safetensors.index.json", "{\"weight_map\": {", 16);
    load_bad(dir, "index not JSON", "model.safetensors.index.json", NULL, NULL);

    /* an architecture qtune does not know */
    mkdir_model("gpt2", dir, sizeof dir);
    write_config(dir, "gpt2");
    save_st(dir, "model.safetensors", e, n);
    load_bad(dir, "model_type gpt2", "config.json", "gpt2", "llama");

    free(e);
    qt_st_free(&fx);
}

/* ---- sharded == unsharded ---------------------------------------------------------------- */

static void test_sharded(void) {
    qt_st_file fx;
    char msg[512], dir[256];
    QT_CHECK(qt_st_load_file(&fx, "tests/fixtures/hf/llama/model.safetensors", msg, sizeof msg) ==
                 0,
             "%s", msg);
    int n = fx.ntensors;
    qt_st_entry *e = entries_of(&fx);
    /* odd-numbered tensors (in file order) to shard 2, the rest to shard 1 */
    qt_st_entry *s1 = calloc((size_t)n, sizeof *s1), *s2 = calloc((size_t)n, sizeof *s2);
    int n1 = 0, n2 = 0;
    cJSON *idx = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(idx, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)(fx.len - 8 - fx.header_len));
    cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
    for (int i = 0; i < n; i++) {
        if (i % 2)
            s2[n2++] = e[i];
        else
            s1[n1++] = e[i];
        cJSON_AddStringToObject(wm, e[i].name,
                                i % 2 ? "model-00002-of-00002.safetensors"
                                      : "model-00001-of-00002.safetensors");
    }
    mkdir_model("sharded", dir, sizeof dir);
    write_config(dir, NULL);
    save_st(dir, "model-00001-of-00002.safetensors", s1, n1);
    save_st(dir, "model-00002-of-00002.safetensors", s2, n2);
    char *t = cJSON_Print(idx);
    write_bytes(dir, "model.safetensors.index.json", t, strlen(t));
    free(t);
    cJSON_Delete(idx);

    int64_t na = 0, nb = 0;
    float *a = logits_of("tests/fixtures/hf/llama", &na);
    float *b = logits_of(dir, &nb);
    QT_EXPECT(a && b && na == nb && na > 0, "both loads give logits");
    if (a && b && na == nb) {
        int64_t diff = 0;
        for (int64_t i = 0; i < na; i++) diff += memcmp(&a[i], &b[i], sizeof a[i]) != 0;
        QT_EXPECT(diff == 0, "sharded (%d + %d tensors) vs single file: %lld of %lld logits differ",
                  n1, n2, (long long)diff, (long long)na);
        printf("sharded llama (%d + %d tensors in 2 files): %lld logits, %lld differ bitwise\n", n1,
               n2, (long long)na, (long long)diff);
    }
    free(a), free(b), free(s1), free(s2), free(e);
    qt_st_free(&fx);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qt_model_load_XXXXXX");
    QT_CHECK(mkdtemp(tmpdir), "mkdtemp");
    test_config();
    test_eval_mistral();
    test_bad_dirs();
    test_sharded();
    for (int i = nmade - 1; i >= 0; i--) remove(made[i]); /* files first, then their dirs */
    rmdir(tmpdir);
    return qt_test_finish("model_load");
}
