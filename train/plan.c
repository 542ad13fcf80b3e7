/* plan.c - see plan.h. */
#include "plan.h"

#include <math.h>

#include "train/optim.h"

/* bytes of an NF4 + double quant weight of n elements at block 64, as quant/nf4.c stores it */
static double nf4_bytes(double n) {
    double nb = ceil(n / 64.0), nn = ceil(nb / 256.0);
    return ceil(n / 2.0) + nb /* u8 absmax codes */ + nn * 4 /* nested absmax */;
}

/* AdamW's moments of `count` tensors of n elements: fp32 m and v, or with 8-bit AdamW at n >=
 * QT_ADAMW8_MIN_SIZE u8 codes of each with an fp32 absmax per QT_ADAMW8_BLOCK (train/optim.h) */
static double moments(bool eight, double n, double count) {
    if (eight && n >= QT_ADAMW8_MIN_SIZE) return count * 2 * (n + 4 * ceil(n / QT_ADAMW8_BLOCK));
    return count * 8 * n;
}

int qt_plan_make(const qt_job_config *job, const qt_model_config *c, qt_device dev, qt_plan *p,
                 qt_err *err) {
    (void)err;
    double w = dev == QT_CPU ? 4 : 2; /* storage bytes per element */
    double D = (double)c->hidden, F = (double)c->ffn, V = (double)c->vocab, L = (double)c->layers;
    double hd = (double)c->head_dim, H = (double)c->heads, Hk = (double)c->kv_heads;
    double ins[7] = {D, D, D, H * hd, D, D, F};
    double outs[7] = {H * hd, Hk * hd, Hk * hd, D, F, F, D};
    bool qat = qt_job_config_qat(job);
    bool full = job->adapter == QT_ADAPTER_NONE && !(qat && job->qat.with_lora);
    bool nf4 = job->adapter == QT_ADAPTER_QLORA;
    unsigned targets = qt_job_config_lora_targets(job);
    double base = 0, trainable = 0, train_bytes = 0;
    /* per trainable element: the tensor, f32 on every device (train/hf_model.c: it is its own
     * master), and its f32 gradient, which with optimizer_in_bwd is not persistent (counted
     * below as the most that lives at once); AdamW's two moments are counted per tensor
     * (moments()) */
    bool in_bwd = job->optimizer_in_bwd;
    double per_train = 4 + (in_bwd ? 0 : 4);
    double layer_train = 0; /* one block's trainable elements */
    bool eight = job->optimizer >= QT_OPTIM_ADAMW_8BIT;
    double mom = 0;
    double emb = V * D, head = c->tie_embeddings ? 0 : V * D, norms = (2 * L + 1) * D;
    double nonlinear = emb + head + norms;
    double biases = 0;
    for (int j = 0; j < 7; j++) {
        bool b = (j < 3 && c->qkv_bias) || (j == 3 && c->o_bias) || (j >= 4 && c->mlp_bias);
        if (b) biases += L * outs[j];
    }
    if (full) {
        trainable = nonlinear + biases;
        mom =
            moments(eight, emb, 1) + moments(eight, head, head > 0) + moments(eight, D, 2 * L + 1);
        for (int j = 0; j < 7; j++) {
            bool b = (j < 3 && c->qkv_bias) || (j == 3 && c->o_bias) || (j >= 4 && c->mlp_bias);
            trainable += L * ins[j] * outs[j];
            layer_train += ins[j] * outs[j] + (b ? outs[j] : 0);
            mom += moments(eight, ins[j] * outs[j], L) + moments(eight, outs[j], b ? L : 0);
        }
        layer_train += 2 * D;
    } else {
        base = (nonlinear + biases) * w;
        double r = (double)job->lora_r;
        for (int j = 0; j < 7; j++) {
            double n = L * ins[j] * outs[j];
            base += nf4 ? L * nf4_bytes(ins[j] * outs[j]) : n * w;
            if (targets & (1u << j)) {
                trainable += L * r * (ins[j] + outs[j]);
                layer_train += r * (ins[j] + outs[j]);
                mom += moments(eight, r * ins[j], L) + moments(eight, outs[j] * r, L);
            }
        }
    }
    /* 8-bit AdamW on the GPU: its two dynamic maps (2 x 256 f32) in device memory */
    if (eight && dev != QT_CPU) mom += 2 * 256 * 4;
    train_bytes = trainable * per_train + mom;
    /* optimizer_in_bwd: a gradient lives from its first contribution until the optimizer has
     * taken it, and backward passes one block at a time; the embedding's (and lm_head's)
     * gradient lives through the whole backward (the lm_head comes first, the embedding last),
     * with the final norm's beside it. So: those, plus one block's, in f32 (an upper bound:
     * most of a block's gradients are freed before the next one of it is made) */
    p->grad_bytes = in_bwd ? 4 * (layer_train + (full ? emb + head + D : 0)) : 0;
    p->base_bytes = base;
    p->trainable_params = trainable;
    p->train_bytes = train_bytes;
    p->persistent_bytes = base + train_bytes + (hd / 2) * 4; /* + the RoPE frequencies */
    /* activations of one micro-batch, in storage bytes, f32 statistics aside:
     *   checkpointed: L block inputs + one block replayed (about 14 D + 3 F values per token
     *   kept for its backward, and as much again in gradients) + logits and their gradient */
    double tok = (double)job->micro_batch_size * (double)job->sequence_len;
    double block = tok * (14 * D + 3 * F) * w;
    double acts = job->gradient_checkpointing ? tok * D * w * L + 2 * block : 2 * block * L;
    /* checkpointed (Q)LoRA keeps each adapted layer's u [tokens, r] for the replay (QAT + LoRA
     * quantizes the merged weight: no u) */
    if (job->gradient_checkpointing && !full && !qat)
        for (int j = 0; j < 7; j++)
            if (targets & (1u << j)) acts += L * tok * (double)job->lora_r * w;
    acts += 2 * tok * V * w;
    p->activation_bytes = acts;
    p->total_bytes = p->persistent_bytes + p->grad_bytes + acts;
    return QT_OK;
}

static void gib(double b, char *buf, size_t cap) {
    snprintf(buf, cap, b >= 1 << 30 ? "%.2f GiB" : "%.1f MiB",
             b >= 1 << 30 ? b / (1 << 30) : b / (1 << 20));
}

void qt_plan_print(const qt_job_config *job, const qt_model_config *mc, qt_device dev,
                   const qt_plan *p, FILE *out) {
    char a[32], b[32], c[32], d[32], e[32], g[160] = "";
    if (job->optimizer_in_bwd) {
        char gb[32];
        gib(p->grad_bytes, gb, sizeof gb);
        snprintf(g, sizeof g,
                 "  gradients (est.)     %s at most at once (optimizer_in_bwd: %s one block's)\n",
                 gb,
                 job->adapter == QT_ADAPTER_NONE && !job->qat.with_lora
                     ? "embedding, lm_head, final norm and"
                     : "the adapters of");
    }
    gib(p->base_bytes, a, sizeof a);
    gib(p->train_bytes, b, sizeof b);
    gib(p->persistent_bytes, c, sizeof c);
    gib(p->activation_bytes, d, sizeof d);
    gib(p->total_bytes, e, sizeof e);
    fprintf(out,
            "plan for %s (%s, %lld layers, hidden %lld, vocab %lld) on %s, %s\n"
            "  frozen base          %s%s\n"
            "  trainable            %.0f parameters: %s with %sAdamW moments\n"
            "  persistent           %s\n"
            "%s"
            "  activations (est.)   %s for %lld x %lld tokens per micro-batch%s\n"
            "  total (est.)         %s\n",
            job->base_model, mc->model_type, (long long)mc->layers, (long long)mc->hidden,
            (long long)mc->vocab, dev == QT_CPU ? "the CPU (f32)" : "CUDA (bf16 storage)",
            qt_job_adapter_name(job->adapter), a,
            job->adapter == QT_ADAPTER_QLORA ? " (linear layers NF4 + double quant)" : "",
            p->trainable_params, b, job->optimizer_in_bwd ? "" : "gradients, ", c, g, d,
            (long long)job->micro_batch_size, (long long)job->sequence_len,
            job->gradient_checkpointing ? ", checkpointing each block" : "", e);
}
