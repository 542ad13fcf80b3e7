/* llama.c - see llama.h. */
#include "llama.h"

#include <math.h>
#include <stdlib.h>

#include "autograd/ops.h"
#include "autograd/tape.h"

void qt_llama_each_linear(qt_llama *m, void (*fn)(qt_linear *l, void *user), void *user) {
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        qt_llama_layer *L = &m->layer[i];
        qt_linear *ls[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) fn(ls[j], user);
    }
}

void qt_llama_shift_labels(const int32_t *labels, int32_t *targets, int64_t B, int64_t T) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            targets[b * T + t] = t + 1 < T ? labels[b * T + t + 1] : QT_IGNORE_INDEX;
}

/* what a block span needs besides its input */
typedef struct {
    qt_llama *m;
    qt_llama_layer *L;
    qt_tensor *pos, *doc;
} block_args;

/* x [B, T, D] -> [B, T, D] */
static qt_tensor *block_fwd(qt_ctx *ctx, qt_tensor **in, void *user) {
    block_args *a = user;
    const qt_model_config *c = &a->m->cfg;
    qt_llama_layer *L = a->L;
    qt_tensor *x = in[0];
    int64_t B = x->shape[0], T = x->shape[1], hd = c->head_dim;
    float eps = (float)c->rms_eps;

    qt_tensor *h = qt_rmsnorm(ctx, x, qt_to_dtype(ctx, L->in_norm, x->dtype), eps);
    qt_tensor *q = qt_linear_fwd(ctx, &L->q, h); /* [B, T, H*hd] */
    qt_tensor *k = qt_linear_fwd(ctx, &L->k, h); /* [B, T, Hkv*hd] */
    qt_tensor *v = qt_linear_fwd(ctx, &L->v, h);
    q = qt_reshape(ctx, q, 4, (int64_t[]){B, T, c->heads, hd});
    k = qt_reshape(ctx, k, 4, (int64_t[]){B, T, c->kv_heads, hd});
    v = qt_reshape(ctx, v, 4, (int64_t[]){B, T, c->kv_heads, hd});
    /* q and k are the projections' fresh outputs, read by nothing else: rotated in place */
    q = qt_rope_inplace(ctx, q, a->pos, a->m->inv_freq, 1.0f);
    k = qt_rope_inplace(ctx, k, a->pos, a->m->inv_freq, 1.0f);
    qt_tensor *att = qt_attention(ctx, q, k, v, a->doc, 1.0f / sqrtf((float)hd));
    att = qt_reshape(ctx, att, 3, (int64_t[]){B, T, c->heads * hd});
    x = qt_add(ctx, x, qt_linear_fwd(ctx, &L->o, att));

    h = qt_rmsnorm(ctx, x, qt_to_dtype(ctx, L->post_norm, x->dtype), eps);
    qt_tensor *g = qt_swiglu(ctx, qt_linear_fwd(ctx, &L->gate, h), qt_linear_fwd(ctx, &L->up, h));
    if (!ctx->replaying) return qt_add(ctx, x, qt_linear_fwd(ctx, &L->down, g));
    /* In the replay the block's output value is read by nothing (its backward takes only the
     * gradient, and an add's backward reads no values): the down projection's GEMM and the
     * residual add are recorded but not run. */
    qt_tensor *y = qt_linear_fwd_unread(ctx, &L->down, g);
    ctx->skip_values++;
    qt_tensor *out = qt_add(ctx, x, y);
    ctx->skip_values--;
    return out;
}

qt_tensor *qt_llama_hidden(qt_ctx *ctx, qt_llama *m, qt_tensor *ids, qt_tensor *pos,
                           qt_tensor *doc) {
    QT_CHECK(ids->ndim == 2 && ids->dtype == QT_I32, "llama: ids must be [B, T] i32");
    int64_t B = ids->shape[0], T = ids->shape[1];
    QT_CHECK(doc || !m->cfg.sliding_window || T <= m->cfg.sliding_window,
             "llama: %lld tokens exceed the sliding window of %lld (callers must check)",
             (long long)T, (long long)m->cfg.sliding_window);
    if (!pos) { /* 0..T-1 in every row */
        pos = qt_tensor_new(ctx, QT_I32, 2, ids->shape);
        int32_t *p = malloc((size_t)(B * T) * sizeof *p);
        for (int64_t i = 0; i < B * T; i++) p[i] = (int32_t)(i % T);
        qt_tensor_upload(ctx, pos, p);
        free(p);
    }
    /* a trainable (f32) embedding is gathered in f32, then cast: cheaper than casting [V, D] */
    qt_tensor *x = qt_to_dtype(ctx, qt_embedding(ctx, m->embed, ids), m->dtype); /* [B, T, D] */
    for (int64_t l = 0; l < m->cfg.layers; l++) {
        block_args *a = qt_arena_alloc(&ctx->meta, sizeof *a);
        QT_CHECK(a, "host arena exhausted");
        *a = (block_args){m, &m->layer[l], pos, doc};
        x = m->checkpoint ? qt_checkpoint(ctx, block_fwd, 1, &x, a) : block_fwd(ctx, &x, a);
    }
    return qt_rmsnorm(ctx, x, qt_to_dtype(ctx, m->norm, x->dtype), (float)m->cfg.rms_eps);
}

qt_tensor *qt_llama_logits(qt_ctx *ctx, qt_llama *m, qt_tensor *ids, qt_tensor *pos,
                           qt_tensor *doc) {
    qt_tensor *h = qt_llama_hidden(ctx, m, ids, pos, doc);
    return qt_matmul(ctx, h, qt_to_dtype(ctx, m->lm_head, h->dtype), false, true);
}

qt_tensor *qt_llama_loss(qt_ctx *ctx, qt_llama *m, qt_tensor *ids, qt_tensor *targets,
                         qt_tensor *pos, qt_tensor *doc, float denom) {
    int64_t n = ids->shape[0] * ids->shape[1];
    QT_CHECK(qt_numel(targets) == n && targets->dtype == QT_I32, "llama: targets [B*T] i32");
    /* the lm_head and the loss as one op: the [B*T, V] logits are never kept */
    qt_tensor *h = qt_llama_hidden(ctx, m, ids, pos, doc);
    h = qt_reshape(ctx, h, 2, (int64_t[]){n, m->cfg.hidden});
    qt_tensor *t = targets->ndim == 1 ? targets : qt_reshape(ctx, targets, 1, &n);
    return qt_linear_cross_entropy(ctx, h, qt_to_dtype(ctx, m->lm_head, h->dtype), t, denom, 0);
}
