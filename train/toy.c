/* toy.c - see toy.h. A 2-layer byte-level Llama (RMSNorm, RoPE, GQA causal
 * attention, SwiGLU, untied lm_head) trained with plain Adam on fixed windows
 * of a public-domain text. */
#include "toy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/rope.h"
#include "autograd/tape.h"

/* Lewis Carroll, "Alice's Adventures in Wonderland" (1865), chapter 1: public
 * domain. */
static const char qt_toy_text[] =
    "Alice was beginning to get very tired of sitting by her sister on the "
    "bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was "
    "reading, but it "
    "had no pictures or conversations in it, and what is the use of a book, "
    "thought Alice "
    "without pictures or conversations? So she was considering in her own mind "
    "(as well as she "
    "could, for the hot day made her feel very sleepy and stupid), whether the "
    "pleasure of "
    "making a daisy-chain would be worth the trouble of getting up and picking "
    "the daisies, "
    "when suddenly a White Rabbit with pink eyes ran close by her. There was "
    "nothing so very "
    "remarkable in that; nor did Alice think it so very much out of the way to "
    "hear the Rabbit "
    "say to itself, Oh dear! Oh dear! I shall be late! (when she thought it "
    "over afterwards, it "
    "occurred to her that she ought to have wondered at this, but at the time "
    "it all seemed "
    "quite natural); but when the Rabbit actually took a watch out of its "
    "waistcoat-pocket, "
    "and looked at it, and then hurried on, Alice started to her feet, for it "
    "flashed across "
    "her mind that she had never before seen a rabbit with either a "
    "waistcoat-pocket, or a "
    "watch to take out of it, and burning with curiosity, she ran across the "
    "field after it, "
    "and fortunately was just in time to see it pop down a large rabbit-hole "
    "under the hedge.";

#define VOCAB 256

qt_toy_opts qt_toy_defaults(void) {
    qt_toy_opts o = {.steps = 60,
                     .batch = 8,
                     .seq = 32,
                     .dim = 64,
                     .layers = 2,
                     .heads = 4,
                     .kv_heads = 2,
                     .ffn = 128,
                     .lr = 3e-3f,
                     .dropout = 0.0f,
                     .checkpoint = 1,
                     .seed = 1234,
                     .log = NULL};
    return o;
}

typedef struct {
    qt_tensor *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *wg, *wu, *wd;
} toy_layer;

typedef struct {
    const qt_toy_opts *o;
    qt_tensor *embed, *norm, *head; /* [V, D], [D], [V, D] */
    toy_layer *layer;
    qt_tensor *pos, *inv_freq; /* [B, T] i32, [hd/2] f32 */
} toy_model;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static qt_tensor *param(qt_ctx *ctx, uint64_t *s, int64_t r, int64_t c, float std, const char *n) {
    int64_t shape[2] = {r, c};
    qt_tensor *t = qt_param_new(ctx, QT_F32, c ? 2 : 1, shape, true, n);
    int64_t cnt = qt_numel(t);
    float *h = malloc((size_t)cnt * sizeof *h);
    for (int64_t i = 0; i < cnt; i++) {
        if (std == 0.0f) { /* norm weights start at one */
            h[i] = 1.0f;
            continue;
        }
        double u1 = ((rng_next(s) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (rng_next(s) >> 11) / 9007199254740992.0;
        h[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    qt_tensor_upload(ctx, t, h);
    free(h);
    return t;
}

/* One transformer block; x [B, T, D] -> [B, T, D]. */
typedef struct {
    toy_model *m;
    toy_layer *L;
} toy_span; /* one per block: a replay in backward must find its own layer */

static qt_tensor *toy_block(qt_ctx *ctx, qt_tensor **in, void *user) {
    toy_span *sp = user;
    toy_model *m = sp->m;
    const qt_toy_opts *o = m->o;
    toy_layer *L = sp->L;
    qt_tensor *x = in[0];
    int64_t B = x->shape[0], T = x->shape[1], hd = o->dim / o->heads;
    qt_tensor *h = qt_rmsnorm(ctx, x, L->attn_norm, 1e-5f);
    qt_tensor *q = qt_matmul(ctx, h, L->wq, false, true); /* [B, T, H*hd] */
    qt_tensor *k = qt_matmul(ctx, h, L->wk, false, true); /* [B, T, Hkv*hd] */
    qt_tensor *v = qt_matmul(ctx, h, L->wv, false, true);
    q = qt_reshape(ctx, q, 4, (int64_t[]){B, T, o->heads, hd});
    k = qt_reshape(ctx, k, 4, (int64_t[]){B, T, o->kv_heads, hd});
    v = qt_reshape(ctx, v, 4, (int64_t[]){B, T, o->kv_heads, hd});
    q = qt_rope(ctx, q, m->pos, m->inv_freq, 1.0f);
    k = qt_rope(ctx, k, m->pos, m->inv_freq, 1.0f);
    qt_tensor *a = qt_attention(ctx, q, k, v, NULL, 1.0f / sqrtf((float)hd)); /* [B,T,H,hd] */
    a = qt_reshape(ctx, a, 3, (int64_t[]){B, T, o->dim});
    x = qt_add(ctx, x, qt_dropout(ctx, qt_matmul(ctx, a, L->wo, false, true), o->dropout));
    h = qt_rmsnorm(ctx, x, L->mlp_norm, 1e-5f);
    qt_tensor *g = qt_swiglu(ctx, qt_matmul(ctx, h, L->wg, false, true),
                             qt_matmul(ctx, h, L->wu, false, true)); /* [B, T, F] */
    return qt_add(ctx, x, qt_matmul(ctx, g, L->wd, false, true));
}

int qt_toy_train(const qt_toy_opts *o, qt_device dev, float *losses, qt_err *err) {
    if (o->dim % o->heads || o->heads % o->kv_heads || (o->dim / o->heads) % 2)
        return qt_err_set(err, QT_ERR_ARG, "toy: dim/heads/kv_heads do not divide evenly");
    int64_t ntext = (int64_t)strlen(qt_toy_text);
    if (o->seq + 1 >= ntext) return qt_err_set(err, QT_ERR_ARG, "toy: seq longer than the text");
    qt_ctx ctx;
    int rc = qt_ctx_init(&ctx, dev, o->seed, err);
    if (rc) return rc;
    uint64_t s = o->seed;
    int64_t D = o->dim, hd = D / o->heads, kvd = hd * o->kv_heads, F = o->ffn;
    float std = 0.02f, ostd = 0.02f / sqrtf(2.0f * (float)o->layers);
    toy_model m = {.o = o};
    m.embed = param(&ctx, &s, VOCAB, D, std, "embed");
    m.norm = param(&ctx, &s, D, 0, 0.0f, "norm");
    m.head = param(&ctx, &s, VOCAB, D, std, "lm_head");
    m.layer = calloc((size_t)o->layers, sizeof *m.layer);
    toy_span *spans = calloc((size_t)o->layers, sizeof *spans);
    for (int l = 0; l < o->layers; l++) {
        toy_layer *L = &m.layer[l];
        L->attn_norm = param(&ctx, &s, D, 0, 0.0f, "attn_norm");
        L->wq = param(&ctx, &s, D, D, std, "wq");
        L->wk = param(&ctx, &s, kvd, D, std, "wk");
        L->wv = param(&ctx, &s, kvd, D, std, "wv");
        L->wo = param(&ctx, &s, D, D, ostd, "wo");
        L->mlp_norm = param(&ctx, &s, D, 0, 0.0f, "mlp_norm");
        L->wg = param(&ctx, &s, F, D, std, "wg");
        L->wu = param(&ctx, &s, F, D, std, "wu");
        L->wd = param(&ctx, &s, D, F, ostd, "wd");
    }
    int64_t B = o->batch, T = o->seq;
    int64_t bt[2] = {B, T}, nt = B * T;
    int32_t *ids = malloc((size_t)nt * sizeof *ids), *tgt = malloc((size_t)nt * sizeof *tgt);
    int32_t *pos = malloc((size_t)nt * sizeof *pos);
    float *invf = malloc((size_t)(hd / 2) * sizeof *invf);
    for (int64_t i = 0; i < nt; i++) pos[i] = (int32_t)(i % T);
    qt_rope_inv_freq(invf, (int)hd, 10000.0, NULL);
    m.pos = qt_param_new(&ctx, QT_I32, 2, bt, false, "pos");
    m.inv_freq = qt_param_new(&ctx, QT_F32, 1, (int64_t[]){hd / 2}, false, "inv_freq");
    qt_tensor_upload(&ctx, m.pos, pos);
    qt_tensor_upload(&ctx, m.inv_freq, invf);
    qt_tensor *idt = qt_param_new(&ctx, QT_I32, 2, bt, false, "ids");
    qt_tensor *tgtt = qt_param_new(&ctx, QT_I32, 1, &nt, false, "targets");

    /* Adam state, host side (the toy's parameters are tiny) */
    qt_tensor *params[3 + 9 * 64];
    int np = 0;
    params[np++] = m.embed, params[np++] = m.norm, params[np++] = m.head;
    for (int l = 0; l < o->layers && l < 64; l++) {
        toy_layer *L = &m.layer[l];
        qt_tensor *lp[9] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo,
                            L->mlp_norm,  L->wg, L->wu, L->wd};
        for (int j = 0; j < 9; j++) params[np++] = lp[j];
    }
    float **mom = calloc((size_t)np, sizeof *mom), **vel = calloc((size_t)np, sizeof *vel);
    float **w = calloc((size_t)np, sizeof *w), **g = calloc((size_t)np, sizeof *g);
    for (int p = 0; p < np; p++) {
        size_t n = (size_t)qt_numel(params[p]);
        mom[p] = calloc(n, 4), vel[p] = calloc(n, 4), w[p] = malloc(n * 4), g[p] = malloc(n * 4);
    }

    for (int step = 0; step < o->steps; step++) {
        for (int64_t b = 0; b < B; b++) { /* random windows of the text */
            int64_t start = (int64_t)(rng_next(&s) % (uint64_t)(ntext - T - 1));
            for (int64_t t = 0; t < T; t++) {
                ids[b * T + t] = (unsigned char)qt_toy_text[start + t];
                tgt[b * T + t] = (unsigned char)qt_toy_text[start + t + 1];
            }
        }
        qt_tensor_upload(&ctx, idt, ids);
        qt_tensor_upload(&ctx, tgtt, tgt);
        qt_step_reset(&ctx);
        for (int p = 0; p < np; p++) qt_grad_zero(params[p]);
        qt_tensor *x = qt_embedding(&ctx, m.embed, idt); /* [B, T, D] */
        for (int l = 0; l < o->layers; l++) {
            toy_span *sp = &spans[l];
            *sp = (toy_span){&m, &m.layer[l]};
            x = o->checkpoint ? qt_checkpoint(&ctx, toy_block, 1, &x, sp) : toy_block(&ctx, &x, sp);
        }
        x = qt_rmsnorm(&ctx, x, m.norm, 1e-5f);
        qt_tensor *logits = qt_matmul(&ctx, x, m.head, false, true); /* [B, T, V] */
        logits = qt_reshape(&ctx, logits, 2, (int64_t[]){nt, VOCAB});
        qt_tensor *loss = qt_cross_entropy(&ctx, logits, tgtt, 0.0f);
        qt_backward(&ctx, loss);
        losses[step] = qt_tensor_get(&ctx, loss, 0);
        if (o->log) fprintf(o->log, "step %3d/%d  loss %.4f\n", step + 1, o->steps, losses[step]);
        /* Adam, bias-corrected */
        float b1 = 0.9f, b2 = 0.999f;
        float c1 = 1.0f - powf(b1, (float)(step + 1)), c2 = 1.0f - powf(b2, (float)(step + 1));
        for (int p = 0; p < np; p++) {
            qt_tensor *t = params[p];
            int64_t n = qt_numel(t);
            QT_CHECK(t->grad, "toy: no gradient reached '%s'", t->name);
            qt_tensor_download(&ctx, t, w[p]);
            qt_tensor_download(&ctx, t->grad, g[p]);
            for (int64_t i = 0; i < n; i++) {
                mom[p][i] = b1 * mom[p][i] + (1 - b1) * g[p][i];
                vel[p][i] = b2 * vel[p][i] + (1 - b2) * g[p][i] * g[p][i];
                w[p][i] -= o->lr * (mom[p][i] / c1) / (sqrtf(vel[p][i] / c2) + 1e-8f);
            }
            qt_tensor_upload(&ctx, t, w[p]);
        }
    }
    for (int p = 0; p < np; p++) free(mom[p]), free(vel[p]), free(w[p]), free(g[p]);
    free(mom), free(vel), free(w), free(g);
    free(ids), free(tgt), free(pos), free(invf), free(m.layer), free(spans);
    qt_ctx_free(&ctx);
    return QT_OK;
}
