/* cuda_optim.h - the optimizer's GPU kernels (cuda/optim.cu), with C linkage: a multi-tensor
 * sum of squares for global-norm clipping and a multi-tensor AdamW step. train/optim.c calls
 * them when its tensors live on the GPU; the arithmetic is its CPU loop's, bit for bit. */
#ifndef QT_CUDA_OPTIM_H
#define QT_CUDA_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "cuda/cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "autograd/tensor.h" /* qt_dtype: C, no linkage markers */

/* one trained tensor: fp32 values w (the parameter, or its master when the parameter is bf16 /
 * f16: then narrow is the parameter, rounded to nearest even after the update), gradient g of
 * dtype gdt (F32, BF16, F16), fp32 moments m and v, n elements */
typedef struct {
    float *w;
    const void *g;
    float *m, *v;
    void *narrow;
    int64_t n;
    int gdt, ndt;
    bool decay;
} qt_cuda_optim_tensor;

typedef struct {
    float coef; /* clipping factor for the gradients (1: none) */
    float one_minus_beta1, beta2, one_minus_beta2, eps;
    float step_size, bc2_sqrt; /* lr / (1 - beta1^t), sqrt(1 - beta2^t) */
    float decay;               /* 1 - lr * weight_decay, for tensors with decay */
    /* bnb: bitsandbytes' 32-bit Adam kernel instead of torch's AdamW (8-bit AdamW's tensors
     * under 4096 elements): m = m b1 + (1 - b1) g, v = v b2 + (1 - b2) g², then
     * w += bnb_step_size m / (sqrt(v) + eps_scaled) and w *= decay after it */
    bool bnb;
    float beta1;
    float bnb_step_size; /* -lr * sqrt(1 - beta2^t) / (1 - beta1^t) */
    float eps_scaled;    /* eps * sqrt(1 - beta2^t) */
} qt_cuda_adamw_args;

/* The chunk tables live in the context (c->optim) and are rebuilt only when the list of
 * tensors changes; qt_cuda_ctx_destroy frees them. */
void qt_cuda_optim_free(qt_cuda_ctx *c, qt_cuda_optim *o);
/* out[i] = sum of g_i² in double, deterministic; synchronizes the stream */
void qt_cuda_optim_sumsq(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int n, double *out);
/* g_i *= coef for every tensor (gradient clipping), in place */
void qt_cuda_optim_scale(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int n, float coef);
/* one AdamW update of every tensor, queued on the stream */
void qt_cuda_optim_adamw(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int n,
                         const qt_cuda_adamw_args *a);

/* Optimizer in backward: one tensor at a time, as its gradient is complete. Both give what
 * the multi-tensor calls above give that tensor, bit for bit (the update: the same per-element
 * code; the sum of squares: the table's chunks and reduction tree), without their chunk
 * table, which would be rebuilt for every tensor. */
/* one AdamW update of one tensor, queued on the stream */
void qt_cuda_optim_adamw_one(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t,
                             const qt_cuda_adamw_args *a);
/* t's sum of g² into slot `slot` of a device array of n_slots doubles the context keeps,
 * queued on the stream (no synchronisation); qt_cuda_optim_sums_read copies the first n
 * slots to the host (synchronizes). Slots not written since are left as they were. */
void qt_cuda_optim_sumsq_into(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int slot, int n_slots);
void qt_cuda_optim_sums_read(qt_cuda_ctx *c, int n, double *out);

/* One 8-bit AdamW tensor (bitsandbytes' blockwise AdamW8bit): fp32 values w (or the master of
 * a bf16 / f16 parameter `narrow`), gradient g of dtype gdt, moment codes m8 / v8 [n] with one
 * fp32 absmax per block of QT_ADAMW8_BLOCK elements (m_absmax / v_absmax) */
typedef struct {
    float *w;
    const void *g;
    uint8_t *m8, *v8;
    float *m_absmax, *v_absmax;
    void *narrow;
    int64_t n;
    int gdt, ndt;
    bool decay;
} qt_cuda_adamw8_tensor;

typedef struct {
    float beta1, one_minus_beta1, beta2, one_minus_beta2;
    float step_size;  /* -lr * sqrt(1 - beta2^t) / (1 - beta1^t) */
    float eps_scaled; /* eps * sqrt(1 - beta2^t) */
    float decay;      /* 1 - lr * weight_decay, applied after the update (bitsandbytes' order) */
} qt_cuda_adamw8_args;

/* one 8-bit AdamW update per tensor, queued on the stream; maps: the signed (moment 1) and
 * unsigned (moment 2) dynamic maps, 2 x 256 f32 in device memory */
void qt_cuda_optim_adamw8(qt_cuda_ctx *c, const qt_cuda_adamw8_tensor *t, int n, const float *maps,
                          const qt_cuda_adamw8_args *a);

#ifdef __cplusplus
}
#endif

#endif
