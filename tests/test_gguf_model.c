/* test_gguf_model.c - qtune reads the GGUF files it writes (train/gguf_model.c, gguf_tok.c):
 * models exported by train/export_gguf.c, opened again with qt_model_open, against the model
 * they came from, on the CPU backend (f32):
 *   (a) the demo model (data/demo/model: bf16, tied, 4 layers, GQA, byte-level tokenizer) as
 *       gguf-f16 / -q8_0 / -q4_0 / -q4_k_m: the same config; the F16 file holds the very bf16
 *       values (bf16 -> f16 is exact but for f16-subnormal magnitudes), its eval loss within
 *       TOL_F16 of the directory's; the quantized ones within TOL_Q8 / TOL_Q4 (relative);
 *   (b) tests/fixtures/hf/llama (llama3 rope scaling, untied, f32 weights, permuted Q/K) and
 *       qwen2 (tied, q/k/v biases, not permuted), gguf-f16 and gguf-q8_0 without a vocabulary:
 *       the llama3 parameters come back from rope_freqs.weight and the inverse frequencies are
 *       bit-equal; F16 loss within TOL_F16_F32 (f32 -> f16 rounding of every weight); a random
 *       llama with rows of 256, so that the Q4_K_M file has real Q4_K and Q6_K tensors (the
 *       demo's rows fall back to Q8_0), in all four formats; a GGUF file as a base model:
 *       QLoRA on a Q8_0 file, a checkpoint naming it, reopened by qt_model_open, same loss;
 *   (c) QAT exactness: QAT + LoRA trained against Q4_0 for a few steps, exported as gguf-q4_0:
 *       the GGUF's eval loss equals the checkpoint's bit for bit. The linear weights are the
 *       trained Q4_0 blocks; the model's embeddings, which QAT does not train, are written here
 *       already on the Q4_0 (token_embd) and Q8_0 (output, Q6_K's fallback for rows of 64)
 *       grids, so that the file's re-quantization gives them back;
 *   (d) tokenizers: the GGUF-built tokenizer against the tokenizer.json it was exported from,
 *       on the texts of tests/fixtures/tok/cases.json, the 300 KJV verses of data/demo/train.jsonl
 * and texts around every added token, with and without special tokens, ids and decoded text:
 * identical for the demo model, GPT-2, GPT-2 with prefix space, Llama 2 and Llama 3 (except texts
 * with the fixture's lstrip / rstrip / single_word tokens, flags GGUF cannot hold); Mistral's
 *       (Metaspace, prepend_scheme first) and the Metaspace "always" layout are exported as the
 *       same "llama" vocabulary and read back as Llama 2's legacy normalizer: their differing
 *       texts are counted and printed, not failed;
 *   (e) damaged and unsupported files: truncated (header, data), an unknown architecture, an
 *       unreadable tensor type, a missing tensor, a .gguf name without the magic, a file without
 *       vocabulary asked for a tokenizer: errors naming the file and the key / tensor;
 *   (f) the CLI: `qtune eval X.gguf --json` prints the library's loss; `qtune generate` from
 *       the F16 file writes what it writes from the directory; bad files exit 1, one line. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "qt_test.h"
#include "quant/gguf_blocks.h"
#include "quant/half.h"
#include "quant/safetensors.h"
#include "train/checkpoint.h"
#include "train/eval.h"
#include "train/export.h"
#include "train/gguf.h"
#include "train/gguf_model.h"
#include "train/trainer.h"

/* tolerances on the eval loss, relative to the source model's */
#define TOL_F16     1e-7 /* bf16 weights in F16 (measured: 0) */
#define TOL_F16_F32 1e-5 /* f32 weights rounded to F16 (measured: up to 8.2e-7) */
#define TOL_Q8      5e-4 /* measured: up to 3.3e-5 */
#define TOL_Q4      3e-2 /* Q4_0, Q4_K_M; measured: up to 5.5e-3 */

static char dir[256];

/* ---- helpers ------------------------------------------------------------------------------- */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) free(b), b = NULL;
    if (b) b[n] = 0;
    if (b && len) *len = (size_t)n;
    fclose(f);
    return b;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    QT_CHECK(system(cmd) == 0, "%s", cmd);
}

static int open_model(qt_ctx *ctx, qt_llama *m, const char *path, qt_err *err) {
    char base[1100];
    return qt_model_open(ctx, m, path, base, sizeof base, err);
}

/* eval loss of the model at path on the dataset at data (NaN when it cannot open) */
static double eval_path(qt_ctx *ctx, const char *path, const char *data) {
    qt_llama m;
    qt_err err = {0};
    if (open_model(ctx, &m, path, &err) != 0) {
        QT_EXPECT(0, "open %s: %s", path, err.msg);
        return NAN;
    }
    qt_pretok ds;
    QT_CHECK(qt_pretok_load(&ds, data, m.cfg.vocab, &err) == 0, "%s", err.msg);
    qt_eval_result r;
    QT_CHECK(qt_eval_loss(ctx, &m, &ds, 4096, &r, &err) == 0, "%s", err.msg);
    qt_pretok_free(&ds);
    qt_llama_free(&m);
    return r.loss;
}

static int export_model(const char *model, qt_export_format f, const char *out, bool no_tok,
                        qt_err *err) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[1100];
    int rc = qt_model_open(&ctx, &m, model, base, sizeof base, err);
    if (!rc) {
        qt_export_opts o = {.format = f, .out = out, .base_dir = base, .gguf_no_tokenizer = no_tok};
        rc = qt_export(&ctx, &m, &o, err);
        qt_llama_free(&m);
    }
    qt_ctx_free(&ctx);
    return rc;
}

static void export_ok(const char *model, qt_export_format f, const char *out, bool no_tok) {
    qt_err err = {0};
    QT_CHECK(export_model(model, f, out, no_tok, &err) == 0, "export %s: %s", out, err.msg);
}

static const char *FMT_NAME[] = {[QT_EXPORT_GGUF_F16] = "f16",
                                 [QT_EXPORT_GGUF_Q8_0] = "q8_0",
                                 [QT_EXPORT_GGUF_Q4_0] = "q4_0",
                                 [QT_EXPORT_GGUF_Q4_K_M] = "q4_k_m"};

/* a pre-tokenized dataset of n rows of random ids below vocab */
static void random_data(const char *path, int64_t vocab, int rows, int len, uint64_t seed) {
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot write %s", path);
    for (int r = 0; r < rows; r++) {
        fputs("{\"input_ids\": [", f);
        for (int i = 0; i < len; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            fprintf(f, "%s%lld", i ? ", " : "", (long long)((seed >> 33) % (uint64_t)vocab));
        }
        fputs("]}\n", f);
    }
    fclose(f);
}

/* how many values of the linear weights and biases of b differ from a's, a's rounded to F16
 * first when f16 */
static int64_t count_diff(qt_ctx *ctx, qt_llama *a, qt_llama *b, bool f16) {
    int64_t nd = 0;
    for (int64_t i = 0; i < a->cfg.layers; i++) {
        qt_linear *la[7] = {&a->layer[i].q,    &a->layer[i].k,  &a->layer[i].v,   &a->layer[i].o,
                            &a->layer[i].gate, &a->layer[i].up, &a->layer[i].down};
        qt_linear *lb[7] = {&b->layer[i].q,    &b->layer[i].k,  &b->layer[i].v,   &b->layer[i].o,
                            &b->layer[i].gate, &b->layer[i].up, &b->layer[i].down};
        for (int j = 0; j < 7; j++) {
            int64_t n = la[j]->out * la[j]->in;
            float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
            qt_linear_merged(ctx, la[j], x);
            qt_linear_merged(ctx, lb[j], y);
            for (int64_t k = 0; k < n; k++) {
                if (f16) x[k] = qt_f16_to_f32(qt_f32_to_f16(x[k]));
                nd += memcmp(&x[k], &y[k], 4) != 0;
            }
            free(x), free(y);
            if (la[j]->bias) { /* F32 in every file */
                n = la[j]->out;
                x = malloc((size_t)n * 4), y = malloc((size_t)n * 4);
                qt_tensor_download(ctx, la[j]->bias, x);
                qt_tensor_download(ctx, lb[j]->bias, y);
                for (int64_t k = 0; k < n; k++) nd += memcmp(&x[k], &y[k], 4) != 0;
                free(x), free(y);
            }
        }
    }
    return nd;
}

static bool same_config(const qt_model_config *a, const qt_model_config *b) {
    return a->arch == b->arch && a->vocab == b->vocab && a->hidden == b->hidden &&
           a->ffn == b->ffn && a->layers == b->layers && a->heads == b->heads &&
           a->kv_heads == b->kv_heads && a->head_dim == b->head_dim && a->max_pos == b->max_pos &&
           a->rms_eps == b->rms_eps && a->rope_theta == b->rope_theta &&
           a->tie_embeddings == b->tie_embeddings && a->qkv_bias == b->qkv_bias &&
           a->o_bias == b->o_bias && a->mlp_bias == b->mlp_bias && a->rope.type == b->rope.type &&
           a->rope.factor == b->rope.factor && a->rope.low_freq_factor == b->rope.low_freq_factor &&
           a->rope.high_freq_factor == b->rope.high_freq_factor &&
           a->rope.original_max_position_embeddings == b->rope.original_max_position_embeddings;
}

/* ---- (a), (b): exports of a model read back ---------------------------------------------------
 */

/* Exports model in the given formats, reads each back, compares the config, the rope
 * frequencies, the weights (F16: the model's rounded to F16, exactly) and the eval loss on data
 * (within tol[k] relative). */
static void roundtrip(const char *what, const char *model, const char *data, bool no_tok,
                      const qt_export_format *fmts, int nf, const double *tol) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    double ref = eval_path(&ctx, model, data);
    qt_llama src;
    qt_err err = {0};
    QT_CHECK(open_model(&ctx, &src, model, &err) == 0, "%s", err.msg);
    printf("%s: eval loss %.9f from the model\n", what, ref);
    for (int k = 0; k < nf; k++) {
        char out[400];
        snprintf(out, sizeof out, "%s/%s-%s.gguf", dir, what, FMT_NAME[fmts[k]]);
        export_ok(model, fmts[k], out, no_tok);
        qt_llama g;
        int rc = open_model(&ctx, &g, out, &err);
        QT_EXPECT(rc == 0, "%s: %s", out, err.msg);
        if (rc) continue;
        QT_EXPECT(same_config(&src.cfg, &g.cfg), "%s: the config comes back", out);
        QT_EXPECT(strlen(g.identity) == 16 && strcmp(g.identity, src.identity) != 0,
                  "%s: an identity of its own (%s)", out, g.identity);
        float a[256], b[256];
        int64_t h = src.cfg.head_dim / 2;
        qt_tensor_download(&ctx, src.inv_freq, a);
        qt_tensor_download(&ctx, g.inv_freq, b);
        QT_EXPECT(!memcmp(a, b, (size_t)h * 4), "%s: inverse rope frequencies bit-equal", out);
        if (fmts[k] == QT_EXPORT_GGUF_F16) {
            int64_t nd = count_diff(&ctx, &src, &g, true), nraw = count_diff(&ctx, &src, &g, false);
            QT_EXPECT(nd == 0, "%s: %lld weights differ from the model's rounded to F16", out,
                      (long long)nd);
            printf("%s: F16 weights are the model's rounded to F16 (%lld values differ from the "
                   "model's own)\n",
                   out, (long long)nraw);
        }
        qt_llama_free(&g);
        double l = eval_path(&ctx, out, data);
        double rel = fabs(l - ref) / ref;
        printf("%s: eval loss %.9f from %s, relative difference %.3e (tolerance %g)\n", what, l,
               FMT_NAME[fmts[k]], rel, tol[k]);
        QT_EXPECT(rel <= tol[k], "%s: loss %.9f vs %.9f (relative %.3e > %g)", out, l, ref, rel,
                  tol[k]);
    }
    qt_llama_free(&src);
    qt_ctx_free(&ctx);
}

/* the 300 KJV verses of data/demo/train.jsonl (its rows' "input"), malloc'd */
static char **demo_verses(int *n) {
    char *text = slurp("data/demo/train.jsonl", NULL);
    QT_CHECK(text, "data/demo/train.jsonl");
    char **v = NULL;
    *n = 0;
    for (char *p = text; *p;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        cJSON *row = cJSON_Parse(p);
        const char *in = cJSON_GetStringValue(cJSON_GetObjectItem(row, "input"));
        if (in && *in) {
            v = realloc(v, (size_t)(*n + 1) * sizeof *v);
            v[(*n)++] = strdup(in);
        }
        cJSON_Delete(row);
        p = nl ? nl + 1 : p + strlen(p);
    }
    free(text);
    QT_CHECK(*n >= 100, "data/demo/train.jsonl: %d verses", *n);
    return v;
}

/* KJV verses as a pre-tokenized dataset, with the demo model's tokenizer */
static void kjv_data(const char *path, int rows) {
    qt_tok *t;
    qt_err err = {0};
    QT_CHECK(qt_tok_load(&t, "data/demo/model/tokenizer.json", &err) == 0, "%s", err.msg);
    int n;
    char **v = demo_verses(&n);
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot write %s", path);
    for (int r = 0; r < rows && r < n; r++) {
        const char *s = v[(r * 37) % n];
        qt_tok_ids ids = {0};
        QT_CHECK(qt_tok_encode(t, s, strlen(s), true, &ids, &err) == 0, "%s", err.msg);
        fputs("{\"input_ids\": [", f);
        for (int64_t i = 0; i < ids.n; i++) fprintf(f, "%s%d", i ? ", " : "", ids.ids[i]);
        fputs("]}\n", f);
        qt_tok_ids_free(&ids);
    }
    fclose(f);
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
    qt_tok_free(t);
}

/* ---- (c): QAT exactness -----------------------------------------------------------------------
 */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double gauss(uint64_t *s) {
    double u1 = ((splitmix(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((splitmix(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* values put on a GGUF block grid: re-quantizing them gives them back (Q4_0, Q8_0) */
static void on_grid(float *v, int64_t n, qt_gguf_type t) {
    void *q = malloc((size_t)n * 2);
    QT_CHECK(qt_gguf_quantize_row(t, v, q, n) == 0 && qt_gguf_dequantize_row(t, q, v, n) == 0,
             "grid");
    free(q);
}

typedef struct {
    int V, D, F, L, H, KV, HD;
    bool grids; /* embeddings on the Q4_0 / Q8_0 grids (QAT exactness) */
} spec;

/* a random llama (untied, f32 safetensors) of shape s */
static void write_model(const char *d, const spec *s, uint64_t seed) {
    sh("mkdir -p %s%s", d, "");
    char path[400], cfg[800];
    snprintf(path, sizeof path, "%s/config.json", d);
    snprintf(cfg, sizeof cfg,
             "{\"model_type\": \"llama\", \"vocab_size\": %d, \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, "
             "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
             "\"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-05, "
             "\"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
             "\"bos_token_id\": 1, \"eos_token_id\": 2}\n",
             s->V, s->D, s->F, s->L, s->H, s->KV, s->HD);
    write_text(path, cfg);
    const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                          "mlp.down_proj"};
    const int64_t lout[7] = {s->H * s->HD, s->KV * s->HD, s->KV * s->HD, s->D, s->F, s->F, s->D};
    const int64_t lin_in[7] = {s->D, s->D, s->D, s->H * s->HD, s->D, s->D, s->F};
    int nt = 3 + 9 * s->L, n = 0;
    qt_st_entry *e = calloc((size_t)nt, sizeof *e);
    float **bufs = calloc((size_t)nt, sizeof *bufs);
    char(*names)[96] = calloc((size_t)nt, sizeof *names);
    uint64_t rng = seed;
    for (int k = 0; k < nt; k++) {
        int64_t rows, cols = 0;
        double std = 1, mean = 0;
        if (k == 0) {
            snprintf(names[n], 96, "model.embed_tokens.weight");
            rows = s->V, cols = s->D;
        } else if (k == 1) {
            snprintf(names[n], 96, "lm_head.weight");
            rows = s->V, cols = s->D, std = 1.0 / sqrt(s->D);
        } else if (k == 2) {
            snprintf(names[n], 96, "model.norm.weight");
            rows = s->D, std = 0.1, mean = 1;
        } else {
            int l = (k - 3) / 9, j = (k - 3) % 9;
            if (j < 7) {
                snprintf(names[n], 96, "model.layers.%d.%s.weight", l, lin[j]);
                rows = lout[j], cols = lin_in[j], std = 1.0 / sqrt((double)lin_in[j]);
            } else {
                snprintf(names[n], 96, "model.layers.%d.%s.weight", l,
                         j == 7 ? "input_layernorm" : "post_attention_layernorm");
                rows = s->D, std = 0.1, mean = 1;
            }
        }
        int64_t cnt = rows * (cols ? cols : 1);
        bufs[n] = malloc((size_t)cnt * 4);
        for (int64_t i = 0; i < cnt; i++) bufs[n][i] = (float)(mean + std * gauss(&rng));
        if (s->grids && k == 0) on_grid(bufs[n], cnt, QT_GGUF_Q4_0); /* token_embd: Q4_0 */
        if (s->grids && k == 1) on_grid(bufs[n], cnt, QT_GGUF_Q8_0); /* output: Q6_K -> Q8_0 */
        e[n] = (qt_st_entry){
            .name = names[n], .dtype = QT_ST_F32, .ndim = cols ? 2 : 1, .data = bufs[n]};
        e[n].shape[0] = rows, e[n].shape[1] = cols;
        n++;
    }
    char msg[512];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    QT_CHECK(qt_st_save_file(path, e, n, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs), free(e), free(names);
}

/* a few steps of QAT + LoRA against Q4_0 (as tests/test_export_gguf.c trains one) */
static void train_qat(const char *model, const char *ckpt) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 3, NULL);
    qt_model_opts o = qt_model_opts_default();
    qt_fq_format wq = {.kind = QT_FQ_Q4_0};
    o.mode = QT_MODE_QAT, o.qat_lora = true, o.qat_weight = &wq;
    o.lora_r = 4, o.lora_alpha = 8, o.seed = 2;
    qt_llama m;
    qt_err err = {0};
    QT_CHECK(qt_llama_load(&ctx, &m, model, &o, &err) == 0, "%s", err.msg);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0, &err);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 2e-2};
    for (int s = 0; s < 4; s++) {
        int32_t ids[24];
        for (int i = 0; i < 24; i++) ids[i] = 3 + (s * 13 + i * 7) % 290;
        qt_micro_batch mb = {.B = 2, .T = 12, .ids = ids, .labels = ids};
        qt_step_stats st;
        QT_CHECK(qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, &st, &err) == 0, "%s", err.msg);
    }
    qt_ckpt_info info = {.step = 4, .sched = sch, .opts = o};
    snprintf(info.base_model_path, sizeof info.base_model_path, "%s", model);
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", m.identity);
    QT_CHECK(qt_ckpt_save(ckpt, &ctx, &info, &opt, &err) == 0, "%s", err.msg);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

static void check_qat(void) {
    char model[300], ckpt[300], out[300], data[300];
    snprintf(model, sizeof model, "%s/qat_model", dir);
    snprintf(ckpt, sizeof ckpt, "%s/qat_q4_0.h5", dir);
    snprintf(out, sizeof out, "%s/qat-q4_0.gguf", dir);
    snprintf(data, sizeof data, "%s/qat_eval.jsonl", dir);
    /* llama, hidden 64 (output rows of 64: Q8_0), 2 layers, 4 / 2 heads of 16, ffn 96 */
    static const spec S = {300, 64, 96, 2, 4, 2, 16, true};
    write_model(model, &S, 77);
    train_qat(model, ckpt);
    random_data(data, 300, 6, 40, 5);
    export_ok(ckpt, QT_EXPORT_GGUF_Q4_0, out, true);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    double lc = eval_path(&ctx, ckpt, data), lg = eval_path(&ctx, out, data);
    QT_EXPECT(!memcmp(&lc, &lg, sizeof lc),
              "QAT Q4_0: the GGUF's loss %.17g equals the checkpoint's %.17g bit for bit", lg, lc);
    printf("QAT Q4_0: eval loss %.17g from the checkpoint, %.17g from its gguf-q4_0 (%s)\n", lc, lg,
           lc == lg ? "exact" : "DIFFERENT");
    { /* and the weights themselves */
        qt_llama a, b;
        qt_err err = {0};
        QT_CHECK(open_model(&ctx, &a, ckpt, &err) == 0, "%s", err.msg);
        QT_CHECK(open_model(&ctx, &b, out, &err) == 0, "%s", err.msg);
        int64_t nd = count_diff(&ctx, &a, &b, false);
        QT_EXPECT(nd == 0, "QAT Q4_0: %lld linear weight values differ", (long long)nd);
        int64_t n = a.cfg.vocab * a.cfg.hidden;
        float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
        qt_tensor_download(&ctx, a.embed, x), qt_tensor_download(&ctx, b.embed, y);
        QT_EXPECT(!memcmp(x, y, (size_t)n * 4), "QAT Q4_0: embeddings exact");
        qt_tensor_download(&ctx, a.lm_head, x), qt_tensor_download(&ctx, b.lm_head, y);
        QT_EXPECT(!memcmp(x, y, (size_t)n * 4), "QAT Q4_0: output exact");
        free(x), free(y);
        qt_llama_free(&a), qt_llama_free(&b);
    }
    qt_ctx_free(&ctx);
}

/* A GGUF file as a training base: QLoRA on a Q8_0 file (NF4 quantized from its dequantized
 * values), two steps, a checkpoint that names the file as its base; qt_model_open rebuilds it
 * (identity checked) and evaluates it exactly as the trained model in memory. */
static void check_gguf_base(const char *gguf, const char *data) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 5, NULL);
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_QLORA, o.lora_r = 4, o.lora_alpha = 8, o.seed = 3;
    qt_llama m;
    qt_err err = {0};
    int rc = qt_llama_load_gguf(&ctx, &m, gguf, &o, &err);
    QT_EXPECT(rc == 0, "QLoRA on %s: %s", gguf, err.msg);
    if (rc) {
        qt_ctx_free(&ctx);
        return;
    }
    QT_EXPECT(m.n_train == 2 * 7 * m.cfg.layers && m.layer[0].q.is_nf4,
              "QLoRA on a GGUF: NF4 bases, %d trainable tensors", m.n_train);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0, &err);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 1e-2};
    for (int s = 0; s < 2; s++) {
        int32_t ids[32];
        for (int i = 0; i < 32; i++) ids[i] = 5 + (s * 31 + i * 17) % 500;
        qt_micro_batch mb = {.B = 2, .T = 16, .ids = ids, .labels = ids};
        qt_step_stats st;
        QT_CHECK(qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, &st, &err) == 0, "%s", err.msg);
    }
    qt_pretok ds;
    QT_CHECK(qt_pretok_load(&ds, data, m.cfg.vocab, &err) == 0, "%s", err.msg);
    qt_eval_result r;
    QT_CHECK(qt_eval_loss(&ctx, &m, &ds, 4096, &r, &err) == 0, "%s", err.msg);
    qt_pretok_free(&ds);
    char ckpt[400];
    snprintf(ckpt, sizeof ckpt, "%s/qlora_on_gguf.h5", dir);
    qt_ckpt_info info = {.step = 2, .sched = sch, .opts = o};
    snprintf(info.base_model_path, sizeof info.base_model_path, "%s", gguf);
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", m.identity);
    QT_CHECK(qt_ckpt_save(ckpt, &ctx, &info, &opt, &err) == 0, "%s", err.msg);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    double l = eval_path(&ctx, ckpt, data);
    QT_EXPECT(l == r.loss, "a checkpoint on a GGUF base reopens: loss %.17g, in memory %.17g", l,
              r.loss);
    printf("QLoRA on %s: eval loss %.9f in memory, %.9f from its checkpoint\n", gguf, r.loss, l);
    qt_ctx_free(&ctx);
}

/* ---- (d): tokenizers ------------------------------------------------------------------------- */

typedef struct {
    char **s;
    size_t *len;
    int n, cap;
} texts;

static void add_text(texts *t, const char *s, size_t n) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->s = realloc(t->s, (size_t)t->cap * sizeof *t->s);
        t->len = realloc(t->len, (size_t)t->cap * sizeof *t->len);
    }
    t->s[t->n] = malloc(n + 1);
    memcpy(t->s[t->n], s, n);
    t->s[t->n][n] = 0;
    t->len[t->n++] = n;
}

static void texts_free(texts *t) {
    for (int i = 0; i < t->n; i++) free(t->s[i]);
    free(t->s), free(t->len);
}

/* cases.json's texts and the demo's 300 verses, shared by every tokenizer */
static void base_texts(texts *t) {
    char *j = slurp("tests/fixtures/tok/cases.json", NULL);
    cJSON *root = cJSON_Parse(j);
    free(j);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(root, "texts")) {
        const cJSON *hex = cJSON_GetObjectItem(e, "hex"); /* bytes such as NUL, as hex */
        if (cJSON_IsString(hex)) {
            size_t n = strlen(hex->valuestring) / 2;
            char buf[512];
            for (size_t i = 0; i < n && i < sizeof buf; i++) {
                unsigned b;
                sscanf(hex->valuestring + 2 * i, "%2x", &b);
                buf[i] = (char)b;
            }
            add_text(t, buf, n < sizeof buf ? n : sizeof buf);
        } else if (cJSON_IsString(e)) {
            add_text(t, e->valuestring, strlen(e->valuestring));
        }
    }
    cJSON_Delete(root);
    int n;
    char **v = demo_verses(&n);
    for (int i = 0; i < n; i++) add_text(t, v[i], strlen(v[i])), free(v[i]);
    free(v);
}

/* texts around each added token of a tokenizer.json; *flagged: contents with flags GGUF loses */
static void added_texts(texts *t, const char *tokjson, texts *flagged) {
    char *j = slurp(tokjson, NULL);
    cJSON *root = cJSON_Parse(j);
    free(j);
    const cJSON *a;
    static const char *fmt[] = {"Hello%s world", "%s%s", " %s\n", "x %s y", "%s"};
    cJSON_ArrayForEach(a, cJSON_GetObjectItem(root, "added_tokens")) {
        const char *c = cJSON_GetObjectItem(a, "content")->valuestring;
        for (int k = 0; k < 5; k++) {
            char buf[256];
            snprintf(buf, sizeof buf, fmt[k], c, c);
            add_text(t, buf, strlen(buf));
        }
        if (cJSON_IsTrue(cJSON_GetObjectItem(a, "lstrip")) ||
            cJSON_IsTrue(cJSON_GetObjectItem(a, "rstrip")) ||
            cJSON_IsTrue(cJSON_GetObjectItem(a, "single_word")))
            add_text(flagged, c, strlen(c));
    }
    cJSON_Delete(root);
}

/* a 1-layer model whose vocabulary fits the tokenizer, tokenizer files as given */
static void tok_model(const char *d, const char *tokjson, const char *tok_config) {
    qt_tok *t;
    qt_err err = {0};
    QT_CHECK(qt_tok_load(&t, tokjson, &err) == 0, "%s", err.msg);
    int64_t V = qt_tok_vocab_size(t), D = 32, F = 64;
    qt_tok_free(t);
    sh("mkdir -p %s%s", d, "");
    char p[600], cfg[600];
    snprintf(cfg, sizeof cfg,
             "{\"model_type\": \"llama\", \"vocab_size\": %lld, \"hidden_size\": 32, "
             "\"intermediate_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
             "\"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": true}\n",
             (long long)V);
    snprintf(p, sizeof p, "%s/config.json", d);
    write_text(p, cfg);
    const char *names[] = {"model.embed_tokens.weight",
                           "model.norm.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.mlp.up_proj.weight",
                           "model.layers.0.mlp.down_proj.weight"};
    int64_t shapes[11][2] = {{V, D},     {D, 0}, {D, 0}, {D, 0}, {D, D}, {D / 2, D},
                             {D / 2, D}, {D, D}, {F, D}, {F, D}, {D, F}};
    qt_st_entry e[11];
    float *bufs[11];
    uint64_t rs = 9;
    for (int i = 0; i < 11; i++) {
        int nd = shapes[i][1] ? 2 : 1;
        int64_t n = shapes[i][0] * (nd == 2 ? shapes[i][1] : 1);
        bufs[i] = malloc((size_t)n * 4);
        for (int64_t k = 0; k < n; k++) bufs[i][k] = nd == 1 ? 1.0f : (float)(0.05 * gauss(&rs));
        e[i] = (qt_st_entry){.name = names[i], .dtype = QT_ST_F32, .ndim = nd, .data = bufs[i]};
        e[i].shape[0] = shapes[i][0], e[i].shape[1] = shapes[i][1];
    }
    char msg[256];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    QT_CHECK(qt_st_save_file(p, e, 11, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    for (int i = 0; i < 11; i++) free(bufs[i]);
    sh("cp %s %s/tokenizer.json", tokjson, d);
    if (tok_config) {
        snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
        write_text(p, tok_config);
    }
}

static bool contains_any(const char *s, const texts *f) {
    for (int i = 0; i < f->n; i++)
        if (strstr(s, f->s[i])) return true;
    return false;
}

/* Encodes (and decodes) every text with both tokenizers; returns the texts that differ. */
static int compare_tok(const char *what, const qt_tok *ref, const qt_tok *gg, const texts *t,
                       const texts *flagged, bool report, int *n_flagged_diff) {
    int ndiff = 0, shown = 0;
    *n_flagged_diff = 0;
    qt_err err = {0};
    for (int i = 0; i < t->n; i++) {
        bool diff = false;
        for (int sp = 0; sp < 2; sp++) {
            qt_tok_ids a = {0}, b = {0};
            int ra = qt_tok_encode(ref, t->s[i], t->len[i], sp, &a, &err);
            int rb = qt_tok_encode(gg, t->s[i], t->len[i], sp, &b, &err);
            diff |= ra != rb || a.n != b.n || (a.n && memcmp(a.ids, b.ids, (size_t)a.n * 4));
            if (!diff && a.n) {
                char *da, *db;
                size_t la, lb;
                ra = qt_tok_decode(ref, a.ids, a.n, false, &da, &la, &err);
                rb = qt_tok_decode(gg, a.ids, a.n, false, &db, &lb, &err);
                diff |= ra != rb || (!ra && (la != lb || memcmp(da, db, la)));
                if (!ra) free(da);
                if (!rb) free(db);
            }
            qt_tok_ids_free(&a), qt_tok_ids_free(&b);
        }
        if (!diff) continue;
        bool fl = contains_any(t->s[i], flagged);
        ndiff++;
        *n_flagged_diff += fl;
        if ((report || !fl) && shown++ < 5)
            fprintf(stderr, "  %s: differs on \"%.60s\"%s\n", what, t->s[i],
                    fl ? " (a flagged added token)" : "");
    }
    return ndiff;
}

static void check_tokenizers(void) {
    static const struct {
        const char *name, *json, *config;
        bool must_match; /* else: counted and printed */
    } T[] = {
        {"demo", "data/demo/model/tokenizer.json", NULL, true},
        {"gpt2", "tests/fixtures/tok/gpt2.json", NULL, true},
        {"gpt2_prefix", "tests/fixtures/tok/gpt2_prefix.json",
         "{\"eos_token\": \"<|endoftext|>\", \"add_prefix_space\": true}", true},
        {"llama3", "tests/fixtures/tok/llama3.json",
         "{\"bos_token\": \"<|begin_of_text|>\", \"eos_token\": \"<|end_of_text|>\"}", true},
        {"llama2", "tests/fixtures/tok/llama2.json",
         "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\", "
         "\"add_bos_token\": true, \"add_eos_token\": false}",
         true},
        {"mistral", "tests/fixtures/tok/mistral.json",
         "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\", "
         "\"add_bos_token\": true, \"add_eos_token\": false}",
         false},
        {"metaspace", "tests/fixtures/tok/metaspace.json",
         "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\", "
         "\"add_bos_token\": true, \"add_eos_token\": false}",
         false},
    };
    texts base = {0};
    base_texts(&base);
    for (size_t k = 0; k < sizeof T / sizeof *T; k++) {
        char d[300], out[400];
        snprintf(d, sizeof d, "%s/tok_%s", dir, T[k].name);
        snprintf(out, sizeof out, "%s/tok_%s.gguf", dir, T[k].name);
        if (!strcmp(T[k].name, "demo")) { /* the demo model's own export, from (a) */
            snprintf(out, sizeof out, "%s/demo-f16.gguf", dir);
        } else {
            tok_model(d, T[k].json, T[k].config);
            export_ok(d, QT_EXPORT_GGUF_F16, out, false);
        }
        texts all = {0}, flagged = {0};
        for (int i = 0; i < base.n; i++) add_text(&all, base.s[i], base.len[i]);
        added_texts(&all, T[k].json, &flagged);
        qt_tok *ref, *gg;
        qt_err err = {0};
        QT_CHECK(qt_tok_load(&ref, T[k].json, &err) == 0, "%s", err.msg);
        int rc = qt_model_tokenizer(&gg, out, &err); /* as `qtune generate` gets it */
        QT_EXPECT(rc == 0, "%s: tokenizer from %s: %s", T[k].name, out, err.msg);
        if (!rc) {
            int nfl;
            int nd = compare_tok(T[k].name, ref, gg, &all, &flagged, !T[k].must_match, &nfl);
            printf("tokenizer %-11s %d of %d texts encode differently from its tokenizer.json "
                   "(%d with a token flagged lstrip / rstrip / single_word)\n",
                   T[k].name, nd, all.n, nfl);
            if (T[k].must_match)
                QT_EXPECT(nd == nfl, "%s: %d texts without flagged tokens differ", T[k].name,
                          nd - nfl);
            QT_EXPECT(qt_tok_bos_id(ref) == qt_tok_bos_id(gg), "%s: BOS %d vs %d", T[k].name,
                      qt_tok_bos_id(ref), qt_tok_bos_id(gg));
            qt_tok_free(gg);
        }
        qt_tok_free(ref);
        texts_free(&all), texts_free(&flagged);
    }
    texts_free(&base);
}

/* ---- (e): bad files ---------------------------------------------------------------------------
 */

static void expect_open_error(const char *path, const char *says1, const char *says2) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_err err = {0};
    int rc = open_model(&ctx, &m, path, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, path) && strstr(err.msg, says1) &&
                  (!says2 || strstr(err.msg, says2)),
              "%s: rc %d, '%s' (want '%s' %s)", path, rc, err.msg, says1, says2 ? says2 : "");
    if (rc == 0) qt_llama_free(&m);
    printf("refused: %s\n", err.msg);
    qt_ctx_free(&ctx);
}

static void copy_prefix(const char *from, const char *to, size_t n) {
    size_t len;
    char *b = slurp(from, &len);
    QT_CHECK(b && n <= len, "%s", from);
    FILE *f = fopen(to, "wb");
    QT_CHECK(f && fwrite(b, 1, n, f) == n, "%s", to);
    fclose(f);
    free(b);
}

/* the file with the u32 at the byte after "<name>" + n_dims + dims replaced: the tensor's type */
static void patch_type(const char *from, const char *to, const char *name, uint32_t type) {
    size_t len;
    char *b = slurp(from, &len);
    QT_CHECK(b, "%s", from);
    size_t nl = strlen(name);
    char *p = NULL;
    for (size_t i = 8; i + nl < len && !p; i++)
        if (!memcmp(b + i, name, nl) && !memcmp(b + i - 8, &(uint64_t){nl}, 8)) p = b + i + nl;
    QT_CHECK(p, "tensor %s not found in %s", name, from);
    uint32_t nd;
    memcpy(&nd, p, 4);
    memcpy(p + 4 + 8 * nd, &type, 4);
    FILE *f = fopen(to, "wb");
    QT_CHECK(f && fwrite(b, 1, len, f) == len, "%s", to);
    fclose(f);
    free(b);
}

static void check_bad_files(const char *good) {
    char p[400];
    struct stat st;
    QT_CHECK(stat(good, &st) == 0, "%s", good);
    snprintf(p, sizeof p, "%s/trunc_header.gguf", dir);
    copy_prefix(good, p, 100);
    expect_open_error(p, "truncated", NULL);
    snprintf(p, sizeof p, "%s/trunc_data.gguf", dir);
    copy_prefix(good, p, (size_t)st.st_size / 2);
    expect_open_error(p, "outside the file", "truncated");
    snprintf(p, sizeof p, "%s/q5_0.gguf", dir);
    patch_type(good, p, "blk.1.ffn_up.weight", 6); /* Q5_0: no codec */
    expect_open_error(p, "blk.1.ffn_up.weight", "ggml type 6");
    snprintf(p, sizeof p, "%s/nomagic.gguf", dir);
    write_text(p, "this is not a model\n");
    expect_open_error(p, "no 'GGUF' magic", NULL);
    { /* written by hand: an unknown architecture; a llama without its blocks */
        for (int k = 0; k < 2; k++) {
            qt_gguf_writer *w = qt_gguf_writer_new(32);
            const char *arch = k ? "llama" : "falcon";
            char key[64];
            qt_gguf_set_str(w, "general.architecture", arch);
            snprintf(key, sizeof key, "%s.block_count", arch);
            qt_gguf_set_u32(w, key, 1);
            snprintf(key, sizeof key, "%s.embedding_length", arch);
            qt_gguf_set_u32(w, key, 32);
            snprintf(key, sizeof key, "%s.feed_forward_length", arch);
            qt_gguf_set_u32(w, key, 64);
            snprintf(key, sizeof key, "%s.attention.head_count", arch);
            qt_gguf_set_u32(w, key, 2);
            snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
            qt_gguf_set_f32(w, key, 1e-5f);
            float v[32 * 8] = {0};
            qt_err err = {0};
            QT_CHECK(qt_gguf_add_tensor(w, "token_embd.weight", QT_GGML_F32, 2, (uint64_t[]){32, 8},
                                        v, sizeof v, &err) == 0,
                     "%s", err.msg);
            QT_CHECK(qt_gguf_add_tensor(w, "output_norm.weight", QT_GGML_F32, 1, (uint64_t[]){32},
                                        v, 32 * 4, &err) == 0,
                     "%s", err.msg);
            snprintf(p, sizeof p, "%s/hand_%s.gguf", dir, arch);
            QT_CHECK(qt_gguf_write(w, p, &err) == 0, "%s", err.msg);
            qt_gguf_writer_free(w);
            if (k)
                expect_open_error(p, "tensor 'blk.0.attn_norm.weight' is missing", NULL);
            else
                expect_open_error(p, "general.architecture 'falcon'", "not supported");
        }
        qt_tok *t;
        qt_err err = {0};
        int rc = qt_model_tokenizer(&t, p, &err);
        QT_EXPECT(rc != 0 && strstr(err.msg, p) && strstr(err.msg, "tokenizer.ggml.model"),
                  "no tokenizer: '%s'", err.msg);
        if (!rc) qt_tok_free(t);
    }
}

/* ---- (f): the CLI -------------------------------------------------------------------------- */

static int run(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    QT_CHECK(p, "popen failed");
    size_t got = fread(out, 1, n - 1, p);
    out[got] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void check_cli(const char *argv0, const char *f16, const char *q4, const char *data) {
    char bin[1024], cmd[4096], out[4096], out2[4096], errfile[400];
    const char *slash = strrchr(argv0, '/');
    snprintf(bin, sizeof bin, "%.*s/qtune", slash ? (int)(slash - argv0) : 1, slash ? argv0 : ".");
    if (access(bin, X_OK) != 0) {
        QT_EXPECT(0, "the qtune binary is not at %s", bin);
        return;
    }
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", dir);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    double want = eval_path(&ctx, q4, data);
    qt_ctx_free(&ctx);
    snprintf(cmd, sizeof cmd, "'%s' eval '%s' --data '%s' --json --device cpu 2>'%s'", bin, q4,
             data, errfile);
    int rc = run(cmd, out, sizeof out);
    cJSON *j = cJSON_Parse(out);
    double got = j ? cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss")) : NAN;
    cJSON_Delete(j);
    QT_EXPECT(rc == 0 && fabs(got - want) <= 1e-8 * want,
              "qtune eval %s: exit %d, '%s' (want %.9g)", q4, rc, out, want);
    printf("qtune eval %s --json: %s", q4, out);

    const char *gen = "'%s' generate '%s' --prompt 'In the beginning God' --max-new-tokens 12 "
                      "--device cpu 2>'%s'";
    snprintf(cmd, sizeof cmd, gen, bin, "data/demo/model", errfile);
    rc = run(cmd, out, sizeof out);
    QT_EXPECT(rc == 0 && strlen(out) > 1, "qtune generate data/demo/model: exit %d", rc);
    snprintf(cmd, sizeof cmd, gen, bin, f16, errfile);
    int rc2 = run(cmd, out2, sizeof out2);
    QT_EXPECT(rc2 == 0 && !strcmp(out, out2),
              "qtune generate from the F16 file writes what the directory writes: '%s' vs '%s'",
              out2, out);
    printf("qtune generate %s: %s", f16, out2);

    /* bad files: exit 1, one line on stderr naming the file and what is wrong */
    static const struct {
        const char *cmd, *arg, *file, *says;
    } bad[] = {{"eval", "--data", "trunc_data.gguf", "outside the file"},
               {"generate", "--prompt", "trunc_data.gguf", "outside the file"},
               {"eval", "--data", "hand_falcon.gguf", "general.architecture 'falcon'"},
               {"eval", "--data", "q5_0.gguf", "'blk.1.ffn_up.weight' has ggml type 6"},
               {"generate", "--prompt", "hand_llama.gguf", "'blk.0.attn_norm.weight' is missing"},
               {"generate", "--prompt", "k256-f16.gguf", "has no vocabulary"}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        char file[500];
        snprintf(file, sizeof file, "%s/%s", dir, bad[k].file);
        snprintf(cmd, sizeof cmd, "'%s' %s '%s' %s '%s' --device cpu 2>'%s'", bin, bad[k].cmd, file,
                 bad[k].arg, bad[k].arg[2] == 'p' ? "hello" : data, errfile);
        rc = run(cmd, out, sizeof out);
        char *msg = slurp(errfile, NULL);
        char *nl = msg ? strchr(msg, '\n') : NULL;
        QT_EXPECT(rc == 1 && msg && strstr(msg, file) && strstr(msg, bad[k].says) && nl && !nl[1] &&
                      !out[0],
                  "qtune %s %s: exit %d, '%s' (want '%s')", bad[k].cmd, file, rc, msg ? msg : "",
                  bad[k].says);
        free(msg);
    }
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(dir, sizeof dir, "/tmp/qt_gguf_model.%ld", (long)getpid());
    sh("mkdir -p %s%s", dir, "");
    char data[400], f16[400], q4[400];

    /* (a) the demo model */
    snprintf(data, sizeof data, "%s/kjv_eval.jsonl", dir);
    kjv_data(data, 24);
    static const qt_export_format all[4] = {QT_EXPORT_GGUF_F16, QT_EXPORT_GGUF_Q8_0,
                                            QT_EXPORT_GGUF_Q4_0, QT_EXPORT_GGUF_Q4_K_M};
    static const double tol[4] = {TOL_F16, TOL_Q8, TOL_Q4, TOL_Q4};
    roundtrip("demo", "data/demo/model", data, false, all, 4, tol);

    /* (b) llama3 rope, untied; qwen2 */
    char rdata[400];
    snprintf(rdata, sizeof rdata, "%s/rand_eval.jsonl", dir);
    random_data(rdata, 256, 4, 48, 3);
    static const double tol32[2] = {TOL_F16_F32, TOL_Q8};
    roundtrip("llama", "tests/fixtures/hf/llama", rdata, true, all, 2, tol32);
    roundtrip("qwen2", "tests/fixtures/hf/qwen2", rdata, true, all, 2, tol32);

    /* rows of 256: real Q4_K and Q6_K tensors (the demo's rows fall back to Q8_0) */
    char kmodel[400], kdata[400];
    snprintf(kmodel, sizeof kmodel, "%s/k_model", dir);
    snprintf(kdata, sizeof kdata, "%s/k_eval.jsonl", dir);
    static const spec SK = {512, 256, 512, 2, 4, 2, 64, false};
    write_model(kmodel, &SK, 31);
    random_data(kdata, 512, 4, 48, 7);
    static const double tolk[4] = {TOL_F16_F32, TOL_Q8, TOL_Q4, TOL_Q4};
    roundtrip("k256", kmodel, kdata, true, all, 4, tolk);

    snprintf(q4, sizeof q4, "%s/k256-q8_0.gguf", dir);
    check_gguf_base(q4, kdata);

    /* (c) QAT */
    check_qat();

    /* (d) tokenizers */
    check_tokenizers();

    /* (e) bad files */
    snprintf(q4, sizeof q4, "%s/demo-q4_0.gguf", dir);
    check_bad_files(q4);

    /* (e2) exports of a GGUF model: refused before anything is written where the files it
     * would need are missing; re-quantizing to GGUF without the tokenizer works */
    {
        char out[460];
        qt_err err = {0};
        snprintf(out, sizeof out, "%s/from-gguf-hf", dir);
        int rc = export_model(q4, QT_EXPORT_HF, out, false, &err);
        QT_EXPECT(rc != 0 && strstr(err.msg, "GGUF formats only") && access(out, F_OK) != 0,
                  "hf export of a GGUF refused, nothing written (rc %d: %s)", rc, err.msg);
        snprintf(out, sizeof out, "%s/from-gguf.gguf", dir);
        rc = export_model(q4, QT_EXPORT_GGUF_Q8_0, out, false, &err);
        QT_EXPECT(rc != 0 && strstr(err.msg, "--no-tokenizer") && access(out, F_OK) != 0,
                  "GGUF re-export without --no-tokenizer refused (rc %d: %s)", rc, err.msg);
        export_ok(q4, QT_EXPORT_GGUF_Q8_0, out, true);
        QT_EXPECT(access(out, F_OK) == 0, "GGUF re-export with --no-tokenizer written");
    }

    /* (f) the CLI */
    snprintf(f16, sizeof f16, "%s/demo-f16.gguf", dir);
    check_cli(argv[0], f16, q4, data);

    int rc = qt_test_finish("gguf_model");
    if (!rc) sh("rm -rf %s%s", dir, "");
    return rc;
}
