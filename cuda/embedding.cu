/* embedding.cu - embedding lookup on the GPU (the reference: autograd/ops_embedding.c):
 * out[t, :] = W[ids[t], :], and its backward gW[ids[t], :] += gy[t, :].
 *
 * Bad ids: the CPU aborts on an id outside [0, V) naming its position. Here one block scans the
 * ids (a min-reduction, no atomics) for the first bad position, and the host reads that one
 * value back and fails the same QT_CHECK. The read-back synchronises the stream once per call
 * (once per micro-step in a model). While the stream is being captured into a CUDA graph the
 * read-back is not possible and is skipped; the kernels never read outside W even then (a bad
 * id's row comes out zero, and its gradient is dropped).
 * Backward without atomics: the (id, token) pairs are sorted by id with CUB's radix sort, which
 * is stable (tokens stay in order within an id) and deterministic. One block per run of equal
 * ids then walks that run's tokens in token order for its chunk of columns, starting from the
 * gradient's old value: every element receives its contributions in the CPU's order (f32 results
 * are bit-identical to the CPU's), summed in f32 and stored once (one rounding in bf16/f16).
 * Storage: W, out and gW F32, BF16 or F16; ids i32. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/device/device_radix_sort.cuh>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

constexpr int kScanThreads = 1024;
constexpr int kColThreads = 128; /* columns per backward block */

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

/* ---- kernels ---------------------------------------------------------------------------- */

/* one block: *bad = the first t with ids[t] outside [0, V), or n when there is none */
__global__ void first_bad_id_kernel(const int32_t *__restrict__ ids, int64_t n, int64_t V,
                                    int64_t *__restrict__ bad) {
    __shared__ int64_t red[32];
    int64_t m = n;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x)
        if ((ids[t] < 0 || ids[t] >= V) && t < m) m = t;
    for (int s = 16; s; s >>= 1) {
        int64_t o = __shfl_xor_sync(0xffffffffu, m, s);
        m = o < m ? o : m;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < (int)(blockDim.x >> 5); k++) m = red[k] < m ? red[k] : m;
        *bad = m;
    }
}

/* y [n, D] = W[ids, :] (a bad id's row: zero). Storage bits are copied, no conversion. */
template <typename T>
__global__ void embedding_fwd_kernel(const T *__restrict__ W, const int32_t *__restrict__ ids,
                                     T *__restrict__ y, int64_t n, int64_t V, int64_t D) {
    const int64_t total = n * D;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = e / D, j = e % D;
        const int32_t id = ids[t];
        y[e] = id >= 0 && id < V ? W[(int64_t)id * D + j] : T(0.0f);
    }
}

/* sort input: key = the id, or V for an id outside [0, V) (its gradient is dropped); value =
 * the token's position */
__global__ void sort_keys_kernel(const int32_t *__restrict__ ids, int64_t n, int64_t V,
                                 int32_t *__restrict__ key, int32_t *__restrict__ tok) {
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int32_t id = ids[t];
        key[t] = id >= 0 && id < V ? id : (int32_t)V;
        tok[t] = (int32_t)t;
    }
}

/* gW [V, D] += gy [n, D] scattered by the sorted ids. Grid: (n, ceil(D / kColThreads)); the
 * block at sorted position p works only where a run of equal ids starts, and adds the run's
 * token rows, in token order, to column j of that id's row. */
template <typename T>
__global__ void embedding_bwd_kernel(const T *__restrict__ gy, const int32_t *__restrict__ key,
                                     const int32_t *__restrict__ tok, T *__restrict__ gW, int64_t n,
                                     int64_t V, int64_t D) {
    const int64_t p = blockIdx.x;
    const int32_t id = key[p];
    if (id >= V || (p > 0 && key[p - 1] == id)) return;
    int64_t end = p + 1;
    while (end < n && key[end] == id) end++;
    const int64_t j = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    float acc = ld(gW, (int64_t)id * D + j);
#pragma unroll 8
    for (int64_t q = p; q < end; q++) acc = __fadd_rn(acc, ld(gy, (int64_t)tok[q] * D + j));
    st(gW, (int64_t)id * D + j, acc);
}

/* ---- launchers -------------------------------------------------------------------------- */

/* Fails like the CPU on the first id outside [0, V) (see the file's comment). */
void check_ids(qt_ctx *ctx, const qt_tensor *W, const qt_tensor *ids) {
    qt_cuda_ctx *c = cuda_of(ctx);
    int64_t n = qt_numel(ids), V = W->shape[0];
    if (n == 0) return;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    QT_CUDA_CHECK(cudaStreamIsCapturing(c->stream, &cap),
                  "asking whether the stream is being captured (embedding)");
    if (cap != cudaStreamCaptureStatusNone) return;
    qt_arena *a = &ctx->data;
    qt_arena_mark mark = qt_arena_get_mark(a);
    int64_t *bad_d = (int64_t *)qt_arena_alloc(a, sizeof(int64_t));
    QT_CHECK(bad_d, "embedding: out of device memory for the id check");
    first_bad_id_kernel<<<1, kScanThreads, 0, c->stream>>>((const int32_t *)ids->data, n, V, bad_d);
    QT_CUDA_CHECK_LAUNCH("launching the embedding id check");
    int64_t bad = n;
    qt_cuda_copy_d2h(c, &bad, bad_d, sizeof bad);
    qt_arena_rewind(a, mark);
    if (bad < n) {
        int32_t id = 0;
        qt_cuda_copy_d2h(c, &id, (const int32_t *)ids->data + bad, sizeof id);
        QT_CHECK(0, "embedding: id %d at position %lld is out of range [0, %lld) of '%s'", id,
                 (long long)bad, (long long)V, W->name);
    }
}

template <typename T> void launch_fwd(qt_ctx *ctx, const qt_node *nd) {
    qt_cuda_ctx *c = cuda_of(ctx);
    int64_t V = nd->in[0]->shape[0], D = nd->in[0]->shape[1], n = qt_numel(nd->in[1]);
    int64_t total = n * D;
    if (total == 0) return;
    embedding_fwd_kernel<T><<<grid_for(c, total), kThreads, 0, c->stream>>>(
        (const T *)nd->in[0]->data, (const int32_t *)nd->in[1]->data, (T *)nd->out->data, n, V, D);
    QT_CUDA_CHECK_LAUNCH("launching embedding forward");
}

/* The sort's buffers are step-arena scratch, given back (rewound) once the kernels that use them
 * are queued: the stream runs them before any later user of that memory. */
template <typename T> void launch_bwd(qt_ctx *ctx, const qt_node *nd, void *gW) {
    qt_cuda_ctx *c = cuda_of(ctx);
    int64_t V = nd->in[0]->shape[0], D = nd->in[0]->shape[1], n = qt_numel(nd->in[1]);
    if (n == 0 || D == 0) return;
    QT_CHECK(n < (1ll << 31) && V < (1ll << 31) - 1,
             "embedding backward: %lld ids, V = %lld: too many", (long long)n, (long long)V);
    int end_bit = 1; /* keys are 0..V: sort only the bits they use */
    while (end_bit < 32 && (1ll << end_bit) <= V) end_bit++;
    size_t temp_bytes = 0;
    QT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int32_t *)NULL,
                                                  (int32_t *)NULL, (const int32_t *)NULL,
                                                  (int32_t *)NULL, (int)n, 0, end_bit, c->stream),
                  "sizing the embedding backward's sort");
    qt_arena *a = &ctx->data; /* backward never runs inside a span's untaped forward */
    qt_arena_mark mark = qt_arena_get_mark(a);
    int32_t *buf = (int32_t *)qt_arena_alloc(a, 4 * (size_t)n * sizeof(int32_t));
    void *temp = qt_arena_alloc(a, temp_bytes);
    QT_CHECK(buf && temp, "embedding backward: out of device memory for sorting %lld ids",
             (long long)n);
    int32_t *key_in = buf, *tok_in = buf + n, *key = buf + 2 * n, *tok = buf + 3 * n;
    sort_keys_kernel<<<grid_for(c, n), kThreads, 0, c->stream>>>((const int32_t *)nd->in[1]->data,
                                                                 n, V, key_in, tok_in);
    QT_CUDA_CHECK_LAUNCH("launching the embedding backward's sort keys");
    QT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, key_in, key, tok_in, tok,
                                                  (int)n, 0, end_bit, c->stream),
                  "sorting the ids (embedding backward)");
    dim3 grid((unsigned)n, (unsigned)((D + kColThreads - 1) / kColThreads));
    QT_CHECK(grid.y <= 65535, "embedding backward: D = %lld is too wide", (long long)D);
    embedding_bwd_kernel<T><<<grid, kColThreads, 0, c->stream>>>((const T *)nd->out->grad->data,
                                                                 key, tok, (T *)gW, n, V, D);
    QT_CUDA_CHECK_LAUNCH("launching embedding backward");
    qt_arena_rewind(a, mark);
}

qt_dtype check_node(const qt_node *nd, const char *what) {
    const qt_tensor *W = nd->in[0], *ids = nd->in[1], *y = nd->out;
    QT_CHECK(W->device == QT_CUDA && ids->device == QT_CUDA && y->device == QT_CUDA,
             "%s: tensors are not on CUDA", what);
    QT_CHECK(W->ndim == 2 && ids->dtype == QT_I32 && y->dtype == W->dtype &&
                 qt_numel(y) == qt_numel(ids) * W->shape[1],
             "%s: W must be [V, D], ids i32, out [ids..., D] like W", what);
    return W->dtype;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_embedding_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "embedding");
    check_ids(ctx, nd->in[0], nd->in[1]);
    QT_FLOAT_DISPATCH(dt, T, "embedding", launch_fwd<T>(ctx, nd));
}

extern "C" void qt_cuda_embedding_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = check_node(nd, "embedding backward");
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "embedding backward: missing or mismatched output gradient");
    float beta;
    /* only the rows of ids are written: a fresh buffer comes zero-filled (beta 1) */
    qt_tensor *gW = qt_grad_acquire(ctx, nd->in[0], true, &beta);
    QT_FLOAT_DISPATCH(dt, T, "embedding backward", launch_bwd<T>(ctx, nd, gW->data));
}
