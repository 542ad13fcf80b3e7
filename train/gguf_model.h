/* gguf_model.h - qtune reads the GGUF files it writes (train/export_gguf.c; docs/EXPORT.md):
 * a qt_llama from a GGUF file's llama / qwen2 metadata and tensors (every type the exporter
 * writes, dequantized to f32; llama.cpp names mapped back to Hugging Face names; the Q/K row
 * permutation undone for llama), and a qt_tok from its tokenizer.ggml.* metadata. Also what
 * `qtune eval` / `qtune generate` use to get a model's tokenizer and chat template whether the
 * model is a directory or a GGUF file. Every problem names the file and the key or tensor. */
#ifndef QT_GGUF_MODEL_H
#define QT_GGUF_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "data/tokenizer.h"
#include "train/hf_model.h"

/* path is a file that starts with the "GGUF" magic (whatever its name) */
bool qt_gguf_is_file(const char *path);

/* Builds m from the GGUF file at path with qt_llama_load's options and semantics. The model's
 * identity is a hash of the file's header (metadata and tensor index). */
int qt_llama_load_gguf(qt_ctx *ctx, qt_llama *m, const char *path, const qt_model_opts *o,
                       qt_err *err);

/* The tokenizer a GGUF file describes (tokenizer.ggml.model "gpt2": byte-level BPE with its
 * merges and the pre-tokenizer tokenizer.ggml.pre names; "llama": sentencepiece-style BPE with
 * byte fallback, merges rebuilt from the scores; special ids; add_bos / add_eos /
 * add_space_prefix), built as the tokenizer.json it stands for. */
int qt_tok_load_gguf(qt_tok **out, const char *path, qt_err *err);

/* The same built as tokenizer.json text (malloc'd, for tests and inspection). */
int qt_tok_gguf_json(const char *path, char **json, qt_err *err);

/* A model's tokenizer from qt_model_open's base_dir: a GGUF file's own vocabulary, or
 * base/tokenizer.json. */
int qt_model_tokenizer(qt_tok **out, const char *base, qt_err *err);

/* The text to detect a chat template in (qt_chat_template_detect): a GGUF file's
 * tokenizer.chat_template, or base/tokenizer_config.json. malloc'd; NULL when there is none.
 * where (cap bytes) receives the name of what was read, for messages. */
char *qt_model_chat_text(const char *base, char *where, size_t cap);

#endif
