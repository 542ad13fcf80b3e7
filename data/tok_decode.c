/* tok_decode.c - ids back to text, as the tokenizers library decodes: each id becomes its
 * token string (an added token in its matched form), special ones left out on request, then
 * the decoders run in order over the list of strings (ByteLevel, Metaspace, Replace,
 * ByteFallback, Fuse, Strip), and what is left is concatenated (joined with spaces when the
 * file has no decoder at all). */
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"

/* a list of strings in one buffer: string i is data[off[i] .. off[i+1]) */
typedef struct {
    tk_buf data;
    size_t *off;
    size_t n, cap;
} tk_sv;

static int sv_close(tk_sv *v) { /* ends the string being appended to data */
    if (v->n + 2 > v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        size_t *p = realloc(v->off, c * sizeof *p);
        if (!p) return -1;
        v->off = p;
        v->cap = c;
    }
    if (v->n == 0) v->off[0] = 0;
    v->off[++v->n] = v->data.n;
    return 0;
}

static int sv_push(tk_sv *v, const char *s, size_t n) {
    return tk_buf_put(&v->data, s, n) || sv_close(v) ? -1 : 0;
}

static void sv_clear(tk_sv *v) {
    v->n = 0, v->data.n = 0;
}

static void sv_free(tk_sv *v) {
    tk_buf_free(&v->data);
    free(v->off);
    *v = (tk_sv){0};
}

#define SV_STR(v, i) ((v)->data.p + (v)->off[i])
#define SV_LEN(v, i) ((v)->off[(i) + 1] - (v)->off[i])

/* "<0xHH>" -> the byte; u8::from_str_radix(_, 16) also takes "+H" */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0, digits = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            if (i == 3 && c == '+') continue;
            return -1;
        }
        v = v * 16 + d, digits++;
    }
    return digits ? v : -1;
}

static int flush_bytes(tk_sv *out, tk_buf *bytes) {
    if (!bytes->n) return 0;
    int rc;
    if (tk_utf8_check(bytes->p, bytes->n) == bytes->n) {
        rc = sv_push(out, bytes->p, bytes->n);
    } else { /* one U+FFFD per byte, not per invalid sequence */
        rc = 0;
        for (size_t i = 0; i < bytes->n && !rc; i++) rc = sv_push(out, "\xEF\xBF\xBD", 3);
    }
    bytes->n = 0;
    return rc;
}

static int run_decoder(const qt_tok *t, const tk_dec *d, pcre2_match_data *md, const tk_sv *in,
                       tk_sv *out, tk_buf *tmp, tk_ranges *r, qt_err *err) {
    sv_clear(out);
    size_t cl;
    switch (d->kind) {
    case TK_DEC_BYTELEVEL: { /* all tokens to bytes, then one lossy UTF-8 string */
        tmp->n = 0;
        for (size_t i = 0; i < in->n; i++) {
            const char *s = SV_STR(in, i);
            size_t n = SV_LEN(in, i), k0 = tmp->n;
            bool ok = true;
            for (size_t j = 0; j < n && ok; j += cl) {
                uint32_t cp = tk_utf8_decode(s + j, &cl);
                int b = cp < 0x144 ? t->bytemap.dec[cp] : -1;
                if (b < 0 || tk_buf_put(tmp, &(char){(char)b}, 1)) ok = false;
            }
            if (!ok) { /* a token with a character outside the map stays as it is */
                tmp->n = k0;
                if (tk_buf_put(tmp, s, n)) return -1;
            }
        }
        if (tk_utf8_lossy(&out->data, tmp->p ? tmp->p : "", tmp->n) || sv_close(out)) return -1;
        return 0;
    }
    case TK_DEC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = SV_STR(in, i);
            size_t n = SV_LEN(in, i);
            for (size_t j = 0; j < n; j += cl) {
                uint32_t cp = tk_utf8_decode(s + j, &cl);
                int rc = cp != d->repl          ? tk_buf_put(&out->data, s + j, cl)
                         : i == 0 && d->prepend ? 0
                                                : tk_buf_put(&out->data, " ", 1);
                if (rc) return -1;
            }
            if (sv_close(out)) return -1;
        }
        return 0;
    case TK_DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = SV_STR(in, i);
            if (tk_re_find_all(&d->re, md, s, SV_LEN(in, i), r, err)) return -2;
            for (size_t k = 0; k < r->n; k++)
                if (r->r[k].match ? tk_buf_put(&out->data, d->str, d->str_n)
                                  : tk_buf_put(&out->data, s + r->r[k].s, r->r[k].e - r->r[k].s))
                    return -1;
            if (sv_close(out)) return -1;
        }
        return 0;
    case TK_DEC_BYTEFALLBACK:
        tmp->n = 0;
        for (size_t i = 0; i < in->n; i++) {
            int b = byte_token(SV_STR(in, i), SV_LEN(in, i));
            if (b >= 0) {
                if (tk_buf_put(tmp, &(char){(char)b}, 1)) return -1;
                continue;
            }
            if (flush_bytes(out, tmp) || sv_push(out, SV_STR(in, i), SV_LEN(in, i))) return -1;
        }
        return flush_bytes(out, tmp);
    case TK_DEC_FUSE:
        return sv_push(out, in->data.p ? in->data.p : "", in->n ? in->off[in->n] : 0);
    case TK_DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = SV_STR(in, i);
            size_t n = SV_LEN(in, i), lo = 0, hi = n;
            for (size_t k = 0; k < d->start && lo < n; k++) {
                if (tk_utf8_decode(s + lo, &cl) != d->repl) break;
                lo += cl;
            }
            for (size_t k = 0; k < d->stop && hi > 0; k++) {
                size_t j = hi - 1;
                while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
                if (tk_utf8_decode(s + j, &cl) != d->repl) break;
                hi = j;
            }
            if (sv_push(out, s + lo, hi > lo ? hi - lo : 0)) return -1;
        }
        return 0;
    }
    return 0;
}

int qt_tok_decode(const qt_tok *t, const int32_t *ids, int64_t n, bool skip_special, char **text,
                  size_t *len, qt_err *err) {
    *text = NULL;
    if (len) *len = 0;
    tk_sv a = {0}, b = {0};
    tk_buf tmp = {0};
    tk_ranges r = {0};
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = md ? 0 : -1;
    for (int64_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id]) {
            rc = -2;
            qt_err_set(err, QT_ERR_ARG, "id %ld (position %ld) is not in the vocabulary of %s",
                       (long)id, (long)i, t->name);
            break;
        }
        if (skip_special && t->special[id]) continue;
        rc = sv_push(&a, t->id_str[id], t->id_len[id]);
    }
    for (int k = 0; k < t->n_dec && !rc; k++) {
        rc = run_decoder(t, &t->dec[k], md, &a, &b, &tmp, &r, err);
        tk_sv x = a;
        a = b, b = x;
    }
    tk_buf res = {0};
    for (size_t i = 0; i < a.n && !rc; i++) {
        if (i && !t->has_decoder) rc = tk_buf_put(&res, " ", 1);
        if (!rc) rc = tk_buf_put(&res, SV_STR(&a, i), SV_LEN(&a, i));
    }
    if (!rc && tk_buf_put(&res, "", 0)) rc = -1; /* a NUL-terminated string even when empty */
    if (rc == -1) qt_err_set(err, QT_ERR_MEMORY, "out of memory");
    sv_free(&a);
    sv_free(&b);
    tk_buf_free(&tmp);
    tk_ranges_free(&r);
    pcre2_match_data_free(md);
    if (rc) {
        tk_buf_free(&res);
        return -1;
    }
    *text = res.p;
    if (len) *len = res.n;
    return 0;
}
