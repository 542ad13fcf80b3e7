/* model_config.h - a Llama-family model's shape, read from a Hugging Face config.json:
 * llama, mistral and qwen2 (model_type), both the legacy rope keys (rope_theta + rope_scaling)
 * and the newer rope_parameters block, llama3 rope scaling, head_dim, tied embeddings and
 * attention / q-k-v biases. */
#ifndef QT_MODEL_CONFIG_H
#define QT_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/check.h"
#include "autograd/rope.h"

typedef enum { QT_ARCH_LLAMA, QT_ARCH_MISTRAL, QT_ARCH_QWEN2 } qt_arch;

typedef struct {
    qt_arch arch;
    char model_type[32];
    int64_t vocab, hidden, ffn, layers, heads, kv_heads, head_dim, max_pos;
    double rms_eps;
    double rope_theta;
    qt_rope_scaling rope; /* type QT_ROPE_DEFAULT when unscaled */
    bool tie_embeddings;
    bool qkv_bias; /* qwen2 always; llama/mistral when attention_bias */
    bool o_bias;   /* llama attention_bias also biases o_proj */
    bool mlp_bias;
    int64_t sliding_window; /* mistral: attention span in tokens; 0 = unlimited */
    int64_t bos_id, eos_id; /* -1 when absent */
} qt_model_config;

/* Parses config.json at path. Errors name the file and the key. */
int qt_model_config_load(qt_model_config *c, const char *path, qt_err *err);
/* Parses config.json text (for tests); `where` names it in messages. */
int qt_model_config_parse(qt_model_config *c, const char *json, const char *where, qt_err *err);

#endif
