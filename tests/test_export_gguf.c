/* test_export_gguf.c - the GGUF exports (gguf-f16, gguf-q8_0, gguf-q4_0, gguf-q4_k_m), read back
 * with qtune's GGUF reader and checked against rules written down here independently:
 *   metadata: the llama.cpp keys with their value types and values;
 *   tokenizer: against the tokenizer.json it came from (tokens by id, [PADi] for ids it leaves
 *     undefined, types, merges, scores): Llama 3 (byte-level, [a, b] merges, "llama-bpe"),
 *     Llama 2 (sentencepiece-style byte fallback: scores, byte / unknown / control types), GPT-2
 *     ("gpt-2") and a Qwen2 one ("qwen2", "a b" merges, named chat templates); special ids and
 *     add_bos / add_eos / add_space_prefix; a model directory without tokenizer.json is refused
 *     unless gguf_no_tokenizer;
 *   tensors: names, ggml dims (Hugging Face's reversed), types per llama.cpp's rules for each file
 *     type (the Q4_K_M mix over 8 layers, output.weight, tied embeddings, the fallbacks for rows
 *     that are not whole 256-blocks), 1-D tensors F32 and exact, llama3's rope_freqs;
 *   the Q/K row permutation: the F16 attn_q / attn_k are the permuted LoRA-merged weights
 *     rounded to F16, bit for bit; quantizing commutes with it (Q4_0 blocks are within rows);
 *     qwen2 is not permuted (weights nor biases);
 *   QAT exactness: after QAT + LoRA training against Q4_0, Q8_0 and Q4_K, every exported linear
 *     weight dequantizes to qt_linear_merged's fake-quant weight bit for bit (after undoing the
 *     permutation), in its format's file and in a Q4_K_M file (the trained format is kept);
 *     re-quantizing the fake-quant weight with the same codec gives it back (Q4_0, Q8_0).
 * The models are written here (random weights, f32 safetensors; tests/fixtures/hf's 256-token
 * vocabularies are smaller than the real tokenizers of tests/fixtures/tok, made by the
 * tokenizers library):
 *   A: llama, the shape of tests/fixtures/hf/llama (hidden 64, 2 layers, 4 / 2 heads of 16, ffn
 *      96, llama3 rope), untied, vocabulary 1120 with tests/fixtures/tok/llama3.json (1112 ids);
 *   B: llama, hidden 256, 8 layers, ffn 256 (rows of 256: real Q4_K / Q6_K), vocabulary 1104
 *      with tests/fixtures/tok/llama2.json (sentencepiece-style, 1101 ids);
 *   C: qwen2, hidden 64, tied, q/k/v biases, a byte-level tokenizer written here (Qwen2's
 *      regex, "a b" merges, named chat templates);
 *   D: A's shape without tokenizer.json, then with tests/fixtures/tok/gpt2.json.
 * With QT_GGUF_DUMP=DIR the files stay in DIR with .npy references of the merged weights, for
 * tools/check_gguf.py (see docs/EXPORT.md). */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "qt_test.h"
#include "quant/gguf_blocks.h"
#include "quant/half.h"
#include "quant/safetensors.h"
#include "train/checkpoint.h"
#include "train/export.h"
#include "train/gguf.h"
#include "train/trainer.h"

static char dir[256];
static bool dump;

/* ---- model directories ------------------------------------------------------------------- */

typedef struct {
    const char *type; /* llama / qwen2 */
    int V, D, F, L, H, KV, HD;
    bool tied, bias, llama3;
    double theta;
    const char *ids; /* config.json's bos / eos ids */
} spec;

static const spec SA = {"llama",
                        1120,
                        64,
                        96,
                        2,
                        4,
                        2,
                        16,
                        false,
                        false,
                        true,
                        10000,
                        "\"bos_token_id\": 1100, \"eos_token_id\": [1101, 1107]"};
static const spec SB = {"llama",
                        1104,
                        256,
                        256,
                        8,
                        4,
                        2,
                        64,
                        false,
                        false,
                        false,
                        500000,
                        "\"bos_token_id\": 1, \"eos_token_id\": 2"};
static const spec SC = {"qwen2",
                        272,
                        64,
                        96,
                        2,
                        4,
                        2,
                        16,
                        true,
                        true,
                        false,
                        1000000,
                        "\"bos_token_id\": 262, \"eos_token_id\": [263, 264]"};

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

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void write_json(const char *path, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    write_text(path, s);
    free(s);
    cJSON_Delete(j);
}

static void write_model(const char *d, const spec *s, uint64_t seed) {
    char path[512], cfg[2048];
    snprintf(path, sizeof path, "mkdir -p %s", d);
    QT_CHECK(system(path) == 0, "mkdir %s", d);
    snprintf(cfg, sizeof cfg,
             "{\"model_type\": \"%s\", \"vocab_size\": %d, \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
             "\"num_key_value_heads\": %d, \"head_dim\": %d, \"max_position_embeddings\": 128, "
             "\"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": %s, %s, %s}\n",
             s->type, s->V, s->D, s->F, s->L, s->H, s->KV, s->HD, s->tied ? "true" : "false",
             s->ids,
             s->llama3 ? "\"rope_theta\": 10000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", "
                         "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                         "\"original_max_position_embeddings\": 16}"
             : s->theta == 500000 ? "\"rope_theta\": 500000.0"
                                  : "\"rope_theta\": 1000000.0");
    snprintf(path, sizeof path, "%s/config.json", d);
    write_text(path, cfg);

    int nmax = 3 + 12 * s->L, n = 0;
    qt_st_entry *e = calloc((size_t)nmax, sizeof *e);
    float **bufs = calloc((size_t)nmax, sizeof *bufs);
    char(*names)[96] = calloc((size_t)nmax, sizeof *names);
    uint64_t rng = seed;
    const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                          "mlp.down_proj"};
    const int64_t lout[7] = {s->H * s->HD, s->KV * s->HD, s->KV * s->HD, s->D, s->F, s->F, s->D};
    const int64_t lin_in[7] = {s->D, s->D, s->D, s->H * s->HD, s->D, s->D, s->F};
#define ADD(nm, r, c, std, mean)                                                                   \
    do {                                                                                           \
        snprintf(names[n], 96, "%s", nm);                                                          \
        int64_t cnt_ = (int64_t)(r) * ((c) ? (c) : 1);                                             \
        bufs[n] = malloc((size_t)cnt_ * 4);                                                        \
        for (int64_t k_ = 0; k_ < cnt_; k_++) bufs[n][k_] = (float)((mean) + (std)*gauss(&rng));   \
        e[n] = (qt_st_entry){                                                                      \
            .name = names[n], .dtype = QT_ST_F32, .ndim = (c) ? 2 : 1, .data = bufs[n]};           \
        e[n].shape[0] = (r), e[n].shape[1] = (c);                                                  \
        n++;                                                                                       \
    } while (0)
    ADD("model.embed_tokens.weight", s->V, s->D, 1.0, 0.0);
    if (!s->tied) ADD("lm_head.weight", s->V, s->D, 1.0 / sqrt(s->D), 0.0);
    ADD("model.norm.weight", s->D, 0, 0.1, 1.0);
    for (int l = 0; l < s->L; l++) {
        char nm[96];
        for (int j = 0; j < 7; j++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, lin[j]);
            ADD(nm, lout[j], lin_in[j], 1.0 / sqrt((double)lin_in[j]), 0.0);
            if (s->bias && j < 3) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.bias", l, lin[j]);
                ADD(nm, lout[j], 0, 0.1, 0.0);
            }
        }
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        ADD(nm, s->D, 0, 0.1, 1.0);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(nm, s->D, 0, 0.1, 1.0);
    }
#undef ADD
    char msg[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    QT_CHECK(qt_st_save_file(path, e, n, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs), free(e), free(names);
}

/* GPT-2's bytes_to_unicode: the byte-level symbol of byte b, UTF-8 encoded */
static void byte_symbol(int b, char *out) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 63)), out[2] = 0;
    }
}

static const char *RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *RE_QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                              "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* the byte-level merges, their results (ids 256..261) */
static const char *MERGE_A[6] = {"\xc4\xa0", "h", "\xc4\xa0t", "i", "\xc4\xa0", "e"};
static const char *MERGE_B[6] = {"t", "e", "he", "n", "a", "r"};
static const char *CHAT = "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}";

static cJSON *added(int id, const char *content, bool special) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", 0);
    cJSON_AddBoolToObject(a, "rstrip", 0);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddBoolToObject(a, "special", special);
    return a;
}

static cJSON *split_pre(const char *re) {
    cJSON *pre = cJSON_CreateObject(), *seq = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *sp = cJSON_CreateObject(), *pat = cJSON_AddObjectToObject(sp, "pattern");
    cJSON_AddStringToObject(sp, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", re);
    cJSON_AddStringToObject(sp, "behavior", "Isolated");
    cJSON_AddBoolToObject(sp, "invert", 0);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "use_regex", 0);
    cJSON_AddItemToArray(seq, sp), cJSON_AddItemToArray(seq, bl);
    return pre;
}

/* byte-level BPE: 256 byte symbols, 6 merges (ids 256..261), added tokens 262..265; ids 266..
 * are left undefined. qwen: Qwen2's regex, "a b" merges, named chat templates (else Llama 3's
 * regex and [a, b] merges). */
static void write_bytelevel_tokenizer(const char *d, bool qwen) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON *add = cJSON_AddArrayToObject(root, "added_tokens");
    const char *specials[3] = {qwen ? "<|endoftext|>" : "<|begin_of_text|>",
                               qwen ? "<|im_start|>" : "<|end_of_text|>",
                               qwen ? "<|im_end|>" : "<|eot_id|>"};
    for (int i = 0; i < 3; i++) cJSON_AddItemToArray(add, added(262 + i, specials[i], true));
    cJSON_AddItemToArray(add, added(265, "<extra>", false));
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", split_pre(qwen ? RE_QWEN2 : RE_LLAMA3));
    if (!qwen) { /* Llama 3's: <|begin_of_text|> $A */
        cJSON *pp = cJSON_AddObjectToObject(root, "post_processor");
        cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
        cJSON *single = cJSON_AddArrayToObject(pp, "single");
        cJSON *a = cJSON_CreateObject(), *st = cJSON_AddObjectToObject(a, "SpecialToken");
        cJSON_AddStringToObject(st, "id", "<|begin_of_text|>");
        cJSON_AddNumberToObject(st, "type_id", 0);
        cJSON *b = cJSON_CreateObject(), *sq = cJSON_AddObjectToObject(b, "Sequence");
        cJSON_AddStringToObject(sq, "id", "A");
        cJSON_AddNumberToObject(sq, "type_id", 0);
        cJSON_AddItemToArray(single, a), cJSON_AddItemToArray(single, b);
    } else {
        cJSON_AddNullToObject(root, "post_processor");
    }
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", !qwen);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; b < 256; b++) {
        char sym[4];
        byte_symbol(b, sym);
        cJSON_AddNumberToObject(vocab, sym, b);
    }
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    for (int i = 0; i < 6; i++) {
        char tok[16];
        snprintf(tok, sizeof tok, "%s%s", MERGE_A[i], MERGE_B[i]);
        cJSON_AddNumberToObject(vocab, tok, 256 + i);
        if (qwen) {
            char m[16];
            snprintf(m, sizeof m, "%s %s", MERGE_A[i], MERGE_B[i]);
            cJSON_AddItemToArray(merges, cJSON_CreateString(m));
        } else {
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateString(MERGE_A[i]));
            cJSON_AddItemToArray(pair, cJSON_CreateString(MERGE_B[i]));
            cJSON_AddItemToArray(merges, pair);
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", d);
    write_json(path, root);

    cJSON *tc = cJSON_CreateObject();
    if (!qwen) {
        cJSON_AddStringToObject(tc, "bos_token", "<|begin_of_text|>");
        cJSON_AddStringToObject(tc, "eos_token", "<|eot_id|>");
        cJSON_AddStringToObject(tc, "chat_template", CHAT);
    } else {
        cJSON_AddNullToObject(tc, "bos_token");
        cJSON_AddStringToObject(tc, "eos_token", "<|im_end|>");
        cJSON_AddStringToObject(tc, "pad_token", "<|endoftext|>");
        cJSON *ct = cJSON_AddArrayToObject(tc, "chat_template");
        cJSON *t1 = cJSON_CreateObject(), *t2 = cJSON_CreateObject();
        cJSON_AddStringToObject(t1, "name", "default");
        cJSON_AddStringToObject(t1, "template", CHAT);
        cJSON_AddStringToObject(t2, "name", "tool-use");
        cJSON_AddStringToObject(t2, "template", "{{ tools }}");
        cJSON_AddItemToArray(ct, t1), cJSON_AddItemToArray(ct, t2);
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", d);
    write_json(path, tc);
}

/* a tests/fixtures/tok tokenizer as dir/tokenizer.json, and a tokenizer_config.json */
static void write_fixture_tokenizer(const char *d, const char *fixture, bool llama3) {
    char cmd[700], path[512];
    snprintf(cmd, sizeof cmd, "cp tests/fixtures/tok/%s %s/tokenizer.json", fixture, d);
    QT_CHECK(system(cmd) == 0, "%s", cmd);
    cJSON *tc = cJSON_CreateObject();
    if (llama3) {
        cJSON_AddStringToObject(tc, "bos_token", "<|begin_of_text|>");
        cJSON_AddStringToObject(tc, "eos_token", "<|eot_id|>");
        cJSON_AddStringToObject(tc, "chat_template", CHAT);
    } else {
        cJSON_AddStringToObject(tc, "bos_token", "<s>");
        cJSON_AddStringToObject(tc, "eos_token", "</s>");
        cJSON_AddStringToObject(tc, "unk_token", "<unk>");
        cJSON_AddBoolToObject(tc, "add_bos_token", 1);
        cJSON_AddBoolToObject(tc, "add_eos_token", 0);
        cJSON_AddBoolToObject(tc, "add_prefix_space", 1);
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", d);
    write_json(path, tc);
}

/* ---- training, exporting, reading ----------------------------------------------------------- */

static void train_ckpt(const char *model, qt_train_mode mode, const qt_fq_format *wq,
                       const char *path) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 3, NULL);
    qt_model_opts o = qt_model_opts_default();
    o.mode = mode, o.lora_r = 4, o.lora_alpha = 8, o.seed = 2;
    if (wq) o.qat_lora = true, o.qat_weight = wq;
    qt_llama m;
    qt_err err = {0};
    QT_CHECK(qt_llama_load(&ctx, &m, model, &o, &err) == 0, "%s", err.msg);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0, &err);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 2e-2};
    for (int s = 0; s < 3; s++) {
        int32_t ids[24];
        for (int i = 0; i < 24; i++) ids[i] = 3 + (s * 13 + i * 7) % 250;
        qt_micro_batch mb = {.B = 2, .T = 12, .ids = ids, .labels = ids};
        qt_step_stats st;
        qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, &st, &err);
    }
    qt_ckpt_info info = {.step = 3, .sched = sch, .opts = o};
    snprintf(info.base_model_path, sizeof info.base_model_path, "%s", model);
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", m.identity);
    QT_CHECK(qt_ckpt_save(path, &ctx, &info, &opt, &err) == 0, "%s", err.msg);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

/* qt_model_open, except that a QAT checkpoint's model is rebuilt here: qt_model_open points the
 * model's l->wq at the qt_ckpt_info local to its own frame (train/checkpoint.c), which is gone
 * when it returns. Until that is fixed, the formats live in this static storage. */
static int open_model(qt_ctx *ctx, qt_llama *m, const char *path, char *base, size_t cap,
                      qt_err *err) {
    static qt_fq_format wq, aq;
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) {
        qt_ckpt_info info;
        int rc = qt_ckpt_read_info(path, &info, err);
        if (rc) return rc;
        if (info.opts.qat_weight) {
            wq = info.qat_weight, aq = info.qat_act;
            qt_model_opts o = info.opts;
            o.qat_weight = &wq, o.qat_act = o.qat_act ? &aq : NULL;
            o.checkpoint = false, o.lora_dropout = 0;
            snprintf(base, cap, "%s", info.base_model_path);
            rc = qt_llama_load(ctx, m, info.base_model_path, &o, err);
            qt_ckpt_info_free(&info);
            if (!rc) {
                qt_ckpt_info i2;
                memset(&i2, 0, sizeof i2);
                rc = qt_ckpt_load_tensors(path, ctx, &i2, m->train, m->n_train, err);
                qt_ckpt_info_free(&i2);
                if (rc) qt_llama_free(m);
            }
            return rc;
        }
        qt_ckpt_info_free(&info);
    }
    return qt_model_open(ctx, m, path, base, cap, err);
}

static int export_to(const char *model, qt_export_format f, const char *out, bool no_tok, char *msg,
                     size_t cap) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[1100];
    qt_err err = {0};
    QT_CHECK(open_model(&ctx, &m, model, base, sizeof base, &err) == 0, "%s", err.msg);
    qt_export_opts o = {.format = f,
                        .out = out,
                        .base_dir = base,
                        .gguf_no_tokenizer = no_tok,
                        .report = dump ? stderr : NULL};
    int rc = qt_export(&ctx, &m, &o, &err);
    if (msg) snprintf(msg, cap, "%s", err.msg);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    return rc;
}

static void export_ok(const char *model, qt_export_format f, const char *out) {
    char msg[1100];
    int rc = export_to(model, f, out, false, msg, sizeof msg);
    QT_CHECK(rc == 0, "export %s: %s", out, msg);
}

static const qt_gguf_kv *kv_typed(const qt_gguf_file *g, const char *key, qt_gguf_vtype t) {
    const qt_gguf_kv *kv = qt_gguf_kv_find(g, key);
    QT_EXPECT(kv != NULL, "%s: key %s", g->path, key);
    if (kv)
        QT_EXPECT(kv->type == t, "%s: %s is %s, want %s", g->path, key,
                  qt_gguf_vtype_name(kv->type), qt_gguf_vtype_name(t));
    return kv && kv->type == t ? kv : NULL;
}

static void expect_u32(const qt_gguf_file *g, const char *key, uint64_t v) {
    const qt_gguf_kv *kv = kv_typed(g, key, QT_GV_U32);
    if (kv)
        QT_EXPECT(kv->v.u == v, "%s = %llu, want %llu", key, (unsigned long long)kv->v.u,
                  (unsigned long long)v);
}

static void expect_f32(const qt_gguf_file *g, const char *key, float v) {
    const qt_gguf_kv *kv = kv_typed(g, key, QT_GV_F32);
    if (kv) QT_EXPECT((float)kv->v.f == v, "%s = %g, want %g", key, kv->v.f, (double)v);
}

static void expect_str(const qt_gguf_file *g, const char *key, const char *v) {
    const qt_gguf_kv *kv = kv_typed(g, key, QT_GV_STRING);
    if (kv) QT_EXPECT(!strcmp(kv->str, v), "%s = \"%s\", want \"%s\"", key, kv->str, v);
}

/* the i-th string of a string array (static buffer) */
static const char *arr_str(const qt_gguf_kv *kv, uint64_t i) {
    static char buf[512];
    const uint8_t *p = kv->arr;
    for (uint64_t k = 0;; k++) {
        uint64_t n;
        memcpy(&n, p, 8);
        if (k == i) {
            size_t m = n < sizeof buf - 1 ? (size_t)n : sizeof buf - 1;
            memcpy(buf, p + 8, m);
            buf[m] = 0;
            return buf;
        }
        p += 8 + n;
    }
}

/* a tensor's values as f32, row-major [dims[1]][dims[0]] */
static float *values(const qt_gguf_tensor *t) {
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->ndim; d++) n *= t->dims[d];
    float *v = malloc((size_t)n * 4);
    QT_CHECK(v, "oom");
    if (t->type == QT_GGML_F32) {
        memcpy(v, t->data, (size_t)n * 4);
    } else if (t->type == QT_GGML_F16) {
        const uint16_t *h = (const uint16_t *)t->data;
        for (uint64_t i = 0; i < n; i++) v[i] = qt_f16_to_f32(h[i]);
    } else {
        QT_CHECK(qt_gguf_dequantize_row((qt_gguf_type)t->type, t->data, v, (int64_t)n) == 0,
                 "dequantize %s", t->name);
    }
    return v;
}

static const qt_gguf_tensor *tensor(const qt_gguf_file *g, const char *name, uint32_t type,
                                    uint64_t d0, uint64_t d1) {
    const qt_gguf_tensor *t = qt_gguf_tensor_find(g, name);
    QT_EXPECT(t != NULL, "%s: tensor %s", g->path, name);
    if (!t) return NULL;
    QT_EXPECT(t->type == type, "%s: %s is %s, want %s", g->path, name, qt_ggml_type_name(t->type),
              qt_ggml_type_name(type));
    QT_EXPECT(t->ndim == (d1 ? 2u : 1u) && t->dims[0] == d0 && (!d1 || t->dims[1] == d1),
              "%s: %s dims [%llu, %llu], want [%llu, %llu]", g->path, name,
              (unsigned long long)t->dims[0], (unsigned long long)t->dims[1],
              (unsigned long long)d0, (unsigned long long)d1);
    return t;
}

/* the converter's permutation, written as the reshape (n_head, 2, hd/2, cols) -> swap 1, 2 */
static void permute(const float *src, float *dst, int64_t rows, int64_t cols, int64_t nhead) {
    int64_t hd = rows / nhead;
    for (int64_t h = 0; h < nhead; h++)
        for (int64_t a = 0; a < 2; a++)
            for (int64_t b = 0; b < hd / 2; b++)
                memcpy(dst + (h * hd + b * 2 + a) * cols, src + (h * hd + a * (hd / 2) + b) * cols,
                       (size_t)cols * 4);
}

/* llama-quant.cpp's rule, written again: F16 1, Q4_0 2, Q8_0 7, Q4_K_M 15 */
static uint32_t want_type(int ftype, const char *kind, int layer, int nl, int64_t ncols,
                          bool tied) {
    if (ftype == 1) return QT_GGML_F16;
    uint32_t def = ftype == 7 ? QT_GGML_Q8_0 : ftype == 2 ? QT_GGML_Q4_0 : QT_GGML_Q4_K;
    int defblk = def == QT_GGML_Q4_K ? 256 : 32;
    uint32_t t = def;
    if (!strcmp(kind, "output") || (tied && !strcmp(kind, "token_embd"))) {
        t = ncols % defblk ? QT_GGML_Q8_0 : def != QT_GGML_Q8_0 ? QT_GGML_Q6_K : QT_GGML_Q8_0;
    } else if (ftype == 15 && (!strcmp(kind, "attn_v") || !strcmp(kind, "ffn_down"))) {
        if (layer < nl / 8 || layer >= 7 * nl / 8 || (layer - nl / 8) % 3 == 2) t = QT_GGML_Q6_K;
    }
    if ((t == QT_GGML_Q4_K || t == QT_GGML_Q6_K) && ncols % 256) t = QT_GGML_Q8_0; /* Q5_0 */
    return t;
}

static const char *gname[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                               "ffn_gate", "ffn_up", "ffn_down"};

static void write_npy(const char *path, const float *v, int64_t rows, int64_t cols) {
    char hdr[128];
    int n = cols ? snprintf(hdr, sizeof hdr,
                            "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                            (long long)rows, (long long)cols)
                 : snprintf(hdr, sizeof hdr,
                            "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld,), }",
                            (long long)rows);
    int total = (10 + n + 1 + 63) / 64 * 64;
    FILE *f = fopen(path, "wb");
    QT_CHECK(f, "cannot write %s", path);
    uint16_t hl = (uint16_t)(total - 10);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&hl, 2, 1, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 10 + n; i < total - 1; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(v, 4, (size_t)(rows * (cols ? cols : 1)), f);
    fclose(f);
}

/* .npy references (Hugging Face layout) of a model's tensors, for tools/check_gguf.py:
 * linears_only for QAT files (compared bit for bit) */
static void dump_refs(const char *model, const char *npydir, bool linears_only) {
    if (!dump) return;
    char cmd[600], path[700];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", npydir);
    QT_CHECK(system(cmd) == 0, "mkdir");
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[1100];
    qt_err err = {0};
    QT_CHECK(open_model(&ctx, &m, model, base, sizeof base, &err) == 0, "%s", err.msg);
    const qt_model_config *c = &m.cfg;
    for (int64_t i = 0; i < c->layers; i++) {
        qt_linear *ls[7] = {&m.layer[i].q,    &m.layer[i].k,  &m.layer[i].v,   &m.layer[i].o,
                            &m.layer[i].gate, &m.layer[i].up, &m.layer[i].down};
        for (int j = 0; j < 7; j++) {
            float *w = malloc((size_t)(ls[j]->out * ls[j]->in) * 4);
            qt_linear_merged(&ctx, ls[j], w);
            snprintf(path, sizeof path, "%s/blk.%lld.%s.weight.npy", npydir, (long long)i,
                     gname[j]);
            write_npy(path, w, ls[j]->out, ls[j]->in);
            free(w);
        }
    }
    if (!linears_only) {
        const qt_tensor *one[3] = {m.embed, m.norm, c->tie_embeddings ? NULL : m.lm_head};
        const char *nm[3] = {"token_embd.weight", "output_norm.weight", "output.weight"};
        for (int k = 0; k < 3; k++) {
            if (!one[k]) continue;
            float *v = malloc(qt_nbytes(one[k]));
            qt_tensor_download(&ctx, one[k], v);
            snprintf(path, sizeof path, "%s/%s.npy", npydir, nm[k]);
            write_npy(path, v, one[k]->shape[0], one[k]->ndim == 2 ? one[k]->shape[1] : 0);
            free(v);
        }
    }
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

/* ---- the checks -------------------------------------------------------------------------- */

static void check_metadata(const qt_gguf_file *g, const spec *s, uint32_t ftype) {
    const char *arch = s->type;
    char key[128];
#define K(k) (snprintf(key, sizeof key, "%s." k, arch), key)
    expect_str(g, "general.architecture", arch);
    expect_u32(g, "general.file_type", ftype);
    expect_u32(g, "general.quantization_version", 2);
    kv_typed(g, "general.name", QT_GV_STRING);
    expect_u32(g, K("block_count"), (uint64_t)s->L);
    expect_u32(g, K("context_length"), 128);
    expect_u32(g, K("embedding_length"), (uint64_t)s->D);
    expect_u32(g, K("feed_forward_length"), (uint64_t)s->F);
    expect_u32(g, K("attention.head_count"), (uint64_t)s->H);
    expect_u32(g, K("attention.head_count_kv"), (uint64_t)s->KV);
    expect_f32(g, K("rope.freq_base"), (float)s->theta);
    expect_f32(g, K("attention.layer_norm_rms_epsilon"), 1e-5f);
    expect_u32(g, K("rope.dimension_count"), (uint64_t)s->HD);
    expect_u32(g, K("vocab_size"), (uint64_t)s->V);
    QT_EXPECT(!qt_gguf_kv_find(g, K("attention.key_length")),
              "no key_length when head_dim = hidden / heads");
#undef K
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    QT_CHECK(f, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    QT_CHECK(b && fread(b, 1, (size_t)n, f) == (size_t)n, "read %s", path);
    b[n] = 0;
    fclose(f);
    return b;
}

static int64_t find_id(char **tok, int64_t n, const char *s) {
    for (int64_t i = 0; i < n; i++)
        if (tok[i] && !strcmp(tok[i], s)) return i;
    return -1;
}

/* The GGUF vocabulary against the tokenizer.json it came from, by the converter's rules: tokens
 * by id, [PADi] for undefined ids, types, merges "a b" (gpt2), scores (llama: minus the rank of
 * the first merge making the token; other normal tokens -(merges + id); the rest 0). */
static void check_vocab_json(const qt_gguf_file *g, const char *tokjson, bool spm, int64_t V) {
    char *text = read_all(tokjson);
    cJSON *root = cJSON_Parse(text);
    free(text);
    QT_CHECK(root, "%s", tokjson);
    const cJSON *model = cJSON_GetObjectItem(root, "model"), *v;
    const char *unk = cJSON_GetStringValue(cJSON_GetObjectItem(model, "unk_token"));
    char **want = calloc((size_t)V, sizeof *want);
    int *type = calloc((size_t)V, sizeof *type);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(model, "vocab")) {
        want[(int64_t)v->valuedouble] = v->string;
        type[(int64_t)v->valuedouble] = 1;
    }
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, "added_tokens")) {
        int64_t id = (int64_t)cJSON_GetObjectItem(v, "id")->valuedouble;
        const char *c = cJSON_GetStringValue(cJSON_GetObjectItem(v, "content"));
        bool special = cJSON_IsTrue(cJSON_GetObjectItem(v, "special"));
        bool looks = (!strncmp(c, "<|", 2) && strlen(c) > 3 && !strcmp(c + strlen(c) - 2, "|>")) ||
                     !strcmp(c, "<mask>") || !strcmp(c, "<pad>");
        want[id] = (char *)c;
        type[id] = special || (!spm && looks) ? 3 : 4;
    }
    if (spm)
        for (int64_t i = 0; i < V; i++) {
            if (!want[i]) continue;
            if (strlen(want[i]) == 6 && !strncmp(want[i], "<0x", 3) && want[i][5] == '>')
                type[i] = 6;
            else if (unk && !strcmp(want[i], unk))
                type[i] = 2;
        }
    const qt_gguf_kv *tok = qt_gguf_kv_find(g, "tokenizer.ggml.tokens");
    const qt_gguf_kv *ty = qt_gguf_kv_find(g, "tokenizer.ggml.token_type");
    QT_EXPECT(tok && tok->type == QT_GV_ARRAY && tok->arr_type == QT_GV_STRING &&
                  tok->n == (uint64_t)V,
              "tokens: a string array of %lld", (long long)V);
    QT_EXPECT(ty && ty->type == QT_GV_ARRAY && ty->arr_type == QT_GV_I32 && ty->n == (uint64_t)V,
              "token_type: an i32 array of %lld", (long long)V);
    if (tok && ty && tok->n == (uint64_t)V && ty->n == (uint64_t)V) {
        int bad_tok = 0, bad_type = 0, npad = 0;
        const int32_t *tt = (const int32_t *)ty->arr;
        for (int64_t i = 0; i < V; i++) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
            bad_tok += strcmp(arr_str(tok, (uint64_t)i), want[i] ? want[i] : pad) != 0;
            int32_t t;
            memcpy(&t, tt + i, 4);
            bad_type += t != (want[i] ? type[i] : 5);
            npad += !want[i];
        }
        QT_EXPECT(!bad_tok && !bad_type, "%s: %d tokens and %d types differ (%d pads)", tokjson,
                  bad_tok, bad_type, npad);
    }
    const cJSON *merges = cJSON_GetObjectItem(model, "merges");
    int nm = cJSON_GetArraySize(merges), r = 0;
    if (!spm) {
        const qt_gguf_kv *mg = qt_gguf_kv_find(g, "tokenizer.ggml.merges");
        QT_EXPECT(mg && mg->arr_type == QT_GV_STRING && mg->n == (uint64_t)nm, "%d merges", nm);
        QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.scores"), "no scores for gpt2 (converter)");
        int bad = 0;
        if (mg && mg->n == (uint64_t)nm) cJSON_ArrayForEach(v, merges) {
                char m[256];
                if (cJSON_IsArray(v))
                    snprintf(m, sizeof m, "%s %s", cJSON_GetArrayItem(v, 0)->valuestring,
                             cJSON_GetArrayItem(v, 1)->valuestring);
                else
                    snprintf(m, sizeof m, "%s", v->valuestring);
                bad += strcmp(arr_str(mg, (uint64_t)r++), m) != 0;
            }
        QT_EXPECT(!bad, "%s: %d merges differ", tokjson, bad);
    } else {
        const qt_gguf_kv *sc = qt_gguf_kv_find(g, "tokenizer.ggml.scores");
        QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.merges"), "no merges for llama (converter)");
        QT_EXPECT(sc && sc->arr_type == QT_GV_F32 && sc->n == (uint64_t)V, "f32 scores");
        float *score = calloc((size_t)V, sizeof *score);
        bool *set = calloc((size_t)V, 1);
        cJSON_ArrayForEach(v, merges) {
            char joined[256];
            if (cJSON_IsArray(v)) {
                snprintf(joined, sizeof joined, "%s%s", cJSON_GetArrayItem(v, 0)->valuestring,
                         cJSON_GetArrayItem(v, 1)->valuestring);
            } else {
                const char *sp = strchr(v->valuestring + 1, ' ');
                snprintf(joined, sizeof joined, "%.*s%s", (int)(sp - v->valuestring),
                         v->valuestring, sp + 1);
            }
            int64_t id = find_id(want, V, joined);
            if (id >= 0 && !set[id]) score[id] = -(float)r, set[id] = true;
            r++;
        }
        int bad = 0, nscored = 0;
        for (int64_t i = 0; i < V; i++) {
            float w = !want[i] || type[i] != 1 ? 0.0f : set[i] ? score[i] : -(float)(nm + i);
            nscored += want[i] && set[i];
            if (sc && sc->n == (uint64_t)V) {
                float got;
                memcpy(&got, sc->arr + 4 * i, 4);
                bad += got != w;
            }
        }
        QT_EXPECT(!bad && nscored > nm / 2, "%s: %d scores differ (%d made by merges)", tokjson,
                  bad, nscored);
        free(score), free(set);
    }
    free(want), free(type);
    cJSON_Delete(root);
}

/* C's tokenizer (written above): Qwen2's pre-tokenizer, specials and named templates */
static void check_qwen_vocab(const qt_gguf_file *g, const char *dir_c) {
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir_c);
    expect_str(g, "tokenizer.ggml.model", "gpt2");
    expect_str(g, "tokenizer.ggml.pre", "qwen2");
    check_vocab_json(g, path, false, 272);
    const qt_gguf_kv *tok = qt_gguf_kv_find(g, "tokenizer.ggml.tokens");
    const qt_gguf_kv *mg = qt_gguf_kv_find(g, "tokenizer.ggml.merges");
    if (tok && tok->n == 272) {
        char sym[4];
        byte_symbol(' ', sym);
        QT_EXPECT(!strcmp(arr_str(tok, 32), sym) && !strcmp(sym, "\xc4\xa0"), "token 32 is Ġ");
        QT_EXPECT(!strcmp(arr_str(tok, 258), "\xc4\xa0the"), "merge results keep their ids");
        QT_EXPECT(!strcmp(arr_str(tok, 266), "[PAD266]"), "undefined ids are [PADi]");
    }
    if (mg && mg->n == 6) QT_EXPECT(!strcmp(arr_str(mg, 2), "\xc4\xa0t he"), "merge 2");
    expect_u32(g, "tokenizer.ggml.bos_token_id", 262); /* config.json's bos_token_id */
    expect_u32(g, "tokenizer.ggml.eos_token_id", 264);
    expect_u32(g, "tokenizer.ggml.padding_token_id", 262);
    QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.add_bos_token"), "add_bos not stated");
    QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.add_space_prefix"), "no add_space_prefix");
    expect_str(g, "tokenizer.chat_template", CHAT);
    expect_str(g, "tokenizer.chat_template.tool_use", "{{ tools }}");
    const qt_gguf_kv *names = kv_typed(g, "tokenizer.chat_templates", QT_GV_ARRAY);
    QT_EXPECT(names && names->n == 1 && !strcmp(arr_str(names, 0), "tool_use"),
              "chat_templates lists the named templates");
}

/* A's: tests/fixtures/tok/llama3.json (byte-level, [a, b] merges, Llama 3's pre-tokenizer) */
static void check_llama3_vocab(const qt_gguf_file *g) {
    expect_str(g, "tokenizer.ggml.model", "gpt2");
    expect_str(g, "tokenizer.ggml.pre", "llama-bpe");
    check_vocab_json(g, "tests/fixtures/tok/llama3.json", false, 1120);
    expect_u32(g, "tokenizer.ggml.bos_token_id", 1100);
    expect_u32(g, "tokenizer.ggml.eos_token_id", 1107);
    QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.mask_token_id"),
              "<mask> is no mask id unless tokenizer_config.json names it");
    const qt_gguf_kv *ab = kv_typed(g, "tokenizer.ggml.add_bos_token", QT_GV_BOOL);
    QT_EXPECT(ab && ab->v.u == 1, "add_bos_token from the TemplateProcessing");
    QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.add_eos_token"), "add_eos not stated");
    QT_EXPECT(!qt_gguf_kv_find(g, "tokenizer.ggml.padding_token_id"), "no pad id");
    expect_str(g, "tokenizer.chat_template", CHAT);
}

/* B's: tests/fixtures/tok/llama2.json (sentencepiece-style, byte fallback) */
static void check_llama2_vocab(const qt_gguf_file *g) {
    expect_str(g, "tokenizer.ggml.model", "llama");
    expect_str(g, "tokenizer.ggml.pre", "default");
    check_vocab_json(g, "tests/fixtures/tok/llama2.json", true, 1104);
    const qt_gguf_kv *tok = qt_gguf_kv_find(g, "tokenizer.ggml.tokens");
    if (tok && tok->n == 1104)
        QT_EXPECT(!strcmp(arr_str(tok, 13), "<0x0A>") && !strcmp(arr_str(tok, 1100), "foo bar"),
                  "byte tokens and the added token");
    expect_u32(g, "tokenizer.ggml.bos_token_id", 1);
    expect_u32(g, "tokenizer.ggml.eos_token_id", 2);
    expect_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    const qt_gguf_kv *ab = kv_typed(g, "tokenizer.ggml.add_bos_token", QT_GV_BOOL);
    const qt_gguf_kv *ae = kv_typed(g, "tokenizer.ggml.add_eos_token", QT_GV_BOOL);
    QT_EXPECT(ab && ab->v.u == 1 && ae && ae->v.u == 0, "add_bos true, add_eos false");
    const qt_gguf_kv *sp = kv_typed(g, "tokenizer.ggml.add_space_prefix", QT_GV_BOOL);
    QT_EXPECT(sp && sp->v.u == 1, "add_space_prefix from add_prefix_space");
}

/* every tensor's name, dims and type, for a file of ftype; qat_type: the linears' trained
 * format (0: none) */
static void check_tensors(const qt_gguf_file *g, const spec *s, int ftype, uint32_t qat_type) {
    char name[96];
    uint64_t n = 0;
    const int64_t rows[7] = {s->H * s->HD, s->KV * s->HD, s->KV * s->HD, s->D, s->F, s->F, s->D};
    const int64_t cols[7] = {s->D, s->D, s->D, s->H * s->HD, s->D, s->D, s->F};
    if (s->llama3) n++, tensor(g, "rope_freqs.weight", QT_GGML_F32, (uint64_t)s->HD / 2, 0);
    n++, tensor(g, "token_embd.weight", want_type(ftype, "token_embd", 0, s->L, s->D, s->tied),
                (uint64_t)s->D, (uint64_t)s->V);
    for (int l = 0; l < s->L; l++) {
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        n++, tensor(g, name, QT_GGML_F32, (uint64_t)s->D, 0);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        n++, tensor(g, name, QT_GGML_F32, (uint64_t)s->D, 0);
        for (int j = 0; j < 7; j++) {
            uint32_t t = want_type(ftype, gname[j], l, s->L, cols[j], false);
            if (qat_type && ftype != 1) t = qat_type;
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, gname[j]);
            n++, tensor(g, name, t, (uint64_t)cols[j], (uint64_t)rows[j]);
            if (s->bias && j < 3) {
                snprintf(name, sizeof name, "blk.%d.%s.bias", l, gname[j]);
                n++, tensor(g, name, QT_GGML_F32, (uint64_t)rows[j], 0);
            }
        }
    }
    n++, tensor(g, "output_norm.weight", QT_GGML_F32, (uint64_t)s->D, 0);
    if (!s->tied)
        n++, tensor(g, "output.weight", want_type(ftype, "output", 0, s->L, s->D, false),
                    (uint64_t)s->D, (uint64_t)s->V);
    QT_EXPECT(g->ntensors == n, "%s: %llu tensors, want %llu", g->path,
              (unsigned long long)g->ntensors, (unsigned long long)n);
    QT_EXPECT(g->alignment == 32 && !qt_gguf_kv_find(g, "general.alignment"),
              "default alignment 32");
}

/* the exported linear weights against qt_linear_merged of the model: mode 0 = F16 rounding of
 * the (permuted) merged weight, bit for bit; 1 = bit for bit (QAT); 2 = the file's blocks are
 * our codec's quantization of the permuted weight and equal the permutation of the unpermuted
 * weight's quantization (the permutation commutes with quantizing) */
static void check_linears(const char *model, const qt_gguf_file *g, int mode, const char *what) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[1100];
    qt_err err = {0};
    QT_CHECK(open_model(&ctx, &m, model, base, sizeof base, &err) == 0, "%s", err.msg);
    bool perm = m.cfg.arch != QT_ARCH_QWEN2;
    int nbad = 0, nchecked = 0, nlora = 0;
    for (int64_t i = 0; i < m.cfg.layers; i++) {
        qt_linear *ls[7] = {&m.layer[i].q,    &m.layer[i].k,  &m.layer[i].v,   &m.layer[i].o,
                            &m.layer[i].gate, &m.layer[i].up, &m.layer[i].down};
        for (int j = 0; j < 7; j++) {
            qt_linear *l = ls[j];
            int64_t n = l->out * l->in;
            float *w = malloc((size_t)n * 4), *pw = malloc((size_t)n * 4);
            qt_linear_merged(&ctx, l, w);
            int64_t nh = !perm ? 0 : j == 0 ? m.cfg.heads : j == 1 ? m.cfg.kv_heads : 0;
            if (nh)
                permute(w, pw, l->out, l->in, nh);
            else
                memcpy(pw, w, (size_t)n * 4);
            char name[96];
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)i, gname[j]);
            const qt_gguf_tensor *t = qt_gguf_tensor_find(g, name);
            QT_EXPECT(t != NULL, "%s: %s", what, name);
            if (!t) {
                free(w), free(pw);
                continue;
            }
            float *v = values(t);
            int diff = 0;
            if (mode == 0) {
                for (int64_t k = 0; k < n; k++) diff += v[k] != qt_f16_to_f32(qt_f32_to_f16(pw[k]));
            } else if (mode == 1) {
                diff = memcmp(v, pw, (size_t)n * 4) != 0;
            } else if (t->type != QT_GGML_F16) {
                size_t nb = t->nbytes;
                uint8_t *q1 = malloc(nb), *q2 = malloc(nb);
                float *d2 = malloc((size_t)n * 4), *pd2 = malloc((size_t)n * 4);
                qt_gguf_quantize_row((qt_gguf_type)t->type, pw, q1, n);
                qt_gguf_quantize_row((qt_gguf_type)t->type, w, q2, n);
                qt_gguf_dequantize_row((qt_gguf_type)t->type, q2, d2, n);
                if (nh)
                    permute(d2, pd2, l->out, l->in, nh);
                else
                    memcpy(pd2, d2, (size_t)n * 4);
                diff = memcmp(q1, t->data, nb) != 0 || memcmp(pd2, v, (size_t)n * 4) != 0;
                free(q1), free(q2), free(d2), free(pd2);
            }
            if (diff) {
                nbad++;
                fprintf(stderr, "  %s %s: %d values differ\n", what, name, diff);
            }
            nchecked++;
            if (l->lora_a) nlora++;
            if (l->bias) { /* biases: F32, permuted like their weight's rows */
                snprintf(name, sizeof name, "blk.%lld.%s.bias", (long long)i, gname[j]);
                const qt_gguf_tensor *bt = qt_gguf_tensor_find(g, name);
                float *b = malloc((size_t)l->out * 4), *pb = malloc((size_t)l->out * 4);
                qt_tensor_download(&ctx, l->bias, b);
                if (nh)
                    permute(b, pb, l->out, 1, nh);
                else
                    memcpy(pb, b, (size_t)l->out * 4);
                QT_EXPECT(bt && bt->type == QT_GGML_F32 &&
                              !memcmp(bt->data, pb, (size_t)l->out * 4),
                          "%s: %s exact", what, name);
                free(b), free(pb);
            }
            free(v), free(w), free(pw);
        }
    }
    QT_EXPECT(nbad == 0 && nchecked == 7 * m.cfg.layers, "%s: %d of %d linear weights differ", what,
              nbad, nchecked);
    if (strstr(model, ".h5"))
        QT_EXPECT(nlora == 7 * m.cfg.layers, "%s: the checkpoint's layers carry LoRA", what);
    /* 1-D tensors and the embeddings: F32 exact / as the type says */
    float *nv = malloc((size_t)m.cfg.hidden * 4);
    qt_tensor_download(&ctx, m.layer[0].in_norm, nv);
    const qt_gguf_tensor *t = qt_gguf_tensor_find(g, "blk.0.attn_norm.weight");
    QT_EXPECT(t && !memcmp(t->data, nv, (size_t)m.cfg.hidden * 4), "%s: attn_norm exact", what);
    free(nv);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

/* llama3 rope_freqs: LlamaModel.generate_extra_tensors in double precision */
static void check_rope_freqs(const qt_gguf_file *g, const spec *s) {
    const qt_gguf_tensor *t = qt_gguf_tensor_find(g, "rope_freqs.weight");
    if (!t) return;
    const float *v = (const float *)t->data;
    double worst = 0;
    for (int i = 0; i < s->HD / 2; i++) {
        double freq = 1.0 / pow(10000.0, (2.0 * i) / s->HD), wl = 6.283185307179586 / freq, want;
        double lo_wl = 16 / 1.0, hi_wl = 16 / 4.0;
        if (wl < hi_wl)
            want = 1;
        else if (wl > lo_wl)
            want = 8;
        else {
            double smooth = (16 / wl - 1.0) / (4.0 - 1.0);
            want = 1 / ((1 - smooth) / 8 + smooth);
        }
        worst = fmax(worst, fabs(v[i] - want) / want);
    }
    QT_EXPECT(worst < 1e-5, "rope_freqs: llama3 factors (worst relative error %.3g)", worst);
    QT_EXPECT(v[s->HD / 2 - 1] == 8.0f && v[0] > 1 && v[0] < 8, "rope_freqs: smoothed, then 8");
}

/* re-quantizing a fake-quant weight with its codec gives it back (Q4_0, Q8_0; Q4_K is reported) */
static int requant_idempotent(const char *ckpt, qt_gguf_type type, int64_t *nvals) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[1100];
    qt_err err = {0};
    QT_CHECK(open_model(&ctx, &m, ckpt, base, sizeof base, &err) == 0, "%s", err.msg);
    int ndiff = 0;
    *nvals = 0;
    for (int64_t i = 0; i < m.cfg.layers; i++) {
        qt_linear *ls[7] = {&m.layer[i].q,    &m.layer[i].k,  &m.layer[i].v,   &m.layer[i].o,
                            &m.layer[i].gate, &m.layer[i].up, &m.layer[i].down};
        for (int j = 0; j < 7; j++) {
            int64_t n = ls[j]->out * ls[j]->in;
            float *w = malloc((size_t)n * 4), *d = malloc((size_t)n * 4);
            void *q = malloc((size_t)n * 2);
            qt_linear_merged(&ctx, ls[j], w);
            qt_gguf_quantize_row(type, w, q, n);
            qt_gguf_dequantize_row(type, q, d, n);
            for (int64_t k = 0; k < n; k++) ndiff += memcmp(&w[k], &d[k], 4) != 0;
            *nvals += n;
            free(w), free(d), free(q);
        }
    }
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    return ndiff;
}

static void path_of(char *p, size_t cap, const char *name) {
    snprintf(p, cap, "%s/%s", dir, name);
}

int main(void) {
    const char *d = getenv("QT_GGUF_DUMP");
    dump = d && *d;
    if (dump)
        snprintf(dir, sizeof dir, "%s", d);
    else
        snprintf(dir, sizeof dir, "/tmp/qt_export_gguf.%ld", (long)getpid());
    char cmd[600], A[300], B[300], C[300], ck[300], out[300], npy[300], msg[512];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    path_of(A, sizeof A, "model_a");
    path_of(B, sizeof B, "model_b");
    path_of(C, sizeof C, "model_c");
    write_model(A, &SA, 11);
    write_model(B, &SB, 12);
    write_model(C, &SC, 13);
    write_fixture_tokenizer(A, "llama3.json", true);
    write_fixture_tokenizer(B, "llama2.json", false);
    write_bytelevel_tokenizer(C, true);

    /* A: a LoRA checkpoint in every format */
    path_of(ck, sizeof ck, "a_lora.h5");
    train_ckpt(A, QT_MODE_LORA, NULL, ck);
    path_of(npy, sizeof npy, "a_lora_npy");
    dump_refs(ck, npy, false);
    static const struct {
        qt_export_format f;
        int ftype;
        const char *file;
    } F[4] = {{QT_EXPORT_GGUF_F16, 1, "a_lora-f16.gguf"},
              {QT_EXPORT_GGUF_Q8_0, 7, "a_lora-q8_0.gguf"},
              {QT_EXPORT_GGUF_Q4_0, 2, "a_lora-q4_0.gguf"},
              {QT_EXPORT_GGUF_Q4_K_M, 15, "a_lora-q4_k_m.gguf"}};
    for (int k = 0; k < 4; k++) {
        path_of(out, sizeof out, F[k].file);
        export_ok(ck, F[k].f, out);
        qt_gguf_file g;
        qt_err err = {0};
        QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
        check_metadata(&g, &SA, (uint32_t)F[k].ftype);
        check_llama3_vocab(&g);
        check_tensors(&g, &SA, F[k].ftype, 0);
        check_rope_freqs(&g, &SA);
        check_linears(ck, &g, F[k].ftype == 1 ? 0 : 2, F[k].file);
        qt_gguf_close(&g);
    }

    /* A: QAT + LoRA against Q4_0 and Q8_0: bit-exact in their files and in a Q4_K_M file */
    static const struct {
        qt_fq_kind kind;
        qt_gguf_type type;
        qt_export_format f;
        int ftype;
        const char *ck, *file, *mfile;
    } Q[3] = {{QT_FQ_Q4_0, QT_GGUF_Q4_0, QT_EXPORT_GGUF_Q4_0, 2, "a_qat_q4_0.h5", "a_qat-q4_0.gguf",
               "a_qat_q4_0-q4_k_m.gguf"},
              {QT_FQ_Q8_0, QT_GGUF_Q8_0, QT_EXPORT_GGUF_Q8_0, 7, "a_qat_q8_0.h5", "a_qat-q8_0.gguf",
               NULL},
              {QT_FQ_Q4_K, QT_GGUF_Q4_K, QT_EXPORT_GGUF_Q4_K_M, 15, "b_qat_q4_k.h5",
               "b_qat-q4_k_m.gguf", NULL}};
    for (int k = 0; k < 3; k++) {
        qt_fq_format wq = {.kind = Q[k].kind};
        const char *model = k < 2 ? A : B;
        const spec *s = k < 2 ? &SA : &SB;
        path_of(ck, sizeof ck, Q[k].ck);
        train_ckpt(model, QT_MODE_QAT, &wq, ck);
        snprintf(npy, sizeof npy, "%s/%s_npy", dir, Q[k].ck);
        dump_refs(ck, npy, true);
        for (int v = 0; v < 2; v++) {
            const char *file = v ? Q[k].mfile : Q[k].file;
            if (!file) continue;
            path_of(out, sizeof out, file);
            export_ok(ck, v ? QT_EXPORT_GGUF_Q4_K_M : Q[k].f, out);
            qt_gguf_file g;
            qt_err err = {0};
            QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
            check_tensors(&g, s, v ? 15 : Q[k].ftype, (uint32_t)Q[k].type);
            check_linears(ck, &g, 1, file);
            qt_gguf_close(&g);
        }
        int64_t nv;
        int nd = requant_idempotent(ck, Q[k].type, &nv);
        if (Q[k].kind == QT_FQ_Q4_K)
            printf("Q4_K: re-quantizing the fake-quant weights changes %d of %lld values "
                   "(the export writes the trained blocks, so it stays exact)\n",
                   nd, (long long)nv);
        else
            QT_EXPECT(nd == 0,
                      "%s: re-quantizing the fake-quant weights gives them back (%d of "
                      "%lld differ)",
                      Q[k].ck, nd, (long long)nv);
    }

    /* B: the Q4_K_M mix over 8 layers with rows of 256, Q4_0's output.weight; the spm vocab */
    static const struct {
        qt_export_format f;
        int ftype;
        const char *file;
    } FB[3] = {{QT_EXPORT_GGUF_Q4_K_M, 15, "b-q4_k_m.gguf"},
               {QT_EXPORT_GGUF_Q4_0, 2, "b-q4_0.gguf"},
               {QT_EXPORT_GGUF_Q8_0, 7, "b-q8_0.gguf"}};
    path_of(npy, sizeof npy, "b_npy");
    dump_refs(B, npy, false);
    for (int k = 0; k < 3; k++) {
        path_of(out, sizeof out, FB[k].file);
        export_ok(B, FB[k].f, out);
        qt_gguf_file g;
        qt_err err = {0};
        QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
        check_metadata(&g, &SB, (uint32_t)FB[k].ftype);
        check_llama2_vocab(&g);
        check_tensors(&g, &SB, FB[k].ftype, 0);
        check_linears(B, &g, 2, FB[k].file);
        QT_EXPECT(!qt_gguf_tensor_find(&g, "rope_freqs.weight"), "no rope_freqs without llama3");
        qt_gguf_close(&g);
    }
    { /* the mix, spelled out: Q6_K attn_v / ffn_down on layers 0, 3, 6, 7 of 8 */
        path_of(out, sizeof out, "b-q4_k_m.gguf");
        qt_gguf_file g;
        qt_err err = {0};
        QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
        char got[9] = "", name[64];
        for (int l = 0; l < 8; l++) {
            snprintf(name, sizeof name, "blk.%d.attn_v.weight", l);
            const qt_gguf_tensor *t = qt_gguf_tensor_find(&g, name);
            got[l] = t && t->type == QT_GGML_Q6_K ? '6' : t && t->type == QT_GGML_Q4_K ? '4' : '?';
        }
        QT_EXPECT(!strcmp(got, "64464466"), "attn_v types by layer: %s", got);
        const qt_gguf_tensor *o = qt_gguf_tensor_find(&g, "output.weight");
        QT_EXPECT(o && o->type == QT_GGML_Q6_K, "output.weight Q6_K");
        qt_gguf_close(&g);
    }

    /* C: qwen2, tied, biases, no permutation */
    path_of(npy, sizeof npy, "c_npy");
    dump_refs(C, npy, false);
    for (int k = 0; k < 2; k++) {
        path_of(out, sizeof out, k ? "c-q4_0.gguf" : "c-f16.gguf");
        export_ok(C, k ? QT_EXPORT_GGUF_Q4_0 : QT_EXPORT_GGUF_F16, out);
        qt_gguf_file g;
        qt_err err = {0};
        QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
        check_metadata(&g, &SC, k ? 2 : 1);
        check_qwen_vocab(&g, C);
        check_tensors(&g, &SC, k ? 2 : 1, 0);
        check_linears(C, &g, k ? 2 : 0, out);
        QT_EXPECT(!qt_gguf_tensor_find(&g, "output.weight"), "tied: no output.weight");
        qt_gguf_close(&g);
    }

    /* no tokenizer.json: refused, unless asked for a file without a vocabulary */
    char D2[300];
    path_of(D2, sizeof D2, "model_notok");
    write_model(D2, &SA, 14);
    path_of(out, sizeof out, "notok.gguf");
    int rc = export_to(D2, QT_EXPORT_GGUF_F16, out, false, msg, sizeof msg);
    QT_EXPECT(rc != 0 && strstr(msg, "tokenizer.json") && strstr(msg, "--no-tokenizer") &&
                  access(out, F_OK) != 0,
              "no tokenizer.json: a clear error and no file (%s)", msg);
    rc = export_to(D2, QT_EXPORT_GGUF_F16, out, true, msg, sizeof msg);
    QT_EXPECT(rc == 0, "--no-tokenizer: %s", msg);
    if (rc == 0) {
        qt_gguf_file g;
        qt_err err = {0};
        QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
        expect_str(&g, "tokenizer.ggml.model", "none");
        QT_EXPECT(!qt_gguf_kv_find(&g, "tokenizer.ggml.tokens"), "no tokens");
        check_tensors(&g, &SA, 1, 0);
        qt_gguf_close(&g);
    }
    /* the same model with GPT-2's tokenizer: the plain ByteLevel pre-tokenizer is "gpt-2" */
    snprintf(cmd, sizeof cmd, "cp tests/fixtures/tok/gpt2.json %s/tokenizer.json", D2);
    QT_CHECK(system(cmd) == 0, "%s", cmd);
    path_of(out, sizeof out, "d-gpt2-f16.gguf");
    export_ok(D2, QT_EXPORT_GGUF_F16, out);
    {
        qt_gguf_file g;
        qt_err err = {0};
        QT_CHECK(qt_gguf_open(&g, out, &err) == 0, "%s", err.msg);
        expect_str(&g, "tokenizer.ggml.pre", "gpt-2");
        check_vocab_json(&g, "tests/fixtures/tok/gpt2.json", false, 1120);
        expect_u32(&g, "tokenizer.ggml.bos_token_id", 1100); /* config.json's */
        qt_gguf_close(&g);
    }

    if (!dump) {
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    } else {
        printf("files kept in %s\n", dir);
    }
    return qt_test_finish("export_gguf");
}
