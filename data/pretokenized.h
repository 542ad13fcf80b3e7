/* pretokenized.h - a pre-tokenized JSONL dataset: one JSON object per line,
 *   {"input_ids": [int, ...], "labels": [int, ...]}
 * with "labels" optional (same length as input_ids; -100 = not trained/evaluated on; null or
 * absent: the input_ids are the labels). Blank lines and other keys are skipped. Each row is its
 * own sequence. Every problem (unreadable file, a line that is not a JSON object, a missing / empty
 * / non-integer input_ids, an id outside the vocabulary, labels of another length) is a qt_err
 * naming the file and the 1-based line. Plain arrays only: data/ knows tokens, not tensors. */
#ifndef QT_PRETOKENIZED_H
#define QT_PRETOKENIZED_H

#include <stdint.h>

#include "autograd/check.h"

#define QT_PRETOK_IGNORE (-100) /* the label value that predicts nothing (transformers' -100) */

typedef struct {
    int64_t nrows;
    int64_t ntokens;     /* sum of the rows' lengths */
    int64_t *offset;     /* [nrows + 1]: row r is tokens offset[r] .. offset[r+1]-1 */
    int64_t *line;       /* [nrows]: the 1-based line of the file each row came from */
    int32_t *ids;        /* [ntokens] */
    int32_t *labels;     /* [ntokens]: a row without "labels" gets a copy of its input_ids */
    uint8_t *has_labels; /* [nrows]: 1 when the row carried its own "labels" */
    char path[512];      /* for messages */
} qt_pretok;

/* Reads path. vocab > 0: every id must be in [0, vocab) and every label in [0, vocab) or -100;
 * vocab <= 0 checks only that ids are non-negative int32. On error ds is left empty (and may be
 * passed to qt_pretok_free). */
int qt_pretok_load(qt_pretok *ds, const char *path, int64_t vocab, qt_err *err);
void qt_pretok_free(qt_pretok *ds);

static inline int64_t qt_pretok_len(const qt_pretok *ds, int64_t r) {
    return ds->offset[r + 1] - ds->offset[r];
}

#endif
