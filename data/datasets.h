/* datasets.h - training data in the formats axolotl users have, tokenized into rows of ids and
 * labels (qt_pretok; label -100 = not trained on):
 *   alpaca      JSONL {instruction, input?, output}: the standard Alpaca prompt; the prompt is
 *               masked unless train_on_inputs
 *   completion  JSONL {<field>: text}: every token trained
 *   chat        JSONL {messages: [{role, content}...]} (or "conversations" with from/value):
 *               llama3, chatml or llama2 template; only assistant turns trained unless
 *               train_on_inputs
 *   text        a plain text file, tokenized whole and cut into rows of sequence_len tokens
 * Rows end with the model's EOS (alpaca, completion); a malformed line is an error naming the
 * file and line. data/ knows tokens, not tensors. */
#ifndef QT_DATASETS_H
#define QT_DATASETS_H

#include <stdbool.h>

#include "data/pretokenized.h"
#include "data/tokenizer.h"

typedef enum { QT_DATA_ALPACA, QT_DATA_COMPLETION, QT_DATA_CHAT, QT_DATA_TEXT } qt_data_kind;
typedef enum { QT_TEMPLATE_LLAMA3, QT_TEMPLATE_CHATML, QT_TEMPLATE_LLAMA2 } qt_chat_kind;

typedef struct {
    qt_data_kind kind;
    const char *path;
    const char *field; /* completion: the text field ("text") */
    qt_chat_kind chat; /* chat */
    bool train_on_inputs;
    int32_t eos_id;     /* appended to alpaca / completion rows; -1: none */
    int64_t text_chunk; /* text: tokens per row */
} qt_dataset_spec;

/* Tokenizes the dataset into rows (out is allocated; free with qt_pretok_free). */
int qt_dataset_load(qt_pretok *out, const qt_tok *tok, const qt_dataset_spec *s, qt_err *err);

/* The chat template a tokenizer_config.json's chat_template is, by its markers (-1: none of
 * the built-in ones). */
int qt_chat_template_detect(const char *jinja);

#endif
