/* tokenizer.c - encoding, in the tokenizers library's order: added tokens that are not
 * normalized are cut out of the raw text; each remaining segment is normalized and the
 * normalized added tokens are cut out of it; each remaining piece goes through the
 * pre-tokenizers (each one's pieces into the next, depth first, which gives the library's
 * order) and finally through the BPE model; the post-processor's tokens wrap the result.
 * Also the small accessors of tokenizer.h. Loading is in tok_load.c, decoding in
 * tok_decode.c. */
#include <stdlib.h>
#include <string.h>

#include "data/tok_internal.h"

typedef struct {
    int32_t c, prev, next;
    uint32_t len; /* bytes of the text it covers; 0: merged into its left neighbour */
} tk_sym;

typedef struct {
    int32_t rank, pos, id;
} tk_merge;

typedef struct {
    const qt_tok *t;
    pcre2_match_data *md;
    qt_tok_ids *out;
    qt_err *err;
    tk_buf prep[TK_MAX_STAGES], piece[TK_MAX_STAGES]; /* per pre-tokenizer level */
    tk_ranges rng[TK_MAX_STAGES];
    tk_buf norm, key;
    tk_sym *sym;
    size_t sym_cap;
    tk_merge *heap;
    size_t heap_n, heap_cap;
} tk_enc;

static int enc_oom(tk_enc *e) {
    return qt_err_set(e->err, QT_ERR_MEMORY, "out of memory");
}

static int emit(tk_enc *e, int32_t id) {
    qt_tok_ids *v = e->out;
    if (v->n == v->cap) {
        int64_t c = v->cap ? v->cap * 2 : 256;
        int32_t *p = realloc(v->ids, (size_t)c * sizeof *p);
        if (!p) return enc_oom(e);
        v->ids = p;
        v->cap = c;
    }
    v->ids[v->n++] = id;
    return 0;
}

void qt_tok_ids_free(qt_tok_ids *v) {
    free(v->ids);
    *v = (qt_tok_ids){0};
}

/* ---- BPE model ---------------------------------------------------------------------------- */
/* a min-heap on (rank, position), as the library's merge queue */
static bool merge_less(tk_merge a, tk_merge b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static int heap_push(tk_enc *e, tk_merge m) {
    if (e->heap_n == e->heap_cap) {
        size_t c = e->heap_cap ? e->heap_cap * 2 : 64;
        tk_merge *p = realloc(e->heap, c * sizeof *p);
        if (!p) return enc_oom(e);
        e->heap = p;
        e->heap_cap = c;
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!merge_less(m, e->heap[up])) break;
        e->heap[i] = e->heap[up];
        i = up;
    }
    e->heap[i] = m;
    return 0;
}

static tk_merge heap_pop(tk_enc *e) {
    tk_merge top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && merge_less(e->heap[c + 1], e->heap[c])) c++;
        if (!merge_less(e->heap[c], last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static int sym_add(tk_enc *e, size_t *n, int32_t c, uint32_t len) {
    if (*n == e->sym_cap) {
        size_t cap = e->sym_cap ? e->sym_cap * 2 : 64;
        tk_sym *p = realloc(e->sym, cap * sizeof *p);
        if (!p) return enc_oom(e);
        e->sym = p;
        e->sym_cap = cap;
    }
    if (*n) e->sym[*n - 1].next = (int32_t)*n;
    e->sym[*n] = (tk_sym){c, (int32_t)*n - 1, -1, len};
    (*n)++;
    return 0;
}

/* Word::merge_all: always the lowest-ranked pair present, leftmost first; queue entries that
 * went stale (their pair no longer there) are skipped when popped */
static int merge_all(tk_enc *e, size_t n) {
    const tk_pmap *mp = &e->t->merges;
    tk_sym *s = e->sym;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const tk_pent *m = tk_pmap_get(mp, s[i].c, s[i + 1].c);
        if (m && heap_push(e, (tk_merge){m->rank, (int32_t)i, m->id})) return -1;
    }
    while (e->heap_n) {
        tk_merge top = heap_pop(e);
        s = e->sym;
        tk_sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next == -1) continue;
        int32_t next_pos = cur->next;
        tk_sym right = s[next_pos];
        const tk_pent *m = tk_pmap_get(mp, cur->c, right.c);
        if (!m || m->id != top.id) continue;
        cur->c = top.id;
        cur->len += right.len;
        cur->next = right.next;
        s[next_pos].len = 0;
        if (right.next > -1 && (size_t)right.next < n) s[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            m = tk_pmap_get(mp, s[cur->prev].c, cur->c);
            if (m && heap_push(e, (tk_merge){m->rank, cur->prev, m->id})) return -1;
        }
        s = e->sym, cur = &s[top.pos];
        if (cur->next >= 0 && (size_t)cur->next < n) {
            m = tk_pmap_get(mp, cur->c, s[cur->next].c);
            if (m && heap_push(e, (tk_merge){m->rank, top.pos, m->id})) return -1;
        }
    }
    return 0;
}

/* BPE::merge_word + tokenize for one pre-tokenized piece */
static int bpe(tk_enc *e, const char *w, size_t n) {
    const qt_tok *t = e->t;
    if (t->ignore_merges) { /* a piece that is itself a token is emitted whole */
        int32_t id = tk_map_get(&t->vocab, w, n);
        if (id >= 0) return emit(e, id);
    }
    size_t ns = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0; /* a pending unk, fused with the next ones when fuse_unk */
    for (size_t i = 0; i < n;) {
        size_t cl = tk_utf8_len((unsigned char)w[i]);
        const char *key = w + i;
        size_t kn = cl;
        bool first = i == 0, last = i + cl == n;
        if ((!first && t->cont_prefix) || (last && t->eow_suffix)) {
            e->key.n = 0;
            if ((!first && t->cont_prefix && tk_buf_put(&e->key, t->cont_prefix, t->cont_n)) ||
                tk_buf_put(&e->key, w + i, cl) ||
                (last && t->eow_suffix && tk_buf_put(&e->key, t->eow_suffix, t->eow_n)))
                return enc_oom(e);
            key = e->key.p, kn = e->key.n;
        }
        i += cl;
        int32_t id = tk_map_get(&t->vocab, key, kn);
        if (id >= 0) {
            if (unk_id >= 0 && sym_add(e, &ns, unk_id, unk_len)) return -1;
            unk_id = -1;
            if (sym_add(e, &ns, id, (uint32_t)cl)) return -1;
            continue;
        }
        if (t->byte_fallback) { /* all of the character's bytes as <0xHH>, or none */
            bool all = true;
            for (size_t b = 0; b < kn; b++) all &= t->byte_ids[(unsigned char)key[b]] >= 0;
            if (all) {
                /* the library adds these before a pending unk; so do we */
                for (size_t b = 0; b < kn; b++)
                    if (sym_add(e, &ns, t->byte_ids[(unsigned char)key[b]], 1)) return -1;
                continue;
            }
        }
        if (!t->unk) continue; /* no unk token: the character is dropped, as the library does */
        if (t->unk_id < 0)
            return qt_err_set(e->err, QT_ERR_FORMAT, "%s: unk_token \"%s\" is not in the vocab",
                              t->name, t->unk);
        if (unk_id >= 0 && t->fuse_unk) {
            unk_len += (uint32_t)cl;
        } else {
            if (unk_id >= 0 && sym_add(e, &ns, unk_id, unk_len)) return -1;
            unk_id = t->unk_id, unk_len = (uint32_t)cl;
        }
    }
    if (unk_id >= 0 && sym_add(e, &ns, unk_id, unk_len)) return -1;
    if (merge_all(e, ns)) return -1;
    for (size_t i = 0; i < ns; i++)
        if (e->sym[i].len && emit(e, e->sym[i].c)) return -1;
    return 0;
}

/* ---- pre-tokenizers ----------------------------------------------------------------------- */
/* origin: the piece starts at offset 0 of the input text (Metaspace's prepend_scheme first) */
static int pretok(tk_enc *e, int lv, const char *s, size_t n, bool origin) {
    const qt_tok *t = e->t;
    if (n == 0) return 0; /* empty pieces are dropped at every step */
    if (lv == t->n_pre) return bpe(e, s, n);
    const tk_pre *p = &t->pre[lv];
    tk_buf *prep = &e->prep[lv], *piece = &e->piece[lv];
    tk_ranges *r = &e->rng[lv];
    switch (p->kind) {
    case TK_PRE_SPLIT:
    case TK_PRE_DIGITS:
        if (tk_re_find_all(&p->re, e->md, s, n, r, e->err)) return -1;
        tk_ranges_split(r, p->behavior, p->invert);
        for (size_t i = 0; i < r->n; i++)
            if (pretok(e, lv + 1, s + r->r[i].s, r->r[i].e - r->r[i].s, origin && !r->r[i].s))
                return -1;
        return 0;
    case TK_PRE_BYTELEVEL: {
        const char *src = s;
        size_t sn = n;
        if (p->add_prefix_space && s[0] != ' ') {
            prep->n = 0;
            if (tk_buf_put(prep, " ", 1) || tk_buf_put(prep, s, n)) return enc_oom(e);
            src = prep->p, sn = prep->n;
        }
        if (p->use_regex) {
            if (tk_re_find_all(&t->gpt2_re, e->md, src, sn, r, e->err)) return -1;
        } else {
            r->n = 0;
            if (!r->cap) {
                r->r = malloc(16 * sizeof *r->r);
                if (!r->r) return enc_oom(e);
                r->cap = 16;
            }
            r->r[r->n++] = (tk_range){0, sn, false};
        }
        for (size_t i = 0; i < r->n; i++) {
            piece->n = 0;
            if (tk_buf_reserve(piece, 2 * (r->r[i].e - r->r[i].s))) return enc_oom(e);
            for (size_t k = r->r[i].s; k < r->r[i].e; k++) {
                unsigned char b = (unsigned char)src[k];
                memcpy(piece->p + piece->n, t->bytemap.enc[b], t->bytemap.enc_n[b]);
                piece->n += t->bytemap.enc_n[b];
            }
            if (pretok(e, lv + 1, piece->p, piece->n, origin && !r->r[i].s)) return -1;
        }
        return 0;
    }
    case TK_PRE_METASPACE: {
        prep->n = 0;
        /* spaces become the replacement first, so a leading space counts as one */
        bool starts = s[0] == ' ' || (n >= p->repl_n && !memcmp(s, p->repl, p->repl_n));
        bool pre = !starts &&
                   (p->prepend == TK_PREPEND_ALWAYS || (p->prepend == TK_PREPEND_FIRST && origin));
        if (pre && tk_buf_put(prep, p->repl, p->repl_n)) return enc_oom(e);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ' ? tk_buf_put(prep, p->repl, p->repl_n) : tk_buf_put(prep, s + i, 1))
                return enc_oom(e);
        }
        if (!p->split) return pretok(e, lv + 1, prep->p, prep->n, origin);
        if (tk_re_find_all(&p->re, e->md, prep->p, prep->n, r, e->err)) return -1;
        tk_ranges_split(r, TK_SPLIT_NEXT, false);
        for (size_t i = 0; i < r->n; i++)
            if (pretok(e, lv + 1, prep->p + r->r[i].s, r->r[i].e - r->r[i].s, origin && !r->r[i].s))
                return -1;
        return 0;
    }
    }
    return 0;
}

/* ---- normalizers ---------------------------------------------------------------------------- */
int tk_normalize(const qt_tok *t, pcre2_match_data *md, const char *s, size_t n, tk_buf *out,
                 qt_err *err) {
    tk_buf a = {0}, b = {0};
    tk_ranges r = {0};
    pcre2_match_data *own = NULL;
    int rc = 0;
    if (!md) md = own = pcre2_match_data_create(1, NULL);
    if (!md || tk_buf_put(&a, s, n)) {
        rc = qt_err_set(err, QT_ERR_MEMORY, "out of memory");
        goto done;
    }
    for (int k = 0; k < t->n_norm && !rc; k++) {
        const tk_norm *nm = &t->norm[k];
        b.n = 0;
        int bad = 0;
        switch (nm->kind) {
        case TK_NORM_PREPEND:
            if (a.n) bad = tk_buf_put(&b, nm->str, nm->str_n);
            bad = bad || tk_buf_put(&b, a.p, a.n);
            break;
        case TK_NORM_REPLACE:
            if (tk_re_find_all(&nm->re, md, a.p, a.n, &r, err)) {
                rc = -1;
                break;
            }
            for (size_t i = 0; i < r.n && !bad; i++)
                bad = r.r[i].match ? tk_buf_put(&b, nm->str, nm->str_n)
                                   : tk_buf_put(&b, a.p + r.r[i].s, r.r[i].e - r.r[i].s);
            break;
        case TK_NORM_STRIP: {
            size_t lo = 0, hi = a.n, cl;
            while (nm->left && lo < hi && tk_is_white_space(tk_utf8_decode(a.p + lo, &cl)))
                lo += cl;
            while (nm->right && hi > lo) {
                size_t j = hi - 1;
                while (j > lo && ((unsigned char)a.p[j] & 0xC0) == 0x80) j--;
                if (!tk_is_white_space(tk_utf8_decode(a.p + j, &cl))) break;
                hi = j;
            }
            bad = tk_buf_put(&b, a.p + lo, hi - lo);
            break;
        }
        case TK_NORM_BYTELEVEL:
            for (size_t i = 0; i < a.n && !bad; i++) {
                unsigned char c = (unsigned char)a.p[i];
                bad = tk_buf_put(&b, t->bytemap.enc[c], t->bytemap.enc_n[c]);
            }
            break;
        }
        if (bad) rc = qt_err_set(err, QT_ERR_MEMORY, "out of memory");
        tk_buf tmp = a;
        a = b, b = tmp;
    }
    out->n = 0;
    if (!rc && tk_buf_put(out, a.p, a.n)) rc = qt_err_set(err, QT_ERR_MEMORY, "out of memory");
done:
    tk_buf_free(&a);
    tk_buf_free(&b);
    tk_ranges_free(&r);
    pcre2_match_data_free(own);
    return rc;
}

/* ---- added tokens --------------------------------------------------------------------------- */
/* leftmost-longest match of the trie's patterns in s[from..n) */
static bool trie_find(const tk_trie *tr, const char *s, size_t n, size_t from, size_t *ms,
                      size_t *me, int *which) {
    if (!tr->n) return false;
    for (size_t i = from; i < n; i++) {
        if (!tr->first[(unsigned char)s[i]]) continue;
        int32_t cur = 0, best = -1;
        size_t end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t k = tr->node[cur].child;
            while (k >= 0 && tr->node[k].byte != (unsigned char)s[j]) k = tr->node[k].sibling;
            if (k < 0) break;
            cur = k;
            if (tr->node[k].value >= 0) best = tr->node[k].value, end = j + 1;
        }
        if (best >= 0) {
            *ms = i, *me = end, *which = best;
            return true;
        }
    }
    return false;
}

static bool is_word_char(const tk_enc *e, const char *c, size_t n) {
    int rc = pcre2_match(e->t->word_re.code, (PCRE2_SPTR)c, n, 0,
                         PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, e->md, NULL);
    return rc >= 0;
}

static int text_segment(tk_enc *e, const char *s, size_t n, bool origin, int pass);

/* AddedVocabulary::find_matches: cuts the trie's tokens out of s, with the lstrip / rstrip
 * (Unicode white space) and single_word rules; what is left goes on to the next step */
static int split_added(tk_enc *e, const tk_trie *tr, const char *s, size_t n, bool origin,
                       int pass) {
    const qt_tok *t = e->t;
    size_t start_offset = 0, pos = 0, ms, me, cl;
    int k;
    while (pos < n && trie_find(tr, s, n, pos, &ms, &me, &k)) {
        const tk_added *a = &t->added[k];
        size_t start = ms, stop = me;
        pos = me;
        if (a->single_word) {
            bool before = false, after = false;
            if (start > 0) {
                size_t j = start - 1;
                while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
                before = is_word_char(e, s + j, start - j);
            }
            if (stop < n) after = is_word_char(e, s + stop, tk_utf8_len((unsigned char)s[stop]));
            if (before || after) continue;
        }
        if (a->lstrip) {
            size_t j = start;
            while (j > 0) {
                size_t i = j - 1;
                while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
                if (!tk_is_white_space(tk_utf8_decode(s + i, &cl))) break;
                j = i;
            }
            start = j > start_offset ? j : start_offset;
        }
        if (a->rstrip) {
            while (stop < n && tk_is_white_space(tk_utf8_decode(s + stop, &cl))) stop += cl;
            pos = stop; /* never match inside what was stripped */
        }
        if (start_offset < start &&
            text_segment(e, s + start_offset, start - start_offset, origin && !start_offset, pass))
            return -1;
        if (emit(e, a->id)) return -1;
        start_offset = stop;
    }
    if (start_offset < n &&
        text_segment(e, s + start_offset, n - start_offset, origin && !start_offset, pass))
        return -1;
    return 0;
}

/* pass 1: a raw segment between non-normalized added tokens: normalize, then cut out the
 * normalized added tokens (pass 2); pass 2: a piece for the pre-tokenizers */
static int text_segment(tk_enc *e, const char *s, size_t n, bool origin, int pass) {
    const qt_tok *t = e->t;
    if (pass == 2) return pretok(e, 0, s, n, origin);
    if (!t->n_norm) return split_added(e, &t->trie_norm, s, n, origin, 2);
    if (tk_normalize(t, e->md, s, n, &e->norm, e->err)) return -1;
    return split_added(e, &t->trie_norm, e->norm.p, e->norm.n, origin, 2);
}

int qt_tok_encode(const qt_tok *t, const char *text, size_t len, bool add_special, qt_tok_ids *out,
                  qt_err *err) {
    size_t bad = tk_utf8_check(text, len);
    if (bad != len)
        return qt_err_set(err, QT_ERR_ARG, "the text is not valid UTF-8 (byte %zu)", bad);
    int64_t n0 = out->n;
    tk_enc e = {.t = t, .out = out, .err = err};
    e.md = pcre2_match_data_create(1, NULL);
    int rc = e.md ? 0 : enc_oom(&e);
    for (int i = 0; !rc && add_special && i < t->n_prefix; i++) rc = emit(&e, t->prefix[i]);
    if (!rc) rc = split_added(&e, &t->trie_raw, text, len, true, 1);
    for (int i = 0; !rc && add_special && i < t->n_suffix; i++) rc = emit(&e, t->suffix[i]);
    for (int i = 0; i < TK_MAX_STAGES; i++) {
        tk_buf_free(&e.prep[i]);
        tk_buf_free(&e.piece[i]);
        tk_ranges_free(&e.rng[i]);
    }
    tk_buf_free(&e.norm);
    tk_buf_free(&e.key);
    free(e.sym);
    free(e.heap);
    pcre2_match_data_free(e.md);
    if (rc) out->n = n0; /* nothing half-done stays appended */
    return rc ? -1 : 0;
}

/* ---- accessors --------------------------------------------------------------------------------
 */
int64_t qt_tok_vocab_size(const qt_tok *t) {
    return t->n_ids;
}

int32_t qt_tok_token_id(const qt_tok *t, const char *token, size_t len) {
    int32_t id = tk_map_get(&t->added_map, token, len);
    return id >= 0 ? id : tk_map_get(&t->vocab, token, len);
}

const char *qt_tok_token_str(const qt_tok *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids || !t->id_str[id]) return NULL;
    if (len) *len = t->id_len[id];
    return t->id_str[id];
}

bool qt_tok_is_special(const qt_tok *t, int32_t id) {
    return id >= 0 && id < t->n_ids && t->special[id];
}

const int32_t *qt_tok_prefix_ids(const qt_tok *t, int *n) {
    *n = t->n_prefix;
    return t->prefix;
}

const int32_t *qt_tok_suffix_ids(const qt_tok *t, int *n) {
    *n = t->n_suffix;
    return t->suffix;
}

int32_t qt_tok_bos_id(const qt_tok *t) {
    return t->n_prefix ? t->prefix[0] : -1;
}
