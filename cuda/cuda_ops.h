/* cuda_ops.h - the CUDA kernels of the op table (autograd/op_table.c names them). Each op
 * family lives in one .cu file as kernel -> launcher -> checked entry; an entry has the same
 * signature as its CPU twin in autograd/kernels.h and the same gradient rule (beta from
 * qt_grad_acquire). Storage may be bf16, f16 or f32; accumulation is always f32. */
#ifndef QT_CUDA_OPS_H
#define QT_CUDA_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* inside the extern "C" block: autograd's headers are C and carry no linkage markers */
#include "autograd/tape.h"

/* dst = beta * dst + src (beta 0 or 1; same numel and dtype). beta 0 copies any dtype; beta 1
 * needs a float dtype (F32, BF16, F16) and adds in f32. */
void qt_cuda_axpby(qt_ctx *ctx, qt_tensor *dst, const qt_tensor *src, float beta);

#define QT_DECLARE_CUDA_OP(op)                                                                     \
    void qt_cuda_##op##_fwd(qt_ctx *ctx, qt_node *n);                                              \
    void qt_cuda_##op##_bwd(qt_ctx *ctx, qt_node *n);

QT_DECLARE_CUDA_OP(add)
QT_DECLARE_CUDA_OP(mul)
QT_DECLARE_CUDA_OP(scale)
QT_DECLARE_CUDA_OP(bias_add)
QT_DECLARE_CUDA_OP(silu)
QT_DECLARE_CUDA_OP(swiglu)
QT_DECLARE_CUDA_OP(cast)

#ifdef __cplusplus
}
#endif

#endif
