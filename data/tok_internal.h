/* tok_internal.h - what the tokenizer's files (tokenizer.c, tok_load.c, tok_decode.c,
 * tok_util.c, tok_cli.c) share and nothing else sees: byte buffers, a string arena, hash maps
 * (token string -> id, merge pair -> rank), PCRE2 regexes with the tokenizers library's match
 * iteration, UTF-8 helpers, and the loaded tokenizer's layout. */
#ifndef QT_TOK_INTERNAL_H
#define QT_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/tokenizer.h"

/* ---- byte buffers ---------------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} tk_buf;

int tk_buf_reserve(tk_buf *b, size_t extra); /* 0, or -1 when out of memory */
int tk_buf_put(tk_buf *b, const void *s, size_t n);
void tk_buf_free(tk_buf *b);

/* ---- a string arena: copies that live as long as the tokenizer ------------------------- */
typedef struct tk_block tk_block;
typedef struct {
    tk_block *head;
} tk_arena;

char *tk_arena_dup(tk_arena *a, const char *s, size_t n); /* NUL-terminated copy, NULL: OOM */
void tk_arena_free(tk_arena *a);

/* ---- string -> int32 (open addressing; keys are not copied: they must outlive the map) --- */
typedef struct {
    const char *s;
    uint32_t n;
    int32_t v;
} tk_ent;
typedef struct {
    tk_ent *ent;
    uint32_t *slot; /* index + 1 into ent, 0 = empty */
    size_t n, cap, nslot;
} tk_map;

int tk_map_put(tk_map *m, const char *s, size_t n, int32_t v); /* replaces; -1: OOM */
int32_t tk_map_get(const tk_map *m, const char *s, size_t n);  /* -1 when absent */
void tk_map_free(tk_map *m);

/* ---- (id, id) -> (rank, merged id) --------------------------------------------------------- */
typedef struct {
    uint64_t key;     /* a << 32 | b */
    int32_t rank, id; /* rank -1: empty slot */
} tk_pent;
typedef struct {
    tk_pent *t;
    size_t n, cap; /* cap: a power of two */
} tk_pmap;

int tk_pmap_put(tk_pmap *m, int32_t a, int32_t b, int32_t rank, int32_t id);
static inline const tk_pent *tk_pmap_get(const tk_pmap *m, int32_t a, int32_t b) {
    if (!m->cap) return NULL;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t mask = m->cap - 1, i = (size_t)(h >> 32) & mask;
    for (;; i = (i + 1) & mask) {
        const tk_pent *e = &m->t[i];
        if (e->rank < 0) return NULL;
        if (e->key == key) return e;
    }
}
void tk_pmap_free(tk_pmap *m);

/* ---- regexes (PCRE2, UTF + UCP, as the tokenizers library's Oniguruma patterns) ---------- */
typedef struct {
    pcre2_code *code;
} tk_re;

/* literal: the pattern is plain text (a "String" pattern). msg gets PCRE2's complaint. */
int tk_re_compile(tk_re *re, const char *pat, size_t n, bool literal, char *msg, size_t msgn);
void tk_re_free(tk_re *re);

/* One match-position list over a string: (start, end, is_match) ranges covering it, in order,
 * as the tokenizers library's Pattern::find_matches gives them. */
typedef struct {
    size_t s, e;
    bool match;
} tk_range;
typedef struct {
    tk_range *r;
    size_t n, cap;
} tk_ranges;

/* fills out with the match / non-match ranges of re over s; -1 with err set on failure */
int tk_re_find_all(const tk_re *re, pcre2_match_data *md, const char *s, size_t n, tk_ranges *out,
                   qt_err *err);
/* the tokenizers library's SplitDelimiterBehavior applied to a range list, in place: what
 * stays is the list of pieces (match flags then mean nothing) */
enum { TK_SPLIT_REMOVED, TK_SPLIT_ISOLATED, TK_SPLIT_PREVIOUS, TK_SPLIT_NEXT, TK_SPLIT_CONTIGUOUS };
void tk_ranges_split(tk_ranges *r, int behavior, bool invert);
void tk_ranges_free(tk_ranges *r);

/* ---- UTF-8 ------------------------------------------------------------------------------- */
/* byte length of the character starting with lead byte c (input already validated) */
static inline size_t tk_utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/* offset of the first byte that makes s not valid UTF-8, or n when it is valid */
size_t tk_utf8_check(const char *s, size_t n);
uint32_t tk_utf8_decode(const char *s, size_t *len);
size_t tk_utf8_encode(uint32_t cp, char out[4]);
/* appends s, invalid sequences replaced by U+FFFD as Rust's String::from_utf8_lossy does */
int tk_utf8_lossy(tk_buf *out, const char *s, size_t n);
/* Unicode White_Space (Rust's char::is_whitespace and regex \s) */
bool tk_is_white_space(uint32_t cp);

/* ---- GPT-2's byte <-> unicode map ------------------------------------------------------- */
typedef struct {
    char enc[256][2]; /* UTF-8 of the character standing for each byte */
    uint8_t enc_n[256];
    int16_t dec[0x144]; /* code point -> byte, -1 */
} tk_bytemap;
void tk_bytemap_init(tk_bytemap *m);

/* ---- the loaded tokenizer ------------------------------------------------------------- */
#define TK_MAX_STAGES 8 /* pre-tokenizers / normalizers / decoders after flattening Sequences */

enum { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP, TK_NORM_BYTELEVEL };
typedef struct {
    int kind;
    const char *str; /* Prepend's text, Replace's content */
    size_t str_n;
    tk_re re; /* Replace's pattern */
    bool left, right;
} tk_norm;

enum { TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE, TK_PRE_DIGITS };
enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };
typedef struct {
    int kind;
    tk_re re; /* Split's pattern, Metaspace's replacement character, Digits' \p{N} */
    int behavior;
    bool invert;
    bool add_prefix_space, use_regex; /* ByteLevel */
    char repl[4];                     /* Metaspace */
    size_t repl_n;
    int prepend;
    bool split;
} tk_pre;

enum {
    TK_DEC_BYTELEVEL,
    TK_DEC_METASPACE,
    TK_DEC_REPLACE,
    TK_DEC_BYTEFALLBACK,
    TK_DEC_FUSE,
    TK_DEC_STRIP
};
typedef struct {
    int kind;
    tk_re re; /* Replace's pattern */
    const char *str;
    size_t str_n;
    uint32_t repl;      /* Metaspace replacement, Strip's content (code points) */
    bool prepend;       /* Metaspace: prepend_scheme is not never */
    size_t start, stop; /* Strip */
} tk_dec;

typedef struct {
    int32_t id;
    const char *content, *norm; /* norm: the normalized form matched (== content if none) */
    size_t content_n, norm_n;
    bool single_word, lstrip, rstrip, normalized, special;
} tk_added;

/* a byte trie of added-token patterns, for leftmost-longest matching */
typedef struct {
    uint8_t byte;
    int32_t child, sibling, value; /* value: index into added, -1 */
} tk_node;
typedef struct {
    tk_node *node;
    size_t n, cap;
    bool first[256]; /* bytes a pattern can start with */
} tk_trie;

struct qt_tok {
    const char *name;
    tk_arena arena;
    tk_bytemap bytemap;
    /* BPE model */
    tk_map vocab;
    tk_pmap merges;
    const char *unk, *cont_prefix, *eow_suffix;
    size_t unk_n, cont_n, eow_n;
    int32_t unk_id; /* -1: unk_token absent from the vocabulary (an error when needed) */
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256]; /* <0xHH> tokens, -1 when absent */
    /* added tokens */
    tk_added *added;
    int n_added;
    tk_map added_map; /* content -> id */
    tk_trie trie_raw, trie_norm;
    tk_re word_re; /* \w as Rust's regex has it, for single_word */
    /* id -> string (the added token's form first, then the model's), special flags */
    int64_t n_ids;
    const char **id_str;
    uint32_t *id_len;
    uint8_t *special;
    /* pipeline */
    tk_norm norm[TK_MAX_STAGES];
    int n_norm;
    tk_pre pre[TK_MAX_STAGES];
    int n_pre;
    tk_re gpt2_re; /* ByteLevel's own regex */
    tk_dec dec[TK_MAX_STAGES];
    int n_dec;
    bool has_decoder;
    int32_t *prefix, *suffix;
    int n_prefix, n_suffix;
};

/* applies the normalizers to s into out (cleared first) */
int tk_normalize(const qt_tok *t, pcre2_match_data *md, const char *s, size_t n, tk_buf *out,
                 qt_err *err);

#endif
