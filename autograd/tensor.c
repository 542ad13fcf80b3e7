/* tensor.c - dtype facts and shape helpers for qt_tensor. */
#include "tensor.h"

#include <stdio.h>
#include <string.h>

size_t qt_dtype_size(qt_dtype dt) {
    switch (dt) {
    case QT_F32:
        return 4;
    case QT_BF16:
        return 2;
    case QT_F16:
        return 2;
    case QT_U8:
        return 1;
    case QT_I8:
        return 1;
    case QT_I32:
        return 4;
    default:
        break;
    }
    QT_CHECK(0, "unknown dtype %d", (int)dt);
    return 0;
}

const char *qt_dtype_name(qt_dtype dt) {
    static const char *names[] = {"f32", "bf16", "f16", "u8", "i8", "i32"};
    QT_CHECK(dt >= 0 && dt < QT_DTYPE_COUNT, "unknown dtype %d", (int)dt);
    return names[dt];
}

const char *qt_device_name(qt_device dev) {
    return dev == QT_CPU ? "cpu" : dev == QT_CUDA ? "cuda" : "?";
}

int64_t qt_numel(const qt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t qt_nbytes(const qt_tensor *t) {
    return (size_t)qt_numel(t) * qt_dtype_size(t->dtype);
}

bool qt_same_shape(const qt_tensor *a, const qt_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

int64_t qt_rows(const qt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++) n *= t->shape[i];
    return n;
}

int64_t qt_cols(const qt_tensor *t) {
    return t->ndim ? t->shape[t->ndim - 1] : 1;
}

const char *qt_shape_str(const qt_tensor *t, char *buf, size_t n) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "[");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, "]");
    return buf;
}
