/* tok_util.c - the tokenizer's plumbing (see tok_internal.h): buffers, the string arena, the
 * two hash maps, PCRE2 regexes iterated the way the tokenizers library iterates its Oniguruma
 * matches, the split behaviours, UTF-8 checking / lossy decoding, GPT-2's byte map. */
#include "data/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- buffers ---------------------------------------------------------------------------- */
int tk_buf_reserve(tk_buf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t c = b->cap ? b->cap : 64;
    while (c < b->n + extra + 1) c *= 2;
    char *p = realloc(b->p, c);
    if (!p) return -1;
    b->p = p;
    b->cap = c;
    return 0;
}

int tk_buf_put(tk_buf *b, const void *s, size_t n) {
    if (tk_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0; /* always NUL-terminated, for messages and callers that want a C string */
    return 0;
}

void tk_buf_free(tk_buf *b) {
    free(b->p);
    *b = (tk_buf){0};
}

/* ---- arena ------------------------------------------------------------------------------ */
struct tk_block {
    tk_block *next;
    size_t used, cap;
    char data[];
};

char *tk_arena_dup(tk_arena *a, const char *s, size_t n) {
    tk_block *b = a->head;
    if (!b || b->cap - b->used < n + 1) {
        size_t cap = n + 1 > 65536 ? n + 1 : 65536;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head, b->used = 0, b->cap = cap;
        a->head = b;
    }
    char *p = b->data + b->used;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    b->used += n + 1;
    return p;
}

void tk_arena_free(tk_arena *a) {
    for (tk_block *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
}

/* ---- string map ------------------------------------------------------------------------- */
static uint64_t hash_bytes(const char *s, size_t n) { /* FNV-1a, then a final mix */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    return h * 0xbf58476d1ce4e5b9ull;
}

static int map_grow(tk_map *m) {
    size_t ns = m->nslot ? m->nslot * 2 : 1024;
    uint32_t *slot = calloc(ns, sizeof *slot);
    if (!slot) return -1;
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (size_t)(hash_bytes(m->ent[k].s, m->ent[k].n) >> 20) & (ns - 1);
        while (slot[i]) i = (i + 1) & (ns - 1);
        slot[i] = (uint32_t)k + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->nslot = ns;
    return 0;
}

int tk_map_put(tk_map *m, const char *s, size_t n, int32_t v) {
    if ((m->n + 1) * 2 > m->nslot && map_grow(m)) return -1;
    size_t mask = m->nslot - 1, i = (size_t)(hash_bytes(s, n) >> 20) & mask;
    for (; m->slot[i]; i = (i + 1) & mask) {
        tk_ent *e = &m->ent[m->slot[i] - 1];
        if (e->n == n && !memcmp(e->s, s, n)) {
            e->v = v;
            return 0;
        }
    }
    if (m->n == m->cap) {
        size_t c = m->cap ? m->cap * 2 : 512;
        tk_ent *ent = realloc(m->ent, c * sizeof *ent);
        if (!ent) return -1;
        m->ent = ent;
        m->cap = c;
    }
    m->ent[m->n] = (tk_ent){s, (uint32_t)n, v};
    m->slot[i] = (uint32_t)++m->n;
    return 0;
}

int32_t tk_map_get(const tk_map *m, const char *s, size_t n) {
    if (!m->nslot) return -1;
    size_t mask = m->nslot - 1, i = (size_t)(hash_bytes(s, n) >> 20) & mask;
    for (; m->slot[i]; i = (i + 1) & mask) {
        const tk_ent *e = &m->ent[m->slot[i] - 1];
        if (e->n == n && !memcmp(e->s, s, n)) return e->v;
    }
    return -1;
}

void tk_map_free(tk_map *m) {
    free(m->ent);
    free(m->slot);
    *m = (tk_map){0};
}

/* ---- pair map ----------------------------------------------------------------------------- */
static void pmap_insert(tk_pent *t, size_t cap, tk_pent e) {
    uint64_t h = e.key * 0x9E3779B97F4A7C15ull;
    size_t mask = cap - 1, i = (size_t)(h >> 32) & mask;
    for (; t[i].rank >= 0; i = (i + 1) & mask)
        if (t[i].key == e.key) break;
    t[i] = e;
}

int tk_pmap_put(tk_pmap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t c = m->cap ? m->cap * 2 : 1024;
        tk_pent *t = malloc(c * sizeof *t);
        if (!t) return -1;
        for (size_t i = 0; i < c; i++) t[i].rank = -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->t[i].rank >= 0) pmap_insert(t, c, m->t[i]);
        free(m->t);
        m->t = t;
        m->cap = c;
    }
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    /* a repeated pair takes the later rank, as the library's map collection does */
    if (!tk_pmap_get(m, a, b)) m->n++;
    pmap_insert(m->t, m->cap, (tk_pent){key, rank, id});
    return 0;
}

void tk_pmap_free(tk_pmap *m) {
    free(m->t);
    *m = (tk_pmap){0};
}

/* ---- regexes ---------------------------------------------------------------------------- */
int tk_re_compile(tk_re *re, const char *pat, size_t n, bool literal, char *msg, size_t msgn) {
    int code;
    PCRE2_SIZE at;
    /* PCRE2_LITERAL refuses PCRE2_UCP, which plain text does not need */
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    re->code = pcre2_compile((PCRE2_SPTR)pat, n, opts, &code, &at, NULL);
    if (!re->code) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(code, buf, sizeof buf);
        snprintf(msg, msgn, "%s at offset %zu", (const char *)buf, (size_t)at);
        return -1;
    }
    /* JIT makes pre-tokenization several times faster; where it is unavailable the
     * interpreter gives the same matches */
    (void)pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
    return 0;
}

void tk_re_free(tk_re *re) {
    pcre2_code_free(re->code);
    re->code = NULL;
}

static int ranges_push(tk_ranges *r, size_t s, size_t e, bool match) {
    if (r->n == r->cap) {
        size_t c = r->cap ? r->cap * 2 : 64;
        tk_range *p = realloc(r->r, c * sizeof *p);
        if (!p) return -1;
        r->r = p;
        r->cap = c;
    }
    r->r[r->n++] = (tk_range){s, e, match};
    return 0;
}

/* Matches are found left to right without overlap; an empty match moves the search one
 * character on and is dropped when it touches the previous match (the iteration of Rust's
 * regex and onig crates). The string was checked as UTF-8 before. */
int tk_re_find_all(const tk_re *re, pcre2_match_data *md, const char *s, size_t n, tk_ranges *out,
                   qt_err *err) {
    out->n = 0;
    if (n == 0)
        return ranges_push(out, 0, 0, false) ? qt_err_set(err, QT_ERR_MEMORY, "out of memory") : 0;
    size_t prev = 0, from = 0, last_match = (size_t)-1;
    while (from <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its frames on the heap */
            rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                             md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(rc, buf, sizeof buf);
            return qt_err_set(err, QT_ERR_ARG, "regex match failed: %s", (const char *)buf);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me) {
            from = me < n ? me + tk_utf8_len((unsigned char)s[me]) : n + 1;
            if (me == last_match) continue;
        } else {
            from = me;
        }
        last_match = me;
        if (prev != ms && ranges_push(out, prev, ms, false)) goto oom;
        if (ranges_push(out, ms, me, true)) goto oom;
        prev = me;
    }
    if (prev != n && ranges_push(out, prev, n, false)) goto oom;
    return 0;
oom:
    return qt_err_set(err, QT_ERR_MEMORY, "out of memory");
}

static void ranges_reverse(tk_range *r, size_t n) {
    for (size_t a = 0, b = n ? n - 1 : 0; a < b; a++, b--) {
        tk_range t = r[a];
        r[a] = r[b];
        r[b] = t;
    }
}

/* NormalizedString::split's behaviours, range list in place (the write index never passes
 * the read index) */
void tk_ranges_split(tk_ranges *r, int behavior, bool invert) {
    if (invert)
        for (size_t i = 0; i < r->n; i++) r->r[i].match = !r->r[i].match;
    size_t k = 0;
    bool prev = false;
    switch (behavior) {
    case TK_SPLIT_ISOLATED:
        return;
    case TK_SPLIT_REMOVED:
        for (size_t i = 0; i < r->n; i++)
            if (!r->r[i].match) r->r[k++] = r->r[i];
        break;
    case TK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < r->n; i++) {
            if (r->r[i].match == prev && k)
                r->r[k - 1].e = r->r[i].e;
            else
                r->r[k++] = r->r[i];
            prev = r->r[i].match;
        }
        break;
    case TK_SPLIT_PREVIOUS:
        for (size_t i = 0; i < r->n; i++) {
            if (r->r[i].match && !prev && k)
                r->r[k - 1].e = r->r[i].e;
            else
                r->r[k++] = r->r[i];
            prev = r->r[i].match;
        }
        break;
    case TK_SPLIT_NEXT: /* the library walks from the end: reverse, merge, reverse back */
        ranges_reverse(r->r, r->n);
        for (size_t i = 0; i < r->n; i++) {
            bool m = r->r[i].match;
            if (m && !prev && k)
                r->r[k - 1].s = r->r[i].s;
            else
                r->r[k++] = r->r[i];
            prev = m;
        }
        ranges_reverse(r->r, k);
        break;
    }
    r->n = k;
}

void tk_ranges_free(tk_ranges *r) {
    free(r->r);
    *r = (tk_ranges){0};
}

/* ---- UTF-8 -------------------------------------------------------------------------------- */
/* the length of a valid sequence at s[i], or 0 (lo/hi: the second byte's range, which rules
 * out overlong forms, surrogates and code points above U+10FFFF) */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t i, size_t *valid_prefix) {
    unsigned c = s[i];
    size_t w = c >= 0xC2 && c <= 0xDF   ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 0;
    *valid_prefix = 1;
    if (!w) return 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    if (i + 1 >= n || s[i + 1] < lo || s[i + 1] > hi) return 0;
    size_t k = 2;
    while (k < w && i + k < n && (s[i + k] & 0xC0) == 0x80) k++;
    *valid_prefix = k;
    return k == w ? w : 0;
}

size_t tk_utf8_check(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, vp;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t w = utf8_seq(u, n, i, &vp);
        if (!w) return i;
        i += w;
    }
    return n;
}

uint32_t tk_utf8_decode(const char *s, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t w = tk_utf8_len(u[0]);
    *len = w;
    switch (w) {
    case 1:
        return u[0];
    case 2:
        return (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
    case 3:
        return (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
    default:
        return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 |
               (uint32_t)(u[2] & 0x3F) << 6 | (u[3] & 0x3F);
    }
}

size_t tk_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Each maximal invalid subpart (the longest prefix of a would-be valid sequence, at least
 * one byte) becomes one U+FFFD: Rust's from_utf8_lossy, and Python's 'replace'. */
int tk_utf8_lossy(tk_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0, vp;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t w = utf8_seq(u, n, i, &vp);
        if (w) {
            i += w;
            continue;
        }
        if (tk_buf_put(out, s + run, i - run) || tk_buf_put(out, "\xEF\xBF\xBD", 3)) return -1;
        i += vp;
        run = i;
    }
    return tk_buf_put(out, s + run, n - run);
}

bool tk_is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* bytes that are printable Latin-1 stand for themselves; the others take the code points
 * from 256 on, in byte order (openai/gpt-2 encoder.py bytes_to_unicode) */
void tk_bytemap_init(tk_bytemap *m) {
    for (int i = 0; i < 0x144; i++) m->dec[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = self ? (uint32_t)b : (uint32_t)next++;
        char u[4];
        size_t k = tk_utf8_encode(cp, u);
        memcpy(m->enc[b], u, k);
        m->enc_n[b] = (uint8_t)k;
        m->dec[cp] = (int16_t)b;
    }
}
