/* shape.cu - reshape, permute, concat and slice on the GPU (the reference: autograd/ops_shape.c,
 * whose index math this follows).
 *   reshape  a view: the forward has nothing to do; the backward hands the gradient over (axpby)
 *   permute  one thread per output element gathers from the permuted input index (shapes padded
 *            to 4 dims with leading 1s); the backward scatters back, a bijection: no two
 *            threads write one element
 *   concat   each input is a block [outer, len * inner] of the output at an offset along dim
 *   slice    the same block copy the other way; its backward adds into a zero-filled gradient
 * The forwards move storage bits of any dtype (1, 2 or 4 bytes); the backwards need float
 * gradients (F32, BF16 or F16) and add in f32, where the CPU takes f32 only. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

/* runs BODY with T bound to an unsigned integer of the element size (raw bit copies) */
#define QT_BITS_DISPATCH(es, T, what, BODY)                                                        \
    switch (es) {                                                                                  \
    case 1: {                                                                                      \
        using T = uint8_t;                                                                         \
        BODY;                                                                                      \
    } break;                                                                                       \
    case 2: {                                                                                      \
        using T = uint16_t;                                                                        \
        BODY;                                                                                      \
    } break;                                                                                       \
    case 4: {                                                                                      \
        using T = uint32_t;                                                                        \
        BODY;                                                                                      \
    } break;                                                                                       \
    default:                                                                                       \
        QT_CHECK(0, "%s: element size %zu is not supported", what, (size_t)(es));                  \
    }

/* ---- permute ------------------------------------------------------------------------------ */

/* The output's shape os[4] and, per output dim, the stride of the input dim it comes from. */
struct PermuteMap {
    int64_t os[4], st[4];
};

__device__ __forceinline__ int64_t permuted_index(const PermuteMap &m, int64_t o) {
    const int64_t d = o % m.os[3], c = (o / m.os[3]) % m.os[2];
    const int64_t b = (o / (m.os[3] * m.os[2])) % m.os[1], a = o / (m.os[3] * m.os[2] * m.os[1]);
    return a * m.st[0] + b * m.st[1] + c * m.st[2] + d * m.st[3];
}

/* y [out shape] = x [in shape] gathered; raw bits */
template <typename T>
__global__ void permute_fwd_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t n,
                                   PermuteMap m) {
    QT_GRID_STRIDE(o, n) y[o] = x[permuted_index(m, o)];
}

/* gx [in shape] = (gx +) gy [out shape] scattered back */
template <typename T>
__global__ void permute_bwd_kernel(const T *__restrict__ gy, T *__restrict__ gx, int64_t n,
                                   PermuteMap m, int accumulate) {
    QT_GRID_STRIDE(o, n) {
        const int64_t i = permuted_index(m, o);
        float v = ld(gy, o);
        st(gx, i, accumulate ? __fadd_rn(ld(gx, i), v) : v);
    }
}

/* ops_shape.c's permute_strides: pad to 4 dims, map each output dim to its input stride */
PermuteMap permute_map(const qt_tensor *x, const int64_t *perm) {
    PermuteMap m;
    int nd = x->ndim, pad = QT_MAX_DIMS - nd;
    int64_t istride[QT_MAX_DIMS], s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        istride[i] = s;
        s *= x->shape[i];
    }
    for (int k = 0; k < QT_MAX_DIMS; k++) {
        if (k < pad) {
            m.os[k] = 1;
            m.st[k] = 0;
        } else {
            int p = (int)perm[k - pad];
            QT_CHECK(p >= 0 && p < nd, "permute: bad permutation entry %d", p);
            m.os[k] = x->shape[p];
            m.st[k] = istride[p];
        }
    }
    return m;
}

/* ---- block copies (concat, slice) ---------------------------------------------------------
 * dst[o * dpitch + doff + j] = (dst +) src[o * spitch + soff + j] for o < outer, j < width */
struct Block {
    int64_t outer, width, spitch, soff, dpitch, doff;
};

template <typename T>
__global__ void block_copy_kernel(const T *__restrict__ src, T *__restrict__ dst, Block b) {
    QT_GRID_STRIDE(e, b.outer * b.width) {
        const int64_t o = e / b.width, j = e % b.width;
        dst[o * b.dpitch + b.doff + j] = src[o * b.spitch + b.soff + j];
    }
}

template <typename T>
__global__ void block_add_kernel(const T *__restrict__ src, T *__restrict__ dst, Block b) {
    QT_GRID_STRIDE(e, b.outer * b.width) {
        const int64_t o = e / b.width, j = e % b.width;
        const int64_t di = o * b.dpitch + b.doff + j;
        st(dst, di, __fadd_rn(ld(dst, di), ld(src, o * b.spitch + b.soff + j)));
    }
}

/* ---- launchers -------------------------------------------------------------------------- */

struct Launch {
    cudaStream_t stream;
    unsigned grid;
};

Launch launch_for(qt_ctx *ctx, int64_t n) {
    qt_cuda_ctx *c = cuda_of(ctx);
    return Launch{c->stream, grid_for(c, n)};
}

template <typename T>
void launch_permute_fwd(qt_ctx *ctx, const void *x, void *y, int64_t n, PermuteMap m) {
    Launch L = launch_for(ctx, n);
    permute_fwd_kernel<T><<<L.grid, kThreads, 0, L.stream>>>((const T *)x, (T *)y, n, m);
    QT_CUDA_CHECK_LAUNCH("launching permute forward");
}

template <typename T>
void launch_permute_bwd(qt_ctx *ctx, const void *gy, void *gx, int64_t n, PermuteMap m,
                        float beta) {
    Launch L = launch_for(ctx, n);
    permute_bwd_kernel<T>
        <<<L.grid, kThreads, 0, L.stream>>>((const T *)gy, (T *)gx, n, m, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH("launching permute backward");
}

template <typename T>
void launch_block_copy(qt_ctx *ctx, const void *src, void *dst, Block b, const char *what) {
    if (b.outer * b.width == 0) return;
    Launch L = launch_for(ctx, b.outer * b.width);
    block_copy_kernel<T><<<L.grid, kThreads, 0, L.stream>>>((const T *)src, (T *)dst, b);
    QT_CUDA_CHECK_LAUNCH(what);
}

template <typename T>
void launch_block_add(qt_ctx *ctx, const void *src, void *dst, Block b, const char *what) {
    if (b.outer * b.width == 0) return;
    Launch L = launch_for(ctx, b.outer * b.width);
    block_add_kernel<T><<<L.grid, kThreads, 0, L.stream>>>((const T *)src, (T *)dst, b);
    QT_CUDA_CHECK_LAUNCH(what);
}

/* A tensor seen as [outer, dim, inner] around one dim. */
void around(const qt_tensor *t, int dim, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int i = 0; i < dim; i++) *outer *= t->shape[i];
    for (int i = dim + 1; i < t->ndim; i++) *inner *= t->shape[i];
}

bool is_float(qt_dtype dt) {
    return dt == QT_F32 || dt == QT_BF16 || dt == QT_F16;
}

void check_on_cuda(const qt_node *nd, const char *what) {
    QT_CHECK(nd->out->device == QT_CUDA, "%s: output is not on CUDA", what);
    for (int k = 0; k < nd->n_in; k++)
        QT_CHECK(nd->in[k] && nd->in[k]->device == QT_CUDA && nd->in[k]->dtype == nd->out->dtype,
                 "%s: input %d is not a %s CUDA tensor", what, k, qt_dtype_name(nd->out->dtype));
}

/* the output gradient of a node, checked: float, one dtype with the gradient g it feeds */
const qt_tensor *out_grad(const qt_node *nd, const qt_tensor *g, const char *what) {
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->device == QT_CUDA && qt_numel(gy) == qt_numel(nd->out),
             "%s: missing or mismatched output gradient", what);
    QT_CHECK(is_float(gy->dtype) && gy->dtype == g->dtype,
             "%s: gradients must be float and of one dtype (got %s and %s)", what,
             qt_dtype_name(gy->dtype), qt_dtype_name(g->dtype));
    return gy;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_reshape_fwd(qt_ctx *ctx, qt_node *nd) {
    /* nothing to compute: the output aliases the input */
}

extern "C" void qt_cuda_reshape_bwd(qt_ctx *ctx, qt_node *nd) {
    if (qt_grad_handover(ctx, nd->in[0], nd->out->grad)) return; /* as the CPU's */
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    qt_cuda_axpby(ctx, g, nd->out->grad, beta);
}

extern "C" void qt_cuda_permute_fwd(qt_ctx *ctx, qt_node *nd) {
    check_on_cuda(nd, "permute");
    int64_t n = qt_numel(nd->out);
    if (n == 0) return;
    PermuteMap m = permute_map(nd->in[0], nd->ip);
    QT_BITS_DISPATCH(qt_dtype_size(nd->out->dtype), T, "permute",
                     launch_permute_fwd<T>(ctx, nd->in[0]->data, nd->out->data, n, m));
}

extern "C" void qt_cuda_permute_bwd(qt_ctx *ctx, qt_node *nd) {
    check_on_cuda(nd, "permute backward");
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    const qt_tensor *gy = out_grad(nd, g, "permute backward");
    int64_t n = qt_numel(nd->out);
    if (n == 0) return;
    PermuteMap m = permute_map(nd->in[0], nd->ip);
    QT_FLOAT_DISPATCH(g->dtype, T, "permute backward",
                      launch_permute_bwd<T>(ctx, gy->data, g->data, n, m, beta));
}

extern "C" void qt_cuda_concat_fwd(qt_ctx *ctx, qt_node *nd) {
    check_on_cuda(nd, "concat");
    int dim = (int)nd->ip[0];
    int64_t outer, inner, off = 0, D = nd->out->shape[dim];
    around(nd->out, dim, &outer, &inner);
    size_t es = qt_dtype_size(nd->out->dtype);
    for (int k = 0; k < nd->n_in; k++) {
        int64_t len = nd->in[k]->shape[dim];
        Block b = {outer, len * inner, len * inner, 0, D * inner, off * inner};
        QT_BITS_DISPATCH(es, T, "concat",
                         launch_block_copy<T>(ctx, nd->in[k]->data, nd->out->data, b,
                                              "launching concat forward"));
        off += len;
    }
}

extern "C" void qt_cuda_concat_bwd(qt_ctx *ctx, qt_node *nd) {
    check_on_cuda(nd, "concat backward");
    int dim = (int)nd->ip[0];
    int64_t outer, inner, off = 0, D = nd->out->shape[dim];
    around(nd->out, dim, &outer, &inner);
    for (int k = 0; k < nd->n_in; k++) {
        int64_t len = nd->in[k]->shape[dim];
        if (qt_needs_grad(nd->in[k])) {
            float beta;
            qt_tensor *g = qt_grad_acquire(ctx, nd->in[k], false, &beta);
            const qt_tensor *gy = out_grad(nd, g, "concat backward");
            Block b = {outer, len * inner, D * inner, off * inner, len * inner, 0};
            if (beta != 0.0f) {
                QT_FLOAT_DISPATCH(
                    g->dtype, T, "concat backward",
                    launch_block_add<T>(ctx, gy->data, g->data, b, "launching concat backward"));
            } else {
                QT_BITS_DISPATCH(
                    qt_dtype_size(g->dtype), T, "concat backward",
                    launch_block_copy<T>(ctx, gy->data, g->data, b, "launching concat backward"));
            }
        }
        off += len;
    }
}

extern "C" void qt_cuda_slice_fwd(qt_ctx *ctx, qt_node *nd) {
    check_on_cuda(nd, "slice");
    int dim = (int)nd->ip[0];
    int64_t outer, inner, D = nd->in[0]->shape[dim], start = nd->ip[1], len = nd->out->shape[dim];
    around(nd->in[0], dim, &outer, &inner);
    Block b = {outer, len * inner, D * inner, start * inner, len * inner, 0};
    QT_BITS_DISPATCH(
        qt_dtype_size(nd->out->dtype), T, "slice",
        launch_block_copy<T>(ctx, nd->in[0]->data, nd->out->data, b, "launching slice forward"));
}

extern "C" void qt_cuda_slice_bwd(qt_ctx *ctx, qt_node *nd) {
    check_on_cuda(nd, "slice backward");
    int dim = (int)nd->ip[0];
    int64_t outer, inner, D = nd->in[0]->shape[dim], start = nd->ip[1], len = nd->out->shape[dim];
    around(nd->in[0], dim, &outer, &inner);
    float beta;
    /* only part of the input's gradient is written: a fresh buffer comes zero-filled, then add */
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], true, &beta);
    const qt_tensor *gy = out_grad(nd, g, "slice backward");
    Block b = {outer, len * inner, len * inner, 0, D * inner, start * inner};
    QT_FLOAT_DISPATCH(g->dtype, T, "slice backward",
                      launch_block_add<T>(ctx, gy->data, g->data, b, "launching slice backward"));
}
