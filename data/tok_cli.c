/* tok_cli.c - the input and output of `qtune tokenize` (qt_tok_cli_run): reading the whole
 * input or JSONL lines, JSON strings in (with \u escapes and surrogate pairs, NUL included,
 * which cJSON's C strings would cut) and out, id arrays in (cJSON) and out. Messages name
 * the input and the line. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"

static bool json_ws(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int hex4(const char *s, size_t n, size_t i, uint32_t *v) {
    *v = 0;
    if (i + 4 > n) return -1;
    for (size_t k = i; k < i + 4; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

/* One JSON string literal (surrounded by optional white space) into out; NULL or why not. */
static const char *json_string(const char *s, size_t n, tk_buf *out) {
    size_t i = 0;
    out->n = 0;
    while (i < n && json_ws(s[i])) i++;
    if (i == n || s[i] != '"') return "not a JSON string";
    i++;
    for (;;) {
        if (i >= n) return "unterminated JSON string";
        char c = s[i];
        if (c == '"') break;
        if ((unsigned char)c < 0x20) return "control character inside a JSON string";
        if (c != '\\') {
            size_t j = i;
            while (j < n && s[j] != '"' && s[j] != '\\' && (unsigned char)s[j] >= 0x20) j++;
            if (tk_buf_put(out, s + i, j - i)) return "out of memory";
            i = j;
            continue;
        }
        if (++i >= n) return "unterminated JSON string";
        char e = s[i++];
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *hit = e ? strchr(from, e) : NULL;
        if (hit) {
            if (tk_buf_put(out, &to[hit - from], 1)) return "out of memory";
            continue;
        }
        if (e != 'u') return "bad escape in a JSON string";
        uint32_t cp, lo;
        if (hex4(s, n, i, &cp)) return "bad \\u escape";
        i += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return "lone surrogate in a \\u escape";
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (i + 6 > n || s[i] != '\\' || s[i + 1] != 'u' || hex4(s, n, i + 2, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return "lone surrogate in a \\u escape";
            i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        char u[4];
        if (tk_buf_put(out, u, tk_utf8_encode(cp, u))) return "out of memory";
    }
    i++;
    while (i < n && json_ws(s[i])) i++;
    if (i != n) return "text after the JSON string";
    if (tk_buf_put(out, "", 0)) return "out of memory";
    if (tk_utf8_check(out->p, out->n) != out->n) return "the string is not valid UTF-8";
    return NULL;
}

static void json_escape(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    static const char from[] = "\"\\\n\r\t\b\f", to[] = "\"\\nrtbf";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *hit = c ? strchr(from, c) : NULL;
        if (hit)
            fprintf(f, "\\%c", to[hit - from]);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void print_ids(FILE *f, const qt_tok_ids *v) {
    fputc('[', f);
    for (int64_t i = 0; i < v->n; i++) fprintf(f, i ? ", %d" : "%d", (int)v->ids[i]);
    fputs("]\n", f);
}

/* a JSON array of token ids (integers 0 .. 2^31-1) into v */
static const char *id_array(const char *s, size_t n, qt_tok_ids *v, char *why, size_t whyn) {
    const char *end = NULL;
    cJSON *a = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    v->n = 0;
    bool rest = false; /* anything but white space after the array */
    for (const char *q = end ? end : s; a && q < s + n; q++) rest |= !json_ws(*q);
    if (!a || !cJSON_IsArray(a) || rest) {
        cJSON_Delete(a);
        return "not a JSON array of token ids";
    }
    const cJSON *e;
    int64_t k = 0;
    const char *bad = NULL;
    cJSON_ArrayForEach(e, a) {
        double d = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(d >= 0 && d <= 2147483647.0 && d == floor(d))) {
            snprintf(why, whyn, "element %ld is not a token id", (long)k);
            bad = why;
            break;
        }
        if (v->n == v->cap) {
            int64_t c = v->cap ? v->cap * 2 : 256;
            int32_t *p = realloc(v->ids, (size_t)c * sizeof *p);
            if (!p) {
                bad = "out of memory";
                break;
            }
            v->ids = p, v->cap = c;
        }
        v->ids[v->n++] = (int32_t)d;
        k++;
    }
    cJSON_Delete(a);
    return bad;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!json_ws(s[i])) return false;
    return true;
}

/* one unit of work: a text to encode or an id array to decode; line 0: the whole input */
static int one(const qt_tok *t, const qt_tok_cli_opts *o, const char *s, size_t n,
               const char *in_name, long line, FILE *out, tk_buf *str, qt_tok_ids *ids,
               qt_err *err) {
    char where[64] = "";
    if (line) snprintf(where, sizeof where, ":%ld", line);
    char why[128];
    if (!o->decode) {
        const char *text = s;
        size_t tn = n;
        if (o->jsonl) {
            const char *bad = json_string(s, n, str);
            if (bad) return qt_err_set(err, QT_ERR_FORMAT, "%s%s: %s", in_name, where, bad);
            text = str->p, tn = str->n;
        }
        ids->n = 0;
        if (qt_tok_encode(t, text, tn, o->add_special, ids, err)) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            return qt_err_set(err, err->code, "%s%s: %s", in_name, where, msg);
        }
        print_ids(out, ids);
        return 0;
    }
    const char *bad = id_array(s, n, ids, why, sizeof why);
    if (bad) return qt_err_set(err, QT_ERR_FORMAT, "%s%s: %s", in_name, where, bad);
    char *text;
    size_t tn;
    if (qt_tok_decode(t, ids->ids, ids->n, o->skip_special, &text, &tn, err)) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return qt_err_set(err, err->code, "%s%s: %s", in_name, where, msg);
    }
    if (o->jsonl) {
        json_escape(out, text, tn);
        fputc('\n', out);
    } else {
        fwrite(text, 1, tn, out);
    }
    free(text);
    return 0;
}

int qt_tok_cli_run(const qt_tok *t, const qt_tok_cli_opts *o, FILE *in, const char *in_name,
                   FILE *out, qt_err *err) {
    tk_buf str = {0}, all = {0};
    qt_tok_ids ids = {0};
    int rc = 0;
    if (o->jsonl) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t k;
        long no = 0;
        while (!rc && (k = getline(&line, &cap, in)) >= 0) {
            no++;
            size_t n = (size_t)k;
            if (blank(line, n)) {
                fputc('\n', out);
                continue;
            }
            rc = one(t, o, line, n, in_name, no, out, &str, &ids, err);
        }
        free(line);
    } else {
        char chunk[1 << 16];
        size_t k;
        while (!rc && (k = fread(chunk, 1, sizeof chunk, in)) > 0)
            if (tk_buf_put(&all, chunk, k)) rc = qt_err_set(err, QT_ERR_MEMORY, "out of memory");
        if (!rc) rc = one(t, o, all.p ? all.p : "", all.n, in_name, 0, out, &str, &ids, err);
    }
    if (!rc && ferror(in))
        rc = qt_err_set(err, QT_ERR_IO, "%s: read error: %s", in_name, strerror(errno));
    if (fflush(out) != 0 || ferror(out))
        if (!rc) rc = qt_err_set(err, QT_ERR_IO, "writing the output: %s", strerror(errno));
    tk_buf_free(&str);
    tk_buf_free(&all);
    qt_tok_ids_free(&ids);
    return rc ? -1 : 0;
}
