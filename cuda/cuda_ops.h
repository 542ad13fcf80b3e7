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
/* norm.cu, rope.cu, embedding.cu, dropout.cu, softmax_loss.cu, shape.cu */
QT_DECLARE_CUDA_OP(rmsnorm)
QT_DECLARE_CUDA_OP(rope)
QT_DECLARE_CUDA_OP(embedding)
QT_DECLARE_CUDA_OP(dropout)
QT_DECLARE_CUDA_OP(softmax)
QT_DECLARE_CUDA_OP(cross_entropy)
QT_DECLARE_CUDA_OP(reshape)
QT_DECLARE_CUDA_OP(permute)
QT_DECLARE_CUDA_OP(concat)
QT_DECLARE_CUDA_OP(slice)
/* matmul.cu, nf4.cu */
QT_DECLARE_CUDA_OP(matmul)
QT_DECLARE_CUDA_OP(nf4_matmul)
/* attention.cu, fakequant.cu */
QT_DECLARE_CUDA_OP(attention)
QT_DECLARE_CUDA_OP(fakequant)
/* The cross-entropy kernels' target check (softmax_loss.cu): the first bad row the device
 * found (N: none; not read while the stream is being captured), and the failure naming it. */
int64_t qt_cuda_ce_bad_row(qt_ctx *ctx, const int64_t *bad_d, int64_t N);
void qt_cuda_ce_check_row(qt_ctx *ctx, const int32_t *tgt_d, int64_t bad, int64_t N, int64_t V);
/* linear_ce.cu, lora.cu */
QT_DECLARE_CUDA_OP(linear_ce)
QT_DECLARE_CUDA_OP(lora_add)

/* Row-major C[m, n] = beta * C + op(A) · op(B) through cuBLASLt (cached descriptors), beta 0
 * (C not read) or 1; A is [m, k] or (ta) [k, m], B is [k, n] or (tb) [n, k], all packed, one
 * storage dtype (F32: fp32 math without TF32; BF16/F16: fp32 accumulation). The _strided
 * form runs batch such products at element strides sa, sb, sc. */
void qt_cuda_gemm(qt_ctx *ctx, qt_dtype dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                  const void *A, const void *B, void *C, float beta);
void qt_cuda_gemm_strided(qt_ctx *ctx, qt_dtype dt, bool ta, bool tb, int64_t m, int64_t n,
                          int64_t k, int64_t batch, const void *A, int64_t sa, const void *B,
                          int64_t sb, void *C, int64_t sc, float beta);
/* qt_cuda_gemm with C (and the accumulation across beta-1 calls) in ct: F32 accumulators for
 * BF16/F16 operands, or ct == dt */
void qt_cuda_gemm_out(qt_ctx *ctx, qt_dtype dt, qt_dtype ct, bool ta, bool tb, int64_t m, int64_t n,
                      int64_t k, const void *A, const void *B, void *C, float beta);
/* the same with C = alpha · op(A) · op(B) + beta · C (alpha folded into cuBLASLt's epilogue) */
void qt_cuda_gemm_alpha(qt_ctx *ctx, qt_dtype dt, qt_dtype ct, bool ta, bool tb, int64_t m,
                        int64_t n, int64_t k, float alpha, const void *A, const void *B, void *C,
                        float beta);
/* The weight nf4_matmul multiplies by: w's pieces (on CUDA) dequantized into out [w->out *
 * w->in] of dtype dt (F32, BF16, F16), bit-identical to the CPU's values rounded to dt. The _ex
 * form picks the kernel's tile (1, 2 or 4 16-byte loads per lane; 0: the default), for the
 * benchmark. */
void qt_cuda_nf4_dequant(qt_ctx *ctx, const qt_nf4_weight *w, qt_dtype dt, void *out);
void qt_cuda_nf4_dequant_ex(qt_ctx *ctx, const qt_nf4_weight *w, qt_dtype dt, void *out, int loads);
/* Times iters calls of enqueue (work queued on the context's stream), one pair of CUDA events
 * around each: ms[i] in milliseconds. For benchmarks. */
void qt_cuda_time_ms(qt_ctx *ctx, void (*enqueue)(qt_ctx *ctx, void *arg), void *arg, int iters,
                     float *ms);

#ifdef __cplusplus
}
#endif

#endif
