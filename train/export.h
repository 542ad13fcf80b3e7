/* export.h - `qtune export`: a trained model (a checkpoint rebuilt by qt_model_open, or a plain
 * Hugging Face directory) written for the tools people load models with:
 *   hf       Hugging Face directory: LoRA merged, bf16 safetensors (sharded past shard_bytes,
 *            with model.safetensors.index.json), config.json, generation_config.json and the
 *            tokenizer files copied
 *   bnb-nf4  the same with the 7 linear projections as bitsandbytes NF4 + double quant (the
 *            layout transformers saves a load_in_4bit model in) and quantization_config
 *   peft     adapter_config.json + adapter_model.safetensors, PEFT's names and shapes
 * LoRA is merged onto the weights the adapters were trained against: dequant(NF4 base) for
 * QLoRA, the fake-quantized merged weight for QAT. The report lists, per merged tensor, the
 * relative error the output format's rounding or re-quantization caused. */
#ifndef QT_EXPORT_H
#define QT_EXPORT_H

#include <stdio.h>

#include "train/llama.h"

typedef enum {
    QT_EXPORT_HF,
    QT_EXPORT_BNB_NF4,
    QT_EXPORT_PEFT,
    QT_EXPORT_GGUF_F16,
    QT_EXPORT_GGUF_Q8_0,
    QT_EXPORT_GGUF_Q4_0,
    QT_EXPORT_GGUF_Q4_K_M,
} qt_export_format;

/* "hf" -> QT_EXPORT_HF ...; -1 when unknown */
int qt_export_format_parse(const char *name, qt_export_format *out);

typedef struct {
    qt_export_format format;
    const char *out;      /* a directory (hf, bnb-nf4, peft) or a file (gguf-*) */
    const char *base_dir; /* the base model's directory: config, tokenizer files */
    size_t shard_bytes;   /* 0: 5 GB, transformers' default */
    FILE *report;         /* per-tensor merge/re-quantization errors, or NULL */
    /* the PEFT adapter's settings (peft format) */
    int lora_r;
    double lora_alpha, lora_dropout;
    bool rslora;
    unsigned lora_targets;
    /* gguf-*: write no vocabulary (tokenizer.ggml.model "none") instead of requiring the base
     * directory's tokenizer.json */
    bool gguf_no_tokenizer;
} qt_export_opts;

int qt_export(qt_ctx *ctx, qt_llama *m, const qt_export_opts *o, qt_err *err);

/* gguf-f16 / gguf-q8_0 / gguf-q4_0 / gguf-q4_k_m: one GGUF v3 file for llama.cpp
 * (train/export_gguf.c; docs/EXPORT.md) */
int qt_export_gguf(qt_ctx *ctx, qt_llama *m, const qt_export_opts *o, qt_err *err);
/* rope_freqs.weight of a llama3-scaled model (c->rope): out[head_dim/2] (train/gguf_model.c
 * reads the scaling back by regenerating it) */
void qt_gguf_llama3_rope_factors(float *out, const qt_model_config *c);

/* The merged weight of one linear layer in f32 [out, in]: what the forward multiplies by. */
void qt_linear_merged(qt_ctx *ctx, const qt_linear *l, float *w);

#endif
