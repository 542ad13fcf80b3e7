/* json_min.c - the JSON cursor of json_min.h. Strict: no comments, no trailing commas, no
 * leading zeros or '+', and every error says what was expected and where. */
#include "json_min.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qt_json_init(qt_json *j, const char *s, size_t n, char *err, size_t errlen) {
    j->s = s;
    j->n = n;
    j->pos = 0;
    j->err = err;
    j->errlen = errlen;
}

int qt_json_fail(qt_json *j, const char *what) {
    if (j->err && j->errlen) {
        if (j->pos >= j->n)
            snprintf(j->err, j->errlen, "%s at end of JSON (byte %zu)", what, j->pos);
        else
            snprintf(j->err, j->errlen, "%s at JSON byte %zu ('%c')", what, j->pos,
                     (j->s[j->pos] >= 32 && j->s[j->pos] < 127) ? j->s[j->pos] : '?');
    }
    return -1;
}

void qt_json_ws(qt_json *j) {
    while (j->pos < j->n && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' || j->s[j->pos] == '\n' ||
                             j->s[j->pos] == '\r'))
        j->pos++;
}

char qt_json_peek(qt_json *j) {
    qt_json_ws(j);
    return j->pos < j->n ? j->s[j->pos] : 0;
}

int qt_json_expect(qt_json *j, char c) {
    if (qt_json_peek(j) != c) {
        char what[32];
        snprintf(what, sizeof what, "expected '%c'", c);
        return qt_json_fail(j, what);
    }
    j->pos++;
    return 0;
}

static int hex4(qt_json *j, unsigned *out) {
    if (j->n - j->pos < 4) return qt_json_fail(j, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = j->s[j->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return qt_json_fail(j, "bad hex digit in \\u escape");
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

int qt_json_string(qt_json *j, char **out) {
    *out = NULL;
    if (qt_json_expect(j, '"')) return -1;
    /* decoded text is never longer than its escaped form */
    size_t start = j->pos, cap = 1;
    while (start + cap - 1 < j->n && j->s[start + cap - 1] != '"') {
        if (j->s[start + cap - 1] == '\\') cap++;
        cap++;
    }
    char *buf = malloc(cap + 4);
    if (!buf) return qt_json_fail(j, "out of memory");
    size_t k = 0;
    for (;;) {
        if (j->pos >= j->n) {
            free(buf);
            return qt_json_fail(j, "unterminated string");
        }
        unsigned char c = (unsigned char)j->s[j->pos++];
        if (c == '"') break;
        if (c < 0x20) {
            free(buf);
            j->pos--;
            return qt_json_fail(j, "control character in string");
        }
        if (c != '\\') {
            buf[k++] = (char)c;
            continue;
        }
        if (j->pos >= j->n) {
            free(buf);
            return qt_json_fail(j, "unterminated escape");
        }
        char e = j->s[j->pos++];
        unsigned cp;
        switch (e) {
        case '"':
            buf[k++] = '"';
            break;
        case '\\':
            buf[k++] = '\\';
            break;
        case '/':
            buf[k++] = '/';
            break;
        case 'b':
            buf[k++] = '\b';
            break;
        case 'f':
            buf[k++] = '\f';
            break;
        case 'n':
            buf[k++] = '\n';
            break;
        case 'r':
            buf[k++] = '\r';
            break;
        case 't':
            buf[k++] = '\t';
            break;
        case 'u':
            if (hex4(j, &cp)) {
                free(buf);
                return -1;
            }
            if (cp >= 0xd800 && cp < 0xdc00) { /* a surrogate pair makes one code point */
                unsigned lo;
                if (j->n - j->pos < 2 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u') {
                    free(buf);
                    return qt_json_fail(j, "unpaired surrogate in string");
                }
                j->pos += 2;
                if (hex4(j, &lo)) {
                    free(buf);
                    return -1;
                }
                if (lo < 0xdc00 || lo > 0xdfff) {
                    free(buf);
                    return qt_json_fail(j, "bad low surrogate in string");
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                free(buf);
                return qt_json_fail(j, "unpaired surrogate in string");
            }
            if (cp == 0) {
                free(buf);
                return qt_json_fail(j, "NUL character in string");
            }
            k += put_utf8(buf + k, cp);
            break;
        default:
            free(buf);
            j->pos--;
            return qt_json_fail(j, "bad escape in string");
        }
    }
    buf[k] = 0;
    *out = buf;
    return 0;
}

/* the extent of a JSON number token starting at pos, or 0 if malformed */
static size_t number_len(const qt_json *j, int *is_int) {
    size_t p = j->pos;
    *is_int = 1;
    if (p < j->n && j->s[p] == '-') p++;
    if (p >= j->n) return 0;
    if (j->s[p] == '0')
        p++;
    else if (j->s[p] >= '1' && j->s[p] <= '9')
        while (p < j->n && j->s[p] >= '0' && j->s[p] <= '9') p++;
    else
        return 0;
    if (p < j->n && j->s[p] == '.') {
        *is_int = 0;
        p++;
        size_t d = p;
        while (p < j->n && j->s[p] >= '0' && j->s[p] <= '9') p++;
        if (p == d) return 0;
    }
    if (p < j->n && (j->s[p] == 'e' || j->s[p] == 'E')) {
        *is_int = 0;
        p++;
        if (p < j->n && (j->s[p] == '+' || j->s[p] == '-')) p++;
        size_t d = p;
        while (p < j->n && j->s[p] >= '0' && j->s[p] <= '9') p++;
        if (p == d) return 0;
    }
    return p - j->pos;
}

int qt_json_number(qt_json *j, double *out) {
    qt_json_ws(j);
    int is_int;
    size_t len = number_len(j, &is_int);
    if (!len || len > 400) return qt_json_fail(j, "expected a number");
    char tmp[401];
    memcpy(tmp, j->s + j->pos, len);
    tmp[len] = 0;
    *out = strtod(tmp, NULL);
    j->pos += len;
    return 0;
}

int qt_json_int(qt_json *j, int64_t *out) {
    qt_json_ws(j);
    int is_int;
    size_t len = number_len(j, &is_int);
    if (!len || !is_int) return qt_json_fail(j, "expected an integer");
    if (len > 20) return qt_json_fail(j, "integer out of range");
    char tmp[24];
    memcpy(tmp, j->s + j->pos, len);
    tmp[len] = 0;
    errno = 0;
    long long v = strtoll(tmp, NULL, 10);
    if (errno == ERANGE) return qt_json_fail(j, "integer out of range");
    *out = (int64_t)v;
    j->pos += len;
    return 0;
}

int qt_json_next(qt_json *j, char close) {
    char c = qt_json_peek(j);
    if (c == ',') {
        j->pos++;
        return 1;
    }
    if (c == close) return 0;
    char what[40];
    snprintf(what, sizeof what, "expected ',' or '%c'", close);
    return qt_json_fail(j, what);
}

static int skip_depth(qt_json *j, int depth) {
    if (depth > 64) return qt_json_fail(j, "JSON nested too deeply");
    char c = qt_json_peek(j);
    if (c == '"') {
        char *s;
        if (qt_json_string(j, &s)) return -1;
        free(s);
        return 0;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->pos++;
        if (qt_json_peek(j) == close) {
            j->pos++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                char *k;
                if (qt_json_string(j, &k)) return -1;
                free(k);
                if (qt_json_expect(j, ':')) return -1;
            }
            if (skip_depth(j, depth + 1)) return -1;
            int r = qt_json_next(j, close);
            if (r < 0) return -1;
            if (r == 0) break;
        }
        j->pos++;
        return 0;
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t l = strlen(words[w]);
        if (j->n - j->pos >= l && !memcmp(j->s + j->pos, words[w], l)) {
            j->pos += l;
            return 0;
        }
    }
    double d;
    return qt_json_number(j, &d);
}

int qt_json_skip(qt_json *j) {
    return skip_depth(j, 0);
}

size_t qt_json_quote(const char *s, char *out, size_t cap) {
    size_t k = 0;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (k + 1 < cap) out[k] = (c);                                                             \
        k++;                                                                                       \
    } while (0)
    PUT('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            PUT('\\');
            PUT((char)c);
        } else if (c < 0x20 && strchr("\b\f\n\r\t", c)) {
            PUT('\\');
            PUT("btnfr"[c == '\b' ? 0 : c == '\t' ? 1 : c == '\n' ? 2 : c == '\f' ? 3 : 4]);
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            PUT('\\');
            PUT('u');
            PUT('0');
            PUT('0');
            PUT(hex[c >> 4]);
            PUT(hex[c & 15]);
        } else {
            PUT((char)c);
        }
    }
    PUT('"');
#undef PUT
    if (cap) out[k < cap ? k : cap - 1] = 0;
    return k;
}
