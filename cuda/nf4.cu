/* nf4.cu - the QLoRA base layer on the GPU: NF4 + double-quant dequantization and
 * y = x · dequant(W)ᵀ (the reference: autograd/ops_nf4.c, quant/nf4.c, quant/dynamic_map.c).
 *
 * Dequantization, bit for bit as the CPU: the block scale is absmax = map[absmax_q[b]] *
 * nested_absmax[b / 256] + offset (double quant; two separate fp32 roundings) or the stored
 * fp32 absmax; an element is nf4_code[nibble] * absmax (one fp32 rounding), rounded to the
 * weight's original dtype (bf16 / f16) when it had one, then stored in the activations' dtype
 * (BF16 storage for bf16 activations, F32 for f32). The 16 NF4 values and the 256-entry
 * dynamic map are generated on the host by quant/ itself and uploaded once per context
 * (qt_cuda_ctx.nf4_tables), so the GPU cannot use different values.
 *
 * The kernel is written for bandwidth (it reads 0.5 B and writes 2 B per bf16 element): a warp
 * owns a tile of 1024 elements, loads its 512 code bytes with one 16-byte load per lane,
 * computes the tile's block scales once per block (one lane per block), stages the codes in
 * shared memory and writes the output with coalesced 16-byte stores (consecutive lanes,
 * consecutive 16-byte chunks). The elements after the last whole tile, and weights whose codes
 * or output are not 16-byte aligned, go through a simple one-thread-per-byte kernel.
 * Measured on an H100 (tests/test_gpu_nf4.c, 11008 x 4096, double quant): 2,461 GB/s into
 * bf16, 91 % of a device copy measured the same way (2,704 GB/s); tiles of 2 or 4 loads per
 * lane were no faster (2,455 and 2,449 GB/s).
 *
 * The op dequantizes the whole weight into scratch from the step arena, runs one GEMM through
 * qt_cuda_gemm (cuda/matmul.cu) and rewinds the arena, as the CPU does: only one layer's
 * weight ever exists dequantized. The rewind is safe before the GEMM has run: everything on
 * the context is ordered on its one stream. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

extern "C" {
#include "autograd/kernels.h"
#include "quant/dynamic_map.h"
#include "quant/nf4.h"
}

namespace {

#include "cuda/cuda_common.cuh"

constexpr int kWarps = kThreads / 32;
constexpr int kTables = 16 + 256; /* NF4 values, then the dynamic map */

/* the pieces of one NF4 weight, device pointers */
struct Nf4Args {
    const uint8_t *codes;    /* [(n + 1) / 2], first element in the high nibble */
    const uint8_t *absmax_q; /* double quant: [nblocks] codes of absmax - offset */
    const float *absmax;     /* [nblocks] (plain) or the nested absmax [ceil(nblocks / 256)] */
    float offset;
    int64_t n;
    int log2bs;
    int nested;
    int wdtype; /* qt_nf4_dtype: the values are rounded to it */
};

__device__ __forceinline__ float block_absmax(const Nf4Args &a, const float *map, int64_t b) {
    if (!a.nested) return a.absmax[b];
    /* quant/nf4.c: the dequantized code (one rounding), then + offset (another) */
    return __fadd_rn(__fmul_rn(map[a.absmax_q[b]], a.absmax[b >> 8]), a.offset);
}

__device__ __forceinline__ float value(const float *code, int nibble, float amax, int wdtype) {
    float v = __fmul_rn(code[nibble], amax);
    if (wdtype == QT_NF4_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (wdtype == QT_NF4_F16) return __half2float(__float2half_rn(v));
    return v;
}

__device__ __forceinline__ void st1(float *p, float v) {
    *p = v;
}
__device__ __forceinline__ void st1(__nv_bfloat16 *p, float v) {
    *p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void st1(__half *p, float v) {
    *p = __float2half_rn(v);
}

/* 16 bytes of output from kU floats (8 bf16/f16 or 4 f32), to a 16-byte aligned address */
__device__ __forceinline__ void st16(float *p, const float *v) {
    *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void st16(__nv_bfloat16 *p, const float *v) {
    __nv_bfloat162 h[4];
    for (int j = 0; j < 4; j++) h[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
    uint4 o;
    memcpy(&o, h, sizeof o);
    *reinterpret_cast<uint4 *>(p) = o;
}
__device__ __forceinline__ void st16(__half *p, const float *v) {
    __half2 h[4];
    for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
    uint4 o;
    memcpy(&o, h, sizeof o);
    *reinterpret_cast<uint4 *>(p) = o;
}

/* ---- kernels ---------------------------------------------------------------------------- */

/* Whole tiles. A warp's tile: kLoads x 32 lanes x 16 code bytes = 2 * that many elements,
 * starting at a multiple of its size, so with block sizes 32..4096 (powers of two) it holds
 * whole blocks (or lies inside one). Shapes: codes [ntiles * kTileBytes], out [ntiles *
 * kTileElems]. */
template <typename T, int kLoads>
__global__ void __launch_bounds__(kThreads)
    dequant_tiles_kernel(Nf4Args a, const float *__restrict__ tables, T *__restrict__ out,
                         int64_t ntiles) {
    constexpr int kTileBytes = kLoads * 32 * 16, kTileElems = 2 * kTileBytes;
    constexpr int kU = 16 / (int)sizeof(T); /* elements per 16-byte store */
    constexpr int kRounds = kTileElems / kU / 32;
    constexpr int kMaxBlocks = kTileElems / 32; /* block size 32 */
    __shared__ float s_code[16];
    __shared__ float s_map[256];
    __shared__ __align__(16) uint8_t s_bytes[kWarps][kTileBytes];
    __shared__ float s_amax[kWarps][kMaxBlocks];
    for (int i = threadIdx.x; i < kTables; i += kThreads) {
        float v = tables[i];
        if (i < 16)
            s_code[i] = v;
        else
            s_map[i - 16] = v;
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* blocks in a tile: kTileElems / bs, or 1 (a tile inside one block) */
    const int tile_blocks = (kTileElems >> a.log2bs) > 0 ? (kTileElems >> a.log2bs) : 1;
    for (int64_t tile = (int64_t)blockIdx.x * kWarps + warp; tile < ntiles;
         tile += (int64_t)gridDim.x * kWarps) {
        const uint4 *src = reinterpret_cast<const uint4 *>(a.codes + tile * kTileBytes);
        uint4 v[kLoads];
#pragma unroll
        for (int l = 0; l < kLoads; l++) v[l] = __ldcs(src + l * 32 + lane);
        const int64_t e0 = tile * kTileElems, b0 = e0 >> a.log2bs;
        for (int j = lane; j < tile_blocks; j += 32)
            s_amax[warp][j] = block_absmax(a, s_map, b0 + j);
        uint4 *sb = reinterpret_cast<uint4 *>(s_bytes[warp]);
#pragma unroll
        for (int l = 0; l < kLoads; l++) sb[l * 32 + lane] = v[l];
        __syncwarp();
        T *dst = out + e0;
#pragma unroll
        for (int r = 0; r < kRounds; r++) {
            const int el = (r * 32 + lane) * kU; /* the unit's first element in the tile */
            const float amax = s_amax[warp][el >> a.log2bs];
            uint32_t w; /* the unit's kU / 2 code bytes, little-endian: byte j first */
            if (kU == 8)
                w = *reinterpret_cast<const uint32_t *>(s_bytes[warp] + el / 2);
            else
                w = *reinterpret_cast<const uint16_t *>(s_bytes[warp] + el / 2);
            float f[kU];
#pragma unroll
            for (int j = 0; j < kU / 2; j++) {
                const int byte = (w >> (8 * j)) & 0xff;
                f[2 * j] = value(s_code, byte >> 4, amax, a.wdtype);
                f[2 * j + 1] = value(s_code, byte & 15, amax, a.wdtype);
            }
            st16(dst + el, f);
        }
        __syncwarp(); /* the staging buffers are refilled by the next tile */
    }
}

/* One thread per code byte in [lo, hi): the elements after the whole tiles, or every element
 * of a weight whose pointers do not allow 16-byte accesses. */
template <typename T>
__global__ void dequant_bytes_kernel(Nf4Args a, const float *__restrict__ tables,
                                     T *__restrict__ out, int64_t lo, int64_t hi) {
    for (int64_t i = lo + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < hi;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int byte = a.codes[i];
        const int64_t e = 2 * i;
        /* block sizes are even: both elements of a byte share a block */
        const float amax = block_absmax(a, tables + 16, e >> a.log2bs);
        st1(out + e, value(tables, byte >> 4, amax, a.wdtype));
        if (e + 1 < a.n) st1(out + e + 1, value(tables, byte & 15, amax, a.wdtype));
    }
}

/* ---- launchers -------------------------------------------------------------------------- */

constexpr int kDefaultLoads = 1; /* 16-byte code loads per lane per tile: 1024 elements */

/* The NF4 values and the dynamic map on the device, made once per context from quant/'s own
 * tables. */
const float *tables_of(qt_cuda_ctx *c) {
    if (c->nf4_tables) return c->nf4_tables;
    float h[kTables];
    memcpy(h, qt_nf4_code, 16 * sizeof(float));
    QT_CHECK(qt_dynmap_default(h + 16) == QT_Q_OK, "nf4: generating the dynamic map");
    float *d = (float *)qt_cuda_malloc(c, sizeof h);
    QT_CHECK(d, "nf4: out of device memory for the NF4 tables");
    qt_cuda_copy_h2d(c, d, h, sizeof h);
    c->nf4_tables = d;
    return d;
}

template <typename T, int kLoads>
void launch_tiles(qt_cuda_ctx *c, const Nf4Args &a, const float *tables, T *out, int64_t ntiles) {
    int64_t blocks = (ntiles + kWarps - 1) / kWarps;
    if (blocks > (int64_t)INT32_MAX) blocks = INT32_MAX; /* the kernel loops over the rest */
    dequant_tiles_kernel<T, kLoads>
        <<<(unsigned)blocks, kThreads, 0, c->stream>>>(a, tables, out, ntiles);
    QT_CUDA_CHECK_LAUNCH("launching the NF4 dequantization (tiles)");
}

template <typename T> void launch_dequant(qt_cuda_ctx *c, const Nf4Args &a, T *out, int loads) {
    if (a.n == 0) return;
    const float *tables = tables_of(c);
    const bool vec = ((uintptr_t)a.codes % 16 == 0) && ((uintptr_t)out % 16 == 0);
    const int64_t tile_bytes = (int64_t)loads * 32 * 16;
    const int64_t ntiles = vec ? a.n / (2 * tile_bytes) : 0;
    if (ntiles > 0) {
        switch (loads) {
        case 1:
            launch_tiles<T, 1>(c, a, tables, out, ntiles);
            break;
        case 2:
            launch_tiles<T, 2>(c, a, tables, out, ntiles);
            break;
        case 4:
            launch_tiles<T, 4>(c, a, tables, out, ntiles);
            break;
        default:
            QT_CHECK(0, "nf4: %d loads per lane is not a tile size", loads);
        }
    }
    const int64_t lo = ntiles * tile_bytes, hi = (a.n + 1) / 2;
    if (hi > lo) {
        int64_t blocks = (hi - lo + kThreads - 1) / kThreads, cap = (int64_t)c->sm_count * 8;
        if (blocks > cap) blocks = cap;
        dequant_bytes_kernel<T>
            <<<(unsigned)blocks, kThreads, 0, c->stream>>>(a, tables, out, lo, hi);
        QT_CUDA_CHECK_LAUNCH("launching the NF4 dequantization (bytes)");
    }
}

void dequant(qt_cuda_ctx *c, const Nf4Args &a, qt_dtype dt, void *out, int loads) {
    switch (dt) {
    case QT_F32:
        launch_dequant<float>(c, a, (float *)out, loads);
        break;
    case QT_BF16:
        launch_dequant<__nv_bfloat16>(c, a, (__nv_bfloat16 *)out, loads);
        break;
    case QT_F16:
        launch_dequant<__half>(c, a, (__half *)out, loads);
        break;
    default:
        QT_CHECK(0, "nf4: dequantization into %s is not supported", qt_dtype_name(dt));
    }
}

int log2_of(int bs) {
    int l = 0;
    while ((1 << l) < bs) l++;
    return l;
}

/* the weight's pieces, checked (sizes as qt_nf4_matmul checks them) */
Nf4Args args_of(int64_t out, int64_t in, int bs, int wdtype, const qt_tensor *codes,
                const qt_tensor *absmax_or_q, const qt_tensor *nested_absmax, float offset) {
    QT_CHECK(qt_nf4_blocksize_ok(bs), "nf4: block size %d", bs);
    QT_CHECK(wdtype == QT_NF4_F32 || wdtype == QT_NF4_BF16 || wdtype == QT_NF4_F16,
             "nf4: weight dtype %d", wdtype);
    Nf4Args a;
    a.n = out * in;
    a.log2bs = log2_of(bs);
    a.wdtype = wdtype;
    a.offset = offset;
    int64_t nblocks = (a.n + bs - 1) / bs;
    QT_CHECK(codes && codes->device == QT_CUDA && codes->dtype == QT_U8 &&
                 qt_numel(codes) == (a.n + 1) / 2,
             "nf4: codes must be %lld u8 on CUDA", (long long)((a.n + 1) / 2));
    a.codes = (const uint8_t *)codes->data;
    a.nested = nested_absmax != NULL;
    QT_CHECK(absmax_or_q && absmax_or_q->device == QT_CUDA && qt_numel(absmax_or_q) == nblocks,
             "nf4: absmax must have %lld elements on CUDA", (long long)nblocks);
    if (a.nested) {
        QT_CHECK(absmax_or_q->dtype == QT_U8 && nested_absmax->device == QT_CUDA &&
                     nested_absmax->dtype == QT_F32 &&
                     qt_numel(nested_absmax) == (nblocks + 255) / 256,
                 "nf4: double-quantized absmax must be u8 codes and f32 nested absmax on CUDA");
        a.absmax_q = (const uint8_t *)absmax_or_q->data;
        a.absmax = (const float *)nested_absmax->data;
    } else {
        QT_CHECK(absmax_or_q->dtype == QT_F32, "nf4: absmax must be f32");
        a.absmax_q = NULL;
        a.absmax = (const float *)absmax_or_q->data;
    }
    return a;
}

Nf4Args args_of_node(const qt_node *nd) {
    return args_of(nd->ip[1], nd->ip[2], (int)nd->ip[0], (int)nd->ip[3], nd->in[1], nd->in[2],
                   nd->ip[4] ? nd->in[3] : NULL, nd->fp[0]);
}

qt_dtype act_dtype(const qt_tensor *x, const char *what) {
    QT_CHECK(x->device == QT_CUDA, "%s: x is not on CUDA", what);
    QT_CHECK(x->dtype == QT_F32 || x->dtype == QT_BF16 || x->dtype == QT_F16,
             "%s: dtype %s is not supported on CUDA", what, qt_dtype_name(x->dtype));
    return x->dtype;
}

/* dequantizes the node's weight into step-arena scratch [out, in] of dtype dt */
void *dequant_scratch(qt_ctx *ctx, const qt_node *nd, qt_dtype dt) {
    Nf4Args a = args_of_node(nd);
    void *w = qt_arena_alloc(&ctx->data, (size_t)a.n * qt_dtype_size(dt));
    QT_CHECK(w, "nf4_matmul: out of device memory for the dequantization scratch (%lld x %lld)",
             (long long)nd->ip[1], (long long)nd->ip[2]);
    dequant(cuda_of(ctx), a, dt, w, kDefaultLoads);
    return w;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_nf4_dequant_ex(qt_ctx *ctx, const qt_nf4_weight *w, qt_dtype dt, void *out,
                                       int loads) {
    Nf4Args a = args_of(w->out, w->in, w->blocksize, w->dtype, w->codes,
                        w->absmax_q ? w->absmax_q : w->absmax,
                        w->absmax_q ? w->nested_absmax : NULL, w->offset);
    dequant(cuda_of(ctx), a, dt, out, loads > 0 ? loads : kDefaultLoads);
}

extern "C" void qt_cuda_nf4_dequant(qt_ctx *ctx, const qt_nf4_weight *w, qt_dtype dt, void *out) {
    qt_cuda_nf4_dequant_ex(ctx, w, dt, out, 0);
}

extern "C" void qt_cuda_nf4_matmul_fwd(qt_ctx *ctx, qt_node *nd) {
    const qt_tensor *x = nd->in[0];
    qt_dtype dt = act_dtype(x, "nf4_matmul");
    QT_CHECK(nd->out->device == QT_CUDA && nd->out->dtype == dt, "nf4_matmul: output dtype");
    int64_t out = nd->ip[1], in = nd->ip[2], M = qt_rows(x);
    if (M == 0) return;
    qt_arena_mark mark = qt_arena_get_mark(&ctx->data);
    void *w = dequant_scratch(ctx, nd, dt);
    /* y [M, out] = x [M, in] · W [out, in]ᵀ */
    qt_cuda_gemm(ctx, dt, false, true, M, out, in, x->data, w, nd->out->data,
                 nd->n_in == 5 ? 1.0f : 0.0f); /* + c (nf4_matmul_add) in the epilogue */
    qt_arena_rewind(&ctx->data, mark);
}

extern "C" void qt_cuda_nf4_matmul_bwd(qt_ctx *ctx, qt_node *nd) {
    if (nd->n_in == 5) qt_pass_grad(ctx, nd->in[4], nd->out); /* d(+ c) = dout, handed over */
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gy = nd->out->grad;
    qt_dtype dt = act_dtype(nd->in[0], "nf4_matmul backward");
    QT_CHECK(gy && gy->dtype == dt && qt_numel(gy) == qt_numel(nd->out),
             "nf4_matmul backward: missing or mismatched output gradient");
    int64_t out = nd->ip[1], in = nd->ip[2], M = qt_rows(nd->in[0]);
    float beta;
    /* the gradient buffer is taken before the mark so the rewind keeps it */
    qt_tensor *gx = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    if (M == 0) return;
    qt_arena_mark mark = qt_arena_get_mark(&ctx->data);
    void *w = dequant_scratch(ctx, nd, dt);
    /* dx [M, in] = dy [M, out] · W [out, in] */
    qt_cuda_gemm(ctx, dt, false, false, M, in, out, gy->data, w, gx->data, beta);
    qt_arena_rewind(&ctx->data, mark);
}

extern "C" void qt_cuda_time_ms(qt_ctx *ctx, void (*enqueue)(qt_ctx *ctx, void *arg), void *arg,
                                int iters, float *ms) {
    qt_cuda_ctx *c = cuda_of(ctx);
    cudaEvent_t e0, e1;
    QT_CUDA_CHECK(cudaEventCreate(&e0), "creating a timing event");
    QT_CUDA_CHECK(cudaEventCreate(&e1), "creating a timing event");
    for (int i = 0; i < iters; i++) {
        QT_CUDA_CHECK(cudaEventRecord(e0, c->stream), "recording a timing event");
        enqueue(ctx, arg);
        QT_CUDA_CHECK(cudaEventRecord(e1, c->stream), "recording a timing event");
        QT_CUDA_CHECK(cudaEventSynchronize(e1), "waiting for a timing event");
        QT_CUDA_CHECK(cudaEventElapsedTime(&ms[i], e0, e1), "reading a timing event");
    }
    QT_CUDA_CHECK(cudaEventDestroy(e0), "freeing a timing event");
    QT_CUDA_CHECK(cudaEventDestroy(e1), "freeing a timing event");
}
