/* hf_model.h - builds a qt_llama from a Hugging Face model directory (config.json plus
 * model.safetensors, or shards listed by model.safetensors.index.json; BF16/F16/F32), in one
 * of the training modes, and lists what the optimizer trains. Every problem with the files is
 * a qt_err naming the file and the tensor. The same building code serves other sources of
 * tensors (qt_llama_load_from: GGUF files). */
#ifndef QT_HF_MODEL_H
#define QT_HF_MODEL_H

#include "quant/safetensors.h"
#include "train/llama.h"

typedef enum { QT_MODE_FULL, QT_MODE_LORA, QT_MODE_QLORA, QT_MODE_QAT } qt_train_mode;

/* bits of qt_model_opts.lora_targets, in Hugging Face module-name order */
enum {
    QT_PROJ_Q = 1 << 0,
    QT_PROJ_K = 1 << 1,
    QT_PROJ_V = 1 << 2,
    QT_PROJ_O = 1 << 3,
    QT_PROJ_GATE = 1 << 4,
    QT_PROJ_UP = 1 << 5,
    QT_PROJ_DOWN = 1 << 6,
    QT_PROJ_ALL = 0x7f
};

typedef struct {
    qt_train_mode mode;
    int lora_r; /* rank */
    double lora_alpha;
    double lora_dropout;
    bool rslora; /* scale α/√r instead of α/r */
    unsigned lora_targets;
    int nf4_blocksize; /* QLoRA: 64 */
    bool nf4_double_quant;
    bool qat_lora; /* QAT on LoRA adapters (merged weight) instead of full weights */
    const qt_fq_format *qat_weight; /* QAT weight format */
    const qt_fq_format *qat_act;    /* QAT format of linear inputs, or NULL */
    bool checkpoint;
    bool frozen;      /* with mode full: nothing trains (eval, generate, export of a model) */
    qt_dtype compute; /* activations and frozen weights: F32 (CPU reference) or BF16 (GPU) */
    uint64_t seed;    /* LoRA initialisation */
} qt_model_opts;

qt_model_opts qt_model_opts_default(void);
/* "q_proj" -> QT_PROJ_Q, "all-linear" -> QT_PROJ_ALL; 0 when unknown */
unsigned qt_proj_parse(const char *name);
const char *qt_proj_name(unsigned bit);

int qt_llama_load(qt_ctx *ctx, qt_llama *m, const char *dir, const qt_model_opts *o, qt_err *err);
void qt_llama_free(qt_llama *m);

/* A model's tensors from somewhere other than a Hugging Face directory (a GGUF file,
 * train/gguf_model.c): their Hugging Face names and shapes (tensors[i].name, ndim, shape; dtype
 * and data unused), and fetch, which writes tensor i's values as f32 in Hugging Face layout
 * into out (numel floats) when the loader needs them, one tensor at a time, so that a whole
 * model never sits in memory in f32. */
typedef struct {
    const char *where;             /* the file, in messages */
    const char *implied_by;        /* what the expected shapes come from, in messages */
    const qt_st_tensor *tensors;   /* [ntensors] */
    const char *const *file_names; /* the names in the file, for messages, or NULL */
    int ntensors;
    int (*fetch)(void *user, int i, float *out, qt_err *err);
    void *user;
} qt_weight_source;

/* Builds m from a config and such a source exactly as qt_llama_load does from a directory
 * (same modes and options, same checks of every tensor's shape); identity (16 hex digits) is
 * what checkpoints made on this model record. */
int qt_llama_load_from(qt_ctx *ctx, qt_llama *m, const qt_model_config *cfg,
                       const qt_weight_source *src, const char *identity, const qt_model_opts *o,
                       qt_err *err);

/* The tensors the optimizer trains, and whether weight decay applies to each (not to norms
 * and biases in full training, as Hugging Face's Trainer groups them). Arrays owned by m. */
int qt_llama_trainable(qt_llama *m, qt_tensor ***params, bool **decay);

/* The linear layer named like PEFT's modules ("layers.0.self_attn.q_proj"), or NULL. */
qt_linear *qt_llama_find_linear(qt_llama *m, const char *name);

#endif
