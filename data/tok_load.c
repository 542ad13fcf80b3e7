/* tok_load.c - reads a tokenizer.json (cJSON) into a qt_tok: the BPE model (vocab, merges in
 * either the "a b" or the ["a", "b"] form), added tokens with the ids the tokenizers library
 * gives them, and the normalizer, pre-tokenizer, post-processor and decoder parts qtune
 * implements. Everything else is refused here, naming the file and the part, rather than
 * tokenizing differently from the library later. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"

#define GPT2_RE "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation,
 * join controls), which the library's single_word check uses */
#define WORD_RE "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]"

typedef struct {
    qt_tok *t;
    qt_err *err;
} ld;

#define NAME(L) ((L)->t->name)

static int oom(ld *L) {
    return qt_err_set(L->err, QT_ERR_MEMORY, "%s: out of memory", NAME(L));
}

static const char *type_of(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static bool get_bool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* a string member (NULL when absent or null; an error when of another type) */
static int get_str(ld *L, const cJSON *o, const char *where, const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v))
        return qt_err_set(L->err, QT_ERR_FORMAT, "%s: %s.%s is not a string", NAME(L), where, key);
    *out = v->valuestring;
    return 0;
}

/* every string kept is checked as UTF-8: pieces built from them go to PCRE2 unchecked */
static int dup(ld *L, const char *s, const char **out, size_t *n) {
    size_t k = strlen(s);
    if (tk_utf8_check(s, k) != k)
        return qt_err_set(L->err, QT_ERR_FORMAT, "%s: the string \"%.40s\" is not valid UTF-8",
                          NAME(L), s);
    char *p = tk_arena_dup(&L->t->arena, s, k);
    if (!p) return oom(L);
    *out = p;
    if (n) *n = k;
    return 0;
}

/* one character (Metaspace's replacement, Strip's content), as a code point */
static int one_char(ld *L, const char *where, const char *s, uint32_t *cp) {
    size_t n = s ? strlen(s) : 0, k = 0;
    if (n && tk_utf8_check(s, n) == n) {
        *cp = tk_utf8_decode(s, &k);
        if (k == n) return 0;
    }
    return qt_err_set(L->err, QT_ERR_FORMAT, "%s: %s must be a single character", NAME(L), where);
}

/* {"String": "..."} or {"Regex": "..."} */
static int pattern(ld *L, const cJSON *o, const char *where, tk_re *re) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *s = p ? cJSON_GetObjectItemCaseSensitive(p, "String") : NULL;
    const cJSON *r = p ? cJSON_GetObjectItemCaseSensitive(p, "Regex") : NULL;
    const cJSON *v = cJSON_IsString(s) ? s : cJSON_IsString(r) ? r : NULL;
    if (!v)
        return qt_err_set(L->err, QT_ERR_FORMAT,
                          "%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", NAME(L),
                          where);
    char msg[300];
    if (tk_re_compile(re, v->valuestring, strlen(v->valuestring), v == s, msg, sizeof msg))
        return qt_err_set(L->err, QT_ERR_FORMAT, "%s: %s.pattern /%s/: %s", NAME(L), where,
                          v->valuestring, msg);
    return 0;
}

static int unsupported(ld *L, const char *part, const char *type) {
    return qt_err_set(L->err, QT_ERR_UNSUPPORTED, "%s: %s \"%s\" is not supported", NAME(L), part,
                      type ? type : "(no type)");
}

static int too_many(ld *L, const char *part) {
    return qt_err_set(L->err, QT_ERR_UNSUPPORTED, "%s: more than %d %ss", NAME(L), TK_MAX_STAGES,
                      part);
}

/* ---- normalizer ------------------------------------------------------------------------- */
static int normalizer(ld *L, const cJSON *o) {
    if (!o || cJSON_IsNull(o)) return 0;
    qt_tok *t = L->t;
    const char *ty = type_of(o);
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *e, *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
        cJSON_ArrayForEach(e, list) if (normalizer(L, e)) return -1;
        return 0;
    }
    if (t->n_norm == TK_MAX_STAGES) return too_many(L, "normalizer");
    tk_norm *nm = &t->norm[t->n_norm];
    const char *s;
    if (ty && !strcmp(ty, "Prepend")) {
        nm->kind = TK_NORM_PREPEND;
        if (get_str(L, o, "normalizer Prepend", "prepend", &s)) return -1;
        if (dup(L, s ? s : "", &nm->str, &nm->str_n)) return -1;
    } else if (ty && !strcmp(ty, "Replace")) {
        nm->kind = TK_NORM_REPLACE;
        if (get_str(L, o, "normalizer Replace", "content", &s)) return -1;
        if (dup(L, s ? s : "", &nm->str, &nm->str_n)) return -1;
        if (pattern(L, o, "normalizer Replace", &nm->re)) return -1;
    } else if (ty && !strcmp(ty, "Strip")) {
        nm->kind = TK_NORM_STRIP;
        nm->left = get_bool(o, "strip_left", true);
        nm->right = get_bool(o, "strip_right", true);
    } else if (ty && !strcmp(ty, "ByteLevel")) {
        nm->kind = TK_NORM_BYTELEVEL;
    } else {
        /* NFC / NFKC / Lowercase / BertNormalizer / Precompiled need Unicode tables qtune
         * does not carry: refusing beats tokenizing differently */
        return unsupported(L, "normalizer", ty);
    }
    t->n_norm++;
    return 0;
}

/* ---- pre-tokenizer ---------------------------------------------------------------------- */
static int prepend_scheme(ld *L, const cJSON *o, const char *where, int *out) {
    const char *s;
    if (get_str(L, o, where, "prepend_scheme", &s)) return -1;
    *out = TK_PREPEND_ALWAYS;
    if (s && !strcmp(s, "first"))
        *out = TK_PREPEND_FIRST;
    else if (s && !strcmp(s, "never"))
        *out = TK_PREPEND_NEVER;
    else if (s && strcmp(s, "always"))
        return qt_err_set(L->err, QT_ERR_FORMAT,
                          "%s: %s.prepend_scheme \"%s\" is not first, never or always", NAME(L),
                          where, s);
    /* files from before prepend_scheme said add_prefix_space: false */
    if (!get_bool(o, "add_prefix_space", true)) *out = TK_PREPEND_NEVER;
    return 0;
}

static int pre_tokenizer(ld *L, const cJSON *o) {
    if (!o || cJSON_IsNull(o)) return 0;
    qt_tok *t = L->t;
    const char *ty = type_of(o);
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *e, *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
        cJSON_ArrayForEach(e, list) if (pre_tokenizer(L, e)) return -1;
        return 0;
    }
    if (t->n_pre == TK_MAX_STAGES) return too_many(L, "pre-tokenizer");
    tk_pre *p = &t->pre[t->n_pre];
    char msg[300];
    if (ty && !strcmp(ty, "Split")) {
        p->kind = TK_PRE_SPLIT;
        const char *b;
        if (get_str(L, o, "pre_tokenizer Split", "behavior", &b)) return -1;
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
        p->behavior = -1;
        for (int i = 0; i < 5; i++)
            if (b && !strcmp(b, names[i])) p->behavior = i;
        if (p->behavior < 0)
            return qt_err_set(L->err, QT_ERR_FORMAT,
                              "%s: pre_tokenizer Split.behavior \"%s\" is not one of Removed, "
                              "Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
                              NAME(L), b ? b : "");
        p->invert = get_bool(o, "invert", false);
        if (pattern(L, o, "pre_tokenizer Split", &p->re)) return -1;
    } else if (ty && !strcmp(ty, "ByteLevel")) {
        p->kind = TK_PRE_BYTELEVEL;
        p->add_prefix_space = get_bool(o, "add_prefix_space", true);
        p->use_regex = get_bool(o, "use_regex", true);
        if (p->use_regex && !t->gpt2_re.code &&
            tk_re_compile(&t->gpt2_re, GPT2_RE, strlen(GPT2_RE), false, msg, sizeof msg))
            return qt_err_set(L->err, QT_ERR_UNSUPPORTED, "%s: ByteLevel regex: %s", NAME(L), msg);
    } else if (ty && !strcmp(ty, "Metaspace")) {
        p->kind = TK_PRE_METASPACE;
        const char *r;
        uint32_t cp = 0;
        if (get_str(L, o, "pre_tokenizer Metaspace", "replacement", &r) ||
            one_char(L, "pre_tokenizer Metaspace.replacement", r, &cp) ||
            prepend_scheme(L, o, "pre_tokenizer Metaspace", &p->prepend))
            return -1;
        p->repl_n = tk_utf8_encode(cp, p->repl);
        p->split = get_bool(o, "split", true);
        if (tk_re_compile(&p->re, p->repl, p->repl_n, true, msg, sizeof msg))
            return qt_err_set(L->err, QT_ERR_FORMAT, "%s: Metaspace: %s", NAME(L), msg);
    } else if (ty && !strcmp(ty, "Digits")) {
        p->kind = TK_PRE_DIGITS;
        /* char::is_numeric is the N categories; runs of them, or each on its own */
        bool one = get_bool(o, "individual_digits", false);
        p->behavior = one ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS;
        const char *re = "\\p{N}";
        if (tk_re_compile(&p->re, re, strlen(re), false, msg, sizeof msg))
            return qt_err_set(L->err, QT_ERR_UNSUPPORTED, "%s: Digits: %s", NAME(L), msg);
    } else {
        return unsupported(L, "pre_tokenizer", ty);
    }
    t->n_pre++;
    return 0;
}

/* ---- decoder ------------------------------------------------------------------------------- */
static int decoder(ld *L, const cJSON *o) {
    if (!o || cJSON_IsNull(o)) return 0;
    qt_tok *t = L->t;
    t->has_decoder = true;
    const char *ty = type_of(o);
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *e, *list = cJSON_GetObjectItemCaseSensitive(o, "decoders");
        cJSON_ArrayForEach(e, list) if (decoder(L, e)) return -1;
        return 0;
    }
    if (t->n_dec == TK_MAX_STAGES) return too_many(L, "decoder");
    tk_dec *d = &t->dec[t->n_dec];
    const char *s;
    if (ty && !strcmp(ty, "ByteLevel")) {
        d->kind = TK_DEC_BYTELEVEL;
    } else if (ty && !strcmp(ty, "Metaspace")) {
        d->kind = TK_DEC_METASPACE;
        int scheme;
        if (get_str(L, o, "decoder Metaspace", "replacement", &s) ||
            one_char(L, "decoder Metaspace.replacement", s, &d->repl) ||
            prepend_scheme(L, o, "decoder Metaspace", &scheme))
            return -1;
        d->prepend = scheme != TK_PREPEND_NEVER;
    } else if (ty && !strcmp(ty, "Replace")) {
        d->kind = TK_DEC_REPLACE;
        if (get_str(L, o, "decoder Replace", "content", &s) ||
            dup(L, s ? s : "", &d->str, &d->str_n) || pattern(L, o, "decoder Replace", &d->re))
            return -1;
    } else if (ty && !strcmp(ty, "ByteFallback")) {
        d->kind = TK_DEC_BYTEFALLBACK;
    } else if (ty && !strcmp(ty, "Fuse")) {
        d->kind = TK_DEC_FUSE;
    } else if (ty && !strcmp(ty, "Strip")) {
        d->kind = TK_DEC_STRIP;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "stop");
        if (get_str(L, o, "decoder Strip", "content", &s) ||
            one_char(L, "decoder Strip.content", s, &d->repl))
            return -1;
        if (!cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valuedouble < 0 || b->valuedouble < 0)
            return qt_err_set(L->err, QT_ERR_FORMAT,
                              "%s: decoder Strip needs non-negative start and stop", NAME(L));
        d->start = (size_t)a->valuedouble;
        d->stop = (size_t)b->valuedouble;
    } else {
        return unsupported(L, "decoder", ty);
    }
    t->n_dec++;
    return 0;
}

/* ---- post-processor --------------------------------------------------------------------- */
typedef struct {
    int32_t *ids;
    int n;
} idlist;

static int idlist_add(idlist *l, int32_t id) {
    int32_t *p = realloc(l->ids, (size_t)(l->n + 1) * sizeof *p);
    if (!p) return -1;
    p[l->n++] = id;
    l->ids = p;
    return 0;
}

/* prefix / suffix of one processor, composed around the ones before it: the later processor
 * wraps what the earlier one produced */
static int wrap(ld *L, const idlist *pre, const idlist *suf) {
    qt_tok *t = L->t;
    int np = t->n_prefix + pre->n, ns = t->n_suffix + suf->n;
    int32_t *p = malloc((size_t)(np ? np : 1) * sizeof *p);
    int32_t *s = malloc((size_t)(ns ? ns : 1) * sizeof *s);
    if (!p || !s) {
        free(p);
        free(s);
        return oom(L);
    }
    if (pre->n) memcpy(p, pre->ids, (size_t)pre->n * sizeof *p);
    if (t->n_prefix) memcpy(p + pre->n, t->prefix, (size_t)t->n_prefix * sizeof *p);
    if (t->n_suffix) memcpy(s, t->suffix, (size_t)t->n_suffix * sizeof *s);
    if (suf->n) memcpy(s + t->n_suffix, suf->ids, (size_t)suf->n * sizeof *s);
    free(t->prefix);
    free(t->suffix);
    t->prefix = p, t->n_prefix = np, t->suffix = s, t->n_suffix = ns;
    return 0;
}

/* Roberta / Bert processors: "cls": ["<s>", 0], "sep": ["</s>", 2] */
static int pair_id(ld *L, const cJSON *o, const char *key, int32_t *id) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    const cJSON *v = cJSON_GetArrayItem(a, 1);
    if (!cJSON_IsArray(a) || !cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 2e9)
        return qt_err_set(L->err, QT_ERR_FORMAT, "%s: post_processor.%s must be [token, id]",
                          NAME(L), key);
    *id = (int32_t)v->valuedouble;
    return 0;
}

static int template_ids(ld *L, const cJSON *specials, const char *name, idlist *l) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = st ? cJSON_GetObjectItemCaseSensitive(st, "ids") : NULL, *e;
    if (!cJSON_IsArray(ids))
        return qt_err_set(L->err, QT_ERR_FORMAT,
                          "%s: post_processor template uses \"%s\", which its special_tokens "
                          "do not define",
                          NAME(L), name);
    cJSON_ArrayForEach(e, ids) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 2e9)
            return qt_err_set(L->err, QT_ERR_FORMAT, "%s: special token \"%s\" has a bad id",
                              NAME(L), name);
        if (idlist_add(l, (int32_t)e->valuedouble)) return oom(L);
    }
    return 0;
}

static int post_processor(ld *L, const cJSON *o) {
    if (!o || cJSON_IsNull(o)) return 0;
    const char *ty = type_of(o);
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *e, *list = cJSON_GetObjectItemCaseSensitive(o, "processors");
        cJSON_ArrayForEach(e, list) if (post_processor(L, e)) return -1;
        return 0;
    }
    if (ty && !strcmp(ty, "ByteLevel")) return 0; /* it only trims offsets */
    idlist pre = {0}, suf = {0};
    int rc = 0;
    if (ty && (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing"))) {
        int32_t cls = -1, sep = -1;
        rc = pair_id(L, o, "cls", &cls) || pair_id(L, o, "sep", &sep);
        if (!rc) rc = idlist_add(&pre, cls) || idlist_add(&suf, sep) ? oom(L) : 0;
    } else if (ty && !strcmp(ty, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single"), *e;
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
        int seen_a = 0;
        if (!cJSON_IsArray(single))
            rc = qt_err_set(L->err, QT_ERR_FORMAT, "%s: TemplateProcessing has no single template",
                            NAME(L));
        cJSON_ArrayForEach(e, single) {
            if (rc) break;
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
            const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(sp ? sp : sq, "id");
            if (sp && cJSON_IsString(id)) {
                rc = template_ids(L, specials, id->valuestring, seen_a ? &suf : &pre);
            } else if (sq && cJSON_IsString(id) && !strcmp(id->valuestring, "A") && !seen_a) {
                seen_a = 1;
            } else {
                rc = qt_err_set(L->err, QT_ERR_UNSUPPORTED,
                                "%s: TemplateProcessing single template: only special tokens "
                                "around one $A are supported",
                                NAME(L));
            }
        }
        if (!rc && !seen_a)
            rc = qt_err_set(L->err, QT_ERR_FORMAT,
                            "%s: TemplateProcessing single template has no $A", NAME(L));
    } else {
        rc = unsupported(L, "post_processor", ty);
    }
    if (!rc) rc = wrap(L, &pre, &suf);
    free(pre.ids);
    free(suf.ids);
    return rc ? -1 : 0;
}

/* ---- model ---------------------------------------------------------------------------------- */
static int lookup(ld *L, const char *s, size_t n, const char *what, long rank, int32_t *id) {
    *id = tk_map_get(&L->t->vocab, s, n);
    if (*id < 0)
        return qt_err_set(L->err, QT_ERR_FORMAT, "%s: merge %ld: %s \"%.*s\" is not in the vocab",
                          NAME(L), rank, what, (int)(n > 200 ? 200 : n), s);
    return 0;
}

static int model(ld *L, const cJSON *m) {
    qt_tok *t = L->t;
    if (!cJSON_IsObject(m)) return qt_err_set(L->err, QT_ERR_FORMAT, "%s: no model", NAME(L));
    const char *ty = type_of(m);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    /* files without a model type are BPE when they have merges, as the library guesses */
    if (ty ? strcmp(ty, "BPE") != 0 : !merges) return unsupported(L, "model type", ty);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return qt_err_set(L->err, QT_ERR_FORMAT,
                          "%s: model needs a vocab object and a merges array", NAME(L));
    const char *s;
    if (get_str(L, m, "model", "unk_token", &s)) return -1;
    if (s && dup(L, s, &t->unk, &t->unk_n)) return -1;
    if (get_str(L, m, "model", "continuing_subword_prefix", &s)) return -1;
    if (s && dup(L, s, &t->cont_prefix, &t->cont_n)) return -1;
    if (get_str(L, m, "model", "end_of_word_suffix", &s)) return -1;
    if (s && dup(L, s, &t->eow_suffix, &t->eow_n)) return -1;
    t->fuse_unk = get_bool(m, "fuse_unk", false);
    t->byte_fallback = get_bool(m, "byte_fallback", false);
    t->ignore_merges = get_bool(m, "ignore_merges", false);

    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        double d = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(d >= 0 && d < 2147483647.0 && d == (double)(int32_t)d))
            return qt_err_set(L->err, QT_ERR_FORMAT, "%s: vocab entry \"%s\" has no valid id",
                              NAME(L), e->string);
        const char *key = NULL;
        size_t kn = 0;
        if (dup(L, e->string, &key, &kn)) return -1;
        if (tk_map_put(&t->vocab, key, kn, (int32_t)d)) return oom(L);
    }
    t->unk_id = t->unk ? tk_map_get(&t->vocab, t->unk, t->unk_n) : -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tk_map_get(&t->vocab, name, 6);
    }

    tk_buf joined = {0};
    long rank = 0;
    int rc = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t an, bn;
        if (cJSON_IsString(e)) { /* "a b": exactly one space */
            a = e->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = qt_err_set(L->err, QT_ERR_FORMAT, "%s: merge %ld \"%s\" is not \"a b\"",
                                NAME(L), rank, a);
                break;
            }
            an = (size_t)(sp - a), b = sp + 1, bn = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring, an = strlen(a);
            b = cJSON_GetArrayItem(e, 1)->valuestring, bn = strlen(b);
        } else {
            rc = qt_err_set(L->err, QT_ERR_FORMAT, "%s: merge %ld is not \"a b\" nor [a, b]",
                            NAME(L), rank);
            break;
        }
        int32_t ia, ib, inew;
        /* the merged token drops b's continuing_subword_prefix */
        size_t skip = t->cont_n <= bn ? t->cont_n : bn;
        joined.n = 0;
        if (tk_buf_put(&joined, a, an) || tk_buf_put(&joined, b + skip, bn - skip)) {
            rc = oom(L);
            break;
        }
        if (lookup(L, a, an, "first part", rank, &ia) ||
            lookup(L, b, bn, "second part", rank, &ib) ||
            lookup(L, joined.p, joined.n, "merged token", rank, &inew)) {
            rc = -1;
            break;
        }
        if (tk_pmap_put(&t->merges, ia, ib, (int32_t)rank, inew)) {
            rc = oom(L);
            break;
        }
        rank++;
    }
    tk_buf_free(&joined);
    return rc;
}

/* ---- added tokens ------------------------------------------------------------------------- */
static int trie_add(tk_trie *tr, const char *s, size_t n, int32_t value) {
    if (!tr->n) {
        tr->node = malloc(64 * sizeof *tr->node);
        if (!tr->node) return -1;
        tr->cap = 64;
        tr->node[0] = (tk_node){0, -1, -1, -1};
        tr->n = 1;
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        int32_t k = tr->node[cur].child;
        while (k >= 0 && tr->node[k].byte != c) k = tr->node[k].sibling;
        if (k < 0) {
            if (tr->n == tr->cap) {
                tk_node *p = realloc(tr->node, tr->cap * 2 * sizeof *p);
                if (!p) return -1;
                tr->node = p;
                tr->cap *= 2;
            }
            k = (int32_t)tr->n++;
            tr->node[k] = (tk_node){c, -1, tr->node[cur].child, -1};
            tr->node[cur].child = k;
        }
        cur = k;
    }
    tr->node[cur].value = value;
    tr->first[(uint8_t)s[0]] = true;
    return 0;
}

static int added_tokens(ld *L, const cJSON *list, tk_buf *scratch) {
    qt_tok *t = L->t;
    if (!list || cJSON_IsNull(list)) return 0;
    if (!cJSON_IsArray(list))
        return qt_err_set(L->err, QT_ERR_FORMAT, "%s: added_tokens is not an array", NAME(L));
    int n = cJSON_GetArraySize(list);
    t->added = calloc((size_t)(n ? n : 1), sizeof *t->added);
    if (!t->added) return oom(L);
    /* ids as the library's add_tokens gives them: an existing token keeps its id, a new one
     * takes the next id after the model's vocabulary (files agree with this; the "id" field
     * is only checked by the library, with a warning) */
    int32_t next_id = (int32_t)t->vocab.n;
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const char *content;
        if (get_str(L, e, "added_tokens[]", "content", &content)) return -1;
        if (!content)
            return qt_err_set(L->err, QT_ERR_FORMAT, "%s: an added token has no content", NAME(L));
        if (!*content) continue; /* the library ignores empty ones */
        size_t cn = strlen(content);
        int32_t id = tk_map_get(&t->added_map, content, cn);
        int slot = -1;
        if (id >= 0) { /* the same content again replaces the earlier entry */
            for (int k = 0; k < t->n_added; k++)
                if (t->added[k].id == id) slot = k;
        } else {
            id = tk_map_get(&t->vocab, content, cn);
            if (id < 0) id = next_id++;
        }
        if (slot < 0) slot = t->n_added++;
        tk_added *a = &t->added[slot];
        a->id = id;
        if (dup(L, content, &a->content, &a->content_n)) return -1;
        a->single_word = get_bool(e, "single_word", false);
        a->lstrip = get_bool(e, "lstrip", false);
        a->rstrip = get_bool(e, "rstrip", false);
        a->special = get_bool(e, "special", false);
        a->normalized = get_bool(e, "normalized", !a->special);
        a->norm = a->content, a->norm_n = a->content_n;
        if (a->normalized && t->n_norm) {
            if (tk_normalize(t, NULL, a->content, a->content_n, scratch, L->err)) return -1;
            char *p = tk_arena_dup(&t->arena, scratch->p, scratch->n);
            if (!p) return oom(L);
            a->norm = p, a->norm_n = scratch->n;
        }
        if (tk_map_put(&t->added_map, a->content, a->content_n, id)) return oom(L);
    }
    bool word = false;
    for (int k = 0; k < t->n_added; k++) {
        tk_added *a = &t->added[k];
        if (!a->norm_n) continue;
        if (trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, a->norm, a->norm_n, k))
            return oom(L);
        word |= a->single_word;
    }
    char msg[300];
    if (word && tk_re_compile(&t->word_re, WORD_RE, strlen(WORD_RE), false, msg, sizeof msg))
        return qt_err_set(L->err, QT_ERR_UNSUPPORTED, "%s: single_word: %s", NAME(L), msg);
    return 0;
}

/* id -> string and special flags, over model and added tokens */
static int id_table(ld *L) {
    qt_tok *t = L->t;
    int64_t n = 0;
    for (size_t k = 0; k < t->vocab.n; k++)
        if (t->vocab.ent[k].v + 1 > n) n = t->vocab.ent[k].v + 1;
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].id + 1 > n) n = t->added[k].id + 1;
    t->n_ids = n;
    t->id_str = calloc((size_t)(n ? n : 1), sizeof *t->id_str);
    t->id_len = calloc((size_t)(n ? n : 1), sizeof *t->id_len);
    t->special = calloc((size_t)(n ? n : 1), 1);
    if (!t->id_str || !t->id_len || !t->special) return oom(L);
    for (size_t k = 0; k < t->vocab.n; k++) {
        const tk_ent *e = &t->vocab.ent[k];
        t->id_str[e->v] = e->s, t->id_len[e->v] = e->n;
    }
    /* decoding shows an added token in the form it is matched in (normalized_cache) */
    tk_map specials = {0};
    for (int k = 0; k < t->n_added; k++) {
        const tk_added *a = &t->added[k];
        t->id_str[a->id] = a->norm, t->id_len[a->id] = (uint32_t)a->norm_n;
        if (a->special && tk_map_put(&specials, a->content, a->content_n, 1)) {
            tk_map_free(&specials);
            return oom(L);
        }
    }
    /* skip_special_tokens tests the decoded string against the special contents */
    for (int64_t i = 0; i < n; i++)
        if (t->id_str[i] && tk_map_get(&specials, t->id_str[i], t->id_len[i]) >= 0)
            t->special[i] = 1;
    tk_map_free(&specials);
    return 0;
}

/* a line number for "not valid JSON" */
static int line_of(const char *s, const char *at) {
    int line = 1;
    for (; s < at; s++) line += *s == '\n';
    return line;
}

int qt_tok_load_json(qt_tok **out, const char *json, size_t len, const char *name, qt_err *err) {
    *out = NULL;
    qt_tok *t = calloc(1, sizeof *t);
    if (!t) return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", name);
    ld L = {t, err};
    t->name = tk_arena_dup(&t->arena, name, strlen(name));
    if (!t->name) {
        free(t);
        return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", name);
    }
    tk_bytemap_init(&t->bytemap);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    int rc = 0;
    tk_buf scratch = {0};
    if (!root) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s:%d: not valid JSON", name,
                        line_of(json, end && end >= json && end <= json + len ? end : json));
    } else if (!cJSON_IsObject(root)) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s: not a tokenizer.json (not a JSON object)", name);
    } else {
        /* normalizer first: added tokens are matched in normalized form */
        rc = model(&L, cJSON_GetObjectItemCaseSensitive(root, "model"));
        if (!rc) rc = normalizer(&L, cJSON_GetObjectItemCaseSensitive(root, "normalizer"));
        if (!rc) rc = pre_tokenizer(&L, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
        if (!rc) rc = decoder(&L, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
        if (!rc) rc = post_processor(&L, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
        if (!rc)
            rc = added_tokens(&L, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &scratch);
        if (!rc) rc = id_table(&L);
    }
    cJSON_Delete(root);
    tk_buf_free(&scratch);
    if (rc) {
        qt_tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int qt_tok_load(qt_tok **out, const char *path, qt_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err_set(err, QT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    tk_buf b = {0};
    char chunk[1 << 16];
    size_t k;
    int rc = 0;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (tk_buf_put(&b, chunk, k)) {
            rc = qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", path);
            break;
        }
    if (!rc && ferror(f))
        rc = qt_err_set(err, QT_ERR_IO, "%s: read error: %s", path, strerror(errno));
    fclose(f);
    if (!rc) rc = qt_tok_load_json(out, b.p ? b.p : "", b.n, path, err);
    tk_buf_free(&b);
    return rc;
}

void qt_tok_free(qt_tok *t) {
    if (!t) return;
    tk_map_free(&t->vocab);
    tk_map_free(&t->added_map);
    tk_pmap_free(&t->merges);
    free(t->added);
    free(t->trie_raw.node);
    free(t->trie_norm.node);
    tk_re_free(&t->word_re);
    tk_re_free(&t->gpt2_re);
    /* every slot: a stage that failed half-way may hold a compiled pattern */
    for (int i = 0; i < TK_MAX_STAGES; i++) {
        tk_re_free(&t->norm[i].re);
        tk_re_free(&t->pre[i].re);
        tk_re_free(&t->dec[i].re);
    }
    free(t->id_str);
    free(t->id_len);
    free(t->special);
    free(t->prefix);
    free(t->suffix);
    tk_arena_free(&t->arena);
    free(t);
}
