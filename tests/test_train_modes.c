/* test_train_modes.c - every training mode trains, on the CPU reference path, end to end through
 * the Hugging Face loader (train/hf_model.c), the model (train/llama.c) and AdamW.
 *
 * The model: a random llama written here as bf16 safetensors (hidden 64, 2 layers, 4 heads /
 * 2 kv heads of 16, ffn 128, vocab 64, untied). The task: a fixed random cyclic order of the 64
 * tokens; every sequence is a 32-token window of that cycle starting at a random token, so the
 * next token is a fixed function of the current one (a pattern repeating with period 64). Each
 * mode trains STEPS AdamW steps on the same batches (BATCH x 32 tokens, same seeds). It proves:
 *   full, lora (r 8, α 16, all-linear), qlora (NF4 + double quant), qat (full weights, int4
 *   symmetric group-32 fake quant, int8 per-token activations) and qat + LoRA (Q4_0 on the
 *   merged weight) all learn: the mean of the last 5 losses is below LOSS_DROP (0.25) x the
 *   first loss (measured: 0.004 to 0.05);
 *   QLoRA's final loss (mean of the last 5) is within QLORA_VS_LORA (5 %, relative) of
 *   LoRA's (measured 2.7 %);
 *   QLoRA keeps its frozen weights as NF4: the model's persistent bytes equal exactly the NF4
 *   pieces (~0.52 B/param) + the f32 non-linear tensors + the adapters, below the f32 size of
 *   the linear weights alone; and a forward + backward step takes at most one linear weight's
 *   f32 dequantization scratch more arena memory than the same step in LoRA mode (whose base
 *   weights are persistent, so its arena holds activations only), under a bound computed from
 *   the shapes;
 *   lora, qlora and qat + LoRA: only the LoRA pairs are trainable and every base tensor is
 *   bitwise unchanged after training; full and qat: every weight is trainable and changes. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "qt_test.h"
#include "quant/half.h"
#include "quant/safetensors.h"
#include "train/hf_model.h"
#include "train/optim.h"

enum { V = 64, D = 64, L = 2, H = 4, HKV = 2, HD = 16, F = 128 };
enum { T = 32, BATCH = 4, STEPS = 40, LAST = 5 };
#define LOSS_DROP     0.25 /* mean of the last 5 losses < 0.25 x the first, in every mode */
#define QLORA_VS_LORA 0.05 /* |qlora - lora| <= 5 % of lora, on the mean of the last 5 */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(uint64_t *s) {
    return ((splitmix(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double gauss(uint64_t *s) {
    return sqrt(-2.0 * log(uniform(s))) * cos(6.283185307179586 * uniform(s));
}

/* ---- the model directory ----------------------------------------------------------------- */

static char dir[64];
static qt_device g_dev = QT_CPU; /* --device cuda: the same runs with the trainer on the GPU */
static qt_ctx *g_ctx;            /* the context of the run being snapshotted */

static void write_model(void) {
    snprintf(dir, sizeof dir, "/tmp/qt_train_modes_XXXXXX");
    QT_CHECK(mkdtemp(dir), "mkdtemp");
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot write %s", path);
    fprintf(f,
            "{\"model_type\": \"llama\", \"vocab_size\": %d, \"hidden_size\": %d, "
            "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
            "\"num_key_value_heads\": %d, \"head_dim\": %d, \"max_position_embeddings\": 128, "
            "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false}\n",
            V, D, F, L, H, HKV, HD);
    fclose(f);

    /* embeddings N(0, 1); linear weights N(0, 1/in); norms 1 + N(0, 0.1²); lm_head N(0, 1/D):
     * logits start at unit scale, so the initial loss is about ln 64 + 0.5 */
    qt_st_entry e[3 + 9 * L];
    uint16_t *bufs[3 + 9 * L];
    char names[3 + 9 * L][96];
    int n = 0;
    uint64_t rng = 2024;
    const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                          "mlp.down_proj"};
    const int64_t lout[7] = {H * HD, HKV * HD, HKV * HD, D, F, F, D};
    const int64_t lin_in[7] = {D, D, D, H * HD, D, D, F};
    for (int i = 0; i < 3 + 9 * L; i++) {
        int64_t r, c = 0;
        double std, mean = 0;
        if (i == 0)
            snprintf(names[i], 96, "model.embed_tokens.weight"), r = V, c = D, std = 1;
        else if (i == 1)
            snprintf(names[i], 96, "lm_head.weight"), r = V, c = D, std = 1.0 / 8;
        else if (i == 2)
            snprintf(names[i], 96, "model.norm.weight"), r = D, std = 0.1, mean = 1;
        else {
            int l = (i - 3) / 9, j = (i - 3) % 9;
            if (j < 7) {
                snprintf(names[i], 96, "model.layers.%d.%s.weight", l, lin[j]);
                r = lout[j], c = lin_in[j], std = 1.0 / sqrt((double)c);
            } else {
                snprintf(names[i], 96, "model.layers.%d.%s.weight", l,
                         j == 7 ? "input_layernorm" : "post_attention_layernorm");
                r = D, std = 0.1, mean = 1;
            }
        }
        int64_t cnt = r * (c ? c : 1);
        bufs[i] = malloc((size_t)cnt * 2);
        for (int64_t k = 0; k < cnt; k++)
            bufs[i][k] = qt_f32_to_bf16((float)(mean + std * gauss(&rng)));
        e[n] = (qt_st_entry){
            .name = names[i], .dtype = QT_ST_BF16, .ndim = c ? 2 : 1, .data = bufs[i]};
        e[n].shape[0] = r, e[n].shape[1] = c;
        n++;
    }
    char msg[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    QT_CHECK(qt_st_save_file(path, e, n, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

static void remove_model(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    remove(path);
    rmdir(dir);
}

/* ---- the data: windows of a fixed cyclic order of the vocabulary ------------------------- */

static int32_t ids_all[STEPS][BATCH * T], tgt_all[STEPS][BATCH * T];

static void make_data(void) {
    int32_t order[V], next[V];
    uint64_t rng = 7;
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = V - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)(splitmix(&rng) % (uint64_t)(i + 1));
        int32_t t = order[i];
        order[i] = order[j], order[j] = t;
    }
    for (int i = 0; i < V; i++) next[order[i]] = order[(i + 1) % V];
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < BATCH; b++) {
            int32_t tok = (int32_t)(splitmix(&rng) % V);
            for (int t = 0; t < T; t++) ids_all[s][b * T + t] = tok, tok = next[tok];
        }
        qt_llama_shift_labels(ids_all[s], tgt_all[s], BATCH, T);
    }
}

/* ---- one training run -------------------------------------------------------------------- */

typedef struct {
    const char *name;
    qt_train_mode mode;
    bool qat_lora;
    const qt_fq_format *wq, *aq;
    double lr;
} mode_spec;

typedef struct {
    float loss[STEPS];
    double first, last;   /* loss[0], mean of the last LAST */
    size_t persist_model; /* ctx.persist_bytes right after loading */
    size_t arena_step;    /* data arena high water of the first forward + backward */
    size_t linear_params, linear_f32_max, linear_nf4_bytes, other_bytes, lora_bytes;
    int n_train;
} run_result;

static void each_count(qt_linear *l, void *user) {
    run_result *r = user;
    int64_t n = l->out * l->in;
    r->linear_params += (size_t)n;
    if ((size_t)n * 4 > r->linear_f32_max) r->linear_f32_max = (size_t)n * 4;
    if (l->is_nf4) {
        int64_t nb = (n + l->nf4.blocksize - 1) / l->nf4.blocksize;
        /* codes + 8-bit absmax codes + fp32 second-level absmax */
        r->linear_nf4_bytes += (size_t)((n + 1) / 2 + nb + (nb + 255) / 256 * 4);
    }
    if (l->lora_a) r->lora_bytes += qt_nbytes(l->lora_a) + qt_nbytes(l->lora_b);
}

/* every persistent tensor of the model that is not a LoRA adapter (for the bitwise check) */
typedef struct {
    const qt_tensor *t[64];
    void *copy[64];
    int n;
} base_snapshot;

static void snap_add(base_snapshot *s, const qt_tensor *t) {
    if (!t) return;
    for (int i = 0; i < s->n; i++)
        if (s->t[i] == t) return;
    QT_CHECK(s->n < 64, "snapshot full");
    s->t[s->n] = t;
    s->copy[s->n] = malloc(qt_nbytes(t));
    qt_tensor_download(g_ctx, t, s->copy[s->n]);
    s->n++;
}
static void snap_linear(qt_linear *l, void *user) {
    base_snapshot *s = user;
    snap_add(s, l->w);
    snap_add(s, l->bias);
    snap_add(s, l->nf4.codes);
    snap_add(s, l->nf4.absmax);
    snap_add(s, l->nf4.absmax_q);
    snap_add(s, l->nf4.nested_absmax);
}
static void snapshot(base_snapshot *s, qt_llama *m) {
    s->n = 0;
    snap_add(s, m->embed);
    snap_add(s, m->lm_head);
    snap_add(s, m->norm);
    for (int i = 0; i < L; i++)
        snap_add(s, m->layer[i].in_norm), snap_add(s, m->layer[i].post_norm);
    qt_llama_each_linear(m, snap_linear, s);
}
/* how many snapshotted tensors changed; frees the copies */
static int snap_changed(base_snapshot *s) {
    int changed = 0;
    for (int i = 0; i < s->n; i++) {
        void *now = malloc(qt_nbytes(s->t[i]));
        qt_tensor_download(g_ctx, s->t[i], now);
        changed += memcmp(s->copy[i], now, qt_nbytes(s->t[i])) != 0;
        free(s->copy[i]), free(now);
    }
    return changed;
}

static bool is_trainable(qt_tensor **params, int n, const qt_tensor *t) {
    for (int i = 0; i < n; i++)
        if (params[i] == t) return true;
    return false;
}

typedef struct {
    qt_tensor **params;
    int n, missing, wrong_fmt;
    bool want_lora, want_nf4;
    const qt_fq_format *wq, *aq;
} lin_check;

static void check_linear(qt_linear *l, void *user) {
    lin_check *c = user;
    if (c->want_lora) {
        if (!l->lora_a || !is_trainable(c->params, c->n, l->lora_a) ||
            !is_trainable(c->params, c->n, l->lora_b) || !l->lora_a->requires_grad ||
            !l->lora_b->requires_grad)
            c->missing++;
        if (l->w && (l->w->requires_grad || is_trainable(c->params, c->n, l->w))) c->missing++;
    } else {
        if (l->lora_a || !l->w || !l->w->requires_grad || !is_trainable(c->params, c->n, l->w))
            c->missing++;
    }
    if (c->want_nf4 != l->is_nf4 || (c->want_nf4 && l->w)) c->wrong_fmt++;
    /* the model keeps its own copies of the formats: compare what they say */
    bool wq_ok = (!l->wq && !c->wq) || (l->wq && c->wq && !memcmp(l->wq, c->wq, sizeof *c->wq));
    bool aq_ok = (!l->aq && !c->aq) || (l->aq && c->aq && !memcmp(l->aq, c->aq, sizeof *c->aq));
    if (!wq_ok || !aq_ok) c->wrong_fmt++;
}

static void run_mode(const mode_spec *ms, run_result *r) {
    memset(r, 0, sizeof *r);
    qt_ctx ctx;
    qt_ctx_init(&ctx, g_dev, 11, NULL);
    g_ctx = &ctx;
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.compute = qt_device_compute_dtype(g_dev);
    o.mode = ms->mode;
    o.lora_r = 8, o.lora_alpha = 16, o.lora_dropout = 0, o.lora_targets = QT_PROJ_ALL;
    o.nf4_blocksize = 64, o.nf4_double_quant = true;
    o.qat_lora = ms->qat_lora, o.qat_weight = ms->wq, o.qat_act = ms->aq;
    o.checkpoint = true, o.seed = 42;
    qt_err err = {0};
    int rc = qt_llama_load(&ctx, &m, dir, &o, &err);
    QT_EXPECT(rc == 0, "%s: load: %s", ms->name, err.msg);
    if (rc) {
        qt_ctx_free(&ctx);
        return;
    }
    r->persist_model = ctx.persist_bytes;
    qt_llama_each_linear(&m, each_count, r);
    r->other_bytes =
        qt_nbytes(m.embed) + qt_nbytes(m.lm_head) + qt_nbytes(m.norm) + qt_nbytes(m.inv_freq);
    for (int i = 0; i < L; i++)
        r->other_bytes += qt_nbytes(m.layer[i].in_norm) + qt_nbytes(m.layer[i].post_norm);

    qt_tensor **params;
    bool *decay;
    int np = qt_llama_trainable(&m, &params, &decay);
    r->n_train = np;
    bool lora = ms->mode == QT_MODE_LORA || ms->mode == QT_MODE_QLORA || ms->qat_lora;
    /* what is trainable */
    lin_check lc = {.params = params,
                    .n = np,
                    .want_lora = lora,
                    .want_nf4 = ms->mode == QT_MODE_QLORA,
                    .wq = ms->wq,
                    .aq = ms->aq};
    qt_llama_each_linear(&m, check_linear, &lc);
    QT_EXPECT(lc.missing == 0, "%s: %d linear layers trainable the wrong way", ms->name,
              lc.missing);
    QT_EXPECT(lc.wrong_fmt == 0, "%s: %d linear layers with the wrong base format", ms->name,
              lc.wrong_fmt);
    const qt_tensor *others[3 + 2 * L] = {m.embed, m.lm_head, m.norm};
    for (int i = 0; i < L; i++)
        others[3 + 2 * i] = m.layer[i].in_norm, others[4 + 2 * i] = m.layer[i].post_norm;
    int others_trainable = 0;
    for (int i = 0; i < 3 + 2 * L; i++)
        others_trainable += is_trainable(params, np, others[i]) && others[i]->requires_grad;
    if (lora) {
        QT_EXPECT(np == 2 * 7 * L, "%s: %d trainable tensors, want the %d LoRA tensors", ms->name,
                  np, 2 * 7 * L);
        QT_EXPECT(others_trainable == 0, "%s: %d non-LoRA tensors trainable", ms->name,
                  others_trainable);
    } else {
        QT_EXPECT(np == 3 + 2 * L + 7 * L, "%s: %d trainable tensors, want every weight (%d)",
                  ms->name, np, 3 + 2 * L + 7 * L);
        QT_EXPECT(others_trainable == 3 + 2 * L, "%s: %d of %d non-linear weights trainable",
                  ms->name, others_trainable, 3 + 2 * L);
    }
    base_snapshot snap;
    snapshot(&snap, &m);

    qt_adamw opt;
    rc = qt_adamw_init(&opt, &ctx, params, decay, np, 0.9, 0.999, 1e-8, 0.0, &err);
    QT_EXPECT(rc == 0, "%s: adamw: %s", ms->name, err.msg);
    qt_schedule sch = {
        .kind = QT_SCHED_CONSTANT_WITH_WARMUP, .lr = ms->lr, .warmup = 3, .total = STEPS};
    for (int i = 0; i < np; i++) qt_grad_zero(params[i]);
    int64_t nt = BATCH * T;
    for (int s = 0; s < STEPS; s++) {
        qt_step_reset(&ctx);
        if (s == 0) ctx.data.high_water = 0;
        qt_tensor *ids = qt_tensor_new(&ctx, QT_I32, 2, (int64_t[]){BATCH, T});
        qt_tensor *tgt = qt_tensor_new(&ctx, QT_I32, 1, &nt);
        qt_tensor_upload(&ctx, ids, ids_all[s]);
        qt_tensor_upload(&ctx, tgt, tgt_all[s]);
        qt_tensor *loss = qt_llama_loss(&ctx, &m, ids, tgt, NULL, NULL, 0);
        r->loss[s] = qt_tensor_get(&ctx, loss, 0);
        qt_backward(&ctx, loss);
        if (s == 0) r->arena_step = ctx.data.high_water;
        qt_grad_clip(&ctx, params, np, 1.0);
        qt_adamw_step(&opt, &ctx, qt_schedule_lr(&sch, s));
    }
    r->first = r->loss[0];
    for (int s = STEPS - LAST; s < STEPS; s++) r->last += r->loss[s] / LAST;

    int changed = snap_changed(&snap);
    if (lora)
        QT_EXPECT(changed == 0, "%s: %d frozen base tensors changed in training", ms->name,
                  changed);
    else
        QT_EXPECT(changed == snap.n, "%s: only %d of %d weights changed in training", ms->name,
                  changed, snap.n);
    printf("%-9s lr %.0e  %2d trainable  loss %.4f -> %.4f (last-5 mean %.4f, %.3f x first)  "
           "base tensors changed %d/%d\n",
           ms->name, ms->lr, np, r->loss[0], r->loss[STEPS - 1], r->last, r->last / r->first,
           changed, snap.n);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--device")) {
        qt_err err = {0};
        if (qt_device_pick(argv[2], &g_dev, &err) != 0) return qt_test_skip("train_modes", err.msg);
        printf("train_modes: on %s (%s compute)\n", qt_device_name(g_dev),
               qt_dtype_name(qt_device_compute_dtype(g_dev)));
    }
    write_model();
    make_data();
    const qt_fq_format int4g32 = {
        .kind = QT_FQ_INT, .bits = 4, .symmetric = 1, .granularity = QT_FQ_PER_GROUP, .group = 32};
    const qt_fq_format int8tok = {
        .kind = QT_FQ_INT, .bits = 8, .symmetric = 1, .granularity = QT_FQ_PER_TOKEN};
    const qt_fq_format q4_0 = {.kind = QT_FQ_Q4_0};
    enum { FULL, LORA, QLORA, QAT, QATLORA, NMODES };
    const mode_spec modes[NMODES] = {
        {"full", QT_MODE_FULL, false, NULL, NULL, 3e-3},
        {"lora", QT_MODE_LORA, false, NULL, NULL, 1e-2},
        {"qlora", QT_MODE_QLORA, false, NULL, NULL, 1e-2},
        {"qat", QT_MODE_QAT, false, &int4g32, &int8tok, 3e-3},
        {"qat+lora", QT_MODE_QAT, true, &q4_0, NULL, 1e-2},
    };
    run_result res[NMODES];
    for (int i = 0; i < NMODES; i++) {
        run_mode(&modes[i], &res[i]);
        QT_EXPECT(res[i].last < LOSS_DROP * res[i].first && isfinite(res[i].last),
                  "%s: loss did not fall: first %.4f, mean of last %d %.4f (want < %.2f x first)",
                  modes[i].name, res[i].first, LAST, res[i].last, LOSS_DROP);
    }

    /* QLoRA vs LoRA: same data, seed, steps; only the base differs (NF4 vs bf16 values) */
    double rel = fabs(res[QLORA].last - res[LORA].last) / res[LORA].last;
    QT_EXPECT(rel <= QLORA_VS_LORA,
              "qlora final loss %.4f is %.1f %% from lora's %.4f (max %.0f %%)", res[QLORA].last,
              100 * rel, res[LORA].last, 100 * QLORA_VS_LORA);
    printf("qlora vs lora: final (last-5 mean) %.4f vs %.4f: %.2f %% apart (max %.0f %%); "
           "first step %.4f vs %.4f\n",
           res[QLORA].last, res[LORA].last, 100 * rel, 100 * QLORA_VS_LORA, res[QLORA].first,
           res[LORA].first);

    if (g_dev != QT_CPU) { /* the byte counts below are the CPU's f32 layout */
        remove_model();
        return qt_test_finish("train_modes");
    }
    /* QLoRA memory. Persistent: the NF4 pieces of every linear weight, the f32 non-linear
     * tensors (embeddings, lm_head, norms, inv_freq) and the f32 adapters; nothing else. */
    run_result *q = &res[QLORA], *lo = &res[LORA];
    size_t lin_f32 = q->linear_params * 4;
    QT_EXPECT(q->persist_model == q->linear_nf4_bytes + q->other_bytes + q->lora_bytes,
              "qlora persistent bytes %zu != NF4 %zu + non-linear %zu + adapters %zu",
              q->persist_model, q->linear_nf4_bytes, q->other_bytes, q->lora_bytes);
    QT_EXPECT(q->persist_model < lin_f32,
              "qlora keeps %zu persistent bytes, not below the f32 linear weights' %zu",
              q->persist_model, lin_f32);
    QT_EXPECT(lo->persist_model == lin_f32 + lo->other_bytes + lo->lora_bytes,
              "lora persistent bytes %zu != f32 linear %zu + non-linear %zu + adapters %zu",
              lo->persist_model, lin_f32, lo->other_bytes, lo->lora_bytes);
    double bpp = (double)q->linear_nf4_bytes / (double)q->linear_params;
    QT_EXPECT(bpp < 0.53, "NF4 + double quant costs %.4f bytes/param (want ~0.516)", bpp);
    printf("persistent model bytes: qlora %zu (linear weights as NF4: %zu = %.4f B/param; "
           "non-linear f32 %zu; adapters %zu), lora %zu (linear f32 %zu)\n",
           q->persist_model, q->linear_nf4_bytes, bpp, q->other_bytes, q->lora_bytes,
           lo->persist_model, lin_f32);

    /* QLoRA step memory. The step arenas (data + the checkpoint span arena; blocks rounded
     * up to 256 bytes) of a forward + backward hold activations and their gradients. LoRA's
     * hold nothing else, its frozen base being persistent f32, so LoRA's high water is the
     * activation figure of this very graph. QLoRA runs the same graph; its only extra is the
     * NF4 op's scratch: one dequantized f32 weight [out, in] plus its f32 first-level absmax
     * [out*in/64], rewound before the op returns, so at most one layer's worth exists at once:
     *     qlora <= lora + max over linears (4*out*in + 4*out*in/64) + 2 x 256 alignment.
     * Dequantizing every frozen weight of a block (or keeping the scratch alive) would add up
     * to the sum over the 14 linears instead, far above that.
     *
     * The activation bound from the shapes (checkpointing on, lora_dropout 0 so no dropout
     * copy), in f32 per token:
     *   head  = (L + 2) D + V + 4: embedding output, the L block outputs, the final norm, the
     *           logits, and ids / positions / targets / cross-entropy's row statistics;
     *   block = 3 H hd + 3 Hkv hd + H (q, rope(q), attention output; k, rope(k), v; softmax
     *           statistics) + 6 D (2 norms, o_proj, residual, down_proj, residual) + 3 F (gate,
     *           up, swiglu) + per linear r + 3 out (x A^T, (x A^T) B^T, its scaling, the sum).
     * A block's first forward lives in the span arena (measured: exactly `block`, to the
     * alignment); backward replays one block in the data arena next to the head, the head's
     * gradients, the replayed activations, their gradients and the backward kernels'
     * temporaries (measured 1.07x (lora) to 1.2x (full) the activations; 2x allowed here):
     *     activations <= 4 B x tokens x (2 head + 4 block) + 512 tensors x 256 B alignment.
     * The same formula without the LoRA terms bounds full fine-tuning's arena. */
    size_t wmax_scratch = q->linear_f32_max + q->linear_f32_max / 64 + 2 * 256;
    QT_EXPECT(q->arena_step <= lo->arena_step + wmax_scratch,
              "qlora step arena %zu > lora's %zu + one f32 weight scratch %zu", q->arena_step,
              lo->arena_step, wmax_scratch);
    const size_t ntok = BATCH * T, r8 = 8, louts[7] = {H * HD, HKV * HD, HKV * HD, D, F, F, D};
    size_t lora_tok = 0;
    for (int j = 0; j < 7; j++) lora_tok += r8 + 3 * louts[j];
    size_t head_tok = (L + 2) * D + V + 4;
    size_t block_tok = 3 * H * HD + 3 * HKV * HD + H + 6 * D + 3 * F;
    size_t full_bound = 4 * ntok * (2 * head_tok + 4 * block_tok) + 512 * 256;
    size_t act_bound = 4 * ntok * (2 * head_tok + 4 * (block_tok + lora_tok)) + 512 * 256;
    QT_EXPECT(res[FULL].arena_step <= full_bound, "full step arena %zu is above the bound %zu",
              res[FULL].arena_step, full_bound);
    QT_EXPECT(lo->arena_step <= act_bound, "lora step arena %zu is above the shape bound %zu",
              lo->arena_step, act_bound);
    QT_EXPECT(q->arena_step <= act_bound + wmax_scratch,
              "qlora step arena %zu is above activations %zu + one f32 weight %zu", q->arena_step,
              act_bound, wmax_scratch);
    printf("step arena (forward + backward, checkpointing on): qlora %zu, lora %zu "
           "(+%zd; one f32 weight scratch <= %zu; all f32 linear weights %zu); "
           "bounds from the shapes: activations %zu, + one weight %zu; full fine-tuning %zu vs "
           "%zu\n",
           q->arena_step, lo->arena_step, (ssize_t)(q->arena_step - lo->arena_step), wmax_scratch,
           lin_f32, act_bound, act_bound + wmax_scratch, res[FULL].arena_step, full_bound);
    for (int i = 0; i < NMODES; i++)
        printf("  %-9s persistent model bytes %7zu, step arena %8zu\n", modes[i].name,
               res[i].persist_model, res[i].arena_step);
    remove_model();
    return qt_test_finish("train_modes");
}
