/* ops_shape.c - reshape (a view), permute (transpose copy), concat, slice/split: the public
 * functions and CPU kernels. They move elements of any dtype; their backward accumulates in f32
 * (gradients of non-f32 tensors go through qt_cast first). */
#include <string.h>

#include "kernels.h"

qt_tensor *qt_reshape(qt_ctx *ctx, qt_tensor *x, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    QT_CHECK(n == qt_numel(x), "reshape: %lld elements into %lld", (long long)qt_numel(x),
             (long long)n);
    /* the output struct aliases x's data: no copy, no allocation beyond the struct */
    qt_tensor *out = qt_tensor_view(ctx, x, ndim, shape);
    qt_node nd = {.op = QT_OP_RESHAPE, .n_in = 1, .in = {x}, .out = out};
    qt_node_run(ctx, &nd);
    return out;
}

void qt_cpu_reshape_fwd(qt_ctx *ctx, qt_node *n) {
    /* nothing to compute: the output aliases the input */
}

void qt_cpu_reshape_bwd(qt_ctx *ctx, qt_node *n) {
    /* the output is a view read by its consumers only: its gradient can be the input's */
    if (qt_grad_handover(ctx, n->in[0], n->out->grad)) return;
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, n->in[0], false, &beta);
    qt_k_axpby(ctx, g, n->out->grad, beta);
}

/* ---- permute ---------------------------------------------------------------------------- */

qt_tensor *qt_permute(qt_ctx *ctx, qt_tensor *x, const int *perm) {
    int64_t shape[QT_MAX_DIMS];
    int seen = 0;
    for (int i = 0; i < x->ndim; i++) {
        QT_CHECK(perm[i] >= 0 && perm[i] < x->ndim && !(seen & (1 << perm[i])),
                 "permute: bad permutation");
        seen |= 1 << perm[i];
        shape[i] = x->shape[perm[i]];
    }
    qt_node nd = {.op = QT_OP_PERMUTE, .n_in = 1, .in = {x}};
    nd.out = qt_tensor_new(ctx, x->dtype, x->ndim, shape);
    for (int i = 0; i < x->ndim; i++) nd.ip[i] = perm[i];
    qt_node_run(ctx, &nd);
    return nd.out;
}

qt_tensor *qt_transpose(qt_ctx *ctx, qt_tensor *x, int d0, int d1) {
    int perm[QT_MAX_DIMS];
    QT_CHECK(d0 >= 0 && d0 < x->ndim && d1 >= 0 && d1 < x->ndim, "transpose: bad dims");
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[d0] = d1;
    perm[d1] = d0;
    return qt_permute(ctx, x, perm);
}

/* Pads shapes to 4 dims (leading 1s) so one loop nest serves every rank. For each output
 * index (i0..i3) the source element is at sum(i_k * stride_in[perm[k]]). */
static void permute_strides(const qt_tensor *x, const int64_t *perm_ip, int64_t *oshape,
                            int64_t *istride_perm) {
    int nd = x->ndim, pad = QT_MAX_DIMS - nd;
    int64_t istride[QT_MAX_DIMS];
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        istride[i] = s;
        s *= x->shape[i];
    }
    for (int k = 0; k < QT_MAX_DIMS; k++) {
        if (k < pad) {
            oshape[k] = 1;
            istride_perm[k] = 0;
        } else {
            int p = (int)perm_ip[k - pad];
            oshape[k] = x->shape[p];
            istride_perm[k] = istride[p];
        }
    }
}

/* dst[out index] = (beta * dst +) src[permuted index], element size es; inverse = scatter */
static void permute_copy(const qt_tensor *x, const int64_t *perm, const void *src, void *dst,
                         size_t es, bool scatter, bool accumulate) {
    int64_t os[QT_MAX_DIMS], st[QT_MAX_DIMS];
    permute_strides(x, perm, os, st);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t a = 0; a < os[0]; a++)
        for (int64_t b = 0; b < os[1]; b++)
            for (int64_t c = 0; c < os[2]; c++)
                for (int64_t d = 0; d < os[3]; d++) {
                    int64_t o = ((a * os[1] + b) * os[2] + c) * os[3] + d;
                    int64_t i = a * st[0] + b * st[1] + c * st[2] + d * st[3];
                    if (!scatter) {
                        memcpy((char *)dst + o * es, (const char *)src + i * es, es);
                    } else if (accumulate) {
                        ((float *)dst)[i] += ((const float *)src)[o];
                    } else {
                        memcpy((char *)dst + i * es, (const char *)src + o * es, es);
                    }
                }
}

void qt_cpu_permute_fwd(qt_ctx *ctx, qt_node *n) {
    permute_copy(n->in[0], n->ip, n->in[0]->data, n->out->data, qt_dtype_size(n->in[0]->dtype),
                 false, false);
}

void qt_cpu_permute_bwd(qt_ctx *ctx, qt_node *n) {
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, n->in[0], false, &beta);
    QT_CHECK(g->dtype == QT_F32, "permute backward needs f32 gradients");
    permute_copy(n->in[0], n->ip, n->out->grad->data, g->data, 4, true, beta != 0.0f);
}

/* ---- concat / slice ----------------------------------------------------------------------- */

/* A tensor seen as [outer, dim, inner] around one dim. */
static void around(const qt_tensor *t, int dim, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int i = 0; i < dim; i++) *outer *= t->shape[i];
    for (int i = dim + 1; i < t->ndim; i++) *inner *= t->shape[i];
}

qt_tensor *qt_concat(qt_ctx *ctx, int n, qt_tensor **xs, int dim) {
    QT_CHECK(n >= 1 && n <= QT_MAX_IN, "concat of %d tensors (1..%d)", n, QT_MAX_IN);
    QT_CHECK(dim >= 0 && dim < xs[0]->ndim, "concat: dim %d out of range", dim);
    int64_t shape[QT_MAX_DIMS];
    for (int i = 0; i < xs[0]->ndim; i++) shape[i] = xs[0]->shape[i];
    shape[dim] = 0;
    qt_node nd = {.op = QT_OP_CONCAT, .n_in = n};
    for (int k = 0; k < n; k++) {
        QT_CHECK(xs[k]->ndim == xs[0]->ndim && xs[k]->dtype == xs[0]->dtype,
                 "concat: rank/dtype of input %d differs", k);
        for (int i = 0; i < xs[0]->ndim; i++)
            QT_CHECK(i == dim || xs[k]->shape[i] == xs[0]->shape[i],
                     "concat: input %d differs in dim %d", k, i);
        shape[dim] += xs[k]->shape[dim];
        nd.in[k] = xs[k];
    }
    nd.out = qt_tensor_new(ctx, xs[0]->dtype, xs[0]->ndim, shape);
    nd.ip[0] = dim;
    qt_node_run(ctx, &nd);
    return nd.out;
}

/* Copies block [outer, len*inner] between a big tensor (dim size D, at offset off) and a part. */
static void block_copy(char *big, char *part, int64_t outer, int64_t D, int64_t off, int64_t len,
                       int64_t inner, size_t es, bool to_big, float beta) {
    for (int64_t o = 0; o < outer; o++) {
        char *bp = big + ((o * D + off) * inner) * (int64_t)es;
        char *pp = part + (o * len * inner) * (int64_t)es;
        size_t bytes = (size_t)(len * inner) * es;
        if (beta != 0.0f) { /* f32 accumulate */
            float *d = (float *)(to_big ? bp : pp);
            const float *s = (const float *)(to_big ? pp : bp);
            for (int64_t i = 0; i < len * inner; i++) d[i] += s[i];
        } else if (to_big) {
            memcpy(bp, pp, bytes);
        } else {
            memcpy(pp, bp, bytes);
        }
    }
}

void qt_cpu_concat_fwd(qt_ctx *ctx, qt_node *n) {
    int dim = (int)n->ip[0];
    int64_t outer, inner, off = 0, D = n->out->shape[dim];
    around(n->out, dim, &outer, &inner);
    size_t es = qt_dtype_size(n->out->dtype);
    for (int k = 0; k < n->n_in; k++) {
        int64_t len = n->in[k]->shape[dim];
        block_copy(n->out->data, n->in[k]->data, outer, D, off, len, inner, es, true, 0.0f);
        off += len;
    }
}

void qt_cpu_concat_bwd(qt_ctx *ctx, qt_node *n) {
    int dim = (int)n->ip[0];
    int64_t outer, inner, off = 0, D = n->out->shape[dim];
    around(n->out, dim, &outer, &inner);
    for (int k = 0; k < n->n_in; k++) {
        int64_t len = n->in[k]->shape[dim];
        if (qt_needs_grad(n->in[k])) {
            float beta;
            qt_tensor *g = qt_grad_acquire(ctx, n->in[k], false, &beta);
            QT_CHECK(g->dtype == QT_F32, "concat backward needs f32 gradients");
            block_copy(n->out->grad->data, g->data, outer, D, off, len, inner, 4, false, beta);
        }
        off += len;
    }
}

qt_tensor *qt_slice(qt_ctx *ctx, qt_tensor *x, int dim, int64_t start, int64_t len) {
    QT_CHECK(dim >= 0 && dim < x->ndim, "slice: dim %d out of range", dim);
    QT_CHECK(start >= 0 && len >= 0 && start + len <= x->shape[dim],
             "slice: [%lld, %lld) outside dim of %lld", (long long)start, (long long)(start + len),
             (long long)x->shape[dim]);
    int64_t shape[QT_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[dim] = len;
    qt_node nd = {.op = QT_OP_SLICE, .n_in = 1, .in = {x}};
    nd.out = qt_tensor_new(ctx, x->dtype, x->ndim, shape);
    nd.ip[0] = dim;
    nd.ip[1] = start;
    qt_node_run(ctx, &nd);
    return nd.out;
}

void qt_split(qt_ctx *ctx, qt_tensor *x, int dim, int n, const int64_t *sizes, qt_tensor **out) {
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
        out[k] = qt_slice(ctx, x, dim, off, sizes[k]);
        off += sizes[k];
    }
    QT_CHECK(off == x->shape[dim], "split: sizes add to %lld, dim is %lld", (long long)off,
             (long long)x->shape[dim]);
}

void qt_cpu_slice_fwd(qt_ctx *ctx, qt_node *n) {
    int dim = (int)n->ip[0];
    int64_t outer, inner;
    around(n->in[0], dim, &outer, &inner);
    block_copy(n->in[0]->data, n->out->data, outer, n->in[0]->shape[dim], n->ip[1],
               n->out->shape[dim], inner, qt_dtype_size(n->out->dtype), false, 0.0f);
}

void qt_cpu_slice_bwd(qt_ctx *ctx, qt_node *n) {
    int dim = (int)n->ip[0];
    int64_t outer, inner;
    around(n->in[0], dim, &outer, &inner);
    float beta;
    /* only part of the input's gradient is written: ask for a zeroed buffer, then add */
    qt_tensor *g = qt_grad_acquire(ctx, n->in[0], true, &beta);
    QT_CHECK(g->dtype == QT_F32, "slice backward needs f32 gradients");
    block_copy(g->data, n->out->grad->data, outer, n->in[0]->shape[dim], n->ip[1],
               n->out->shape[dim], inner, 4, true, 1.0f);
}
