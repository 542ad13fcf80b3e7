/* export.c - see export.h. */
#define _POSIX_C_SOURCE 200809L
#include "export.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "quant/half.h"
#include "train/gguf_model.h"
#include "quant/nf4.h"
#include "quant/nf4_bnb.h"
#include "quant/safetensors.h"
#include "train/hf_model.h"
#include "train/run_dir.h"

int qt_export_format_parse(const char *name, qt_export_format *out) {
    static const struct {
        const char *n;
        qt_export_format f;
    } T[] = {{"hf", QT_EXPORT_HF},
             {"bnb-nf4", QT_EXPORT_BNB_NF4},
             {"peft", QT_EXPORT_PEFT},
             {"gguf-f16", QT_EXPORT_GGUF_F16},
             {"gguf-q8_0", QT_EXPORT_GGUF_Q8_0},
             {"gguf-q4_0", QT_EXPORT_GGUF_Q4_0},
             {"gguf-q4_k_m", QT_EXPORT_GGUF_Q4_K_M}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(name, T[i].n)) {
            *out = T[i].f;
            return 0;
        }
    return -1;
}

void qt_linear_merged(qt_ctx *ctx, const qt_linear *l, float *w) {
    int64_t n = l->out * l->in;
    /* the same ops, in the same order, as the forward (train/linear.c): the merged weight is
     * bit for bit the one training multiplied by */
    qt_no_grad_begin(ctx);
    qt_arena_mark mm = qt_arena_get_mark(&ctx->meta), md = qt_arena_get_mark(&ctx->data);
    qt_tensor *base;
    if (l->is_nf4) {
        qt_nf4_weight_dequant(ctx, &l->nf4, w);
        base = qt_tensor_new(ctx, QT_F32, 2, (int64_t[]){l->out, l->in});
        qt_tensor_upload(ctx, base, w);
    } else {
        base = l->w;
    }
    qt_tensor *m = base;
    if (l->lora_a)
        m = qt_add(
            ctx, base,
            qt_scale(ctx, qt_matmul(ctx, l->lora_b, l->lora_a, false, false), l->lora_scale));
    if (l->wq)
        m = qt_fakequant(ctx, m, l->wq, l->wq_scale, l->wq_offset,
                         l->wq_scale ? QT_FQ_LSQ : QT_FQ_STE_CLIP);
    QT_CHECK(qt_numel(m) == n, "merged weight size");
    qt_tensor_download(ctx, m, w);
    qt_arena_rewind(&ctx->meta, mm);
    qt_arena_rewind(&ctx->data, md);
    qt_no_grad_end(ctx);
}

/* ---- tensors to write -------------------------------------------------------------------- */

typedef struct {
    char name[256];
    qt_st_dtype dtype;
    int ndim;
    int64_t shape[2];
    void *data;
    size_t bytes;
} out_tensor;

typedef struct {
    out_tensor *t;
    int n, cap;
} out_list;

static out_tensor *out_add(out_list *L, const char *name, qt_st_dtype dt, int ndim,
                           const int64_t *shape, size_t bytes) {
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 64;
        L->t = realloc(L->t, (size_t)L->cap * sizeof *L->t);
        QT_CHECK(L->t, "out of memory");
    }
    out_tensor *t = &L->t[L->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt, t->ndim = ndim, t->bytes = bytes;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = malloc(bytes ? bytes : 1);
    QT_CHECK(t->data, "out of memory");
    return t;
}

static void out_free(out_list *L) {
    for (int i = 0; i < L->n; i++) free(L->t[i].data);
    free(L->t);
    memset(L, 0, sizeof *L);
}

/* f32 values as a bf16 tensor; returns the relative RMS error of the rounding */
static double add_bf16(out_list *L, const char *name, int ndim, const int64_t *shape,
                       const float *v) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    out_tensor *t = out_add(L, name, QT_ST_BF16, ndim, shape, (size_t)n * 2);
    uint16_t *h = t->data;
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        h[i] = qt_f32_to_bf16(v[i]);
        double d = (double)qt_bf16_to_f32(h[i]) - v[i];
        e += d * d, s += (double)v[i] * v[i];
    }
    return s > 0 ? sqrt(e / s) : 0;
}

static void add_param_bf16(qt_ctx *ctx, out_list *L, const char *name, const qt_tensor *p) {
    float *v = malloc(qt_nbytes(p));
    QT_CHECK(v && p->dtype == QT_F32, "export: %s", name);
    qt_tensor_download(ctx, p, v);
    add_bf16(L, name, p->ndim, p->shape, v);
    free(v);
}

/* Writes the tensors as safetensors, sharded past shard_bytes with an index, as transformers
 * names the files. */
static int write_shards(out_list *L, const char *dir, size_t shard_bytes, qt_err *err) {
    size_t total = 0;
    for (int i = 0; i < L->n; i++) total += L->t[i].bytes;
    int nshards = 0;
    int *shard = calloc(L->n > 0 ? (size_t)L->n : 1u, sizeof *shard);
    size_t cur = 0;
    for (int i = 0; i < L->n; i++) {
        if (i == 0 || (cur > 0 && cur + L->t[i].bytes > shard_bytes)) nshards++, cur = 0;
        shard[i] = nshards - 1;
        cur += L->t[i].bytes;
    }
    cJSON *index = cJSON_CreateObject(), *wm = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    int rc = QT_OK;
    for (int s = 0; s < nshards && !rc; s++) {
        char fname[96], path[4300], msg[512];
        if (nshards == 1)
            snprintf(fname, sizeof fname, "model.safetensors");
        else
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        qt_st_entry *e = calloc((size_t)L->n, sizeof *e);
        int ne = 0;
        for (int i = 0; i < L->n; i++) {
            if (shard[i] != s) continue;
            out_tensor *t = &L->t[i];
            e[ne] =
                (qt_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            memcpy(e[ne].shape, t->shape, sizeof t->shape);
            ne++;
            cJSON_AddStringToObject(wm, t->name, fname);
        }
        qt_st_kv fmt = {"format", "pt"};
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        if (qt_st_save_file(path, e, ne, &fmt, 1, msg, sizeof msg) != 0)
            rc = qt_err_set(err, QT_ERR_IO, "%s", msg);
        free(e);
    }
    cJSON_AddItemToObject(index, "weight_map", wm);
    if (!rc && nshards > 1) {
        char *text = cJSON_Print(index), path[4300];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        rc = qt_write_file_atomic(path, text, strlen(text), err);
        free(text);
    }
    cJSON_Delete(index);
    free(shard);
    return rc;
}

/* copies the base model's tokenizer and generation files that exist */
static int copy_side_files(const char *from, const char *to, qt_err *err) {
    static const char *names[] = {"generation_config.json", "tokenizer.json",
                                  "tokenizer_config.json",  "special_tokens_map.json",
                                  "tokenizer.model",        "chat_template.jinja"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char src[4200], dst[4200];
        size_t len;
        snprintf(src, sizeof src, "%s/%s", from, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", to, names[i]);
        char *b = qt_read_file(src, &len);
        if (!b) continue;
        int rc = qt_write_file_atomic(dst, b, len, err);
        free(b);
        if (rc) return rc;
    }
    return QT_OK;
}

/* config.json from the base, with the export's dtype (and quantization_config for bnb) */
static int write_config(const char *base, const char *dir, bool bnb, qt_err *err) {
    char path[4200];
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", base);
    char *text = qt_read_file(path, &len);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!c) return qt_err_set(err, QT_ERR_FORMAT, "%s: cannot read", path);
    cJSON_DeleteItemFromObject(c, "torch_dtype");
    cJSON_DeleteItemFromObject(c, "dtype");
    cJSON_AddStringToObject(c, "torch_dtype", "bfloat16");
    if (bnb) {
        cJSON *q = cJSON_CreateObject();
        cJSON_AddStringToObject(q, "quant_method", "bitsandbytes");
        cJSON_AddBoolToObject(q, "load_in_4bit", 1);
        cJSON_AddBoolToObject(q, "load_in_8bit", 0);
        cJSON_AddStringToObject(q, "bnb_4bit_quant_type", "nf4");
        cJSON_AddBoolToObject(q, "bnb_4bit_use_double_quant", 1);
        cJSON_AddStringToObject(q, "bnb_4bit_compute_dtype", "bfloat16");
        cJSON_AddStringToObject(q, "bnb_4bit_quant_storage", "uint8");
        /* a JSON float: transformers refuses an integer here */
        cJSON_AddRawToObject(q, "llm_int8_threshold", "6.0");
        cJSON_AddNullToObject(q, "llm_int8_skip_modules");
        cJSON_AddBoolToObject(q, "llm_int8_enable_fp32_cpu_offload", 0);
        cJSON_AddBoolToObject(q, "llm_int8_has_fp16_weight", 0);
        cJSON_AddItemToObject(c, "quantization_config", q);
    }
    char *out = cJSON_Print(c);
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = qt_write_file_atomic(path, out, strlen(out), err);
    free(out);
    cJSON_Delete(c);
    return rc;
}

static const char *proj_group(int j) {
    return j < 4 ? "self_attn" : "mlp";
}

static int export_hf(qt_ctx *ctx, qt_llama *m, const qt_export_opts *o, bool bnb, qt_err *err) {
    const qt_model_config *c = &m->cfg;
    out_list L = {0};
    add_param_bf16(ctx, &L, "model.embed_tokens.weight", m->embed);
    static const char *proj[7] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                  "gate_proj", "up_proj", "down_proj"};
    double worst = 0;
    char worst_name[128] = "";
    for (int64_t i = 0; i < c->layers; i++) {
        qt_llama_layer *Ly = &m->layer[i];
        char name[160];
        snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)i);
        add_param_bf16(ctx, &L, name, Ly->in_norm);
        snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight",
                 (long long)i);
        add_param_bf16(ctx, &L, name, Ly->post_norm);
        qt_linear *ls[7] = {&Ly->q, &Ly->k, &Ly->v, &Ly->o, &Ly->gate, &Ly->up, &Ly->down};
        for (int j = 0; j < 7; j++) {
            qt_linear *l = ls[j];
            int64_t shape[2] = {l->out, l->in}, n = l->out * l->in;
            float *w = malloc((size_t)n * sizeof *w);
            QT_CHECK(w, "out of memory");
            qt_linear_merged(ctx, l, w);
            char prefix[128];
            snprintf(prefix, sizeof prefix, "model.layers.%lld.%s.%s", (long long)i, proj_group(j),
                     proj[j]);
            double e;
            if (!bnb) {
                snprintf(name, sizeof name, "%s.weight", prefix);
                e = add_bf16(&L, name, 2, shape, w);
            } else { /* from bf16, as transformers quantizes a bf16 checkpoint */
                uint16_t *h = malloc((size_t)n * 2);
                for (int64_t k = 0; k < n; k++) h[k] = qt_f32_to_bf16(w[k]);
                qt_nf4_tensor q;
                QT_CHECK(qt_nf4_tensor_quantize(&q, h, QT_NF4_BF16, 2, shape, 64, 1) == 0,
                         "NF4 quantization of %s", prefix);
                float *dq = malloc((size_t)n * sizeof *dq);
                qt_nf4_tensor_dequantize_f32(&q, dq);
                double es = 0, s = 0;
                for (int64_t k = 0; k < n; k++) {
                    double dq_bf = qt_bf16_to_f32(qt_f32_to_bf16(dq[k]));
                    es += (dq_bf - w[k]) * (dq_bf - w[k]), s += (double)w[k] * w[k];
                }
                e = s > 0 ? sqrt(es / s) : 0;
                qt_nf4_bnb_pack pk;
                QT_CHECK(qt_nf4_bnb_pack_init(&pk, &q, prefix) == 0, "bnb pack %s", prefix);
                for (int k = 0; k < pk.nentries; k++) {
                    const qt_st_entry *se = &pk.entries[k];
                    int64_t cnt = 1;
                    for (int d = 0; d < se->ndim; d++) cnt *= se->shape[d];
                    size_t bytes = (size_t)cnt * (size_t)qt_st_dtype_size(se->dtype);
                    out_tensor *t = out_add(&L, se->name, se->dtype, se->ndim, se->shape, bytes);
                    memcpy(t->data, se->data, bytes);
                }
                free(h), free(dq);
                qt_nf4_tensor_free(&q);
            }
            if (o->report) fprintf(o->report, "  %-45s relative error %.3e\n", prefix, e);
            if (e > worst) worst = e, snprintf(worst_name, sizeof worst_name, "%s", prefix);
            if (l->bias) {
                snprintf(name, sizeof name, "%s.bias", prefix);
                add_param_bf16(ctx, &L, name, l->bias);
            }
            free(w);
        }
    }
    add_param_bf16(ctx, &L, "model.norm.weight", m->norm);
    if (!c->tie_embeddings) add_param_bf16(ctx, &L, "lm_head.weight", m->lm_head);
    if (o->report)
        fprintf(o->report, "merge: worst relative error %.3e (%s) from %s\n", worst, worst_name,
                bnb ? "NF4 re-quantization" : "bf16 rounding");
    int rc = qt_run_dir_make(o->out, err);
    if (!rc) rc = write_shards(&L, o->out, o->shard_bytes ? o->shard_bytes : (size_t)5e9, err);
    if (!rc) rc = write_config(o->base_dir, o->out, bnb, err);
    if (!rc) rc = copy_side_files(o->base_dir, o->out, err);
    out_free(&L);
    return rc;
}

static int export_peft(qt_ctx *ctx, qt_llama *m, const qt_export_opts *o, qt_err *err) {
    out_list L = {0};
    unsigned targets = 0;
    static const char *proj[7] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                  "gate_proj", "up_proj", "down_proj"};
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        qt_llama_layer *Ly = &m->layer[i];
        qt_linear *ls[7] = {&Ly->q, &Ly->k, &Ly->v, &Ly->o, &Ly->gate, &Ly->up, &Ly->down};
        for (int j = 0; j < 7; j++) {
            if (!ls[j]->lora_a) continue;
            if (ls[j]->wq || ls[j]->is_nf4) {
                /* an adapter alone reproduces training only on the base it was trained on */
                if (o->report && i == 0 && !targets)
                    fprintf(o->report,
                            "note: the adapter was trained on a %s base; applied to "
                            "the bf16 base it will differ slightly\n",
                            ls[j]->is_nf4 ? "NF4" : "fake-quantized");
            }
            targets |= 1u << j;
            const qt_tensor *ab[2] = {ls[j]->lora_a, ls[j]->lora_b};
            for (int k = 0; k < 2; k++) {
                char name[200];
                snprintf(name, sizeof name,
                         "base_model.model.model.layers.%lld.%s.%s.lora_%c.weight", (long long)i,
                         proj_group(j), proj[j], k ? 'B' : 'A');
                out_tensor *t = out_add(&L, name, QT_ST_F32, 2, ab[k]->shape, qt_nbytes(ab[k]));
                qt_tensor_download(ctx, ab[k], t->data);
            }
        }
    }
    if (!L.n) {
        out_free(&L);
        return qt_err_set(err, QT_ERR_ARG, "peft export: the model has no LoRA adapters");
    }
    int rc = qt_run_dir_make(o->out, err);
    char path[4300], msg[512];
    if (!rc) {
        qt_st_entry *e = calloc((size_t)L.n, sizeof *e);
        for (int i = 0; i < L.n; i++) {
            e[i] = (qt_st_entry){
                .name = L.t[i].name, .dtype = L.t[i].dtype, .ndim = 2, .data = L.t[i].data};
            memcpy(e[i].shape, L.t[i].shape, sizeof L.t[i].shape);
        }
        qt_st_kv fmt = {"format", "pt"};
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", o->out);
        if (qt_st_save_file(path, e, L.n, &fmt, 1, msg, sizeof msg) != 0)
            rc = qt_err_set(err, QT_ERR_IO, "%s", msg);
        free(e);
    }
    if (!rc) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "base_model_name_or_path", o->base_dir);
        cJSON_AddStringToObject(c, "peft_type", "LORA");
        cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
        cJSON_AddNumberToObject(c, "r", o->lora_r);
        cJSON_AddNumberToObject(c, "lora_alpha", o->lora_alpha);
        cJSON_AddNumberToObject(c, "lora_dropout", o->lora_dropout);
        cJSON_AddBoolToObject(c, "use_rslora", o->rslora);
        cJSON_AddStringToObject(c, "bias", "none");
        cJSON_AddBoolToObject(c, "fan_in_fan_out", 0);
        cJSON_AddBoolToObject(c, "inference_mode", 1);
        cJSON_AddBoolToObject(c, "init_lora_weights", 1);
        cJSON *t = cJSON_AddArrayToObject(c, "target_modules");
        for (int j = 0; j < 7; j++)
            if (targets & (1u << j)) cJSON_AddItemToArray(t, cJSON_CreateString(proj[j]));
        char *text = cJSON_Print(c);
        snprintf(path, sizeof path, "%s/adapter_config.json", o->out);
        rc = qt_write_file_atomic(path, text, strlen(text), err);
        free(text);
        cJSON_Delete(c);
    }
    out_free(&L);
    return rc;
}

int qt_export(qt_ctx *ctx, qt_llama *m, const qt_export_opts *o, qt_err *err) {
    /* a GGUF base has no config.json or tokenizer files to carry over: refuse before writing
     * anything rather than leave a half-made output behind */
    if (o->base_dir && qt_gguf_is_file(o->base_dir)) {
        bool gguf_out = o->format != QT_EXPORT_HF && o->format != QT_EXPORT_BNB_NF4 &&
                        o->format != QT_EXPORT_PEFT;
        if (!gguf_out)
            return qt_err_set(err, QT_ERR_UNSUPPORTED,
                              "%s: a GGUF model exports to GGUF formats only (hf, bnb-nf4 and "
                              "peft need the Hugging Face directory it came from)",
                              o->base_dir);
        if (!o->gguf_no_tokenizer)
            return qt_err_set(err, QT_ERR_UNSUPPORTED,
                              "%s: re-exporting a GGUF model does not carry its tokenizer over "
                              "yet; add --no-tokenizer",
                              o->base_dir);
    }
    switch (o->format) {
    case QT_EXPORT_HF:
        return export_hf(ctx, m, o, false, err);
    case QT_EXPORT_BNB_NF4:
        return export_hf(ctx, m, o, true, err);
    case QT_EXPORT_PEFT:
        return export_peft(ctx, m, o, err);
    default:
        return qt_export_gguf(ctx, m, o, err);
    }
}
