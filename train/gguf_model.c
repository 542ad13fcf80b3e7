/* gguf_model.c - a qt_llama from a GGUF file: the inverse of what train/export_gguf.c writes.
 *   config   general.architecture llama (llama and mistral export as llama) or qwen2; the
 *            {arch}.* counts, attention.key_length (else hidden / heads), rope.freq_base,
 *            attention.layer_norm_rms_epsilon, context_length; the vocabulary size from
 *            token_embd.weight (the token list must agree); tied embeddings when output.weight
 *            is absent; biases where the tensors are; bos / eos from tokenizer.ggml.*_token_id.
 *            f32 values become the shortest decimal that rounds to them (1e-05, not
 *            9.99999975e-06), which is what config.json said for any value written by qtune.
 *   rope     rope_freqs.weight (llama3 scaling): the parameters whose factors the exporter
 *            (qt_gguf_llama3_rope_factors) regenerates bit for bit, searched among the values
 *            models use; when none does, the frequencies are the file's own, θ-frequencies
 *            divided by the factors, as llama.cpp computes them.
 *   tensors  F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, dequantized one tensor at a time when
 *            hf_model.c's loader asks for it (qt_llama_load_from), under its Hugging Face name,
 *            the Q/K rows and biases of llama un-permuted.
 * The tokenizer is in gguf_tok.c. */
#define _POSIX_C_SOURCE 200809L
#include "gguf_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/gguf_blocks.h"
#include "quant/half.h"
#include "train/checkpoint.h"
#include "train/export.h"
#include "train/gguf.h"

bool qt_gguf_is_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char magic[4];
    bool yes = fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    fclose(f);
    return yes;
}

/* ---- metadata ------------------------------------------------------------------------------ */

/* the shortest decimal that rounds to x in f32, as a double: config.json's 1e-05 comes back
 * as 1e-05 after its f32 trip through the file */
static double shortest_double(float x) {
    char buf[64];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)x);
        if (strtof(buf, NULL) == x) return strtod(buf, NULL);
    }
    return (double)x;
}

/* an integer key of any integer type; required unless def >= 0 */
static int meta_int(const qt_gguf_file *f, const char *key, int64_t def, int64_t lo, int64_t hi,
                    int64_t *out, qt_err *err) {
    const qt_gguf_kv *kv = qt_gguf_kv_find(f, key);
    if (!kv) {
        if (def < 0)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is missing", f->path, key);
        *out = def;
        return QT_OK;
    }
    int64_t x;
    switch (kv->type) {
    case QT_GV_U8:
    case QT_GV_U16:
    case QT_GV_U32:
    case QT_GV_U64:
        x = kv->v.u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)kv->v.u;
        break;
    case QT_GV_I8:
    case QT_GV_I16:
    case QT_GV_I32:
    case QT_GV_I64:
        x = kv->v.i;
        break;
    default:
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is a %s, not an integer", f->path,
                          key, qt_gguf_vtype_name(kv->type));
    }
    if (x < lo || x > hi)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' = %lld is outside [%lld, %lld]",
                          f->path, key, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return QT_OK;
}

/* a floating-point key (f32 or f64); required unless has_def */
static int meta_num(const qt_gguf_file *f, const char *key, bool has_def, double def, double *out,
                    qt_err *err) {
    const qt_gguf_kv *kv = qt_gguf_kv_find(f, key);
    if (!kv) {
        if (!has_def)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is missing", f->path, key);
        *out = def;
        return QT_OK;
    }
    if (kv->type == QT_GV_F32)
        *out = shortest_double((float)kv->v.f);
    else if (kv->type == QT_GV_F64)
        *out = kv->v.f;
    else
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' is a %s, not a float", f->path,
                          key, qt_gguf_vtype_name(kv->type));
    if (!isfinite(*out) || *out <= 0)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' = %g must be positive", f->path,
                          key, *out);
    return QT_OK;
}

static int check_2d(const qt_gguf_file *f, const qt_gguf_tensor *t, uint64_t d0, qt_err *err) {
    if (t->ndim != 2 || t->dims[0] != d0)
        return qt_err_set(
            err, QT_ERR_FORMAT, "%s: tensor '%s' has %u dims [%llu, ...], expected [%llu, vocab]",
            f->path, t->name, t->ndim, (unsigned long long)t->dims[0], (unsigned long long)d0);
    return QT_OK;
}

/* the model's shape from the metadata and a few tensors' presence and shapes */
static int read_config(const qt_gguf_file *f, qt_model_config *c, qt_err *err) {
    memset(c, 0, sizeof *c);
    const qt_gguf_kv *a = qt_gguf_kv_find(f, "general.architecture");
    if (!a || a->type != QT_GV_STRING)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: metadata 'general.architecture' is %s", f->path,
                          a ? "not a string" : "missing (not a model file?)");
    const char *arch = a->str;
    if (!strcmp(arch, "llama"))
        c->arch = QT_ARCH_LLAMA;
    else if (!strcmp(arch, "qwen2"))
        c->arch = QT_ARCH_QWEN2;
    else
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: general.architecture '%s' is not supported (llama, qwen2)", f->path,
                          arch);
    snprintf(c->model_type, sizeof c->model_type, "%s", arch);
    char key[160];
#define K(k) (snprintf(key, sizeof key, "%s." k, arch), key)
    const int64_t BIG = (int64_t)1 << 31;
    int rc;
    if ((rc = meta_int(f, K("block_count"), -1, 1, 4096, &c->layers, err)) ||
        (rc = meta_int(f, K("embedding_length"), -1, 1, BIG, &c->hidden, err)) ||
        (rc = meta_int(f, K("feed_forward_length"), -1, 1, BIG, &c->ffn, err)) ||
        (rc = meta_int(f, K("attention.head_count"), -1, 1, 4096, &c->heads, err)) ||
        (rc =
             meta_int(f, K("attention.head_count_kv"), c->heads, 1, c->heads, &c->kv_heads, err)) ||
        (rc = meta_int(f, K("attention.key_length"), c->hidden / c->heads, 2, BIG, &c->head_dim,
                       err)) ||
        (rc = meta_int(f, K("context_length"), 2048, 1, BIG, &c->max_pos, err)) ||
        (rc = meta_num(f, K("attention.layer_norm_rms_epsilon"), false, 0, &c->rms_eps, err)) ||
        (rc = meta_num(f, K("rope.freq_base"), true, 10000.0, &c->rope_theta, err)))
        return rc;
    int64_t vl, rd;
    if ((rc = meta_int(f, K("attention.value_length"), c->head_dim, 1, BIG, &vl, err)) ||
        (rc = meta_int(f, K("rope.dimension_count"), c->head_dim, 1, BIG, &rd, err)))
        return rc;
    if (vl != c->head_dim)
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: %s = %lld differs from the key length %lld (qtune's attention "
                          "has one head_dim)",
                          f->path, K("attention.value_length"), (long long)vl,
                          (long long)c->head_dim);
    if (rd != c->head_dim)
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: %s = %lld: RoPE over part of a head of %lld is not supported",
                          f->path, K("rope.dimension_count"), (long long)rd,
                          (long long)c->head_dim);
    const qt_gguf_kv *st = qt_gguf_kv_find(f, K("rope.scaling.type"));
    if (st && !(st->type == QT_GV_STRING && !strcmp(st->str, "none")))
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: %s is not supported (qtune reads llama3 scaling as rope_freqs)",
                          f->path, K("rope.scaling.type"));
    if (c->heads % c->kv_heads)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: attention.head_count %lld is not a multiple of head_count_kv %lld",
                          f->path, (long long)c->heads, (long long)c->kv_heads);
    if (c->head_dim % 2)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: head dimension %lld must be even for RoPE",
                          f->path, (long long)c->head_dim);

    const qt_gguf_tensor *e = qt_gguf_tensor_find(f, "token_embd.weight");
    if (!e)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: tensor 'token_embd.weight' is missing", f->path);
    if ((rc = check_2d(f, e, (uint64_t)c->hidden, err))) return rc;
    c->vocab = (int64_t)e->dims[1];
    int64_t v;
    if ((rc = meta_int(f, K("vocab_size"), c->vocab, 1, BIG, &v, err))) return rc;
#undef K
    if (v != c->vocab)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: %s.vocab_size %lld, token_embd.weight has %lld rows", f->path, arch,
                          (long long)v, (long long)c->vocab);
    const qt_gguf_kv *tok = qt_gguf_kv_find(f, "tokenizer.ggml.tokens");
    if (tok && tok->n != (uint64_t)c->vocab)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: tokenizer.ggml.tokens has %llu tokens, token_embd.weight %lld rows",
                          f->path, (unsigned long long)tok->n, (long long)c->vocab);
    const qt_gguf_tensor *out = qt_gguf_tensor_find(f, "output.weight");
    c->tie_embeddings = out == NULL;
    if (out && (rc = check_2d(f, out, (uint64_t)c->hidden, err))) return rc;
    c->qkv_bias = c->arch == QT_ARCH_QWEN2 || qt_gguf_tensor_find(f, "blk.0.attn_q.bias");
    c->o_bias = qt_gguf_tensor_find(f, "blk.0.attn_output.bias") != NULL;
    c->mlp_bias = qt_gguf_tensor_find(f, "blk.0.ffn_gate.bias") != NULL;
    c->rope.type = QT_ROPE_DEFAULT;
    c->bos_id = c->eos_id = -1;
    if ((rc = meta_int(f, "tokenizer.ggml.bos_token_id", (int64_t)BIG, 0, BIG, &c->bos_id, err)) ||
        (rc = meta_int(f, "tokenizer.ggml.eos_token_id", (int64_t)BIG, 0, BIG, &c->eos_id, err)))
        return rc;
    if (c->bos_id == BIG) c->bos_id = -1;
    if (c->eos_id == BIG) c->eos_id = -1;
    return QT_OK;
}

/* ---- rope scaling -------------------------------------------------------------------------- */

/* llama3 scaling whose rope_freqs the exporter regenerates bit for bit, among common values
 * (low_freq_factor, high_freq_factor, original context): the factors depend only on the two
 * wavelength bounds and the smoothing line, so several parameter sets can give the same ones;
 * the first found is as good as the original for the forward. false when none matches. */
static bool find_llama3(qt_model_config *c, const float *fac) {
    int64_t h = c->head_dim / 2;
    float factor = 0;
    for (int64_t i = 0; i < h; i++) factor = fmaxf(factor, fac[i]);
    if (!(factor > 1)) return false;
    static const double lows[] = {1, 0.5, 2, 0.25}, highs[] = {4, 2, 8, 3, 16, 32};
    float *tmp = malloc((size_t)h * sizeof *tmp);
    if (!tmp) return false;
    qt_model_config t = *c;
    t.rope.type = QT_ROPE_LLAMA3;
    t.rope.factor = shortest_double(factor);
    bool found = false;
    for (size_t a = 0; a < sizeof lows / sizeof *lows && !found; a++)
        for (size_t b = 0; b < sizeof highs / sizeof *highs && !found; b++) {
            if (highs[b] <= lows[a]) continue;
            t.rope.low_freq_factor = lows[a], t.rope.high_freq_factor = highs[b];
            /* original contexts: powers of two, then multiples of 1024 up to 256k */
            for (int64_t k = 1; k <= 22 + 256 && !found; k++) {
                int64_t old = k <= 22 ? (int64_t)1 << k : (k - 22) * 1024;
                if (k > 22 && !(old & (old - 1))) continue;
                t.rope.original_max_position_embeddings = old;
                qt_gguf_llama3_rope_factors(tmp, &t);
                found = !memcmp(tmp, fac, (size_t)h * sizeof *tmp);
            }
        }
    free(tmp);
    if (found) c->rope = t.rope;
    return found;
}

/* ---- tensors --------------------------------------------------------------------------------- */

typedef struct {
    const qt_gguf_file *f;
    const qt_gguf_tensor **t; /* [n], the file's tensor behind each Hugging Face one */
    int64_t *perm;            /* [n], heads of the Q/K permutation to undo, or 0 */
    qt_st_tensor *idx;        /* [n] Hugging Face names and shapes */
    const char **gname;       /* [n] the names in the file */
    int n;
} gg_src;

static const char *GLOBAL_NAMES[3][2] = {{"token_embd.weight", "model.embed_tokens.weight"},
                                         {"output_norm.weight", "model.norm.weight"},
                                         {"output.weight", "lm_head.weight"}};

/* per block: GGUF suffix, Hugging Face suffix, permutation (1: heads, 2: kv heads) */
static const struct {
    const char *g, *h;
    int perm;
} LAYER_NAMES[] = {{"attn_norm.weight", "input_layernorm.weight", 0},
                   {"ffn_norm.weight", "post_attention_layernorm.weight", 0},
                   {"attn_q.weight", "self_attn.q_proj.weight", 1},
                   {"attn_q.bias", "self_attn.q_proj.bias", 1},
                   {"attn_k.weight", "self_attn.k_proj.weight", 2},
                   {"attn_k.bias", "self_attn.k_proj.bias", 2},
                   {"attn_v.weight", "self_attn.v_proj.weight", 0},
                   {"attn_v.bias", "self_attn.v_proj.bias", 0},
                   {"attn_output.weight", "self_attn.o_proj.weight", 0},
                   {"attn_output.bias", "self_attn.o_proj.bias", 0},
                   {"ffn_gate.weight", "mlp.gate_proj.weight", 0},
                   {"ffn_gate.bias", "mlp.gate_proj.bias", 0},
                   {"ffn_up.weight", "mlp.up_proj.weight", 0},
                   {"ffn_up.bias", "mlp.up_proj.bias", 0},
                   {"ffn_down.weight", "mlp.down_proj.weight", 0},
                   {"ffn_down.bias", "mlp.down_proj.bias", 0}};
enum { N_LAYER_NAMES = sizeof LAYER_NAMES / sizeof *LAYER_NAMES };

/* The Hugging Face name of GGUF tensor g (into out) and its permutation; -1: a name qtune
 * does not know, -2: a block beyond block_count. */
static int hf_name(const char *g, int64_t layers, char *out, size_t cap, int *perm) {
    *perm = 0;
    for (int k = 0; k < 3; k++)
        if (!strcmp(g, GLOBAL_NAMES[k][0])) {
            snprintf(out, cap, "%s", GLOBAL_NAMES[k][1]);
            return 0;
        }
    if (strncmp(g, "blk.", 4) || g[4] < '0' || g[4] > '9') return -1;
    char *end;
    long long i = strtoll(g + 4, &end, 10);
    if (*end != '.') return -1;
    for (int k = 0; k < N_LAYER_NAMES; k++)
        if (!strcmp(end + 1, LAYER_NAMES[k].g)) {
            if (i >= layers) return -2;
            snprintf(out, cap, "model.layers.%lld.%s", i, LAYER_NAMES[k].h);
            *perm = LAYER_NAMES[k].perm;
            return 0;
        }
    return -1;
}

/* undoes LlamaModel.permute: within each head, file row 2i + j is Hugging Face row
 * j·hd/2 + i */
static int unpermute_rows(float *x, int64_t rows, int64_t cols, int64_t nhead) {
    int64_t hd = rows / nhead, half = hd / 2;
    if (hd * nhead != rows || half * 2 != hd) return -1;
    float *tmp = malloc((size_t)(hd * cols) * sizeof *tmp);
    if (!tmp) return -1;
    for (int64_t h = 0; h < nhead; h++) {
        float *head = x + h * hd * cols;
        for (int64_t i = 0; i < half; i++)
            for (int64_t j = 0; j < 2; j++)
                memcpy(tmp + (j * half + i) * cols, head + (2 * i + j) * cols,
                       (size_t)cols * sizeof *tmp);
        memcpy(head, tmp, (size_t)(hd * cols) * sizeof *tmp);
    }
    free(tmp);
    return 0;
}

/* a GGUF tensor's values as f32, in its own row-major layout (= Hugging Face's) */
static int dequantize(const qt_gguf_file *f, const qt_gguf_tensor *t, float *out, qt_err *err) {
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->ndim; d++) n *= t->dims[d];
    int64_t cols = (int64_t)t->dims[0], rows = cols ? (int64_t)(n / (uint64_t)cols) : 0;
    const uint8_t *p = t->data;
    switch (t->type) {
    case QT_GGML_F32:
        memcpy(out, p, (size_t)n * 4);
        return QT_OK;
    case QT_GGML_F16:
    case QT_GGML_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
            out[i] = t->type == QT_GGML_F16 ? qt_f16_to_f32(h) : qt_bf16_to_f32(h);
        }
        return QT_OK;
    default:
        break;
    }
    size_t rb = qt_ggml_nbytes(t->type, (uint64_t)cols);
    if (!rb || qt_gguf_block_elems((qt_gguf_type)t->type) <= 0)
        return qt_err_set(err, QT_ERR_UNSUPPORTED, "%s: tensor '%s': rows of %lld as %s", f->path,
                          t->name, (long long)cols, qt_ggml_type_name(t->type));
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
    for (int64_t r = 0; r < rows; r++)
        bad |= qt_gguf_dequantize_row((qt_gguf_type)t->type, p + (size_t)r * rb, out + r * cols,
                                      cols) != 0;
    if (bad)
        return qt_err_set(err, QT_ERR_UNSUPPORTED, "%s: tensor '%s': %s cannot be dequantized",
                          f->path, t->name, qt_ggml_type_name(t->type));
    return QT_OK;
}

static int fetch(void *user, int i, float *out, qt_err *err) {
    gg_src *s = user;
    int rc = dequantize(s->f, s->t[i], out, err);
    if (rc || !s->perm[i]) return rc;
    const qt_st_tensor *x = &s->idx[i];
    int64_t rows = x->shape[0], cols = x->ndim == 2 ? x->shape[1] : 1;
    if (unpermute_rows(out, rows, cols, s->perm[i]) != 0)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: tensor '%s': %lld rows do not split into %lld heads", s->f->path,
                          s->gname[i], (long long)rows, (long long)s->perm[i]);
    return QT_OK;
}

static void src_free(gg_src *s) {
    for (int i = 0; i < s->n; i++) free(s->idx[i].name);
    free(s->t), free(s->perm), free(s->idx), free(s->gname);
    memset(s, 0, sizeof *s);
}

/* every tensor of the file under its Hugging Face name; unknown names are refused, so that a
 * model with parts qtune lacks (another architecture's norms, say) never loads half-right */
static int index_tensors(const qt_gguf_file *f, const qt_model_config *c, gg_src *s, qt_err *err) {
    size_t n = (size_t)f->ntensors;
    s->f = f;
    s->t = calloc(n + 1, sizeof *s->t);
    s->perm = calloc(n + 1, sizeof *s->perm);
    s->idx = calloc(n + 1, sizeof *s->idx);
    s->gname = calloc(n + 1, sizeof *s->gname);
    if (!s->t || !s->perm || !s->idx || !s->gname)
        return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < f->ntensors; i++) {
        const qt_gguf_tensor *t = &f->tensors[i];
        if (!strcmp(t->name, "rope_freqs.weight")) continue;
        char name[160];
        int perm;
        int r = hf_name(t->name, c->layers, name, sizeof name, &perm);
        if (r == -2)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' is beyond block_count %lld",
                              f->path, t->name, (long long)c->layers);
        if (r)
            return qt_err_set(err, QT_ERR_UNSUPPORTED,
                              "%s: tensor '%s' is not part of a %s model as qtune knows it",
                              f->path, t->name, c->model_type);
        int nd = (int)t->ndim;
        while (nd > 1 && t->dims[nd - 1] == 1 && nd > 2) nd--; /* trailing unit dims */
        if (nd > 2)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' has %u dims", f->path, t->name,
                              t->ndim);
        qt_st_tensor *x = &s->idx[s->n];
        x->name = strdup(name);
        if (!x->name) return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", f->path);
        x->dtype = QT_ST_F32, x->ndim = nd;
        x->shape[0] = (int64_t)t->dims[nd - 1]; /* ggml dims are innermost first */
        if (nd == 2) x->shape[1] = (int64_t)t->dims[0];
        s->t[s->n] = t;
        s->gname[s->n] = t->name;
        s->perm[s->n] = c->arch == QT_ARCH_QWEN2 ? 0
                        : perm == 1              ? c->heads
                        : perm == 2              ? c->kv_heads
                                                 : 0;
        s->n++;
    }
    /* what the loader will ask for, by the file's names (its own message has the HF names) */
    const char *need[] = {
        "attn_norm.weight", "ffn_norm.weight",    "attn_q.weight",   "attn_k.weight",
        "attn_v.weight",    "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
        "ffn_down.weight",  "attn_q.bias",        "attn_k.bias",     "attn_v.bias",
        "attn_output.bias", "ffn_gate.bias",      "ffn_up.bias",     "ffn_down.bias"};
    bool want[16] = {1,         1,           1,           1,           1,           1,
                     1,         1,           1,           c->qkv_bias, c->qkv_bias, c->qkv_bias,
                     c->o_bias, c->mlp_bias, c->mlp_bias, c->mlp_bias};
    if (!qt_gguf_tensor_find(f, "output_norm.weight"))
        return qt_err_set(err, QT_ERR_FORMAT, "%s: tensor 'output_norm.weight' is missing",
                          f->path);
    for (int64_t l = 0; l < c->layers; l++)
        for (int k = 0; k < 16; k++) {
            char name[96];
            snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, need[k]);
            if (want[k] && !qt_gguf_tensor_find(f, name))
                return qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' is missing", f->path, name);
        }
    return QT_OK;
}

int qt_llama_load_gguf(qt_ctx *ctx, qt_llama *m, const char *path, const qt_model_opts *o,
                       qt_err *err) {
    memset(m, 0, sizeof *m);
    qt_gguf_file f;
    int rc = qt_gguf_open(&f, path, err);
    if (rc) return rc;
    qt_model_config c;
    gg_src s;
    memset(&s, 0, sizeof s);
    float *inv = NULL; /* the file's own frequencies, when no llama3 parameters reproduce them */
    if ((rc = read_config(&f, &c, err)) || (rc = index_tensors(&f, &c, &s, err))) goto done;
    const qt_gguf_tensor *rf = qt_gguf_tensor_find(&f, "rope_freqs.weight");
    if (rf) {
        int64_t h = c.head_dim / 2;
        if (rf->ndim != 1 || rf->dims[0] != (uint64_t)h) {
            rc = qt_err_set(err, QT_ERR_FORMAT,
                            "%s: tensor 'rope_freqs.weight' has %llu values, the head dimension "
                            "%lld implies %lld",
                            path, (unsigned long long)rf->dims[0], (long long)c.head_dim,
                            (long long)h);
            goto done;
        }
        float *fac = malloc((size_t)h * sizeof *fac);
        inv = malloc((size_t)h * sizeof *inv);
        if (!fac || !inv) {
            free(fac);
            rc = qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", path);
            goto done;
        }
        rc = dequantize(&f, rf, fac, err);
        for (int64_t i = 0; !rc && i < h; i++)
            if (!(fac[i] > 0) || !isfinite(fac[i]))
                rc = qt_err_set(err, QT_ERR_FORMAT, "%s: rope_freqs.weight[%lld] = %g", path,
                                (long long)i, (double)fac[i]);
        if (!rc && find_llama3(&c, fac)) {
            free(inv);
            inv = NULL;
        } else if (!rc) { /* llama.cpp's reading: each angle divided by its factor */
            qt_rope_inv_freq(inv, (int)c.head_dim, c.rope_theta, NULL);
            for (int64_t i = 0; i < h; i++) inv[i] /= fac[i];
        }
        free(fac);
        if (rc) goto done;
    }
    { /* identity: the header (metadata and tensor index) hashed */
        size_t hdr = f.len;
        if (f.ntensors)
            hdr = (size_t)(f.tensors[0].data - (const uint8_t *)f.map) - f.tensors[0].offset;
        uint64_t h = qt_fnv1a(QT_FNV_OFFSET, f.map, hdr);
        char id[17];
        snprintf(id, sizeof id, "%016llx", (unsigned long long)h);
        qt_weight_source src = {.where = path,
                                .implied_by = "the GGUF metadata",
                                .tensors = s.idx,
                                .file_names = s.gname,
                                .ntensors = s.n,
                                .fetch = fetch,
                                .user = &s};
        rc = qt_llama_load_from(ctx, m, &c, &src, id, o, err);
    }
    if (!rc && inv) qt_tensor_upload(ctx, m->inv_freq, inv);
done:
    free(inv);
    src_free(&s);
    qt_gguf_close(&f);
    return rc;
}
