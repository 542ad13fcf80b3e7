/* test_gpu_train.c - the trainer's GPU path against the CPU reference (label gpu).
 *
 *   adamw   the multi-tensor AdamW, global norm and clipping kernels (cuda/optim.cu) against
 *           train/optim.c's CPU loop on identical inputs: f32 tensors (one spanning several
 *           chunks), a bf16 tensor with an fp32 master, decay on and off, three steps with
 *           clipping active: masters, moments and the bf16 copy bit-identical, norms within
 *           1e-6 relative (the GPU sums squares in a different order, in double).
 *   step    one forward + backward of the llama fixture (GQA, llama3 RoPE) in every mode, on a
 *           CPU context (f32) and a CUDA context (bf16 activations and frozen weights, f32
 *           trainable tensors): the loss, and every trainable tensor's gradient by relative
 *           L2 error. LoRA B starts non-zero (the same random values on both) so A's gradient
 *           is not trivially zero. Tolerances: loss 1 % relative; gradients 5 % (QAT 10 %:
 *           bf16 activations move some values across quantization steps). The measured
 *           errors are printed.
 *   determinism  the same GPU step twice: bit-identical loss and gradients.
 *   in bwd  the optimizer in backward on the GPU against the normal step on the GPU: the
 *           per-tensor entry points (qt_adamw_bwd_*, table-free kernels, tensors of several
 *           chunks, a bf16 parameter with its master) on the adamw tensors, and whole training
 *           steps of the llama fixture (full, LoRA, QAT; 32- and 8-bit AdamW; checkpointing
 *           on and off), three steps each: parameters and optimizer state bit-identical after
 *           every step, the logged gradient norm equal.
 * The mode runs that prove every mode *learns* on the GPU are test_train_modes --device cuda
 * (ctest gpu_train_modes); exact resume on the GPU is test_train_job --device cuda. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "qt_rand.h"
#include "qt_test.h"
#include "quant/half.h"
#include "train/hf_model.h"
#include "train/optim.h"
#include "train/trainer.h"

#ifndef QT_HAVE_CUDA

int main(void) {
    return qt_test_skip("gpu_train", "this build has no CUDA backend (QTUNE_CUDA=OFF) (no GPU)");
}

#else

#define MODEL "tests/fixtures/hf/llama"

static uint64_t rng_state = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---- adamw --------------------------------------------------------------------------------- */

/* with 8-bit AdamW, tensors 1 and 3 (>= 4096 elements; 3 a bf16 parameter with its master) keep
 * 8-bit state, 0 and 2 fp32 moments (bitsandbytes' 32-bit form). Sizes are not multiples of 256;
 * tensor 1 needs more 8-bit blocks than the kernel's grid (132 SMs x 8), so its grid-stride
 * loop runs too. */
enum { NP = 4 };
static const int64_t adam_n[NP] = {1000, 600001, 300, 5000};
static const qt_dtype adam_dt[NP] = {QT_F32, QT_F32, QT_BF16, QT_BF16};
static const bool adam_decay[NP] = {true, false, true, true};

typedef struct {
    qt_ctx ctx;
    qt_tensor *p[NP];
    qt_adamw opt;
} adam_side;

static void adam_side_init(adam_side *s, qt_device dev, float *const init[NP], int bits) {
    qt_err err = {0};
    QT_CHECK(qt_ctx_init(&s->ctx, dev, 1, &err) == 0, "%s", err.msg);
    for (int i = 0; i < NP; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "p%d", i);
        s->p[i] = qt_param_new(&s->ctx, adam_dt[i], 1, &adam_n[i], true, nm);
        if (adam_dt[i] == QT_F32) {
            qt_tensor_upload(&s->ctx, s->p[i], init[i]);
        } else {
            uint16_t *h = malloc((size_t)adam_n[i] * 2);
            for (int64_t k = 0; k < adam_n[i]; k++) h[k] = qt_f32_to_bf16(init[i][k]);
            qt_tensor_upload(&s->ctx, s->p[i], h);
            free(h);
        }
    }
    QT_CHECK(qt_adamw_init_bits(&s->opt, &s->ctx, s->p, adam_decay, NP, 0.9, 0.999, 1e-8, 0.1, bits,
                                &err) == 0,
             "%s", err.msg);
}

/* sets every gradient from host f32 values (rounded for the bf16 tensor) */
static void adam_side_grads(adam_side *s, float *const g[NP]) {
    for (int i = 0; i < NP; i++) {
        float beta;
        qt_tensor *gt = qt_grad_acquire(&s->ctx, s->p[i], false, &beta);
        if (adam_dt[i] == QT_F32) {
            qt_tensor_upload(&s->ctx, gt, g[i]);
        } else {
            uint16_t *h = malloc((size_t)adam_n[i] * 2);
            for (int64_t k = 0; k < adam_n[i]; k++) h[k] = qt_f32_to_bf16(g[i][k]);
            qt_tensor_upload(&s->ctx, gt, h);
            free(h);
        }
    }
}

static int bytes_differ(qt_ctx *a, const qt_tensor *ta, qt_ctx *b, const qt_tensor *tb) {
    size_t n = qt_nbytes(ta);
    unsigned char *x = malloc(n), *y = malloc(n);
    qt_tensor_download(a, ta, x);
    qt_tensor_download(b, tb, y);
    int d = 0;
    for (size_t i = 0; i < n; i++) d += x[i] != y[i];
    free(x), free(y);
    return d;
}

static void test_adamw(int bits) {
    float *init[NP], *g[NP];
    for (int i = 0; i < NP; i++) {
        init[i] = malloc((size_t)adam_n[i] * 4), g[i] = malloc((size_t)adam_n[i] * 4);
        for (int64_t k = 0; k < adam_n[i]; k++) init[i][k] = frand();
    }
    adam_side c, d;
    adam_side_init(&c, QT_CPU, init, bits);
    adam_side_init(&d, QT_CUDA, init, bits);
    double worst_norm = 0;
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < NP; i++)
            for (int64_t k = 0; k < adam_n[i]; k++) g[i][k] = frand() * (i + 1);
        adam_side_grads(&c, g);
        adam_side_grads(&d, g);
        double nc = qt_grad_clip(&c.ctx, c.p, NP, 5.0); /* the norm is ~900: clipping active */
        double nd = qt_grad_clip(&d.ctx, d.p, NP, 5.0);
        worst_norm = fmax(worst_norm, fabs(nc - nd) / nc);
        QT_EXPECT_CLOSE(nd, nc, 0, 1e-6, "global gradient norm");
        qt_adamw_step(&c.opt, &c.ctx, 1e-2);
        qt_adamw_step(&d.opt, &d.ctx, 1e-2);
    }
    int diff = 0;
    for (int i = 0; i < NP; i++) {
        qt_adamw_slot *sc = &c.opt.slot[i], *sd = &d.opt.slot[i];
        /* 8-bit state: the codes and the block absmax */
        int dm = bytes_differ(&c.ctx, sc->m ? sc->m : sc->m8, &d.ctx, sd->m ? sd->m : sd->m8);
        int dv = bytes_differ(&c.ctx, sc->v ? sc->v : sc->v8, &d.ctx, sd->v ? sd->v : sd->v8);
        if (!sc->m)
            dm += bytes_differ(&c.ctx, sc->m_absmax, &d.ctx, sd->m_absmax),
                dv += bytes_differ(&c.ctx, sc->v_absmax, &d.ctx, sd->v_absmax);
        QT_EXPECT((bits == 8) == (sc->m8 != NULL) || adam_n[i] < 4096,
                  "tensor %d: 8-bit state exactly where expected", i);
        int dw = bytes_differ(&c.ctx, sc->master ? sc->master : sc->param, &d.ctx,
                              sd->master ? sd->master : sd->param);
        int dn = sc->master ? bytes_differ(&c.ctx, sc->param, &d.ctx, sd->param) : 0;
        QT_EXPECT(dm + dv + dw + dn == 0,
                  "adamw%s tensor %d (%lld %s): bytes differing: m %d, v %d, w %d, bf16 copy %d",
                  bits == 8 ? " 8-bit" : "", i, (long long)adam_n[i], qt_dtype_name(adam_dt[i]), dm,
                  dv, dw, dn);
        diff += dm + dv + dw + dn;
    }
    printf("adamw (%d-bit state): 3 steps with clipping, %lld + %lld + %lld + %lld elements: %d "
           "bytes differ (masters, moments or codes and absmax, bf16 copies); worst norm "
           "difference %.2e relative\n",
           bits, (long long)adam_n[0], (long long)adam_n[1], (long long)adam_n[2],
           (long long)adam_n[3], diff, worst_norm);
    qt_adamw_free(&c.opt), qt_adamw_free(&d.opt);
    qt_ctx_free(&c.ctx), qt_ctx_free(&d.ctx);
    for (int i = 0; i < NP; i++) free(init[i]), free(g[i]);
}

/* the per-tensor entry points against qt_adamw_step, both on the GPU, no clipping: the
 * tensors taken in reverse slot order (as a backward would), the norm from qt_adamw_bwd_end
 * against qt_grad_global_norm */
static void test_adamw_bwd(int bits) {
    float *init[NP], *g[NP];
    for (int i = 0; i < NP; i++) {
        init[i] = malloc((size_t)adam_n[i] * 4), g[i] = malloc((size_t)adam_n[i] * 4);
        for (int64_t k = 0; k < adam_n[i]; k++) init[i][k] = frand();
    }
    adam_side d, e;
    adam_side_init(&d, QT_CUDA, init, bits);
    adam_side_init(&e, QT_CUDA, init, bits);
    int diff = 0, norms_equal = 1;
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < NP; i++)
            for (int64_t k = 0; k < adam_n[i]; k++) g[i][k] = frand() * (i + 1);
        adam_side_grads(&d, g);
        adam_side_grads(&e, g);
        double lr = 1e-2 * (step + 1);
        double nd = qt_grad_global_norm(&d.ctx, d.p, NP);
        qt_adamw_step(&d.opt, &d.ctx, lr);
        qt_err err = {0};
        QT_CHECK(qt_adamw_bwd_begin(&e.opt, &e.ctx, lr, &err) == 0, "%s", err.msg);
        for (int i = NP - 1; i >= 1; i--) /* tensor 0 is left to qt_adamw_bwd_end */
            QT_EXPECT(qt_adamw_bwd_update(&e.opt, &e.ctx, i), "slot %d not updated", i);
        double ne = qt_adamw_bwd_end(&e.opt, &e.ctx);
        norms_equal &= nd == ne;
        QT_EXPECT(nd == ne, "in bwd: norm %.17g vs %.17g", ne, nd);
    }
    for (int i = 0; i < NP; i++) {
        qt_adamw_slot *sd = &d.opt.slot[i], *se = &e.opt.slot[i];
        int dd = bytes_differ(&d.ctx, sd->param, &e.ctx, se->param);
        if (sd->master) dd += bytes_differ(&d.ctx, sd->master, &e.ctx, se->master);
        if (sd->m) dd += bytes_differ(&d.ctx, sd->m, &e.ctx, se->m);
        if (sd->v) dd += bytes_differ(&d.ctx, sd->v, &e.ctx, se->v);
        if (sd->m8)
            dd += bytes_differ(&d.ctx, sd->m8, &e.ctx, se->m8) +
                  bytes_differ(&d.ctx, sd->v8, &e.ctx, se->v8) +
                  bytes_differ(&d.ctx, sd->m_absmax, &e.ctx, se->m_absmax) +
                  bytes_differ(&d.ctx, sd->v_absmax, &e.ctx, se->v_absmax);
        QT_EXPECT(dd == 0, "in bwd (%d-bit) tensor %d: %d bytes differ from the normal step", bits,
                  i, dd);
        diff += dd;
    }
    printf("adamw in bwd (%d-bit state), GPU: 3 steps one tensor at a time: %d bytes differ from "
           "the multi-tensor step; norms %s\n",
           bits, diff, norms_equal ? "equal" : "DIFFER");
    qt_adamw_free(&d.opt), qt_adamw_free(&e.opt);
    qt_ctx_free(&d.ctx), qt_ctx_free(&e.ctx);
    for (int i = 0; i < NP; i++) free(init[i]), free(g[i]);
}

/* ---- the optimizer in backward, whole steps ---------------------------------------------- */

typedef struct {
    qt_ctx ctx;
    qt_llama m;
    qt_adamw opt;
} bwd_side;

static void bwd_side_init(bwd_side *s, qt_train_mode mode, bool ckpt, int bits,
                          const qt_fq_format *wq, const qt_fq_format *aq);

static void test_in_bwd_steps(const char *name, qt_train_mode mode, bool ckpt, int bits,
                              const qt_fq_format *wq, const qt_fq_format *aq) {
    enum { SB = 2, ST = 32 };
    bwd_side a, b;
    bwd_side_init(&a, mode, ckpt, bits, wq, aq);
    bwd_side_init(&b, mode, ckpt, bits, wq, aq);
    qt_schedule sch = {.kind = QT_SCHED_LINEAR, .lr = 3e-3, .warmup = 1, .total = 10};
    qt_train_opts oa = {.max_grad_norm = 0}, ob = {.max_grad_norm = 0, .optimizer_in_bwd = true};
    qt_err err = {0};
    int32_t ids[SB * ST];
    int diff = 0, early = 0;
    for (int step = 0; step < 3; step++) {
        for (int k = 0; k < SB * ST; k++) ids[k] = (int32_t)((frand() + 1.0f) * 127.0f) % 256;
        qt_micro_batch mb = {.B = SB, .T = ST, .ids = ids, .labels = ids};
        qt_step_stats sa, sb;
        int ra = qt_train_step_opts(&a.ctx, &a.m, &a.opt, &sch, &mb, 1, &oa, &sa, &err);
        int rb = qt_train_step_opts(&b.ctx, &b.m, &b.opt, &sch, &mb, 1, &ob, &sb, &err);
        QT_EXPECT(ra == 0 && rb == 0, "%s: step %d failed: %s", name, step, err.msg);
        QT_EXPECT(sa.loss == sb.loss, "%s step %d: loss %.9g vs %.9g", name, step, sa.loss,
                  sb.loss);
        QT_EXPECT(sa.grad_norm == sb.grad_norm, "%s step %d: norm %.17g vs %.17g", name, step,
                  sa.grad_norm, sb.grad_norm);
        early = sb.updated_early;
        for (int i = 0; i < a.m.n_train; i++) {
            qt_adamw_slot *x = &a.opt.slot[i], *y = &b.opt.slot[i];
            int d = bytes_differ(&a.ctx, x->param, &b.ctx, y->param);
            if (x->m) d += bytes_differ(&a.ctx, x->m, &b.ctx, y->m);
            if (x->v) d += bytes_differ(&a.ctx, x->v, &b.ctx, y->v);
            if (x->m8)
                d += bytes_differ(&a.ctx, x->m8, &b.ctx, y->m8) +
                     bytes_differ(&a.ctx, x->v8, &b.ctx, y->v8) +
                     bytes_differ(&a.ctx, x->m_absmax, &b.ctx, y->m_absmax) +
                     bytes_differ(&a.ctx, x->v_absmax, &b.ctx, y->v_absmax);
            if (d && diff == 0)
                QT_EXPECT(0, "%s step %d: '%s' or its state: %d bytes differ", name, step,
                          x->param->name, d);
            diff += d;
        }
    }
    QT_EXPECT(diff == 0, "%s: %d bytes differ in all", name, diff);
    QT_EXPECT(early == b.m.n_train, "%s: %d of %d tensors updated during the backward", name, early,
              b.m.n_train);
    printf("in bwd %-14s GPU: 3 steps, %d bytes differ from the normal step, %d/%d tensors "
           "updated in backward, gradient arena high water %zu bytes, persistent %zu vs %zu\n",
           name, diff, early, b.m.n_train, b.ctx.grad_arena.high_water, b.ctx.persist_bytes,
           a.ctx.persist_bytes);
    for (bwd_side *s = &a; s; s = s == &a ? &b : NULL) {
        qt_adamw_free(&s->opt);
        qt_llama_free(&s->m);
        qt_ctx_free(&s->ctx);
    }
}

/* ---- one training step in every mode ----------------------------------------------------- */

enum { B = 2, T = 48 };

typedef struct {
    const char *name;
    qt_train_mode mode;
    bool qat_lora;
    const qt_fq_format *wq, *aq;
    double grad_tol;
} mode_spec;

typedef struct {
    qt_ctx ctx;
    qt_llama m;
    float loss;
    float **grad; /* host f32 copies, per trainable tensor */
} step_side;

typedef struct {
    qt_ctx *ctx;
    uint64_t seed;
} lora_fill;

/* B = small random values, identical on both sides (same seed, same order) */
static void fill_lora_b(qt_linear *l, void *user) {
    lora_fill *f = user;
    if (!l->lora_b) return;
    int64_t n = qt_numel(l->lora_b);
    float *h = malloc((size_t)n * 4);
    for (int64_t k = 0; k < n; k++) {
        f->seed = f->seed * 6364136223846793005ull + 1442695040888963407ull;
        h[k] = (float)((double)(f->seed >> 11) / 9007199254740992.0 - 0.5) * 0.1f;
    }
    qt_tensor_upload(f->ctx, l->lora_b, h);
    free(h);
}

static void bwd_side_init(bwd_side *s, qt_train_mode mode, bool ckpt, int bits,
                          const qt_fq_format *wq, const qt_fq_format *aq) {
    qt_err err = {0};
    QT_CHECK(qt_ctx_init(&s->ctx, QT_CUDA, 3, &err) == 0, "%s", err.msg);
    qt_model_opts o = qt_model_opts_default();
    o.mode = mode;
    o.lora_r = 8, o.lora_alpha = 16, o.lora_dropout = 0, o.lora_targets = QT_PROJ_ALL;
    o.qat_weight = wq, o.qat_act = aq;
    o.checkpoint = ckpt, o.seed = 42;
    o.compute = QT_BF16;
    QT_CHECK(qt_llama_load(&s->ctx, &s->m, MODEL, &o, &err) == 0, "%s", err.msg);
    lora_fill f = {&s->ctx, 99};
    qt_llama_each_linear(&s->m, fill_lora_b, &f);
    QT_CHECK(qt_adamw_init_bits(&s->opt, &s->ctx, s->m.train, s->m.train_decay, s->m.n_train, 0.9,
                                0.95, 1e-8, 0.1, bits, &err) == 0,
             "%s", err.msg);
}

static void to_host_f32(qt_ctx *ctx, const qt_tensor *t, float *out) {
    int64_t n = qt_numel(t);
    if (t->dtype == QT_F32) {
        qt_tensor_download(ctx, t, out);
        return;
    }
    uint16_t *h = malloc((size_t)n * 2);
    qt_tensor_download(ctx, t, h);
    for (int64_t k = 0; k < n; k++)
        out[k] = t->dtype == QT_BF16 ? qt_bf16_to_f32(h[k]) : qt_f16_to_f32(h[k]);
    free(h);
}

static int step_run(step_side *s, qt_device dev, const mode_spec *ms, const int32_t *ids,
                    const int32_t *tgt) {
    qt_err err = {0};
    QT_CHECK(qt_ctx_init(&s->ctx, dev, 3, &err) == 0, "%s", err.msg);
    qt_model_opts o = qt_model_opts_default();
    o.mode = ms->mode;
    o.lora_r = 8, o.lora_alpha = 16, o.lora_dropout = 0, o.lora_targets = QT_PROJ_ALL;
    o.qat_lora = ms->qat_lora, o.qat_weight = ms->wq, o.qat_act = ms->aq;
    o.checkpoint = true, o.seed = 42;
    o.compute = qt_device_compute_dtype(dev);
    if (qt_llama_load(&s->ctx, &s->m, MODEL, &o, &err) != 0) {
        QT_EXPECT(0, "%s on %s: load: %s", ms->name, qt_device_name(dev), err.msg);
        qt_ctx_free(&s->ctx);
        return -1;
    }
    lora_fill f = {&s->ctx, 99};
    qt_llama_each_linear(&s->m, fill_lora_b, &f);
    int64_t nt = B * T;
    qt_tensor *it = qt_tensor_new(&s->ctx, QT_I32, 2, (int64_t[]){B, T});
    qt_tensor *tt = qt_tensor_new(&s->ctx, QT_I32, 1, &nt);
    qt_tensor_upload(&s->ctx, it, ids);
    qt_tensor_upload(&s->ctx, tt, tgt);
    qt_tensor *loss = qt_llama_loss(&s->ctx, &s->m, it, tt, NULL, NULL, 0);
    s->loss = qt_tensor_get(&s->ctx, loss, 0);
    qt_backward(&s->ctx, loss);
    s->grad = calloc((size_t)s->m.n_train, sizeof *s->grad);
    for (int i = 0; i < s->m.n_train; i++) {
        qt_tensor *p = s->m.train[i];
        s->grad[i] = calloc((size_t)qt_numel(p), 4);
        if (p->grad && p->grad_valid) to_host_f32(&s->ctx, p->grad, s->grad[i]);
    }
    return 0;
}

static void step_free(step_side *s) {
    for (int i = 0; i < s->m.n_train; i++) free(s->grad[i]);
    free(s->grad);
    qt_llama_free(&s->m);
    qt_ctx_free(&s->ctx);
}

static void test_step(const mode_spec *ms, const int32_t *ids, const int32_t *tgt) {
    step_side c, g, g2;
    if (step_run(&c, QT_CPU, ms, ids, tgt)) return;
    if (step_run(&g, QT_CUDA, ms, ids, tgt)) {
        step_free(&c);
        return;
    }
    QT_EXPECT(c.m.n_train == g.m.n_train && c.m.n_train > 0, "%s: %d vs %d trainable tensors",
              ms->name, c.m.n_train, g.m.n_train);
    QT_EXPECT_CLOSE(g.loss, c.loss, 0, 1e-2, "loss, GPU bf16 vs CPU f32");
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < c.m.n_train && i < g.m.n_train; i++) {
        double d2 = 0, r2 = 0;
        for (int64_t k = 0, n = qt_numel(c.m.train[i]); k < n; k++) {
            double d = (double)g.grad[i][k] - c.grad[i][k];
            d2 += d * d, r2 += (double)c.grad[i][k] * c.grad[i][k];
        }
        double rel = sqrt(d2 / fmax(r2, 1e-30));
        QT_EXPECT(r2 > 0, "%s: gradient of %s is zero on the CPU", ms->name, c.m.train[i]->name);
        QT_EXPECT(rel <= ms->grad_tol, "%s: gradient of %s: relative L2 error %.3g > %.3g",
                  ms->name, c.m.train[i]->name, rel, ms->grad_tol);
        if (rel > worst) worst = rel, worst_name = c.m.train[i]->name;
    }
    /* the same GPU step again: bit for bit */
    if (step_run(&g2, QT_CUDA, ms, ids, tgt) == 0) {
        int same = g2.loss == g.loss;
        for (int i = 0; i < g.m.n_train; i++)
            same &= !memcmp(g.grad[i], g2.grad[i], (size_t)qt_numel(g.m.train[i]) * 4);
        QT_EXPECT(same, "%s: two identical GPU steps differ", ms->name);
        step_free(&g2);
    }
    printf("step %-9s loss cpu %.6f gpu %.6f (%.2e rel); %2d gradients, worst relative L2 "
           "error %.3e (%s; bound %.0e); rerun bit-identical\n",
           ms->name, c.loss, g.loss, fabs(g.loss - c.loss) / c.loss, c.m.n_train, worst, worst_name,
           ms->grad_tol);
    step_free(&c), step_free(&g);
}

int main(void) {
    qt_device dev;
    qt_err err = {0};
    if (qt_device_pick("cuda", &dev, &err) != 0) return qt_test_skip("gpu_train", err.msg);
    test_adamw(32);
    test_adamw(8);

    int32_t ids[B * T], tgt[B * T];
    for (int k = 0; k < B * T; k++) ids[k] = (int32_t)((frand() + 1.0f) * 127.0f) % 256;
    qt_llama_shift_labels(ids, tgt, B, T);
    const qt_fq_format int4g32 = {
        .kind = QT_FQ_INT, .bits = 4, .symmetric = 1, .granularity = QT_FQ_PER_GROUP, .group = 32};
    const qt_fq_format int8tok = {
        .kind = QT_FQ_INT, .bits = 8, .symmetric = 1, .granularity = QT_FQ_PER_TOKEN};
    const qt_fq_format q4_0 = {.kind = QT_FQ_Q4_0};
    const mode_spec modes[] = {
        {"full", QT_MODE_FULL, false, NULL, NULL, 0.05},
        {"lora", QT_MODE_LORA, false, NULL, NULL, 0.05},
        {"qlora", QT_MODE_QLORA, false, NULL, NULL, 0.05},
        {"qat", QT_MODE_QAT, false, &int4g32, &int8tok, 0.10},
        {"qat+lora", QT_MODE_QAT, true, &q4_0, NULL, 0.10},
    };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) test_step(&modes[i], ids, tgt);

    test_adamw_bwd(32);
    test_adamw_bwd(8);
    test_in_bwd_steps("full", QT_MODE_FULL, true, 32, NULL, NULL);
    test_in_bwd_steps("full-nockpt", QT_MODE_FULL, false, 32, NULL, NULL);
    test_in_bwd_steps("full+8bit", QT_MODE_FULL, true, 8, NULL, NULL);
    test_in_bwd_steps("lora", QT_MODE_LORA, true, 32, NULL, NULL);
    test_in_bwd_steps("lora-nockpt+8bit", QT_MODE_LORA, false, 8, NULL, NULL);
    test_in_bwd_steps("qat", QT_MODE_QAT, true, 32, &int4g32, &int8tok);
    test_in_bwd_steps("qat+8bit", QT_MODE_QAT, true, 8, &int4g32, &int8tok);
    return qt_test_finish("gpu_train");
}

#endif
