/* loader.h - turns token rows (qt_pretok: ids + labels per row) into training micro-batches:
 * a seeded validation split, a seeded shuffle per epoch, fixed-shape [B, T] batches with
 * padding (labels -100, document id -1), or sample packing (several rows per sequence, each
 * its own document: positions restart and attention stays inside it, as the model's document
 * mask does). Rows longer than the sequence length are dropped and counted, as axolotl does.
 * The position (epoch, cursor) is a few bytes a checkpoint stores; restoring it resumes the
 * exact same batch sequence. */
#ifndef QT_LOADER_H
#define QT_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/pretokenized.h"

typedef struct {
    const qt_pretok *rows;
    int64_t seq_len, micro_batch;
    bool packing;
    uint64_t seed;
    int64_t *train, n_train; /* row indices (rows that fit seq_len) */
    int64_t *val, n_val;
    int64_t dropped; /* rows longer than seq_len */
    /* position */
    int64_t epoch, cursor; /* cursor: index into this epoch's order */
    int64_t *order;        /* [n_train]: this epoch's permutation of train */
} qt_loader;

/* One micro-batch, host arrays [B * T] row-major. */
typedef struct {
    int64_t B, T;
    int32_t *ids, *labels, *pos, *doc;
    int64_t rows;   /* source rows in it */
    int64_t tokens; /* non-padding tokens */
} qt_batch;

/* val_set_size: a fraction in (0, 1), a count >= 1, or 0 for none (Hugging Face's
 * train_test_split semantics, seeded). */
int qt_loader_init(qt_loader *L, const qt_pretok *rows, int64_t seq_len, int64_t micro_batch,
                   bool packing, double val_set_size, uint64_t seed, qt_err *err);
void qt_loader_free(qt_loader *L);

int qt_batch_alloc(qt_batch *b, int64_t B, int64_t T);
void qt_batch_free(qt_batch *b);

/* The next training micro-batch; crosses into the next epoch (reshuffled) when this one ends.
 * *new_epoch is set when the batch is the first of an epoch. */
void qt_loader_next(qt_loader *L, qt_batch *b, bool *new_epoch);
/* Micro-batches in one epoch (the last one may be partly padding). */
int64_t qt_loader_batches_per_epoch(const qt_loader *L);

/* Validation rows, batch i of qt_loader_val_batches (not shuffled, never packed). */
int64_t qt_loader_val_batches(const qt_loader *L);
void qt_loader_val_batch(const qt_loader *L, int64_t i, qt_batch *b);

/* The position as bytes (for checkpoints), and back. Restoring checks that the data and
 * settings are the ones the state was saved with. */
#define QT_LOADER_STATE_BYTES 64
void qt_loader_state(const qt_loader *L, uint8_t *out);
int qt_loader_restore(qt_loader *L, const uint8_t *state, size_t len, qt_err *err);

#endif
