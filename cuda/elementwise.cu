/* elementwise.cu - add, mul, scale, bias add, SiLU, SwiGLU, cast and the axpby helper on the
 * GPU: kernel -> launcher -> checked entry. Same semantics and gradient rule as the CPU twins
 * (autograd/ops_elementwise.c, autograd/ops_cast.c): the first contribution to a gradient sets
 * it (beta 0: the old buffer is never read), later ones add (beta 1).
 *
 * Storage: F32, BF16 or F16 (inputs and output share one dtype, except for cast); the math is
 * f32. Products and sums are written with the _rn intrinsics in the CPU's evaluation order so
 * that nvcc cannot contract them into FMAs: add, mul, scale and their gradients are then
 * bit-identical to the CPU reference, and SiLU/SwiGLU differ only by expf's last ulp.
 * Launches: 256 threads, grid-stride loops, at most 8 blocks per multiprocessor.
 * The bias gradient is a fixed-order column reduction (no atomics): deterministic. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace {

#include "cuda/cuda_storage.cuh"
#include "cuda/cuda_common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) {
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
}

/* ---- per-element functions (forward: value; backward: the contribution to a gradient) ---- */

struct AddF {
    __device__ float operator()(float a, float b) const {
        return __fadd_rn(a, b);
    }
};
struct MulF {
    __device__ float operator()(float a, float b) const {
        return __fmul_rn(a, b);
    }
};
struct SwigluF { /* a * sigmoid(a) * u */
    __device__ float operator()(float a, float u) const {
        return __fmul_rn(__fmul_rn(a, sigmoidf_(a)), u);
    }
};
struct ScaleF {
    float s;
    __device__ float operator()(float x) const {
        return __fmul_rn(x, s);
    }
};
struct SiluF {
    __device__ float operator()(float x) const {
        return __fmul_rn(x, sigmoidf_(x));
    }
};

/* gradient contributions: v(i) from the output gradient gy and saved inputs */
template <typename T> struct GradCopy { /* gy */
    const T *gy;
    __device__ float operator()(int64_t i) const {
        return ld(gy, i);
    }
};
template <typename T> struct GradMul { /* gy * o */
    const T *gy, *o;
    __device__ float operator()(int64_t i) const {
        return __fmul_rn(ld(gy, i), ld(o, i));
    }
};
template <typename T> struct GradScale { /* gy * s */
    const T *gy;
    float s;
    __device__ float operator()(int64_t i) const {
        return __fmul_rn(ld(gy, i), s);
    }
};
template <typename T> struct GradSilu { /* gy * s * (1 + x (1 - s)) */
    const T *gy, *x;
    __device__ float operator()(int64_t i) const {
        float xv = ld(x, i), s = sigmoidf_(xv);
        return __fmul_rn(__fmul_rn(ld(gy, i), s),
                         __fadd_rn(1.0f, __fmul_rn(xv, __fsub_rn(1.0f, s))));
    }
};
template <typename T> struct GradSwigluGate { /* gy * u * s * (1 + a (1 - s)) */
    const T *gy, *a, *u;
    __device__ float operator()(int64_t i) const {
        float av = ld(a, i), s = sigmoidf_(av);
        return __fmul_rn(__fmul_rn(__fmul_rn(ld(gy, i), ld(u, i)), s),
                         __fadd_rn(1.0f, __fmul_rn(av, __fsub_rn(1.0f, s))));
    }
};
template <typename T> struct GradSwigluUp { /* gy * a * sigmoid(a) */
    const T *gy, *a;
    __device__ float operator()(int64_t i) const {
        float av = ld(a, i);
        return __fmul_rn(__fmul_rn(ld(gy, i), av), sigmoidf_(av));
    }
};

/* ---- kernels ---------------------------------------------------------------------------- */

template <typename T, typename F>
__global__ void binary_kernel(const T *__restrict__ a, const T *__restrict__ b, T *__restrict__ y,
                              int64_t n, F f) {
    QT_GRID_STRIDE(i, n) st(y, i, f(ld(a, i), ld(b, i)));
}

template <typename T, typename F>
__global__ void unary_kernel(const T *__restrict__ x, T *__restrict__ y, int64_t n, F f) {
    QT_GRID_STRIDE(i, n) st(y, i, f(ld(x, i)));
}

template <typename T>
__global__ void bias_add_kernel(const T *__restrict__ x, const T *__restrict__ b, T *__restrict__ y,
                                int64_t n, int64_t cols) {
    QT_GRID_STRIDE(i, n) st(y, i, __fadd_rn(ld(x, i), ld(b, i % cols)));
}

/* g = v (beta 0, g not read) or g + v (beta 1) */
template <typename T, typename V>
__global__ void grad_kernel(T *__restrict__ g, int64_t n, int accumulate, V v) {
    QT_GRID_STRIDE(i, n) {
        float c = v(i);
        st(g, i, accumulate ? __fadd_rn(ld(g, i), c) : c);
    }
}

template <typename Ti, typename To>
__global__ void cast_kernel(const Ti *__restrict__ x, To *__restrict__ y, int64_t n) {
    QT_GRID_STRIDE(i, n) st(y, i, ld(x, i));
}

/* cast backward: g(in dtype) = gy (+ g), added in f32 and rounded once (as the CPU does) */
template <typename Tg, typename Ty>
__global__ void cast_bwd_kernel(const Ty *__restrict__ gy, Tg *__restrict__ g, int64_t n,
                                int accumulate) {
    QT_GRID_STRIDE(i, n) {
        float v = ld(gy, i);
        if (accumulate) v = __fadd_rn(v, ld(g, i));
        st(g, i, v);
    }
}

/* ---- bf16 in 16-byte vectors -------------------------------------------------------------
 * The hot elementwise ops of a bf16 step (residual add, SwiGLU, gradient copies) move 8 values
 * per load: scalar 2-byte accesses leave too few bytes in flight to reach the device's
 * bandwidth. Same per-element arithmetic and rounding as the scalar kernels: bit-identical. */

/* whether n bf16 values at these addresses can go as whole 16-byte vectors */
__host__ bool vec8_ok(int64_t n, const void *p0, const void *p1 = nullptr, const void *p2 = nullptr,
                      const void *p3 = nullptr, const void *p4 = nullptr) {
    const void *p[5] = {p0, p1, p2, p3, p4};
    if (n % 8) return false;
    for (int k = 0; k < 5; k++)
        if (p[k] && ((uintptr_t)p[k] & 15)) return false;
    return true;
}

template <typename F>
__global__ void binary_bf16x8(const uint4 *__restrict__ a, const uint4 *__restrict__ b,
                              uint4 *__restrict__ y, int64_t n8, F f) {
    QT_GRID_STRIDE(i, n8) {
        float x[8], z[8], r[8];
        unpack8(a[i], x);
        unpack8(b[i], z);
#pragma unroll
        for (int k = 0; k < 8; k++) r[k] = f(x[k], z[k]);
        y[i] = pack8(r);
    }
}

/* g += gy (the beta-1 gradient copy) */
__global__ void acc_bf16x8(uint4 *__restrict__ g, const uint4 *__restrict__ gy, int64_t n8) {
    QT_GRID_STRIDE(i, n8) {
        float x[8], z[8];
        unpack8(g[i], x);
        unpack8(gy[i], z);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = __fadd_rn(x[k], z[k]);
        g[i] = pack8(x);
    }
}

/* both SwiGLU gradients from one read of gy, a, u (GradSwigluGate / GradSwigluUp's formulas);
 * ga or gu NULL when not wanted; ga may be gy itself (each vector is read before it is written) */
__global__ void swiglu_bwd_bf16x8(const uint4 *gy, const uint4 *__restrict__ a,
                                  const uint4 *__restrict__ u, uint4 *ga, uint4 *gu, int acc_a,
                                  int acc_u, int64_t n8) {
    QT_GRID_STRIDE(i, n8) {
        float g[8], av[8], uv[8], ra[8], ru[8];
        unpack8(gy[i], g);
        unpack8(a[i], av);
        unpack8(u[i], uv);
        if (ga && acc_a) unpack8(ga[i], ra);
        if (gu && acc_u) unpack8(gu[i], ru);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float sg = sigmoidf_(av[k]);
            const float cg = __fmul_rn(__fmul_rn(__fmul_rn(g[k], uv[k]), sg),
                                       __fadd_rn(1.0f, __fmul_rn(av[k], __fsub_rn(1.0f, sg))));
            const float cu = __fmul_rn(__fmul_rn(g[k], av[k]), sg);
            ra[k] = ga && acc_a ? __fadd_rn(ra[k], cg) : cg;
            ru[k] = gu && acc_u ? __fadd_rn(ru[k], cu) : cu;
        }
        if (ga) ga[i] = pack8(ra);
        if (gu) gu[i] = pack8(ru);
    }
}

/* Bias gradient: gb[c] (= gb[c] +) sum over rows of gy[r, c]. A block owns 32 columns
 * (threadIdx.x, coalesced across a row); its 8 thread rows (threadIdx.y) sum rows y, y+8, ...
 * in order and the 8 partial sums are added in a fixed order: the result depends on neither
 * the grid size nor the scheduling. Blocks stride over column chunks. */
constexpr int kBiasCols = 32, kBiasRows = kThreads / kBiasCols;

template <typename T>
__global__ void bias_grad_kernel(const T *__restrict__ gy, T *__restrict__ gb, int64_t rows,
                                 int64_t cols, int accumulate) {
    __shared__ float part[kBiasRows][kBiasCols + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int64_t c0 = (int64_t)blockIdx.x * kBiasCols; c0 < cols;
         c0 += (int64_t)gridDim.x * kBiasCols) {
        const int64_t c = c0 + tx;
        float s = 0.0f;
        if (c < cols)
            for (int64_t r = ty; r < rows; r += kBiasRows) s = __fadd_rn(s, ld(gy, r * cols + c));
        part[ty][tx] = s;
        __syncthreads();
        if (ty == 0 && c < cols) {
            float t = part[0][tx];
            for (int k = 1; k < kBiasRows; k++) t = __fadd_rn(t, part[k][tx]);
            st(gb, c, accumulate ? __fadd_rn(ld(gb, c), t) : t);
        }
        __syncthreads();
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

template <typename T, typename F>
void launch_binary(qt_ctx *ctx, const void *a, const void *b, void *y, int64_t n, F f,
                   const char *what) {
    if (n == 0) return;
    if (std::is_same<T, __nv_bfloat16>::value && vec8_ok(n, a, b, y)) {
        Launch L = launch_for(ctx, n / 8);
        binary_bf16x8<F><<<L.grid, kThreads, 0, L.stream>>>((const uint4 *)a, (const uint4 *)b,
                                                            (uint4 *)y, n / 8, f);
        QT_CUDA_CHECK_LAUNCH(what);
        return;
    }
    Launch L = launch_for(ctx, n);
    binary_kernel<T, F>
        <<<L.grid, kThreads, 0, L.stream>>>((const T *)a, (const T *)b, (T *)y, n, f);
    QT_CUDA_CHECK_LAUNCH(what);
}

template <typename T, typename F>
void launch_unary(qt_ctx *ctx, const void *x, void *y, int64_t n, F f, const char *what) {
    if (n == 0) return;
    Launch L = launch_for(ctx, n);
    unary_kernel<T, F><<<L.grid, kThreads, 0, L.stream>>>((const T *)x, (T *)y, n, f);
    QT_CUDA_CHECK_LAUNCH(what);
}

template <typename T, typename V>
void launch_grad(qt_ctx *ctx, void *g, int64_t n, float beta, V v, const char *what) {
    if (n == 0) return;
    Launch L = launch_for(ctx, n);
    grad_kernel<T, V><<<L.grid, kThreads, 0, L.stream>>>((T *)g, n, beta != 0.0f, v);
    QT_CUDA_CHECK_LAUNCH(what);
}

/* g = gy (beta 0: a plain copy) or g + gy (beta 1) */
template <typename T>
void launch_grad_copy(qt_ctx *ctx, void *g, const void *gy, int64_t n, float beta,
                      const char *what) {
    if (n == 0) return;
    if (beta == 0.0f) {
        qt_cuda_copy_d2d((qt_cuda_ctx *)ctx->cuda, g, gy, (size_t)n * sizeof(T));
        return;
    }
    if (std::is_same<T, __nv_bfloat16>::value && vec8_ok(n, g, gy)) {
        Launch L = launch_for(ctx, n / 8);
        acc_bf16x8<<<L.grid, kThreads, 0, L.stream>>>((uint4 *)g, (const uint4 *)gy, n / 8);
        QT_CUDA_CHECK_LAUNCH(what);
        return;
    }
    launch_grad<T>(ctx, g, n, beta, GradCopy<T>{(const T *)gy}, what);
}

template <typename T>
void launch_bias_add(qt_ctx *ctx, const void *x, const void *b, void *y, int64_t n, int64_t cols) {
    if (n == 0) return;
    Launch L = launch_for(ctx, n);
    bias_add_kernel<T>
        <<<L.grid, kThreads, 0, L.stream>>>((const T *)x, (const T *)b, (T *)y, n, cols);
    QT_CUDA_CHECK_LAUNCH("launching bias_add forward");
}

template <typename T>
void launch_bias_grad(qt_ctx *ctx, const void *gy, void *gb, int64_t rows, int64_t cols,
                      float beta) {
    if (cols == 0) return;
    qt_cuda_ctx *c = (qt_cuda_ctx *)ctx->cuda;
    int64_t blocks = (cols + kBiasCols - 1) / kBiasCols;
    int64_t cap = (int64_t)c->sm_count * kBlocksPerSM;
    if (blocks > cap) blocks = cap;
    dim3 block(kBiasCols, kBiasRows);
    bias_grad_kernel<T><<<(unsigned)blocks, block, 0, c->stream>>>((const T *)gy, (T *)gb, rows,
                                                                   cols, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH("launching the bias gradient reduction");
}

template <typename Ti, typename To>
void launch_cast(qt_ctx *ctx, const void *x, void *y, int64_t n) {
    if (n == 0) return;
    Launch L = launch_for(ctx, n);
    cast_kernel<Ti, To><<<L.grid, kThreads, 0, L.stream>>>((const Ti *)x, (To *)y, n);
    QT_CUDA_CHECK_LAUNCH("launching cast forward");
}

template <typename Tg, typename Ty>
void launch_cast_bwd(qt_ctx *ctx, const void *gy, void *g, int64_t n, float beta) {
    if (n == 0) return;
    Launch L = launch_for(ctx, n);
    cast_bwd_kernel<Tg, Ty>
        <<<L.grid, kThreads, 0, L.stream>>>((const Ty *)gy, (Tg *)g, n, beta != 0.0f);
    QT_CUDA_CHECK_LAUNCH("launching cast backward");
}

/* ---- dtype dispatch --------------------------------------------------------------------- */

bool is_float(qt_dtype dt) {
    return dt == QT_F32 || dt == QT_BF16 || dt == QT_F16;
}

/* runs BODY with T bound to the storage type of dt (F32, BF16, F16) */

/* the common checks of an elementwise node: every tensor on CUDA, one float dtype */
qt_dtype same_dtype(const qt_node *nd, const char *what) {
    qt_dtype dt = nd->out->dtype;
    QT_CHECK(is_float(dt), "%s: dtype %s is not supported on CUDA", what, qt_dtype_name(dt));
    QT_CHECK(nd->out->device == QT_CUDA, "%s: output is not on CUDA", what);
    for (int k = 0; k < nd->n_in; k++) {
        QT_CHECK(nd->in[k] && nd->in[k]->device == QT_CUDA, "%s: input %d is not on CUDA", what, k);
        QT_CHECK(nd->in[k]->dtype == dt, "%s: input %d is %s, output %s", what, k,
                 qt_dtype_name(nd->in[k]->dtype), qt_dtype_name(dt));
    }
    return dt;
}

/* the output gradient of a node, checked */
const qt_tensor *out_grad(const qt_node *nd, const char *what) {
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && gy->dtype == nd->out->dtype && qt_numel(gy) == qt_numel(nd->out),
             "%s: missing or mismatched output gradient", what);
    return gy;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------------- */

extern "C" void qt_cuda_axpby(qt_ctx *ctx, qt_tensor *dst, const qt_tensor *src, float beta) {
    QT_CHECK(qt_numel(dst) == qt_numel(src) && dst->dtype == src->dtype, "axpby mismatch");
    QT_CHECK(dst->device == QT_CUDA && src->device == QT_CUDA, "axpby: tensors not on CUDA");
    if (beta == 0.0f) { /* a plain copy: any dtype */
        qt_cuda_copy_d2d((qt_cuda_ctx *)ctx->cuda, dst->data, src->data, qt_nbytes(dst));
        return;
    }
    QT_CHECK(beta == 1.0f, "axpby: beta must be 0 or 1 (got %g)", (double)beta);
    int64_t n = qt_numel(dst);
    QT_FLOAT_DISPATCH(dst->dtype, T, "axpby",
                      launch_grad_copy<T>(ctx, dst->data, src->data, n, 1.0f, "launching axpby"));
}

extern "C" void qt_cuda_add_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "add");
    int64_t n = qt_numel(nd->out);
    QT_FLOAT_DISPATCH(dt, T, "add",
                      launch_binary<T>(ctx, nd->in[0]->data, nd->in[1]->data, nd->out->data, n,
                                       AddF{}, "launching add forward"));
}

extern "C" void qt_cuda_add_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "add backward");
    const qt_tensor *gy = out_grad(nd, "add backward");
    float beta;
    bool self = nd->in[0] == nd->in[1], handed = false;
    for (int k = 0; k < 2; k++) {
        if (!qt_needs_grad(nd->in[k])) continue;
        /* gy is dead after this op: one input may take it as its gradient (the other copies
         * it first: nothing writes it before this backward returns) */
        if (!self && !handed && qt_grad_handover(ctx, nd->in[k], (qt_tensor *)gy)) {
            handed = true;
            continue;
        }
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[k], false, &beta);
        QT_FLOAT_DISPATCH(dt, T, "add backward",
                          launch_grad_copy<T>(ctx, g->data, gy->data, qt_numel(g), beta,
                                              "launching add backward"));
    }
}

extern "C" void qt_cuda_mul_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "mul");
    int64_t n = qt_numel(nd->out);
    QT_FLOAT_DISPATCH(dt, T, "mul",
                      launch_binary<T>(ctx, nd->in[0]->data, nd->in[1]->data, nd->out->data, n,
                                       MulF{}, "launching mul forward"));
}

extern "C" void qt_cuda_mul_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "mul backward");
    const qt_tensor *gy = out_grad(nd, "mul backward");
    float beta;
    for (int k = 0; k < 2; k++) {
        if (!qt_needs_grad(nd->in[k])) continue;
        /* for mul(a, a) the first pass sets a.grad, the second reads it back and adds: the
         * kernels run in order on the one stream */
        const qt_tensor *o = nd->in[1 - k];
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[k], false, &beta);
        QT_FLOAT_DISPATCH(dt, T, "mul backward",
                          launch_grad<T>(ctx, g->data, qt_numel(g), beta,
                                         GradMul<T>{(const T *)gy->data, (const T *)o->data},
                                         "launching mul backward"));
    }
}

extern "C" void qt_cuda_scale_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "scale");
    int64_t n = qt_numel(nd->out);
    QT_FLOAT_DISPATCH(dt, T, "scale",
                      launch_unary<T>(ctx, nd->in[0]->data, nd->out->data, n, ScaleF{nd->fp[0]},
                                      "launching scale forward"));
}

extern "C" void qt_cuda_scale_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "scale backward");
    const qt_tensor *gy = out_grad(nd, "scale backward");
    if (!qt_needs_grad(nd->in[0])) return;
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    QT_FLOAT_DISPATCH(dt, T, "scale backward",
                      launch_grad<T>(ctx, g->data, qt_numel(g), beta,
                                     GradScale<T>{(const T *)gy->data, nd->fp[0]},
                                     "launching scale backward"));
}

extern "C" void qt_cuda_bias_add_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "bias_add");
    int64_t cols = qt_cols(nd->out), n = qt_numel(nd->out);
    QT_CHECK(qt_numel(nd->in[1]) == cols, "bias_add: bias has %lld elements, rows have %lld",
             (long long)qt_numel(nd->in[1]), (long long)cols);
    QT_FLOAT_DISPATCH(
        dt, T, "bias_add",
        launch_bias_add<T>(ctx, nd->in[0]->data, nd->in[1]->data, nd->out->data, n, cols));
}

extern "C" void qt_cuda_bias_add_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "bias_add backward");
    const qt_tensor *gy = out_grad(nd, "bias_add backward");
    int64_t rows = qt_rows(nd->out), cols = qt_cols(nd->out);
    float beta;
    if (qt_needs_grad(nd->in[0])) {
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
        QT_FLOAT_DISPATCH(dt, T, "bias_add backward",
                          launch_grad<T>(ctx, g->data, qt_numel(g), beta,
                                         GradCopy<T>{(const T *)gy->data},
                                         "launching bias_add backward (input)"));
    }
    if (qt_needs_grad(nd->in[1])) {
        qt_tensor *gb = qt_grad_acquire(ctx, nd->in[1], false, &beta);
        QT_FLOAT_DISPATCH(dt, T, "bias_add backward",
                          launch_bias_grad<T>(ctx, gy->data, gb->data, rows, cols, beta));
    }
}

extern "C" void qt_cuda_silu_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "silu");
    int64_t n = qt_numel(nd->out);
    QT_FLOAT_DISPATCH(
        dt, T, "silu",
        launch_unary<T>(ctx, nd->in[0]->data, nd->out->data, n, SiluF{}, "launching silu forward"));
}

extern "C" void qt_cuda_silu_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "silu backward");
    const qt_tensor *gy = out_grad(nd, "silu backward");
    if (!qt_needs_grad(nd->in[0])) return;
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    QT_FLOAT_DISPATCH(dt, T, "silu backward",
                      launch_grad<T>(ctx, g->data, qt_numel(g), beta,
                                     GradSilu<T>{(const T *)gy->data, (const T *)nd->in[0]->data},
                                     "launching silu backward"));
}

extern "C" void qt_cuda_swiglu_fwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "swiglu");
    int64_t n = qt_numel(nd->out);
    QT_FLOAT_DISPATCH(dt, T, "swiglu",
                      launch_binary<T>(ctx, nd->in[0]->data, nd->in[1]->data, nd->out->data, n,
                                       SwigluF{}, "launching swiglu forward"));
}

extern "C" void qt_cuda_swiglu_bwd(qt_ctx *ctx, qt_node *nd) {
    qt_dtype dt = same_dtype(nd, "swiglu backward");
    const qt_tensor *gy = out_grad(nd, "swiglu backward");
    const qt_tensor *a = nd->in[0], *u = nd->in[1];
    float beta;
    if (dt == QT_BF16 && vec8_ok(qt_numel(a), gy->data, a->data, u->data)) {
        float ba = 0, bu = 0;
        /* the gate's gradient overwrites gy in place when gy is dead after this op (no copy,
         * one [rows, ffn] buffer less at the peak of a block's backward) */
        int64_t n = qt_numel(a);
        void *gu = qt_needs_grad(u) ? qt_grad_acquire(ctx, nd->in[1], false, &bu)->data : NULL;
        void *ga = NULL;
        if (qt_needs_grad(a) && (!gu || vec8_ok(n, gu)) &&
            qt_grad_handover(ctx, nd->in[0], (qt_tensor *)gy))
            ga = nd->in[0]->grad->data; /* ba = 0: overwritten, by the fused kernel only */
        else if (qt_needs_grad(a))
            ga = qt_grad_acquire(ctx, nd->in[0], false, &ba)->data;
        if ((ga || gu) && n && vec8_ok(n, ga, gu)) {
            Launch L = launch_for(ctx, n / 8);
            swiglu_bwd_bf16x8<<<L.grid, kThreads, 0, L.stream>>>(
                (const uint4 *)gy->data, (const uint4 *)a->data, (const uint4 *)u->data,
                (uint4 *)ga, (uint4 *)gu, ba != 0.0f, bu != 0.0f, n / 8);
            QT_CUDA_CHECK_LAUNCH("launching swiglu backward (bf16 x 8)");
            return;
        }
        /* the buffers are acquired: the scalar kernels below take them as they are */
        if (ga)
            launch_grad<__nv_bfloat16>(
                ctx, ga, n, ba,
                GradSwigluGate<__nv_bfloat16>{(const __nv_bfloat16 *)gy->data,
                                              (const __nv_bfloat16 *)a->data,
                                              (const __nv_bfloat16 *)u->data},
                "launching swiglu backward (gate)");
        if (gu)
            launch_grad<__nv_bfloat16>(ctx, gu, n, bu,
                                       GradSwigluUp<__nv_bfloat16>{(const __nv_bfloat16 *)gy->data,
                                                                   (const __nv_bfloat16 *)a->data},
                                       "launching swiglu backward (up)");
        return;
    }
    if (qt_needs_grad(a)) {
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
        QT_FLOAT_DISPATCH(dt, T, "swiglu backward",
                          launch_grad<T>(ctx, g->data, qt_numel(g), beta,
                                         GradSwigluGate<T>{(const T *)gy->data, (const T *)a->data,
                                                           (const T *)u->data},
                                         "launching swiglu backward (gate)"));
    }
    if (qt_needs_grad(u)) {
        qt_tensor *g = qt_grad_acquire(ctx, nd->in[1], false, &beta);
        QT_FLOAT_DISPATCH(dt, T, "swiglu backward",
                          launch_grad<T>(ctx, g->data, qt_numel(g), beta,
                                         GradSwigluUp<T>{(const T *)gy->data, (const T *)a->data},
                                         "launching swiglu backward (up)"));
    }
}

/* cast: any of F32/BF16/F16 to any, round-to-nearest-even */
extern "C" void qt_cuda_cast_fwd(qt_ctx *ctx, qt_node *nd) {
    const qt_tensor *x = nd->in[0];
    qt_tensor *y = nd->out;
    QT_CHECK(x->device == QT_CUDA && y->device == QT_CUDA, "cast: tensors not on CUDA");
    QT_CHECK(is_float(x->dtype) && is_float(y->dtype) && qt_numel(x) == qt_numel(y),
             "cast: %s -> %s is not supported", qt_dtype_name(x->dtype), qt_dtype_name(y->dtype));
    int64_t n = qt_numel(y);
    QT_FLOAT_DISPATCH(
        x->dtype, Ti, "cast",
        QT_FLOAT_DISPATCH(y->dtype, To, "cast", (launch_cast<Ti, To>(ctx, x->data, y->data, n))));
}

extern "C" void qt_cuda_cast_bwd(qt_ctx *ctx, qt_node *nd) {
    if (!qt_needs_grad(nd->in[0])) return;
    const qt_tensor *gy = nd->out->grad;
    QT_CHECK(gy && is_float(gy->dtype) && qt_numel(gy) == qt_numel(nd->in[0]),
             "cast backward: missing or mismatched output gradient");
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, nd->in[0], false, &beta);
    int64_t n = qt_numel(g);
    QT_FLOAT_DISPATCH(
        g->dtype, Tg, "cast backward",
        QT_FLOAT_DISPATCH(gy->dtype, Ty, "cast backward",
                          (launch_cast_bwd<Tg, Ty>(ctx, gy->data, g->data, n, beta))));
}
