/* nf4_bnb.c - bitsandbytes' serialized Linear4bit layout (see nf4_bnb.h): the six tensors and
 * the packed quant_state JSON, byte for byte as bitsandbytes writes them. */
#include "nf4_bnb.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynamic_map.h"
#include "json_min.h"

static int errf(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static const char *dtype_str(qt_nf4_dtype d) {
    /* str(torch.bfloat16).strip("torch.") */
    return d == QT_NF4_BF16 ? "bfloat16" : d == QT_NF4_F16 ? "float16" : "float32";
}

int qt_py_float_repr(double v, char *out, size_t cap) {
    if (!out || cap < 32) return QT_Q_EARG;
    if (isnan(v)) return snprintf(out, cap, "NaN");
    if (isinf(v)) return snprintf(out, cap, v < 0 ? "-Infinity" : "Infinity");
    const char *sign = signbit(v) ? "-" : "";
    if (v == 0) return snprintf(out, cap, "%s0.0", sign);
    /* the fewest significant digits that read back as the same double */
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, fabs(v));
        if (strtod(e, NULL) == fabs(v)) break;
    }
    char digits[24];
    int nd = 0;
    const char *s = e;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9') digits[nd++] = *s;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp10 = atoi(s + 1);
    int decpt = exp10 + 1; /* value = 0.digits * 10^decpt */
    char body[64];
    if (decpt <= -4 || decpt > 16) {
        /* Python: d[.ddd]e(+|-)XX, at least two exponent digits */
        snprintf(body, sizeof body, "%c%s%s", digits[0], nd > 1 ? "." : "", digits + 1);
        int x = decpt - 1;
        snprintf(body + strlen(body), sizeof body - strlen(body), "e%c%02d", x < 0 ? '-' : '+',
                 x < 0 ? -x : x);
    } else if (decpt <= 0) {
        snprintf(body, sizeof body, "0.%.*s%s", -decpt, "0000", digits);
    } else if (decpt >= nd) {
        snprintf(body, sizeof body, "%s%.*s.0", digits, decpt - nd, "0000000000000000");
    } else {
        snprintf(body, sizeof body, "%.*s.%s", decpt, digits, digits + decpt);
    }
    return snprintf(out, cap, "%s%s", sign, body);
}

int qt_nf4_bnb_quant_state_json(const qt_nf4_tensor *t, char *out, size_t cap) {
    if (!t || !out || !cap) return QT_Q_EARG;
    char shape[256] = "[";
    for (int d = 0; d < t->ndim; d++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), d ? ", %lld" : "%lld",
                 (long long)t->shape[d]);
    strcat(shape, "]");
    int n = snprintf(out, cap,
                     "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", "
                     "\"shape\": %s",
                     t->blocksize, dtype_str(t->dtype), shape);
    if (n < 0 || (size_t)n >= cap) return QT_Q_EARG;
    if (t->nested) {
        char off[64];
        /* the offset is an fp32 tensor; .item() widens it to a Python float */
        qt_py_float_repr((double)t->offset, off, sizeof off);
        n += snprintf(out + n, cap - (size_t)n,
                      ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", "
                      "\"nested_offset\": %s",
                      t->nested_blocksize, off);
        if ((size_t)n >= cap) return QT_Q_EARG;
    }
    n += snprintf(out + n, cap - (size_t)n, "}");
    if ((size_t)n >= cap) return QT_Q_EARG;
    return n;
}

int qt_nf4_bnb_pack_init(qt_nf4_bnb_pack *p, const qt_nf4_tensor *t, const char *prefix) {
    if (!p || !t || !t->data || !prefix) return QT_Q_EARG;
    memset(p, 0, sizeof(*p));
    int jl = qt_nf4_bnb_quant_state_json(t, p->json, sizeof p->json);
    if (jl < 0) return jl;
    int rc = qt_dynmap_default(p->nested_map);
    if (rc) return rc;
    static const char *const suffix[QT_BNB_MAX_ENTRIES] = {
        ".weight",
        ".weight.absmax",
        ".weight.quant_map",
        ".weight.quant_state.bitsandbytes__nf4",
        ".weight.nested_absmax",
        ".weight.nested_quant_map",
    };
    p->nentries = t->nested ? 6 : 4;
    for (int i = 0; i < p->nentries; i++) {
        int n = snprintf(p->names[i], QT_BNB_NAME_MAX, "%s%s", prefix, suffix[i]);
        if (n < 0 || n >= QT_BNB_NAME_MAX) return QT_Q_EARG;
    }
    qt_st_entry *e = p->entries;
    e[0] = (qt_st_entry){p->names[0], QT_ST_U8, 2, {(t->numel + 1) / 2, 1}, t->data};
    if (t->nested)
        e[1] = (qt_st_entry){p->names[1], QT_ST_U8, 1, {t->nblocks}, t->absmax_q};
    else
        e[1] = (qt_st_entry){p->names[1], QT_ST_F32, 1, {t->nblocks}, t->absmax};
    e[2] = (qt_st_entry){p->names[2], QT_ST_F32, 1, {16}, qt_nf4_code};
    e[3] = (qt_st_entry){p->names[3], QT_ST_U8, 1, {jl}, p->json};
    if (t->nested) {
        e[4] = (qt_st_entry){p->names[4], QT_ST_F32, 1, {t->nested_nblocks}, t->nested_absmax};
        e[5] = (qt_st_entry){p->names[5], QT_ST_F32, 1, {256}, p->nested_map};
    }
    return QT_Q_OK;
}

typedef struct {
    char quant_type[16], dtype[16], nested_dtype[16];
    int64_t blocksize, nested_blocksize;
    int ndim;
    int64_t shape[QT_NF4_MAX_DIMS];
    double nested_offset;
    int has_nested_offset, has_shape, has_blocksize, has_nested_blocksize;
} quant_state;

static int read_small_string(qt_json *j, char *dst, size_t cap) {
    char *s;
    if (qt_json_string(j, &s)) return -1;
    int bad = strlen(s) >= cap;
    if (!bad) strcpy(dst, s);
    free(s);
    return bad ? qt_json_fail(j, "string value too long") : 0;
}

static int parse_quant_state(const char *text, size_t len, quant_state *qs, char *jerr,
                             size_t jlen) {
    qt_json j;
    qt_json_init(&j, text, len, jerr, jlen);
    memset(qs, 0, sizeof(*qs));
    if (qt_json_expect(&j, '{')) return -1;
    if (qt_json_peek(&j) != '}')
        for (;;) {
            char *k;
            if (qt_json_string(&j, &k)) return -1;
            int rc = qt_json_expect(&j, ':');
            if (rc) {
            } else if (!strcmp(k, "quant_type")) {
                rc = read_small_string(&j, qs->quant_type, sizeof qs->quant_type);
            } else if (!strcmp(k, "dtype")) {
                rc = read_small_string(&j, qs->dtype, sizeof qs->dtype);
            } else if (!strcmp(k, "nested_dtype")) {
                rc = read_small_string(&j, qs->nested_dtype, sizeof qs->nested_dtype);
            } else if (!strcmp(k, "blocksize")) {
                rc = qt_json_int(&j, &qs->blocksize);
                qs->has_blocksize = 1;
            } else if (!strcmp(k, "nested_blocksize")) {
                rc = qt_json_int(&j, &qs->nested_blocksize);
                qs->has_nested_blocksize = 1;
            } else if (!strcmp(k, "nested_offset")) {
                rc = qt_json_number(&j, &qs->nested_offset);
                qs->has_nested_offset = 1;
            } else if (!strcmp(k, "shape")) {
                rc = qt_json_expect(&j, '[');
                qs->ndim = 0;
                if (!rc && qt_json_peek(&j) != ']')
                    for (;;) {
                        if (qs->ndim >= QT_NF4_MAX_DIMS) {
                            rc = qt_json_fail(&j, "shape has more than 4 dimensions");
                            break;
                        }
                        if ((rc = qt_json_int(&j, &qs->shape[qs->ndim++]))) break;
                        int r = qt_json_next(&j, ']');
                        if (r < 0) rc = -1;
                        if (r <= 0) break;
                    }
                if (!rc) j.pos++;
                qs->has_shape = 1;
            } else {
                rc = qt_json_fail(&j, "unknown quant_state key");
            }
            free(k);
            if (rc) return -1;
            int r = qt_json_next(&j, '}');
            if (r < 0) return -1;
            if (r == 0) break;
        }
    j.pos++;
    qt_json_ws(&j);
    if (j.pos != j.n) return qt_json_fail(&j, "trailing bytes after quant_state");
    return 0;
}

static const qt_st_tensor *need(const qt_st_file *f, const char *prefix, const char *suffix,
                                qt_st_dtype dt, int64_t numel, char *err, size_t errlen, int *rc) {
    char name[QT_BNB_NAME_MAX];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const qt_st_tensor *t = qt_st_find(f, name);
    if (!t) {
        *rc = errf(err, errlen, QT_Q_ENOTFOUND, "bitsandbytes weight: tensor \"%s\" is missing",
                   name);
        return NULL;
    }
    if (t->dtype != dt || (numel >= 0 && qt_st_numel(t) != numel)) {
        *rc = errf(err, errlen, QT_Q_EFORMAT,
                   "bitsandbytes weight: \"%s\" is %s with %lld elements, expected %s with %lld",
                   name, qt_st_dtype_name(t->dtype), (long long)qt_st_numel(t),
                   qt_st_dtype_name(dt), (long long)numel);
        return NULL;
    }
    return t;
}

int qt_nf4_bnb_read(qt_nf4_tensor *t, const qt_st_file *f, const char *prefix, char *err,
                    size_t errlen) {
    if (!t || !f || !prefix) return errf(err, errlen, QT_Q_EARG, "bitsandbytes weight: no args");
    memset(t, 0, sizeof(*t));
    int rc = 0;
    char name[QT_BNB_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight.quant_state.bitsandbytes__nf4", prefix);
    const qt_st_tensor *js = qt_st_find(f, name);
    if (!js) {
        snprintf(name, sizeof name, "%s.weight.quant_state.bitsandbytes__fp4", prefix);
        if (qt_st_find(f, name))
            return errf(err, errlen, QT_Q_EFORMAT,
                        "bitsandbytes weight \"%s\": FP4 is not supported, only NF4", prefix);
        return errf(err, errlen, QT_Q_ENOTFOUND,
                    "bitsandbytes weight \"%s\": no %s.weight.quant_state.bitsandbytes__nf4",
                    prefix, prefix);
    }
    if (js->dtype != QT_ST_U8)
        return errf(err, errlen, QT_Q_EFORMAT, "bitsandbytes weight \"%s\": quant_state is not U8",
                    prefix);
    quant_state qs;
    char jerr[160];
    if (parse_quant_state((const char *)js->data, (size_t)(js->end - js->begin), &qs, jerr,
                          sizeof jerr))
        return errf(err, errlen, QT_Q_EFORMAT,
                    "bitsandbytes weight \"%s\": bad quant_state JSON: %s", prefix, jerr);
    if (strcmp(qs.quant_type, "nf4"))
        return errf(err, errlen, QT_Q_EFORMAT,
                    "bitsandbytes weight \"%s\": quant_type \"%s\", expected \"nf4\"", prefix,
                    qs.quant_type);
    qt_nf4_dtype dt;
    if (!strcmp(qs.dtype, "bfloat16"))
        dt = QT_NF4_BF16;
    else if (!strcmp(qs.dtype, "float16"))
        dt = QT_NF4_F16;
    else if (!strcmp(qs.dtype, "float32"))
        dt = QT_NF4_F32;
    else
        return errf(err, errlen, QT_Q_EFORMAT, "bitsandbytes weight \"%s\": dtype \"%s\"", prefix,
                    qs.dtype);
    if (!qs.has_blocksize || !qs.has_shape || qs.ndim < 1 ||
        !qt_nf4_blocksize_ok((int)(qs.blocksize > 4096 ? 0 : qs.blocksize)))
        return errf(err, errlen, QT_Q_EFORMAT,
                    "bitsandbytes weight \"%s\": quant_state lacks a valid blocksize or shape",
                    prefix);
    int nested = qs.has_nested_offset || qs.has_nested_blocksize;
    if (nested && (!qs.has_nested_offset || qs.nested_blocksize != QT_NF4_NESTED_BLOCK ||
                   strcmp(qs.nested_dtype, "float32")))
        return errf(err, errlen, QT_Q_EFORMAT,
                    "bitsandbytes weight \"%s\": nested quant_state must have nested_blocksize "
                    "256, nested_dtype float32 and nested_offset",
                    prefix);
    rc = qt_nf4_tensor_alloc(t, dt, qs.ndim, qs.shape, (int)qs.blocksize, nested);
    if (rc)
        return errf(err, errlen, rc, "bitsandbytes weight \"%s\": bad shape or out of memory",
                    prefix);
    const qt_st_tensor *w =
        need(f, prefix, ".weight", QT_ST_U8, (t->numel + 1) / 2, err, errlen, &rc);
    const qt_st_tensor *am = w ? need(f, prefix, ".weight.absmax", nested ? QT_ST_U8 : QT_ST_F32,
                                      t->nblocks, err, errlen, &rc)
                               : NULL;
    const qt_st_tensor *qm =
        am ? need(f, prefix, ".weight.quant_map", QT_ST_F32, 16, err, errlen, &rc) : NULL;
    if (!qm) goto fail;
    if (memcmp(qm->data, qt_nf4_code, sizeof qt_nf4_code)) {
        rc = errf(err, errlen, QT_Q_EFORMAT,
                  "bitsandbytes weight \"%s\": quant_map is not the NF4 code table", prefix);
        goto fail;
    }
    memcpy(t->data, w->data, (size_t)((t->numel + 1) / 2));
    if (!nested) {
        memcpy(t->absmax, am->data, (size_t)t->nblocks * sizeof(float));
        return QT_Q_OK;
    }
    memcpy(t->absmax_q, am->data, (size_t)t->nblocks);
    const qt_st_tensor *na =
        need(f, prefix, ".weight.nested_absmax", QT_ST_F32, t->nested_nblocks, err, errlen, &rc);
    const qt_st_tensor *nm =
        na ? need(f, prefix, ".weight.nested_quant_map", QT_ST_F32, 256, err, errlen, &rc) : NULL;
    if (!nm) goto fail;
    float map[256];
    qt_dynmap_default(map);
    if (memcmp(nm->data, map, sizeof map)) {
        rc = errf(err, errlen, QT_Q_EFORMAT,
                  "bitsandbytes weight \"%s\": nested_quant_map is not the dynamic map", prefix);
        goto fail;
    }
    memcpy(t->nested_absmax, na->data, (size_t)t->nested_nblocks * sizeof(float));
    t->offset = (float)qs.nested_offset; /* torch.tensor(float(...)): fp32 */
    return QT_Q_OK;
fail:
    qt_nf4_tensor_free(t);
    return rc;
}
