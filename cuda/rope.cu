/* rope.cu - rotary position embedding on the GPU (the reference: autograd/ops_rope.c), in the
 * rotate-half convention: for i < hd/2, f = f32(pos) * inv_freq[i], c = cosf(f) * attn_scale,
 * s = sinf(f) * attn_scale,
 *   y[i] = x[i] c - x[i + hd/2] s,   y[i + hd/2] = x[i + hd/2] c + x[i] s.
 * The backward applies the transpose (s negated) to the output gradient. One thread per
 * (token, frequency): it computes cos/sin once and rotates that pair in every head, as the CPU
 * loop does. Products and sums use the _rn intrinsics in the CPU's order (no FMA contraction):
 * the only difference from the CPU is cosf/sinf's last ulp.
 * Storage: x, y and the gradients F32, BF16 or F16; pos i32; inv_freq f32. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

/* ---- kernel ----------------------------------------------------------------------------- */

/* x, y [bt, H, 2h]; pos [bt]; inv_freq [h]. sign +1: forward; -1: the transpose (backward),
 * y = y + rotated x when accumulate (y is then a gradient buffer holding a value). y may be x
 * (in place, not accumulating): a thread reads its pair before writing it. */
template <typename T>
__global__ void rope_kernel(const T *x, T *y, const int32_t *__restrict__ pos,
                            const float *__restrict__ inv_freq, int64_t bt, int64_t H, int64_t h,
                            float scale, float sign, int accumulate) {
    const int64_t n = bt * h, hd = 2 * h;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / h, i = e % h;
        const float f = __fmul_rn((float)pos[r], inv_freq[i]);
        const float c = __fmul_rn(cosf(f), scale);
        const float s = __fmul_rn(__fmul_rn(sinf(f), scale), sign);
        for (int64_t k = 0; k < H; k++) {
            const int64_t base = (r * H + k) * hd;
            const float a = ld(x, base + i), b = ld(x, base + i + h);
            float ya = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
            float yb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
            if (accumulate) {
                ya = __fadd_rn(ya, ld(y, base + i));
                yb = __fadd_rn(yb, ld(y, base + i + h));
            }
            st(y, base + i, ya);
            st(y, base + i + h, yb);
        }
    }
}

/* bf16 with hd a multiple of 16: a thread owns 8 consecutive frequencies of one head of a
 * token and moves both halves as 16-byte vectors (cos/sin again per head: cheap next to the
 * memory traffic, and every head its own thread); per element the arithmetic above */
__global__ void rope_bf16x8_kernel(const uint4 *x, uint4 *y, const int32_t *__restrict__ pos,
                                   const float *__restrict__ inv_freq, int64_t bt, int64_t H,
                                   int64_t h, float scale, float sign, int accumulate) {
    const int64_t h8 = h / 8, n = bt * H * h8;
    QT_GRID_STRIDE(e, n) {
        const int64_t rk = e / h8, i8 = e % h8, r = rk / H; /* rk = r * H + k */
        const int64_t lo = rk * 2 * h8 + i8, hi = lo + h8;
        float a[8], b[8], ya[8], yb[8];
        unpack8(x[lo], a);
        unpack8(x[hi], b);
        if (accumulate) unpack8(y[lo], ya), unpack8(y[hi], yb);
        const float p = (float)pos[r];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const float f = __fmul_rn(p, inv_freq[i8 * 8 + u]);
            const float c = __fmul_rn(cosf(f), scale);
            const float s = __fmul_rn(__fmul_rn(sinf(f), scale), sign);
            float va = __fsub_rn(__fmul_rn(a[u], c), __fmul_rn(b[u], s));
            float vb = __fadd_rn(__fmul_rn(b[u], c), __fmul_rn(a[u], s));
            ya[u] = accumulate ? __fadd_rn(va, ya[u]) : va;
            yb[u] = accumulate ? __fadd_rn(vb, yb[u]) : vb;
        }
        y[lo] = pack8(ya);
        y[hi] = pack8(yb);
    }
}

template <typename T>
void launch_rope(qt_ctx *ctx, const qt_node *nd, const void *x, void *y, float sign, float beta,
                 const char *what) {
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    QT_CHECK(c, "CUDA kernel called on a context without a CUDA backend");
    const qt_tensor *t = nd->in[0];
    int64_t bt = t->shape[0] * t->shape[1], H = t->shape[2], h = t->shape[3] / 2;
    int64_t n = bt * h;
    if (n == 0 || H == 0) return;
    if (std::is_same<T, __nv_bfloat16>::value && h % 8 == 0 && ((uintptr_t)x & 15) == 0 &&
        ((uintptr_t)y & 15) == 0) {
        rope_bf16x8_kernel<<<grid_for(c, n * H / 8), kThreads, 0, c->stream>>>(
            (const uint4 *)x, (uint4 *)y, (const int32_t *)nd->in[1]->data,
            (const float *)nd->in[2]->data, bt, H, h, nd->fp[0], sign, beta != 0.0f);
        QT_CUDA_CHECK_LAUNCH(what);
        return;
    }
    rope_kernel<T><<<grid_for(c, n), kThreads, 0, c->stream>>>(
        (const T *)x, (T *)y, (const int32_t *)nd->in[1]->data, (const float *)nd->in[2]->data, bt,
        H, h, nd->fp[0], sign, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH(what);
}

qt_dtype check_node(const qt_node *nd, const char *what) {
    const qt_tensor *x = nd->in[0], *pos = nd->in[1], *inv = nd->in[2], *y = nd->out;
    QT_CHECK(x->device == QT_CUDA && pos->device == QT_CUDA && inv->device == QT_CUDA &&
                 y->device == QT_CUDA,
             "%s: tensors are not on CUDA", what);
    QT_CHECK(x->ndim == 4 && x->shape[3] % 2 == 0 && y->dtype == x->dtype &&
                 qt_numel(y) == qt_numel(x),
             "%s: x must be [B, T, H, hd] with an even hd, out like it", what);
    QT_CHECK(pos->dtype == QT_I32 && qt_numel(pos) == x->shape[0] * x->shape[1],
             "%s: pos must be i32 [B, T]", what);
    QT_CHECK(inv->dtype == QT_F32 && qt_numel(inv) == x->shape[3] / 2,
             "%s: inv_freq must be f32 [hd/2]", what);
    return x->dtype;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_rope_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "rope");
    QT_FLOAT_DISPATCH(dt, T, "rope",
                      launch_rope<T>(ctx, nd, nd->in[0]->data, nd->out->data, 1.0f, 0.0f,
                                     "launching rope forward"));
}

extern "C" void qt_cuda_rope_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "rope backward");
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "rope backward: missing or mismatched output gradient");
    float beta = 0.0f;
    /* gy is dead after this op: rotated in place into x's gradient when it can be */
    qt_tensor *g = qt_grad_handover(ctx, nd->in[0], (qt_tensor *)gy)
                       ? nd->in[0]->grad
                       : qt_grad_acquire(ctx, nd->in[0], false, &beta);
    QT_FLOAT_DISPATCH(
        dt, T, "rope backward",
        launch_rope<T>(ctx, nd, gy->data, g->data, -1.0f, beta, "launching rope backward"));
}
