/* dropout.cu - dropout on the GPU (the reference: autograd/ops_dropout.c). The mask is the
 * contract of autograd/philox.h, whose functions compile for the device too: the CPU and the
 * GPU draw the same bits for (seed, offset, element), so the masks are identical and the
 * outputs bit-identical (x * scale with scale = 1.0f / (1.0f - p) computed on the host exactly
 * as the CPU computes it). Backward regenerates the mask from the node's (seed, offset) and
 * applies it to the output gradient (the mask is its own transpose); nothing is stored.
 * One thread per Philox block (four consecutive elements), grid-stride.
 * Storage: F32, BF16 or F16 (x, y and the gradients share it). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "autograd/philox.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

/* ---- kernel ----------------------------------------------------------------------------- */

/* y = (y +) mask(seed, offset) * x * scale over n elements (x, y [n]) */
template <typename T>
__global__ void dropout_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t n, uint64_t seed,
                               uint64_t offset, float p, float scale, int accumulate) {
    const int64_t nblk = (n + 3) / 4;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nblk;
         b += (int64_t)gridDim.x * blockDim.x) {
        uint32_t w[4];
        qt_dropout_block(seed, offset, (uint64_t)b, w);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int64_t i = 4 * b + k;
            if (i >= n) break;
            float v = qt_philox_uniform(w[k]) >= p ? __fmul_rn(ld(x, i), scale) : 0.0f;
            st(y, i, accumulate ? __fadd_rn(ld(y, i), v) : v);
        }
    }
}

template <typename T>
void launch_dropout(qt_ctx *ctx, const qt_node *nd, const void *x, void *y, float beta,
                    const char *what) {
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    QT_CHECK(c, "CUDA kernel called on a context without a CUDA backend");
    int64_t n = qt_numel(nd->out);
    if (n == 0) return;
    const float p = nd->fp[0];
    const float scale = 1.0f / (1.0f - p); /* f32, as the CPU and philox.h's contract say */
    int64_t nblk = (n + 3) / 4;
    dropout_kernel<T><<<grid_for(c, nblk), kThreads, 0, c->stream>>>(
        (const T *)x, (T *)y, n, (uint64_t)nd->ip[0], (uint64_t)nd->ip[1], p, scale, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH(what);
}

qt_dtype check_node(const qt_node *nd, const char *what) {
    const qt_tensor *x = nd->in[0], *y = nd->out;
    QT_CHECK(x->device == QT_CUDA && y->device == QT_CUDA, "%s: tensors are not on CUDA", what);
    QT_CHECK(y->dtype == x->dtype && qt_numel(y) == qt_numel(x), "%s: out differs from x", what);
    return x->dtype;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_dropout_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "dropout");
    QT_FLOAT_DISPATCH(dt, T, "dropout",
                      launch_dropout<T>(ctx, nd, nd->in[0]->data, nd->out->data, 0.0f,
                                        "launching dropout forward"));
}

extern "C" void qt_cuda_dropout_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "dropout backward");
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "dropout backward: missing or mismatched output gradient");
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    QT_FLOAT_DISPATCH(
        dt, T, "dropout backward",
        launch_dropout<T>(ctx, nd, gy->data, g->data, beta, "launching dropout backward"));
}
