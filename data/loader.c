/* loader.c - see loader.h. */
#include "loader.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle(int64_t *a, int64_t n, uint64_t seed) { /* Fisher-Yates */
    uint64_t s = seed;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(mix(&s) % (uint64_t)(i + 1));
        int64_t t = a[i];
        a[i] = a[j], a[j] = t;
    }
}

static void epoch_order(qt_loader *L) {
    memcpy(L->order, L->train, (size_t)L->n_train * sizeof *L->order);
    shuffle(L->order, L->n_train, L->seed * 0x100000001b3ull + (uint64_t)L->epoch + 1);
}

int qt_loader_init(qt_loader *L, const qt_pretok *rows, int64_t seq_len, int64_t micro_batch,
                   bool packing, double val_set_size, uint64_t seed, qt_err *err) {
    memset(L, 0, sizeof *L);
    if (seq_len < 2 || micro_batch < 1)
        return qt_err_set(err, QT_ERR_ARG,
                          "loader: sequence_len must be >= 2 and "
                          "micro_batch_size >= 1");
    L->rows = rows, L->seq_len = seq_len, L->micro_batch = micro_batch, L->packing = packing;
    L->seed = seed;
    int64_t n = rows->nrows;
    int64_t *all = malloc((size_t)(n ? n : 1) * sizeof *all);
    if (!all) return qt_err_set(err, QT_ERR_MEMORY, "loader: out of memory");
    for (int64_t i = 0; i < n; i++) all[i] = i;
    /* the split first, over every row, so it does not depend on seq_len */
    int64_t nv = val_set_size <= 0  ? 0
                 : val_set_size < 1 ? (int64_t)(val_set_size * (double)n + 0.999999)
                                    : (int64_t)val_set_size;
    if (nv >= n && nv > 0) {
        free(all);
        return qt_err_set(err, QT_ERR_ARG,
                          "%s: val_set_size %g leaves no training rows (the data has %lld rows)",
                          rows->path, val_set_size, (long long)n);
    }
    shuffle(all, n, seed ^ 0x5eed5eedull);
    L->val = malloc((size_t)(nv ? nv : 1) * sizeof *L->val);
    L->train = malloc((size_t)(n ? n : 1) * sizeof *L->train);
    L->order = malloc((size_t)(n ? n : 1) * sizeof *L->order);
    if (!L->val || !L->train || !L->order) {
        free(all);
        qt_loader_free(L);
        return qt_err_set(err, QT_ERR_MEMORY, "loader: out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t r = all[i];
        if (qt_pretok_len(rows, r) > seq_len) {
            L->dropped++;
            continue;
        }
        if (i < nv)
            L->val[L->n_val++] = r;
        else
            L->train[L->n_train++] = r;
    }
    free(all);
    /* keep the training rows in file order before the per-epoch shuffle: it is the shuffle's
     * seed, not the split's, that decides the order */
    for (int64_t i = 1; i < L->n_train; i++)
        for (int64_t j = i; j > 0 && L->train[j - 1] > L->train[j]; j--) {
            int64_t t = L->train[j];
            L->train[j] = L->train[j - 1], L->train[j - 1] = t;
        }
    if (L->n_train == 0) {
        qt_loader_free(L);
        return qt_err_set(err, QT_ERR_ARG,
                          "%s: no training rows fit sequence_len %lld (%lld rows longer)",
                          rows->path, (long long)seq_len, (long long)L->dropped);
    }
    epoch_order(L);
    return QT_OK;
}

void qt_loader_free(qt_loader *L) {
    free(L->train), free(L->val), free(L->order);
    L->train = L->val = L->order = NULL;
}

int qt_batch_alloc(qt_batch *b, int64_t B, int64_t T) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)(B * T);
    b->B = B, b->T = T;
    b->ids = malloc(n * 4), b->labels = malloc(n * 4), b->pos = malloc(n * 4);
    b->doc = malloc(n * 4);
    return b->ids && b->labels && b->pos && b->doc ? QT_OK : QT_ERR_MEMORY;
}

void qt_batch_free(qt_batch *b) {
    free(b->ids), free(b->labels), free(b->pos), free(b->doc);
    memset(b, 0, sizeof *b);
}

static void clear(qt_batch *b) {
    for (int64_t i = 0; i < b->B * b->T; i++)
        b->ids[i] = 0, b->labels[i] = QT_PRETOK_IGNORE, b->pos[i] = 0, b->doc[i] = -1;
    b->rows = b->tokens = 0;
}

/* copies row r into sequence s at position at, as document d */
static void place(const qt_pretok *ds, int64_t r, qt_batch *b, int64_t s, int64_t at, int32_t d) {
    int64_t len = qt_pretok_len(ds, r), o = ds->offset[r];
    for (int64_t t = 0; t < len; t++) {
        int64_t k = s * b->T + at + t;
        b->ids[k] = ds->ids[o + t];
        b->labels[k] = ds->labels[o + t];
        b->pos[k] = (int32_t)t;
        b->doc[k] = d;
    }
    b->rows++;
    b->tokens += len;
}

static int64_t next_row(qt_loader *L, bool *new_epoch) {
    if (L->cursor == L->n_train) {
        L->epoch++;
        L->cursor = 0;
        epoch_order(L);
    }
    if (L->cursor == 0 && new_epoch) *new_epoch = true;
    return L->order[L->cursor++];
}

void qt_loader_next(qt_loader *L, qt_batch *b, bool *new_epoch) {
    QT_CHECK(b->B == L->micro_batch && b->T == L->seq_len, "loader: batch buffer shape");
    if (new_epoch) *new_epoch = false;
    clear(b);
    for (int64_t s = 0; s < b->B; s++) {
        if (!L->packing) {
            if (L->cursor == L->n_train && s > 0) break; /* an epoch's last batch: padding */
            place(L->rows, next_row(L, new_epoch), b, s, 0, 0);
            continue;
        }
        int64_t at = 0;
        int32_t d = 0;
        for (;;) {
            if (L->cursor == L->n_train && (s > 0 || at > 0)) break;
            int64_t r = L->order[L->cursor == L->n_train ? 0 : L->cursor];
            if (L->cursor < L->n_train && at + qt_pretok_len(L->rows, r) > b->T) break;
            r = next_row(L, new_epoch);
            place(L->rows, r, b, s, at, d++);
            at += qt_pretok_len(L->rows, r);
        }
    }
}

int64_t qt_loader_batches_per_epoch(const qt_loader *L) {
    if (!L->packing) return (L->n_train + L->micro_batch - 1) / L->micro_batch;
    /* packing: simulate on a copy of this epoch's order */
    int64_t batches = 0, i = 0;
    while (i < L->n_train) {
        for (int64_t s = 0; s < L->micro_batch && i < L->n_train; s++) {
            int64_t at = 0;
            while (i < L->n_train && at + qt_pretok_len(L->rows, L->order[i]) <= L->seq_len)
                at += qt_pretok_len(L->rows, L->order[i++]);
        }
        batches++;
    }
    return batches;
}

int64_t qt_loader_val_batches(const qt_loader *L) {
    return (L->n_val + L->micro_batch - 1) / L->micro_batch;
}

void qt_loader_val_batch(const qt_loader *L, int64_t i, qt_batch *b) {
    clear(b);
    for (int64_t s = 0; s < b->B && i * b->B + s < L->n_val; s++)
        place(L->rows, L->val[i * b->B + s], b, s, 0, 0);
}

/* layout: "QTLD", version 1, epoch, cursor, seed, n_train, n_val, seq_len, micro_batch,
 * packing: little-endian 64-bit fields after the 8-byte header */
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

void qt_loader_state(const qt_loader *L, uint8_t *out) {
    memset(out, 0, QT_LOADER_STATE_BYTES);
    memcpy(out, "QTLD", 4);
    out[4] = 1;
    put64(out + 8, (uint64_t)L->epoch);
    put64(out + 16, (uint64_t)L->cursor);
    put64(out + 24, L->seed);
    put64(out + 32, (uint64_t)L->n_train);
    put64(out + 40, (uint64_t)L->n_val);
    put64(out + 48, (uint64_t)L->seq_len);
    put64(out + 56, (uint64_t)(L->micro_batch << 1 | L->packing));
}

int qt_loader_restore(qt_loader *L, const uint8_t *st, size_t len, qt_err *err) {
    if (len != QT_LOADER_STATE_BYTES || memcmp(st, "QTLD", 4) || st[4] != 1)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "the checkpoint's data-loader state is not one "
                          "this qtune wrote");
    if (get64(st + 24) != L->seed || get64(st + 32) != (uint64_t)L->n_train ||
        get64(st + 40) != (uint64_t)L->n_val || get64(st + 48) != (uint64_t)L->seq_len ||
        get64(st + 56) != (uint64_t)(L->micro_batch << 1 | L->packing))
        return qt_err_set(err, QT_ERR_ARG,
                          "the data, seed, sequence_len, micro_batch_size or sample_packing "
                          "differ from the checkpoint's: resuming would not continue the same "
                          "run");
    int64_t epoch = (int64_t)get64(st + 8), cursor = (int64_t)get64(st + 16);
    if (cursor < 0 || cursor > L->n_train || epoch < 0)
        return qt_err_set(err, QT_ERR_FORMAT, "the checkpoint's data-loader state is damaged");
    L->epoch = epoch;
    epoch_order(L);
    L->cursor = cursor;
    return QT_OK;
}
