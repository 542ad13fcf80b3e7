/* test_loader.c - the training data loader: a seeded validation split disjoint from training,
 * every training row exactly once per epoch (shuffled differently each epoch), padding that
 * trains on nothing, sample packing that never splits a row and restarts positions per
 * document, long rows dropped and counted, and a saved position that resumes the identical
 * batch sequence (and refuses other settings). */
#include <stdio.h>

#include "data/loader.h"
#include "qt_test.h"

/* n rows; row r has length 1 + (r * 7) % maxlen and ids encoding (row, index) */
static qt_pretok make_rows(int64_t n, int64_t maxlen) {
    qt_pretok ds;
    memset(&ds, 0, sizeof ds);
    ds.nrows = n;
    ds.offset = malloc((size_t)(n + 1) * sizeof *ds.offset);
    ds.offset[0] = 0;
    for (int64_t r = 0; r < n; r++) ds.offset[r + 1] = ds.offset[r] + 1 + (r * 7) % maxlen;
    ds.ntokens = ds.offset[n];
    ds.ids = malloc((size_t)ds.ntokens * 4), ds.labels = malloc((size_t)ds.ntokens * 4);
    for (int64_t r = 0; r < n; r++)
        for (int64_t t = ds.offset[r]; t < ds.offset[r + 1]; t++)
            ds.ids[t] = ds.labels[t] = (int32_t)(r * 1000 + (t - ds.offset[r]));
    snprintf(ds.path, sizeof ds.path, "synthetic");
    return ds;
}

static void free_rows(qt_pretok *ds) {
    free(ds->offset), free(ds->ids), free(ds->labels);
}

/* counts how often each row appears in one epoch of batches; checks batch invariants */
static void run_epoch(qt_loader *L, qt_batch *b, int64_t *seen, int64_t nrows) {
    memset(seen, 0, (size_t)nrows * sizeof *seen);
    int64_t nb = qt_loader_batches_per_epoch(L);
    for (int64_t k = 0; k < nb; k++) {
        bool ne;
        qt_loader_next(L, b, &ne);
        QT_EXPECT(ne == (k == 0), "new_epoch flag on the first batch only (batch %lld)",
                  (long long)k);
        for (int64_t s = 0; s < b->B; s++)
            for (int64_t t = 0; t < b->T; t++) {
                int64_t i = s * b->T + t;
                if (b->doc[i] < 0) {
                    QT_EXPECT(b->labels[i] == -100, "padding trains on nothing");
                    continue;
                }
                int64_t r = b->ids[i] / 1000, j = b->ids[i] % 1000;
                QT_EXPECT(j == b->pos[i], "positions restart per document");
                if (j == 0) seen[r]++;
                if (t > 0 && b->doc[i - 1] >= 0 && b->doc[i - 1] != b->doc[i])
                    QT_EXPECT(j == 0, "a document starts at its row's first token");
            }
    }
}

static void test_epochs(bool packing) {
    qt_pretok ds = make_rows(103, 20);
    ds.ids[ds.offset[5]] = 5000; /* (no effect: ids encode rows) */
    ds.ids[ds.offset[5]] = 5 * 1000;
    qt_loader L;
    qt_err err = {0};
    QT_EXPECT(qt_loader_init(&L, &ds, 16, 4, packing, 0.1, 42, &err) == 0, "init: %s", err.msg);
    int64_t too_long = 0;
    for (int64_t r = 0; r < ds.nrows; r++) too_long += qt_pretok_len(&ds, r) > 16;
    QT_EXPECT(L.dropped == too_long, "long rows dropped and counted (%lld, want %lld)",
              (long long)L.dropped, (long long)too_long);
    QT_EXPECT(L.n_val + L.n_train + L.dropped == ds.nrows, "split covers every row");
    int64_t val_kept = 0;
    for (int64_t i = 0; i < L.n_val; i++)
        for (int64_t j = 0; j < L.n_train; j++) QT_EXPECT(L.val[i] != L.train[j], "disjoint");
    val_kept = L.n_val;
    QT_EXPECT(val_kept <= 11 && val_kept >= 1, "val ~10%% of 103 rows (%lld)", (long long)val_kept);
    qt_batch b;
    qt_batch_alloc(&b, 4, 16);
    int64_t seen[103], first[16];
    for (int e = 0; e < 2; e++) {
        run_epoch(&L, &b, seen, ds.nrows);
        int ok = 1;
        for (int64_t j = 0; j < L.n_train; j++) ok &= seen[L.train[j]] == 1;
        for (int64_t i = 0; i < L.n_val; i++) ok &= seen[L.val[i]] == 0;
        QT_EXPECT(ok, "%s epoch %d: every training row once, no validation row",
                  packing ? "packed" : "padded", e);
        if (e == 0) memcpy(first, L.order, sizeof first);
        else QT_EXPECT(memcmp(first, L.order, sizeof first) != 0, "each epoch reshuffles");
    }
    qt_batch_free(&b);
    qt_loader_free(&L);
    free_rows(&ds);
}

static void test_resume(void) {
    qt_pretok ds = make_rows(57, 12);
    qt_loader a, c;
    qt_err err = {0};
    qt_loader_init(&a, &ds, 24, 3, true, 0, 9, &err);
    qt_batch b1, b2;
    qt_batch_alloc(&b1, 3, 24);
    qt_batch_alloc(&b2, 3, 24);
    for (int k = 0; k < 13; k++) qt_loader_next(&a, &b1, NULL); /* into the second epoch */
    uint8_t st[QT_LOADER_STATE_BYTES];
    qt_loader_state(&a, st);
    qt_loader_init(&c, &ds, 24, 3, true, 0, 9, &err);
    QT_EXPECT(qt_loader_restore(&c, st, sizeof st, &err) == 0, "restore: %s", err.msg);
    int same = 1;
    for (int k = 0; k < 20; k++) {
        qt_loader_next(&a, &b1, NULL);
        qt_loader_next(&c, &b2, NULL);
        same &= !memcmp(b1.ids, b2.ids, 3 * 24 * 4) && !memcmp(b1.doc, b2.doc, 3 * 24 * 4);
    }
    QT_EXPECT(same, "a restored loader continues with the identical batches");
    qt_loader_free(&c);
    qt_loader_init(&c, &ds, 24, 3, false, 0, 9, &err);
    QT_EXPECT(qt_loader_restore(&c, st, sizeof st, &err) != 0 && strstr(err.msg, "differ"),
              "restore refuses other settings: %s", err.msg);
    qt_loader_free(&c);
    qt_loader_init(&c, &ds, 24, 3, true, 0, 10, &err);
    QT_EXPECT(qt_loader_restore(&c, st, sizeof st, &err) != 0, "restore refuses another seed");
    st[0] = 'X';
    QT_EXPECT(qt_loader_restore(&c, st, sizeof st, &err) != 0, "restore refuses garbage");
    qt_loader_free(&c);
    qt_loader_free(&a);
    qt_batch_free(&b1);
    qt_batch_free(&b2);
    free_rows(&ds);
}

static void test_errors(void) {
    qt_pretok ds = make_rows(5, 30);
    qt_loader L;
    qt_err err = {0};
    qt_pretok tail = ds; /* rows 1..4: 8, 15, 22, 29 tokens */
    tail.offset++, tail.nrows--;
    QT_EXPECT(qt_loader_init(&L, &tail, 4, 1, false, 0, 1, &err) != 0 && strstr(err.msg, "fit"),
              "no row fits: %s", err.msg);
    QT_EXPECT(qt_loader_init(&L, &ds, 64, 1, false, 5, 1, &err) != 0,
              "val_set_size takes every row: %s", err.msg);
    free_rows(&ds);
}

int main(void) {
    test_epochs(false);
    test_epochs(true);
    test_resume();
    test_errors();
    return qt_test_finish("loader");
}
