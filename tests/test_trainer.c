/* test_trainer.c - gradient accumulation is Hugging Face's: two micro-batches of one row give
 * the same loss, gradient norm and updated weights as one batch of both rows (the loss is
 * normalised by the step's total count of non-ignored targets, not per micro-batch), and
 * packing two rows into one sequence with document ids and restarting positions gives the
 * same loss as keeping them apart.
 *
 * The optimizer in backward (qt_train_opts.optimizer_in_bwd) is the normal step bit for bit:
 * on a random 4-layer llama with tied embeddings, in full, LoRA and QAT modes, with gradient
 * checkpointing off and on, with 32-bit and 8-bit AdamW, three steps each way (max_grad_norm
 * 0, one micro-batch) leave identical parameters and optimizer state after every step and log
 * the identical loss and gradient norm. It updates every tensor during the backward (the hook
 * fires for each), keeps no persistent gradient (the context holds exactly the gradients'
 * bytes less) and frees gradients as it goes: the gradient arena's high water stays under
 * half of all gradients together. It refuses accumulation and clipping. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qt_test.h"
#include "quant/safetensors.h"
#include "train/hf_model.h"
#include "train/trainer.h"

static void run(int mode, qt_step_stats *st, float *w_out) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_LORA, o.lora_r = 4, o.lora_alpha = 8, o.seed = 3;
    qt_err err = {0};
    QT_CHECK(qt_llama_load(&ctx, &m, "tests/fixtures/hf/llama", &o, &err) == 0, "%s", err.msg);
    /* B starts at zero: give it values so that A's gradient is not zero */
    for (int i = 0; i < m.n_train; i++)
        if (strstr(m.train[i]->name, "lora_B"))
            for (int64_t j = 0; j < qt_numel(m.train[i]); j++)
                qt_f32(m.train[i])[j] = 0.01f * (float)((j * 7 + i) % 11 - 5);
    qt_adamw opt;
    qt_adamw_init(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0.0, &err);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 1e-3};
    /* two rows of different lengths' worth of labels: row 0 has 3 ignored prompt tokens */
    int32_t ids[2][10], lab[2][10];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 10; t++) {
            ids[r][t] = 3 + (r * 37 + t * 11) % 250;
            lab[r][t] = (r == 0 && t < 3) ? -100 : ids[r][t];
        }
    if (mode == 0) { /* one micro-batch [2, 10] */
        qt_micro_batch mb = {.B = 2, .T = 10, .ids = &ids[0][0], .labels = &lab[0][0]};
        qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, st, &err);
    } else if (mode == 1) { /* two micro-batches [1, 10] */
        qt_micro_batch mb[2] = {{.B = 1, .T = 10, .ids = ids[0], .labels = lab[0]},
                                {.B = 1, .T = 10, .ids = ids[1], .labels = lab[1]}};
        qt_train_step(&ctx, &m, &opt, &sch, mb, 2, 1.0, st, &err);
    } else { /* both rows packed into one [1, 20] sequence */
        int32_t pos[20], doc[20];
        for (int i = 0; i < 20; i++) pos[i] = i % 10, doc[i] = i / 10;
        qt_micro_batch mb = {
            .B = 1, .T = 20, .ids = &ids[0][0], .labels = &lab[0][0], .pos = pos, .doc = doc};
        qt_train_step(&ctx, &m, &opt, &sch, &mb, 1, 1.0, st, &err);
    }
    int64_t off = 0;
    for (int i = 0; i < m.n_train; i++) {
        memcpy(w_out + off, m.train[i]->data, qt_nbytes(m.train[i]));
        off += qt_numel(m.train[i]);
    }
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

/* ---- optimizer in backward ------------------------------------------------------------ */

enum { BV = 96, BD = 64, BL = 4, BH = 4, BKV = 2, BHD = 16, BF = 128, BB = 2, BT = 16 };
enum { BSTEPS = 3 };
static char bdir[64];

/* a random llama, f32, tied embeddings: the embedding is used first and last (embedding and
 * lm_head), the case where a gradient lives through the whole backward */
static void write_bwd_model(void) {
    snprintf(bdir, sizeof bdir, "/tmp/qt_trainer_XXXXXX");
    QT_CHECK(mkdtemp(bdir), "mkdtemp");
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", bdir);
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot write %s", path);
    fprintf(f,
            "{\"model_type\": \"llama\", \"vocab_size\": %d, \"hidden_size\": %d, "
            "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
            "\"num_key_value_heads\": %d, \"head_dim\": %d, \"max_position_embeddings\": 64, "
            "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": true}\n",
            BV, BD, BF, BL, BH, BKV, BHD);
    fclose(f);
    enum { NT = 2 + 9 * BL };
    qt_st_entry e[NT];
    float *bufs[NT];
    char names[NT][96];
    const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                          "mlp.down_proj"};
    const int64_t lout[7] = {BH * BHD, BKV * BHD, BKV * BHD, BD, BF, BF, BD};
    const int64_t lin_in[7] = {BD, BD, BD, BH * BHD, BD, BD, BF};
    uint64_t rs = 7;
    for (int i = 0; i < NT; i++) {
        int64_t r, c = 0;
        if (i == 0) {
            snprintf(names[i], 96, "model.embed_tokens.weight"), r = BV, c = BD;
        } else if (i == 1) {
            snprintf(names[i], 96, "model.norm.weight"), r = BD;
        } else {
            int l = (i - 2) / 9, j = (i - 2) % 9;
            if (j < 7)
                snprintf(names[i], 96, "model.layers.%d.%s.weight", l, lin[j]), r = lout[j],
                                                                                c = lin_in[j];
            else
                snprintf(names[i], 96, "model.layers.%d.%s.weight", l,
                         j == 7 ? "input_layernorm" : "post_attention_layernorm"),
                    r = BD;
        }
        int64_t cnt = r * (c ? c : 1);
        bufs[i] = malloc((size_t)cnt * 4);
        for (int64_t k = 0; k < cnt; k++) {
            rs = rs * 6364136223846793005ull + 1442695040888963407ull;
            float u = (float)(rs >> 40) / 16777216.0f - 0.5f;
            bufs[i][k] = c ? u * 2.0f / sqrtf((float)c) : 1.0f + 0.2f * u;
        }
        e[i] = (qt_st_entry){.name = names[i], .dtype = QT_ST_F32, .ndim = c ? 2 : 1};
        e[i].data = bufs[i];
        e[i].shape[0] = r, e[i].shape[1] = c;
    }
    char msg[512];
    snprintf(path, sizeof path, "%s/model.safetensors", bdir);
    QT_CHECK(qt_st_save_file(path, e, NT, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    for (int i = 0; i < NT; i++) free(bufs[i]);
}

static void remove_bwd_model(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", bdir);
    remove(path);
    snprintf(path, sizeof path, "%s/model.safetensors", bdir);
    remove(path);
    rmdir(bdir);
}

typedef struct {
    qt_ctx ctx;
    qt_llama m;
    qt_adamw opt;
} bwd_side;

static void side_init(bwd_side *s, qt_train_mode mode, bool ckpt, int bits) {
    static const qt_fq_format int4g32 = {
        .kind = QT_FQ_INT, .bits = 4, .symmetric = 1, .granularity = QT_FQ_PER_GROUP, .group = 32};
    static const qt_fq_format int8tok = {
        .kind = QT_FQ_INT, .bits = 8, .symmetric = 1, .granularity = QT_FQ_PER_TOKEN};
    qt_err err = {0};
    QT_CHECK(qt_ctx_init(&s->ctx, QT_CPU, 5, &err) == 0, "%s", err.msg);
    qt_model_opts o = qt_model_opts_default();
    o.mode = mode, o.lora_r = 4, o.lora_alpha = 8, o.lora_targets = QT_PROJ_ALL, o.seed = 3;
    o.checkpoint = ckpt;
    if (mode == QT_MODE_QAT) o.qat_weight = &int4g32, o.qat_act = &int8tok;
    QT_CHECK(qt_llama_load(&s->ctx, &s->m, bdir, &o, &err) == 0, "%s", err.msg);
    for (int i = 0; i < s->m.n_train; i++) /* B starts at zero: A would get no gradient */
        if (strstr(s->m.train[i]->name, "lora_B"))
            for (int64_t j = 0; j < qt_numel(s->m.train[i]); j++)
                qt_f32(s->m.train[i])[j] = 0.01f * (float)((j * 7 + i) % 11 - 5);
    QT_CHECK(qt_adamw_init_bits(&s->opt, &s->ctx, s->m.train, s->m.train_decay, s->m.n_train, 0.9,
                                0.95, 1e-8, 0.1, bits, &err) == 0,
             "%s", err.msg);
}

static void side_free(bwd_side *s) {
    qt_adamw_free(&s->opt);
    qt_llama_free(&s->m);
    qt_ctx_free(&s->ctx);
}

static bool same_tensor(const qt_tensor *a, const qt_tensor *b) {
    if (!a || !b) return a == b;
    return qt_nbytes(a) == qt_nbytes(b) && !memcmp(a->data, b->data, qt_nbytes(a));
}

/* bytes of every trainable tensor's gradient: what the normal path keeps persistently, and the
 * same rounded up as the gradient arena rounds each allocation */
static void grad_bytes(const qt_llama *m, size_t *exact, size_t *arena) {
    *exact = 0, *arena = 0;
    for (int i = 0; i < m->n_train; i++) {
        size_t b = qt_nbytes(m->train[i]);
        *exact += b, *arena += (b + 255) / 256 * 256;
    }
}

static void test_in_bwd(const char *name, qt_train_mode mode, bool ckpt, int bits) {
    bwd_side a, b; /* a: the normal step, b: the optimizer in backward */
    side_init(&a, mode, ckpt, bits);
    side_init(&b, mode, ckpt, bits);
    qt_schedule sch = {.kind = QT_SCHED_LINEAR, .lr = 3e-3, .warmup = 1, .total = 10};
    qt_train_opts oa = {.max_grad_norm = 0}, ob = {.max_grad_norm = 0, .optimizer_in_bwd = true};
    qt_err err = {0};
    int32_t ids[BB * BT], lab[BB * BT];
    uint64_t rs = 11;
    int diff_steps = 0, early = 0;
    double norm0 = 0;
    for (int step = 0; step < BSTEPS; step++) {
        for (int k = 0; k < BB * BT; k++) {
            rs = rs * 6364136223846793005ull + 1442695040888963407ull;
            ids[k] = (int32_t)((rs >> 33) % BV);
            lab[k] = k % BT < 3 ? -100 : ids[k]; /* a prompt of 3 ignored tokens per row */
        }
        qt_micro_batch mb = {.B = BB, .T = BT, .ids = ids, .labels = lab};
        qt_step_stats sa, sb;
        int ra = qt_train_step_opts(&a.ctx, &a.m, &a.opt, &sch, &mb, 1, &oa, &sa, &err);
        int rb = qt_train_step_opts(&b.ctx, &b.m, &b.opt, &sch, &mb, 1, &ob, &sb, &err);
        QT_EXPECT(ra == 0 && rb == 0, "%s: step %d failed: %s", name, step, err.msg);
        QT_EXPECT(sa.loss == sb.loss && sa.lr == sb.lr && sa.tokens == sb.tokens,
                  "%s step %d: loss %.9g vs %.9g, lr %g vs %g", name, step, sa.loss, sb.loss, sa.lr,
                  sb.lr);
        /* the same per-tensor sums combined in the same (slot) order: equal, not just close */
        QT_EXPECT(sa.grad_norm == sb.grad_norm && sa.grad_norm > 0,
                  "%s step %d: gradient norm %.17g (normal) vs %.17g (in backward)", name, step,
                  sa.grad_norm, sb.grad_norm);
        if (step == 0) norm0 = sa.grad_norm;
        /* every tensor's last use is inside the backward: the hook updated all of them */
        QT_EXPECT(sb.updated_early == b.m.n_train && sa.updated_early == 0,
                  "%s step %d: %d of %d tensors updated during the backward", name, step,
                  sb.updated_early, b.m.n_train);
        early = sb.updated_early;
        QT_EXPECT(a.opt.step == b.opt.step && b.opt.step == step + 1, "%s: step counts %lld %lld",
                  name, (long long)a.opt.step, (long long)b.opt.step);
        int bad = 0;
        for (int i = 0; i < a.m.n_train; i++) {
            const qt_adamw_slot *x = &a.opt.slot[i], *y = &b.opt.slot[i];
            bool ok = same_tensor(x->param, y->param) && same_tensor(x->master, y->master) &&
                      same_tensor(x->m, y->m) && same_tensor(x->v, y->v) &&
                      same_tensor(x->m8, y->m8) && same_tensor(x->v8, y->v8) &&
                      same_tensor(x->m_absmax, y->m_absmax) &&
                      same_tensor(x->v_absmax, y->v_absmax);
            if (!ok && bad++ < 3)
                QT_EXPECT(0, "%s step %d: '%s' or its AdamW state differs", name, step,
                          x->param->name);
        }
        diff_steps += bad > 0;
        /* nothing of the gradients outlives the step */
        int held = 0;
        for (int i = 0; i < b.m.n_train; i++) held += b.m.train[i]->grad != NULL;
        QT_EXPECT(held == 0 && b.ctx.n_grad_live == 0 && b.ctx.grad_ready == NULL,
                  "%s: %d gradients held after the step, %d live", name, held, b.ctx.n_grad_live);
    }
    size_t exact, arena;
    grad_bytes(&b.m, &exact, &arena);
    QT_EXPECT(a.ctx.persist_bytes - b.ctx.persist_bytes == exact,
              "%s: the normal run holds %zu persistent bytes more, its gradients are %zu", name,
              a.ctx.persist_bytes - b.ctx.persist_bytes, exact);
    QT_EXPECT(a.ctx.grad_arena.high_water == 0, "%s: the normal run used the gradient arena", name);
    /* freed as consumed: at most the tied embedding's gradient and about one layer's live */
    QT_EXPECT(b.ctx.grad_arena.high_water > 0 && 2 * b.ctx.grad_arena.high_water < arena,
              "%s: gradient arena high water %zu bytes, all gradients together %zu", name,
              b.ctx.grad_arena.high_water, arena);
    printf("in bwd %-16s %d steps bit-identical (norm %.6g), %2d/%2d tensors updated in "
           "backward, gradients: %6zu bytes at most live of %7zu\n",
           name, BSTEPS - diff_steps, norm0, early, b.m.n_train, b.ctx.grad_arena.high_water,
           arena);
    side_free(&a), side_free(&b);
}

static void test_in_bwd_refusals(void) {
    bwd_side s;
    side_init(&s, QT_MODE_FULL, false, 32);
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 1e-3};
    int32_t ids[BT], lab[BT];
    for (int k = 0; k < BT; k++) ids[k] = lab[k] = k % BV;
    qt_micro_batch mb[2] = {{.B = 1, .T = BT, .ids = ids, .labels = lab},
                            {.B = 1, .T = BT, .ids = ids, .labels = lab}};
    qt_step_stats st;
    qt_err err = {0};
    qt_train_opts o = {.max_grad_norm = 0, .optimizer_in_bwd = true};
    int rc = qt_train_step_opts(&s.ctx, &s.m, &s.opt, &sch, mb, 2, &o, &st, &err);
    QT_EXPECT(rc == QT_ERR_ARG && strstr(err.msg, "2 micro-batches"), "accumulation: %d %s", rc,
              err.msg);
    o.max_grad_norm = 1.0;
    rc = qt_train_step_opts(&s.ctx, &s.m, &s.opt, &sch, mb, 1, &o, &st, &err);
    QT_EXPECT(rc == QT_ERR_ARG && strstr(err.msg, "max_grad_norm 1"), "clipping: %d %s", rc,
              err.msg);
    QT_EXPECT(s.opt.step == 0, "a refused step moved the optimizer");
    side_free(&s);
}

int main(void) {
    write_bwd_model();
    const struct {
        const char *name;
        qt_train_mode mode;
    } modes[] = {{"full", QT_MODE_FULL}, {"lora", QT_MODE_LORA}, {"qat", QT_MODE_QAT}};
    for (int i = 0; i < 3; i++)
        for (int ck = 0; ck < 2; ck++)
            for (int eight = 0; eight < 2; eight++) {
                char nm[64];
                snprintf(nm, sizeof nm, "%s%s%s", modes[i].name, ck ? "+ckpt" : "",
                         eight ? "+8bit" : "");
                test_in_bwd(nm, modes[i].mode, ck, eight ? 8 : 32);
            }
    test_in_bwd_refusals();
    remove_bwd_model();

    static float w[3][20000];
    qt_step_stats st[3];
    for (int mode = 0; mode < 3; mode++) run(mode, &st[mode], w[mode]);
    printf("loss: batch %.7f, accumulated %.7f, packed %.7f; grad norm %.6g %.6g %.6g\n",
           st[0].loss, st[1].loss, st[2].loss, st[0].grad_norm, st[1].grad_norm, st[2].grad_norm);
    QT_EXPECT(st[0].tokens == 16 && st[1].tokens == 16 && st[2].tokens == 16,
              "counted targets: %lld %lld %lld (want 7 + 9)", (long long)st[0].tokens,
              (long long)st[1].tokens, (long long)st[2].tokens);
    for (int mode = 1; mode < 3; mode++) {
        QT_EXPECT_CLOSE(st[mode].loss, st[0].loss, 0, 1e-6, "loss equals the one-batch loss");
        QT_EXPECT_CLOSE(st[mode].grad_norm, st[0].grad_norm, 0, 1e-5, "gradient norm");
        double e = 0;
        for (int i = 0; i < 20000; i++) e = fmax(e, fabs(w[mode][i] - w[0][i]));
        QT_EXPECT(e < 1e-6, "mode %d: weights after the step differ by %.3g", mode, e);
    }
    return qt_test_finish("trainer");
}
