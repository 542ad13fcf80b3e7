/* safetensors.c - the safetensors reader and writer of safetensors.h. */
#include "safetensors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_min.h"

/* the reference refuses headers above 100 MB; so do we, before allocating anything */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

static const char *const dtype_names[QT_ST_DTYPE_COUNT] = {
    "BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"};
static const int dtype_sizes[QT_ST_DTYPE_COUNT] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};

const char *qt_st_dtype_name(qt_st_dtype d) {
    return (unsigned)d < QT_ST_DTYPE_COUNT ? dtype_names[d] : "?";
}

int qt_st_dtype_size(qt_st_dtype d) {
    return (unsigned)d < QT_ST_DTYPE_COUNT ? dtype_sizes[d] : 0;
}

int qt_st_dtype_parse(const char *s, qt_st_dtype *out) {
    for (int i = 0; i < QT_ST_DTYPE_COUNT; i++)
        if (!strcmp(s, dtype_names[i])) {
            *out = (qt_st_dtype)i;
            return QT_Q_OK;
        }
    return QT_Q_EFORMAT;
}

static int errf(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int64_t qt_st_numel(const qt_st_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

void qt_st_free(qt_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->ntensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    if (!f->borrowed) free(f->buf);
    memset(f, 0, sizeof(*f));
}

const qt_st_tensor *qt_st_find(const qt_st_file *f, const char *name) {
    for (int i = 0; f && i < f->ntensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char *qt_st_meta_get(const qt_st_file *f, const char *key) {
    for (int i = 0; f && i < f->nmeta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

static int parse_metadata(qt_json *j, qt_st_file *f) {
    if (qt_json_expect(j, '{')) return -1;
    if (qt_json_peek(j) == '}') {
        j->pos++;
        return 0;
    }
    for (;;) {
        char *k = NULL, *v = NULL;
        if (qt_json_string(j, &k)) return -1;
        if (qt_json_expect(j, ':') || qt_json_peek(j) != '"') {
            free(k);
            return qt_json_fail(j, "__metadata__ values must be strings");
        }
        if (qt_json_string(j, &v)) {
            free(k);
            return -1;
        }
        qt_st_kv *m = realloc(f->meta, (size_t)(f->nmeta + 1) * sizeof(*m));
        if (!m) {
            free(k);
            free(v);
            return qt_json_fail(j, "out of memory");
        }
        f->meta = m;
        f->meta[f->nmeta].key = k;
        f->meta[f->nmeta].value = v;
        f->nmeta++;
        int r = qt_json_next(j, '}');
        if (r < 0) return -1;
        if (r == 0) break;
    }
    j->pos++;
    return 0;
}

static int parse_shape(qt_json *j, qt_st_tensor *t) {
    if (qt_json_expect(j, '[')) return -1;
    t->ndim = 0;
    if (qt_json_peek(j) != ']')
        for (;;) {
            int64_t v;
            if (t->ndim >= QT_ST_MAX_DIMS) return qt_json_fail(j, "too many dimensions");
            if (qt_json_int(j, &v)) return -1;
            if (v < 0) return qt_json_fail(j, "negative dimension");
            t->shape[t->ndim++] = v;
            int r = qt_json_next(j, ']');
            if (r < 0) return -1;
            if (r == 0) break;
        }
    j->pos++;
    return 0;
}

static int parse_tensor_info(qt_json *j, qt_st_tensor *t) {
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    if (qt_json_expect(j, '{')) return -1;
    if (qt_json_peek(j) != '}')
        for (;;) {
            char *k = NULL;
            if (qt_json_string(j, &k)) return -1;
            if (qt_json_expect(j, ':')) {
                free(k);
                return -1;
            }
            int rc = 0;
            if (!strcmp(k, "dtype")) {
                char *v = NULL;
                rc = qt_json_string(j, &v);
                if (!rc && qt_st_dtype_parse(v, &t->dtype)) rc = qt_json_fail(j, "unknown dtype");
                free(v);
                have_dtype = 1;
            } else if (!strcmp(k, "shape")) {
                rc = parse_shape(j, t);
                have_shape = 1;
            } else if (!strcmp(k, "data_offsets")) {
                int64_t b = -1, e = -1;
                rc = qt_json_expect(j, '[');
                if (!rc) rc = qt_json_int(j, &b);
                if (!rc) rc = qt_json_expect(j, ',');
                if (!rc) rc = qt_json_int(j, &e);
                if (!rc) rc = qt_json_expect(j, ']');
                if (!rc && (b < 0 || e < b)) rc = qt_json_fail(j, "bad data_offsets");
                t->begin = (uint64_t)b;
                t->end = (uint64_t)e;
                have_offsets = 1;
            } else {
                rc = qt_json_fail(j, "unknown key in tensor entry");
            }
            free(k);
            if (rc) return -1;
            int r = qt_json_next(j, '}');
            if (r < 0) return -1;
            if (r == 0) break;
        }
    j->pos++;
    if (!have_dtype || !have_shape || !have_offsets)
        return qt_json_fail(j, "tensor entry lacks dtype, shape or data_offsets");
    return 0;
}

static int cmp_begin(const void *a, const void *b) {
    const qt_st_tensor *x = *(const qt_st_tensor *const *)a, *y = *(const qt_st_tensor *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

/* every tensor's byte range must match its shape, lie inside the data section, and the
 * ranges must tile the section without overlaps or holes, as the reference requires */
static int check_ranges(qt_st_file *f, const uint8_t *data, uint64_t data_len, char *err,
                        size_t errlen) {
    for (int i = 0; i < f->ntensors; i++) {
        qt_st_tensor *t = &f->tensors[i];
        uint64_t n = (uint64_t)qt_st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] && n > UINT64_MAX / (uint64_t)t->shape[d])
                return errf(err, errlen, QT_Q_EFORMAT,
                            "safetensors: tensor \"%s\": shape overflows", t->name);
            n *= (uint64_t)t->shape[d];
        }
        if (t->end - t->begin != n)
            return errf(err, errlen, QT_Q_EFORMAT,
                        "safetensors: tensor \"%s\": data_offsets [%llu, %llu] hold %llu bytes "
                        "but %s of its shape needs %llu",
                        t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                        (unsigned long long)(t->end - t->begin), qt_st_dtype_name(t->dtype),
                        (unsigned long long)n);
        if (t->end > data_len)
            return errf(err, errlen, QT_Q_EFORMAT,
                        "safetensors: truncated: tensor \"%s\" ends at data byte %llu but the "
                        "data section has %llu bytes",
                        t->name, (unsigned long long)t->end, (unsigned long long)data_len);
        t->data = data + t->begin;
    }
    if (f->ntensors <= 0) {
        if (data_len)
            return errf(err, errlen, QT_Q_EFORMAT, "safetensors: %llu data bytes but no tensors",
                        (unsigned long long)data_len);
        return QT_Q_OK;
    }
    qt_st_tensor **order = malloc((size_t)f->ntensors * sizeof(*order));
    if (!order) return errf(err, errlen, QT_Q_ENOMEM, "safetensors: out of memory");
    for (int i = 0; i < f->ntensors; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->ntensors, sizeof(*order), cmp_begin);
    uint64_t at = 0;
    int rc = QT_Q_OK;
    for (int i = 0; i < f->ntensors && !rc; i++) {
        if (order[i]->begin != at)
            rc = errf(err, errlen, QT_Q_EFORMAT,
                      "safetensors: tensor \"%s\" starts at data byte %llu, expected %llu (%s)",
                      order[i]->name, (unsigned long long)order[i]->begin, (unsigned long long)at,
                      order[i]->begin < at ? "overlaps another" : "leaves a hole");
        at = order[i]->end;
    }
    free(order);
    if (!rc && at != data_len)
        rc = errf(err, errlen, QT_Q_EFORMAT, "safetensors: %llu bytes after the last tensor's data",
                  (unsigned long long)(data_len - at));
    return rc;
}

static int st_parse(qt_st_file *f, const void *buf, size_t len, int copy, char *err, size_t errlen);

int qt_st_load_buffer(qt_st_file *f, const void *buf, size_t len, char *err, size_t errlen) {
    return st_parse(f, buf, len, 1, err, errlen);
}

int qt_st_load_view(qt_st_file *f, const void *buf, size_t len, char *err, size_t errlen) {
    return st_parse(f, buf, len, 0, err, errlen);
}

static int st_parse(qt_st_file *f, const void *buf, size_t len, int copy, char *err,
                    size_t errlen) {
    if (!f || (!buf && len)) return errf(err, errlen, QT_Q_EARG, "safetensors: no buffer");
    memset(f, 0, sizeof(*f));
    if (len < 8)
        return errf(err, errlen, QT_Q_EFORMAT,
                    "safetensors: truncated: %zu bytes, not even the 8-byte header length", len);
    const uint8_t *p = buf;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | p[i];
    if (hl > ST_MAX_HEADER)
        return errf(err, errlen, QT_Q_EFORMAT,
                    "safetensors: header length %llu is over the 100 MB limit (not a "
                    "safetensors file?)",
                    (unsigned long long)hl);
    if (hl > len - 8)
        return errf(err, errlen, QT_Q_EFORMAT,
                    "safetensors: truncated: header says %llu JSON bytes but only %zu follow",
                    (unsigned long long)hl, len - 8);
    if (hl < 2 || p[8] != '{')
        return errf(err, errlen, QT_Q_EFORMAT, "safetensors: header is not a JSON object");
    if (copy) {
        f->buf = malloc(len);
        if (!f->buf) return errf(err, errlen, QT_Q_ENOMEM, "safetensors: out of memory");
        memcpy(f->buf, buf, len);
    } else { /* the caller keeps buf alive (e.g. a memory map) until qt_st_free */
        f->buf = (uint8_t *)(uintptr_t)buf;
        f->borrowed = 1;
    }
    f->len = len;
    f->header_len = hl;

    char jerr[160] = "";
    qt_json j;
    qt_json_init(&j, (const char *)f->buf + 8, (size_t)hl, jerr, sizeof jerr);
    int seen_meta = 0, rc;
    if (qt_json_expect(&j, '{')) goto bad_json;
    if (qt_json_peek(&j) != '}')
        for (;;) {
            char *name = NULL;
            if (qt_json_string(&j, &name)) goto bad_json;
            if (qt_json_expect(&j, ':')) {
                free(name);
                goto bad_json;
            }
            if (!strcmp(name, "__metadata__")) {
                free(name);
                if (seen_meta++) {
                    qt_json_fail(&j, "second __metadata__");
                    goto bad_json;
                }
                if (parse_metadata(&j, f)) goto bad_json;
            } else {
                if (qt_st_find(f, name)) {
                    rc = errf(err, errlen, QT_Q_EFORMAT, "safetensors: tensor \"%s\" appears twice",
                              name);
                    free(name);
                    goto fail;
                }
                qt_st_tensor *t = realloc(f->tensors, (size_t)(f->ntensors + 1) * sizeof(*t));
                if (!t) {
                    free(name);
                    rc = errf(err, errlen, QT_Q_ENOMEM, "safetensors: out of memory");
                    goto fail;
                }
                f->tensors = t;
                t = &f->tensors[f->ntensors++];
                memset(t, 0, sizeof(*t));
                t->name = name;
                if (parse_tensor_info(&j, t)) {
                    rc = errf(err, errlen, QT_Q_EFORMAT,
                              "safetensors: malformed header, tensor \"%s\": %s", t->name, jerr);
                    goto fail;
                }
            }
            int r = qt_json_next(&j, '}');
            if (r < 0) goto bad_json;
            if (r == 0) break;
        }
    j.pos++;
    qt_json_ws(&j);
    if (j.pos != j.n) {
        qt_json_fail(&j, "trailing bytes after the header object");
        goto bad_json;
    }
    rc = check_ranges(f, f->buf + 8 + hl, len - 8 - hl, err, errlen);
    if (rc) goto fail;
    return QT_Q_OK;

bad_json:
    rc = errf(err, errlen, QT_Q_EFORMAT, "safetensors: malformed header: %s", jerr);
fail:
    qt_st_free(f);
    return rc;
}

int qt_st_load_file(qt_st_file *f, const char *path, char *err, size_t errlen) {
    if (!f || !path) return errf(err, errlen, QT_Q_EARG, "safetensors: no path");
    memset(f, 0, sizeof(*f));
    FILE *fp = fopen(path, "rb");
    if (!fp) return errf(err, errlen, QT_Q_EIO, "%s: cannot open for reading", path);
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : (size_t)1 << 16;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(fp);
                return errf(err, errlen, QT_Q_ENOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) break;
    }
    int ioerr = ferror(fp);
    fclose(fp);
    if (ioerr) {
        free(buf);
        return errf(err, errlen, QT_Q_EIO, "%s: read error", path);
    }
    char inner[400] = "";
    int rc = qt_st_load_buffer(f, buf, len, inner, sizeof inner);
    free(buf);
    if (rc) return errf(err, errlen, rc, "%s: %s", path, inner);
    return QT_Q_OK;
}

/* ---- writer ------------------------------------------------------------------------------ */

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

static void sb_quoted(sbuf *b, const char *s) {
    size_t need = qt_json_quote(s, NULL, 0);
    char *tmp = malloc(need + 1);
    if (!tmp) {
        b->oom = 1;
        return;
    }
    qt_json_quote(s, tmp, need + 1);
    sb_put(b, tmp, need);
    free(tmp);
}

/* the reference's order: dtype descending, then name */
static int cmp_entry(const void *a, const void *b) {
    const qt_st_entry *x = *(const qt_st_entry *const *)a, *y = *(const qt_st_entry *const *)b;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

static uint64_t entry_bytes(const qt_st_entry *e) {
    uint64_t n = (uint64_t)qt_st_dtype_size(e->dtype);
    for (int d = 0; d < e->ndim; d++) n *= (uint64_t)e->shape[d];
    return n;
}

static int check_entries(const qt_st_entry *entries, int n, char *err, size_t errlen) {
    for (int i = 0; i < n; i++) {
        const qt_st_entry *e = &entries[i];
        if (!e->name || !*e->name || !strcmp(e->name, "__metadata__"))
            return errf(err, errlen, QT_Q_EARG, "safetensors: entry %d has no usable name", i);
        if ((unsigned)e->dtype >= QT_ST_DTYPE_COUNT || e->ndim < 0 || e->ndim > QT_ST_MAX_DIMS)
            return errf(err, errlen, QT_Q_EARG, "safetensors: \"%s\": bad dtype or rank", e->name);
        for (int d = 0; d < e->ndim; d++)
            if (e->shape[d] < 0)
                return errf(err, errlen, QT_Q_EARG, "safetensors: \"%s\": negative dimension",
                            e->name);
        if (!e->data && entry_bytes(e))
            return errf(err, errlen, QT_Q_EARG, "safetensors: \"%s\": no data", e->name);
        for (int k = 0; k < i; k++)
            if (!strcmp(entries[k].name, e->name))
                return errf(err, errlen, QT_Q_EARG, "safetensors: \"%s\" given twice", e->name);
    }
    return QT_Q_OK;
}

int qt_st_serialize(const qt_st_entry *entries, int n, const qt_st_kv *meta, int nmeta,
                    uint8_t **out, size_t *outlen, char *err, size_t errlen) {
    if (!out || !outlen || n < 0 || (n && !entries) || nmeta < 0 || (nmeta && !meta))
        return errf(err, errlen, QT_Q_EARG, "safetensors: bad arguments");
    *out = NULL;
    *outlen = 0;
    int rc = check_entries(entries, n, err, errlen);
    if (rc) return rc;
    const qt_st_entry **order = malloc((size_t)(n ? n : 1) * sizeof(*order));
    if (!order) return errf(err, errlen, QT_Q_ENOMEM, "safetensors: out of memory");
    for (int i = 0; i < n; i++) order[i] = &entries[i];
    qsort(order, (size_t)n, sizeof(*order), cmp_entry);

    /* compact JSON, as serde_json writes it */
    sbuf h = {0};
    sb_str(&h, "{");
    int first = 1;
    if (meta) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < nmeta; i++) {
            if (i) sb_str(&h, ",");
            sb_quoted(&h, meta[i].key ? meta[i].key : "");
            sb_str(&h, ":");
            sb_quoted(&h, meta[i].value ? meta[i].value : "");
        }
        sb_str(&h, "}");
        first = 0;
    }
    uint64_t off = 0;
    char num[64];
    for (int i = 0; i < n; i++) {
        const qt_st_entry *e = order[i];
        if (!first) sb_str(&h, ",");
        first = 0;
        sb_quoted(&h, e->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, qt_st_dtype_name(e->dtype));
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)e->shape[d]);
            sb_str(&h, num);
        }
        uint64_t nb = entry_bytes(e);
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + nb));
        sb_str(&h, num);
        off += nb;
    }
    sb_str(&h, "}");
    /* the data section starts 8-byte aligned */
    while (!h.oom && h.n % 8) sb_str(&h, " ");
    uint8_t *buf = h.oom ? NULL : malloc(8 + h.n + (size_t)off);
    if (!buf) {
        free(h.s);
        free(order);
        return errf(err, errlen, QT_Q_ENOMEM, "safetensors: out of memory");
    }
    uint64_t hl = h.n;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, h.s, h.n);
    size_t at = 8 + h.n;
    for (int i = 0; i < n; i++) {
        uint64_t nb = entry_bytes(order[i]);
        if (nb) memcpy(buf + at, order[i]->data, (size_t)nb);
        at += (size_t)nb;
    }
    free(h.s);
    free(order);
    *out = buf;
    *outlen = at;
    return QT_Q_OK;
}

int qt_st_save_file(const char *path, const qt_st_entry *entries, int n, const qt_st_kv *meta,
                    int nmeta, char *err, size_t errlen) {
    if (!path) return errf(err, errlen, QT_Q_EARG, "safetensors: no path");
    uint8_t *buf;
    size_t len;
    char inner[300] = "";
    int rc = qt_st_serialize(entries, n, meta, nmeta, &buf, &len, inner, sizeof inner);
    if (rc) return errf(err, errlen, rc, "%s: %s", path, inner);
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) {
        free(buf);
        return errf(err, errlen, QT_Q_ENOMEM, "%s: out of memory", path);
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(buf);
        rc = errf(err, errlen, QT_Q_EIO, "%s: cannot open for writing", tmp);
        free(tmp);
        return rc;
    }
    int bad = fwrite(buf, 1, len, fp) != len;
    bad |= fflush(fp) != 0;
    bad |= fclose(fp) != 0;
    free(buf);
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        rc = errf(err, errlen, QT_Q_EIO, "%s: write failed", path);
        free(tmp);
        return rc;
    }
    free(tmp);
    return QT_Q_OK;
}
