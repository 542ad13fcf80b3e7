/* pretokenized.c - see pretokenized.h. The file is read line by line (getline) and each line
 * parsed with cJSON; the rows' tokens are appended to one growing int32 array. Keys other than
 * input_ids and labels (attention_mask, text, ...) are ignored: datasets made by other tools
 * often carry them. */
#define _POSIX_C_SOURCE 200809L
#include "pretokenized.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* capacities of the dataset's growing arrays */
typedef struct {
    int64_t ids, labels, line, has_labels, offset;
} caps;

static int grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static bool blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return false;
    return true;
}

/* a short printable excerpt of what stands at s, for "not valid JSON near ..." */
static void excerpt(const char *s, char *out, size_t n) {
    size_t i = 0;
    for (; s[i] && s[i] != '\n' && s[i] != '\r' && i + 1 < n && i < 20; i++)
        out[i] = (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
    out[i] = 0;
}

/* Checks that every element of the array a is an integer inside the range `what` allows
 * (-100 too when allow_ignore) and writes them to dst, which has room for all of them. */
static int read_ints(const qt_pretok *ds, int64_t lineno, const cJSON *a, const char *what,
                     int64_t vocab, bool allow_ignore, int32_t *dst, qt_err *err) {
    int64_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsNumber(e)) {
            const char *kind = cJSON_IsString(e)  ? "a string"
                               : cJSON_IsBool(e)  ? "a boolean"
                               : cJSON_IsNull(e)  ? "null"
                               : cJSON_IsArray(e) ? "an array"
                                                  : "an object";
            return qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: %s[%lld] is %s, not an integer",
                              ds->path, (long long)lineno, what, (long long)i, kind);
        }
        double d = e->valuedouble;
        if (!(d == floor(d)) || fabs(d) > 9.0e15)
            return qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: %s[%lld] = %.17g is not an integer",
                              ds->path, (long long)lineno, what, (long long)i, d);
        int64_t hi = vocab > 0 ? vocab : (int64_t)INT32_MAX + 1;
        bool ok = (d >= 0 && d < (double)hi) || (allow_ignore && d == QT_PRETOK_IGNORE);
        if (!ok) {
            if (vocab > 0)
                return qt_err_set(err, QT_ERR_FORMAT,
                                  "%s:%lld: %s[%lld] = %.0f is outside the vocabulary [0, %lld)%s",
                                  ds->path, (long long)lineno, what, (long long)i, d,
                                  (long long)vocab, allow_ignore ? " and is not -100" : "");
            return qt_err_set(err, QT_ERR_FORMAT,
                              "%s:%lld: %s[%lld] = %.0f is not a token id (0 .. 2^31-1)%s",
                              ds->path, (long long)lineno, what, (long long)i, d,
                              allow_ignore ? " nor -100" : "");
        }
        dst[i++] = (int32_t)d;
    }
    return 0;
}

/* Parses one non-blank line and appends its row. */
static int add_line(qt_pretok *ds, caps *cp, const char *text, size_t len, int64_t lineno,
                    int64_t vocab, qt_err *err) {
    if (strlen(text) != len)
        return qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: the line contains a NUL byte", ds->path,
                          (long long)lineno);
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithOpts(text, &end, 1);
    if (!o) {
        char near[32];
        excerpt(end ? end : text, near, sizeof near);
        return qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: not valid JSON (column %lld, near '%s')",
                          ds->path, (long long)lineno, (long long)((end ? end : text) - text) + 1,
                          near);
    }
    int rc = 0;
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "input_ids");
    const cJSON *lab = cJSON_GetObjectItemCaseSensitive(o, "labels");
    int64_t n = 0;
    if (!cJSON_IsObject(o)) {
        rc = qt_err_set(err, QT_ERR_FORMAT,
                        "%s:%lld: not a JSON object (a row is {\"input_ids\": "
                        "[...]})",
                        ds->path, (long long)lineno);
    } else if (!ids) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: missing \"input_ids\"", ds->path,
                        (long long)lineno);
    } else if (!cJSON_IsArray(ids)) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: \"input_ids\" is not an array of integers",
                        ds->path, (long long)lineno);
    } else if ((n = cJSON_GetArraySize(ids)) == 0) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: \"input_ids\" is empty", ds->path,
                        (long long)lineno);
    } else if (lab && !cJSON_IsNull(lab) && !cJSON_IsArray(lab)) {
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s:%lld: \"labels\" is not an array of integers",
                        ds->path, (long long)lineno);
    } else if (lab && cJSON_IsArray(lab) && cJSON_GetArraySize(lab) != n) {
        rc = qt_err_set(err, QT_ERR_FORMAT,
                        "%s:%lld: \"labels\" has %d entries but \"input_ids\" has %lld", ds->path,
                        (long long)lineno, cJSON_GetArraySize(lab), (long long)n);
    }
    if (rc) goto out;
    if (grow((void **)&ds->ids, &cp->ids, ds->ntokens + n, sizeof *ds->ids) ||
        grow((void **)&ds->labels, &cp->labels, ds->ntokens + n, sizeof *ds->labels) ||
        grow((void **)&ds->line, &cp->line, ds->nrows + 1, sizeof *ds->line) ||
        grow((void **)&ds->has_labels, &cp->has_labels, ds->nrows + 1, sizeof *ds->has_labels) ||
        grow((void **)&ds->offset, &cp->offset, ds->nrows + 2, sizeof *ds->offset)) {
        rc = qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", ds->path);
        goto out;
    }
    int32_t *di = ds->ids + ds->ntokens, *dl = ds->labels + ds->ntokens;
    rc = read_ints(ds, lineno, ids, "input_ids", vocab, false, di, err);
    bool has = lab && cJSON_IsArray(lab);
    if (!rc && has) rc = read_ints(ds, lineno, lab, "labels", vocab, true, dl, err);
    if (rc) goto out;
    if (!has) memcpy(dl, di, (size_t)n * sizeof *dl);
    ds->offset[ds->nrows] = ds->ntokens;
    ds->line[ds->nrows] = lineno;
    ds->has_labels[ds->nrows] = has;
    ds->nrows++;
    ds->ntokens += n;
    ds->offset[ds->nrows] = ds->ntokens;
out:
    cJSON_Delete(o);
    return rc;
}

int qt_pretok_load(qt_pretok *ds, const char *path, int64_t vocab, qt_err *err) {
    memset(ds, 0, sizeof *ds);
    snprintf(ds->path, sizeof ds->path, "%s", path);
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err_set(err, QT_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    caps cp = {0};
    char *buf = NULL;
    size_t bufcap = 0;
    int64_t lineno = 0;
    int rc = 0;
    ssize_t len;
    errno = 0;
    while ((len = getline(&buf, &bufcap, f)) >= 0) {
        lineno++;
        if (blank(buf) && strlen(buf) == (size_t)len) continue;
        if ((rc = add_line(ds, &cp, buf, (size_t)len, lineno, vocab, err)) != 0) break;
        errno = 0;
    }
    if (!rc && ferror(f))
        rc = lineno == 0 ? qt_err_set(err, QT_ERR_IO, "cannot read %s: %s", path,
                                      strerror(errno ? errno : EIO))
                         : qt_err_set(err, QT_ERR_IO, "%s:%lld: read error: %s", path,
                                      (long long)lineno + 1, strerror(errno ? errno : EIO));
    free(buf);
    fclose(f);
    if (!rc && ds->nrows == 0)
        rc = qt_err_set(err, QT_ERR_FORMAT,
                        "%s: no rows (the file has %lld line%s, none with "
                        "data)",
                        path, (long long)lineno, lineno == 1 ? "" : "s");
    if (rc) qt_pretok_free(ds);
    return rc;
}

void qt_pretok_free(qt_pretok *ds) {
    free(ds->offset);
    free(ds->line);
    free(ds->ids);
    free(ds->labels);
    free(ds->has_labels);
    char path[sizeof ds->path];
    memcpy(path, ds->path, sizeof path);
    memset(ds, 0, sizeof *ds);
    memcpy(ds->path, path, sizeof path);
}
