/* optim.cu - the optimizer's GPU half: one multi-tensor AdamW kernel and one multi-tensor
 * sum-of-squares (for global-norm clipping) over every trained tensor of the model, driven by a
 * chunk table that lives on the device and is rebuilt only when the set of tensors changes.
 *
 * Why a chunk table: LoRA on a 16-layer model trains 224 small tensors; a launch per tensor
 * costs more than the math. Each block takes one chunk (<= kChunk elements of one tensor).
 *
 * Exactness: the update is train/optim.c's CPU arithmetic (torch.optim.AdamW's in f32, or for
 * 8-bit AdamW's small tensors bitsandbytes' 32-bit Adam kernel's) written with _rn intrinsics
 * in the same order so nvcc cannot contract it into FMAs: the same inputs give bit-identical
 * masters and moments on both backends. The norm is summed in double by a
 * fixed tree (chunk partials, then each tensor's partials in order): deterministic, with no
 * atomics, so a resumed run repeats an uninterrupted one bit for bit. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_optim.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 16; /* elements per block */

#include "cuda/cuda_storage.cuh"

struct Chunk {
    float *w;         /* fp32 values updated in place (the parameter or its master) */
    const void *g;    /* gradient, dtype gdt */
    float *m, *v;     /* moments */
    uint16_t *narrow; /* the bf16/f16 parameter a master is rounded into, or NULL */
    int64_t start, len;
    int32_t gdt, ndt; /* qt_dtype of g and of narrow */
    int32_t tensor;   /* index into the table's tensor list */
    float decay_on;   /* 1: weight decay applies */
};

__device__ __forceinline__ float load_any(const void *p, int dt, int64_t i) {
    if (dt == QT_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == QT_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* adamw_one's block: a tensor alone must fill the GPU (kChunk would give a 16M-element tensor
 * 256 blocks); the update is per element, so any split gives the same bits */
constexpr int64_t kOneChunk = 1 << 12;

/* piece k (of `size` elements) of a tensor described by a whole-tensor Chunk t (start 0,
 * len n), for the table-free one-tensor kernels */
__device__ __forceinline__ Chunk chunk_of(const Chunk &t, int64_t k, int64_t size) {
    Chunk c = t;
    c.start = k * size;
    c.len = t.len - c.start < size ? t.len - c.start : size;
    return c;
}

/* one block: the chunk's sum of g² by a fixed tree; the result is thread 0's */
__device__ __forceinline__ double chunk_sumsq(const Chunk &k) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < k.len; i += kThreads) {
        double x = (double)load_any(k.g, k.gdt, k.start + i);
        s += x * x;
    }
    __shared__ double red[kThreads];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int h = kThreads / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
        __syncthreads();
    }
    return red[0];
}

__global__ void sumsq_chunks(const Chunk *c, double *partial) {
    double s = chunk_sumsq(c[blockIdx.x]);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* one tensor without a table: block b takes chunk b, the table's chunking (the sum's order) */
__global__ void sumsq_one(Chunk t, double *partial) {
    double s = chunk_sumsq(chunk_of(t, blockIdx.x, kChunk));
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* one thread: the partials in order (sumsq_tensors' sum for one tensor) */
__global__ void sum_partials(const double *partial, int64_t n, double *out) {
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += partial[j];
    *out = s;
}

/* one thread per tensor: its chunks' partials in order */
__global__ void sumsq_tensors(const int32_t *first, const int32_t *count, int n,
                              const double *partial, double *out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    double s = 0;
    for (int j = 0; j < count[t]; j++) s += partial[first[t] + j];
    out[t] = s;
}

__global__ void scale_chunks(const Chunk *c, float coef) {
    const Chunk k = c[blockIdx.x];
    for (int64_t i = k.start + threadIdx.x; i < k.start + k.len; i += kThreads) {
        if (k.gdt == QT_F32) {
            float *g = (float *)k.g;
            g[i] = __fmul_rn(g[i], coef);
        } else if (k.gdt == QT_BF16) {
            __nv_bfloat16 *g = (__nv_bfloat16 *)k.g;
            g[i] = __float2bfloat16_rn(__fmul_rn(__bfloat162float(g[i]), coef));
        } else {
            __half *g = (__half *)k.g;
            g[i] = __float2half_rn(__fmul_rn(__half2float(g[i]), coef));
        }
    }
}

struct AdamArgs {
    float coef;                /* clipping factor applied to the gradient first (1: none) */
    float omb1, b2, omb2, eps; /* 1 - beta1, beta2, 1 - beta2, epsilon */
    float step_size, bc2_sqrt; /* lr / (1 - beta1^t), sqrt(1 - beta2^t) */
    float decay;               /* 1 - lr * weight_decay */
    int bnb;                   /* bitsandbytes' 32-bit Adam form (qt_cuda_adamw_args) */
    float b1, bnb_step_size, eps_scaled;
};

__device__ __forceinline__ void adamw_chunk(const Chunk &k, const AdamArgs &a) {
    const float decay = k.decay_on != 0.0f ? a.decay : 1.0f;
    for (int64_t i = k.start + threadIdx.x; i < k.start + k.len; i += kThreads) {
        float g = load_any(k.g, k.gdt, i);
        if (a.coef != 1.0f) g = __fmul_rn(g, a.coef);
        float w, m, v;
        if (a.bnb) { /* train/optim.c's adamw32_bnb_cpu, operation for operation */
            m = __fadd_rn(__fmul_rn(k.m[i], a.b1), __fmul_rn(a.omb1, g));
            v = __fadd_rn(__fmul_rn(k.v[i], a.b2), __fmul_rn(a.omb2, __fmul_rn(g, g)));
            w = __fadd_rn(k.w[i], __fmul_rn(a.bnb_step_size,
                                            __fdiv_rn(m, __fadd_rn(__fsqrt_rn(v), a.eps_scaled))));
            if (k.decay_on != 0.0f) w = __fmul_rn(w, a.decay);
        } else {
            w = __fmul_rn(k.w[i], decay);
            m = __fadd_rn(k.m[i], __fmul_rn(__fsub_rn(g, k.m[i]), a.omb1));
            v = __fadd_rn(__fmul_rn(k.v[i], a.b2), __fmul_rn(__fmul_rn(a.omb2, g), g));
            float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.bc2_sqrt), a.eps);
            w = __fsub_rn(w, __fmul_rn(a.step_size, __fdiv_rn(m, denom)));
        }
        k.w[i] = w, k.m[i] = m, k.v[i] = v;
        if (k.narrow) {
            if (k.ndt == QT_BF16)
                ((__nv_bfloat16 *)k.narrow)[i] = __float2bfloat16_rn(w);
            else
                ((__half *)k.narrow)[i] = __float2half_rn(w);
        }
    }
}

__global__ void adamw_chunks(const Chunk *c, AdamArgs a) {
    adamw_chunk(c[blockIdx.x], a);
}

/* one tensor without a table: block b takes piece b of kOneChunk elements */
__global__ void adamw_one(Chunk t, AdamArgs a) {
    adamw_chunk(chunk_of(t, blockIdx.x, kOneChunk), a);
}

} // namespace

struct qt_cuda_optim {
    int n_tensors, n_chunks;
    uint64_t signature;     /* hash of the tensor list the table was built for */
    Chunk *chunks;          /* device [n_chunks] */
    int32_t *first, *count; /* device [n_tensors] */
    double *partial;        /* device [n_chunks] */
    double *sums;           /* device [n_tensors] */
    double *host_sums;      /* pinned [n_tensors] */
};

static uint64_t signature_of(const qt_cuda_optim_tensor *t, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        const void *p[3] = {t[i].w, t[i].g, t[i].narrow};
        const unsigned char *b = (const unsigned char *)p;
        for (size_t j = 0; j < sizeof p; j++) h = (h ^ b[j]) * 1099511628211ull;
        h = (h ^ (uint64_t)t[i].n) * 1099511628211ull;
    }
    return h ^ (uint64_t)n;
}

static void table_free(qt_cuda_ctx *c, qt_cuda_optim *o) {
    qt_cuda_free(c, o->chunks), qt_cuda_free(c, o->first), qt_cuda_free(c, o->count);
    qt_cuda_free(c, o->partial), qt_cuda_free(c, o->sums);
    if (o->host_sums) QT_CUDA_CHECK(cudaFreeHost(o->host_sums), "freeing the norm readback");
    memset(o, 0, sizeof *o);
}

/* (re)builds the chunk table for this list of tensors; a no-op when it is the same list */
static void table_build(qt_cuda_ctx *c, qt_cuda_optim *o, const qt_cuda_optim_tensor *t, int n) {
    uint64_t sig = signature_of(t, n);
    if (o->chunks && o->signature == sig && o->n_tensors == n) return;
    table_free(c, o);
    int nc = 0;
    for (int i = 0; i < n; i++) nc += (int)((t[i].n + kChunk - 1) / kChunk);
    Chunk *hc = (Chunk *)calloc((size_t)(nc ? nc : 1), sizeof *hc);
    int32_t *hf = (int32_t *)calloc((size_t)(n ? n : 1), sizeof *hf);
    int32_t *hn = (int32_t *)calloc((size_t)(n ? n : 1), sizeof *hn);
    QT_CHECK(hc && hf && hn, "out of host memory building the optimizer's chunk table");
    int k = 0;
    for (int i = 0; i < n; i++) {
        hf[i] = k;
        for (int64_t s = 0; s < t[i].n; s += kChunk, k++) {
            hc[k] = Chunk{t[i].w,
                          t[i].g,
                          t[i].m,
                          t[i].v,
                          (uint16_t *)t[i].narrow,
                          s,
                          t[i].n - s < kChunk ? t[i].n - s : kChunk,
                          t[i].gdt,
                          t[i].ndt,
                          i,
                          t[i].decay ? 1.0f : 0.0f};
        }
        hn[i] = k - hf[i];
    }
    o->n_tensors = n, o->n_chunks = nc, o->signature = sig;
    size_t cb = (size_t)(nc ? nc : 1), tb = (size_t)(n ? n : 1);
    o->chunks = (Chunk *)qt_cuda_malloc(c, cb * sizeof(Chunk));
    o->first = (int32_t *)qt_cuda_malloc(c, tb * sizeof(int32_t));
    o->count = (int32_t *)qt_cuda_malloc(c, tb * sizeof(int32_t));
    o->partial = (double *)qt_cuda_malloc(c, cb * sizeof(double));
    o->sums = (double *)qt_cuda_malloc(c, tb * sizeof(double));
    QT_CHECK(o->chunks && o->first && o->count && o->partial && o->sums,
             "out of GPU memory for the optimizer's chunk table (%d chunks)", nc);
    QT_CUDA_CHECK(cudaMallocHost((void **)&o->host_sums, tb * sizeof(double)),
                  "allocating the norm readback");
    qt_cuda_copy_h2d(c, o->chunks, hc, (size_t)nc * sizeof(Chunk));
    qt_cuda_copy_h2d(c, o->first, hf, (size_t)n * sizeof(int32_t));
    qt_cuda_copy_h2d(c, o->count, hn, (size_t)n * sizeof(int32_t));
    free(hc), free(hf), free(hn);
}

/* the context keeps one table per use (norms see gradients only, AdamW everything), so
 * neither is rebuilt when the two alternate */
static qt_cuda_optim *table_of(qt_cuda_ctx *c, int which) {
    if (!c->optim[which]) {
        c->optim[which] = (qt_cuda_optim *)calloc(1, sizeof(qt_cuda_optim));
        QT_CHECK(c->optim[which], "out of host memory");
    }
    return c->optim[which];
}

extern "C" void qt_cuda_optim_free(qt_cuda_ctx *c, qt_cuda_optim *o) {
    if (!o) return;
    table_free(c, o);
    free(o);
}

extern "C" void qt_cuda_optim_sumsq(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int n,
                                    double *out) {
    qt_cuda_optim *o = table_of(c, 0);
    table_build(c, o, t, n);
    if (n == 0) return;
    if (o->n_chunks > 0) {
        sumsq_chunks<<<o->n_chunks, kThreads, 0, c->stream>>>(o->chunks, o->partial);
        QT_CUDA_CHECK_LAUNCH("sumsq_chunks (gradient norm)");
    }
    sumsq_tensors<<<(n + 127) / 128, 128, 0, c->stream>>>(o->first, o->count, n, o->partial,
                                                          o->sums);
    QT_CUDA_CHECK_LAUNCH("sumsq_tensors (gradient norm)");
    QT_CUDA_CHECK(cudaMemcpyAsync(o->host_sums, o->sums, (size_t)n * sizeof(double),
                                  cudaMemcpyDeviceToHost, c->stream),
                  "reading the gradient norms back");
    QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "waiting for the gradient norms");
    memcpy(out, o->host_sums, (size_t)n * sizeof(double));
}

extern "C" void qt_cuda_optim_scale(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int n,
                                    float coef) {
    qt_cuda_optim *o = table_of(c, 0);
    table_build(c, o, t, n);
    if (o->n_chunks == 0) return;
    scale_chunks<<<o->n_chunks, kThreads, 0, c->stream>>>(o->chunks, coef);
    QT_CUDA_CHECK_LAUNCH("scale_chunks (gradient clipping)");
}

static AdamArgs adam_args(const qt_cuda_adamw_args *a) {
    AdamArgs k = {a->coef,        a->one_minus_beta1, a->beta2,         a->one_minus_beta2,
                  a->eps,         a->step_size,       a->bc2_sqrt,      a->decay,
                  a->bnb ? 1 : 0, a->beta1,           a->bnb_step_size, a->eps_scaled};
    return k;
}

extern "C" void qt_cuda_optim_adamw(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int n,
                                    const qt_cuda_adamw_args *a) {
    qt_cuda_optim *o = table_of(c, 1);
    table_build(c, o, t, n);
    if (o->n_chunks == 0) return;
    adamw_chunks<<<o->n_chunks, kThreads, 0, c->stream>>>(o->chunks, adam_args(a));
    QT_CUDA_CHECK_LAUNCH("adamw_chunks");
}

/* ---- one tensor at a time (optimizer in backward) ----------------------------------------- */

/* the whole tensor as one Chunk (start 0, len n), for chunk_of to cut */
static Chunk whole(const qt_cuda_optim_tensor *t) {
    return Chunk{t->w, t->g,   t->m,   t->v, (uint16_t *)t->narrow, 0,
                 t->n, t->gdt, t->ndt, 0,    t->decay ? 1.0f : 0.0f};
}

static unsigned n_chunks_of(int64_t n, int64_t size) {
    return (unsigned)((n + size - 1) / size);
}

extern "C" void qt_cuda_optim_adamw_one(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t,
                                        const qt_cuda_adamw_args *a) {
    if (t->n == 0) return;
    adamw_one<<<n_chunks_of(t->n, kOneChunk), kThreads, 0, c->stream>>>(whole(t), adam_args(a));
    QT_CUDA_CHECK_LAUNCH("adamw_one");
}

/* the scratch (c->optim[2]): partial for the largest tensor seen, sums / host_sums for the
 * slots. It grows in the first step only (the same tensors come every step); growing waits
 * for the stream, whose queued kernels may still read the old buffers. */
static qt_cuda_optim *sums_scratch(qt_cuda_ctx *c, int n_chunks, int n_slots) {
    qt_cuda_optim *o = table_of(c, 2);
    if (n_chunks > o->n_chunks || n_slots > o->n_tensors) {
        QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "waiting before growing norm scratch");
    }
    if (n_chunks > o->n_chunks) {
        qt_cuda_free(c, o->partial);
        o->partial = (double *)qt_cuda_malloc(c, (size_t)n_chunks * sizeof(double));
        QT_CHECK(o->partial, "out of GPU memory for the gradient norms' scratch");
        o->n_chunks = n_chunks;
    }
    if (n_slots > o->n_tensors) {
        qt_cuda_free(c, o->sums);
        if (o->host_sums) QT_CUDA_CHECK(cudaFreeHost(o->host_sums), "freeing the norm readback");
        o->host_sums = NULL;
        o->sums = (double *)qt_cuda_malloc(c, (size_t)n_slots * sizeof(double));
        QT_CHECK(o->sums, "out of GPU memory for the gradient norms");
        QT_CUDA_CHECK(cudaMallocHost((void **)&o->host_sums, (size_t)n_slots * sizeof(double)),
                      "allocating the norm readback");
        o->n_tensors = n_slots;
    }
    return o;
}

extern "C" void qt_cuda_optim_sumsq_into(qt_cuda_ctx *c, const qt_cuda_optim_tensor *t, int slot,
                                         int n_slots) {
    QT_CHECK(slot >= 0 && slot < n_slots, "norm slot %d of %d", slot, n_slots);
    unsigned nc = n_chunks_of(t->n, kChunk);
    qt_cuda_optim *o = sums_scratch(c, (int)(nc ? nc : 1), n_slots);
    if (nc) {
        sumsq_one<<<nc, kThreads, 0, c->stream>>>(whole(t), o->partial);
        QT_CUDA_CHECK_LAUNCH("sumsq_one (gradient norm)");
    }
    sum_partials<<<1, 1, 0, c->stream>>>(o->partial, (int64_t)nc, o->sums + slot);
    QT_CUDA_CHECK_LAUNCH("sum_partials (gradient norm)");
}

extern "C" void qt_cuda_optim_sums_read(qt_cuda_ctx *c, int n, double *out) {
    if (n <= 0) return;
    qt_cuda_optim *o = sums_scratch(c, 1, n);
    QT_CUDA_CHECK(cudaMemcpyAsync(o->host_sums, o->sums, (size_t)n * sizeof(double),
                                  cudaMemcpyDeviceToHost, c->stream),
                  "reading the gradient norms back");
    QT_CUDA_CHECK(cudaStreamSynchronize(c->stream), "waiting for the gradient norms");
    memcpy(out, o->host_sums, (size_t)n * sizeof(double));
}
