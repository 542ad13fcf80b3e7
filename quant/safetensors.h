/* safetensors.h - a complete, dependency-free safetensors reader and writer.
 * File: 8-byte little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
 *  "data_offsets": [begin, end]}, ...}, then the data section (offsets are relative to it).
 * The reader validates everything (truncation, overlaps, sizes vs shapes, duplicate names) and
 * reports the first problem in words. The writer lays tensors out as the reference
 * implementation does (sorted by dtype descending, then name; header padded with spaces to a
 * multiple of 8), so equal inputs give equal bytes. Tensor data is stored little-endian as in
 * host memory: quant/ targets little-endian hosts only. */
#ifndef QT_SAFETENSORS_H
#define QT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "qerr.h"

enum { QT_ST_MAX_DIMS = 8 };

/* in the order of the reference's Dtype enum, which decides the writer's layout */
typedef enum {
    QT_ST_BOOL,
    QT_ST_U8,
    QT_ST_I8,
    QT_ST_I16,
    QT_ST_U16,
    QT_ST_F16,
    QT_ST_BF16,
    QT_ST_I32,
    QT_ST_U32,
    QT_ST_F32,
    QT_ST_F64,
    QT_ST_I64,
    QT_ST_U64,
    QT_ST_DTYPE_COUNT
} qt_st_dtype;

const char *qt_st_dtype_name(qt_st_dtype d); /* "F32", ... */
int qt_st_dtype_size(qt_st_dtype d);         /* bytes per element, 0 if unknown */
int qt_st_dtype_parse(const char *s, qt_st_dtype *out);

typedef struct {
    char *name;
    qt_st_dtype dtype;
    int ndim;
    int64_t shape[QT_ST_MAX_DIMS];
    uint64_t begin, end; /* byte range in the data section */
    const uint8_t *data; /* begin's address in the loaded buffer */
} qt_st_tensor;

typedef struct {
    char *key, *value;
} qt_st_kv;

typedef struct {
    uint8_t *buf; /* the whole file, owned unless borrowed */
    int borrowed; /* buf belongs to the caller (qt_st_load_view) */
    size_t len;
    uint64_t header_len;
    qt_st_tensor *tensors; /* in header order */
    int ntensors;
    qt_st_kv *meta; /* __metadata__, in header order */
    int nmeta;
} qt_st_file;

/* Parses a copy of buf. On failure returns a negative code and writes a message to err. */
int qt_st_load_buffer(qt_st_file *f, const void *buf, size_t len, char *err, size_t errlen);
/* Parses buf in place, without copying: buf (e.g. a memory-mapped file) must outlive f. */
int qt_st_load_view(qt_st_file *f, const void *buf, size_t len, char *err, size_t errlen);
/* Reads a whole file (fread; no mmap in C11) and parses it; messages start with the path. */
int qt_st_load_file(qt_st_file *f, const char *path, char *err, size_t errlen);
const qt_st_tensor *qt_st_find(const qt_st_file *f, const char *name);
const char *qt_st_meta_get(const qt_st_file *f, const char *key);
int64_t qt_st_numel(const qt_st_tensor *t);
void qt_st_free(qt_st_file *f);

/* one tensor to write: data holds numel(shape) * dtype size bytes */
typedef struct {
    const char *name;
    qt_st_dtype dtype;
    int ndim;
    int64_t shape[QT_ST_MAX_DIMS];
    const void *data;
} qt_st_entry;

/* Builds a file image in a malloc'd buffer (*out, *outlen). meta may be NULL (no
 * __metadata__). Names must be unique and not "__metadata__". */
int qt_st_serialize(const qt_st_entry *entries, int n, const qt_st_kv *meta, int nmeta,
                    uint8_t **out, size_t *outlen, char *err, size_t errlen);
/* Serializes, writes to path.tmp, then renames over path: a crash never leaves half a file. */
int qt_st_save_file(const char *path, const qt_st_entry *entries, int n, const qt_st_kv *meta,
                    int nmeta, char *err, size_t errlen);

#endif
