/* test_tokenizer.c - data/tokenizer against the Hugging Face tokenizers library: every text of
 * tests/fixtures/tok/cases.json (tools/make_tokenizer_fixtures.py) encodes to the library's ids
 * with and without special tokens and decodes back to its strings, for the six fixture
 * tokenizers (GPT-2, GPT-2 with prefix space, Llama-3, Llama-2, Mistral, Metaspace layouts);
 * seeded random id lists decode as the library decodes them. Then hand-made tokenizers whose
 * results are worked out by hand, refusals that name the file, and `qtune tokenize`'s I/O. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tok_internal.h" /* the split behaviours, tested on their own */
#include "data/tokenizer.h"
#include "qt_test.h"

#define DIR "tests/fixtures/tok/"

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long k = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)k + 1);
    if (p && fread(p, 1, (size_t)k, f) != (size_t)k) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) p[k] = 0, *n = (size_t)k;
    return p;
}

static void show_str(const char *s) {
    fputc('"', stderr);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == '"')
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputc('"', stderr);
}

/* ids with their token strings, for a failure report */
static void show_ids(const qt_tok *t, const int32_t *ids, int64_t n) {
    fputc('[', stderr);
    for (int64_t i = 0; i < n; i++) {
        size_t len;
        const char *s = qt_tok_token_str(t, ids[i], &len);
        fprintf(stderr, "%s%d=", i ? " " : "", ids[i]);
        show_str(s ? s : "?");
    }
    fputs("]\n", stderr);
}

static int64_t json_ids(const cJSON *a, int32_t *out, int64_t cap) {
    int64_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) if (n < cap) out[n++] = (int32_t)e->valuedouble;
    return n;
}

/* a string of cases.json: plain, or {"hex": "..."} when it holds NUL bytes; malloc'd */
static char *jstr(const cJSON *v, size_t *n) {
    const cJSON *hex = cJSON_GetObjectItem(v, "hex");
    const char *s = cJSON_IsString(hex) ? hex->valuestring
                    : cJSON_IsString(v) ? v->valuestring
                                        : "";
    size_t k = strlen(s);
    char *out = malloc(k + 1);
    if (!out) return NULL;
    if (cJSON_IsString(hex)) {
        k /= 2;
        for (size_t i = 0; i < k; i++) {
            unsigned b;
            sscanf(s + 2 * i, "%2x", &b);
            out[i] = (char)b;
        }
    } else {
        memcpy(out, s, k);
    }
    out[k] = 0;
    *n = k;
    return out;
}

static int shown; /* detailed reports are capped: one bug usually fails many cases */

static void check_encode(const qt_tok *t, const char *name, int i, const char *text, size_t text_n,
                         const cJSON *want, bool special) {
    int32_t w[4096];
    int64_t wn = json_ids(want, w, 4096);
    qt_tok_ids got = {0};
    qt_err err = {0};
    int rc = qt_tok_encode(t, text, text_n, special, &got, &err);
    bool ok = rc == 0 && got.n == wn && (!wn || !memcmp(got.ids, w, (size_t)wn * sizeof *w));
    QT_EXPECT(ok, "%s case %d (%s): encode differs (%s)", name, i,
              special ? "add_special" : "plain", rc ? err.msg : "ids");
    if (!ok && shown++ < 12) {
        fprintf(stderr, "  text ");
        show_str(text);
        fprintf(stderr, "\n  want ");
        show_ids(t, w, wn);
        fprintf(stderr, "  got  ");
        show_ids(t, got.ids, got.n);
    }
    qt_tok_ids_free(&got);
}

static void check_decode(const qt_tok *t, const char *name, const char *what, int i,
                         const cJSON *ids, bool skip, const cJSON *want_json) {
    size_t want_n;
    char *want = jstr(want_json, &want_n);
    int32_t w[4096];
    int64_t wn = json_ids(ids, w, 4096);
    char *text = NULL;
    size_t len = 0;
    qt_err err = {0};
    int rc = qt_tok_decode(t, w, wn, skip, &text, &len, &err);
    bool ok = rc == 0 && len == want_n && !memcmp(text, want, len);
    QT_EXPECT(ok, "%s %s %d (skip %d): decode differs (%s)", name, what, i, skip,
              rc ? err.msg : "text");
    if (!ok && shown++ < 12) {
        fprintf(stderr, "  ids  ");
        show_ids(t, w, wn);
        fprintf(stderr, "  want ");
        show_str(want);
        fprintf(stderr, "\n  got  ");
        show_str(text ? text : "(none)");
        fputc('\n', stderr);
    }
    free(text);
    free(want);
}

static void fixtures(void) {
    size_t n;
    char *js = read_all(DIR "cases.json", &n);
    QT_EXPECT(js != NULL, "cannot read " DIR "cases.json");
    if (!js) return;
    cJSON *root = cJSON_ParseWithLength(js, n);
    free(js);
    QT_EXPECT(root != NULL, DIR "cases.json is not JSON");
    if (!root) return;
    const cJSON *texts = cJSON_GetObjectItem(root, "texts");
    const cJSON *toks = cJSON_GetObjectItem(root, "tokenizers"), *tk;
    int ntok = 0;
    cJSON_ArrayForEach(tk, toks) {
        char path[256];
        snprintf(path, sizeof path, DIR "%s.json", tk->string);
        qt_tok *t;
        qt_err err = {0};
        int rc = qt_tok_load(&t, path, &err);
        QT_EXPECT(rc == 0, "%s: %s", path, err.msg);
        if (rc) continue;
        ntok++;
        const cJSON *enc = cJSON_GetObjectItem(tk, "encode");
        QT_EXPECT(cJSON_GetArraySize(enc) == cJSON_GetArraySize(texts), "%s: case count",
                  tk->string);
        for (int i = 0; i < cJSON_GetArraySize(enc); i++) {
            const cJSON *c = cJSON_GetArrayItem(enc, i);
            size_t text_n;
            char *text = jstr(cJSON_GetArrayItem(texts, i), &text_n);
            const cJSON *ids = cJSON_GetObjectItem(c, "ids");
            const cJSON *ids_sp = cJSON_GetObjectItem(c, "ids_special");
            check_encode(t, tk->string, i, text, text_n, ids, false);
            check_encode(t, tk->string, i, text, text_n, ids_sp, true);
            check_decode(t, tk->string, "case", i, ids, false, cJSON_GetObjectItem(c, "decoded"));
            check_decode(t, tk->string, "case", i, ids_sp, true,
                         cJSON_GetObjectItem(c, "decoded_skip"));
            free(text);
        }
        const cJSON *dec = cJSON_GetObjectItem(tk, "decode");
        for (int i = 0; i < cJSON_GetArraySize(dec); i++) {
            const cJSON *c = cJSON_GetArrayItem(dec, i);
            const cJSON *ids = cJSON_GetObjectItem(c, "ids");
            check_decode(t, tk->string, "random ids", i, ids, false,
                         cJSON_GetObjectItem(c, "text"));
            check_decode(t, tk->string, "random ids", i, ids, true,
                         cJSON_GetObjectItem(c, "text_skip"));
        }
        qt_tok_free(t);
    }
    QT_EXPECT(ntok == 6, "expected 6 fixture tokenizers, got %d", ntok);
    cJSON_Delete(root);
}

/* ---- hand-made tokenizers ------------------------------------------------------------------ */
static qt_tok *from_json(const char *json, const char *name) {
    qt_tok *t = NULL;
    qt_err err = {0};
    int rc = qt_tok_load_json(&t, json, strlen(json), name, &err);
    QT_EXPECT(rc == 0, "%s: %s", name, err.msg);
    return rc ? NULL : t;
}

static void expect_ids(const qt_tok *t, const char *text, bool special, const int32_t *want,
                       int64_t n, const char *what) {
    qt_tok_ids got = {0};
    qt_err err = {0};
    int rc = qt_tok_encode(t, text, strlen(text), special, &got, &err);
    bool ok = rc == 0 && got.n == n && (!n || !memcmp(got.ids, want, (size_t)n * sizeof *want));
    QT_EXPECT(ok, "%s: %s", what, rc ? err.msg : "wrong ids");
    if (!ok && rc == 0) show_ids(t, got.ids, got.n);
    qt_tok_ids_free(&got);
}

static void hand_checked(void) {
    /* merges by rank, not by position: "b c" (rank 0) before "a b" (rank 1), so "abc" is
     * a + bc, never ab + c */
    qt_tok *t = from_json(
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, "
        "\"bc\": 4, \"abc\": 5}, \"merges\": [\"b c\", \"a b\", \"ab c\"]}}",
        "rank.json");
    if (t) {
        expect_ids(t, "abc", false, (int32_t[]){0, 4}, 2, "rank order: a + bc");
        expect_ids(t, "abab", false, (int32_t[]){3, 3}, 2, "ab ab");
        /* the library drops x and then merges its neighbours */
        expect_ids(t, "axb", false, (int32_t[]){3}, 1, "unknown x dropped, a b merged");
        char *s;
        size_t n;
        qt_err err = {0};
        QT_EXPECT(qt_tok_decode(t, (int32_t[]){0, 4}, 2, false, &s, &n, &err) == 0 &&
                      !strcmp(s, "a bc"),
                  "no decoder: tokens joined by spaces");
        free(s);
        QT_EXPECT(qt_tok_decode(t, (int32_t[]){0, 9}, 2, false, &s, &n, &err) != 0 &&
                      strstr(err.msg, "id 9 (position 1)") && strstr(err.msg, "rank.json"),
                  "unknown id named: %s", err.msg);
        QT_EXPECT(qt_tok_bos_id(t) == -1 && qt_tok_vocab_size(t) == 6, "no BOS, 6 ids");
        qt_tok_free(t);
    }
    /* the same merges with the ["a", "b"] form and ab c first: abc whole */
    t = from_json("{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, "
                  "\"abc\": 5}, \"merges\": [[\"a\", \"b\"], [\"ab\", \"c\"], [\"b\", \"c\"]]}}",
                  "pairs.json");
    if (t) {
        expect_ids(t, "abc", false, (int32_t[]){5}, 1, "pair form: ab then abc");
        qt_tok_free(t);
    }
    /* unk fused or not, byte fallback only where all bytes have tokens */
    t = from_json("{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, "
                  "\"vocab\": {\"<unk>\": 0, \"a\": 1}, \"merges\": []}}",
                  "unk.json");
    if (t) {
        expect_ids(t, "axya", false, (int32_t[]){1, 0, 1}, 3, "fused unk");
        qt_tok_free(t);
    }
    t = from_json("{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"byte_fallback\": "
                  "true, \"vocab\": {\"<unk>\": 0, \"a\": 1, \"<0xC3>\": 2, \"<0xA9>\": 3}, "
                  "\"merges\": []}, \"decoder\": {\"type\": \"ByteFallback\"}}",
                  "bytes.json");
    if (t) {
        /* é = C3 A9 has byte tokens; x has none: unk */
        expect_ids(t, "a\xC3\xA9x", false, (int32_t[]){1, 2, 3, 0}, 4, "byte fallback");
        char *s;
        size_t n;
        qt_err err = {0};
        QT_EXPECT(qt_tok_decode(t, (int32_t[]){2, 3, 1, 2}, 4, false, &s, &n, &err) == 0 &&
                      !strcmp(s, "\xC3\xA9"
                                 "a\xEF\xBF\xBD"),
                  "byte tokens decode to é, a lone C3 to U+FFFD");
        free(s);
        qt_tok_free(t);
    }
    /* byte-level: a space is Ġ (U+0120), a newline Ċ (U+010A) */
    qt_err err = {0};
    QT_EXPECT(qt_tok_load(&t, DIR "gpt2.json", &err) == 0, "gpt2: %s", err.msg);
    if (t) {
        qt_tok_ids v = {0};
        QT_EXPECT(qt_tok_encode(t, " \n", 2, false, &v, &err) == 0, "encode");
        size_t n0 = 0, n1 = 0;
        const char *s0 = v.n == 2 ? qt_tok_token_str(t, v.ids[0], &n0) : NULL;
        const char *s1 = v.n == 2 ? qt_tok_token_str(t, v.ids[1], &n1) : NULL;
        QT_EXPECT(s0 && s1 && !strcmp(s0, "\xC4\xA0") && !strcmp(s1, "\xC4\x8A"),
                  "space and newline map to U+0120 and U+010A");
        v.n = 0;
        QT_EXPECT(qt_tok_encode(t, "ok\xff", 3, false, &v, &err) != 0 &&
                      strstr(err.msg, "not valid UTF-8 (byte 2)") && v.n == 0,
                  "invalid UTF-8 refused: %s", err.msg);
        int32_t eot = qt_tok_token_id(t, "<|endoftext|>", 13);
        QT_EXPECT(eot >= 0 && qt_tok_is_special(t, eot), "<|endoftext|> is special");
        qt_tok_ids_free(&v);
        qt_tok_free(t);
    }
    QT_EXPECT(qt_tok_load(&t, DIR "llama3.json", &err) == 0, "llama3: %s", err.msg);
    if (t) {
        int32_t bos = qt_tok_token_id(t, "<|begin_of_text|>", 17);
        int np, ns;
        qt_tok_prefix_ids(t, &np);
        qt_tok_suffix_ids(t, &ns);
        QT_EXPECT(bos >= 0 && qt_tok_bos_id(t) == bos && np == 1 && ns == 0,
                  "llama3: BOS from TemplateProcessing");
        qt_tok_free(t);
    }
    QT_EXPECT(qt_tok_load(&t, DIR "gpt2_prefix.json", &err) == 0, "gpt2_prefix: %s", err.msg);
    if (t) {
        int np, ns;
        qt_tok_prefix_ids(t, &np);
        const int32_t *suf = qt_tok_suffix_ids(t, &ns);
        QT_EXPECT(np == 0 && ns == 1 && suf[0] == qt_tok_token_id(t, "<|endoftext|>", 13) &&
                      qt_tok_bos_id(t) == -1,
                  "gpt2_prefix: EOS appended, no BOS");
        qt_tok_free(t);
    }
}

/* ---- split behaviours: the tokenizers library's own test vectors (split.rs, digits.rs) ---- */
static void expect_pieces(const char *pat, int behavior, bool invert, const char *text,
                          const char *want) {
    tk_re re = {0};
    char msg[300];
    tk_ranges r = {0};
    qt_err err = {0};
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    char got[256] = "";
    if (tk_re_compile(&re, pat, strlen(pat), false, msg, sizeof msg) == 0 &&
        tk_re_find_all(&re, md, text, strlen(text), &r, &err) == 0) {
        tk_ranges_split(&r, behavior, invert);
        for (size_t i = 0; i < r.n; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%.*s", i ? "|" : "",
                     (int)(r.r[i].e - r.r[i].s), text + r.r[i].s);
    }
    QT_EXPECT(!strcmp(got, want), "split /%s/ behaviour %d invert %d: got '%s' want '%s'", pat,
              behavior, invert, got, want);
    tk_ranges_free(&r);
    tk_re_free(&re);
    pcre2_match_data_free(md);
}

static void split_behaviours(void) {
    const char *w = "\\w+|[^\\w\\s]+", *s = "How are you doing?";
    expect_pieces(w, TK_SPLIT_REMOVED, true, s, "How|are|you|doing|?");
    expect_pieces(w, TK_SPLIT_ISOLATED, true, s, "How| |are| |you| |doing|?");
    expect_pieces(w, TK_SPLIT_PREVIOUS, true, s, "How |are |you |doing|?");
    expect_pieces(w, TK_SPLIT_NEXT, true, s, "How| are| you| doing|?");
    expect_pieces(w, TK_SPLIT_CONTIGUOUS, true, s, "How| |are| |you| |doing?");
    expect_pieces("\\p{N}", TK_SPLIT_CONTIGUOUS, false, "Hey 123 friend!", "Hey |123| friend!");
    expect_pieces("\\p{N}", TK_SPLIT_ISOLATED, false, "Hey 123 friend!", "Hey |1|2|3| friend!");
    /* empty matches count (their empty pieces are dropped later), but not one right after a
     * match: the onig / regex crates' iteration */
    expect_pieces("x*", TK_SPLIT_ISOLATED, false, "axxb", "|a|xx|b|");
}

/* ---- refusals ------------------------------------------------------------------------------- */
static void write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(s, f);
        fclose(f);
    }
}

static void expect_refused(const char *path, const char *content, const char *needle) {
    if (content) write_file(path, content);
    qt_tok *t = NULL;
    qt_err err = {0};
    int rc = qt_tok_load(&t, path, &err);
    QT_EXPECT(rc != 0 && t == NULL && strstr(err.msg, path) && strstr(err.msg, needle),
              "%s: want an error naming the file and '%s', got '%s'", path, needle, err.msg);
    qt_tok_free(t);
    if (content) unlink(path);
}

static void refusals(void) {
    char dir[] = "/tmp/qt_tok_XXXXXX";
    QT_EXPECT(mkdtemp(dir) != NULL, "mkdtemp");
    char p[256];
    snprintf(p, sizeof p, "%s/missing.json", dir);
    expect_refused(p, NULL, "cannot open");
    snprintf(p, sizeof p, "%s/broken.json", dir);
    expect_refused(p, "{\"model\": {\"type\": \"BPE\",\n \"vocab\": {\"a\": 0,,}}",
                   ":2: not valid JSON");
    snprintf(p, sizeof p, "%s/wordpiece.json", dir);
    expect_refused(p, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}",
                   "model type \"WordPiece\" is not supported");
    snprintf(p, sizeof p, "%s/nfc.json", dir);
    expect_refused(p,
                   "{\"normalizer\": {\"type\": \"NFC\"}, \"model\": {\"type\": \"BPE\", "
                   "\"vocab\": {\"a\": 0}, \"merges\": []}}",
                   "normalizer \"NFC\" is not supported");
    snprintf(p, sizeof p, "%s/merge.json", dir);
    expect_refused(p,
                   "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
                   "merge 0: second part \"b\" is not in the vocab");
    snprintf(p, sizeof p, "%s/regex.json", dir);
    expect_refused(p,
                   "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, "
                   "\"behavior\": \"Isolated\", \"invert\": false}, \"model\": {\"type\": "
                   "\"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                   "pre_tokenizer Split.pattern /(/");
    snprintf(p, sizeof p, "%s/array.json", dir);
    expect_refused(p, "[1, 2]", "not a tokenizer.json");
    rmdir(dir);
}

/* ---- qtune tokenize's I/O -------------------------------------------------------------------- */
static char *cli(const qt_tok *t, qt_tok_cli_opts o, const char *input, int *rc, qt_err *err) {
    FILE *in = tmpfile(), *out = tmpfile();
    fputs(input, in);
    rewind(in);
    *rc = qt_tok_cli_run(t, &o, in, "<stdin>", out, err);
    long n = ftell(out);
    rewind(out);
    char *s = calloc((size_t)n + 1, 1);
    if (fread(s, 1, (size_t)n, out) != (size_t)n) s[0] = 0;
    fclose(in);
    fclose(out);
    return s;
}

static void cli_io(void) {
    qt_tok *t;
    qt_err err = {0};
    if (qt_tok_load(&t, DIR "llama3.json", &err)) {
        QT_EXPECT(0, "llama3: %s", err.msg);
        return;
    }
    int rc;
    /* jsonl: escapes in, the BOS, a blank line kept, then the ids back to the same strings */
    char *ids = cli(t, (qt_tok_cli_opts){.jsonl = true, .add_special = true},
                    "\"Hello\\tworld\\n\"\n\n  \"caf\\u00e9 \\ud83d\\ude00\"\r\n", &rc, &err);
    QT_EXPECT(rc == 0 && ids[0] == '[' && strstr(ids, "]\n\n["), "jsonl encode: %s", err.msg);
    char *back = cli(t, (qt_tok_cli_opts){.jsonl = true, .decode = true, .skip_special = true}, ids,
                     &rc, &err);
    QT_EXPECT(rc == 0 &&
                  !strcmp(back, "\"Hello\\tworld\\n\"\n\n\"caf\xC3\xA9 \xF0\x9F\x98\x80\"\n"),
              "jsonl decode: %s / %s", err.msg, back);
    free(ids);
    free(back);
    /* whole input: one text, ids as one array; decode prints the text itself */
    ids = cli(t, (qt_tok_cli_opts){0}, "two\nlines", &rc, &err);
    back = cli(t, (qt_tok_cli_opts){.decode = true}, ids, &rc, &err);
    QT_EXPECT(rc == 0 && !strcmp(back, "two\nlines"), "whole-input round trip: %s", back);
    free(ids);
    free(back);
    /* errors name the input and the line */
    free(cli(t, (qt_tok_cli_opts){.jsonl = true}, "\"ok\"\nnot json\n", &rc, &err));
    QT_EXPECT(rc != 0 && strstr(err.msg, "<stdin>:2: not a JSON string"), "%s", err.msg);
    free(cli(t, (qt_tok_cli_opts){.jsonl = true}, "\"\\ud800\"\n", &rc, &err));
    QT_EXPECT(rc != 0 && strstr(err.msg, "<stdin>:1: lone surrogate"), "%s", err.msg);
    free(cli(t, (qt_tok_cli_opts){.jsonl = true, .decode = true}, "[1, 2]\n[3, -4]\n", &rc, &err));
    QT_EXPECT(rc != 0 && strstr(err.msg, "<stdin>:2: element 1 is not a token id"), "%s", err.msg);
    free(cli(t, (qt_tok_cli_opts){.decode = true}, "[1, 2] 3", &rc, &err));
    QT_EXPECT(rc != 0 && strstr(err.msg, "<stdin>: not a JSON array"), "%s", err.msg);
    /* a NUL inside a JSON string survives the round trip */
    ids = cli(t, (qt_tok_cli_opts){.jsonl = true}, "\"a\\u0000b\"\n", &rc, &err);
    back = cli(t, (qt_tok_cli_opts){.jsonl = true, .decode = true, .skip_special = true}, ids, &rc,
               &err);
    QT_EXPECT(rc == 0 && !strcmp(back, "\"a\\u0000b\"\n"), "NUL round trip: %s", back);
    free(ids);
    free(back);
    free(cli(t, (qt_tok_cli_opts){.decode = true}, "[1, 99999]", &rc, &err));
    QT_EXPECT(rc != 0 && strstr(err.msg, "<stdin>: id 99999 (position 1)"), "%s", err.msg);
    qt_tok_free(t);
}

int main(void) {
    fixtures();
    hand_checked();
    split_behaviours();
    refusals();
    cli_io();
    return qt_test_finish("tokenizer");
}
