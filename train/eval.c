/* eval.c - see eval.h. */
#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"

/* Fills ids/pos/doc/targets of rows [r0, r1) packed one after another; returns how many
 * targets are not ignored. */
static int64_t pack(const qt_pretok *ds, int64_t r0, int64_t r1, int32_t *ids, int32_t *pos,
                    int32_t *doc, int32_t *tgt) {
    int64_t k = 0, count = 0;
    for (int64_t r = r0; r < r1; r++) {
        int64_t o = ds->offset[r], n = qt_pretok_len(ds, r);
        for (int64_t t = 0; t < n; t++, k++) {
            ids[k] = ds->ids[o + t];
            pos[k] = (int32_t)t;
            doc[k] = (int32_t)(r - r0);
            /* the shift stays inside the row: its last token predicts nothing */
            tgt[k] = t + 1 < n ? ds->labels[o + t + 1] : QT_IGNORE_INDEX;
            count += tgt[k] != QT_IGNORE_INDEX;
        }
    }
    return count;
}

int qt_eval_loss(qt_ctx *ctx, qt_llama *m, const qt_pretok *ds, int64_t max_tokens,
                 qt_eval_result *res, qt_err *err) {
    memset(res, 0, sizeof *res);
    if (max_tokens < 1)
        return qt_err_set(err, QT_ERR_ARG, "eval: the batch size in tokens must be >= 1, got %lld",
                          (long long)max_tokens);
    if (max_tokens > INT32_MAX)
        return qt_err_set(err, QT_ERR_ARG,
                          "eval: a batch of %lld tokens is too many (positions "
                          "and document ids are int32)",
                          (long long)max_tokens);
    /* every check before the first forward pass: a long run must not fail at its end */
    int64_t predicted = 0;
    for (int64_t r = 0; r < ds->nrows; r++) {
        int64_t n = qt_pretok_len(ds, r);
        if (n > max_tokens)
            return qt_err_set(err, QT_ERR_ARG,
                              "%s:%lld: the row has %lld tokens, more than a batch holds (%lld: "
                              "raise qtune eval's --max-tokens)",
                              ds->path, (long long)ds->line[r], (long long)n,
                              (long long)max_tokens);
        if (m->cfg.sliding_window && n > m->cfg.sliding_window)
            return qt_err_set(err, QT_ERR_UNSUPPORTED,
                              "%s:%lld: the row has %lld tokens, more than the model's "
                              "sliding_window (%lld), which qtune does not implement",
                              ds->path, (long long)ds->line[r], (long long)n,
                              (long long)m->cfg.sliding_window);
        for (int64_t t = ds->offset[r]; t < ds->offset[r + 1]; t++)
            if (ds->ids[t] >= m->cfg.vocab ||
                (ds->labels[t] != QT_IGNORE_INDEX && ds->labels[t] >= m->cfg.vocab))
                return qt_err_set(err, QT_ERR_ARG,
                                  "%s:%lld: token %d is outside the model's vocabulary of %lld",
                                  ds->path, (long long)ds->line[r],
                                  (int)(ds->ids[t] >= m->cfg.vocab ? ds->ids[t] : ds->labels[t]),
                                  (long long)m->cfg.vocab);
        for (int64_t t = ds->offset[r] + 1; t < ds->offset[r + 1]; t++)
            predicted += ds->labels[t] != QT_IGNORE_INDEX;
    }
    if (predicted == 0)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: nothing to predict: every row has a single token or only "
                          "ignored (-100) labels",
                          ds->path);
    int64_t cap = ds->ntokens < max_tokens ? ds->ntokens : max_tokens;
    int32_t *buf = malloc((size_t)(cap > 0 ? cap : 1) * 4 * sizeof *buf);
    if (!buf) return qt_err_set(err, QT_ERR_MEMORY, "eval: out of host memory");
    int32_t *ids = buf, *pos = buf + cap, *doc = buf + 2 * cap, *tgt = buf + 3 * cap;

    double sum = 0; /* per-batch sums added in double: the order of batches costs no precision */
    qt_no_grad_begin(ctx);
    for (int64_t r0 = 0; r0 < ds->nrows;) {
        int64_t r1 = r0, n = 0;
        while (r1 < ds->nrows && n + qt_pretok_len(ds, r1) <= max_tokens)
            n += qt_pretok_len(ds, r1++);
        int64_t count = pack(ds, r0, r1, ids, pos, doc, tgt);
        if (count > 0) { /* a batch of one-token or fully ignored rows predicts nothing */
            int64_t shape[2] = {1, n};
            qt_tensor *ti = qt_tensor_new(ctx, QT_I32, 2, shape);
            qt_tensor *tp = qt_tensor_new(ctx, QT_I32, 2, shape);
            qt_tensor *td = qt_tensor_new(ctx, QT_I32, 2, shape);
            qt_tensor *tt = qt_tensor_new(ctx, QT_I32, 1, &n);
            qt_tensor_upload(ctx, ti, ids);
            qt_tensor_upload(ctx, tp, pos);
            qt_tensor_upload(ctx, td, doc);
            qt_tensor_upload(ctx, tt, tgt);
            /* denom 1: the sum of the batch's token losses, not its mean */
            qt_tensor *l = qt_llama_loss(ctx, m, ti, tt, tp, td, 1.0f);
            sum += (double)qt_tensor_get(ctx, l, 0);
            res->tokens += count;
            res->batches++;
            qt_step_reset(ctx);
        }
        r0 = r1;
    }
    qt_no_grad_end(ctx);
    free(buf);
    res->rows = ds->nrows;
    res->loss = sum / (double)res->tokens;
    res->perplexity = exp(res->loss);
    return 0;
}
