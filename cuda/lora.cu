/* lora.cu - LoRA's fused up-projection (autograd/ops_lora.c) on the GPU: out = y + s · u · Bᵀ
 * into y's buffer; backward du = s · dout · B and dB = s · doutᵀ · u, two GEMMs with alpha = s,
 * and y's gradient handed over.
 * The forward is a pass over y with a rank-r product per element: bandwidth, not FLOPs. For
 * bf16 and r <= 32 a kernel of its own does it (one read and one write of y, B's tile in shared
 * memory; per element the f32 sum over k in order, scaled, added to y, rounded once); other
 * shapes and dtypes take one cuBLASLt GEMM with alpha = s and beta = 1. */
#include <cuda_bf16.h>
#include <stdint.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

extern "C" {
#include "autograd/kernels.h"
}

namespace {

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

constexpr int kMaxR = 32;     /* ranks the kernel takes */
constexpr int kOutTile = 256; /* outputs per block: 32 threads x 8 */
constexpr int kRowTile = 64;  /* rows per block: 8 thread rows, 8 rows each */

/* y [rows, out] += s · u [rows, r] · B [out, r]ᵀ; out % 8 == 0, y 16-byte aligned */
__global__ void __launch_bounds__(256)
    lora_up_bf16x8(uint4 *y, const __nv_bfloat16 *__restrict__ u,
                   const __nv_bfloat16 *__restrict__ B, int64_t rows, int64_t out, int r, float s) {
    __shared__ float sB[kMaxR][kOutTile];
    const int64_t o_base = (int64_t)blockIdx.x * kOutTile;
    const int tid = threadIdx.y * 32 + threadIdx.x;
    for (int e = tid; e < kOutTile * r; e += 256) { /* B's rows of this tile, coalesced */
        int o = e / r, k = e % r;
        sB[k][o] = o_base + o < out ? __bfloat162float(B[(o_base + o) * r + k]) : 0.0f;
    }
    __syncthreads();
    const int64_t o0 = o_base + threadIdx.x * 8;
    if (o0 >= out) return;
    const int64_t r_end = min(rows, (int64_t)(blockIdx.y + 1) * kRowTile);
    for (int64_t n = (int64_t)blockIdx.y * kRowTile + threadIdx.y; n < r_end; n += 8) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int k = 0; k < r; k++) {
            const float uk = __bfloat162float(u[n * r + k]);
            const float4 b0 = *reinterpret_cast<const float4 *>(&sB[k][threadIdx.x * 8]);
            const float4 b1 = *reinterpret_cast<const float4 *>(&sB[k][threadIdx.x * 8 + 4]);
            acc[0] = fmaf(uk, b0.x, acc[0]), acc[1] = fmaf(uk, b0.y, acc[1]);
            acc[2] = fmaf(uk, b0.z, acc[2]), acc[3] = fmaf(uk, b0.w, acc[3]);
            acc[4] = fmaf(uk, b1.x, acc[4]), acc[5] = fmaf(uk, b1.y, acc[5]);
            acc[6] = fmaf(uk, b1.z, acc[6]), acc[7] = fmaf(uk, b1.w, acc[7]);
        }
        const int64_t at = (n * out + o0) / 8;
        float v[8];
        unpack8(y[at], v);
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = fmaf(s, acc[j], v[j]);
        y[at] = pack8(v);
    }
}

} // namespace

static qt_dtype check_node(const qt_node *nd, const char *what) {
    for (int i = 0; i < 3; i++)
        QT_CHECK(nd->in[i] && nd->in[i]->device == QT_CUDA, "%s: input %d is not on CUDA", what, i);
    return nd->in[0]->dtype;
}

extern "C" void qt_cuda_lora_add_fwd(qt_ctx *ctx, qt_node *n) {
    qt_dtype dt = check_node(n, "lora_add");
    const qt_tensor *u = n->in[1], *B = n->in[2];
    int64_t rows = qt_rows(u), r = qt_cols(u), out = B->shape[0];
    if (!rows || !out || !r) return;
    if (dt == QT_BF16 && r <= kMaxR && out % 8 == 0 && ((uintptr_t)n->out->data & 15) == 0) {
        qt_cuda_ctx *c = cuda_of(ctx);
        dim3 grid((unsigned)((out + kOutTile - 1) / kOutTile),
                  (unsigned)((rows + kRowTile - 1) / kRowTile));
        QT_CHECK(grid.y <= 65535u, "lora_add: %lld rows exceed the kernel's grid", (long long)rows);
        lora_up_bf16x8<<<grid, dim3(32, 8), 0, c->stream>>>(
            (uint4 *)n->out->data, (const __nv_bfloat16 *)u->data, (const __nv_bfloat16 *)B->data,
            rows, out, (int)r, n->fp[0]);
        QT_CUDA_CHECK_LAUNCH("launching lora_add forward (bf16)");
        return;
    }
    qt_cuda_gemm_alpha(ctx, dt, dt, false, true, rows, out, r, n->fp[0], u->data, B->data,
                       n->out->data, 1.0f);
}

extern "C" void qt_cuda_lora_add_bwd(qt_ctx *ctx, qt_node *n) {
    qt_dtype dt = check_node(n, "lora_add backward");
    qt_tensor *u = n->in[1], *B = n->in[2];
    const qt_tensor *g = n->out->grad;
    QT_CHECK(g && g->dtype == dt, "lora_add backward: missing or mismatched output gradient");
    int64_t rows = qt_rows(u), r = qt_cols(u), out = B->shape[0];
    float s = n->fp[0], beta;
    if (qt_needs_grad(u)) {
        void *gu = qt_grad_acquire(ctx, u, false, &beta)->data;
        if (rows && r)
            qt_cuda_gemm_alpha(ctx, dt, dt, false, false, rows, r, out, s, g->data, B->data, gu,
                               beta);
    }
    if (qt_needs_grad(B)) {
        void *gb = qt_grad_acquire(ctx, B, false, &beta)->data;
        if (out && r)
            qt_cuda_gemm_alpha(ctx, dt, dt, true, false, out, r, rows, s, g->data, u->data, gb,
                               beta);
    }
    qt_lora_pass_grad(ctx, n);
}
