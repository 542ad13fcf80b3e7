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
    opt->slot = NULL;
}

/* a CPU gradient's values as f32: the tensor's own data, or a malloc'd widened copy */
static float *grad_f32(const qt_tensor *g, int64_t n) {
    if (g->dtype == QT_F32) return g->data;
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    QT_CHECK(f, "out of host memory");
    to_f32(g, g->data, f, n);
    return f;
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
        QT_CHECK(p->device == QT_CPU, "CPU gradients expected");
        int64_t m = qt_numel(p);
        float *g = grad_f32(p->grad, m);
        double sum = 0;
        for (int64_t j = 0; j < m; j++) sum += (double)g[j] * g[j];
        if (g != p->grad->data) free(g);
        s[k++] = sum;
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

/* the 8-bit slots' update (bitsandbytes' form of the step size, eps and decay) */
static void adamw8_step(qt_adamw *opt, qt_ctx *ctx, const qt_adamw8_scalars *sc) {
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        qt_cuda_adamw8_tensor *t = calloc((size_t)(opt->n ? opt->n : 1), sizeof *t);
        QT_CHECK(t, "out of host memory");
        int k = 0;
        for (int i = 0; i < opt->n; i++) {
            qt_adamw_slot *s = &opt->slot[i];
            qt_tensor *p = s->param;
            if (!s->m8 || !p->grad || !p->grad_valid) continue;
            t[k++] = (qt_cuda_adamw8_tensor){
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
        qt_cuda_adamw8_args a = {.beta1 = sc->b1,
                                 .one_minus_beta1 = 1.0f - sc->b1,
                                 .beta2 = sc->b2,
                                 .one_minus_beta2 = 1.0f - sc->b2,
                                 .step_size = sc->step_size,
                                 .eps_scaled = sc->eps_scaled,
                                 .decay = sc->decay};
        qt_cuda_optim_adamw8(ctx->cuda, t, k, opt->maps_dev->data, &a);
        free(t);
        return;
#endif
    }
    for (int i = 0; i < opt->n; i++) {
        qt_adamw_slot *s = &opt->slot[i];
        if (!s->m8 || !s->param->grad || !s->param->grad_valid) continue;
        QT_CHECK(s->param->device == QT_CPU, "CPU AdamW on a %s tensor",
                 qt_device_name(s->param->device));
        adamw8_cpu(opt, s, sc);
    }
}

void qt_adamw_step(qt_adamw *opt, qt_ctx *ctx, double lr) {
    opt->step++;
    /* torch: bias corrections in double-precision Python floats, applied in fp32 */
    double bc1 = 1.0 - pow(opt->beta1, (double)opt->step);
    double bc2 = 1.0 - pow(opt->beta2, (double)opt->step);
    float step_size = (float)(lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float b1 = (float)opt->beta1, b2 = (float)opt->beta2, eps = (float)opt->eps;
    /* bitsandbytes' scalars (8-bit AdamW, both its kernels): its fp32 __powf / __fdividef
     * cannot be reproduced off its GPU, so they are taken in double and rounded once */
    qt_adamw8_scalars k8 = {.b1 = b1,
                            .b2 = b2,
                            .step_size = (float)(-lr * bc2_sqrt / bc1),
                            .eps_scaled = eps * bc2_sqrt,
                            .decay = (float)(1.0 - lr * opt->weight_decay)};
    if (ctx->device == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        qt_cuda_optim_tensor *t = calloc((size_t)(opt->n ? opt->n : 1), sizeof *t);
        QT_CHECK(t, "out of host memory");
        int k = cuda_list(NULL, opt->slot, opt->n, t);
        qt_cuda_adamw_args a = {.coef = 1.0f,
                                .one_minus_beta1 = 1.0f - b1,
                                .beta2 = b2,
                                .one_minus_beta2 = 1.0f - b2,
                                .eps = eps,
                                .step_size = step_size,
                                .bc2_sqrt = bc2_sqrt,
                                .decay = (float)(1.0 - lr * opt->weight_decay)};
        if (opt->bits == 8) { /* the small tensors: bitsandbytes' 32-bit kernel's form */
            a.bnb = true;
            a.beta1 = b1;
            a.bnb_step_size = k8.step_size;
            a.eps_scaled = k8.eps_scaled;
        }
        qt_cuda_optim_adamw(ctx->cuda, t, k, &a);
        free(t);
        if (opt->bits == 8) adamw8_step(opt, ctx, &k8);
        for (int i = 0; i < opt->n; i++) qt_grad_zero(opt->slot[i].param);
        return;
#endif
    }
    if (opt->bits == 8) adamw8_step(opt, ctx, &k8);
    for (int i = 0; i < opt->n; i++) {
        qt_adamw_slot *s = &opt->slot[i];
        qt_tensor *p = s->param;
        if (!p->grad || !p->grad_valid) continue; /* torch skips parameters without grads */
        if (!s->m) {                              /* 8-bit state: updated above */
            qt_grad_zero(p);
            continue;
        }
        QT_CHECK(p->device == QT_CPU, "CPU AdamW on a %s tensor", qt_device_name(p->device));
        float *w = s->master ? qt_f32(s->master) : qt_f32(p);
        float *gbuf = grad_f32(p->grad, qt_numel(p));
        const float *g = gbuf;
        float *m = qt_f32(s->m), *v = qt_f32(s->v);
        float decay = s->decay ? (float)(1.0 - lr * opt->weight_decay) : 1.0f;
        int64_t n = qt_numel(p);
        if (opt->bits == 8) {
            adamw32_bnb_cpu(s, g, &k8);
        } else {
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
        qt_grad_zero(p);
    }
}
