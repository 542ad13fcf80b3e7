/* config.h - the YAML job file (libyaml): axolotl / Hugging Face key names parsed into a
 * qt_job_config, `--set key=value` overrides, cross-key resolution, the resolved config written
 * back as YAML (parses again to the identical struct), the mapping to qt_model_opts, and the
 * schema printed as markdown (docs/CONFIG.md). One schema table in config.c drives parsing,
 * defaults, validation, emission and the docs.
 *
 * Use: qt_job_config_load(&c, path, sets, nsets, &err) = init + parse_file + set... + finish.
 * Every error names the file, the 1-based line:column and the key (or "--set key=value"); an
 * unknown key suggests the nearest valid one. Warnings (e.g. lora_* keys without an adapter)
 * are collected in c.warnings for the CLI to print. */
#ifndef QT_CONFIG_H
#define QT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/check.h"
#include "quant/fakequant.h"
#include "train/hf_model.h"

/* enum values are the indices of the schema's value lists (config.c) */
typedef enum { QT_ADAPTER_NONE, QT_ADAPTER_LORA, QT_ADAPTER_QLORA } qt_adapter;
typedef enum {
    QT_OPTIM_ADAMW_TORCH,
    QT_OPTIM_ADAMW,
    QT_OPTIM_ADAMW_TORCH_FUSED,
    QT_OPTIM_ADAMW_8BIT, /* bitsandbytes' blockwise 8-bit AdamW: adamw_8bit and its aliases */
    QT_OPTIM_ADAMW_BNB_8BIT,
    QT_OPTIM_PAGED_ADAMW_8BIT,
} qt_optimizer;
typedef enum { QT_BF16_FALSE, QT_BF16_TRUE, QT_BF16_AUTO } qt_bf16_mode;
typedef enum {
    QT_DS_ALPACA,
    QT_DS_COMPLETION,
    QT_DS_CHAT,
    QT_DS_TEXT,
    QT_DS_PRETOKENIZED
} qt_dataset_type;
typedef enum {
    QT_CHAT_TOKENIZER_DEFAULT,
    QT_CHAT_LLAMA3,
    QT_CHAT_CHATML,
    QT_CHAT_LLAMA2
} qt_chat_template;
typedef enum {
    QT_QATW_NONE, /* no QAT */
    QT_QATW_INT2,
    QT_QATW_INT3,
    QT_QATW_INT4,
    QT_QATW_INT5,
    QT_QATW_INT6,
    QT_QATW_INT7,
    QT_QATW_INT8,
    QT_QATW_Q4_0,
    QT_QATW_Q8_0,
    QT_QATW_Q4_K,
    QT_QATW_NF4,
} qt_qat_weight_format;
typedef enum { QT_QATA_NONE, QT_QATA_INT8_PER_TOKEN } qt_qat_act_format;

/* where a value came from: line >= 1 (1-based, with col) in the file; line -1: --set;
 * line 0: the default */
typedef struct {
    int line, col;
} qt_cfg_loc;

typedef struct {
    char *path;
    int type;          /* qt_dataset_type */
    char *field;       /* completion: the JSON field holding the text */
    int chat_template; /* qt_chat_template (chat) */
    qt_cfg_loc at;     /* the entry's mapping */
    qt_cfg_loc loc[4]; /* per key, in schema order: path, type, field, chat_template */
} qt_dataset_config;

#define QT_JOB_MAX_KEYS 64

typedef struct {
    /* model */
    char *base_model;
    int adapter; /* qt_adapter */
    bool load_in_4bit;
    int64_t lora_r;
    double lora_alpha, lora_dropout;
    unsigned lora_target_modules; /* QT_PROJ_* bits, as written (see qt_job_config_lora_targets) */
    bool lora_target_linear;
    bool peft_use_rslora;
    /* data */
    qt_dataset_config *datasets;
    int n_datasets;
    double val_set_size; /* < 1: a fraction; >= 1: a row count; 0: none */
    int64_t sequence_len;
    bool sample_packing, train_on_inputs;
    /* steps */
    int64_t micro_batch_size, gradient_accumulation_steps;
    double num_epochs;
    int64_t max_steps; /* 0: from num_epochs */
    /* optimizer */
    int optimizer;    /* qt_optimizer: all AdamW, 32-bit or 8-bit state */
    int lr_scheduler; /* qt_sched_kind */
    double learning_rate;
    int64_t warmup_steps;
    double warmup_ratio;
    double weight_decay, adam_beta1, adam_beta2, adam_epsilon, max_grad_norm;
    bool optimizer_in_bwd; /* AdamW on each tensor during the backward (train/trainer.h) */
    bool gradient_checkpointing;
    /* run */
    int64_t save_steps, save_total_limit, eval_steps, logging_steps;
    char *output_dir;
    char *resume_from_checkpoint; /* NULL: start fresh */
    int64_t seed;
    int bf16; /* qt_bf16_mode */
    struct {
        int weight_format; /* qt_qat_weight_format; QT_QATW_NONE = no QAT */
        int64_t weight_group_size;
        int activation_format; /* qt_qat_act_format */
        bool learn_scales, with_lora;
        int64_t start_step;
    } qat;

    /* not configuration: where things came from, what was said, what model_opts points to */
    char *file;                      /* the job file's path (for messages), or NULL */
    qt_cfg_loc top;                  /* the file's top-level mapping */
    qt_cfg_loc loc[QT_JOB_MAX_KEYS]; /* per schema key */
    char **warnings; /* about the input first (n_parse_warnings), then finish's own */
    int n_warnings, n_parse_warnings;
    qt_fq_format fq_weight, fq_act; /* filled by qt_job_config_model_opts */
} qt_job_config;

/* Every key at its default; no datasets, no base_model, no output_dir. */
void qt_job_config_init(qt_job_config *c);
void qt_job_config_free(qt_job_config *c);

/* Parses a job file (or text; name is used in messages) into c, key by key (types, ranges,
 * enums, unknown and duplicate keys). Required keys and cross-key rules: qt_job_config_finish. */
int qt_job_config_parse_file(qt_job_config *c, const char *path, qt_err *err);
int qt_job_config_parse_text(qt_job_config *c, const char *text, size_t len, const char *name,
                             qt_err *err);
/* One override: key is a schema key (dotted for the qat block: "qat.weight_format"), value is
 * parsed as YAML ("16", "q4_0", "[q_proj, v_proj]", "" = null = the default). */
int qt_job_config_set(qt_job_config *c, const char *key, const char *value, qt_err *err);
/* "key=value", as the CLI's --set receives it. */
int qt_job_config_set_arg(qt_job_config *c, const char *arg, qt_err *err);
/* Required keys, cross-key rules and resolution (lora + load_in_4bit -> qlora, qlora ->
 * load_in_4bit, qat + lora -> qat.with_lora), warnings. Idempotent. */
int qt_job_config_finish(qt_job_config *c, qt_err *err);
/* init + parse_file + each "key=value" of sets + finish; c is freed on error. */
int qt_job_config_load(qt_job_config *c, const char *path, const char *const *sets, int nsets,
                       qt_err *err);

/* The resolved config as YAML: every key with its value, in schema order. *text is malloc'd
 * and NUL-terminated. */
int qt_job_config_emit(const qt_job_config *c, char **text, size_t *len, qt_err *err);
int qt_job_config_emit_file(const qt_job_config *c, FILE *f, qt_err *err);
/* Writes the resolved config to path atomically (e.g. <output_dir>/config.yaml). */
int qt_job_config_write(const qt_job_config *c, const char *path, qt_err *err);

/* Whether every configuration value is the same (locations and warnings aside); when not,
 * `which` (may be NULL) gets the first differing key. */
bool qt_job_config_equal(const qt_job_config *a, const qt_job_config *b, char *which, size_t cap);

/* What the run does, resolved */
bool qt_job_config_qat(const qt_job_config *c);              /* a qat weight format is set */
unsigned qt_job_config_lora_targets(const qt_job_config *c); /* lora_target_linear -> all */
bool qt_job_config_bf16(const qt_job_config *c, bool device_has_bf16); /* auto -> device */

/* The model-loading options: mode, LoRA settings, NF4 (block 64, double quant), QAT formats
 * (pointing into c, which must outlive o), gradient checkpointing, seed. */
int qt_job_config_model_opts(qt_job_config *c, qt_model_opts *o, qt_err *err);

/* The schema as markdown tables (docs/CONFIG.md holds this output). */
void qt_job_config_schema_markdown(FILE *f);

/* Names of enum values, for messages and logs ("qlora", "cosine", "q4_0", ...). */
const char *qt_job_adapter_name(int adapter);
const char *qt_job_optimizer_name(int optimizer);
const char *qt_job_dataset_type_name(int type);
const char *qt_job_chat_template_name(int tmpl);
const char *qt_job_qat_weight_name(int fmt);

#endif
