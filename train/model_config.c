/* model_config.c - config.json -> qt_model_config (see model_config.h), with cJSON. */
#include "model_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/run_dir.h"

/* the whole file, or NULL with a message naming it */
static char *slurp(const char *path, qt_err *err) {
    char *text = qt_read_file(path, NULL);
    if (!text) qt_err_set(err, QT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return text;
}

int qt_model_config_load(qt_model_config *c, const char *path, qt_err *err) {
    char *text = slurp(path, err);
    if (!text) return err ? err->code : QT_ERR_IO;
    int rc = qt_model_config_parse(c, text, path, err);
    free(text);
    return rc;
}

/* An integer key: required (def < -1 means required) or defaulted. */
static int get_int(const cJSON *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                   int64_t *out, const char *where, qt_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < -1)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: missing required key '%s'", where, key);
        *out = def;
        return QT_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: key '%s' must be an integer", where, key);
    int64_t x = (int64_t)v->valuedouble;
    if (x < lo || x > hi)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: key '%s' = %lld is outside [%lld, %lld]", where,
                          key, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return QT_OK;
}

/* a token id, or a list of them (Llama 3.x Instruct's eos_token_id [128001, 128008, 128009]):
 * the first one; -1 when absent or empty */
static int get_token_id(const cJSON *o, const char *key, int64_t *out, const char *where,
                        qt_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(v)) return get_int(o, key, -1, -1, (int64_t)1 << 31, out, where, err);
    const cJSON *x = cJSON_GetArrayItem(v, 0);
    if (!x) {
        *out = -1;
        return QT_OK;
    }
    if (!cJSON_IsNumber(x) || x->valuedouble != (double)(int64_t)x->valuedouble ||
        x->valuedouble < 0 || x->valuedouble > (double)((int64_t)1 << 31))
        return qt_err_set(err, QT_ERR_FORMAT, "%s: key '%s' must hold token ids", where, key);
    *out = (int64_t)x->valuedouble;
    return QT_OK;
}

static int get_num(const cJSON *o, const char *key, double def, bool required, double *out,
                   const char *where, qt_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: missing required key '%s'", where, key);
        *out = def;
        return QT_OK;
    }
    if (!cJSON_IsNumber(v))
        return qt_err_set(err, QT_ERR_FORMAT, "%s: key '%s' must be a number", where, key);
    *out = v->valuedouble;
    return QT_OK;
}

static bool get_bool(const cJSON *o, const char *key, bool def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* rope_scaling (legacy) or rope_parameters (new): {"rope_type"|"type": ..., factors} */
static int parse_rope(qt_model_config *c, const cJSON *r, const char *key, const char *where,
                      qt_err *err) {
    if (!r || cJSON_IsNull(r)) return QT_OK;
    if (!cJSON_IsObject(r))
        return qt_err_set(err, QT_ERR_FORMAT, "%s: key '%s' must be an object", where, key);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(r, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    char sub[96];
    snprintf(sub, sizeof sub, "%s (%s)", where, key);
    double theta = c->rope_theta;
    if (get_num(r, "rope_theta", c->rope_theta, false, &theta, sub, err)) return err->code;
    c->rope_theta = theta;
    if (!strcmp(type, "default")) {
        c->rope.type = QT_ROPE_DEFAULT;
        return QT_OK;
    }
    if (strcmp(type, "llama3") != 0)
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: %s.rope_type '%s' is not supported (default, llama3)", where, key,
                          type);
    c->rope.type = QT_ROPE_LLAMA3;
    int64_t omax = 0;
    if (get_num(r, "factor", 0, true, &c->rope.factor, sub, err) ||
        get_num(r, "low_freq_factor", 0, true, &c->rope.low_freq_factor, sub, err) ||
        get_num(r, "high_freq_factor", 0, true, &c->rope.high_freq_factor, sub, err) ||
        get_int(r, "original_max_position_embeddings", -2, 1, INT64_MAX, &omax, sub, err))
        return err->code;
    c->rope.original_max_position_embeddings = omax;
    if (c->rope.factor <= 0 || c->rope.high_freq_factor <= c->rope.low_freq_factor)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: %s needs factor > 0 and high_freq_factor > low_freq_factor", where,
                          key);
    return QT_OK;
}

int qt_model_config_parse(qt_model_config *c, const char *json, const char *where, qt_err *err) {
    memset(c, 0, sizeof *c);
    cJSON *o = cJSON_Parse(json);
    if (!o || !cJSON_IsObject(o)) {
        const char *at = cJSON_GetErrorPtr();
        int line = 1;
        for (const char *p = json; at && p < at; p++) line += *p == '\n';
        cJSON_Delete(o);
        return qt_err_set(err, QT_ERR_FORMAT, "%s:%d: not a valid JSON object", where, line);
    }
    int rc = QT_OK;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    if (!cJSON_IsString(mt)) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s: missing required key 'model_type'", where);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    if (!strcmp(mt->valuestring, "llama"))
        c->arch = QT_ARCH_LLAMA;
    else if (!strcmp(mt->valuestring, "mistral"))
        c->arch = QT_ARCH_MISTRAL;
    else if (!strcmp(mt->valuestring, "qwen2"))
        c->arch = QT_ARCH_QWEN2;
    else {
        rc = qt_err_set(err, QT_ERR_UNSUPPORTED,
                        "%s: model_type '%s' is not supported (llama, mistral, qwen2)", where,
                        mt->valuestring);
        goto done;
    }
    const int64_t BIG = (int64_t)1 << 31;
    if ((rc = get_int(o, "vocab_size", -2, 1, BIG, &c->vocab, where, err)) ||
        (rc = get_int(o, "hidden_size", -2, 1, BIG, &c->hidden, where, err)) ||
        (rc = get_int(o, "intermediate_size", -2, 1, BIG, &c->ffn, where, err)) ||
        (rc = get_int(o, "num_hidden_layers", -2, 1, 4096, &c->layers, where, err)) ||
        (rc = get_int(o, "num_attention_heads", -2, 1, 4096, &c->heads, where, err)) ||
        (rc = get_int(o, "num_key_value_heads", c->heads, 1, c->heads, &c->kv_heads, where, err)) ||
        (rc = get_int(o, "head_dim", c->hidden / c->heads, 2, BIG, &c->head_dim, where, err)) ||
        (rc = get_int(o, "max_position_embeddings", 2048, 1, BIG, &c->max_pos, where, err)) ||
        (rc = get_token_id(o, "bos_token_id", &c->bos_id, where, err)) ||
        (rc = get_token_id(o, "eos_token_id", &c->eos_id, where, err)) ||
        (rc = get_num(o, "rms_norm_eps", 1e-6, false, &c->rms_eps, where, err)) ||
        (rc = get_num(o, "rope_theta", 10000.0, false, &c->rope_theta, where, err)))
        goto done;
    if (c->heads % c->kv_heads) {
        rc = qt_err_set(err, QT_ERR_FORMAT,
                        "%s: num_attention_heads (%lld) is not a multiple of "
                        "num_key_value_heads (%lld)",
                        where, (long long)c->heads, (long long)c->kv_heads);
        goto done;
    }
    if (c->head_dim % 2) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s: head_dim %lld must be even for RoPE", where,
                        (long long)c->head_dim);
        goto done;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0) {
        rc = qt_err_set(err, QT_ERR_UNSUPPORTED,
                        "%s: hidden_act '%s' is not supported (the Llama family uses silu)", where,
                        act->valuestring);
        goto done;
    }
    /* mistral's sliding window: qtune attends over whole sequences, so callers must keep
     * sequences within it (then the window changes nothing) */
    if (c->arch == QT_ARCH_MISTRAL &&
        (rc = get_int(o, "sliding_window", 0, 0, BIG, &c->sliding_window, where, err)))
        goto done;
    c->rope.type = QT_ROPE_DEFAULT;
    if ((rc = parse_rope(c, cJSON_GetObjectItemCaseSensitive(o, "rope_scaling"), "rope_scaling",
                         where, err)) ||
        (rc = parse_rope(c, cJSON_GetObjectItemCaseSensitive(o, "rope_parameters"),
                         "rope_parameters", where, err)))
        goto done;
    c->tie_embeddings = get_bool(o, "tie_word_embeddings", false);
    bool ab = get_bool(o, "attention_bias", false);
    c->qkv_bias = c->arch == QT_ARCH_QWEN2 || (c->arch == QT_ARCH_LLAMA && ab);
    c->o_bias = c->arch == QT_ARCH_LLAMA && ab;
    c->mlp_bias = c->arch == QT_ARCH_LLAMA && get_bool(o, "mlp_bias", false);
done:
    cJSON_Delete(o);
    return rc;
}
