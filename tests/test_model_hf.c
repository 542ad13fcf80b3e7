/* test_model_hf.c - the CPU reference path against transformers + peft (fixtures made by
 * tools/make_hf_fixtures.py on the GPU machine, in fp32): for a llama (GQA, llama3 rope
 * scaling, untied) and a qwen2 (q/k/v biases, tied embeddings):
 *   logits and loss of the base model            loss to 1e-5 relative, logits to 1e-4
 *   PEFT LoRA (r 4, α 8, all 7 projections) loss and the gradients of every A and B after one
 *   backward                                      loss 1e-5, gradients 1e-4 (of their scale)
 *   three AdamW steps (cosine, warmup 1, weight decay 0.1, clipping to 0.05)
 *                                                 losses 1e-5, LoRA weights 1e-4 */
#include <stdio.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "qt_test.h"
#include "quant/safetensors.h"
#include "train/hf_model.h"
#include "train/optim.h"

typedef struct {
    qt_st_file ref;
    int64_t B, T;
    const int32_t *ids, *labels;
} fixture;

static const qt_st_tensor *ref_get(fixture *fx, const char *name) {
    const qt_st_tensor *t = qt_st_find(&fx->ref, name);
    QT_CHECK(t, "fixture tensor '%s' missing", name);
    return t;
}

/* ids/targets as tensors of ctx */
static void inputs(qt_ctx *ctx, fixture *fx, qt_tensor **ids, qt_tensor **tgt) {
    int64_t n = fx->B * fx->T;
    *ids = qt_tensor_new(ctx, QT_I32, 2, (int64_t[]){fx->B, fx->T});
    qt_tensor_upload(ctx, *ids, fx->ids);
    int32_t *t = malloc((size_t)n * sizeof *t);
    qt_llama_shift_labels(fx->labels, t, fx->B, fx->T);
    *tgt = qt_tensor_new(ctx, QT_I32, 1, &n);
    qt_tensor_upload(ctx, *tgt, t);
    free(t);
}

/* max |a - b| over max |b| */
static double rel_err(const float *a, const float *b, int64_t n) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return e / (s > 0 ? s : 1);
}

/* copies the fixture's LoRA tensors (and returns how many) into the model */
static int set_lora(qt_ctx *ctx, qt_llama *m, fixture *fx) {
    int n = 0;
    for (int i = 0; i < fx->ref.ntensors; i++) {
        const char *nm = fx->ref.tensors[i].name;
        size_t len = strlen(nm);
        if (len < 7 || strcmp(nm + len - 7, ".lora_A") != 0) continue;
        char mod[128], bname[160];
        snprintf(mod, sizeof mod, "%.*s", (int)(len - 7), nm);
        qt_linear *l = qt_llama_find_linear(m, mod);
        QT_EXPECT(l && l->lora_a, "module %s exists with LoRA", mod);
        if (!l || !l->lora_a) continue;
        snprintf(bname, sizeof bname, "%s.lora_B", mod);
        qt_tensor_upload(ctx, l->lora_a, ref_get(fx, nm)->data);
        qt_tensor_upload(ctx, l->lora_b, ref_get(fx, bname)->data);
        n++;
    }
    return n;
}

static void check_model(const char *name) {
    char dir[256], path[300], msg[512];
    snprintf(dir, sizeof dir, "tests/fixtures/hf/%s", name);
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    fixture fx;
    memset(&fx, 0, sizeof fx);
    if (qt_st_load_file(&fx.ref, path, msg, sizeof msg) != 0) {
        QT_EXPECT(0, "%s", msg);
        return;
    }
    const qt_st_tensor *ids = ref_get(&fx, "input_ids");
    fx.B = ids->shape[0], fx.T = ids->shape[1];
    fx.ids = (const int32_t *)ids->data;
    fx.labels = (const int32_t *)ref_get(&fx, "labels")->data;
    qt_err err = {0};

    /* 1. base model: logits and loss */
    {
        qt_ctx ctx;
        qt_ctx_init(&ctx, QT_CPU, 1, NULL);
        qt_llama m;
        qt_model_opts o = qt_model_opts_default();
        o.mode = QT_MODE_FULL;
        int rc = qt_llama_load(&ctx, &m, dir, &o, &err);
        QT_EXPECT(rc == 0, "%s: load: %s", name, err.msg);
        if (rc == 0) {
            qt_no_grad_begin(&ctx);
            qt_tensor *idt, *tgt;
            inputs(&ctx, &fx, &idt, &tgt);
            qt_tensor *logits = qt_llama_logits(&ctx, &m, idt, NULL, NULL);
            double e = rel_err(qt_f32(logits), (const float *)ref_get(&fx, "logits")->data,
                               qt_numel(logits));
            QT_EXPECT(e < 1e-4, "%s: logits differ from transformers by %.3g (relative)", name, e);
            qt_tensor *loss = qt_llama_loss(&ctx, &m, idt, tgt, NULL, NULL, 0);
            float want = ((const float *)ref_get(&fx, "loss")->data)[0];
            QT_EXPECT_CLOSE(qt_f32(loss)[0], want, 0, 1e-5, "base loss vs transformers");
            printf("%s: logits rel err %.2e, loss %.7f (transformers %.7f)\n", name, e,
                   qt_f32(loss)[0], want);
            qt_no_grad_end(&ctx);
            qt_llama_free(&m);
        }
        qt_ctx_free(&ctx);
    }

    /* 2. LoRA: loss and gradients; 3. three AdamW steps */
    float **plain_grads = NULL; /* without checkpointing, to hold the replay to bit for bit */
    int n_plain = 0;
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        qt_ctx ctx;
        qt_ctx_init(&ctx, QT_CPU, 1, NULL);
        qt_llama m;
        qt_model_opts o = qt_model_opts_default();
        o.mode = QT_MODE_LORA;
        o.lora_r = 4, o.lora_alpha = 8, o.lora_targets = QT_PROJ_ALL, o.checkpoint = ckpt;
        if (qt_llama_load(&ctx, &m, dir, &o, &err) != 0) {
            QT_EXPECT(0, "%s: load lora: %s", name, err.msg);
            qt_ctx_free(&ctx);
            continue;
        }
        int nl = set_lora(&ctx, &m, &fx);
        QT_EXPECT(nl == 7 * m.cfg.layers, "%s: %d LoRA pairs set", name, nl);
        qt_tensor **params;
        bool *decay;
        int np = qt_llama_trainable(&m, &params, &decay);
        QT_EXPECT(np == 2 * nl, "%s: trainable tensors are the LoRA pairs (%d)", name, np);
        qt_tensor *idt, *tgt;
        inputs(&ctx, &fx, &idt, &tgt);
        qt_tensor *loss = qt_llama_loss(&ctx, &m, idt, tgt, NULL, NULL, 0);
        float want = ((const float *)ref_get(&fx, "lora_loss")->data)[0];
        QT_EXPECT_CLOSE(qt_f32(loss)[0], want, 0, 1e-5, "LoRA loss vs peft");
        qt_backward(&ctx, loss);
        double worst = 0;
        for (int i = 0; i < np; i++) {
            char gname[160];
            snprintf(gname, sizeof gname, "%s.grad", params[i]->name);
            const qt_st_tensor *g = ref_get(&fx, gname);
            QT_EXPECT(params[i]->grad && params[i]->grad_valid, "%s: no gradient", gname);
            if (!params[i]->grad) continue;
            double e =
                rel_err(qt_f32(params[i]->grad), (const float *)g->data, qt_numel(params[i]));
            worst = fmax(worst, e);
            QT_EXPECT(e < 1e-4, "%s: %s differs from peft by %.3g", name, gname, e);
        }
        printf("%s (checkpointing %s): LoRA loss %.7f (peft %.7f), worst gradient rel err %.2e\n",
               name, ckpt ? "on" : "off", qt_f32(loss)[0], want, worst);
        if (!ckpt) {
            n_plain = np;
            plain_grads = calloc((size_t)np, sizeof *plain_grads);
            for (int i = 0; i < np && params[i]->grad; i++) {
                plain_grads[i] = malloc(qt_nbytes(params[i]));
                memcpy(plain_grads[i], params[i]->grad->data, qt_nbytes(params[i]));
            }
        } else if (plain_grads) {
            /* the replay skips what only makes the block's output value: nothing it changes */
            int same = np == n_plain;
            for (int i = 0; same && i < np; i++)
                same = params[i]->grad && plain_grads[i] &&
                       !memcmp(plain_grads[i], params[i]->grad->data, qt_nbytes(params[i]));
            QT_EXPECT(same, "%s: LoRA gradients with checkpointing differ from those without",
                      name);
        }

        /* AdamW from the same starting point */
        qt_adamw opt;
        qt_adamw_init(&opt, &ctx, params, decay, np, 0.9, 0.999, 1e-8, 0.1, &err);
        qt_schedule sch = {.kind = QT_SCHED_COSINE, .lr = 1e-2, .warmup = 1, .total = 3};
        const float *wl = (const float *)ref_get(&fx, "adamw_losses")->data;
        for (int i = 0; i < np; i++) qt_grad_zero(params[i]);
        for (int step = 0; step < 3; step++) {
            qt_step_reset(&ctx);
            inputs(&ctx, &fx, &idt, &tgt);
            loss = qt_llama_loss(&ctx, &m, idt, tgt, NULL, NULL, 0);
            QT_EXPECT_CLOSE(qt_f32(loss)[0], wl[step], 0, 1e-5, "AdamW step loss vs peft");
            qt_backward(&ctx, loss);
            qt_grad_clip(&ctx, params, np, 0.05);
            qt_adamw_step(&opt, &ctx, qt_schedule_lr(&sch, step));
        }
        /* Adam divides by sqrt(v): where a gradient is near zero its step is ~±lr whatever
         * the gradient's size, so float rounding of an almost-zero gradient can flip that
         * element's step. Such elements may differ by up to the sum of the steps' lr; every
         * other element must match to 1e-4 of its tensor's scale, and they must be rare. */
        int64_t total = 0, outliers = 0;
        double worst_out = 0;
        worst = 0;
        for (int i = 0; i < np; i++) {
            char an[160];
            snprintf(an, sizeof an, "%s.after3", params[i]->name);
            const float *r = (const float *)ref_get(&fx, an)->data, *w = qt_f32(params[i]);
            int64_t n = qt_numel(params[i]);
            double sc = 0;
            for (int64_t j = 0; j < n; j++) sc = fmax(sc, fabs(r[j]));
            for (int64_t j = 0; j < n; j++) {
                double d = fabs((double)w[j] - r[j]) / sc;
                total++;
                if (d > 1e-4)
                    outliers++, worst_out = fmax(worst_out, fabs((double)w[j] - r[j]));
                else
                    worst = fmax(worst, d);
            }
        }
        double lr_sum = 0;
        for (int step = 0; step < 3; step++) lr_sum += qt_schedule_lr(&sch, step);
        QT_EXPECT(outliers * 1000 <= total, "%s: %lld of %lld LoRA weights off by > 1e-4", name,
                  (long long)outliers, (long long)total);
        QT_EXPECT(worst_out <= lr_sum,
                  "%s: an element moved %.3g more than torch's (max step %.3g)", name, worst_out,
                  lr_sum);
        printf("%s: after 3 AdamW steps, LoRA weights within %.2e of torch's except %lld of %lld "
               "near-zero-gradient elements (within %.2e)\n",
               name, worst, (long long)outliers, (long long)total, worst_out);
        qt_adamw_free(&opt);
        qt_llama_free(&m);
        qt_ctx_free(&ctx);
    }
    for (int i = 0; i < n_plain; i++) free(plain_grads[i]);
    free(plain_grads);
    qt_st_free(&fx.ref);
}

int main(void) {
    check_model("llama");
    check_model("qwen2");
    return qt_test_finish("model_hf");
}
