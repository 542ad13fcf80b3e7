/* kernels.h - the kernel entry points of the op table, per device, and the few device-generic
 * helpers that backward code uses. CPU kernels are the reference (f32 math, OpenBLAS, OpenMP);
 * CUDA kernels are declared in cuda/cuda_ops.h and exist only when QT_HAVE_CUDA is defined. */
#ifndef QT_KERNELS_H
#define QT_KERNELS_H

#include "tape.h"

/* dst = beta * dst + src (same numel and dtype; beta is 0 or 1), on the context's device */
void qt_k_axpby(qt_ctx *ctx, qt_tensor *dst, const qt_tensor *src, float beta);

/* a matmul node's geometry (checked): C [batch, M, N] = op(A) · op(B); B shared across the
 * batch when 2-D. One definition for the CPU and CUDA kernels. */
typedef struct {
    int64_t batch, M, N, K;
    bool shared_b;
    bool ta, tb;
} qt_mm_geom;
qt_mm_geom qt_mm_geom_of(const qt_tensor *a, const qt_tensor *b, bool ta, bool tb);

/* ops whose output took over an input y's buffer (lora_add, matmul_add) hand the output's
 * gradient buffer to y in their backward (device-generic; y NULL: nothing) */
void qt_pass_grad(qt_ctx *ctx, qt_tensor *y, qt_tensor *o);

/* the backward of QT_OP_CHECKPOINT (device-generic: it replays the span) */
void qt_checkpoint_bwd(qt_ctx *ctx, qt_node *n);

#define QT_DECLARE_CPU_OP(op)                                                                      \
    void qt_cpu_##op##_fwd(qt_ctx *ctx, qt_node *n);                                               \
    void qt_cpu_##op##_bwd(qt_ctx *ctx, qt_node *n);

QT_DECLARE_CPU_OP(embedding)
QT_DECLARE_CPU_OP(matmul)
QT_DECLARE_CPU_OP(add)
QT_DECLARE_CPU_OP(mul)
QT_DECLARE_CPU_OP(scale)
QT_DECLARE_CPU_OP(bias_add)
QT_DECLARE_CPU_OP(rmsnorm)
QT_DECLARE_CPU_OP(rope)
QT_DECLARE_CPU_OP(silu)
QT_DECLARE_CPU_OP(swiglu)
QT_DECLARE_CPU_OP(attention)
QT_DECLARE_CPU_OP(softmax)
QT_DECLARE_CPU_OP(cross_entropy)
QT_DECLARE_CPU_OP(dropout)
QT_DECLARE_CPU_OP(reshape)
QT_DECLARE_CPU_OP(permute)
QT_DECLARE_CPU_OP(concat)
QT_DECLARE_CPU_OP(slice)
QT_DECLARE_CPU_OP(cast)
QT_DECLARE_CPU_OP(nf4_matmul)
QT_DECLARE_CPU_OP(fakequant)
QT_DECLARE_CPU_OP(linear_ce)
QT_DECLARE_CPU_OP(lora_add)

/* CPU helpers shared by kernels: dst = beta*dst + src over n floats */
void qt_cpu_axpby_f32(float *dst, const float *src, int64_t n, float beta);

#endif
