/* tokenizer.h - the BPE tokenizers of Hugging Face tokenizer.json files, read and run in C with
 * the same results as the `tokenizers` library (tests/fixtures/tok/ holds its encodings):
 *   - byte-level BPE (GPT-2, Llama-3 style): ByteLevel pre-tokenizer with or without a
 *     Split regex before it (PCRE2, UTF + UCP), ignore_merges;
 *   - sentencepiece-style BPE (Llama-2, Mistral): Prepend/Replace normalizers or a Metaspace
 *     pre-tokenizer, byte_fallback to <0xXX> tokens, unk (fused or not);
 *   - added and special tokens (matched before everything else; lstrip, rstrip, single_word,
 *     normalized), the post-processor's template (BOS / EOS), and decoding (ByteLevel,
 *     Metaspace, Replace, ByteFallback, Fuse, Strip decoders), optionally without specials.
 * What a file uses beyond that (another model type, a Unicode normalizer such as NFC, which
 * Qwen2's file has, a WordPiece decoder, ...) is refused at load with a message naming the
 * file and the part.
 * A loaded tokenizer is read-only: encode and decode may run on it from several threads. */
#ifndef QT_TOKENIZER_H
#define QT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/check.h"

typedef struct qt_tok qt_tok;

/* A growing array of token ids; encode appends to it. Zero-initialise before first use. */
typedef struct {
    int32_t *ids;
    int64_t n, cap;
} qt_tok_ids;

void qt_tok_ids_free(qt_tok_ids *v);

/* Reads a tokenizer.json. Errors (unreadable file, invalid JSON, an unsupported part) name
 * the file. *out is NULL on failure. */
int qt_tok_load(qt_tok **out, const char *path, qt_err *err);
/* The same from JSON text in memory; `name` stands for the file in messages. */
int qt_tok_load_json(qt_tok **out, const char *json, size_t len, const char *name, qt_err *err);
void qt_tok_free(qt_tok *t);

/* Encodes len bytes of UTF-8 text (it may contain NUL bytes) and appends the ids to out.
 * add_special: wrap the ids as the file's post-processor does (Hugging Face's
 * add_special_tokens=True: e.g. BOS first for Llama); special tokens written in the text are
 * recognised either way. Text that is not valid UTF-8 is an error (QT_ERR_ARG) naming the
 * byte offset. */
int qt_tok_encode(const qt_tok *t, const char *text, size_t len, bool add_special, qt_tok_ids *out,
                  qt_err *err);

/* Decodes n ids into a malloc'd, NUL-terminated UTF-8 string (*text, *len bytes without the
 * NUL); the caller frees it. skip_special leaves special tokens out. An id outside the
 * vocabulary is an error naming its position (the tokenizers library drops it silently). */
int qt_tok_decode(const qt_tok *t, const int32_t *ids, int64_t n, bool skip_special, char **text,
                  size_t *len, qt_err *err);

/* ids run from 0 to vocab_size - 1 (model vocabulary and added tokens; an id inside that
 * range may still be unused) */
int64_t qt_tok_vocab_size(const qt_tok *t);
/* the id of a token string (added tokens first, then the model's vocabulary), -1 if none */
int32_t qt_tok_token_id(const qt_tok *t, const char *token, size_t len);
/* the string of an id as the vocabulary spells it (byte-level tokens in their mapped form), its
 * byte length in *len; NULL for an unused or out-of-range id */
const char *qt_tok_token_str(const qt_tok *t, int32_t id, size_t *len);
bool qt_tok_is_special(const qt_tok *t, int32_t id);
/* The ids the post-processor puts before / after the text when add_special is set (Llama:
 * prefix {BOS}, suffix none). The arrays live as long as t. */
const int32_t *qt_tok_prefix_ids(const qt_tok *t, int *n);
const int32_t *qt_tok_suffix_ids(const qt_tok *t, int *n);
/* The BOS id the post-processor adds (the first prefix token), -1 when it adds none. */
int32_t qt_tok_bos_id(const qt_tok *t);

/* `qtune tokenize`: reads `in` to the end and writes to `out`.
 *   encode (decode false): the whole input is one text; prints its ids as one JSON array line.
 *   encode + jsonl: each input line is a JSON string; prints one array per line.
 *   decode: the input is one JSON array of ids; prints the text as it is.
 *   decode + jsonl: each line an array; prints a JSON string per line.
 * Blank lines in jsonl input give blank lines. Errors name `in_name` and the 1-based line
 * (jsonl) and stop the run; what was printed before stays printed. */
typedef struct {
    bool jsonl, decode, add_special, skip_special;
} qt_tok_cli_opts;
int qt_tok_cli_run(const qt_tok *t, const qt_tok_cli_opts *o, FILE *in, const char *in_name,
                   FILE *out, qt_err *err);

#endif
