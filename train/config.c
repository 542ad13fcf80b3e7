/* config.c - the job file (see config.h): one schema table (name, kind, range or values,
 * default, help) that parsing, defaults, --set, validation, emission, equality and the markdown
 * docs all walk; libyaml's document API for reading and its emitter for writing. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "train/optim.h"
#include "train/run_dir.h"

/* ---- the schema ------------------------------------------------------------------------- */

typedef enum {
    K_STR,      /* char *, non-empty; NULL = not set */
    K_BOOL,     /* bool */
    K_INT,      /* int64_t within [lo, hi] */
    K_FLOAT,    /* double within lo..hi (open ends as flagged) */
    K_ENUM,     /* int: index into values */
    K_BF16,     /* int: false | true | auto (YAML booleans or the word auto) */
    K_VALSIZE,  /* double: a fraction in [0, 1) or a whole row count >= 1 */
    K_TARGETS,  /* unsigned QT_PROJ_* mask: a name, a comma list, a YAML list, all-linear */
    K_DATASETS, /* qt_dataset_config list */
    K_BLOCK,    /* the qat: mapping; its keys are the following "qat." entries */
} key_kind;

typedef struct {
    const char *name;
    key_kind kind;
    size_t off;
    double lo, hi;
    bool lo_open, hi_open;
    const char *const *values;  /* K_ENUM / K_BF16 names (index = stored value), NULL-ended */
    const char *const *aliases; /* K_ENUM: pairs {alias, canonical}, NULL-ended */
    const char *def;            /* the default as YAML text; NULL: none (null) */
    bool required;
    const char *refuse; /* K_ENUM: other values are "not supported" (this says why) */
    const char *help;
} key_def;

static const char *const adapter_v[] = {"none", "lora", "qlora", NULL};
static const char *const optim_v[] = {"adamw_torch", "adamw",          "adamw_torch_fused",
                                      "adamw_8bit",  "adamw_bnb_8bit", "paged_adamw_8bit",
                                      NULL};
/* the order of qt_sched_kind */
static const char *const sched_v[] = {"constant", "constant_with_warmup", "linear", "cosine", NULL};
static const char *const bf16_v[] = {"false", "true", "auto", NULL};
static const char *const wfmt_v[] = {"none", "int2", "int3", "int4", "int5", "int6", "int7",
                                     "int8", "q4_0", "q8_0", "q4_k", "nf4",  NULL};
static const char *const afmt_v[] = {"none", "int8_per_token", NULL};
static const char *const dtype_v[] = {"alpaca", "completion", "chat", "text", "pretokenized", NULL};
/* axolotl names its chat-messages dataset type chat_template */
static const char *const dtype_alias[] = {"chat_template", "chat", NULL};
static const char *const tmpl_v[] = {"tokenizer_default", "llama3", "chatml", "llama2", NULL};

#define OFF(f)  offsetof(qt_job_config, f)
#define DOFF(f) offsetof(qt_dataset_config, f)
#define STR(n, o, d, req, h)                                                                       \
    { .name = n, .kind = K_STR, .off = o, .def = d, .required = req, .help = h }
#define BOOLK(n, o, d, h)                                                                          \
    { .name = n, .kind = K_BOOL, .off = o, .def = d, .help = h }
#define INTK(n, o, l, u, d, h)                                                                     \
    { .name = n, .kind = K_INT, .off = o, .lo = l, .hi = u, .def = d, .help = h }
#define FLT(n, o, l, lop, u, uop, d, h)                                                            \
    {                                                                                              \
        .name = n, .kind = K_FLOAT, .off = o, .lo = l, .hi = u, .lo_open = lop, .hi_open = uop,    \
        .def = d, .help = h                                                                        \
    }
#define ENUMK(n, o, v, d, h)                                                                       \
    { .name = n, .kind = K_ENUM, .off = o, .values = v, .def = d, .help = h }

static const key_def schema[] = {
    /* the model and the adapter */
    STR("base_model", OFF(base_model), NULL, true,
        "Hugging Face model directory (config.json + model.safetensors or shards)"),
    ENUMK("adapter", OFF(adapter), adapter_v, "none",
          "lora: LoRA on a bf16/fp32 base; qlora: LoRA on a frozen 4-bit NF4 base; none or "
          "absent: full fine-tune (or QAT when qat: is given)"),
    BOOLK("load_in_4bit", OFF(load_in_4bit), "false",
          "load the base as NF4 (bitsandbytes layout, block 64, double-quantized scales); "
          "adapter: lora with this becomes qlora, as in axolotl"),
    INTK("lora_r", OFF(lora_r), 1, 4096, "8", "LoRA rank"),
    FLT("lora_alpha", OFF(lora_alpha), 0, true, 65536, false, "16",
        "LoRA scale numerator: the update is (lora_alpha / lora_r)·B·A"),
    FLT("lora_dropout", OFF(lora_dropout), 0, false, 1, true, "0",
        "dropout on the LoRA branch's input (must be 0 with qat.with_lora)"),
    {.name = "lora_target_modules",
     .kind = K_TARGETS,
     .off = OFF(lora_target_modules),
     .def = "all-linear",
     .help = "the linear layers of every block that get adapters (a comma list works in "
             "--set)"},
    BOOLK("lora_target_linear", OFF(lora_target_linear), "false",
          "axolotl's switch for all-linear (overrides lora_target_modules)"),
    BOOLK("peft_use_rslora", OFF(peft_use_rslora), "false",
          "rank-stabilized LoRA: scale lora_alpha / sqrt(lora_r) instead of lora_alpha / lora_r"),
    /* data */
    {.name = "datasets",
     .kind = K_DATASETS,
     .off = OFF(datasets),
     .required = true,
     .help = "training data: a list of {path, type, field, chat_template} (see below)"},
    {.name = "val_set_size",
     .kind = K_VALSIZE,
     .off = OFF(val_set_size),
     .lo = 0,
     .hi = 1e12,
     .def = "0",
     .help = "validation split: a fraction below 1 (0.05) or a whole number of rows (200); 0: "
             "none. Seeded, as Hugging Face's train_test_split"},
    INTK("sequence_len", OFF(sequence_len), 2, 1 << 20, "512",
         "tokens per sequence; longer rows are dropped and counted"),
    BOOLK("sample_packing", OFF(sample_packing), "false",
          "pack several rows into each sequence (attention stays inside each row)"),
    BOOLK("train_on_inputs", OFF(train_on_inputs), "false",
          "also train on prompt tokens (default: their labels are -100)"),
    /* steps */
    INTK("micro_batch_size", OFF(micro_batch_size), 1, 65536, "1", "sequences per forward pass"),
    INTK("gradient_accumulation_steps", OFF(gradient_accumulation_steps), 1, 65536, "1",
         "micro-batches per optimizer step"),
    FLT("num_epochs", OFF(num_epochs), 0, true, 10000, false, "1",
        "passes over the training data (may be fractional); ignored when max_steps > 0"),
    INTK("max_steps", OFF(max_steps), 0, INFINITY, "0",
         "optimizer steps to run; 0: from num_epochs"),
    /* optimizer */
    {.name = "optimizer",
     .kind = K_ENUM,
     .off = OFF(optimizer),
     .values = optim_v,
     .def = "adamw_torch",
     .refuse = "qtune implements AdamW only",
     .help = "AdamW with decoupled weight decay: adamw_torch / adamw / adamw_torch_fused keep "
             "fp32 moments; adamw_8bit / adamw_bnb_8bit / paged_adamw_8bit keep bitsandbytes' "
             "blockwise 8-bit moments (2 bytes per parameter instead of 8; qtune does not page)"},
    {.name = "lr_scheduler",
     .kind = K_ENUM,
     .off = OFF(lr_scheduler),
     .values = sched_v,
     .def = "cosine",
     .refuse = "qtune implements four of Hugging Face's schedules",
     .help = "learning-rate schedule after warmup (Hugging Face's definitions)"},
    FLT("learning_rate", OFF(learning_rate), 0, true, 10, false, "0.0002", "peak learning rate"),
    INTK("warmup_steps", OFF(warmup_steps), 0, INFINITY, "0",
         "linear warmup steps (not with warmup_ratio)"),
    FLT("warmup_ratio", OFF(warmup_ratio), 0, false, 1, true, "0",
        "warmup as a fraction of the total steps (not with warmup_steps)"),
    FLT("weight_decay", OFF(weight_decay), 0, false, 10, false, "0",
        "AdamW decoupled weight decay (not applied to norms and biases)"),
    FLT("adam_beta1", OFF(adam_beta1), 0, false, 1, true, "0.9", "AdamW beta1"),
    FLT("adam_beta2", OFF(adam_beta2), 0, false, 1, true, "0.999", "AdamW beta2"),
    FLT("adam_epsilon", OFF(adam_epsilon), 0, true, 1, false, "1e-08", "AdamW epsilon"),
    FLT("max_grad_norm", OFF(max_grad_norm), 0, false, INFINITY, false, "1",
        "clip the global gradient norm to this; 0: no clipping"),
    BOOLK("optimizer_in_bwd", OFF(optimizer_in_bwd), "false",
          "torchtune's optimizer in backward: AdamW updates each tensor as soon as its gradient "
          "is complete and drops the gradient, so the gradients of all tensors never exist at "
          "once (a full fine-tune keeps no f32 gradient of 4 B per parameter; the embedding's "
          "and about one block's live at a time); the same result bit for bit. Needs "
          "max_grad_norm: 0 and gradient_accumulation_steps: 1"),
    BOOLK("gradient_checkpointing", OFF(gradient_checkpointing), "false",
          "recompute each block's activations in backward (less memory, more compute)"),
    /* the run */
    INTK("save_steps", OFF(save_steps), 0, INFINITY, "0",
         "checkpoint every N optimizer steps; 0: only at the end"),
    INTK("save_total_limit", OFF(save_total_limit), 0, INFINITY, "0",
         "keep the newest N checkpoints; 0: keep all"),
    INTK("eval_steps", OFF(eval_steps), 0, INFINITY, "0",
         "validation loss every N optimizer steps; 0: only at the end (needs val_set_size)"),
    INTK("logging_steps", OFF(logging_steps), 1, INFINITY, "1",
         "a metrics.jsonl record every N optimizer steps"),
    STR("output_dir", OFF(output_dir), NULL, true,
        "run directory: checkpoints, metrics.jsonl, the resolved config.yaml"),
    STR("resume_from_checkpoint", OFF(resume_from_checkpoint), NULL, false,
        "a checkpoint file to resume from, or latest (output_dir's newest); null: start fresh"),
    INTK("seed", OFF(seed), 0, INFINITY, "42",
         "seeds LoRA initialisation, the validation split, shuffling and dropout"),
    {.name = "bf16",
     .kind = K_BF16,
     .off = OFF(bf16),
     .values = bf16_v,
     .def = "auto",
     .help = "bf16 compute and trainable storage; auto: when the GPU supports it"},
    /* quantization-aware training */
    {.name = "qat",
     .kind = K_BLOCK,
     .help = "quantization-aware training: a mapping of the `qat.` keys below (without the "
             "prefix); needs weight_format"},
    ENUMK("qat.weight_format", OFF(qat.weight_format), wfmt_v, "none",
          "format the weights are fake-quantized to: intN (symmetric, per channel or per group), "
          "GGUF q4_0 / q8_0 / q4_k or NF4, bit-exact with those files; none: no QAT"),
    INTK("qat.weight_group_size", OFF(qat.weight_group_size), 0, 65536, "0",
         "intN: one scale per this many weights along a row; 0: one per output channel"),
    ENUMK("qat.activation_format", OFF(qat.activation_format), afmt_v, "none",
          "fake-quantize the inputs of linear layers: int8 symmetric, one scale per token"),
    BOOLK("qat.learn_scales", OFF(qat.learn_scales), "false",
          "intN: learn the weight scales (LSQ) instead of absmax scales"),
    BOOLK("qat.with_lora", OFF(qat.with_lora), "false",
          "QAT on LoRA adapters: the merged W + (alpha/r)·B·A is fake-quantized, W stays frozen"),
    INTK("qat.start_step", OFF(qat.start_step), 0, INFINITY, "0",
         "optimizer step at which fake quantization switches on (plain training before)"),
};
#define NKEYS ((int)(sizeof schema / sizeof schema[0]))
_Static_assert(sizeof schema / sizeof schema[0] <= QT_JOB_MAX_KEYS, "raise QT_JOB_MAX_KEYS");

static const key_def ds_schema[] = {
    STR("path", DOFF(path), NULL, true, "a JSONL file (a text file for type text)"),
    {.name = "type",
     .kind = K_ENUM,
     .off = DOFF(type),
     .values = dtype_v,
     .aliases = dtype_alias,
     .required = true,
     .help = "alpaca: instruction/input/output rows; completion: one text field; chat: "
             "messages rendered with a chat template (axolotl's chat_template is accepted); "
             "text: a plain text file; pretokenized: {input_ids, labels} rows"},
    STR("field", DOFF(field), "text", false, "completion: the JSON field holding the text"),
    ENUMK("chat_template", DOFF(chat_template), tmpl_v, "tokenizer_default",
          "chat: the template; tokenizer_default: the model's tokenizer_config.json template "
          "when it is one of the built-in ones"),
};
#define NDSKEYS ((int)(sizeof ds_schema / sizeof ds_schema[0]))
_Static_assert(sizeof ds_schema / sizeof ds_schema[0] == 4, "qt_dataset_config.loc has 4");

/* axolotl keys a copied axolotl job may carry that qtune does not use: accepted, with a
 * warning when they are set to something (null / false / empty pass silently) */
static const char *const axo_ignored[] = {"wandb_project",
                                          "wandb_entity",
                                          "wandb_watch",
                                          "wandb_name",
                                          "wandb_run_id",
                                          "wandb_log_model",
                                          "hub_model_id",
                                          "dataset_prepared_path",
                                          "local_rank",
                                          "debug",
                                          "strict",
                                          "tf32",
                                          "flash_attention",
                                          "sdp_attention",
                                          "xformers_attention",
                                          "flash_attn_cross_entropy",
                                          "flash_attn_rms_norm",
                                          "model_type",
                                          "tokenizer_type",
                                          "is_llama_derived_model",
                                          "is_mistral_derived_model",
                                          "is_qwen_derived_model",
                                          "trust_remote_code",
                                          "evals_per_epoch",
                                          "saves_per_epoch",
                                          "eval_sample_packing",
                                          "pad_to_sequence_len",
                                          "group_by_length",
                                          "special_tokens",
                                          "early_stopping_patience",
                                          "eval_table_size",
                                          "eval_max_new_tokens",
                                          "dataset_processes",
                                          "lora_fan_in_fan_out",
                                          "auto_resume_from_checkpoints",
                                          "plugins",
                                          NULL};
/* axolotl keys whose non-false values ask for something qtune does not do: an error */
static const char *const axo_refused[][2] = {
    {"load_in_8bit", "8-bit base weights are not supported; use adapter: qlora (4-bit NF4)"},
    {"fp16", "fp16 training is not supported; use bf16"},
    {"deepspeed", "DeepSpeed is not used; qtune runs data parallel over NCCL (mpirun)"},
    {"fsdp", "FSDP is not used; qtune runs data parallel over NCCL (mpirun)"},
    {"fsdp_config", "FSDP is not used; qtune runs data parallel over NCCL (mpirun)"},
    {"gptq", "GPTQ base models are not supported"},
    {"lora_model_dir", "loading an existing adapter is not supported; resume from a checkpoint"},
    {NULL, NULL}};

static int key_index(const char *name) {
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(schema[i].name, name)) return i;
    QT_CHECK(0, "config: no schema key '%s'", name);
    return -1;
}

/* ---- small helpers ---------------------------------------------------------------------- */

/* optimal string alignment distance (Levenshtein + adjacent transpositions), case-folded */
static int edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    if (n > 64 || m > 64) return 1000;
    int d[65][65];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[n][m];
}

/* the nearest candidate when it is near enough to be a plausible typo, else NULL */
static const char *nearest(const char *s, const char *const *cand, int n) {
    const char *best = NULL;
    int bd = 1 << 30;
    for (int i = 0; i < n; i++) {
        if (!cand[i]) continue;
        int d = edit_distance(s, cand[i]);
        if (d < bd) bd = d, best = cand[i];
    }
    int len = (int)strlen(s);
    return best && bd <= (len / 3 > 2 ? len / 3 : 2) ? best : NULL;
}

static bool is_null_text(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* YAML 1.1 booleans (what PyYAML, and so axolotl, reads): 1 true, 0 false, -1 neither */
static int bool_text(const char *s) {
    static const char *const t[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const f[] = {"false", "False", "FALSE", "no", "No",
                                    "NO",    "off",   "Off",   "OFF"};
    for (int i = 0; i < 9; i++) {
        if (!strcmp(s, t[i])) return 1;
        if (!strcmp(s, f[i])) return 0;
    }
    return -1;
}

/* 0: ok; 1: not an integer; 2: does not fit in 64 bits. Digits may be grouped with '_'. */
static int parse_int(const char *s, int64_t *out) {
    char buf[40];
    size_t n = 0;
    const char *q = s;
    if (*q == '+' || *q == '-') buf[n++] = *q++;
    if (!isdigit((unsigned char)*q)) return 1;
    for (; *q; q++) {
        if (isdigit((unsigned char)*q)) {
            if (n >= sizeof buf - 1) return 2;
            buf[n++] = *q;
        } else if (*q == '_' && isdigit((unsigned char)q[-1]) && isdigit((unsigned char)q[1])) {
            continue;
        } else {
            return 1;
        }
    }
    buf[n] = 0;
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno == ERANGE) return 2;
    *out = v;
    return 0;
}

/* a decimal number: [+-] digits [. digits] [e [+-] digits], or [+-] . digits [...]. YAML 1.1
 * would read 2e-4 as a string; axolotl coerces it to a float, so it is a number here too. */
static bool parse_float(const char *s, double *out) {
    const char *q = s;
    if (*q == '+' || *q == '-') q++;
    int digits = 0;
    while (isdigit((unsigned char)*q)) q++, digits++;
    if (*q == '.') {
        q++;
        while (isdigit((unsigned char)*q)) q++, digits++;
    }
    if (!digits) return false;
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-') q++;
        if (!isdigit((unsigned char)*q)) return false;
        while (isdigit((unsigned char)*q)) q++;
    }
    if (*q) return false;
    double v = strtod(s, NULL);
    if (!isfinite(v)) return false;
    *out = v;
    return true;
}

/* the shortest %g that reads back to the same double */
static void fmt_double(double v, char *out, size_t cap) {
    for (int p = 1; p <= 17; p++) {
        snprintf(out, cap, "%.*g", p, v);
        if (strtod(out, NULL) == v) return;
    }
}

static char *xstrdup(const char *s) {
    char *r = strdup(s);
    QT_CHECK(r, "out of memory");
    return r;
}

static void add_warning(qt_job_config *c, const char *fmt, ...) QT_PRINTF(2, 3);
static void add_warning(qt_job_config *c, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char **w = realloc(c->warnings, (size_t)(c->n_warnings + 1) * sizeof *w);
    QT_CHECK(w, "out of memory");
    c->warnings = w;
    c->warnings[c->n_warnings++] = xstrdup(buf);
}

/* a value as a message shows it: one line, at most cap - 4 bytes ("..." when cut) */
static const char *shown(const char *s, char *out, size_t cap) {
    size_t n = 0;
    for (; s[n] && n < cap - 4; n++) out[n] = (unsigned char)s[n] < 0x20 ? '?' : s[n];
    if (s[n]) memcpy(out + n, "...", 3), n += 3;
    out[n] = 0;
    return out;
}

/* a warning about the input (file or --set), kept in front of finish's own, which
 * qt_job_config_finish recomputes */
static void add_input_warning(qt_job_config *c, const char *fmt, ...) QT_PRINTF(2, 3);
static void add_input_warning(qt_job_config *c, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    add_warning(c, "%s", buf);
    char *w = c->warnings[c->n_warnings - 1];
    memmove(c->warnings + c->n_parse_warnings + 1, c->warnings + c->n_parse_warnings,
            (size_t)(c->n_warnings - 1 - c->n_parse_warnings) * sizeof *c->warnings);
    c->warnings[c->n_parse_warnings++] = w;
}

/* "a, b, c" */
static void join_values(const char *const *v, char *out, size_t cap) {
    out[0] = 0;
    for (int i = 0; v[i]; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", i ? ", " : "", v[i]);
    }
}

/* ---- parsing ---------------------------------------------------------------------------- */

typedef struct {
    qt_job_config *c;
    const char *name;    /* the file (or text) name */
    const char *set_arg; /* "key=value" when the value comes from --set */
    yaml_document_t *doc;
    qt_err *err;
    bool defaults; /* applying a schema default: a failure is a bug */
} pctx;

static int fail(pctx *p, yaml_mark_t m, const char *fmt, ...) QT_PRINTF(3, 4);
static int fail(pctx *p, yaml_mark_t m, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    QT_CHECK(!p->defaults, "config: a schema default does not parse: %s", msg);
    if (p->set_arg) return qt_err_set(p->err, QT_ERR_FORMAT, "--set %s: %s", p->set_arg, msg);
    /* libyaml's marks are 0-based */
    return qt_err_set(p->err, QT_ERR_FORMAT, "%s:%zu:%zu: %s", p->name, m.line + 1, m.column + 1,
                      msg);
}

static qt_cfg_loc loc_of(const pctx *p, yaml_mark_t m) {
    if (p->set_arg) return (qt_cfg_loc){-1, 0};
    return (qt_cfg_loc){(int)m.line + 1, (int)m.column + 1};
}

static const char *node_kind_name(const yaml_node_t *n) {
    return n->type == YAML_SEQUENCE_NODE  ? "a list"
           : n->type == YAML_MAPPING_NODE ? "a mapping"
                                          : "a scalar";
}

static const char *expected(const key_def *k) {
    switch (k->kind) {
    case K_STR:
        return "a string";
    case K_BOOL:
        return "true or false";
    case K_INT:
        return "an integer";
    case K_FLOAT:
        return "a number";
    case K_ENUM:
        return "one of its values";
    case K_BF16:
        return "true, false or auto";
    case K_VALSIZE:
        return "a fraction below 1 or a whole row count";
    case K_TARGETS:
        return "a module name, a list of module names, or all-linear";
    case K_DATASETS:
        return "a list of datasets ({path: ..., type: ...})";
    case K_BLOCK:
        return "a mapping of qat keys";
    }
    return "?";
}

static void range_text(const key_def *k, char *out, size_t cap) {
    if (k->kind == K_INT) {
        if (isinf(k->hi))
            snprintf(out, cap, "must be >= %.0f", k->lo);
        else
            snprintf(out, cap, "must be %.0f..%.0f", k->lo, k->hi);
    } else if (isinf(k->hi)) {
        snprintf(out, cap, "must be %s %g", k->lo_open ? ">" : ">=", k->lo);
    } else {
        snprintf(out, cap, "must be in %c%g, %g%c", k->lo_open ? '(' : '[', k->lo, k->hi,
                 k->hi_open ? ')' : ']');
    }
}

static bool in_range(const key_def *k, double v) {
    if (k->lo_open ? v <= k->lo : v < k->lo) return false;
    if (k->hi_open ? v >= k->hi : v > k->hi) return false;
    return true;
}

/* the default of k into the struct at base */
static void set_default(qt_job_config *c, const key_def *k, void *base);

static int enum_lookup(const key_def *k, const char *s) {
    for (int i = 0; k->values[i]; i++)
        if (!strcmp(s, k->values[i])) return i;
    if (k->aliases)
        for (int i = 0; k->aliases[i]; i += 2)
            if (!strcmp(s, k->aliases[i])) return enum_lookup(k, k->aliases[i + 1]);
    return -1;
}

static int count_values(const char *const *v) {
    int n = 0;
    while (v[n]) n++;
    return n;
}

static const char *const proj_choices[] = {"q_proj",    "k_proj",  "v_proj",    "o_proj",
                                           "gate_proj", "up_proj", "down_proj", "all-linear"};

/* one module name (already trimmed) into *mask */
static int target_name(pctx *p, const char *kname, const char *s, yaml_mark_t m, unsigned *mask) {
    unsigned bit = qt_proj_parse(s);
    if (!bit) {
        const char *near = nearest(s, proj_choices, 8);
        char sug[96] = "";
        if (near) snprintf(sug, sizeof sug, " (did you mean '%s'?)", near);
        return fail(p, m,
                    "%s: unknown module '%s'%s; valid: q_proj, k_proj, v_proj, o_proj, "
                    "gate_proj, up_proj, down_proj, all-linear",
                    kname, s, sug);
    }
    *mask |= bit;
    return QT_OK;
}

/* a scalar value (not null) of k */
static int apply_scalar(pctx *p, const key_def *k, const char *kname, void *base, const char *s,
                        yaml_mark_t m) {
    char *field = (char *)base + k->off;
    char rng[96], sh[90];
    const char *sv = shown(s, sh, sizeof sh);
    switch (k->kind) {
    case K_STR:
        if (!*s) return fail(p, m, "%s: must not be empty", kname);
        free(*(char **)field);
        *(char **)field = xstrdup(s);
        return QT_OK;
    case K_BOOL: {
        int b = bool_text(s);
        if (b < 0) return fail(p, m, "%s: expected true or false, got '%s'", kname, sv);
        *(bool *)field = b;
        return QT_OK;
    }
    case K_BF16: {
        int b = bool_text(s);
        if (b < 0 && strcmp(s, "auto"))
            return fail(p, m, "%s: expected true, false or auto, got '%s'", kname, sv);
        *(int *)field = b < 0 ? QT_BF16_AUTO : b ? QT_BF16_TRUE : QT_BF16_FALSE;
        return QT_OK;
    }
    case K_INT: {
        int64_t v = 0;
        int rc = parse_int(s, &v);
        range_text(k, rng, sizeof rng);
        if (rc == 1) return fail(p, m, "%s: expected an integer, got '%s'", kname, sv);
        if (rc == 2 || !in_range(k, (double)v))
            return fail(p, m, "%s: %s is out of range: %s", kname, sv, rng);
        *(int64_t *)field = v;
        return QT_OK;
    }
    case K_FLOAT: {
        double v;
        if (!parse_float(s, &v)) return fail(p, m, "%s: expected a number, got '%s'", kname, sv);
        range_text(k, rng, sizeof rng);
        if (!in_range(k, v)) return fail(p, m, "%s: %s is out of range: %s", kname, sv, rng);
        *(double *)field = v;
        return QT_OK;
    }
    case K_VALSIZE: {
        double v;
        if (!parse_float(s, &v))
            return fail(p, m, "%s: expected a fraction below 1 or a row count, got '%s'", kname,
                        sv);
        if (v < 0 || v > k->hi)
            return fail(p, m,
                        "%s: %s is out of range: must be a fraction in [0, 1) or a row "
                        "count >= 1",
                        kname, sv);
        if (v >= 1 && v != floor(v))
            return fail(p, m, "%s: %s is neither a fraction below 1 nor a whole row count", kname,
                        sv);
        *(double *)field = v;
        return QT_OK;
    }
    case K_ENUM: {
        int i = enum_lookup(k, s);
        if (i < 0) {
            char vals[400], sug[96] = "";
            join_values(k->values, vals, sizeof vals);
            const char *near = nearest(s, k->values, count_values(k->values));
            if (near) snprintf(sug, sizeof sug, " (did you mean '%s'?)", near);
            if (k->refuse)
                return fail(p, m, "%s: '%s' is not supported (%s); supported: %s%s", kname, sv,
                            k->refuse, vals, sug);
            return fail(p, m, "%s: '%s' is not a valid value; valid: %s%s", kname, sv, vals, sug);
        }
        *(int *)field = i;
        return QT_OK;
    }
    case K_TARGETS: {
        /* a single name, or a comma list (handy on the command line) */
        unsigned mask = 0;
        char *copy = xstrdup(s), *save = NULL;
        int rc = QT_OK, n = 0;
        for (char *t = strtok_r(copy, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
            while (isspace((unsigned char)*t)) t++;
            char *e = t + strlen(t);
            while (e > t && isspace((unsigned char)e[-1])) *--e = 0;
            if (!*t) continue;
            rc = target_name(p, kname, t, m, &mask);
            n++;
        }
        free(copy);
        if (rc) return rc;
        if (!n) return fail(p, m, "%s: needs at least one module", kname);
        *(unsigned *)field = mask;
        return QT_OK;
    }
    case K_DATASETS:
    case K_BLOCK:
        break;
    }
    return fail(p, m, "%s: expected %s, got a scalar '%s'", kname, expected(k), sv);
}

static int apply_node(pctx *p, const key_def *k, const char *kname, void *base, qt_cfg_loc *loc,
                      yaml_mark_t keymark, yaml_node_t *n);

/* the qat.* keys: the entries after "qat" */
static void block_range(int *first, int *count);

/* the pairs of a mapping node, with duplicate-key and non-scalar-key errors */
static int check_keys(pctx *p, yaml_node_t *map, const char *prefix) {
    for (yaml_node_pair_t *a = map->data.mapping.pairs.start; a < map->data.mapping.pairs.top;
         a++) {
        yaml_node_t *ka = yaml_document_get_node(p->doc, a->key);
        if (ka->type != YAML_SCALAR_NODE)
            return fail(p, ka->start_mark, "%skeys must be names, got %s", prefix,
                        node_kind_name(ka));
        for (yaml_node_pair_t *b = map->data.mapping.pairs.start; b < a; b++) {
            yaml_node_t *kb = yaml_document_get_node(p->doc, b->key);
            if (!strcmp((char *)ka->data.scalar.value, (char *)kb->data.scalar.value))
                return fail(p, ka->start_mark, "duplicate key '%s%s' (first at line %zu)", prefix,
                            (char *)ka->data.scalar.value, kb->start_mark.line + 1);
        }
    }
    return QT_OK;
}

static int unknown_key(pctx *p, yaml_mark_t m, const char *prefix, const char *key,
                       const char *const *cand, int ncand, const char *hint) {
    const char *near = nearest(key, cand, ncand);
    if (near)
        return fail(p, m, "unknown key '%s%s' (did you mean '%s%s'?)", prefix, key, prefix, near);
    return fail(p, m, "unknown key '%s%s'%s", prefix, key, hint);
}

static void free_datasets(qt_dataset_config *d, int n) {
    for (int i = 0; i < n; i++) {
        free(d[i].path);
        free(d[i].field);
    }
    free(d);
}

static int parse_dataset(pctx *p, yaml_node_t *n, int idx, qt_dataset_config *d) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "datasets[%d]", idx);
    memset(d, 0, sizeof *d);
    for (int j = 0; j < NDSKEYS; j++) set_default(p->c, &ds_schema[j], d);
    d->at = loc_of(p, n->start_mark);
    if (n->type != YAML_MAPPING_NODE)
        return fail(p, n->start_mark,
                    "%s: expected a mapping like {path: data.jsonl, type: "
                    "alpaca}, got %s",
                    prefix, node_kind_name(n));
    char dotted[40];
    snprintf(dotted, sizeof dotted, "%s.", prefix);
    int rc = check_keys(p, n, dotted);
    if (rc) return rc;
    const char *names[NDSKEYS];
    for (int j = 0; j < NDSKEYS; j++) names[j] = ds_schema[j].name;
    bool seen[NDSKEYS] = {false};
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(p->doc, pr->key);
        const char *key = (char *)kn->data.scalar.value;
        int j = 0;
        while (j < NDSKEYS && strcmp(ds_schema[j].name, key)) j++;
        if (j == NDSKEYS)
            return unknown_key(p, kn->start_mark, dotted, key, names, NDSKEYS,
                               " (dataset keys: path, type, field, chat_template)");
        char kname[64];
        snprintf(kname, sizeof kname, "%s.%s", prefix, key);
        rc = apply_node(p, &ds_schema[j], kname, d, &d->loc[j], kn->start_mark,
                        yaml_document_get_node(p->doc, pr->value));
        if (rc) return rc;
        seen[j] = d->loc[j].line != 0;
    }
    for (int j = 0; j < NDSKEYS; j++)
        if (ds_schema[j].required && !seen[j]) {
            char vals[200] = "";
            if (ds_schema[j].values) {
                snprintf(vals, sizeof vals, " (one of: ");
                join_values(ds_schema[j].values, vals + strlen(vals), sizeof vals - 20);
                strcat(vals, ")");
            }
            return fail(p, n->start_mark, "%s: missing required key '%s'%s", prefix,
                        ds_schema[j].name, vals);
        }
    return QT_OK;
}

static int apply_datasets(pctx *p, const char *kname, yaml_node_t *n) {
    qt_job_config *c = p->c;
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(p, n->start_mark,
                    "%s: expected a list of datasets ({path: ..., type: ...}), "
                    "got %s",
                    kname, node_kind_name(n));
    int cnt = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (!cnt) return fail(p, n->start_mark, "%s: needs at least one dataset", kname);
    qt_dataset_config *d = calloc((size_t)cnt, sizeof *d);
    QT_CHECK(d, "out of memory");
    for (int i = 0; i < cnt; i++) {
        int rc = parse_dataset(p, yaml_document_get_node(p->doc, n->data.sequence.items.start[i]),
                               i, &d[i]);
        if (rc) {
            free_datasets(d, i + 1);
            return rc;
        }
    }
    free_datasets(c->datasets, c->n_datasets);
    c->datasets = d;
    c->n_datasets = cnt;
    return QT_OK;
}

static void block_range(int *first, int *count) {
    int b = key_index("qat");
    *first = b + 1;
    *count = NKEYS - b - 1;
}

static int apply_block(pctx *p, const char *kname, yaml_node_t *n) {
    qt_job_config *c = p->c;
    int first, count;
    block_range(&first, &count);
    /* a block replaces the whole block: its keys start from their defaults */
    for (int j = first; j < first + count; j++) {
        set_default(c, &schema[j], c);
        c->loc[j] = (qt_cfg_loc){0, 0};
    }
    if (n->type != YAML_MAPPING_NODE)
        return fail(p, n->start_mark,
                    "%s: expected a mapping of qat keys (weight_format: ...), "
                    "got %s",
                    kname, node_kind_name(n));
    int rc = check_keys(p, n, "qat.");
    if (rc) return rc;
    const char *names[QT_JOB_MAX_KEYS];
    for (int j = 0; j < count; j++) names[j] = schema[first + j].name + 4;
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(p->doc, pr->key);
        const char *key = (char *)kn->data.scalar.value;
        int j = 0;
        while (j < count && strcmp(names[j], key)) j++;
        if (j == count) {
            char hint[300] = " (qat keys: ";
            for (int i = 0; i < count; i++)
                snprintf(hint + strlen(hint), sizeof hint - strlen(hint), "%s%s", i ? ", " : "",
                         names[i]);
            strcat(hint, ")");
            return unknown_key(p, kn->start_mark, "qat.", key, names, count, hint);
        }
        const key_def *k = &schema[first + j];
        rc = apply_node(p, k, k->name, c, &c->loc[first + j], kn->start_mark,
                        yaml_document_get_node(p->doc, pr->value));
        if (rc) return rc;
    }
    int wf = key_index("qat.weight_format");
    if (c->loc[wf].line == 0)
        return fail(p, n->start_mark,
                    "qat: missing required key 'qat.weight_format' (one of: int2..int8, q4_0, "
                    "q8_0, q4_k, nf4; none turns QAT off)");
    return QT_OK;
}

static bool node_is_null(const yaml_node_t *n) {
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           is_null_text((char *)n->data.scalar.value);
}

static int apply_node(pctx *p, const key_def *k, const char *kname, void *base, qt_cfg_loc *loc,
                      yaml_mark_t keymark, yaml_node_t *n) {
    if (node_is_null(n)) { /* axolotl's `key:` with nothing = not set = the default */
        set_default(p->c, k, base);
        if (k->kind == K_BLOCK) {
            int first, count;
            block_range(&first, &count);
            for (int j = first; j < first + count; j++) p->c->loc[j] = (qt_cfg_loc){0, 0};
        }
        *loc = (qt_cfg_loc){0, 0};
        return QT_OK;
    }
    int rc;
    if (k->kind == K_DATASETS) {
        rc = apply_datasets(p, kname, n);
    } else if (k->kind == K_BLOCK) {
        rc = apply_block(p, kname, n);
    } else if (k->kind == K_TARGETS && n->type == YAML_SEQUENCE_NODE) {
        unsigned mask = 0;
        rc = QT_OK;
        int cnt = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
        if (!cnt) rc = fail(p, n->start_mark, "%s: needs at least one module", kname);
        for (int i = 0; i < cnt && !rc; i++) {
            yaml_node_t *it = yaml_document_get_node(p->doc, n->data.sequence.items.start[i]);
            if (it->type != YAML_SCALAR_NODE)
                rc = fail(p, it->start_mark, "%s: expected module names, got %s", kname,
                          node_kind_name(it));
            else
                rc = target_name(p, kname, (char *)it->data.scalar.value, it->start_mark, &mask);
        }
        if (!rc) *(unsigned *)((char *)base + k->off) = mask;
    } else if (n->type != YAML_SCALAR_NODE) {
        rc = fail(p, n->start_mark, "%s: expected %s, got %s", kname, expected(k),
                  node_kind_name(n));
    } else {
        /* quoting does not matter here: "16" is 16 (axolotl's pydantic coerces it too); only
         * null needs a plain scalar, and that was handled above */
        rc = apply_scalar(p, k, kname, base, (char *)n->data.scalar.value, n->start_mark);
    }
    if (!rc) *loc = loc_of(p, keymark);
    return rc;
}

static void set_default(qt_job_config *c, const key_def *k, void *base) {
    char *field = (char *)base + k->off;
    switch (k->kind) {
    case K_STR:
        free(*(char **)field);
        *(char **)field = k->def ? xstrdup(k->def) : NULL;
        return;
    case K_DATASETS:
        free_datasets(c->datasets, c->n_datasets);
        c->datasets = NULL;
        c->n_datasets = 0;
        return;
    case K_BLOCK: {
        int first, count;
        block_range(&first, &count);
        for (int j = first; j < first + count; j++) set_default(c, &schema[j], c);
        return;
    }
    default: {
        if (!k->def) { /* a required enum's placeholder until the file gives it */
            QT_CHECK(k->kind == K_ENUM, "config: '%s' needs a default", k->name);
            *(int *)field = 0;
            return;
        }
        pctx p = {.c = c, .name = "schema", .defaults = true};
        yaml_mark_t m = {0, 0, 0};
        apply_scalar(&p, k, k->name, base, k->def, m);
    }
    }
}

/* An axolotl key qtune does not implement: sets *known when key is one, then returns QT_OK
 * (ignored, with a warning when it is set to something) or an error (refused). */
static int axolotl_key(pctx *p, const char *key, yaml_node_t *kn, yaml_node_t *v, bool *known) {
    *known = false;
    bool set = !node_is_null(v);
    if (v->type == YAML_SCALAR_NODE && bool_text((char *)v->data.scalar.value) == 0) set = false;
    if (v->type == YAML_SEQUENCE_NODE && v->data.sequence.items.top == v->data.sequence.items.start)
        set = false;
    if (v->type == YAML_MAPPING_NODE && v->data.mapping.pairs.top == v->data.mapping.pairs.start)
        set = false;
    for (int i = 0; axo_ignored[i]; i++)
        if (!strcmp(key, axo_ignored[i])) {
            *known = true;
            if (set) {
                if (p->set_arg)
                    add_input_warning(p->c, "--set %s: an axolotl key qtune does not use; ignored",
                                      p->set_arg);
                else
                    add_input_warning(
                        p->c, "%s:%zu:%zu: %s: an axolotl key qtune does not use; ignored", p->name,
                        kn->start_mark.line + 1, kn->start_mark.column + 1, key);
            }
            return QT_OK;
        }
    for (int i = 0; axo_refused[i][0]; i++)
        if (!strcmp(key, axo_refused[i][0])) {
            *known = true;
            return set ? fail(p, kn->start_mark, "%s: not supported by qtune: %s", key,
                              axo_refused[i][1])
                       : QT_OK;
        }
    return QT_OK;
}

static void collect_top_names(const char **names, int *n) {
    *n = 0;
    for (int i = 0; i < NKEYS; i++)
        if (!strchr(schema[i].name, '.')) names[(*n)++] = schema[i].name;
}

static int parse_top(pctx *p, yaml_node_t *root) {
    qt_job_config *c = p->c;
    if (root->type != YAML_MAPPING_NODE)
        return fail(p, root->start_mark,
                    "a job file is a mapping of keys (key: value lines), "
                    "got %s",
                    node_kind_name(root));
    int rc = check_keys(p, root, "");
    if (rc) return rc;
    const char *names[QT_JOB_MAX_KEYS];
    int nn;
    collect_top_names(names, &nn);
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *kn = yaml_document_get_node(p->doc, pr->key);
        yaml_node_t *vn = yaml_document_get_node(p->doc, pr->value);
        const char *key = (char *)kn->data.scalar.value;
        int i = 0;
        while (i < NKEYS && (strchr(schema[i].name, '.') || strcmp(schema[i].name, key))) i++;
        if (i == NKEYS) {
            bool known;
            rc = axolotl_key(p, key, kn, vn, &known);
            if (rc) return rc;
            if (known) continue;
            return unknown_key(p, kn->start_mark, "", key, names, nn,
                               " (docs/CONFIG.md lists the keys)");
        }
        rc = apply_node(p, &schema[i], schema[i].name, c, &c->loc[i], kn->start_mark, vn);
        if (rc) return rc;
    }
    return QT_OK;
}

/* libyaml's reader errors carry a byte offset, not a mark */
static yaml_mark_t mark_of_offset(const char *text, size_t len, size_t off) {
    yaml_mark_t m = {0, 0, 0};
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n')
            m.line++, m.column = 0;
        else
            m.column++;
    }
    return m;
}

static int syntax_error(pctx *p, yaml_parser_t *yp, const char *text, size_t len) {
    yaml_mark_t m = yp->problem_mark;
    if (yp->error == YAML_READER_ERROR) m = mark_of_offset(text, len, yp->problem_offset);
    if (yp->error == YAML_MEMORY_ERROR)
        return qt_err_set(p->err, QT_ERR_MEMORY, "%s: out of memory parsing YAML", p->name);
    char ctx[200] = "";
    if (yp->context)
        snprintf(ctx, sizeof ctx, " (%s at line %zu column %zu)", yp->context,
                 yp->context_mark.line + 1, yp->context_mark.column + 1);
    return fail(p, m, "YAML syntax error: %s%s", yp->problem ? yp->problem : "unknown", ctx);
}

/* ---- public: init, free, parse, set ------------------------------------------------------- */

void qt_job_config_init(qt_job_config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NKEYS; i++) set_default(c, &schema[i], c);
}

void qt_job_config_free(qt_job_config *c) {
    for (int i = 0; i < NKEYS; i++)
        if (schema[i].kind == K_STR) free(*(char **)((char *)c + schema[i].off));
    free_datasets(c->datasets, c->n_datasets);
    for (int i = 0; i < c->n_warnings; i++) free(c->warnings[i]);
    free(c->warnings);
    free(c->file);
    memset(c, 0, sizeof *c);
}

int qt_job_config_parse_text(qt_job_config *c, const char *text, size_t len, const char *name,
                             qt_err *err) {
    pctx p = {.c = c, .name = name, .err = err};
    yaml_parser_t yp;
    if (!yaml_parser_initialize(&yp))
        return qt_err_set(err, QT_ERR_MEMORY, "%s: cannot start the YAML parser", name);
    yaml_parser_set_input_string(&yp, (const unsigned char *)text, len);
    yaml_document_t doc;
    int rc;
    if (!yaml_parser_load(&yp, &doc)) {
        rc = syntax_error(&p, &yp, text, len);
        yaml_parser_delete(&yp);
        return rc;
    }
    p.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    free(c->file);
    c->file = xstrdup(name);
    if (!root) {
        rc = fail(&p, (yaml_mark_t){0, 0, 0}, "empty job file (expected key: value lines)");
    } else {
        c->top = loc_of(&p, root->start_mark);
        rc = parse_top(&p, root);
    }
    if (!rc) { /* one document only: a second one would be silently ignored otherwise */
        yaml_document_t doc2;
        if (!yaml_parser_load(&yp, &doc2)) {
            rc = syntax_error(&p, &yp, text, len);
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&doc2);
            if (r2) rc = fail(&p, r2->start_mark, "a second YAML document; a job file holds one");
            yaml_document_delete(&doc2);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&yp);
    return rc;
}

int qt_job_config_parse_file(qt_job_config *c, const char *path, qt_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err_set(err, QT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            QT_CHECK(nb, "out of memory");
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return qt_err_set(err, QT_ERR_IO, "%s: cannot read", path);
    }
    buf[len] = 0;
    int rc = qt_job_config_parse_text(c, buf, len, path, err);
    free(buf);
    return rc;
}

int qt_job_config_set(qt_job_config *c, const char *key, const char *value, qt_err *err) {
    char arg[600];
    snprintf(arg, sizeof arg, "%s=%s", key, value);
    pctx p = {.c = c, .name = "--set", .set_arg = arg, .err = err};
    yaml_mark_t m0 = {0, 0, 0};
    int i = 0;
    while (i < NKEYS && strcmp(schema[i].name, key)) i++;
    yaml_parser_t yp;
    if (!yaml_parser_initialize(&yp))
        return qt_err_set(err, QT_ERR_MEMORY, "--set: cannot start the YAML parser");
    yaml_parser_set_input_string(&yp, (const unsigned char *)value, strlen(value));
    yaml_document_t doc;
    int rc;
    if (!yaml_parser_load(&yp, &doc)) {
        rc = fail(&p, m0, "%s: the value is not valid YAML: %s", key,
                  yp.problem ? yp.problem : "unknown");
        yaml_parser_delete(&yp);
        return rc;
    }
    p.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    /* an empty value (or only a comment) is null, the default. A stand-in node: libyaml's
     * document at the end of a stream is zeroed, not one nodes can be added to. */
    yaml_node_t empty = {.type = YAML_SCALAR_NODE};
    empty.data.scalar.value = (yaml_char_t *)"";
    empty.data.scalar.style = YAML_PLAIN_SCALAR_STYLE;
    if (!root) root = &empty;
    if (i < NKEYS) {
        rc = apply_node(&p, &schema[i], schema[i].name, c, &c->loc[i], m0, root);
    } else { /* an axolotl key, as in a file, or an unknown one */
        bool known;
        yaml_node_t kn = {.type = YAML_SCALAR_NODE};
        rc = axolotl_key(&p, key, &kn, root, &known);
        if (!rc && !known) {
            const char *names[QT_JOB_MAX_KEYS];
            for (int j = 0; j < NKEYS; j++) names[j] = schema[j].name;
            rc = unknown_key(&p, m0, "", key, names, NKEYS, " (docs/CONFIG.md lists the keys)");
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&yp);
    return rc;
}

int qt_job_config_set_arg(qt_job_config *c, const char *arg, qt_err *err) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) return qt_err_set(err, QT_ERR_ARG, "--set %s: expected key=value", arg);
    char key[128];
    if ((size_t)(eq - arg) >= sizeof key)
        return qt_err_set(err, QT_ERR_ARG, "--set %s: key too long", arg);
    memcpy(key, arg, (size_t)(eq - arg));
    key[eq - arg] = 0;
    return qt_job_config_set(c, key, eq + 1, err);
}

/* ---- finish: required keys, cross-key rules, warnings ----------------------------------- */

/* "file:L:C", "--set", or the file alone for a default */
static void where(const qt_job_config *c, qt_cfg_loc l, char *out, size_t cap) {
    const char *f = c->file ? c->file : "job config";
    if (l.line > 0)
        snprintf(out, cap, "%s:%d:%d", f, l.line, l.col);
    else if (l.line < 0)
        snprintf(out, cap, "--set");
    else
        snprintf(out, cap, "%s", f);
}

/* the other key's place, said inside a message: "line 11" or "--set" or "default" */
static void place(qt_cfg_loc l, char *out, size_t cap) {
    if (l.line > 0)
        snprintf(out, cap, "line %d", l.line);
    else
        snprintf(out, cap, "%s", l.line < 0 ? "--set" : "the default");
}

/* the later of two locations (--set after the file, then by line) */
static bool later(qt_cfg_loc a, qt_cfg_loc b) {
    if (a.line < 0 || b.line < 0) return a.line < 0;
    return a.line > b.line || (a.line == b.line && a.col > b.col);
}

static int cfail(const qt_job_config *c, qt_err *err, qt_cfg_loc l, const char *fmt, ...)
    QT_PRINTF(4, 5);
static int cfail(const qt_job_config *c, qt_err *err, qt_cfg_loc l, const char *fmt, ...) {
    char w[600], msg[800];
    where(c, l, w, sizeof w);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qt_err_set(err, QT_ERR_FORMAT, "%s: %s", w, msg);
}

static bool key_equal(const key_def *k, const void *a, const void *b);

static bool differs_from_default(const qt_job_config *c, int i) {
    qt_job_config d;
    qt_job_config_init(&d);
    bool r = !key_equal(&schema[i], c, &d);
    qt_job_config_free(&d);
    return r;
}

int qt_job_config_finish(qt_job_config *c, qt_err *err) {
    for (int i = c->n_parse_warnings; i < c->n_warnings; i++) free(c->warnings[i]);
    c->n_warnings = c->n_parse_warnings;
    qt_cfg_loc top = c->top;
    if (!c->file) top = (qt_cfg_loc){0, 0};
    char pl[64], w[600];
    for (int i = 0; i < NKEYS; i++) {
        if (!schema[i].required) continue;
        bool missing = schema[i].kind == K_DATASETS ? c->n_datasets == 0
                                                    : *(char **)((char *)c + schema[i].off) == NULL;
        if (missing) return cfail(c, err, top, "missing required key '%s'", schema[i].name);
    }
    const qt_cfg_loc *L = c->loc;
    int kws = key_index("warmup_steps"), kwr = key_index("warmup_ratio");
    if (c->warmup_steps > 0 && c->warmup_ratio > 0) {
        bool r = later(L[kwr], L[kws]);
        place(r ? L[kws] : L[kwr], pl, sizeof pl);
        return cfail(c, err, r ? L[kwr] : L[kws],
                     "%s: cannot be used together with %s (%s); set only one",
                     r ? "warmup_ratio" : "warmup_steps", r ? "warmup_steps" : "warmup_ratio", pl);
    }
    if (c->optimizer_in_bwd) {
        /* torchtune refuses both as well: no tensor waits for the others' gradients */
        int kib = key_index("optimizer_in_bwd"), kga = key_index("gradient_accumulation_steps");
        int kmg = key_index("max_grad_norm");
        if (c->gradient_accumulation_steps > 1) {
            place(L[kga], pl, sizeof pl);
            return cfail(c, err, L[kib],
                         "optimizer_in_bwd: cannot be used with gradient_accumulation_steps: "
                         "%lld (%s): each tensor is updated as soon as its gradient is complete, "
                         "so gradients cannot accumulate over micro-batches; set "
                         "gradient_accumulation_steps: 1 (a larger micro_batch_size instead) or "
                         "optimizer_in_bwd: false",
                         (long long)c->gradient_accumulation_steps, pl);
        }
        if (c->max_grad_norm > 0) {
            place(L[kmg], pl, sizeof pl);
            return cfail(c, err, L[kib],
                         "optimizer_in_bwd: cannot be used with max_grad_norm: %g (%s%s): "
                         "clipping scales every gradient by the global norm, which is known only "
                         "after the last one, and by then the others are applied; set "
                         "max_grad_norm: 0 (the norm is still logged) or optimizer_in_bwd: false",
                         c->max_grad_norm, pl,
                         L[kmg].line == 0 ? ", as in Hugging Face's Trainer" : "");
        }
    }
    int kad = key_index("adapter"), k4 = key_index("load_in_4bit");
    int kwf = key_index("qat.weight_format"), kwl = key_index("qat.with_lora");
    bool qat = qt_job_config_qat(c);
    if (qat && (c->adapter == QT_ADAPTER_QLORA || c->load_in_4bit)) {
        qt_cfg_loc a = c->adapter == QT_ADAPTER_QLORA ? L[kad] : L[k4];
        place(a, pl, sizeof pl);
        return cfail(c, err, L[kwf],
                     "qat: cannot be combined with %s (%s): QAT fake-quantizes full-precision "
                     "weights, QLoRA freezes a 4-bit base; use adapter: lora with "
                     "qat.with_lora: true for QAT on adapters",
                     c->adapter == QT_ADAPTER_QLORA ? "adapter: qlora" : "load_in_4bit: true", pl);
    }
    /* axolotl: lora on a 4-bit base is qlora; qlora loads the base in 4 bits */
    if (c->adapter == QT_ADAPTER_LORA && c->load_in_4bit) c->adapter = QT_ADAPTER_QLORA;
    if (c->adapter == QT_ADAPTER_QLORA && !c->load_in_4bit) {
        if (L[k4].line != 0)
            return cfail(c, err, L[k4],
                         "load_in_4bit: false contradicts adapter: qlora (QLoRA's base is "
                         "4-bit NF4)");
        c->load_in_4bit = true;
    }
    if (c->load_in_4bit && c->adapter == QT_ADAPTER_NONE)
        return cfail(c, err, L[k4],
                     "load_in_4bit: a 4-bit base cannot be fully fine-tuned; add adapter: qlora");
    if (qat) {
        if (c->adapter == QT_ADAPTER_LORA && !c->qat.with_lora) {
            if (L[kwl].line != 0) {
                place(L[kad], pl, sizeof pl);
                return cfail(c, err, L[kwl],
                             "qat.with_lora: false contradicts adapter: lora (%s); drop the "
                             "adapter for full-weight QAT",
                             pl);
            }
            c->qat.with_lora = true;
        }
        int kgs = key_index("qat.weight_group_size"), kls = key_index("qat.learn_scales");
        bool intn = c->qat.weight_format >= QT_QATW_INT2 && c->qat.weight_format <= QT_QATW_INT8;
        if (!intn && c->qat.weight_group_size)
            return cfail(c, err, L[kgs],
                         "qat.weight_group_size: only for int2..int8 weights (%s has its own "
                         "block size)",
                         wfmt_v[c->qat.weight_format]);
        if (!intn && c->qat.learn_scales)
            return cfail(c, err, L[kls],
                         "qat.learn_scales: only for int2..int8 weights (%s scales are "
                         "computed as the file format does)",
                         wfmt_v[c->qat.weight_format]);
        if (c->qat.with_lora && c->lora_dropout > 0)
            return cfail(c, err, L[key_index("lora_dropout")],
                         "lora_dropout: must be 0 with qat.with_lora (the merged weight W + "
                         "(alpha/r)·B·A is what gets fake-quantized)");
    } else {
        int first, count;
        block_range(&first, &count);
        for (int j = first; j < first + count; j++)
            if (j != kwf && differs_from_default(c, j)) {
                where(c, L[j], w, sizeof w);
                add_warning(c, "%s: %s is set but qat.weight_format is none; ignored", w,
                            schema[j].name);
            }
    }
    bool lora = c->adapter != QT_ADAPTER_NONE || (qat && c->qat.with_lora);
    if (!lora) {
        static const char *const lk[] = {"lora_r",
                                         "lora_alpha",
                                         "lora_dropout",
                                         "lora_target_modules",
                                         "lora_target_linear",
                                         "peft_use_rslora"};
        for (int j = 0; j < 6; j++) {
            int i = key_index(lk[j]);
            if (!differs_from_default(c, i)) continue;
            where(c, L[i], w, sizeof w);
            add_warning(c,
                        "%s: %s has no effect without an adapter (this is a full fine-tune); "
                        "add adapter: lora or qlora",
                        w, lk[j]);
        }
    }
    if (c->eval_steps > 0 && c->val_set_size == 0) {
        where(c, L[key_index("eval_steps")], w, sizeof w);
        add_warning(c, "%s: eval_steps: there is no validation set (val_set_size is 0)", w);
    }
    for (int i = 0; i < c->n_datasets; i++) {
        const qt_dataset_config *d = &c->datasets[i];
        if (d->type != QT_DS_COMPLETION && strcmp(d->field, "text")) {
            where(c, d->loc[2], w, sizeof w);
            add_warning(c, "%s: datasets[%d].field: only used by type completion; ignored", w, i);
        }
        if (d->type != QT_DS_CHAT && d->chat_template != QT_CHAT_TOKENIZER_DEFAULT) {
            where(c, d->loc[3], w, sizeof w);
            add_warning(c, "%s: datasets[%d].chat_template: only used by type chat; ignored", w, i);
        }
    }
    return QT_OK;
}

int qt_job_config_load(qt_job_config *c, const char *path, const char *const *sets, int nsets,
                       qt_err *err) {
    qt_job_config_init(c);
    int rc = qt_job_config_parse_file(c, path, err);
    for (int i = 0; i < nsets && !rc; i++) rc = qt_job_config_set_arg(c, sets[i], err);
    if (!rc) rc = qt_job_config_finish(c, err);
    if (rc) qt_job_config_free(c);
    return rc;
}

/* ---- resolved values -------------------------------------------------------------------- */

bool qt_job_config_qat(const qt_job_config *c) {
    return c->qat.weight_format != QT_QATW_NONE;
}

unsigned qt_job_config_lora_targets(const qt_job_config *c) {
    return c->lora_target_linear ? QT_PROJ_ALL : c->lora_target_modules;
}

bool qt_job_config_bf16(const qt_job_config *c, bool device_has_bf16) {
    return c->bf16 == QT_BF16_AUTO ? device_has_bf16 : c->bf16 == QT_BF16_TRUE;
}

const char *qt_job_adapter_name(int a) {
    return a >= 0 && a < 3 ? adapter_v[a] : "?";
}
const char *qt_job_optimizer_name(int o) {
    return o >= 0 && o < (int)(sizeof optim_v / sizeof optim_v[0]) - 1 ? optim_v[o] : "?";
}
const char *qt_job_dataset_type_name(int t) {
    return t >= 0 && t < 5 ? dtype_v[t] : "?";
}
const char *qt_job_chat_template_name(int t) {
    return t >= 0 && t < 4 ? tmpl_v[t] : "?";
}
const char *qt_job_qat_weight_name(int f) {
    return f >= 0 && f < 12 ? wfmt_v[f] : "?";
}

int qt_job_config_model_opts(qt_job_config *c, qt_model_opts *o, qt_err *err) {
    bool qat = qt_job_config_qat(c);
    if (qat && c->adapter == QT_ADAPTER_QLORA)
        return qt_err_set(err, QT_ERR_ARG, "qat cannot be combined with adapter: qlora");
    *o = qt_model_opts_default();
    o->mode = qat                              ? QT_MODE_QAT
              : c->adapter == QT_ADAPTER_QLORA ? QT_MODE_QLORA
              : c->adapter == QT_ADAPTER_LORA  ? QT_MODE_LORA
                                               : QT_MODE_FULL;
    o->lora_r = (int)c->lora_r;
    o->lora_alpha = c->lora_alpha;
    o->lora_dropout = c->lora_dropout;
    o->rslora = c->peft_use_rslora;
    o->lora_targets = qt_job_config_lora_targets(c);
    o->nf4_blocksize = 64; /* bitsandbytes' NF4 defaults, as axolotl's qlora uses them */
    o->nf4_double_quant = true;
    o->qat_lora = qat && c->qat.with_lora;
    memset(&c->fq_weight, 0, sizeof c->fq_weight);
    memset(&c->fq_act, 0, sizeof c->fq_act);
    int wf = c->qat.weight_format;
    if (wf >= QT_QATW_INT2 && wf <= QT_QATW_INT8) {
        c->fq_weight.kind = QT_FQ_INT;
        c->fq_weight.bits = wf - QT_QATW_INT2 + 2;
        c->fq_weight.symmetric = 1;
        c->fq_weight.granularity = c->qat.weight_group_size ? QT_FQ_PER_GROUP : QT_FQ_PER_CHANNEL;
        c->fq_weight.group = (int)c->qat.weight_group_size;
        c->fq_weight.scale_mode = c->qat.learn_scales ? QT_FQ_LEARNED : QT_FQ_DYNAMIC;
    } else if (wf == QT_QATW_Q4_0) {
        c->fq_weight.kind = QT_FQ_Q4_0;
    } else if (wf == QT_QATW_Q8_0) {
        c->fq_weight.kind = QT_FQ_Q8_0;
    } else if (wf == QT_QATW_Q4_K) {
        c->fq_weight.kind = QT_FQ_Q4_K;
    } else if (wf == QT_QATW_NF4) {
        c->fq_weight.kind = QT_FQ_NF4;
        c->fq_weight.blocksize = 64;
    }
    if (c->qat.activation_format == QT_QATA_INT8_PER_TOKEN) {
        c->fq_act.kind = QT_FQ_INT;
        c->fq_act.bits = 8;
        c->fq_act.symmetric = 1;
        c->fq_act.granularity = QT_FQ_PER_TOKEN;
        c->fq_act.scale_mode = QT_FQ_DYNAMIC;
    }
    o->qat_weight = qat ? &c->fq_weight : NULL;
    o->qat_act = qat && c->qat.activation_format != QT_QATA_NONE ? &c->fq_act : NULL;
    o->checkpoint = c->gradient_checkpointing;
    o->seed = (uint64_t)c->seed;
    return QT_OK;
}

/* ---- equality ------------------------------------------------------------------------------ */

static bool str_eq(const char *a, const char *b) {
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static bool key_equal(const key_def *k, const void *a, const void *b) {
    const char *fa = (const char *)a + k->off, *fb = (const char *)b + k->off;
    switch (k->kind) {
    case K_STR:
        return str_eq(*(char *const *)fa, *(char *const *)fb);
    case K_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case K_INT:
        return *(const int64_t *)fa == *(const int64_t *)fb;
    case K_FLOAT:
    case K_VALSIZE:
        return *(const double *)fa == *(const double *)fb;
    case K_ENUM:
    case K_BF16:
        return *(const int *)fa == *(const int *)fb;
    case K_TARGETS:
        return *(const unsigned *)fa == *(const unsigned *)fb;
    case K_DATASETS: {
        const qt_job_config *ca = a, *cb = b;
        if (ca->n_datasets != cb->n_datasets) return false;
        for (int i = 0; i < ca->n_datasets; i++)
            for (int j = 0; j < NDSKEYS; j++)
                if (!key_equal(&ds_schema[j], &ca->datasets[i], &cb->datasets[i])) return false;
        return true;
    }
    case K_BLOCK:
        return true; /* its keys are compared one by one */
    }
    return false;
}

bool qt_job_config_equal(const qt_job_config *a, const qt_job_config *b, char *which, size_t cap) {
    for (int i = 0; i < NKEYS; i++)
        if (!key_equal(&schema[i], a, b)) {
            if (which) snprintf(which, cap, "%s", schema[i].name);
            return false;
        }
    if (which && cap) which[0] = 0;
    return true;
}

/* ---- emission ------------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf;

static int sbuf_write(void *data, unsigned char *bytes, size_t n) {
    sbuf *s = data;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (s->len + n + 1 > cap) cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (!nb) return 0;
        s->buf = nb, s->cap = cap;
    }
    memcpy(s->buf + s->len, bytes, n);
    s->len += n;
    s->buf[s->len] = 0;
    return 1;
}

typedef struct {
    yaml_emitter_t em;
    bool ok;
} emit_ctx;

static void ev(emit_ctx *e, yaml_event_t *event, int init_ok) {
    if (!e->ok) {
        if (init_ok) yaml_event_delete(event);
        return;
    }
    if (!init_ok || !yaml_emitter_emit(&e->em, event)) e->ok = false;
}

static void scalar(emit_ctx *e, const char *s, yaml_scalar_style_t style) {
    yaml_event_t event;
    int ok = yaml_scalar_event_initialize(&event, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1,
                                          1, style);
    ev(e, &event, ok);
}

/* a string value: quoted when a YAML reader would take it for null, a boolean or a number
 * (qtune reads any scalar as a string; PyYAML and axolotl would not) */
static void str_scalar(emit_ctx *e, const char *s) {
    if (!s) {
        scalar(e, "null", YAML_PLAIN_SCALAR_STYLE);
        return;
    }
    int64_t i;
    double d;
    bool typed =
        is_null_text(s) || bool_text(s) >= 0 || parse_int(s, &i) != 1 || parse_float(s, &d);
    scalar(e, s, typed ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE);
}

static void map_start(emit_ctx *e, yaml_mapping_style_t style) {
    yaml_event_t event;
    int ok = yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, style);
    ev(e, &event, ok);
}

static void map_end(emit_ctx *e) {
    yaml_event_t event;
    int ok = yaml_mapping_end_event_initialize(&event);
    ev(e, &event, ok);
}

static void seq_start(emit_ctx *e, yaml_sequence_style_t style) {
    yaml_event_t event;
    int ok = yaml_sequence_start_event_initialize(&event, NULL, NULL, 1, style);
    ev(e, &event, ok);
}

static void seq_end(emit_ctx *e) {
    yaml_event_t event;
    int ok = yaml_sequence_end_event_initialize(&event);
    ev(e, &event, ok);
}

static void emit_value(emit_ctx *e, const qt_job_config *c, const key_def *k, const void *base) {
    const char *f = (const char *)base + k->off;
    char num[64];
    switch (k->kind) {
    case K_STR:
        str_scalar(e, *(char *const *)f);
        return;
    case K_BOOL:
        scalar(e, *(const bool *)f ? "true" : "false", YAML_PLAIN_SCALAR_STYLE);
        return;
    case K_INT:
        snprintf(num, sizeof num, "%lld", (long long)*(const int64_t *)f);
        scalar(e, num, YAML_PLAIN_SCALAR_STYLE);
        return;
    case K_FLOAT:
        fmt_double(*(const double *)f, num, sizeof num);
        break;
    case K_VALSIZE: {
        double v = *(const double *)f;
        if (v >= 1)
            snprintf(num, sizeof num, "%.0f", v);
        else
            fmt_double(v, num, sizeof num);
        break;
    }
    case K_ENUM:
    case K_BF16:
        scalar(e, k->values[*(const int *)f], YAML_PLAIN_SCALAR_STYLE);
        return;
    case K_TARGETS: {
        unsigned m = *(const unsigned *)f;
        if (m == QT_PROJ_ALL) {
            scalar(e, "all-linear", YAML_PLAIN_SCALAR_STYLE);
            return;
        }
        seq_start(e, YAML_FLOW_SEQUENCE_STYLE);
        for (unsigned b = 1; b <= QT_PROJ_DOWN; b <<= 1)
            if (m & b) scalar(e, qt_proj_name(b), YAML_PLAIN_SCALAR_STYLE);
        seq_end(e);
        return;
    }
    case K_DATASETS:
        seq_start(e, YAML_BLOCK_SEQUENCE_STYLE);
        for (int i = 0; i < c->n_datasets; i++) {
            map_start(e, YAML_BLOCK_MAPPING_STYLE);
            for (int j = 0; j < NDSKEYS; j++) {
                scalar(e, ds_schema[j].name, YAML_PLAIN_SCALAR_STYLE);
                emit_value(e, c, &ds_schema[j], &c->datasets[i]);
            }
            map_end(e);
        }
        seq_end(e);
        return;
    case K_BLOCK: {
        int first, count;
        block_range(&first, &count);
        map_start(e, YAML_BLOCK_MAPPING_STYLE);
        for (int j = first; j < first + count; j++) {
            scalar(e, schema[j].name + 4, YAML_PLAIN_SCALAR_STYLE);
            emit_value(e, c, &schema[j], c);
        }
        map_end(e);
        return;
    }
    }
    scalar(e, num, YAML_PLAIN_SCALAR_STYLE);
}

int qt_job_config_emit(const qt_job_config *c, char **text, size_t *len, qt_err *err) {
    static const char head[] = "# qtune job, resolved: every key with the value the run uses "
                               "(docs/CONFIG.md)\n";
    sbuf s = {0};
    QT_CHECK(sbuf_write(&s, (unsigned char *)head, sizeof head - 1), "out of memory");
    emit_ctx e = {.ok = true};
    if (!yaml_emitter_initialize(&e.em)) {
        free(s.buf);
        return qt_err_set(err, QT_ERR_MEMORY, "cannot start the YAML emitter");
    }
    yaml_emitter_set_output(&e.em, sbuf_write, &s);
    yaml_emitter_set_unicode(&e.em, 1);
    yaml_emitter_set_width(&e.em, 1 << 16); /* never fold long paths */
    yaml_event_t event;
    int ok = yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING);
    ev(&e, &event, ok);
    ok = yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1);
    ev(&e, &event, ok);
    map_start(&e, YAML_BLOCK_MAPPING_STYLE);
    for (int i = 0; i < NKEYS; i++) {
        if (strchr(schema[i].name, '.')) continue; /* inside the qat block */
        scalar(&e, schema[i].name, YAML_PLAIN_SCALAR_STYLE);
        emit_value(&e, c, &schema[i], c);
    }
    map_end(&e);
    ok = yaml_document_end_event_initialize(&event, 1);
    ev(&e, &event, ok);
    ok = yaml_stream_end_event_initialize(&event);
    ev(&e, &event, ok);
    if (e.ok && !yaml_emitter_flush(&e.em)) e.ok = false;
    if (!e.ok) {
        int rc = qt_err_set(err, QT_ERR_MEMORY, "cannot write the config as YAML: %s",
                            e.em.problem ? e.em.problem : "out of memory");
        yaml_emitter_delete(&e.em);
        free(s.buf);
        return rc;
    }
    yaml_emitter_delete(&e.em);
    *text = s.buf;
    if (len) *len = s.len;
    return QT_OK;
}

int qt_job_config_emit_file(const qt_job_config *c, FILE *f, qt_err *err) {
    char *t;
    size_t n;
    int rc = qt_job_config_emit(c, &t, &n, err);
    if (rc) return rc;
    if (fwrite(t, 1, n, f) != n) rc = qt_err_set(err, QT_ERR_IO, "cannot write the config");
    free(t);
    return rc;
}

int qt_job_config_write(const qt_job_config *c, const char *path, qt_err *err) {
    char *t;
    size_t n;
    int rc = qt_job_config_emit(c, &t, &n, err);
    if (rc) return rc;
    rc = qt_write_file_atomic(path, t, n, err);
    free(t);
    return rc;
}

/* ---- the schema as markdown ------------------------------------------------------------- */

static void md_row(FILE *f, const char *name, const key_def *k) {
    const char *type = "";
    char vals[400] = "", def[80] = "";
    switch (k->kind) {
    case K_STR:
        type = "string";
        break;
    case K_BOOL:
        type = "bool";
        break;
    case K_INT:
        type = "integer";
        break;
    case K_FLOAT:
        type = "number";
        break;
    case K_ENUM:
        type = "enum";
        break;
    case K_BF16:
        type = "bool or `auto`";
        break;
    case K_VALSIZE:
        type = "number";
        break;
    case K_TARGETS:
        type = "list or string";
        break;
    case K_DATASETS:
        type = "list of mappings";
        break;
    case K_BLOCK:
        type = "mapping";
        break;
    }
    if (k->kind == K_INT || k->kind == K_FLOAT) {
        range_text(k, vals, sizeof vals);
        size_t skip = strncmp(vals, "must be in ", 11) ? 8 : 11; /* the bare range */
        memmove(vals, vals + skip, strlen(vals + skip) + 1);
    } else if (k->kind == K_ENUM || k->kind == K_BF16) {
        for (int i = 0; k->values[i]; i++)
            snprintf(vals + strlen(vals), sizeof vals - strlen(vals), "%s`%s`", i ? ", " : "",
                     k->values[i]);
        if (k->aliases)
            for (int i = 0; k->aliases[i]; i += 2)
                snprintf(vals + strlen(vals), sizeof vals - strlen(vals), " (`%s` = `%s`)",
                         k->aliases[i], k->aliases[i + 1]);
    } else if (k->kind == K_VALSIZE) {
        snprintf(vals, sizeof vals, "[0, 1) or a whole count >= 1");
    } else if (k->kind == K_TARGETS) {
        snprintf(vals, sizeof vals,
                 "`q_proj` `k_proj` `v_proj` `o_proj` `gate_proj` `up_proj` "
                 "`down_proj`, or `all-linear`");
    }
    if (k->required)
        snprintf(def, sizeof def, "**required**");
    else if (k->def)
        snprintf(def, sizeof def, "`%s`", k->def);
    else
        snprintf(def, sizeof def, "null");
    fprintf(f, "| `%s` | %s | %s | %s | %s |\n", name, type, def, vals, k->help);
}

void qt_job_config_schema_markdown(FILE *f) {
    fprintf(f, "| key | type | default | range / values | meaning |\n|---|---|---|---|---|\n");
    for (int i = 0; i < NKEYS; i++) md_row(f, schema[i].name, &schema[i]);
    fprintf(f, "\nEach entry of `datasets`:\n\n");
    fprintf(f, "| key | type | default | range / values | meaning |\n|---|---|---|---|---|\n");
    for (int j = 0; j < NDSKEYS; j++) md_row(f, ds_schema[j].name, &ds_schema[j]);
    fprintf(f, "\naxolotl keys accepted and ignored (a warning when set to anything but null, "
               "false or empty):");
    for (int i = 0; axo_ignored[i]; i++) fprintf(f, "%s`%s`", i ? ", " : " ", axo_ignored[i]);
    fprintf(f, ".\n\naxolotl keys refused when set (an error naming the alternative):");
    for (int i = 0; axo_refused[i][0]; i++) fprintf(f, "%s`%s`", i ? ", " : " ", axo_refused[i][0]);
    fprintf(f, ".\n");
}
