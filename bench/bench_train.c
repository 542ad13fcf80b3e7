/* bench_train.c - qtune's side of the training benchmark (bench/README.md): tokens/s and peak
 * GPU memory of training steps on a Llama-shaped model with random weights, in one mode, with
 * the same recipe as bench/peer.py measures the Python stack with: LoRA r16 α32 on all seven
 * projections (lora, qlora), full fine-tuning (full), full fine-tuning with int8 per-token
 * activations + int4 group-32 weight fake quantization (qat); gradient checkpointing on,
 * AdamW, bf16 compute, median step time of --steps after --warmup.
 *
 *   bench_train --shape 1b|7b|tiny --mode qlora|lora|full|qat [--batch B --seq T]
 *               [--steps 10 --warmup 3] [--dir DIR] [--json FILE] [--device cuda|cpu]
 *               [--optim adamw|adamw_8bit]   (8-bit AdamW: the job is reported as MODE+8bit)
 *               [--optim-in-bwd]   (AdamW on each tensor during the backward, no clipping:
 *                                   reported as MODE+inbwd; the peer's plain step compares)
 *   bench_train --nf4-dequant [--json FILE]      NF4 + double-quant dequant GB/s, 11008 x 4096
 *
 * The random model is written once to DIR (default /tmp/qtune-bench-<shape>) as bf16
 * safetensors (uniform weights with std 0.02, norms 1) and loaded through the normal loader,
 * so QLoRA's NF4 quantization is the real one. Peak memory is what the process holds on the
 * GPU beyond the bare CUDA context: device memory in use after the timed steps (qtune's arenas
 * only grow, so that is the peak) minus in use right after the context was created. The JSON
 * line has the fields of bench/peer.py's. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "quant/half.h"
#include "quant/nf4.h"
#include "quant/safetensors.h"
#include "train/hf_model.h"
#include "train/optim.h"
#include "train/trainer.h"

#ifdef QT_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_ops.h"
#endif

typedef struct {
    const char *name;
    int64_t hidden, layers, heads, kv_heads, ffn, vocab, batch, seq;
    bool tied;
    double rope_theta;
} shape_def;

static const shape_def shapes[] = {
    {"1b", 2048, 16, 32, 8, 8192, 128256, 4, 2048, true, 500000.0},
    {"7b", 4096, 32, 32, 32, 11008, 32000, 2, 2048, false, 10000.0},
    {"tiny", 256, 2, 4, 2, 512, 1024, 2, 128, true, 10000.0},
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- the random model ------------------------------------------------------------------- */

static uint16_t *rand_bf16(int64_t n, uint64_t seed, float scale, float mean) {
    uint16_t *h = malloc((size_t)n * 2);
    if (!h) return NULL;
#pragma omp parallel
    {
        /* one stream per thread slice: fast, and the same file for the same seed */
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < (n + 65535) / 65536; blk++) {
            uint64_t s = seed * 0x9e3779b97f4a7c15ull + (uint64_t)blk * 0xbf58476d1ce4e5b9ull + 1;
            int64_t hi = (blk + 1) * 65536 < n ? (blk + 1) * 65536 : n;
            for (int64_t i = blk * 65536; i < hi; i++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                float u = (float)(s >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
                h[i] = qt_f32_to_bf16(mean + scale * u);
            }
        }
    }
    return h;
}

static int write_model(const char *dir, const shape_def *s) {
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat st;
    if (stat(path, &st) == 0) return 0; /* made before: same shape, same seed */
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_train: cannot create %s\n", dir);
        return -1;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
            "\"vocab_size\": %lld, \"hidden_size\": %lld, \"intermediate_size\": %lld, "
            "\"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
            "\"num_key_value_heads\": %lld, \"max_position_embeddings\": 4096, "
            "\"rms_norm_eps\": 1e-05, \"rope_theta\": %.1f, \"tie_word_embeddings\": %s, "
            "\"torch_dtype\": \"bfloat16\"}\n",
            (long long)s->vocab, (long long)s->hidden, (long long)s->ffn, (long long)s->layers,
            (long long)s->heads, (long long)s->kv_heads, s->rope_theta, s->tied ? "true" : "false");
    fclose(f);
    int64_t D = s->hidden, hd = D / s->heads, F = s->ffn;
    int ntensors = 2 + (s->tied ? 0 : 1) + 9 * (int)s->layers;
    qt_st_entry *e = calloc((size_t)ntensors, sizeof *e);
    char(*names)[96] = calloc((size_t)ntensors, sizeof *names);
    const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                          "mlp.down_proj"};
    int64_t lout[7] = {s->heads * hd, s->kv_heads * hd, s->kv_heads * hd, D, F, F, D};
    int64_t lin_in[7] = {D, D, D, s->heads * hd, D, D, F};
    int n = 0;
    const float a = 0.02f * sqrtf(3.0f); /* uniform [-a, a]: std 0.02 */
#define ADD(nm, r, c, sc, mu)                                                                      \
    do {                                                                                           \
        snprintf(names[n], 96, "%s", nm);                                                          \
        e[n] = (qt_st_entry){.name = names[n], .dtype = QT_ST_BF16, .ndim = (c) ? 2 : 1};          \
        e[n].shape[0] = (r), e[n].shape[1] = (c);                                                  \
        e[n].data = rand_bf16((r) * ((c) ? (c) : 1), (uint64_t)n + 1, sc, mu);                     \
        if (!e[n].data) return -1;                                                                 \
        n++;                                                                                       \
    } while (0)
    ADD("model.embed_tokens.weight", s->vocab, D, a, 0.0f);
    ADD("model.norm.weight", D, 0, 0.0f, 1.0f);
    if (!s->tied) ADD("lm_head.weight", s->vocab, D, a, 0.0f);
    for (int64_t l = 0; l < s->layers; l++) {
        char nm[96];
        for (int j = 0; j < 7; j++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.%s.weight", (long long)l, lin[j]);
            ADD(nm, lout[j], lin_in[j], a, 0.0f);
        }
        snprintf(nm, sizeof nm, "model.layers.%lld.input_layernorm.weight", (long long)l);
        ADD(nm, D, 0, 0.0f, 1.0f);
        snprintf(nm, sizeof nm, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        ADD(nm, D, 0, 0.0f, 1.0f);
    }
#undef ADD
    char msg[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = qt_st_save_file(path, e, n, NULL, 0, msg, sizeof msg);
    if (rc) fprintf(stderr, "bench_train: %s: %s\n", path, msg);
    for (int i = 0; i < n; i++) free((void *)e[i].data);
    free(e), free(names);
    return rc;
}

/* ---- device memory ------------------------------------------------------------------------ */

static size_t gpu_used(void) {
#ifdef QT_HAVE_CUDA
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) return tot - fr;
#endif
    return 0;
}

/* ---- NF4 dequant -------------------------------------------------------------------------- */

#ifdef QT_HAVE_CUDA
typedef struct {
    qt_nf4_weight *w;
    void *out, *src;
    size_t bytes;
} deq_arg;
static void enq_deq(qt_ctx *ctx, void *p) {
    deq_arg *a = p;
    qt_cuda_nf4_dequant(ctx, a->w, QT_BF16, a->out);
}
static void enq_copy(qt_ctx *ctx, void *p) {
    deq_arg *a = p;
    qt_cuda_copy_d2d(ctx->cuda, a->out, a->src, a->bytes);
}
#endif

static int bench_nf4(FILE *js) {
#ifndef QT_HAVE_CUDA
    (void)js;
    fprintf(stderr, "bench_train: built without CUDA\n");
    return 1;
#else
    qt_ctx ctx;
    qt_err err = {0};
    if (qt_ctx_init(&ctx, QT_CUDA, 1, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    const int64_t O = 11008, I = 4096, n = O * I;
    uint16_t *h = rand_bf16(n, 7, 0.03f, 0.0f);
    qt_nf4_tensor q;
    int64_t shape[2] = {O, I};
    if (qt_nf4_tensor_quantize(&q, h, QT_NF4_BF16, 2, shape, 64, 1) != 0) return 1;
    qt_nf4_weight w = {.out = O, .in = I, .blocksize = 64, .dtype = QT_NF4_BF16};
    int64_t nc = (n + 1) / 2, nb = q.nblocks, nn = q.nested_nblocks;
    w.codes = qt_param_new(&ctx, QT_U8, 1, &nc, false, "codes");
    w.absmax_q = qt_param_new(&ctx, QT_U8, 1, &nb, false, "absmax_q");
    w.nested_absmax = qt_param_new(&ctx, QT_F32, 1, &nn, false, "nested");
    w.offset = q.offset;
    qt_tensor_upload(&ctx, w.codes, q.data);
    qt_tensor_upload(&ctx, w.absmax_q, q.absmax_q);
    qt_tensor_upload(&ctx, w.nested_absmax, q.nested_absmax);
    qt_tensor *out = qt_param_new(&ctx, QT_BF16, 2, shape, false, "out");
    qt_tensor *src = qt_param_new(&ctx, QT_BF16, 2, shape, false, "src");
    deq_arg a = {&w, out->data, src->data, (size_t)n * 2};
    enum { IT = 30 };
    float ms[IT];
    qt_cuda_time_ms(&ctx, enq_deq, &a, IT, ms);
    double t_deq[IT], t_copy[IT];
    for (int i = 0; i < IT; i++) t_deq[i] = ms[i];
    qt_cuda_time_ms(&ctx, enq_copy, &a, IT, ms);
    for (int i = 0; i < IT; i++) t_copy[i] = ms[i];
    /* the first five are warm-up */
    qsort(t_deq + 5, IT - 5, sizeof(double), cmp_double);
    qsort(t_copy + 5, IT - 5, sizeof(double), cmp_double);
    double md = t_deq[5 + (IT - 5) / 2], mc = t_copy[5 + (IT - 5) / 2];
    double bytes_deq = (double)nc + (double)nb + 4.0 * (double)nn + 2.0 * (double)n;
    double bytes_copy = 4.0 * (double)n;
    double gd = bytes_deq / (md * 1e-3) / 1e9, gc = bytes_copy / (mc * 1e-3) / 1e9;
    char line[512];
    snprintf(line, sizeof line,
             "{\"job\": \"nf4-dequant\", \"engine\": \"qtune\", \"shape\": [%lld, %lld], "
             "\"dequant_ms\": %.4f, \"dequant_gbps\": %.1f, \"copy_ms\": %.4f, \"copy_gbps\": "
             "%.1f, \"fraction_of_copy\": %.3f, \"device\": \"%s\"}",
             (long long)O, (long long)I, md, gd, mc, gc, gd / gc, qt_cuda_device_name(ctx.cuda));
    puts(line);
    if (js) fprintf(js, "%s\n", line);
    qt_nf4_tensor_free(&q);
    free(h);
    qt_ctx_free(&ctx);
    return 0;
#endif
}

/* ---- training steps ------------------------------------------------------------------------ */

static void usage(FILE *f) {
    fprintf(f, "usage: bench_train --shape 1b|7b|tiny --mode qlora|lora|full|qat [--batch B]\n"
               "                   [--seq T] [--steps N] [--warmup N] [--dir DIR] [--json FILE]\n"
               "                   [--device cuda|cpu] [--no-checkpoint] [--profile]\n"
               "                   [--optim adamw|adamw_8bit] [--optim-in-bwd]\n"
               "       bench_train --nf4-dequant [--json FILE]\n");
}

int main(int argc, char **argv) {
    const char *shape = NULL, *mode = NULL, *dir = NULL, *json = NULL, *device = "cuda";
    int64_t batch = 0, seq = 0;
    int steps = 10, warmup = 3, nf4 = 0, checkpoint = 1, profile = 0, bits = 32, in_bwd = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--shape") && v)
            shape = v, i++;
        else if (!strcmp(a, "--mode") && v)
            mode = v, i++;
        else if (!strcmp(a, "--dir") && v)
            dir = v, i++;
        else if (!strcmp(a, "--json") && v)
            json = v, i++;
        else if (!strcmp(a, "--device") && v)
            device = v, i++;
        else if (!strcmp(a, "--batch") && v)
            batch = atoll(v), i++;
        else if (!strcmp(a, "--seq") && v)
            seq = atoll(v), i++;
        else if (!strcmp(a, "--steps") && v)
            steps = atoi(v), i++;
        else if (!strcmp(a, "--warmup") && v)
            warmup = atoi(v), i++;
        else if (!strcmp(a, "--nf4-dequant"))
            nf4 = 1;
        else if (!strcmp(a, "--no-checkpoint"))
            checkpoint = 0;
        else if (!strcmp(a, "--profile"))
            profile = 1;
        else if (!strcmp(a, "--optim") && v && (!strcmp(v, "adamw") || !strcmp(v, "adamw_8bit")))
            bits = strcmp(v, "adamw") ? 8 : 32, i++;
        else if (!strcmp(a, "--optim-in-bwd"))
            in_bwd = 1;
        else {
            usage(stderr);
            return 2;
        }
    }
    FILE *js = json ? fopen(json, "a") : NULL;
    if (json && !js) {
        fprintf(stderr, "bench_train: cannot write %s\n", json);
        return 2;
    }
    if (nf4) {
        int rc = bench_nf4(js);
        if (js) fclose(js);
        return rc;
    }
    const shape_def *s = NULL;
    for (size_t i = 0; shape && i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(shape, shapes[i].name)) s = &shapes[i];
    if (!s || !mode || steps < 1 || warmup < 0) {
        usage(stderr);
        return 2;
    }
    if (!batch) batch = s->batch;
    if (!seq) seq = s->seq;
    char dbuf[512];
    if (!dir) snprintf(dbuf, sizeof dbuf, "/tmp/qtune-bench-%s", s->name), dir = dbuf;
    double t0 = now_s();
    if (write_model(dir, s)) return 1;
    double t_write = now_s() - t0;

    qt_model_opts o = qt_model_opts_default();
    o.lora_r = 16, o.lora_alpha = 32, o.lora_dropout = 0, o.lora_targets = QT_PROJ_ALL;
    o.checkpoint = checkpoint;
    const qt_fq_format int4g32 = {
        .kind = QT_FQ_INT, .bits = 4, .symmetric = 1, .granularity = QT_FQ_PER_GROUP, .group = 32};
    const qt_fq_format int8tok = {
        .kind = QT_FQ_INT, .bits = 8, .symmetric = 1, .granularity = QT_FQ_PER_TOKEN};
    if (!strcmp(mode, "qlora"))
        o.mode = QT_MODE_QLORA;
    else if (!strcmp(mode, "lora"))
        o.mode = QT_MODE_LORA;
    else if (!strcmp(mode, "full"))
        o.mode = QT_MODE_FULL;
    else if (!strcmp(mode, "qat"))
        o.mode = QT_MODE_QAT, o.qat_weight = &int4g32, o.qat_act = &int8tok;
    else {
        usage(stderr);
        return 2;
    }
    qt_err err = {0};
    qt_device dev;
    qt_ctx ctx;
    if (qt_device_pick(device, &dev, &err) || qt_ctx_init(&ctx, dev, 1, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    o.compute = qt_device_compute_dtype(dev);
    size_t base_used = gpu_used();
    t0 = now_s();
    qt_llama m;
    if (qt_llama_load(&ctx, &m, dir, &o, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    double t_load = now_s() - t0;
    qt_adamw opt;
    if (qt_adamw_init_bits(&opt, &ctx, m.train, m.train_decay, m.n_train, 0.9, 0.999, 1e-8, 0.0,
                           bits, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    qt_schedule sch = {.kind = QT_SCHED_CONSTANT, .lr = 1e-4, .total = steps + warmup};
    int64_t n = batch * seq;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    uint64_t r = 99;
    for (int64_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        ids[i] = (int32_t)(r % (uint64_t)s->vocab);
    }
    qt_micro_batch mb = {.B = batch, .T = seq, .ids = ids, .labels = ids};
    double *t = malloc((size_t)(steps + warmup) * sizeof *t);
    double first = 0, last = 0;
    /* clipping at 1 as the Hugging Face Trainer does; the optimizer in backward cannot clip
     * (bench/peer.py clips in neither case) */
    qt_train_opts to = {.max_grad_norm = in_bwd ? 0.0 : 1.0, .optimizer_in_bwd = in_bwd};
    for (int i = 0; i < steps + warmup; i++) {
        double a = now_s();
        qt_step_stats st;
        if (qt_train_step_opts(&ctx, &m, &opt, &sch, &mb, 1, &to, &st, &err)) {
            fprintf(stderr, "bench_train: step %d: %s\n", i, err.msg);
            return 1;
        }
#ifdef QT_HAVE_CUDA
        if (dev == QT_CUDA) qt_cuda_sync(ctx.cuda);
#endif
        t[i] = now_s() - a;
        if (i == 0) first = st.loss;
        last = st.loss;
        fprintf(stderr, "step %d: loss %.4f, %.1f ms\n", i, st.loss, 1e3 * t[i]);
    }
    size_t peak = gpu_used() - base_used;
    if (profile) { /* one more step, synchronised around every op */
        qt_prof *p = calloc(1, sizeof *p);
        ctx.prof = p;
        qt_step_stats st;
        double a = now_s();
        qt_train_step_opts(&ctx, &m, &opt, &sch, &mb, 1, &to, &st, &err);
        qt_ctx_sync(&ctx);
        double total = now_s() - a;
        ctx.prof = NULL;
        fprintf(stderr, "profile (one step, synchronised per op: %.1f ms; ops %.1f ms):\n",
                1e3 * total, 1e3 * p->accounted);
        for (int k = 0; k < QT_OP_COUNT; k++)
            for (int d = 0; d < 2; d++)
                if (p->calls[k][d])
                    fprintf(stderr, "  %-14s %s %6lld calls %9.2f ms\n", qt_op_name((qt_op)k),
                            d ? "bwd" : "fwd", (long long)p->calls[k][d], 1e3 * p->sec[k][d]);
        free(p);
    }
    qsort(t + warmup, (size_t)steps, sizeof *t, cmp_double);
    double med = t[warmup + steps / 2];
    if (steps % 2 == 0) med = 0.5 * (t[warmup + steps / 2 - 1] + t[warmup + steps / 2]);
    char line[1024];
    snprintf(line, sizeof line,
             "{\"job\": \"%s-%s%s%s\", \"engine\": \"qtune\", \"tokens_per_s\": %.0f, "
             "\"step_ms_median\": %.2f, \"peak_gib\": %.3f, \"persistent_gib\": %.3f, "
             "\"arena_gib\": %.3f, \"grad_arena_gib\": %.3f, \"steps\": %d, \"warmup\": %d, "
             "\"batch\": %lld, \"seq\": %lld, "
             "\"loss_first\": %.4f, \"loss_last\": %.4f, \"load_s\": %.1f, \"write_s\": %.1f, "
             "\"checkpointing\": %s, \"device\": \"%s\"}",
             s->name, mode, bits == 8 ? "+8bit" : "", in_bwd ? "+inbwd" : "", (double)n / med,
             1e3 * med, (double)peak / (1 << 30), (double)ctx.persist_bytes / (1 << 30),
             (double)ctx.data.reserved / (1 << 30), (double)ctx.grad_arena.reserved / (1 << 30),
             steps, warmup, (long long)batch, (long long)seq, first, last, t_load, t_write,
             checkpoint ? "true" : "false",
#ifdef QT_HAVE_CUDA
             dev == QT_CUDA ? qt_cuda_device_name(ctx.cuda) : "cpu"
#else
             "cpu"
#endif
    );
    puts(line);
    if (js) fprintf(js, "%s\n", line), fclose(js);
    free(t), free(ids);
    qt_adamw_free(&opt);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    return 0;
}
