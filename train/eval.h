/* eval.h - mean next-token loss and perplexity of a model on a pre-tokenized dataset, computed
 * as transformers does for a causal LM: every row is its own sequence, targets are the row's
 * labels (its input_ids when it has none) shifted left by one, -100 ignored, and the loss is
 * token-weighted over the whole dataset (sum of per-token losses / predicted tokens), not a
 * mean of per-row or per-batch means. */
#ifndef QT_EVAL_H
#define QT_EVAL_H

#include "data/pretokenized.h"
#include "train/llama.h"

typedef struct {
    double loss;       /* sum of per-token losses / tokens */
    double perplexity; /* exp(loss) */
    int64_t tokens;    /* predicted tokens: non-ignored targets */
    int64_t rows;
    int64_t batches; /* forward passes it took */
} qt_eval_result;

/* Rows are packed in file order into [1, N] batches of at most max_tokens tokens, with
 * positions restarting at 0 and a document id per row, so that attention never crosses rows:
 * the result does not depend on max_tokens (up to float rounding). A row longer than
 * max_tokens is an error naming its line (it is not split: that would change its loss); rows
 * longer than the model's max_position_embeddings are evaluated as they are, as transformers
 * does. Runs without gradients and calls qt_step_reset after each batch, so step tensors the
 * caller made earlier are gone afterwards. Errors: a dataset with no token to predict, a row
 * too long for a batch. */
int qt_eval_loss(qt_ctx *ctx, qt_llama *m, const qt_pretok *ds, int64_t max_tokens,
                 qt_eval_result *res, qt_err *err);

#endif
