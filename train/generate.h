/* generate.h - text generation with a model: the prompt (optionally wrapped in the chat
 * template: llama3, chatml or llama2) is encoded with the model's tokenizer, then tokens are
 * chosen one by one (greedy, or temperature + top-p sampling from a seeded stream) until EOS,
 * the template's end-of-turn token, or max_new_tokens. The forward is recomputed over the whole
 * sequence for each token (no KV cache yet): fine for demo-sized models and short outputs. */
#ifndef QT_GENERATE_H
#define QT_GENERATE_H

#include <stdio.h>

#include "data/tokenizer.h"
#include "train/llama.h"

typedef struct {
    const char *prompt;
    int chat; /* -1: plain text; else a qt_chat_kind (data/datasets.h) */
    int max_new_tokens;
    double temperature; /* 0: greedy */
    double top_p;       /* 1: no nucleus cut */
    uint64_t seed;
    FILE *stream; /* the new text as it is produced, or NULL */
} qt_gen_opts;

/* Generates; *out (malloc'd) receives the new text, *ids_out (malloc'd, may be NULL) its ids. */
int qt_generate(qt_ctx *ctx, qt_llama *m, const qt_tok *tok, const qt_gen_opts *o, char **out,
                int32_t **ids_out, int *n_out, qt_err *err);

#endif
