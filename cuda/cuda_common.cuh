/* cuda_common.cuh - what the kernel files share besides storage (cuda_storage.cuh): the
 * backend context of a qt_ctx, grid-stride launch geometry, row-block sizes, fixed-tree block
 * reductions, the 8-bit dynamic map's code search and step-arena scratch. Included inside each .cu
 * file's anonymous namespace, after cuda_storage.cuh, so every file gets its own internal copies.
 */
#ifndef QT_CUDA_COMMON_CUH
#define QT_CUDA_COMMON_CUH

constexpr int kThreads = 256;   /* threads of a grid-stride block */
constexpr int kBlocksPerSM = 8; /* 8 x 256 = 2048 threads: a full Hopper SM */

#define QT_GRID_STRIDE(i, n)                                                                       \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

inline qt_cuda_ctx *cuda_of(qt_ctx *ctx) {
    QT_CHECK(ctx->cuda, "CUDA kernel called on a context without a CUDA backend");
    return (qt_cuda_ctx *)ctx->cuda;
}

/* blocks of kThreads for n grid-stride items: enough for n, at most kBlocksPerSM per SM */
inline unsigned grid_for(qt_cuda_ctx *c, int64_t n) {
    int64_t blocks = (n + kThreads - 1) / kThreads;
    int64_t cap = (int64_t)c->sm_count * kBlocksPerSM;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    return (unsigned)blocks;
}

/* threads of a row block: a power of two from 32 to 1024, about 4 columns per thread */
inline int row_threads(int64_t cols) {
    int t = 32;
    while (t < 1024 && (int64_t)t * 4 < cols) t *= 2;
    return t;
}

/* ---- block reductions: fixed trees --------------------------------------------------------
 * A butterfly inside each warp (lanes i and i^m combine the same two values, so every lane
 * ends with the same bits), then every warp reduces the warps' results the same way: all
 * threads return the same value. blockDim.x: a multiple of 32; red: 32 shared slots. */
struct SumOp {
    template <typename V> __device__ V operator()(V a, V b) const {
        return a + b;
    }
};
struct MaxOp { /* as the CPU's m = x > m ? x : m (a NaN never wins) */
    template <typename V> __device__ V operator()(V a, V b) const {
        return b > a ? b : a;
    }
};
struct MinOp {
    template <typename V> __device__ V operator()(V a, V b) const {
        return b < a ? b : a;
    }
};

template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, V identity, V *red, Op op) {
    for (int m = 16; m; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    __syncthreads(); /* red may still be read by the previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarp ? red[lane] : identity;
    for (int m = 16; m; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

/* Step scratch: allocated after a mark of the step's data arena, released by rewinding to it when
 * the object goes out of scope. The stream runs every kernel queued with it before any later user
 * of that memory. */
struct Scratch {
    qt_arena *arena;
    qt_arena_mark mark;
    const char *what;
    Scratch(qt_ctx *ctx, const char *op)
        : arena(&ctx->data), mark(qt_arena_get_mark(arena)), what(op) {}
    void *get(size_t bytes) {
        void *p = qt_arena_alloc(arena, bytes ? bytes : 1);
        QT_CHECK(p, "%s: out of device step memory (%zu bytes of scratch)", what, bytes);
        return p;
    }
    ~Scratch() {
        qt_arena_rewind(arena, mark);
    }
};

#endif
