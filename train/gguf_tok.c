/* gguf_tok.c - a qt_tok from a GGUF file's tokenizer.ggml.* metadata, built as the
 * tokenizer.json it stands for (then read by data/'s own loader, qt_tok_load_json), so that
 * the vocabulary train/export_gguf.c wrote from a tokenizer.json encodes as that file does:
 *   "gpt2"   byte-level BPE: vocab by id, tokenizer.ggml.merges in order; the pre-tokenizer
 *            tokenizer.ggml.pre names: "llama-bpe" (Llama 3's Split regex, then ByteLevel
 *            without its own regex; merges ignored for whole-token pieces, as llama.cpp does
 *            for it), "qwen2" (Qwen2's regex), "gpt-2" / "default" (ByteLevel with GPT-2's
 *            regex; "default" is what the exporter writes for a pre-tokenizer it cannot name,
 *            so GPT-2's is a guess); ByteLevel decoding.
 *   "llama"  sentencepiece-style BPE with byte fallback and fused unk: the merges rebuilt from
 *            the scores, every split of a normal token into two normal tokens ranked by the
 *            token's score (highest first; then by the parts' ids, as transformers'
 *            SentencePieceExtractor orders them), which is the order llama.cpp's tokenizer
 *            merges in; the normal tokens that the exporter scored -(merges + id) (no merge makes
 *            them) get none. add_space_prefix (default true) is the legacy Llama 2 normalizer,
 *            Prepend("▁") then Replace(" ", "▁"); decoding replaces ▁, fuses byte tokens and
 *            strips the prefix space.
 * Control and unknown tokens become special added tokens, user-defined ones plain added
 * tokens (normalized); unused ids ([PADi]) are left out. The post-processor puts BOS / EOS
 * around the text as add_bos_token / add_eos_token say (when absent: BOS for "llama", as
 * llama.cpp defaults; nothing for "gpt2"). What GGUF cannot say is lost: added tokens' lstrip /
 * rstrip / single_word flags, a Metaspace pre-tokenizer's prepend_scheme, Unicode normalizers. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/gguf.h"
#include "train/gguf_model.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

static const char *RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *RE_QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                              "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- a growing text buffer ----------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) {
    put(b, s, strlen(s));
}

/* s as a JSON string literal */
static void put_json(sbuf *b, const char *s) {
    put(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(b, run, (size_t)(s - run));
        char esc[8];
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof esc, "\\%c", c);
        else
            snprintf(esc, sizeof esc, "\\u%04x", c);
        puts_(b, esc);
        run = s + 1;
    }
    put(b, run, (size_t)(s - run));
    put(b, "\"", 1);
}

/* ---- reading the metadata ---------------------------------------------------------------- */

typedef struct {
    const char *path;
    bool spm;
    const char *pre;
    int64_t n;
    char **tok;    /* [n] */
    int32_t *type; /* [n] */
    float *score;  /* [n] or NULL */
    char **merges; /* gpt2 */
    int64_t nmerges;
    int64_t bos, eos, unk;
    int add_bos, add_eos, add_space; /* -1: not stated */
} gtok;

static void gtok_free(gtok *t) {
    for (int64_t i = 0; t->tok && i < t->n; i++) free(t->tok[i]);
    for (int64_t i = 0; t->merges && i < t->nmerges; i++) free(t->merges[i]);
    free(t->tok), free(t->type), free(t->score), free(t->merges);
    memset(t, 0, sizeof *t);
}

/* a string array's elements as NUL-terminated copies (the reader has checked the bounds) */
static int str_array(const char *path, const qt_gguf_kv *kv, char ***out, qt_err *err) {
    if (kv->type != QT_GV_ARRAY || kv->arr_type != QT_GV_STRING)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is not an array of strings", path,
                          kv->key);
    char **v = calloc((size_t)kv->n + 1, sizeof *v);
    if (!v) return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", path);
    *out = v;
    const uint8_t *p = kv->arr;
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t len;
        memcpy(&len, p, 8);
        if (memchr(p + 8, 0, (size_t)len))
            return qt_err_set(err, QT_ERR_FORMAT, "%s: %s[%llu] holds a NUL byte", path, kv->key,
                              (unsigned long long)i);
        if (!(v[i] = malloc((size_t)len + 1)))
            return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", path);
        memcpy(v[i], p + 8, (size_t)len);
        v[i][len] = 0;
        p += 8 + len;
    }
    return QT_OK;
}

/* a numeric array of exactly n elements of type t, copied */
static int num_array(const char *path, const qt_gguf_kv *kv, qt_gguf_vtype t, int64_t n, void **out,
                     qt_err *err) {
    if (kv->type != QT_GV_ARRAY || kv->arr_type != t || kv->n != (uint64_t)n)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is not an array of %lld %s", path,
                          kv->key, (long long)n, qt_gguf_vtype_name(t));
    *out = malloc((size_t)(n ? n : 1) * 4);
    if (!*out) return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", path);
    memcpy(*out, kv->arr, (size_t)n * 4);
    return QT_OK;
}

static int opt_id(const qt_gguf_file *f, const char *key, int64_t n, int64_t *out, qt_err *err) {
    const qt_gguf_kv *kv = qt_gguf_kv_find(f, key);
    *out = -1;
    if (!kv) return QT_OK;
    bool uns = kv->type == QT_GV_U32 || kv->type == QT_GV_U64 || kv->type == QT_GV_U16 ||
               kv->type == QT_GV_U8;
    bool sig = kv->type == QT_GV_I32 || kv->type == QT_GV_I64 || kv->type == QT_GV_I16 ||
               kv->type == QT_GV_I8;
    int64_t id = uns ? (kv->v.u > (uint64_t)INT64_MAX ? -1 : (int64_t)kv->v.u) : sig ? kv->v.i : -2;
    if (id == -2)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is a %s, not a token id", f->path,
                          key, qt_gguf_vtype_name(kv->type));
    if (id < 0 || id >= n)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' = %lld is outside the %lld tokens",
                          f->path, key, (long long)id, (long long)n);
    *out = id;
    return QT_OK;
}

static int opt_bool(const qt_gguf_file *f, const char *key) {
    const qt_gguf_kv *kv = qt_gguf_kv_find(f, key);
    return kv && kv->type == QT_GV_BOOL ? (kv->v.u != 0) : -1;
}

static int read_tok(const qt_gguf_file *f, gtok *t, qt_err *err) {
    memset(t, 0, sizeof *t);
    t->path = f->path;
    const qt_gguf_kv *m = qt_gguf_kv_find(f, "tokenizer.ggml.model");
    if (!m || m->type != QT_GV_STRING)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: metadata 'tokenizer.ggml.model' is %s: no tokenizer", f->path,
                          m ? "not a string" : "missing");
    if (!strcmp(m->str, "none"))
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: has no vocabulary (tokenizer.ggml.model \"none\", as exported "
                          "with --no-tokenizer): it can be evaluated on token ids, not on text",
                          f->path);
    if (strcmp(m->str, "gpt2") && strcmp(m->str, "llama"))
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: tokenizer.ggml.model \"%s\" is not supported (gpt2, llama)", f->path,
                          m->str);
    t->spm = !strcmp(m->str, "llama");
    const qt_gguf_kv *pre = qt_gguf_kv_find(f, "tokenizer.ggml.pre");
    t->pre = pre && pre->type == QT_GV_STRING ? pre->str : "default";
    const qt_gguf_kv *tk = qt_gguf_kv_find(f, "tokenizer.ggml.tokens");
    if (!tk)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata 'tokenizer.ggml.tokens' is missing",
                          f->path);
    int rc = str_array(f->path, tk, &t->tok, err);
    t->n = (int64_t)tk->n;
    if (rc) return rc;
    const qt_gguf_kv *ty = qt_gguf_kv_find(f, "tokenizer.ggml.token_type");
    if (ty) {
        if ((rc = num_array(f->path, ty, QT_GV_I32, t->n, (void **)&t->type, err))) return rc;
    } else {
        if (!(t->type = malloc((size_t)(t->n ? t->n : 1) * sizeof *t->type)))
            return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", f->path);
        for (int64_t i = 0; i < t->n; i++) t->type[i] = TT_NORMAL;
    }
    const qt_gguf_kv *sc = qt_gguf_kv_find(f, "tokenizer.ggml.scores");
    if (sc && (rc = num_array(f->path, sc, QT_GV_F32, t->n, (void **)&t->score, err))) return rc;
    const qt_gguf_kv *mg = qt_gguf_kv_find(f, "tokenizer.ggml.merges");
    if (!t->spm) {
        if (!mg)
            return qt_err_set(err, QT_ERR_FORMAT,
                              "%s: metadata 'tokenizer.ggml.merges' is missing (a gpt2 "
                              "vocabulary needs them)",
                              f->path);
        if ((rc = str_array(f->path, mg, &t->merges, err))) {
            t->nmerges = (int64_t)mg->n;
            return rc;
        }
        t->nmerges = (int64_t)mg->n;
    }
    if ((rc = opt_id(f, "tokenizer.ggml.bos_token_id", t->n, &t->bos, err)) ||
        (rc = opt_id(f, "tokenizer.ggml.eos_token_id", t->n, &t->eos, err)) ||
        (rc = opt_id(f, "tokenizer.ggml.unknown_token_id", t->n, &t->unk, err)))
        return rc;
    t->add_bos = opt_bool(f, "tokenizer.ggml.add_bos_token");
    t->add_eos = opt_bool(f, "tokenizer.ggml.add_eos_token");
    t->add_space = opt_bool(f, "tokenizer.ggml.add_space_prefix");
    return QT_OK;
}

/* ---- the sentencepiece-style merges ------------------------------------------------------- */

typedef struct {
    const char **key;
    size_t *len;
    int32_t *val;
    size_t cap;
} smap;

static uint64_t hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static int32_t smap_get(const smap *m, const char *s, size_t n) {
    for (size_t i = (size_t)hash(s, n) & (m->cap - 1); m->key[i]; i = (i + 1) & (m->cap - 1))
        if (m->len[i] == n && !memcmp(m->key[i], s, n)) return m->val[i];
    return -1;
}

typedef struct {
    float score;
    int32_t t, a, b;
} spm_merge;

/* highest score first; one token's pairs by (left id, right id) */
static int merge_cmp(const void *x, const void *y) {
    const spm_merge *p = x, *q = y;
    if (p->score != q->score) return p->score > q->score ? -1 : 1;
    if (p->t != q->t) return p->t < q->t ? -1 : 1;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

/* every (a, b) of normal tokens whose concatenation is a normal token made by merges */
static int spm_merges(const gtok *t, spm_merge **out, int64_t *nout, qt_err *err) {
    *out = NULL, *nout = 0;
    smap m = {0};
    m.cap = 16;
    while (m.cap < 2 * (size_t)t->n + 16) m.cap *= 2;
    m.key = calloc(m.cap, sizeof *m.key);
    m.len = calloc(m.cap, sizeof *m.len);
    m.val = calloc(m.cap, sizeof *m.val);
    if (!m.key || !m.len || !m.val) {
        free(m.key), free(m.len), free(m.val);
        return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", t->path);
    }
    for (int64_t i = 0; i < t->n; i++) {
        if (t->type[i] != TT_NORMAL) continue;
        size_t n = strlen(t->tok[i]), k = (size_t)hash(t->tok[i], n) & (m.cap - 1);
        while (m.key[k] && !(m.len[k] == n && !memcmp(m.key[k], t->tok[i], n)))
            k = (k + 1) & (m.cap - 1);
        if (!m.key[k]) m.key[k] = t->tok[i], m.len[k] = n, m.val[k] = (int32_t)i;
    }
    /* qtune's exporter scores a token no merge makes -(merges + id): those reach the largest
     * -score - id, which scores of merge-made tokens (-rank, rank < merges) cannot */
    double top = -INFINITY;
    bool integral = t->score != NULL;
    for (int64_t i = 0; integral && i < t->n; i++)
        if (t->type[i] == TT_NORMAL) {
            integral = t->score[i] == floorf(t->score[i]);
            top = fmax(top, -(double)t->score[i] - (double)i);
        }
    int rc = QT_OK;
    size_t cap = 0;
    for (int64_t i = 0; i < t->n && !rc; i++) {
        if (t->type[i] != TT_NORMAL) continue;
        if (integral && -(double)t->score[i] - (double)i == top) continue;
        const char *s = t->tok[i];
        size_t n = strlen(s);
        for (size_t k = 1; k < n; k++) {
            if (((unsigned char)s[k] & 0xC0) == 0x80) continue; /* inside a character */
            int32_t a = smap_get(&m, s, k), b = a >= 0 ? smap_get(&m, s + k, n - k) : -1;
            if (b < 0) continue;
            if ((size_t)*nout == cap) {
                cap = cap ? 2 * cap : 1024;
                spm_merge *p = realloc(*out, cap * sizeof *p);
                if (!p) {
                    rc = qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", t->path);
                    break;
                }
                *out = p;
            }
            (*out)[(*nout)++] = (spm_merge){t->score ? t->score[i] : 0.0f, (int32_t)i, a, b};
        }
    }
    free(m.key), free(m.len), free(m.val);
    if (!rc && *nout) qsort(*out, (size_t)*nout, sizeof **out, merge_cmp);
    return rc;
}

/* ---- the tokenizer.json ------------------------------------------------------------------- */

static void put_bytelevel(sbuf *b, bool prefix, bool regex) {
    puts_(b, "{\"type\":\"ByteLevel\",\"add_prefix_space\":");
    puts_(b, prefix ? "true" : "false");
    puts_(b, ",\"trim_offsets\":true,\"use_regex\":");
    puts_(b, regex ? "true}" : "false}");
}

static void put_special(sbuf *b, const gtok *t, int64_t id, bool *first) {
    if (!*first) puts_(b, ",");
    *first = false;
    put_json(b, t->tok[id]);
    char num[32];
    snprintf(num, sizeof num, ":{\"id\":");
    puts_(b, num);
    put_json(b, t->tok[id]);
    snprintf(num, sizeof num, ",\"ids\":[%lld],\"tokens\":[", (long long)id);
    puts_(b, num);
    put_json(b, t->tok[id]);
    puts_(b, "]}");
}

static int build_json(const gtok *t, sbuf *b, qt_err *err) {
    const char *path = t->path;
    const char *re = NULL; /* the Split regex before ByteLevel, gpt2 */
    bool ignore_merges = false;
    if (!t->spm) {
        if (!strcmp(t->pre, "llama-bpe") || !strcmp(t->pre, "llama3") ||
            !strcmp(t->pre, "llama-v3"))
            re = RE_LLAMA3, ignore_merges = true; /* llama.cpp: ignore_merges for these */
        else if (!strcmp(t->pre, "qwen2"))
            re = RE_QWEN2;
        else if (strcmp(t->pre, "gpt-2") && strcmp(t->pre, "default"))
            return qt_err_set(err, QT_ERR_UNSUPPORTED,
                              "%s: tokenizer.ggml.pre \"%s\" is not supported (llama-bpe, qwen2, "
                              "gpt-2, default)",
                              path, t->pre);
    }
    bool space = t->spm ? t->add_space != 0 : t->add_space == 1;
    bool add_bos = (t->add_bos == 1 || (t->add_bos < 0 && t->spm)) && t->bos >= 0;
    bool add_eos = t->add_eos == 1 && t->eos >= 0;
    int64_t unk = t->unk;
    for (int64_t i = 0; unk < 0 && t->spm && i < t->n; i++)
        if (t->type[i] == TT_UNKNOWN) unk = i;
    char num[64];

    puts_(b, "{\"version\":\"1.0\",\"added_tokens\":[");
    bool first = true;
    for (int64_t i = 0; i < t->n; i++) {
        int ty = t->type[i];
        if (ty != TT_CONTROL && ty != TT_USER && ty != TT_UNKNOWN) continue;
        if (ty == TT_UNKNOWN && !t->spm) continue;
        bool special = ty != TT_USER;
        snprintf(num, sizeof num, "%s{\"id\":%lld,\"content\":", first ? "" : ",", (long long)i);
        puts_(b, num);
        put_json(b, t->tok[i]);
        puts_(b, ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":");
        puts_(b, special ? "false,\"special\":true}" : "true,\"special\":false}");
        first = false;
    }
    puts_(b, "],\"normalizer\":");
    if (t->spm) {
        puts_(b, "{\"type\":\"Sequence\",\"normalizers\":[");
        if (space) puts_(b, "{\"type\":\"Prepend\",\"prepend\":\"\xe2\x96\x81\"},");
        puts_(
            b,
            "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xe2\x96\x81\"}]}");
        puts_(b, ",\"pre_tokenizer\":null");
    } else {
        puts_(b, "null,\"pre_tokenizer\":");
        if (re) {
            puts_(b, "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{"
                     "\"Regex\":");
            put_json(b, re);
            puts_(b, "},\"behavior\":\"Isolated\",\"invert\":false},");
            put_bytelevel(b, false, false);
            puts_(b, "]}");
        } else {
            put_bytelevel(b, space, true);
        }
    }
    puts_(b, ",\"post_processor\":");
    if (!add_bos && !add_eos) {
        puts_(b, "null");
    } else {
        puts_(b, "{\"type\":\"TemplateProcessing\",\"single\":[");
        if (add_bos) {
            puts_(b, "{\"SpecialToken\":{\"id\":");
            put_json(b, t->tok[t->bos]);
            puts_(b, ",\"type_id\":0}},");
        }
        puts_(b, "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}");
        if (add_eos) {
            puts_(b, ",{\"SpecialToken\":{\"id\":");
            put_json(b, t->tok[t->eos]);
            puts_(b, ",\"type_id\":0}}");
        }
        puts_(b, "],\"pair\":[],\"special_tokens\":{");
        first = true;
        if (add_bos) put_special(b, t, t->bos, &first);
        if (add_eos && !(add_bos && !strcmp(t->tok[t->bos], t->tok[t->eos])))
            put_special(b, t, t->eos, &first);
        puts_(b, "}}");
    }
    puts_(b, ",\"decoder\":");
    if (t->spm) {
        puts_(b, "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{"
                 "\"String\":\"\xe2\x96\x81\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{"
                 "\"type\":\"Fuse\"}");
        if (space) puts_(b, ",{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}");
        puts_(b, "]}");
    } else {
        put_bytelevel(b, true, true);
    }
    puts_(b, ",\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":");
    if (unk >= 0)
        put_json(b, t->tok[unk]);
    else
        puts_(b, "null");
    puts_(b, ",\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":");
    puts_(b, t->spm ? "true,\"byte_fallback\":true" : "false,\"byte_fallback\":false");
    puts_(b, ",\"ignore_merges\":");
    puts_(b, ignore_merges ? "true" : "false");
    puts_(b, ",\"vocab\":{");
    first = true;
    for (int64_t i = 0; i < t->n; i++) {
        if (t->type[i] == TT_UNUSED) continue;
        if (!first) puts_(b, ",");
        first = false;
        put_json(b, t->tok[i]);
        snprintf(num, sizeof num, ":%lld", (long long)i);
        puts_(b, num);
    }
    puts_(b, "},\"merges\":[");
    if (t->spm) {
        spm_merge *ms;
        int64_t nm;
        int rc = spm_merges(t, &ms, &nm, err);
        if (rc) return rc;
        for (int64_t k = 0; k < nm; k++) {
            puts_(b, k ? ",[" : "[");
            put_json(b, t->tok[ms[k].a]);
            puts_(b, ",");
            put_json(b, t->tok[ms[k].b]);
            puts_(b, "]");
        }
        free(ms);
    } else {
        for (int64_t k = 0; k < t->nmerges; k++) {
            if (k) puts_(b, ",");
            put_json(b, t->merges[k]);
        }
    }
    puts_(b, "]}}");
    if (b->oom) return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", path);
    return QT_OK;
}

int qt_tok_gguf_json(const char *path, char **json, qt_err *err) {
    *json = NULL;
    qt_gguf_file f;
    int rc = qt_gguf_open(&f, path, err);
    if (rc) return rc;
    gtok t;
    sbuf b = {0};
    rc = read_tok(&f, &t, err);
    if (!rc) rc = build_json(&t, &b, err);
    gtok_free(&t);
    qt_gguf_close(&f);
    if (rc) {
        free(b.p);
        return rc;
    }
    *json = b.p;
    return QT_OK;
}

int qt_tok_load_gguf(qt_tok **out, const char *path, qt_err *err) {
    *out = NULL;
    char *json;
    int rc = qt_tok_gguf_json(path, &json, err);
    if (rc) return rc;
    rc = qt_tok_load_json(out, json, strlen(json), path, err);
    free(json);
    return rc ? (err && err->code ? (int)err->code : QT_ERR_FORMAT) : QT_OK;
}

/* ---- a model's tokenizer, whatever the model is --------------------------------------------- */

int qt_model_tokenizer(qt_tok **out, const char *base, qt_err *err) {
    if (qt_gguf_is_file(base)) return qt_tok_load_gguf(out, base, err);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", base);
    return qt_tok_load(out, path, err);
}

char *qt_model_chat_text(const char *base, char *where, size_t cap) {
    if (qt_gguf_is_file(base)) {
        snprintf(where, cap, "%s (tokenizer.chat_template)", base);
        qt_gguf_file f;
        qt_err e = {0};
        if (qt_gguf_open(&f, base, &e) != 0) return NULL;
        const qt_gguf_kv *kv = qt_gguf_kv_find(&f, "tokenizer.chat_template");
        char *s = kv && kv->type == QT_GV_STRING ? strdup(kv->str) : NULL;
        qt_gguf_close(&f);
        return s;
    }
    snprintf(where, cap, "%s/tokenizer_config.json", base);
    FILE *f = fopen(where, "rb");
    if (!f) return NULL;
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = calloc(1, (size_t)n + 1)) &&
        fread(text, 1, (size_t)n, f) != (size_t)n)
        text[0] = 0;
    fclose(f);
    return text;
}
