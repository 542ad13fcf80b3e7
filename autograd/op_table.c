/* op_table.c - the one table of ops: name, forward and backward kernel per device.
 * A NULL entry means "no kernel on this device": qt_node_run and qt_backward report it by
 * name. Adding a CUDA kernel = writing it in cuda/ and naming it here with QT_CUDA_FN. */
#include "kernels.h"

#ifdef QT_HAVE_CUDA
#include "cuda/cuda_ops.h"
#define QT_CUDA_FN(f) f
#else
#define QT_CUDA_FN(f) NULL
#endif

#define QT_CPU_OP(id, op)                                                                          \
    [id] = {                                                                                       \
        .name = #op, .fwd = {[QT_CPU] = qt_cpu_##op##_fwd}, .bwd = {[QT_CPU] = qt_cpu_##op##_bwd}}
#define QT_BOTH_OP(id, op)                                                                         \
    [id] = {.name = #op,                                                                           \
            .fwd = {[QT_CPU] = qt_cpu_##op##_fwd, [QT_CUDA] = QT_CUDA_FN(qt_cuda_##op##_fwd)},     \
            .bwd = {[QT_CPU] = qt_cpu_##op##_bwd, [QT_CUDA] = QT_CUDA_FN(qt_cuda_##op##_bwd)}}

static const qt_op_def qt_op_table[QT_OP_COUNT] = {
    QT_BOTH_OP(QT_OP_MATMUL, matmul),
    QT_BOTH_OP(QT_OP_ADD, add),
    QT_BOTH_OP(QT_OP_MUL, mul),
    QT_BOTH_OP(QT_OP_SCALE, scale),
    QT_BOTH_OP(QT_OP_BIAS_ADD, bias_add),
    QT_BOTH_OP(QT_OP_SILU, silu),
    QT_BOTH_OP(QT_OP_SWIGLU, swiglu),
    QT_BOTH_OP(QT_OP_RESHAPE, reshape),
    QT_BOTH_OP(QT_OP_PERMUTE, permute),
    QT_BOTH_OP(QT_OP_CONCAT, concat),
    QT_BOTH_OP(QT_OP_SLICE, slice),
    QT_BOTH_OP(QT_OP_CAST, cast),
    [QT_OP_CHECKPOINT] = {.name = "checkpoint",
                          .bwd = {[QT_CPU] = qt_checkpoint_bwd, [QT_CUDA] = qt_checkpoint_bwd}},
    QT_BOTH_OP(QT_OP_ATTENTION, attention),
    QT_BOTH_OP(QT_OP_SOFTMAX, softmax),
    QT_BOTH_OP(QT_OP_CROSS_ENTROPY, cross_entropy),
    QT_BOTH_OP(QT_OP_EMBEDDING, embedding),
    QT_BOTH_OP(QT_OP_RMSNORM, rmsnorm),
    QT_BOTH_OP(QT_OP_ROPE, rope),
    QT_BOTH_OP(QT_OP_DROPOUT, dropout),
    QT_BOTH_OP(QT_OP_NF4_MATMUL, nf4_matmul),
    QT_BOTH_OP(QT_OP_FAKEQUANT, fakequant),
    QT_BOTH_OP(QT_OP_LINEAR_CE, linear_ce),
    QT_BOTH_OP(QT_OP_LORA_ADD, lora_add),
    /* ops added by their own files follow */
};

const qt_op_def *qt_op_get(qt_op op) {
    QT_CHECK(op >= 0 && op < QT_OP_COUNT, "unknown op %d", (int)op);
    return &qt_op_table[op];
}

const char *qt_op_name(qt_op op) {
    const char *n = qt_op_get(op)->name;
    return n ? n : "(unregistered)";
}
