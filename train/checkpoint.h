/* checkpoint.h - training checkpoints in HDF5 (layout: docs/FORMATS.md).
 * One file holds what resuming needs and nothing a frozen base model already has: the
 * trainable tensors (bf16/f16 as 16-bit integers with a dtype attribute: HDF5 1.10 has no
 * 16-bit floats), their fp32 masters, the AdamW moments and step, the LR schedule, the RNG
 * streams, the data loader's position (opaque bytes), the resolved config (YAML text), the base
 * model's identity (its path and a hash of its config and tensor index), and the format
 * version. Every dataset carries HDF5's Fletcher32 checksum, verified on every read.
 * Saving is atomic: a temporary file in the same directory, flushed, fsync'd, renamed over the
 * target, the directory fsync'd: a crash at any moment leaves the previous checkpoint intact. */
#ifndef QT_CHECKPOINT_H
#define QT_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "train/hf_model.h"
#include "train/optim.h"

#define QT_CKPT_FORMAT_VERSION 1

typedef struct {
    /* identity and progress */
    int64_t step, epoch;
    char base_model_path[1024];
    char base_model_hash[17]; /* 16 hex digits */
    /* RNG streams: dropout (Philox seed + offset) and the data order */
    uint64_t rng_seed, rng_offset, data_rng;
    qt_schedule sched;
    /* how the base model was wrapped (mode, LoRA, QLoRA, QAT formats): with it a checkpoint
     * rebuilds its model without the job file. On load opts.qat_weight/qat_act point into
     * qat_weight/qat_act below. */
    qt_model_opts opts;
    qt_fq_format qat_weight, qat_act;
    /* owned by the caller on save; allocated by qt_ckpt_read on load (free with
     * qt_ckpt_info_free) */
    char *config_yaml;
    uint8_t *loader_state;
    size_t loader_state_len;
    int format_version;
} qt_ckpt_info;

/* Writes path atomically: info + the optimizer's tensors (opt->slot[i].param, master, m, v). */
int qt_ckpt_save(const char *path, qt_ctx *ctx, const qt_ckpt_info *info, const qt_adamw *opt,
                 qt_err *err);

/* Reads only the metadata (version, step, identity, config text, loader state...). Refuses a
 * file that is not a qtune checkpoint, is damaged, or is of a newer format. */
int qt_ckpt_read_info(const char *path, qt_ckpt_info *info, qt_err *err);

/* Reads metadata and restores the optimizer's tensors and state into opt (already initialised
 * for the same trainable tensors): every tensor must be present with the same shape and dtype. */
int qt_ckpt_load(const char *path, qt_ctx *ctx, qt_ckpt_info *info, qt_adamw *opt, qt_err *err);

/* Reads metadata and only the trainable tensors (for evaluation, export, generation): every
 * tensor of params must be stored, with the same shape and dtype, and nothing else. */
int qt_ckpt_load_tensors(const char *path, qt_ctx *ctx, qt_ckpt_info *info, qt_tensor **params,
                         int n, qt_err *err);

void qt_ckpt_info_free(qt_ckpt_info *info);

/* A model to evaluate or use: path is a Hugging Face directory (loaded as it is), a GGUF file
 * (recognised by its magic; train/gguf_model.h) or a qtune checkpoint (its base model rebuilt
 * with the checkpoint's options, then its trained tensors loaded; the base must still be the
 * model it was trained on: its identity hash is checked). *base_dir receives the model
 * directory, or the GGUF file (for the tokenizer: qt_model_tokenizer). */
int qt_model_open(qt_ctx *ctx, qt_llama *m, const char *path, char *base_dir, size_t cap,
                  qt_err *err);

/* FNV-1a 64 of bytes, continuing from h (start with QT_FNV_OFFSET). */
#define QT_FNV_OFFSET 0xcbf29ce484222325ull
uint64_t qt_fnv1a(uint64_t h, const void *data, size_t n);

#endif
