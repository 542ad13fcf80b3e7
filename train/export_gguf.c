/* export_gguf.c - `qtune export --format gguf-*`: a GGUF v3 file for llama.cpp, laid out as its
 * converter (convert_hf_to_gguf.py, LlamaModel / Qwen2Model) and its quantizer (llama-quantize,
 * src/llama-quant.cpp) would write it. docs/EXPORT.md describes every choice; in short:
 *   metadata   general.* and {arch}.* keys with llama.cpp's value types (u32 counts, f32 rope
 *              base and RMS epsilon), general.file_type and general.quantization_version
 *   tensors    llama.cpp's names, ggml dims (Hugging Face's reversed), the Q/K row permutation
 *              of llama/mistral (not qwen2), rope_freqs for llama3 rope scaling, 1-D tensors F32,
 *              2-D tensors F16 or quantized with the type llama_tensor_get_type picks
 *   tokenizer  from the base model's tokenizer.json (+ tokenizer_config.json, config.json),
 *              byte-level BPE as "gpt2" and byte-fallback (sentencepiece-style) BPE as "llama"
 * Linear layers are LoRA-merged (qt_linear_merged). A layer trained against a GGUF block format
 * (QAT: Q4_0, Q8_0, Q4_K) is written in that format from the weight its fake-quant quantized,
 * so its blocks are those of the forward pass and dequantize to its weight bit for bit. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "quant/fakequant.h"
#include "quant/gguf_blocks.h"
#include "quant/half.h"
#include "train/export.h"
#include "train/gguf.h"
#include "train/run_dir.h"

/* ---- small helpers ----------------------------------------------------------------------- */

/* parses dir/name; *missing is set when the file does not exist */
static cJSON *read_json(const char *dir, const char *name, bool *missing, qt_err *err) {
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = qt_read_file(path, NULL);
    if (missing) *missing = text == NULL;
    if (!text) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) qt_err_set(err, QT_ERR_FORMAT, "%s: not valid JSON", path);
    return j;
}

static char *xstrdup(const char *s) {
    char *d = strdup(s ? s : "");
    QT_CHECK(d, "out of memory");
    return d;
}

static bool starts_with(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

static bool ends_with(const char *s, const char *p) {
    size_t n = strlen(s), m = strlen(p);
    return n >= m && !memcmp(s + n - m, p, m);
}

/* a string -> id table (open addressing, FNV-1a) */
typedef struct {
    const char **key;
    int64_t *val;
    size_t cap;
} str_map;

static uint64_t str_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static void map_init(str_map *m, size_t n) {
    m->cap = 16;
    while (m->cap < 2 * n + 16) m->cap *= 2;
    m->key = calloc(m->cap, sizeof *m->key);
    m->val = calloc(m->cap, sizeof *m->val);
    QT_CHECK(m->key && m->val, "out of memory");
}

static void map_free(str_map *m) {
    free(m->key), free(m->val);
    memset(m, 0, sizeof *m);
}

/* inserts key -> v unless present; returns the value stored under key */
static int64_t map_put(str_map *m, const char *key, int64_t v) {
    size_t i = (size_t)str_hash(key) & (m->cap - 1);
    while (m->key[i]) {
        if (!strcmp(m->key[i], key)) return m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    m->key[i] = key, m->val[i] = v;
    return v;
}

static int64_t map_get(const str_map *m, const char *key) {
    size_t i = (size_t)str_hash(key) & (m->cap - 1);
    while (m->key[i]) {
        if (!strcmp(m->key[i], key)) return m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

/* ---- the tokenizer ----------------------------------------------------------------------- */

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
enum { SP_BOS, SP_EOS, SP_UNK, SP_SEP, SP_PAD, SP_MASK, SP_N };
static const char *sp_names[SP_N] = {"bos", "eos", "unk", "sep", "pad", "mask"};
static const char *sp_keys[SP_N] = {
    "tokenizer.ggml.bos_token_id",     "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.mask_token_id"};

/* the pre-tokenizer regexes llama.cpp implements (src/llama-vocab.cpp keeps the originals from
 * tokenizer.json as comments): Llama 3's and Qwen2's Split patterns */
static const char *RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *RE_QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                              "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct {
    bool spm;      /* "llama" (byte-fallback BPE) rather than "gpt2" (byte-level BPE) */
    char pre[32];  /* tokenizer.ggml.pre */
    int64_t n;     /* = the model's vocab_size */
    char **tok;    /* [n] */
    int32_t *type; /* [n] */
    float *score;  /* [n], spm only */
    char **merges; /* gpt2 only */
    int64_t nmerges;
    int64_t sp[SP_N];     /* special ids, -1 when absent */
    int add_bos, add_eos; /* -1: not stated */
    int add_prefix;       /* tokenizer_config.json's add_prefix_space, -1: not stated */
    char *chat;           /* the default chat template */
    char **tmpl_name, **tmpl_text;
    int ntmpl;
    int npad; /* ids the tokenizer does not define, filled with [PADi] */
} gg_tok;

static void tok_free(gg_tok *t) {
    for (int64_t i = 0; i < t->n && t->tok; i++) free(t->tok[i]);
    for (int64_t i = 0; i < t->nmerges; i++) free(t->merges[i]);
    for (int i = 0; i < t->ntmpl; i++) free(t->tmpl_name[i]), free(t->tmpl_text[i]);
    free(t->tok), free(t->type), free(t->score), free(t->merges), free(t->chat);
    free(t->tmpl_name), free(t->tmpl_text);
    memset(t, 0, sizeof *t);
}

/* convert_hf_to_gguf.py's does_token_look_special */
static bool looks_special(const char *s) {
    return !strcmp(s, "<pad>") || !strcmp(s, "<mask>") || !strcmp(s, "<2mass>") ||
           !strcmp(s, "[@BOS@]") || (starts_with(s, "<|") && ends_with(s, "|>")) ||
           (starts_with(s, "<\xef\xbd\x9c") && ends_with(s, "\xef\xbd\x9c>")) ||
           (starts_with(s, "<unused") && ends_with(s, ">"));
}

static bool is_byte_token(const char *s) {
    return strlen(s) == 6 && starts_with(s, "<0x") && s[5] == '>' &&
           strchr("0123456789abcdefABCDEF", s[3]) && strchr("0123456789abcdefABCDEF", s[4]) &&
           s[3] && s[4];
}

/* s with every "from" replaced by "to" (newly allocated) */
static char *replace_all(const char *s, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to), cnt = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + nf, from)) cnt++;
    char *out = malloc(strlen(s) + cnt * (nt > nf ? nt - nf : 0) + 1), *o = out;
    QT_CHECK(out, "out of memory");
    for (const char *p = s;;) {
        const char *q = strstr(p, from);
        if (!q) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t)(q - p)), o += q - p;
        memcpy(o, to, nt), o += nt;
        p = q + nf;
    }
    return out;
}

static const char *json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* tokenizer_config.json's "<typ>_token": a string or {"content": ...} */
static const char *config_token(const cJSON *tc, const char *typ) {
    char key[32];
    snprintf(key, sizeof key, "%s_token", typ);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return json_str(v, "content");
    return NULL;
}

/* the id of the first added token with that content, or -1 */
static int64_t added_id(const cJSON *added, const char *content) {
    const cJSON *a;
    cJSON_ArrayForEach(a, added) {
        const char *c = json_str(a, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (c && cJSON_IsNumber(id) && !strcmp(c, content)) return (int64_t)id->valuedouble;
    }
    return -1;
}

/* the Split regex of the pre-tokenizer (directly or inside a Sequence), or NULL */
static const char *pre_split_regex(const cJSON *pre, bool *bytelevel_regex) {
    if (!cJSON_IsObject(pre)) return NULL;
    const char *type = json_str(pre, "type");
    if (!type) return NULL;
    if (!strcmp(type, "Sequence")) {
        const char *re = NULL;
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers")) {
            const char *r = pre_split_regex(p, bytelevel_regex);
            if (r && !re) re = r;
        }
        return re;
    }
    if (!strcmp(type, "ByteLevel")) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(pre, "use_regex");
        if (!u || cJSON_IsTrue(u)) *bytelevel_regex = true; /* tokenizers' default: true */
        return NULL;
    }
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pre, "pattern");
        return json_str(pat, "Regex");
    }
    return NULL;
}

/* add_bos / add_eos from a TemplateProcessing post-processor, as gguf-py's SpecialVocab reads
 * it (its crude reading: the single template's first and last special tokens) */
static void template_adds(const cJSON *post, const char *bos, const char *eos, bool have_tc,
                          gg_tok *t) {
    if (!cJSON_IsObject(post)) return;
    const cJSON *procs = cJSON_GetObjectItemCaseSensitive(post, "processors");
    const cJSON *list[32], *p;
    int np = 0;
    if (cJSON_IsArray(procs)) {
        cJSON_ArrayForEach(p, procs) if (np < 32) list[np++] = p;
    } else {
        list[np++] = post;
    }
    for (int i = 0; i < np; i++) {
        const char *type = json_str(list[i], "type");
        if (type && !strcmp(type, "RobertaProcessing")) {
            t->add_bos = t->add_eos = 1;
        } else if (type && !strcmp(type, "TemplateProcessing")) {
            const cJSON *single = cJSON_GetObjectItemCaseSensitive(list[i], "single");
            int n = cJSON_GetArraySize(single);
            if (n <= 1) continue;
            const char *fid = json_str(
                cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, 0), "SpecialToken"),
                "id");
            if (fid && *fid) t->add_bos = (!have_tc || (bos && !strcmp(fid, bos))) ? 1 : 0;
            const char *lid = json_str(
                cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, n - 1), "SpecialToken"),
                "id");
            if (lid && *lid) t->add_eos = (!have_tc || (eos && !strcmp(lid, eos))) ? 1 : 0;
        }
    }
}

/* Reads dir's tokenizer.json (+ tokenizer_config.json, config.json, chat_template.jinja) into
 * the GGUF vocabulary of a model of n tokens. */
static int tok_load(gg_tok *t, const char *dir, int64_t n, FILE *report, qt_err *err) {
    memset(t, 0, sizeof *t);
    t->add_bos = t->add_eos = t->add_prefix = -1;
    for (int i = 0; i < SP_N; i++) t->sp[i] = -1;
    char path[4300];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool missing = false;
    cJSON *root = read_json(dir, "tokenizer.json", &missing, err);
    if (missing)
        return qt_err_set(err, QT_ERR_ARG,
                          "%s: not found: a GGUF file needs the vocabulary (llama.cpp cannot load "
                          "a model without one); export with --no-tokenizer to write the weights "
                          "alone (tokenizer.ggml.model \"none\")",
                          path);
    if (!root) return err->code;
    int rc = QT_OK;
    str_map map = {0};
    bool *added = NULL, *special = NULL;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *mtype = json_str(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!mtype || strcmp(mtype, "BPE") || !cJSON_IsObject(vocab)) {
        rc = qt_err_set(err, QT_ERR_UNSUPPORTED,
                        "%s: model type %s: GGUF export supports BPE tokenizers (byte-level or "
                        "byte-fallback)",
                        path, mtype ? mtype : "(missing)");
        goto done;
    }
    t->spm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    t->n = n;
    t->tok = calloc((size_t)n, sizeof *t->tok);
    t->type = calloc((size_t)n, sizeof *t->type);
    added = calloc((size_t)n, 1), special = calloc((size_t)n, 1);
    QT_CHECK(t->tok && t->type && added && special, "out of memory");
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        double d = v->valuedouble;
        if (!cJSON_IsNumber(v) || d < 0 || d != floor(d)) {
            rc = qt_err_set(err, QT_ERR_FORMAT, "%s: model.vocab[\"%s\"] is not a token id", path,
                            v->string);
            goto done;
        }
        int64_t id = (int64_t)d;
        if (id >= n) {
            rc = qt_err_set(err, QT_ERR_FORMAT,
                            "%s: token \"%s\" has id %lld, outside the model's vocabulary of "
                            "%lld (config.json vocab_size)",
                            path, v->string, (long long)id, (long long)n);
            goto done;
        }
        if (t->tok[id]) {
            rc = qt_err_set(err, QT_ERR_FORMAT, "%s: tokens \"%s\" and \"%s\" share id %lld", path,
                            t->tok[id], v->string, (long long)id);
            goto done;
        }
        t->tok[id] = xstrdup(v->string);
    }
    cJSON_ArrayForEach(v, addl) {
        const cJSON *jid = cJSON_GetObjectItemCaseSensitive(v, "id");
        const char *content = json_str(v, "content");
        if (!cJSON_IsNumber(jid) || !content || jid->valuedouble < 0) {
            rc = qt_err_set(err, QT_ERR_FORMAT, "%s: an added_tokens entry has no id or content",
                            path);
            goto done;
        }
        int64_t id = (int64_t)jid->valuedouble;
        if (id >= n) {
            rc = qt_err_set(err, QT_ERR_FORMAT,
                            "%s: added token \"%s\" has id %lld, outside the model's vocabulary "
                            "of %lld (config.json vocab_size)",
                            path, content, (long long)id, (long long)n);
            goto done;
        }
        free(t->tok[id]);
        t->tok[id] = xstrdup(content);
        added[id] = true;
        special[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "special"));
    }

    /* types (and pads for ids the tokenizer leaves undefined) */
    const char *unk = json_str(model, "unk_token");
    for (int64_t i = 0; i < n; i++) {
        if (!t->tok[i]) {
            char pad[40];
            snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
            t->tok[i] = xstrdup(pad);
            t->type[i] = TT_UNUSED;
            t->npad++;
        } else if (t->spm) {
            t->type[i] = is_byte_token(t->tok[i])         ? TT_BYTE
                         : unk && !strcmp(t->tok[i], unk) ? TT_UNKNOWN
                         : added[i] && special[i]         ? TT_CONTROL
                         : added[i]                       ? TT_USER
                                                          : TT_NORMAL;
        } else if (added[i]) {
            if (special[i] || looks_special(t->tok[i])) {
                t->type[i] = TT_CONTROL;
            } else { /* pre-normalize user-defined spaces, as the converter does */
                char *s = replace_all(t->tok[i], "\xe2\x96\x81", " ");
                free(t->tok[i]);
                t->tok[i] = s;
                t->type[i] = TT_USER;
            }
        } else {
            t->type[i] = TT_NORMAL;
        }
    }
    map_init(&map, (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        int64_t prev = map_put(&map, t->tok[i], i);
        if (prev != i) {
            rc = qt_err_set(err, QT_ERR_FORMAT,
                            "%s: token \"%s\" appears with ids %lld and %lld (llama.cpp refuses "
                            "duplicate tokens)",
                            path, t->tok[i], (long long)prev, (long long)i);
            goto done;
        }
    }

    /* merges: "a b" strings or [a, b] pairs (tokenizers >= 0.20); in pairs a space inside a
     * part is written as U+0120, as gguf-py does */
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    int nm = cJSON_GetArraySize(merges);
    char **ms = calloc((size_t)nm + 1, sizeof *ms);
    char **joined = calloc((size_t)nm + 1, sizeof *joined); /* a + b, for the spm scores */
    QT_CHECK(ms && joined, "out of memory");
    int k = 0;
    cJSON_ArrayForEach(v, merges) {
        if (cJSON_IsString(v)) {
            ms[k] = xstrdup(v->valuestring);
            const char *sp = strchr(v->valuestring + (v->valuestring[0] ? 1 : 0), ' ');
            if (sp) {
                size_t la = (size_t)(sp - v->valuestring);
                joined[k] = malloc(strlen(v->valuestring));
                QT_CHECK(joined[k], "out of memory");
                memcpy(joined[k], v->valuestring, la);
                strcpy(joined[k] + la, sp + 1);
            }
        } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(v, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(v, 1))) {
            const char *a = cJSON_GetArrayItem(v, 0)->valuestring;
            const char *b = cJSON_GetArrayItem(v, 1)->valuestring;
            char *ea = replace_all(a, " ", "\xc4\xa0"), *eb = replace_all(b, " ", "\xc4\xa0");
            ms[k] = malloc(strlen(ea) + strlen(eb) + 2);
            joined[k] = malloc(strlen(a) + strlen(b) + 1);
            QT_CHECK(ms[k] && joined[k], "out of memory");
            sprintf(ms[k], "%s %s", ea, eb);
            sprintf(joined[k], "%s%s", a, b);
            free(ea), free(eb);
        } else {
            for (int j = 0; j < k; j++) free(ms[j]), free(joined[j]);
            free(ms), free(joined);
            rc = qt_err_set(err, QT_ERR_FORMAT,
                            "%s: model.merges[%d] is neither \"a b\" nor "
                            "[\"a\", \"b\"]",
                            path, k);
            goto done;
        }
        k++;
    }
    if (t->spm) {
        /* llama.cpp's sentencepiece tokenizer merges the adjacent pair whose result scores
         * highest: the score of a token is minus the rank of the first merge that makes it, so
         * merges apply in the BPE order (tokens no merge makes rank after every merge) */
        t->score = calloc((size_t)n, sizeof *t->score);
        QT_CHECK(t->score, "out of memory");
        bool *scored = calloc((size_t)n, 1);
        QT_CHECK(scored, "out of memory");
        for (int j = 0; j < k; j++) {
            int64_t id = joined[j] ? map_get(&map, joined[j]) : -1;
            if (id >= 0 && !scored[id]) t->score[id] = -(float)j, scored[id] = true;
        }
        for (int64_t i = 0; i < n; i++)
            if (t->type[i] == TT_NORMAL && !scored[i])
                t->score[i] = -(float)(k + i);
            else if (t->type[i] != TT_NORMAL)
                t->score[i] = 0;
        free(scored);
        for (int j = 0; j < k; j++) free(ms[j]);
        free(ms);
        snprintf(t->pre, sizeof t->pre, "default");
    } else {
        t->merges = ms, t->nmerges = k;
        if (!k) {
            rc = qt_err_set(err, QT_ERR_FORMAT,
                            "%s: a byte-level BPE tokenizer without merges (llama.cpp needs "
                            "tokenizer.ggml.merges)",
                            path);
            for (int j = 0; j < k + 1; j++) free(joined[j]);
            free(joined);
            goto done;
        }
        bool bl_regex = false;
        const char *re =
            pre_split_regex(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &bl_regex);
        if (re && !strcmp(re, RE_LLAMA3))
            snprintf(t->pre, sizeof t->pre, "llama-bpe");
        else if (re && !strcmp(re, RE_QWEN2))
            snprintf(t->pre, sizeof t->pre, "qwen2");
        else if (!re && bl_regex)
            snprintf(t->pre, sizeof t->pre, "gpt-2");
        else {
            snprintf(t->pre, sizeof t->pre, "default");
            if (report)
                fprintf(report,
                        "note: the pre-tokenizer is none llama.cpp names (Llama 3, Qwen2, GPT-2): "
                        "tokenizer.ggml.pre \"default\"; llama.cpp may split text differently\n");
        }
    }
    for (int j = 0; j < k; j++) free(joined[j]);
    free(joined);

    /* special tokens and add_bos/add_eos, in gguf-py SpecialVocab's order: tokenizer.json's
     * post-processor, tokenizer_config.json (ids of its *_token contents among the added
     * tokens; its add_*_token flags win), then config.json's *_token_id for the rest */
    cJSON *tc = read_json(dir, "tokenizer_config.json", &missing, err);
    if (!tc && !missing) {
        rc = err->code;
        goto done;
    }
    template_adds(cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                  tc ? config_token(tc, "bos") : NULL, tc ? config_token(tc, "eos") : NULL,
                  tc != NULL, t);
    if (tc) {
        for (int s = 0; s < SP_N; s++) {
            char key[32];
            snprintf(key, sizeof key, "add_%s_token", sp_names[s]);
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(tc, key);
            if (cJSON_IsBool(a) && s == SP_BOS) t->add_bos = cJSON_IsTrue(a);
            if (cJSON_IsBool(a) && s == SP_EOS) t->add_eos = cJSON_IsTrue(a);
            const char *content = config_token(tc, sp_names[s]);
            int64_t id = content ? added_id(addl, content) : -1;
            if (id >= 0 && id < n) t->sp[s] = id;
        }
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(tc, "add_prefix_space");
        if (cJSON_IsBool(ap)) t->add_prefix = cJSON_IsTrue(ap);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
        if (cJSON_IsString(ct)) {
            t->chat = xstrdup(ct->valuestring);
        } else if (cJSON_IsArray(ct)) {
            const cJSON *c;
            cJSON_ArrayForEach(c, ct) {
                const char *name = json_str(c, "name"), *text = json_str(c, "template");
                if (!name || !*name || !text) continue;
                if (!strcmp(name, "default")) {
                    free(t->chat);
                    t->chat = xstrdup(text);
                    continue;
                }
                t->tmpl_name = realloc(t->tmpl_name, (size_t)(t->ntmpl + 1) * sizeof(char *));
                t->tmpl_text = realloc(t->tmpl_text, (size_t)(t->ntmpl + 1) * sizeof(char *));
                QT_CHECK(t->tmpl_name && t->tmpl_text, "out of memory");
                char *nm2 = xstrdup(name);
                for (char *p = nm2; *p; p++)
                    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                          (*p >= '0' && *p <= '9')))
                        *p = '_';
                t->tmpl_name[t->ntmpl] = nm2;
                t->tmpl_text[t->ntmpl++] = xstrdup(text);
            }
        } else { /* newer transformers save it beside: chat_template.jinja / .json */
            snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
            t->chat = qt_read_file(path, NULL);
            if (!t->chat) {
                cJSON *cj = read_json(dir, "chat_template.json", &missing, err);
                if (cj && json_str(cj, "chat_template"))
                    t->chat = xstrdup(json_str(cj, "chat_template"));
                cJSON_Delete(cj);
            }
        }
        cJSON_Delete(tc);
    }
    cJSON *cfg = read_json(dir, "config.json", &missing, err);
    if (cfg) {
        for (int s = 0; s < SP_N; s++) {
            char key[32];
            snprintf(key, sizeof key, "%s_token_id", sp_names[s]);
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(cfg, key);
            if (t->sp[s] < 0 && cJSON_IsNumber(id) && id->valuedouble >= 0 &&
                id->valuedouble < (double)n && id->valuedouble == floor(id->valuedouble))
                t->sp[s] = (int64_t)id->valuedouble;
        }
        cJSON_Delete(cfg);
    }
    if (t->add_bos == 1 && t->sp[SP_BOS] < 0) t->add_bos = -1; /* llama.cpp refuses it */
    if (t->add_eos == 1 && t->sp[SP_EOS] < 0) t->add_eos = -1;
done:
    map_free(&map);
    free(added), free(special);
    cJSON_Delete(root);
    if (rc) tok_free(t);
    return rc;
}

static void tok_write(qt_gguf_writer *w, const gg_tok *t, bool llama_arch) {
    /* LlamaModel.set_vocab writes add_space_prefix first, when tokenizer_config.json says */
    if (llama_arch && t->add_prefix >= 0)
        qt_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", t->add_prefix);
    qt_gguf_set_str(w, "tokenizer.ggml.model", t->spm ? "llama" : "gpt2");
    qt_gguf_set_str(w, "tokenizer.ggml.pre", t->pre);
    qt_gguf_set_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)t->tok, (uint64_t)t->n);
    if (t->spm) qt_gguf_set_arr(w, "tokenizer.ggml.scores", QT_GV_F32, t->score, (uint64_t)t->n);
    qt_gguf_set_arr(w, "tokenizer.ggml.token_type", QT_GV_I32, t->type, (uint64_t)t->n);
    if (!t->spm)
        qt_gguf_set_str_arr(w, "tokenizer.ggml.merges", (const char *const *)t->merges,
                            (uint64_t)t->nmerges);
    for (int s = 0; s < SP_N; s++)
        if (t->sp[s] >= 0) qt_gguf_set_u32(w, sp_keys[s], (uint32_t)t->sp[s]);
    if (t->add_bos >= 0) qt_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", t->add_bos);
    if (t->add_eos >= 0) qt_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", t->add_eos);
    for (int i = 0; i < t->ntmpl; i++) {
        char key[160];
        snprintf(key, sizeof key, "tokenizer.chat_template.%s", t->tmpl_name[i]);
        qt_gguf_set_str(w, key, t->tmpl_text[i]);
    }
    if (t->ntmpl)
        qt_gguf_set_str_arr(w, "tokenizer.chat_templates", (const char *const *)t->tmpl_name,
                            (uint64_t)t->ntmpl);
    if (t->chat) qt_gguf_set_str(w, "tokenizer.chat_template", t->chat);
}

/* ---- tensor types: llama-quant.cpp's llama_tensor_get_type for these file types ------------ */

typedef enum { C_EMBD, C_OUTPUT, C_Q, C_K, C_V, C_O, C_GATE, C_UP, C_DOWN } tcat;

static int blk_of(uint32_t type) {
    return type == QT_GGML_F16 || type == QT_GGML_F32 ? 1 : qt_gguf_block_elems((qt_gguf_type)type);
}

static bool use_more_bits(int64_t i, int64_t n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* the type of a 2-D tensor with rows of ncols; *note explains a departure from the mix */
static uint32_t mix_type(qt_export_format f, tcat c, int64_t layer, int64_t nlayers, int64_t ncols,
                         bool tied, const char **note) {
    *note = NULL;
    if (f == QT_EXPORT_GGUF_F16) return QT_GGML_F16;
    uint32_t def = f == QT_EXPORT_GGUF_Q8_0   ? QT_GGML_Q8_0
                   : f == QT_EXPORT_GGUF_Q4_0 ? QT_GGML_Q4_0
                                              : QT_GGML_Q4_K;
    uint32_t t = def;
    if (c == C_OUTPUT || (tied && c == C_EMBD)) {
        if (ncols % blk_of(def))
            t = QT_GGML_Q8_0;
        else if (def != QT_GGML_Q8_0)
            t = QT_GGML_Q6_K;
    } else if (f == QT_EXPORT_GGUF_Q4_K_M && (c == C_V || c == C_DOWN) &&
               use_more_bits(layer, nlayers)) {
        t = QT_GGML_Q6_K;
    }
    if (ncols % blk_of(t)) { /* tensor_type_fallback */
        if (t == QT_GGML_Q4_K) {
            t = QT_GGML_Q8_0;
            *note = "fallback: rows not of 256 (llama.cpp: Q5_0, which qtune has no codec for)";
        } else if (t == QT_GGML_Q6_K) {
            t = QT_GGML_Q8_0;
            *note = "fallback: rows not of 256 (as llama.cpp)";
        }
        if (ncols % blk_of(t)) {
            t = QT_GGML_F16;
            *note = "fallback: rows not of 32 (llama.cpp cannot quantize it)";
        }
    }
    return t;
}

static uint32_t fq_ggml_type(const qt_fq_format *f) {
    if (!f) return 0;
    switch (f->kind) {
    case QT_FQ_Q4_0:
        return QT_GGML_Q4_0;
    case QT_FQ_Q8_0:
        return QT_GGML_Q8_0;
    case QT_FQ_Q4_K:
        return QT_GGML_Q4_K;
    default:
        return 0;
    }
}

/* ---- writing tensors --------------------------------------------------------------------- */

typedef struct {
    qt_gguf_writer *w;
    FILE *report;
    double worst;
    char worst_name[96];
    int nqat, nfallback;
} gg_out;

/* the Q/K row permutation of llama.cpp's converter (LlamaModel.permute): within each head the
 * rows [0, hd/2) and [hd/2, hd) interleave, new row 2i + j = old row j·hd/2 + i */
static void permute_rows(float *x, int64_t rows, int64_t cols, int64_t nhead) {
    int64_t hd = rows / nhead, half = hd / 2;
    QT_CHECK(hd * nhead == rows && half * 2 == hd, "permute: %lld rows over %lld heads",
             (long long)rows, (long long)nhead);
    float *tmp = malloc((size_t)(hd * cols) * sizeof *tmp);
    QT_CHECK(tmp, "out of memory");
    for (int64_t h = 0; h < nhead; h++) {
        float *head = x + h * hd * cols;
        for (int64_t i = 0; i < half; i++)
            for (int64_t j = 0; j < 2; j++)
                memcpy(tmp + (2 * i + j) * cols, head + (j * half + i) * cols,
                       (size_t)cols * sizeof *tmp);
        memcpy(head, tmp, (size_t)(hd * cols) * sizeof *tmp);
    }
    free(tmp);
}

/* Encodes v ([rows, cols] f32, rows = 1 for 1-D) as type and adds it; the report compares the
 * file's values with ref (the weight the model computes with; NULL: v). */
static int put_tensor(gg_out *g, const char *name, uint32_t type, int ndim, int64_t rows,
                      int64_t cols, const float *v, const float *ref, const char *note,
                      qt_err *err) {
    int64_t n = rows * cols;
    size_t nbytes = qt_ggml_nbytes(type, (uint64_t)n);
    QT_CHECK(nbytes > 0, "%s: %s of %lld elements", name, qt_ggml_type_name(type), (long long)n);
    void *data = malloc(nbytes);
    float *dq = malloc((size_t)n * sizeof *dq);
    QT_CHECK(data && dq, "out of memory");
    if (type == QT_GGML_F32) {
        memcpy(data, v, nbytes);
        memcpy(dq, v, nbytes);
    } else if (type == QT_GGML_F16) {
        uint16_t *h = data;
        for (int64_t i = 0; i < n; i++) h[i] = qt_f32_to_f16(v[i]), dq[i] = qt_f16_to_f32(h[i]);
    } else { /* row by row (blocks never cross rows), rows in parallel: the same bytes */
        size_t rb = qt_ggml_nbytes(type, (uint64_t)cols);
        QT_CHECK(rb > 0, "%s: rows of %lld are not whole %s blocks", name, (long long)cols,
                 qt_ggml_type_name(type));
        int bad = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(| : bad)
        for (int64_t r = 0; r < rows; r++) {
            uint8_t *q = (uint8_t *)data + (size_t)r * rb;
            bad |= qt_gguf_quantize_row((qt_gguf_type)type, v + r * cols, q, cols) != 0;
            bad |= qt_gguf_dequantize_row((qt_gguf_type)type, q, dq + r * cols, cols) != 0;
        }
        QT_CHECK(!bad, "%s: %s quantization", name, qt_ggml_type_name(type));
    }
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    int rc = qt_gguf_add_tensor(g->w, name, type, (uint32_t)ndim, dims, data, nbytes, err);
    if (note && !strncmp(note, "fallback", 8)) g->nfallback++;
    if (!rc && ndim == 2) {
        if (!ref) ref = v;
        double e = 0, s = 0;
        for (int64_t i = 0; i < n; i++) {
            double d = (double)dq[i] - ref[i];
            e += d * d, s += (double)ref[i] * ref[i];
        }
        double rel = s > 0 ? sqrt(e / s) : sqrt(e);
        if (g->report)
            fprintf(g->report, "  %-28s %-4s relative error %.3e%s%s\n", name,
                    qt_ggml_type_name(type), rel, note ? "  " : "", note ? note : "");
        if (rel > g->worst || !g->worst_name[0])
            g->worst = fmax(g->worst, rel),
            snprintf(g->worst_name, sizeof g->worst_name, "%s", name);
    }
    free(data), free(dq);
    return rc;
}

static float *download(qt_ctx *ctx, const qt_tensor *p, const char *what) {
    QT_CHECK(p->dtype == QT_F32, "GGUF export: %s is not f32", what);
    float *v = malloc(qt_nbytes(p));
    QT_CHECK(v, "out of memory");
    qt_tensor_download(ctx, p, v);
    return v;
}

static int put_1d(gg_out *g, qt_ctx *ctx, const char *name, const qt_tensor *p,
                  int64_t permute_heads, qt_err *err) {
    float *v = download(ctx, p, name);
    int64_t n = qt_numel(p);
    if (permute_heads) permute_rows(v, n, 1, permute_heads);
    int rc = put_tensor(g, name, QT_GGML_F32, 1, 1, n, v, NULL, NULL, err);
    free(v);
    return rc;
}

/* llama.cpp's rope_freqs for llama3 scaling (LlamaModel.generate_extra_tensors): per frequency
 * the factor its RoPE divides the angle by, computed in f32 as torch does there */
void qt_gguf_llama3_rope_factors(float *out, const qt_model_config *c) {
    int64_t hd = c->head_dim;
    float *freq = malloc((size_t)(hd / 2) * sizeof *freq);
    QT_CHECK(freq, "out of memory");
    qt_rope_inv_freq(freq, (int)hd, c->rope_theta, NULL);
    const float factor = (float)c->rope.factor, lo = (float)c->rope.low_freq_factor;
    const double old_ctx = (double)c->rope.original_max_position_embeddings;
    const double lo_wavelen = old_ctx / c->rope.low_freq_factor,
                 hi_wavelen = old_ctx / c->rope.high_freq_factor;
    for (int64_t i = 0; i < hd / 2; i++) {
        /* torch: 2*pi / freq = reciprocal(freq) * 2pi, all f32 */
        volatile float r = 1.0f / freq[i];
        float wavelen = r * (float)6.283185307179586; /* 2 * math.pi */
        if (wavelen < (float)hi_wavelen) {
            out[i] = 1;
        } else if (wavelen > (float)lo_wavelen) {
            out[i] = factor;
        } else {
            volatile float rw = 1.0f / wavelen;
            volatile float q = rw * (float)old_ctx;
            volatile float smooth =
                (q - lo) / (float)(c->rope.high_freq_factor - c->rope.low_freq_factor);
            volatile float a = (1.0f - smooth) / factor;
            volatile float b = a + smooth;
            out[i] = 1.0f / b;
        }
    }
    free(freq);
}

/* ---- the export -------------------------------------------------------------------------- */

int qt_export_gguf(qt_ctx *ctx, qt_llama *m, const qt_export_opts *o, qt_err *err) {
    const qt_model_config *c = &m->cfg;
    qt_export_format f = o->format;
    if (f != QT_EXPORT_GGUF_F16 && f != QT_EXPORT_GGUF_Q8_0 && f != QT_EXPORT_GGUF_Q4_0 &&
        f != QT_EXPORT_GGUF_Q4_K_M)
        return qt_err_set(err, QT_ERR_ARG, "export: unknown format %d", (int)f);
    if (!o->out || !*o->out) return qt_err_set(err, QT_ERR_ARG, "GGUF export: no output file");
    const char *arch = c->arch == QT_ARCH_QWEN2 ? "qwen2" : "llama";
    bool permute = c->arch != QT_ARCH_QWEN2;
    bool llama3 = c->rope.type == QT_ROPE_LLAMA3;
    if (llama3 && c->arch == QT_ARCH_QWEN2)
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "GGUF export: llama.cpp's qwen2 has no llama3 rope scaling");
    if (c->vocab > UINT32_MAX || c->layers > UINT32_MAX)
        return qt_err_set(err, QT_ERR_ARG, "GGUF export: model too large for u32 metadata");

    gg_tok tok;
    memset(&tok, 0, sizeof tok);
    if (!o->gguf_no_tokenizer) {
        if (!o->base_dir)
            return qt_err_set(err, QT_ERR_ARG, "GGUF export: no base model directory");
        int rc = tok_load(&tok, o->base_dir, c->vocab, o->report, err);
        if (rc) return rc;
    }

    static const uint32_t ftypes[] = {[QT_EXPORT_GGUF_F16] = 1,
                                      [QT_EXPORT_GGUF_Q8_0] = 7,
                                      [QT_EXPORT_GGUF_Q4_0] = 2,
                                      [QT_EXPORT_GGUF_Q4_K_M] = 15};
    gg_out g = {.w = qt_gguf_writer_new(32), .report = o->report};
    qt_gguf_writer *w = g.w;
    char key[128], name[96];
#define AK(k) (snprintf(key, sizeof key, "%s." k, arch), key)
    qt_gguf_set_str(w, "general.architecture", arch);
    qt_gguf_set_str(w, "general.type", "model");
    {
        char base[256] = "qtune-export";
        if (o->base_dir && *o->base_dir) {
            snprintf(base, sizeof base, "%s", o->base_dir);
            size_t l = strlen(base);
            while (l > 1 && base[l - 1] == '/') base[--l] = 0;
            const char *s = strrchr(base, '/');
            if (s && s[1]) memmove(base, s + 1, strlen(s + 1) + 1);
        }
        qt_gguf_set_str(w, "general.name", base);
    }
    qt_gguf_set_u32(w, AK("block_count"), (uint32_t)c->layers);
    qt_gguf_set_u32(w, AK("context_length"), (uint32_t)c->max_pos);
    qt_gguf_set_u32(w, AK("embedding_length"), (uint32_t)c->hidden);
    qt_gguf_set_u32(w, AK("feed_forward_length"), (uint32_t)c->ffn);
    qt_gguf_set_u32(w, AK("attention.head_count"), (uint32_t)c->heads);
    qt_gguf_set_u32(w, AK("attention.head_count_kv"), (uint32_t)c->kv_heads);
    qt_gguf_set_f32(w, AK("rope.freq_base"), (float)c->rope_theta);
    qt_gguf_set_f32(w, AK("attention.layer_norm_rms_epsilon"), (float)c->rms_eps);
    if (c->head_dim * c->heads != c->hidden) {
        qt_gguf_set_u32(w, AK("attention.key_length"), (uint32_t)c->head_dim);
        qt_gguf_set_u32(w, AK("attention.value_length"), (uint32_t)c->head_dim);
    }
    qt_gguf_set_u32(w, "general.file_type", ftypes[f]);
    qt_gguf_set_u32(w, AK("vocab_size"), (uint32_t)c->vocab);
    qt_gguf_set_u32(w, AK("rope.dimension_count"), (uint32_t)c->head_dim);
    qt_gguf_set_u32(w, "general.quantization_version", 2);
    if (o->gguf_no_tokenizer)
        qt_gguf_set_str(w, "tokenizer.ggml.model", "none");
    else
        tok_write(w, &tok, c->arch != QT_ARCH_QWEN2);
#undef AK
    if (o->report) {
        fprintf(o->report,
                "gguf: %s %s; per 2-D tensor its type and the relative error of its "
                "values against the merged weight\n",
                arch,
                f == QT_EXPORT_GGUF_F16    ? "F16"
                : f == QT_EXPORT_GGUF_Q8_0 ? "Q8_0"
                : f == QT_EXPORT_GGUF_Q4_0 ? "Q4_0"
                                           : "Q4_K_M");
        if (!o->gguf_no_tokenizer && tok.npad)
            fprintf(o->report,
                    "note: %d ids the tokenizer does not define written as [PADi] "
                    "(unused)\n",
                    tok.npad);
        if (c->sliding_window > 0 && c->sliding_window < c->max_pos)
            fprintf(o->report,
                    "note: llama.cpp's llama architecture attends without mistral's sliding "
                    "window of %lld\n",
                    (long long)c->sliding_window);
    }

    int rc = QT_OK;
    if (llama3) {
        float *fac = malloc((size_t)(c->head_dim / 2) * sizeof *fac);
        QT_CHECK(fac, "out of memory");
        qt_gguf_llama3_rope_factors(fac, c);
        rc = put_tensor(&g, "rope_freqs.weight", QT_GGML_F32, 1, 1, c->head_dim / 2, fac, NULL,
                        NULL, err);
        free(fac);
    }
    const char *note;
    if (!rc) {
        float *e = download(ctx, m->embed, "token_embd");
        uint32_t t = mix_type(f, C_EMBD, 0, c->layers, c->hidden, c->tie_embeddings, &note);
        rc = put_tensor(&g, "token_embd.weight", t, 2, c->vocab, c->hidden, e, NULL, note, err);
        free(e);
    }
    static const char *gg_names[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                      "ffn_gate", "ffn_up", "ffn_down"};
    static const tcat cats[7] = {C_Q, C_K, C_V, C_O, C_GATE, C_UP, C_DOWN};
    for (int64_t i = 0; i < c->layers && !rc; i++) {
        qt_llama_layer *Ly = &m->layer[i];
        snprintf(name, sizeof name, "blk.%lld.attn_norm.weight", (long long)i);
        rc = put_1d(&g, ctx, name, Ly->in_norm, 0, err);
        qt_linear *ls[7] = {&Ly->q, &Ly->k, &Ly->v, &Ly->o, &Ly->gate, &Ly->up, &Ly->down};
        for (int j = 0; j < 7 && !rc; j++) {
            if (j == 4) { /* ffn_norm between the attention and MLP groups, as the converter */
                snprintf(name, sizeof name, "blk.%lld.ffn_norm.weight", (long long)i);
                if ((rc = put_1d(&g, ctx, name, Ly->post_norm, 0, err))) break;
            }
            qt_linear *l = ls[j];
            int64_t nhead = !permute ? 0 : j == 0 ? c->heads : j == 1 ? c->kv_heads : 0;
            int64_t n = l->out * l->in;
            float *ref = malloc((size_t)n * sizeof *ref);
            QT_CHECK(ref, "out of memory");
            qt_linear_merged(ctx, l, ref);
            uint32_t t = mix_type(f, cats[j], i, c->layers, l->in, false, &note);
            float *v = ref;
            uint32_t qt = fq_ggml_type(l->wq);
            if (f != QT_EXPORT_GGUF_F16 && qt && l->in % blk_of(qt) == 0) {
                /* QAT against a GGUF block format: its blocks, from the weight the fake-quant
                 * quantized (the merge without the fake-quant), in the format it trained for */
                qt_linear pre = *l;
                pre.wq = NULL;
                v = malloc((size_t)n * sizeof *v);
                QT_CHECK(v, "out of memory");
                qt_linear_merged(ctx, &pre, v);
                note = t == qt ? "QAT: the trained blocks"
                               : "QAT: the trained format instead of the mix's";
                t = qt;
                g.nqat++;
            }
            if (nhead) {
                permute_rows(ref, l->out, l->in, nhead);
                if (v != ref) permute_rows(v, l->out, l->in, nhead);
            }
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)i, gg_names[j]);
            rc = put_tensor(&g, name, t, 2, l->out, l->in, v, ref, note, err);
            if (v != ref) free(v);
            free(ref);
            if (!rc && l->bias) {
                snprintf(name, sizeof name, "blk.%lld.%s.bias", (long long)i, gg_names[j]);
                rc = put_1d(&g, ctx, name, l->bias, nhead, err);
            }
        }
    }
    if (!rc) rc = put_1d(&g, ctx, "output_norm.weight", m->norm, 0, err);
    if (!rc && !c->tie_embeddings) {
        float *e = download(ctx, m->lm_head, "output");
        uint32_t t = mix_type(f, C_OUTPUT, 0, c->layers, c->hidden, false, &note);
        rc = put_tensor(&g, "output.weight", t, 2, c->vocab, c->hidden, e, NULL, note, err);
        free(e);
    }
    if (!rc && o->report) {
        fprintf(o->report, "merge: worst relative error %.3e (%s) from %s\n", g.worst, g.worst_name,
                f == QT_EXPORT_GGUF_F16 ? "F16 rounding" : "GGUF quantization");
        if (g.nfallback)
            fprintf(o->report,
                    "note: %d tensors took llama.cpp's fallback type (rows not whole blocks of the "
                    "mix's type)\n",
                    g.nfallback);
        if (g.nqat)
            fprintf(o->report,
                    "QAT: %d linear weights written in the block format they were trained "
                    "against (their values are the training forward's, bit for bit)\n",
                    g.nqat);
    }
    if (!rc) rc = qt_gguf_write(w, o->out, err);
    qt_gguf_writer_free(w);
    if (!o->gguf_no_tokenizer) tok_free(&tok);
    return rc;
}
