/* optim.c - see optim.h. CPU reference: the arithmetic mirrors torch's single-tensor AdamW
 * (fp32, the same operation order) so that three steps match PEFT's to ~1e-6. */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/dynamic_map.h"
#include "quant/half.h"

#ifdef QT_HAVE_CUDA
#include "cuda/cuda_optim.h"

/* the GPU kernels' view of the tensors with a gradient: slots (AdamW) or bare parameters */
static int cuda_list(qt_tensor **params, const qt_adamw_slot *slot, int n,
                     qt_cuda_optim_tensor *out) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        qt_tensor *p = slot ? slot[i].param : params[i];
        if (!p->grad || !p->grad_valid) continue;
        if (slot && !slot[i].m) continue; /* 8-bit state: qt_cuda_optim_adamw8 */
        QT_CHECK(p->device == QT_CUDA, "'%s' is on the %s, the others on the GPU", p->name,
                 qt_device_name(p->device));
        qt_cuda_optim_tensor t = {.g = p->grad->data, .n = qt_numel(p), .gdt = p->grad->dtype};
        if (slot) {
            bool master = slot[i].master != NULL;
            t.w = master ? slot[i].master->data : p->data;
            t.m = slot[i].m->data, t.v = slot[i].v->data;
            t.narrow = master ? p->data : NULL;
            t.ndt = p->dtype;
            t.decay = slot[i].decay;
        }
        out[k++] = t;
    }
    return k;
}
#endif

double qt_schedule_lr(const qt_schedule *s, int64_t step) {
    double f;
    int64_t w = s->warmup;
    if (s->kind == QT_SCHED_CONSTANT) return s->lr;
    if (step < w) return s->lr * (double)step / (double)(w > 1 ? w : 1);
    switch (s->kind) {
    case QT_SCHED_CONSTANT_WITH_WARMUP:
        f = 1.0;
        break;
    case QT_SCHED_LINEAR: {
        int64_t d = s->total - w;
        f = (double)(s->total - step) / (double)(d > 1 ? d : 1);
        if (f < 0) f = 0;
        break;
    }
    case QT_SCHED_COSINE: {
        int64_t d = s->total - w;
        double progress = (double)(step - w) / (double)(d > 1 ? d : 1);
        f = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
        if (f < 0) f = 0;
        break;
    }
    default:
        f = 1.0;
        break;
    }
    if (s->min_ratio > 0) f = s->min_ratio + (1.0 - s->min_ratio) * f;
    return s->lr * f;
}

int qt_schedule_parse(const char *name, qt_sched_kind *out) {
    static const struct {
        const char *name;
        qt_sched_kind k;
    } T[] = {{"constant", QT_SCHED_CONSTANT},
             {"constant_with_warmup", QT_SCHED_CONSTANT_WITH_WARMUP},
             {"linear", QT_SCHED_LINEAR},
             {"cosine", QT_SCHED_COSINE}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(name, T[i].name)) {
            *out = T[i].k;
            return 0;
        }
    return -1;
}

static void to_f32(const qt_tensor *t, const void *src, float *dst, int64_t n) {
    if (t->dtype == QT_F32) {
        memcpy(dst, src, (size_t)n * 4);
        return;
    }
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = t->dtype == QT_BF16 ? qt_bf16_to_f32(h[i]) : qt_f16_to_f32(h[i]);
}

int qt_adamw_init(qt_adamw *opt, qt_ctx *ctx, qt_tensor **params, const bool *decay, int n,
                  double beta1, double beta2, double eps, double weight_decay, qt_err *err) {
    return qt_adamw_init_bits(opt, ctx, params, decay, n, beta1, beta2, eps, weight_decay, 32, err);
}

int qt_adamw_init_bits(qt_adamw *opt, qt_ctx *ctx, qt_tensor **params, const bool *decay, int n,
                       double beta1, double beta2, double eps, double weight_decay, int bits,
                       qt_err *err) {
    memset(opt, 0, sizeof *opt);
    if (bits != 32 && bits != 8)
        return qt_err_set(err, QT_ERR_ARG, "AdamW: %d-bit state (32 or 8)", bits);
    opt->beta1 = beta1, opt->beta2 = beta2, opt->eps = eps, opt->weight_decay = weight_decay;
    opt->bits = bits;
    opt->n = n;
    if (bits == 8) {
        if (qt_dynmap_create(1, 7, 8, opt->maps) || qt_dynmap_create(0, 7, 8, opt->maps + 256))
            return qt_err_set(err, QT_ERR_ARG, "AdamW: the 8-bit dynamic maps failed");
        if (ctx->device != QT_CPU) {
            int64_t nm = 512;
            opt->maps_dev = qt_param_new(ctx, QT_F32, 1, &nm, false, "adamw8.maps");
            qt_tensor_upload(ctx, opt->maps_dev, opt->maps);
        }
    }
    opt->slot = calloc((size_t)(n ? n : 1), sizeof *opt->slot);
    if (!opt->slot) return qt_err_set(err, QT_ERR_MEMORY, "AdamW: out of memory");
    for (int i = 0; i < n; i++) {
        qt_tensor *p = params[i];
        if (p->dtype != QT_F32 && p->dtype != QT_BF16 && p->dtype != QT_F16)
            return qt_err_set(err, QT_ERR_ARG, "AdamW: '%s' is %s, not a float tensor", p->name,
                              qt_dtype_name(p->dtype));
        qt_adamw_slot *s = &opt->slot[i];
        char nm[64];
        s->param = p;
        s->decay = decay ? decay[i] : true;
        if (bits == 8 && qt_numel(p) >= QT_ADAMW8_MIN_SIZE) {
            /* zero codes and zero absmax: moments of 0, as bitsandbytes starts */
            int64_t nb = (qt_numel(p) + QT_ADAMW8_BLOCK - 1) / QT_ADAMW8_BLOCK;
            snprintf(nm, sizeof nm, "%.40s.exp_avg", p->name);
            s->m8 = qt_param_new(ctx, QT_U8, p->ndim, p->shape, false, nm);
            snprintf(nm, sizeof nm, "%.40s.exp_avg_sq", p->name);
            s->v8 = qt_param_new(ctx, QT_U8, p->ndim, p->shape, false, nm);
            snprintf(nm, sizeof nm, "%.40s.exp_avg.absmax", p->name);
            s->m_absmax = qt_param_new(ctx, QT_F32, 1, &nb, false, nm);
            snprintf(nm, sizeof nm, "%.40s.exp_avg_sq.absmax", p->name);
            s->v_absmax = qt_param_new(ctx, QT_F32, 1, &nb, false, nm);
        } else {
            snprintf(nm, sizeof nm, "%.40s.exp_avg", p->name);
            s->m = qt_param_new(ctx, QT_F32, p->ndim, p->shape, false, nm);
            snprintf(nm, sizeof nm, "%.40s.exp_avg_sq", p->name);
            s->v = qt_param_new(ctx, QT_F32, p->ndim, p->shape, false, nm);
        }
        if (p->dtype != QT_F32) {
            snprintf(nm, sizeof nm, "%.40s.master", p->name);
            s->master = qt_param_new(ctx, QT_F32, p->ndim, p->shape, false, nm);
            int64_t n = qt_numel(p);
            if (p->device == QT_CPU) {
                to_f32(p, p->data, qt_f32(s->master), n);
            } else { /* through the host, once */
                void *h = malloc((size_t)n * (qt_dtype_size(p->dtype) + 4));
                if (!h) return qt_err_set(err, QT_ERR_MEMORY, "AdamW: out of memory");
                float *f = (float *)((char *)h + (size_t)n * qt_dtype_size(p->dtype));
                qt_tensor_download(ctx, p, h);
                to_f32(p, h, f, n);
                qt_tensor_upload(ctx, s->master, f);
                free(h);
            }
        }
    }
    return QT_OK;
}

void qt_adamw_free(qt_adamw *opt) {
    free(opt->slot); /* the tensors are the context's persistent allocations */
    free(opt->bwd_done), free(opt->bwd_sumsq);
    opt->slot = NULL, opt->bwd_done = NULL, opt->bwd_sumsq = NULL;
}

/* a CPU gradient's values as f32: the tensor's own data, or a malloc'd widened copy */
static float *grad_f32(const qt_tensor *g, int64_t n) {
    if (g->dtype == QT_F32) return g->data;
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    QT_CHECK(f, "out of host memory");
    to_f32(g, g->data, f, n);
    return f;
}

/* the sum of squares of p's gradient, in double (one tensor's share of the global norm) */
static double sumsq_cpu(const qt_tensor *p) {
    QT_CHECK(p->device == QT_CPU, "CPU gradients expected");
    int64_t m = qt_numel(p);
    float *g = grad_f32(p->grad, m);
    double sum = 0;
    for (int64_t j = 0; j < m; j++) sum += (double)g[j] * g[j];
    if (g != p->grad->data) free(g);
    return sum;
}

/* torch takes each tensor's norm in fp32, then the norm of those norms */
static double combine_norms(const double *sumsq, int n) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        float tn = (float)sqrt(sumsq[i]);
        total += (double)tn * tn;
    }
    return (float)sqrt(total);
}

double qt_grad_global_norm(qt_ctx *ctx, qt_tensor **params, int n) {
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        qt_cuda_optim_tensor *t = calloc((size_t)(n ? n : 1), sizeof *t);
        double *s = calloc((size_t)(n ? n : 1), sizeof *s);
        QT_CHECK(t && s, "out of host memory");
        int k = cuda_list(params, NULL, n, t);
        qt_cuda_optim_sumsq(ctx->cuda, t, k, s);
        double norm = combine_norms(s, k);
        free(t), free(s);
        return norm;
#endif
    }
    double *s = calloc((size_t)(n ? n : 1), sizeof *s);
    QT_CHECK(s, "out of host memory");
    int k = 0;
    for (int i = 0; i < n; i++) {
        qt_tensor *p = params[i];
        if (!p->grad || !p->grad_valid) continue;
        s[k++] = sumsq_cpu(p);
    }
    double norm = combine_norms(s, k);
    free(s);
    return norm;
}

double qt_grad_clip(qt_ctx *ctx, qt_tensor **params, int n, double max_norm) {
    double norm = qt_grad_global_norm(ctx, params, n);
    if (max_norm <= 0) return norm;
    float coef = (float)max_norm / ((float)norm + 1e-6f);
    if (coef > 1.0f) coef = 1.0f;
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        if (coef == 1.0f) return norm; /* g * 1 == g: the CPU's multiply changes nothing */
        qt_cuda_optim_tensor *t = calloc((size_t)(n ? n : 1), sizeof *t);
        QT_CHECK(t, "out of host memory");
        int k = cuda_list(params, NULL, n, t);
        qt_cuda_optim_scale(ctx->cuda, t, k, coef);
        free(t);
        return norm;
#endif
    }
    for (int i = 0; i < n; i++) {
        qt_tensor *p = params[i];
        if (!p->grad || !p->grad_valid) continue;
        int64_t m = qt_numel(p);
        if (p->grad->dtype == QT_F32) {
            float *g = p->grad->data;
            for (int64_t j = 0; j < m; j++) g[j] *= coef;
        } else { /* a bf16 / f16 gradient is scaled in f32 and rounded back, as on the GPU */
            uint16_t *h = p->grad->data;
            bool bf = p->grad->dtype == QT_BF16;
            for (int64_t j = 0; j < m; j++) {
                float x = (bf ? qt_bf16_to_f32(h[j]) : qt_f16_to_f32(h[j])) * coef;
                h[j] = bf ? qt_f32_to_bf16(x) : qt_f32_to_f16(x);
            }
        }
    }
    return norm;
}

/* the per-step scalars of bitsandbytes' AdamW8bit (its 8-bit and its 32-bit kernel alike) */
typedef struct {
    float b1, b2;
    float step_size;  /* -lr sqrt(1 - b2^t) / (1 - b1^t) */
    float eps_scaled; /* eps sqrt(1 - b2^t) */
    float decay;      /* 1 - lr weight_decay, applied after the update */
} qt_adamw8_scalars;

/* the scalars of optimizer step t (1-based) at learning rate lr: torch's, and bitsandbytes' for
 * 8-bit AdamW. The normal step and the optimizer in backward both take them from here. */
typedef struct {
    float b1, b2, eps;
    float step_size; /* lr / (1 - b1^t) */
    float bc2_sqrt;  /* sqrt(1 - b2^t) */
    float decay;     /* 1 - lr weight_decay (tensors with decay) */
    qt_adamw8_scalars k8;
} step_scalars;

static step_scalars scalars_of(const qt_adamw *opt, double lr, int64_t t) {
    /* torch: bias corrections in double-precision Python floats, applied in fp32 */
    double bc1 = 1.0 - pow(opt->beta1, (double)t);
    double bc2 = 1.0 - pow(opt->beta2, (double)t);
    step_scalars s;
    s.step_size = (float)(lr / bc1);
    s.bc2_sqrt = (float)sqrt(bc2);
    s.b1 = (float)opt->beta1, s.b2 = (float)opt->beta2, s.eps = (float)opt->eps;
    s.decay = (float)(1.0 - lr * opt->weight_decay);
    /* bitsandbytes' scalars (8-bit AdamW, both its kernels): its fp32 __powf / __fdividef
     * cannot be reproduced off its GPU, so they are taken in double and rounded once */
    s.k8 = (qt_adamw8_scalars){.b1 = s.b1,
                               .b2 = s.b2,
                               .step_size = (float)(-lr * s.bc2_sqrt / bc1),
                               .eps_scaled = s.eps * s.bc2_sqrt,
                               .decay = (float)(1.0 - lr * opt->weight_decay)};
    return s;
}

/* bitsandbytes' AdamW8bit on one tensor (the CUDA kernel, cuda/optim8.cu, is this loop) */
static void adamw8_cpu(const qt_adamw *opt, qt_adamw_slot *s, const qt_adamw8_scalars *sc) {
    const float b1 = sc->b1, b2 = sc->b2, step_size = sc->step_size, eps_scaled = sc->eps_scaled;
    const float decay = sc->decay;
    qt_tensor *p = s->param;
    int64_t n = qt_numel(p), nb = (n + QT_ADAMW8_BLOCK - 1) / QT_ADAMW8_BLOCK;
    float *w = s->master ? qt_f32(s->master) : qt_f32(p);
    float *gbuf = grad_f32(p->grad, n);
    uint8_t *m8 = s->m8->data, *v8 = s->v8->data;
    float *am = qt_f32(s->m_absmax), *av = qt_f32(s->v_absmax);
    const float *map_m = opt->maps, *map_v = opt->maps + 256;
#pragma omp parallel for schedule(static) if (nb > 64)
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t lo = blk * QT_ADAMW8_BLOCK,
                hi = lo + QT_ADAMW8_BLOCK < n ? lo + QT_ADAMW8_BLOCK : n;
        float m[QT_ADAMW8_BLOCK], v[QT_ADAMW8_BLOCK], a1 = 0.0f, a2 = 0.0f;
        for (int64_t j = lo; j < hi; j++) {
            float g = gbuf[j], mj = 0.0f, vj = 0.0f;
            if (isfinite(g)) { /* a non-finite gradient zeroes the element's moments */
                vj = map_v[v8[j]] * av[blk];
                vj = vj * b2 + (1.0f - b2) * g * g;
                mj = map_m[m8[j]] * am[blk];
                mj = mj * b1 + (1.0f - b1) * g;
            }
            m[j - lo] = mj, v[j - lo] = vj;
            a1 = fabsf(mj) > a1 ? fabsf(mj) : a1;
            a2 = fabsf(vj) > a2 ? fabsf(vj) : a2;
        }
        am[blk] = a1, av[blk] = a2;
        for (int64_t j = lo; j < hi; j++) {
            float mj = m[j - lo], vj = v[j - lo];
            if (isfinite(gbuf[j])) {
                w[j] = w[j] + step_size * (mj / (sqrtf(vj) + eps_scaled));
                if (s->decay) w[j] = w[j] * decay;
            }
            int c1 = qt_dynmap_quantize_value(map_m, a1 > 0.0f ? mj / a1 : 0.0f);
            if (signbit(map_m[c1]) != signbit(mj)) c1 += mj > 0.0f ? 1 : -1;
            m8[j] = (uint8_t)c1;
            v8[j] = qt_dynmap_quantize_value(map_v, a2 > 0.0f ? vj / a2 : 0.0f);
        }
    }
    if (s->master) {
        uint16_t *h = p->data;
        for (int64_t j = 0; j < n; j++)
            h[j] = p->dtype == QT_BF16 ? qt_f32_to_bf16(w[j]) : qt_f32_to_f16(w[j]);
    }
    if (gbuf != p->grad->data) free(gbuf);
}

/* bitsandbytes' 32-bit Adam kernel (kOptimizer32bit2State), which its AdamW8bit runs on the
 * tensors under min_8bit_size: torch's moments, but m by multiply-add rather than lerp, g*g
 * before the (1 - b2) factor, and its step size, eps and weight decay (after the update) */
static void adamw32_bnb_cpu(qt_adamw_slot *s, const float *g, const qt_adamw8_scalars *sc) {
    qt_tensor *p = s->param;
    int64_t n = qt_numel(p);
    float *w = s->master ? qt_f32(s->master) : qt_f32(p);
    float *m = qt_f32(s->m), *v = qt_f32(s->v);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t j = 0; j < n; j++) {
        m[j] = m[j] * sc->b1 + (1.0f - sc->b1) * g[j];
        v[j] = v[j] * sc->b2 + (1.0f - sc->b2) * (g[j] * g[j]);
        w[j] = w[j] + sc->step_size * (m[j] / (sqrtf(v[j]) + sc->eps_scaled));
        if (s->decay) w[j] = w[j] * sc->decay;
    }
}

/* one slot's update on the CPU (its gradient valid); the gradient is left as it is */
static void update_slot_cpu(qt_adamw *opt, qt_adamw_slot *s, const step_scalars *sc) {
    qt_tensor *p = s->param;
    QT_CHECK(p->device == QT_CPU, "CPU AdamW on a %s tensor", qt_device_name(p->device));
    if (!s->m) { /* 8-bit state */
        adamw8_cpu(opt, s, &sc->k8);
        return;
    }
    int64_t n = qt_numel(p);
    float *w = s->master ? qt_f32(s->master) : qt_f32(p);
    float *gbuf = grad_f32(p->grad, n);
    const float *g = gbuf;
    float *m = qt_f32(s->m), *v = qt_f32(s->v);
    if (opt->bits == 8) {
        adamw32_bnb_cpu(s, g, &sc->k8);
    } else {
        const float b1 = sc->b1, b2 = sc->b2, eps = sc->eps, bc2_sqrt = sc->bc2_sqrt;
        const float step_size = sc->step_size, decay = s->decay ? sc->decay : 1.0f;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t j = 0; j < n; j++) {
            w[j] *= decay;
            m[j] += (g[j] - m[j]) * (1.0f - b1); /* torch's lerp_ */
            v[j] = v[j] * b2 + (1.0f - b2) * g[j] * g[j];
            float denom = sqrtf(v[j]) / bc2_sqrt + eps;
            w[j] -= step_size * (m[j] / denom);
        }
    }
    if (s->master) {
        uint16_t *h = p->data;
        for (int64_t j = 0; j < n; j++)
            h[j] = p->dtype == QT_BF16 ? qt_f32_to_bf16(w[j]) : qt_f32_to_f16(w[j]);
    }
    if (gbuf != p->grad->data) free(gbuf);
}

#ifdef QT_HAVE_CUDA
/* the GPU kernels' scalars for the 32-bit tensors (bitsandbytes' 32-bit form with 8-bit
 * AdamW, whose small tensors these are) */
static qt_cuda_adamw_args cuda_args(const qt_adamw *opt, const step_scalars *sc) {
    qt_cuda_adamw_args a = {.coef = 1.0f,
                            .one_minus_beta1 = 1.0f - sc->b1,
                            .beta2 = sc->b2,
                            .one_minus_beta2 = 1.0f - sc->b2,
                            .eps = sc->eps,
                            .step_size = sc->step_size,
                            .bc2_sqrt = sc->bc2_sqrt,
                            .decay = sc->decay};
    if (opt->bits == 8) {
        a.bnb = true;
        a.beta1 = sc->b1;
        a.bnb_step_size = sc->k8.step_size;
        a.eps_scaled = sc->k8.eps_scaled;
    }
    return a;
}

static qt_cuda_adamw8_args cuda_args8(const qt_adamw8_scalars *sc) {
    return (qt_cuda_adamw8_args){.beta1 = sc->b1,
                                 .one_minus_beta1 = 1.0f - sc->b1,
                                 .beta2 = sc->b2,
                                 .one_minus_beta2 = 1.0f - sc->b2,
                                 .step_size = sc->step_size,
                                 .eps_scaled = sc->eps_scaled,
                                 .decay = sc->decay};
}

static qt_cuda_adamw8_tensor cuda_tensor8(const qt_adamw_slot *s) {
    qt_tensor *p = s->param;
    return (qt_cuda_adamw8_tensor){
        .w = s->master ? s->master->data : p->data,
        .g = p->grad->data,
        .m8 = s->m8->data,
        .v8 = s->v8->data,
        .m_absmax = s->m_absmax->data,
        .v_absmax = s->v_absmax->data,
        .narrow = s->master ? p->data : NULL,
        .n = qt_numel(p),
        .gdt = p->grad->dtype,
        .ndt = p->dtype,
        .decay = s->decay, /* x 1 when weight_decay is 0: exact */
    };
}
#endif

#ifdef QT_HAVE_CUDA
/* the 8-bit slots' update on the GPU (bitsandbytes' form of the step size, eps and decay) */
static void adamw8_step_cuda(qt_adamw *opt, qt_ctx *ctx, const qt_adamw8_scalars *sc) {
    qt_cuda_adamw8_tensor *t = calloc((size_t)(opt->n ? opt->n : 1), sizeof *t);
    QT_CHECK(t, "out of host memory");
    int k = 0;
    for (int i = 0; i < opt->n; i++) {
        qt_adamw_slot *s = &opt->slot[i];
        qt_tensor *p = s->param;
        if (!s->m8 || !p->grad || !p->grad_valid) continue;
        t[k++] = cuda_tensor8(s);
    }
    qt_cuda_adamw8_args a = cuda_args8(sc);
    qt_cuda_optim_adamw8(ctx->cuda, t, k, opt->maps_dev->data, &a);
    free(t);
}
#endif

void qt_adamw_step(qt_adamw *opt, qt_ctx *ctx, double lr) {
    opt->step++;
    step_scalars sc = scalars_of(opt, lr, opt->step);
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        qt_cuda_optim_tensor *t = calloc((size_t)(opt->n ? opt->n : 1), sizeof *t);
        QT_CHECK(t, "out of host memory");
        int k = cuda_list(NULL, opt->slot, opt->n, t);
        qt_cuda_adamw_args a = cuda_args(opt, &sc);
        qt_cuda_optim_adamw(ctx->cuda, t, k, &a);
        free(t);
        if (opt->bits == 8) adamw8_step_cuda(opt, ctx, &sc.k8);
        for (int i = 0; i < opt->n; i++) qt_grad_zero(opt->slot[i].param);
        return;
#endif
    }
    for (int i = 0; i < opt->n; i++) {
        qt_adamw_slot *s = &opt->slot[i];
        if (!s->param->grad || !s->param->grad_valid) continue; /* torch skips those */
        update_slot_cpu(opt, s, &sc);
        qt_grad_zero(s->param);
    }
}

/* ---- optimizer in backward ------------------------------------------------------------------ */

int qt_adamw_bwd_begin(qt_adamw *opt, qt_ctx *ctx, double lr, qt_err *err) {
    (void)ctx;
    QT_CHECK(!opt->bwd_on, "qt_adamw_bwd_begin: a step is already open");
    if (!opt->bwd_done) {
        opt->bwd_done = calloc((size_t)(opt->n ? opt->n : 1), sizeof *opt->bwd_done);
        opt->bwd_sumsq = calloc((size_t)(opt->n ? opt->n : 1), sizeof *opt->bwd_sumsq);
        if (!opt->bwd_done || !opt->bwd_sumsq) {
            free(opt->bwd_done), free(opt->bwd_sumsq);
            opt->bwd_done = NULL, opt->bwd_sumsq = NULL;
            return qt_err_set(err, QT_ERR_MEMORY, "AdamW: out of memory");
        }
    }
    memset(opt->bwd_done, 0, (size_t)opt->n * sizeof *opt->bwd_done);
    opt->bwd_on = true;
    opt->bwd_lr = lr;
    return QT_OK;
}

int qt_adamw_find(const qt_adamw *opt, const qt_tensor *t) {
    for (int i = 0; i < opt->n; i++)
        if (opt->slot[i].param == t) return i;
    return -1;
}

bool qt_adamw_bwd_update(qt_adamw *opt, qt_ctx *ctx, int i) {
    QT_CHECK(opt->bwd_on, "qt_adamw_bwd_update outside qt_adamw_bwd_begin / _end");
    QT_CHECK(i >= 0 && i < opt->n, "AdamW slot %d of %d", i, opt->n);
    qt_adamw_slot *s = &opt->slot[i];
    qt_tensor *p = s->param;
    if (opt->bwd_done[i] || !p->grad || !p->grad_valid) return false;
    /* the step qt_adamw_bwd_end will count: opt->step + 1, as qt_adamw_step takes it */
    step_scalars sc = scalars_of(opt, opt->bwd_lr, opt->step + 1);
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        qt_cuda_optim_tensor g, t; /* the gradient alone (for its norm); the 32-bit update */
        cuda_list(&p, NULL, 1, &g);
        qt_cuda_optim_sumsq_into(ctx->cuda, &g, i, opt->n);
        if (s->m) {
            QT_CHECK(cuda_list(NULL, s, 1, &t) == 1, "AdamW slot %d: no update to make", i);
            qt_cuda_adamw_args a = cuda_args(opt, &sc);
            qt_cuda_optim_adamw_one(ctx->cuda, &t, &a);
        } else {
            qt_cuda_adamw8_tensor t8 = cuda_tensor8(s);
            qt_cuda_adamw8_args a = cuda_args8(&sc.k8);
            qt_cuda_optim_adamw8(ctx->cuda, &t8, 1, opt->maps_dev->data, &a);
        }
#endif
    } else {
        opt->bwd_sumsq[i] = sumsq_cpu(p);
        update_slot_cpu(opt, s, &sc);
    }
    qt_grad_zero(p);
    opt->bwd_done[i] = true;
    return true;
}

double qt_adamw_bwd_end(qt_adamw *opt, qt_ctx *ctx) {
    QT_CHECK(opt->bwd_on, "qt_adamw_bwd_end without qt_adamw_bwd_begin");
    /* gradients nobody handed over during the backward: now, in slot order */
    for (int i = 0; i < opt->n; i++) qt_adamw_bwd_update(opt, ctx, i);
    opt->bwd_on = false;
    opt->step++;
    int k = 0;
    for (int i = 0; i < opt->n; i++) k += opt->bwd_done[i];
    if (k == 0) return 0.0;
#ifdef QT_HAVE_CUDA
    if (ctx->device == QT_CUDA) qt_cuda_optim_sums_read(ctx->cuda, opt->n, opt->bwd_sumsq);
#endif
    /* the consumed tensors in slot order: qt_grad_global_norm's list, so the same norm */
    double *s = malloc((size_t)k * sizeof *s);
    QT_CHECK(s, "out of host memory");
    k = 0;
    for (int i = 0; i < opt->n; i++)
        if (opt->bwd_done[i]) s[k++] = opt->bwd_sumsq[i];
    double norm = combine_norms(s, k);
    free(s);
    return norm;
}
