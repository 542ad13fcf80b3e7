/* hf_model.c - see hf_model.h. */
#define _POSIX_C_SOURCE 200809L
#include "hf_model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/rope.h"
#include "quant/half.h"
#include "quant/nf4.h"
#include "quant/safetensors.h"
#include "train/checkpoint.h"
#include "train/run_dir.h"

qt_model_opts qt_model_opts_default(void) {
    qt_model_opts o = {.mode = QT_MODE_LORA,
                       .lora_r = 8,
                       .lora_alpha = 16,
                       .lora_dropout = 0.0,
                       .lora_targets = QT_PROJ_ALL,
                       .nf4_blocksize = 64,
                       .nf4_double_quant = true,
                       .checkpoint = true,
                       .compute = QT_F32,
                       .seed = 42};
    return o;
}

static const char *proj_names[7] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                    "gate_proj", "up_proj", "down_proj"};

unsigned qt_proj_parse(const char *name) {
    if (!strcmp(name, "all-linear") || !strcmp(name, "all_linear")) return QT_PROJ_ALL;
    for (int i = 0; i < 7; i++)
        if (!strcmp(name, proj_names[i])) return 1u << i;
    return 0;
}

const char *qt_proj_name(unsigned bit) {
    for (int i = 0; i < 7; i++)
        if (bit == 1u << i) return proj_names[i];
    return "?";
}

/* ---- the weight files ------------------------------------------------------------------- */

typedef struct {
    char dir[1024];
    int nfiles;
    qt_st_file *files;
    char **fnames;
    void **maps; /* each file memory-mapped read-only: weights are read once, in place */
    size_t *map_len;
    cJSON *index; /* model.safetensors.index.json, or NULL when unsharded */
    const cJSON *weight_map;
    const qt_weight_source *ext; /* tensors from elsewhere (a GGUF file), or NULL */
} st_source;

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static int src_add_file(st_source *s, const char *fname, qt_err *err) {
    for (int i = 0; i < s->nfiles; i++)
        if (!strcmp(s->fnames[i], fname)) return QT_OK;
    char path[2048], msg[512];
    snprintf(path, sizeof path, "%s/%s", s->dir, fname);
    int n = s->nfiles;
    s->files = realloc(s->files, (size_t)(n + 1) * sizeof *s->files);
    s->fnames = realloc(s->fnames, (size_t)(n + 1) * sizeof *s->fnames);
    s->maps = realloc(s->maps, (size_t)(n + 1) * sizeof *s->maps);
    s->map_len = realloc(s->map_len, (size_t)(n + 1) * sizeof *s->map_len);
    if (!s->files || !s->fnames || !s->maps || !s->map_len)
        return qt_err_set(err, QT_ERR_MEMORY, "out of memory opening %s", path);
    memset(&s->files[n], 0, sizeof s->files[0]);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return qt_err_set(err, QT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return qt_err_set(err, QT_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    size_t len = (size_t)st.st_size;
    void *map = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (len && map == MAP_FAILED)
        return qt_err_set(err, QT_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    if (qt_st_load_view(&s->files[n], map, len, msg, sizeof msg) != 0) {
        if (map) munmap(map, len);
        return qt_err_set(err, QT_ERR_FORMAT, "%s: %s", path, msg);
    }
    s->maps[n] = map;
    s->map_len[n] = len;
    s->fnames[n] = strdup(fname);
    s->nfiles = n + 1;
    return QT_OK;
}

static int src_open(st_source *s, const char *dir, qt_err *err) {
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    char path[2048];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (file_exists(path)) {
        char *text = qt_read_file(path, NULL);
        if (!text) return qt_err_set(err, QT_ERR_IO, "%s: cannot read", path);
        s->index = cJSON_Parse(text);
        free(text);
        s->weight_map = s->index ? cJSON_GetObjectItemCaseSensitive(s->index, "weight_map") : NULL;
        if (!cJSON_IsObject(s->weight_map))
            return qt_err_set(err, QT_ERR_FORMAT, "%s: no 'weight_map' object", path);
        const cJSON *e;
        cJSON_ArrayForEach(e, s->weight_map) {
            if (!cJSON_IsString(e))
                return qt_err_set(err, QT_ERR_FORMAT, "%s: weight_map['%s'] is not a file name",
                                  path, e->string);
            int rc = src_add_file(s, e->valuestring, err);
            if (rc) return rc;
        }
        return QT_OK;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!file_exists(path))
        return qt_err_set(err, QT_ERR_IO,
                          "%s: no model.safetensors or model.safetensors.index.json", dir);
    return src_add_file(s, "model.safetensors", err);
}

static void src_close(st_source *s) {
    for (int i = 0; i < s->nfiles; i++) {
        qt_st_free(&s->files[i]);
        if (s->maps[i]) munmap(s->maps[i], s->map_len[i]);
        free(s->fnames[i]);
    }
    free(s->files);
    free(s->fnames);
    free(s->maps);
    free(s->map_len);
    cJSON_Delete(s->index);
    memset(s, 0, sizeof *s);
}

/* the shape check of src_find: `file` and `implied_by` name both sides in the message */
static bool same_shape(const qt_st_tensor *t, const char *file, const char *shown, int ndim,
                       const int64_t *shape, const char *implied_by, qt_err *err) {
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (same) return true;
    char got[128] = "", want[128] = "";
    for (int d = 0; d < t->ndim; d++)
        snprintf(got + strlen(got), sizeof got - strlen(got), d ? ", %lld" : "%lld",
                 (long long)t->shape[d]);
    for (int d = 0; d < ndim; d++)
        snprintf(want + strlen(want), sizeof want - strlen(want), d ? ", %lld" : "%lld",
                 (long long)shape[d]);
    qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' has shape [%s], %s implies [%s]", file, shown,
               got, implied_by, want);
    return false;
}

/* an external source's tensor: names there are few (a few hundred), a scan is enough */
static const qt_st_tensor *ext_find(st_source *s, const char *name, int ndim, const int64_t *shape,
                                    int *fi, qt_err *err) {
    const qt_weight_source *x = s->ext;
    for (int i = 0; i < x->ntensors; i++) {
        const qt_st_tensor *t = &x->tensors[i];
        if (strcmp(t->name, name) != 0) continue;
        *fi = i;
        const char *shown = x->file_names ? x->file_names[i] : name;
        return same_shape(t, x->where, shown, ndim, shape, x->implied_by, err) ? t : NULL;
    }
    qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' is missing", x->where, name);
    return NULL;
}

/* Finds `name`, checks dtype and shape; *fi = the file it is in. */
static const qt_st_tensor *src_find(st_source *s, const char *name, int ndim, const int64_t *shape,
                                    int *fi, qt_err *err) {
    if (s->ext) return ext_find(s, name, ndim, shape, fi, err);
    int lo = 0, hi = s->nfiles;
    if (s->weight_map) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(s->weight_map, name);
        if (!cJSON_IsString(e)) {
            qt_err_set(err, QT_ERR_FORMAT,
                       "%s/model.safetensors.index.json: tensor '%s' is missing from weight_map",
                       s->dir, name);
            return NULL;
        }
        for (int i = 0; i < s->nfiles; i++)
            if (!strcmp(s->fnames[i], e->valuestring)) lo = i, hi = i + 1;
    }
    for (int i = lo; i < hi; i++) {
        const qt_st_tensor *t = qt_st_find(&s->files[i], name);
        if (!t) continue;
        *fi = i;
        if (t->dtype != QT_ST_F32 && t->dtype != QT_ST_BF16 && t->dtype != QT_ST_F16) {
            qt_err_set(err, QT_ERR_FORMAT, "%s/%s: tensor '%s' is %s (expected BF16, F16 or F32)",
                       s->dir, s->fnames[i], name, qt_st_dtype_name(t->dtype));
            return NULL;
        }
        char file[2200];
        snprintf(file, sizeof file, "%s/%s", s->dir, s->fnames[i]);
        return same_shape(t, file, name, ndim, shape, "config.json", err) ? t : NULL;
    }
    qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' is missing from the model files", s->dir, name);
    return NULL;
}

/* the tensor's values as f32 (malloc'd) */
static float *st_to_f32(const qt_st_tensor *t) {
    int64_t n = qt_st_numel(t);
    float *out = malloc((size_t)(n ? n : 1) * sizeof *out);
    if (!out) return NULL;
    if (t->dtype == QT_ST_F32) {
        memcpy(out, t->data, (size_t)n * 4);
    } else {
        const uint8_t *p = t->data;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
            out[i] = t->dtype == QT_ST_BF16 ? qt_bf16_to_f32(h) : qt_f16_to_f32(h);
        }
    }
    return out;
}

/* tensor fi's values as f32 (malloc'd; NULL with err set): converted from the file's dtype, or
 * fetched from the external source */
static float *src_f32(st_source *s, const qt_st_tensor *t, int fi, qt_err *err) {
    if (!s->ext) {
        float *v = st_to_f32(t);
        if (!v) qt_err_set(err, QT_ERR_MEMORY, "out of memory loading '%s'", t->name);
        return v;
    }
    int64_t n = qt_st_numel(t);
    float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v) {
        qt_err_set(err, QT_ERR_MEMORY, "out of memory loading '%s'", t->name);
        return NULL;
    }
    if (s->ext->fetch(s->ext->user, fi, v, err) != 0) {
        free(v);
        return NULL;
    }
    return v;
}

/* A weight as a persistent tensor: trainable ones in f32 (they are the optimizer's masters;
 * the forward casts them to the compute dtype), frozen ones in `frozen` (the compute dtype,
 * so a frozen bf16 base costs 2 B/param on the GPU, rounded to nearest even from the file). */
static qt_tensor *load_weight(qt_ctx *ctx, st_source *s, const char *name, int ndim,
                              const int64_t *shape, bool trainable, qt_dtype frozen, qt_err *err) {
    int fi;
    const qt_st_tensor *t = src_find(s, name, ndim, shape, &fi, err);
    if (!t) return NULL;
    float *v = src_f32(s, t, fi, err);
    if (!v) return NULL;
    qt_dtype dt = trainable ? QT_F32 : frozen;
    qt_tensor *p = qt_param_new(ctx, dt, ndim, shape, trainable, name);
    if (dt == QT_F32) {
        qt_tensor_upload(ctx, p, v);
    } else { /* narrow in place: the bf16/f16 halves fit in the f32 buffer's front */
        QT_CHECK(dt == QT_BF16 || dt == QT_F16, "frozen weights are f32, bf16 or f16");
        uint16_t *h = (uint16_t *)v;
        for (int64_t i = 0, n = qt_st_numel(t); i < n; i++)
            h[i] = dt == QT_BF16 ? qt_f32_to_bf16(v[i]) : qt_f32_to_f16(v[i]);
        qt_tensor_upload(ctx, p, h);
    }
    free(v);
    return p;
}

/* a linear weight as NF4 + double quant, quantized from the file's own dtype as bitsandbytes
 * does when transformers loads a model with load_in_4bit */
static int load_nf4(qt_ctx *ctx, st_source *s, const char *name, qt_linear *l,
                    const qt_model_opts *o, qt_err *err) {
    int fi;
    int64_t shape[2] = {l->out, l->in};
    const qt_st_tensor *t = src_find(s, name, 2, shape, &fi, err);
    if (!t) return err->code;
    qt_nf4_dtype dt = t->dtype == QT_ST_BF16  ? QT_NF4_BF16
                      : t->dtype == QT_ST_F16 ? QT_NF4_F16
                                              : QT_NF4_F32;
    const void *data = t->data;
    float *ext = NULL; /* an external source's values, f32 */
    if (s->ext) {
        if (!(ext = src_f32(s, t, fi, err))) return err->code;
        data = ext, dt = QT_NF4_F32;
    }
    qt_nf4_tensor q;
    int qrc = qt_nf4_tensor_quantize(&q, data, dt, 2, shape, o->nf4_blocksize, o->nf4_double_quant);
    free(ext);
    if (qrc != 0)
        return qt_err_set(err, QT_ERR_ARG, "NF4 quantization of '%s' failed (block size %d)", name,
                          o->nf4_blocksize);
    qt_nf4_weight *w = &l->nf4;
    char nm[96];
    int64_t nc = (q.numel + 1) / 2, nb = q.nblocks;
    w->out = l->out, w->in = l->in, w->blocksize = q.blocksize, w->dtype = dt;
    snprintf(nm, sizeof nm, "%.80s.nf4", name);
    w->codes = qt_param_new(ctx, QT_U8, 1, &nc, false, nm);
    qt_tensor_upload(ctx, w->codes, q.data);
    if (q.nested) {
        int64_t nn = q.nested_nblocks;
        snprintf(nm, sizeof nm, "%.80s.absmax_q", name);
        w->absmax_q = qt_param_new(ctx, QT_U8, 1, &nb, false, nm);
        qt_tensor_upload(ctx, w->absmax_q, q.absmax_q);
        snprintf(nm, sizeof nm, "%.80s.nested_absmax", name);
        w->nested_absmax = qt_param_new(ctx, QT_F32, 1, &nn, false, nm);
        qt_tensor_upload(ctx, w->nested_absmax, q.nested_absmax);
        w->offset = q.offset;
    } else {
        snprintf(nm, sizeof nm, "%.80s.absmax", name);
        w->absmax = qt_param_new(ctx, QT_F32, 1, &nb, false, nm);
        qt_tensor_upload(ctx, w->absmax, q.absmax);
    }
    qt_nf4_tensor_free(&q);
    l->is_nf4 = true;
    return QT_OK;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* PEFT's init: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0 */
static void lora_init(qt_ctx *ctx, qt_linear *l, const qt_model_opts *o, uint64_t *rng) {
    int64_t r = o->lora_r;
    char nm[96];
    snprintf(nm, sizeof nm, "%.70s.lora_A", l->name);
    l->lora_a = qt_param_new(ctx, QT_F32, 2, (int64_t[]){r, l->in}, true, nm);
    snprintf(nm, sizeof nm, "%.70s.lora_B", l->name);
    l->lora_b = qt_param_new(ctx, QT_F32, 2, (int64_t[]){l->out, r}, true, nm);
    float *a = malloc((size_t)(r * l->in) * sizeof *a);
    double bound = 1.0 / sqrt((double)l->in);
    for (int64_t i = 0; i < r * l->in; i++)
        a[i] = (float)((2.0 * ((rng_next(rng) >> 11) * (1.0 / 9007199254740992.0)) - 1.0) * bound);
    qt_tensor_upload(ctx, l->lora_a, a);
    free(a);
    l->lora_scale = (float)(o->rslora ? o->lora_alpha / sqrt((double)r) : o->lora_alpha / r);
    l->lora_dropout = (float)o->lora_dropout;
}

/* LSQ's learned step sizes start where dynamic quantization would put them (absmax / Qp per
 * group; min/max for asymmetric), so training starts from the dynamic format's numerics */
static int lsq_init(qt_ctx *ctx, qt_linear *l, const char *prefix, int proj, qt_err *err) {
    const qt_fq_format *f = l->wq;
    int64_t shape[2] = {l->out, l->in}, n = l->out * l->in;
    if (qt_fq_check(f, 2, shape) != 0)
        return qt_err_set(err, QT_ERR_ARG, "%s.%s: QAT format cannot quantize [%lld, %lld]", prefix,
                          proj_names[proj], (long long)l->out, (long long)l->in);
    int64_t ns = qt_fq_num_scales(f, 2, shape);
    float *w = malloc((size_t)n * sizeof *w), *y = malloc((size_t)n * sizeof *y);
    float *sc = malloc((size_t)ns * sizeof *sc), *of = malloc((size_t)ns * sizeof *of);
    if (!w || !y || !sc || !of) {
        free(w), free(y), free(sc), free(of);
        return qt_err_set(err, QT_ERR_MEMORY, "out of memory");
    }
    qt_tensor_download(ctx, l->w, w);
    qt_fq_format dyn = *f;
    dyn.scale_mode = QT_FQ_DYNAMIC;
    qt_fq_forward(&dyn, w, 2, shape, sc, of, y, NULL);
    for (int64_t i = 0; i < ns; i++)
        if (!(sc[i] > 0)) sc[i] = 1e-8f; /* an all-zero group: any positive step */
    char nm[96];
    snprintf(nm, sizeof nm, "%.70s.wq_scale", l->name);
    l->wq_scale = qt_param_new(ctx, QT_F32, 1, &ns, true, nm);
    qt_tensor_upload(ctx, l->wq_scale, sc);
    if (!f->symmetric) {
        snprintf(nm, sizeof nm, "%.70s.wq_offset", l->name);
        l->wq_offset = qt_param_new(ctx, QT_F32, 1, &ns, true, nm);
        qt_tensor_upload(ctx, l->wq_offset, of);
    }
    free(w), free(y), free(sc), free(of);
    return QT_OK;
}

static void add_train(qt_llama *m, qt_tensor *t, bool decay) {
    m->train = realloc(m->train, (size_t)(m->n_train + 1) * sizeof *m->train);
    m->train_decay = realloc(m->train_decay, (size_t)(m->n_train + 1) * sizeof *m->train_decay);
    m->train[m->n_train] = t;
    m->train_decay[m->n_train++] = decay;
}

static int load_linear(qt_ctx *ctx, qt_llama *m, st_source *s, qt_linear *l, const char *prefix,
                       int proj, int64_t out, int64_t in, bool bias, const qt_model_opts *o,
                       uint64_t *rng, qt_err *err) {
    char name[160];
    l->out = out, l->in = in;
    snprintf(l->name, sizeof l->name, "%s.%s", prefix + strlen("model."), proj_names[proj]);
    snprintf(name, sizeof name, "%s.%s.weight", prefix, proj_names[proj]);
    bool full = (o->mode == QT_MODE_FULL || (o->mode == QT_MODE_QAT && !o->qat_lora)) && !o->frozen;
    bool lora = o->mode != QT_MODE_FULL && !full && (o->lora_targets & (1u << proj));
    if (o->mode == QT_MODE_QLORA) {
        int rc = load_nf4(ctx, s, name, l, o, err);
        if (rc) return rc;
    } else {
        /* QAT fake-quantizes the f32 weight (the merged one with LoRA): kept in f32 */
        qt_dtype frozen = o->mode == QT_MODE_QAT ? QT_F32 : o->compute;
        l->w = load_weight(ctx, s, name, 2, (int64_t[]){out, in}, full, frozen, err);
        if (!l->w) return err->code;
        if (full) add_train(m, l->w, true);
    }
    if (bias) {
        snprintf(name, sizeof name, "%s.%s.bias", prefix, proj_names[proj]);
        l->bias = load_weight(ctx, s, name, 1, &out, full, o->compute, err);
        if (!l->bias) return err->code;
        if (full) add_train(m, l->bias, false);
    }
    if (o->mode == QT_MODE_QAT) {
        l->wq = &m->qat_w; /* the model's own copies: o may not outlive it */
        l->aq = o->qat_act ? &m->qat_a : NULL;
        if (l->wq->kind == QT_FQ_INT && l->wq->scale_mode == QT_FQ_LEARNED) {
            int rc = lsq_init(ctx, l, prefix, proj, err);
            if (rc) return rc;
            add_train(m, l->wq_scale, false);
            if (l->wq_offset) add_train(m, l->wq_offset, false);
        }
    }
    if (lora) {
        lora_init(ctx, l, o, rng);
        add_train(m, l->lora_a, true);
        add_train(m, l->lora_b, true);
    }
    return QT_OK;
}

/* the options' own consistency, before any tensor is read */
static int check_opts(const qt_model_opts *o, qt_err *err) {
    QT_CHECK(!o->frozen || o->mode == QT_MODE_FULL, "frozen applies to mode full only");
    if (o->mode != QT_MODE_FULL && !(o->mode == QT_MODE_QAT && !o->qat_lora) &&
        (o->lora_r < 1 || o->lora_targets == 0))
        return qt_err_set(err, QT_ERR_ARG, "LoRA needs lora_r >= 1 and at least one target");
    if (o->mode == QT_MODE_QAT && !o->qat_weight)
        return qt_err_set(err, QT_ERR_ARG, "QAT needs a weight format");
    if (o->mode == QT_MODE_QAT && o->qat_lora && o->lora_dropout > 0)
        return qt_err_set(err, QT_ERR_ARG,
                          "lora_dropout %g cannot apply with QAT on LoRA: the merged weight "
                          "W + (alpha/r)·B·A is what gets quantized; set lora_dropout: 0",
                          o->lora_dropout);
    return QT_OK;
}

/* Builds the model from s (m->cfg and m->identity already set) and closes s. */
static int build(qt_ctx *ctx, qt_llama *m, st_source *s, const qt_model_opts *o, qt_err *err) {
    const qt_model_config *c = &m->cfg;
    int rc;
    if (o->qat_weight) m->qat_w = *o->qat_weight;
    if (o->qat_act) m->qat_a = *o->qat_act;
    bool full = (o->mode == QT_MODE_FULL || (o->mode == QT_MODE_QAT && !o->qat_lora)) && !o->frozen;
    uint64_t rng = o->seed;
    int64_t D = c->hidden, V = c->vocab, hd = c->head_dim;
    m->checkpoint = o->checkpoint;
    m->dtype = o->compute;
    m->embed = load_weight(ctx, s, "model.embed_tokens.weight", 2, (int64_t[]){V, D}, full,
                           o->compute, err);
    if (!m->embed) goto fail;
    if (full) add_train(m, m->embed, true);
    m->layer = calloc((size_t)c->layers, sizeof *m->layer);
    for (int64_t i = 0; i < c->layers; i++) {
        qt_llama_layer *L = &m->layer[i];
        char pre[96], name[160];
        snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)i);
        if (!(L->in_norm = load_weight(ctx, s, name, 1, &D, full, o->compute, err))) goto fail;
        snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight",
                 (long long)i);
        if (!(L->post_norm = load_weight(ctx, s, name, 1, &D, full, o->compute, err))) goto fail;
        if (full) add_train(m, L->in_norm, false), add_train(m, L->post_norm, false);
        snprintf(pre, sizeof pre, "model.layers.%lld.self_attn", (long long)i);
        if ((rc = load_linear(ctx, m, s, &L->q, pre, 0, c->heads * hd, D, c->qkv_bias, o, &rng,
                              err)) ||
            (rc = load_linear(ctx, m, s, &L->k, pre, 1, c->kv_heads * hd, D, c->qkv_bias, o, &rng,
                              err)) ||
            (rc = load_linear(ctx, m, s, &L->v, pre, 2, c->kv_heads * hd, D, c->qkv_bias, o, &rng,
                              err)) ||
            (rc = load_linear(ctx, m, s, &L->o, pre, 3, D, c->heads * hd, c->o_bias, o, &rng, err)))
            goto fail;
        snprintf(pre, sizeof pre, "model.layers.%lld.mlp", (long long)i);
        if ((rc = load_linear(ctx, m, s, &L->gate, pre, 4, c->ffn, D, c->mlp_bias, o, &rng, err)) ||
            (rc = load_linear(ctx, m, s, &L->up, pre, 5, c->ffn, D, c->mlp_bias, o, &rng, err)) ||
            (rc = load_linear(ctx, m, s, &L->down, pre, 6, D, c->ffn, c->mlp_bias, o, &rng, err)))
            goto fail;
    }
    m->norm = load_weight(ctx, s, "model.norm.weight", 1, &D, full, o->compute, err);
    if (!m->norm) goto fail;
    if (full) add_train(m, m->norm, false);
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else {
        m->lm_head =
            load_weight(ctx, s, "lm_head.weight", 2, (int64_t[]){V, D}, full, o->compute, err);
        if (!m->lm_head) goto fail;
        if (full) add_train(m, m->lm_head, true);
    }
    float *invf = malloc((size_t)(hd / 2) * sizeof *invf);
    qt_rope_inv_freq(invf, (int)hd, c->rope_theta,
                     c->rope.type == QT_ROPE_DEFAULT ? NULL : &c->rope);
    m->inv_freq = qt_param_new(ctx, QT_F32, 1, (int64_t[]){hd / 2}, false, "inv_freq");
    qt_tensor_upload(ctx, m->inv_freq, invf);
    free(invf);
    src_close(s);
    return QT_OK;
fail:
    src_close(s);
    qt_llama_free(m);
    return err && err->code ? err->code : QT_ERR_FORMAT;
}

int qt_llama_load(qt_ctx *ctx, qt_llama *m, const char *dir, const qt_model_opts *o, qt_err *err) {
    memset(m, 0, sizeof *m);
    char path[2048];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = qt_model_config_load(&m->cfg, path, err);
    if (rc) return rc;
    if ((rc = check_opts(o, err))) return rc;
    st_source s;
    rc = src_open(&s, dir, err);
    if (rc) {
        src_close(&s);
        return rc;
    }
    { /* the base model's identity: its config and its tensor index, not its path */
        char *text = qt_read_file(path, NULL);
        uint64_t h = qt_fnv1a(QT_FNV_OFFSET, text ? text : "", text ? strlen(text) : 0);
        free(text);
        uint64_t sum = 0; /* a sum of per-tensor hashes: re-sharding keeps the identity */
        for (int i = 0; i < s.nfiles; i++)
            for (int j = 0; j < s.files[i].ntensors; j++) {
                const qt_st_tensor *t = &s.files[i].tensors[j];
                uint64_t th = qt_fnv1a(QT_FNV_OFFSET, t->name, strlen(t->name) + 1);
                th = qt_fnv1a(th, &t->dtype, sizeof t->dtype);
                sum += qt_fnv1a(th, t->shape, sizeof t->shape[0] * (size_t)t->ndim);
            }
        h = qt_fnv1a(h, &sum, sizeof sum);
        snprintf(m->identity, sizeof m->identity, "%016llx", (unsigned long long)h);
    }
    return build(ctx, m, &s, o, err);
}

int qt_llama_load_from(qt_ctx *ctx, qt_llama *m, const qt_model_config *cfg,
                       const qt_weight_source *src, const char *identity, const qt_model_opts *o,
                       qt_err *err) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    int rc = check_opts(o, err);
    if (rc) return rc;
    snprintf(m->identity, sizeof m->identity, "%s", identity);
    st_source s;
    memset(&s, 0, sizeof s);
    snprintf(s.dir, sizeof s.dir, "%s", src->where);
    s.ext = src;
    return build(ctx, m, &s, o, err);
}

void qt_llama_free(qt_llama *m) {
    free(m->layer);
    free(m->train);
    free(m->train_decay);
    m->layer = NULL, m->train = NULL, m->train_decay = NULL;
    m->n_train = 0;
}

int qt_llama_trainable(qt_llama *m, qt_tensor ***params, bool **decay) {
    *params = m->train;
    *decay = m->train_decay;
    return m->n_train;
}

qt_linear *qt_llama_find_linear(qt_llama *m, const char *name) {
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        qt_llama_layer *L = &m->layer[i];
        qt_linear *ls[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++)
            if (!strcmp(ls[j]->name, name)) return ls[j];
    }
    return NULL;
}
