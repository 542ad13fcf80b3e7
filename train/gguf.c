/* gguf.c - see gguf.h. */
#define _POSIX_C_SOURCE 200809L
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/gguf_blocks.h"

const char *qt_ggml_type_name(uint32_t t) {
    switch (t) {
    case QT_GGML_F32:
        return "F32";
    case QT_GGML_F16:
        return "F16";
    case QT_GGML_BF16:
        return "BF16";
    case QT_GGML_Q4_0:
        return "Q4_0";
    case QT_GGML_Q4_1:
        return "Q4_1";
    case QT_GGML_Q8_0:
        return "Q8_0";
    case QT_GGML_Q4_K:
        return "Q4_K";
    case QT_GGML_Q6_K:
        return "Q6_K";
    default:
        return NULL;
    }
}

size_t qt_ggml_nbytes(uint32_t type, uint64_t n) {
    switch (type) {
    case QT_GGML_F32:
        return (size_t)n * 4;
    case QT_GGML_F16:
    case QT_GGML_BF16:
        return (size_t)n * 2;
    default:
        break;
    }
    int be = qt_gguf_block_elems((qt_gguf_type)type);
    if (be <= 0 || n % (uint64_t)be) return 0;
    return (size_t)(n / (uint64_t)be) * qt_gguf_block_bytes((qt_gguf_type)type);
}

const char *qt_gguf_vtype_name(qt_gguf_vtype t) {
    static const char *n[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                              "bool", "string", "array", "u64", "i64", "f64"};
    return t <= QT_GV_F64 ? n[t] : "?";
}

static size_t vsize(qt_gguf_vtype t) {
    switch (t) {
    case QT_GV_U8:
    case QT_GV_I8:
    case QT_GV_BOOL:
        return 1;
    case QT_GV_U16:
    case QT_GV_I16:
        return 2;
    case QT_GV_U32:
    case QT_GV_I32:
    case QT_GV_F32:
        return 4;
    case QT_GV_U64:
    case QT_GV_I64:
    case QT_GV_F64:
        return 8;
    default:
        return 0;
    }
}

/* ---- reading ---------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t len, at;
    const char *path;
    qt_err *err;
    int bad;
} cur;

static int need(cur *c, size_t n, const char *what) {
    if (c->bad) return 0;
    if (n > c->len - c->at) {
        qt_err_set(c->err, QT_ERR_FORMAT, "%s: truncated at byte %zu reading %s", c->path, c->at,
                   what);
        c->bad = 1;
        return 0;
    }
    return 1;
}

static uint64_t rd(cur *c, size_t n, const char *what) {
    if (!need(c, n, what)) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)c->p[c->at + i] << (8 * i);
    c->at += n;
    return v;
}

static char *rd_str(cur *c, const char *what) {
    uint64_t n = rd(c, 8, what);
    if (c->bad || !need(c, n, what)) return NULL;
    char *s = malloc(n + 1);
    if (!s) {
        qt_err_set(c->err, QT_ERR_MEMORY, "%s: out of memory", c->path);
        c->bad = 1;
        return NULL;
    }
    memcpy(s, c->p + c->at, n);
    s[n] = 0;
    c->at += n;
    return s;
}

static void skip_value(cur *c, qt_gguf_vtype t, const char *key) {
    if (t == QT_GV_STRING) {
        uint64_t n = rd(c, 8, key);
        if (need(c, n, key)) c->at += n;
    } else if (vsize(t)) {
        if (need(c, vsize(t), key)) c->at += vsize(t);
    } else {
        qt_err_set(c->err, QT_ERR_FORMAT, "%s: metadata '%s' has unknown value type %d", c->path,
                   key, (int)t);
        c->bad = 1;
    }
}

static void rd_scalar(cur *c, qt_gguf_kv *kv) {
    size_t s = vsize(kv->type);
    uint64_t raw = rd(c, s, kv->key);
    switch (kv->type) {
    case QT_GV_I8:
        kv->v.i = (int8_t)raw;
        break;
    case QT_GV_I16:
        kv->v.i = (int16_t)raw;
        break;
    case QT_GV_I32:
        kv->v.i = (int32_t)raw;
        break;
    case QT_GV_I64:
        kv->v.i = (int64_t)raw;
        break;
    case QT_GV_F32: {
        uint32_t u = (uint32_t)raw;
        float f;
        memcpy(&f, &u, 4);
        kv->v.f = f;
        break;
    }
    case QT_GV_F64:
        memcpy(&kv->v.f, &raw, 8);
        break;
    default:
        kv->v.u = raw;
        break;
    }
}

int qt_gguf_open(qt_gguf_file *f, const char *path, qt_err *err) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return qt_err_set(err, QT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    fstat(fd, &st);
    f->len = (size_t)st.st_size;
    f->map = f->len ? mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (f->len && f->map == MAP_FAILED) {
        f->map = NULL;
        return qt_err_set(err, QT_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    }
    cur c = {f->map, f->len, 0, path, err, 0};
    if (f->len < 4 || memcmp(f->map, "GGUF", 4)) {
        qt_gguf_close(f);
        return qt_err_set(err, QT_ERR_FORMAT, "%s: not a GGUF file (no 'GGUF' magic)", path);
    }
    c.at = 4;
    f->version = (uint32_t)rd(&c, 4, "the version");
    f->ntensors = rd(&c, 8, "the tensor count");
    f->nkv = rd(&c, 8, "the metadata count");
    if (!c.bad && (f->version < 2 || f->version > 3)) {
        qt_err_set(err, QT_ERR_UNSUPPORTED, "%s: GGUF version %u (qtune reads 2 and 3)", path,
                   f->version);
        qt_gguf_close(f);
        return QT_ERR_UNSUPPORTED;
    }
    if (!c.bad && (f->nkv > f->len / 8 || f->ntensors > f->len / 8)) {
        qt_err_set(err, QT_ERR_FORMAT,
                   "%s: implausible counts (%llu tensors, %llu keys) for a file of %zu bytes "
                   "(truncated?)",
                   path, (unsigned long long)f->ntensors, (unsigned long long)f->nkv, f->len);
        qt_gguf_close(f);
        return QT_ERR_FORMAT;
    }
    if (c.bad) {
        qt_gguf_close(f);
        return err->code;
    }
    f->kv = calloc(f->nkv ? f->nkv : 1, sizeof *f->kv);
    f->tensors = calloc(f->ntensors ? f->ntensors : 1, sizeof *f->tensors);
    f->alignment = 32;
    for (uint64_t i = 0; i < f->nkv && !c.bad; i++) {
        qt_gguf_kv *kv = &f->kv[i];
        kv->key = rd_str(&c, "a metadata key");
        if (c.bad) break;
        kv->type = (qt_gguf_vtype)rd(&c, 4, kv->key);
        kv->n = 1;
        if (kv->type == QT_GV_STRING) {
            kv->str = rd_str(&c, kv->key);
        } else if (kv->type == QT_GV_ARRAY) {
            kv->arr_type = (qt_gguf_vtype)rd(&c, 4, kv->key);
            kv->n = rd(&c, 8, kv->key);
            kv->arr = c.p + c.at;
            if (kv->arr_type == QT_GV_ARRAY) {
                qt_err_set(err, QT_ERR_FORMAT, "%s: nested arrays in '%s'", path, kv->key);
                c.bad = 1;
            }
            for (uint64_t j = 0; j < kv->n && !c.bad; j++) skip_value(&c, kv->arr_type, kv->key);
        } else if (vsize(kv->type)) {
            rd_scalar(&c, kv);
        } else {
            qt_err_set(err, QT_ERR_FORMAT, "%s: metadata '%s' has unknown value type %d", path,
                       kv->key, (int)kv->type);
            c.bad = 1;
        }
        if (!c.bad && !strcmp(kv->key, "general.alignment")) {
            if (kv->type != QT_GV_U32 || kv->v.u == 0 || (kv->v.u & (kv->v.u - 1))) {
                qt_err_set(err, QT_ERR_FORMAT, "%s: general.alignment must be a u32 power of 2",
                           path);
                c.bad = 1;
            } else {
                f->alignment = (uint32_t)kv->v.u;
            }
        }
    }
    for (uint64_t i = 0; i < f->ntensors && !c.bad; i++) {
        qt_gguf_tensor *t = &f->tensors[i];
        t->name = rd_str(&c, "a tensor name");
        t->ndim = (uint32_t)rd(&c, 4, "a tensor's n_dims");
        if (!c.bad && (t->ndim < 1 || t->ndim > 4)) {
            qt_err_set(err, QT_ERR_FORMAT, "%s: tensor '%s' has %u dims (1..4)", path, t->name,
                       t->ndim);
            c.bad = 1;
            break;
        }
        uint64_t n = 1;
        for (uint32_t d = 0; d < t->ndim; d++) n *= (t->dims[d] = rd(&c, 8, t->name));
        t->type = (uint32_t)rd(&c, 4, t->name);
        t->offset = rd(&c, 8, t->name);
        if (c.bad) break;
        if (!qt_ggml_type_name(t->type)) {
            qt_err_set(err, QT_ERR_UNSUPPORTED,
                       "%s: tensor '%s' has ggml type %u, which qtune "
                       "does not read",
                       path, t->name, t->type);
            c.bad = 1;
            break;
        }
        t->nbytes = qt_ggml_nbytes(t->type, n);
        if (!t->nbytes && n) {
            qt_err_set(err, QT_ERR_FORMAT,
                       "%s: tensor '%s': %llu elements are not whole %s "
                       "blocks",
                       path, t->name, (unsigned long long)n, qt_ggml_type_name(t->type));
            c.bad = 1;
        }
    }
    if (!c.bad) {
        size_t data0 = (c.at + f->alignment - 1) / f->alignment * f->alignment;
        for (uint64_t i = 0; i < f->ntensors; i++) {
            qt_gguf_tensor *t = &f->tensors[i];
            if (t->offset % f->alignment || data0 + t->offset > f->len ||
                t->nbytes > f->len - data0 - t->offset) {
                qt_err_set(err, QT_ERR_FORMAT,
                           "%s: tensor '%s' (%zu bytes at data offset %llu) lies outside the "
                           "file or is misaligned (truncated file?)",
                           path, t->name, t->nbytes, (unsigned long long)t->offset);
                c.bad = 1;
                break;
            }
            t->data = c.p + data0 + t->offset;
        }
    }
    if (c.bad) {
        int code = err ? err->code : QT_ERR_FORMAT;
        qt_gguf_close(f);
        return code;
    }
    return QT_OK;
}

void qt_gguf_close(qt_gguf_file *f) {
    for (uint64_t i = 0; f->kv && i < f->nkv; i++) free(f->kv[i].key), free(f->kv[i].str);
    for (uint64_t i = 0; f->tensors && i < f->ntensors; i++) free(f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    if (f->map) munmap(f->map, f->len);
    memset(f, 0, sizeof *f);
}

const qt_gguf_kv *qt_gguf_kv_find(const qt_gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->nkv; i++)
        if (f->kv[i].key && !strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const qt_gguf_tensor *qt_gguf_tensor_find(const qt_gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->ntensors; i++)
        if (f->tensors[i].name && !strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char *qt_gguf_kv_str(const qt_gguf_kv *kv, char *buf, size_t cap) {
    switch (kv->type) {
    case QT_GV_STRING:
        snprintf(buf, cap, "%s", kv->str);
        break;
    case QT_GV_ARRAY:
        snprintf(buf, cap, "[%s x %llu]", qt_gguf_vtype_name(kv->arr_type),
                 (unsigned long long)kv->n);
        break;
    case QT_GV_F32:
    case QT_GV_F64:
        snprintf(buf, cap, "%g", kv->v.f);
        break;
    case QT_GV_BOOL:
        snprintf(buf, cap, "%s", kv->v.u ? "true" : "false");
        break;
    case QT_GV_I8:
    case QT_GV_I16:
    case QT_GV_I32:
    case QT_GV_I64:
        snprintf(buf, cap, "%lld", (long long)kv->v.i);
        break;
    default:
        snprintf(buf, cap, "%llu", (unsigned long long)kv->v.u);
        break;
    }
    return buf;
}

/* ---- writing ---------------------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *v, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        QT_CHECK(p, "out of memory building a GGUF file");
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}

static void put_u32(bytes *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
}

static void put_u64(bytes *b, uint64_t v) {
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(bytes *b, const char *s) {
    size_t n = strlen(s);
    put_u64(b, n);
    put(b, s, n);
}

typedef struct {
    char *name;
    uint32_t type, ndim;
    uint64_t dims[4];
    uint8_t *data;
    size_t nbytes;
} wtensor;

struct qt_gguf_writer {
    uint32_t alignment;
    uint64_t nkv;
    bytes kv;
    wtensor *t;
    uint64_t nt, cap;
};

qt_gguf_writer *qt_gguf_writer_new(uint32_t alignment) {
    qt_gguf_writer *w = calloc(1, sizeof *w);
    QT_CHECK(w, "out of memory");
    w->alignment = alignment ? alignment : 32;
    if (w->alignment != 32) qt_gguf_set_u32(w, "general.alignment", w->alignment);
    return w;
}

void qt_gguf_writer_free(qt_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->nt; i++) free(w->t[i].name), free(w->t[i].data);
    free(w->t);
    free(w->kv.p);
    free(w);
}

static void kv_head(qt_gguf_writer *w, const char *key, qt_gguf_vtype t) {
    put_str(&w->kv, key);
    put_u32(&w->kv, t);
    w->nkv++;
}

void qt_gguf_set_u32(qt_gguf_writer *w, const char *key, uint32_t v) {
    kv_head(w, key, QT_GV_U32);
    put_u32(&w->kv, v);
}

void qt_gguf_set_i32(qt_gguf_writer *w, const char *key, int32_t v) {
    kv_head(w, key, QT_GV_I32);
    put_u32(&w->kv, (uint32_t)v);
}

void qt_gguf_set_f32(qt_gguf_writer *w, const char *key, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    kv_head(w, key, QT_GV_F32);
    put_u32(&w->kv, u);
}

void qt_gguf_set_bool(qt_gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    kv_head(w, key, QT_GV_BOOL);
    put(&w->kv, &b, 1);
}

void qt_gguf_set_str(qt_gguf_writer *w, const char *key, const char *v) {
    kv_head(w, key, QT_GV_STRING);
    put_str(&w->kv, v);
}

void qt_gguf_set_arr(qt_gguf_writer *w, const char *key, qt_gguf_vtype t, const void *v,
                     uint64_t n) {
    QT_CHECK(vsize(t) > 0, "GGUF array of %s", qt_gguf_vtype_name(t));
    kv_head(w, key, QT_GV_ARRAY);
    put_u32(&w->kv, t);
    put_u64(&w->kv, n);
    put(&w->kv, v, (size_t)n * vsize(t)); /* little-endian host */
}

void qt_gguf_set_str_arr(qt_gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    kv_head(w, key, QT_GV_ARRAY);
    put_u32(&w->kv, QT_GV_STRING);
    put_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) put_str(&w->kv, v[i]);
}

int qt_gguf_add_tensor(qt_gguf_writer *w, const char *name, uint32_t type, uint32_t ndim,
                       const uint64_t *dims, const void *data, size_t nbytes, qt_err *err) {
    uint64_t n = 1;
    for (uint32_t d = 0; d < ndim; d++) n *= dims[d];
    if (ndim < 1 || ndim > 4 || !qt_ggml_type_name(type) || qt_ggml_nbytes(type, n) != nbytes)
        return qt_err_set(err, QT_ERR_ARG, "GGUF tensor '%s': %u dims of type %u with %zu bytes",
                          name, ndim, type, nbytes);
    if (w->nt == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->t = realloc(w->t, w->cap * sizeof *w->t);
        QT_CHECK(w->t, "out of memory");
    }
    wtensor *t = &w->t[w->nt++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->type = type, t->ndim = ndim, t->nbytes = nbytes;
    memcpy(t->dims, dims, ndim * sizeof *dims);
    t->data = malloc(nbytes ? nbytes : 1);
    QT_CHECK(t->name && t->data, "out of memory");
    memcpy(t->data, data, nbytes);
    return QT_OK;
}

int qt_gguf_write(qt_gguf_writer *w, const char *path, qt_err *err) {
    bytes h = {0};
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, w->nt);
    put_u64(&h, w->nkv);
    put(&h, w->kv.p, w->kv.n);
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->nt; i++) {
        wtensor *t = &w->t[i];
        put_str(&h, t->name);
        put_u32(&h, t->ndim);
        for (uint32_t d = 0; d < t->ndim; d++) put_u64(&h, t->dims[d]);
        put_u32(&h, t->type);
        put_u64(&h, off);
        off += (t->nbytes + w->alignment - 1) / w->alignment * w->alignment;
    }
    static const uint8_t zeros[256] = {0};
    while (h.n % w->alignment) put(&h, zeros, 1);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(h.p);
        return qt_err_set(err, QT_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    }
    int bad = fwrite(h.p, 1, h.n, fp) != h.n;
    free(h.p);
    for (uint64_t i = 0; i < w->nt && !bad; i++) {
        wtensor *t = &w->t[i];
        size_t pad = (w->alignment - t->nbytes % w->alignment) % w->alignment;
        bad |= fwrite(t->data, 1, t->nbytes, fp) != t->nbytes;
        while (pad && !bad) {
            size_t k = pad < sizeof zeros ? pad : sizeof zeros;
            bad |= fwrite(zeros, 1, k, fp) != k;
            pad -= k;
        }
    }
    bad |= fflush(fp) != 0 || fsync(fileno(fp)) != 0;
    bad |= fclose(fp) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return qt_err_set(err, QT_ERR_IO, "%s: writing failed: %s", path, strerror(errno));
    }
    char *d = strdup(path);
    int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY);
    free(d);
    if (dfd >= 0) fsync(dfd), close(dfd);
    return QT_OK;
}
