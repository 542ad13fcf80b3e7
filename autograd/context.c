/* context.c - context lifetime, tensor allocation, host transfers. */
#include "context.h"

#include <stdlib.h>
#include <string.h>

#include "quant/half.h"
#include "kernels.h"
#include "tape.h"

#ifdef QT_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define QT_META_CHUNK (1u << 20)
#define QT_DATA_CHUNK (64u << 20)

int qt_device_pick(const char *name, qt_device *out, qt_err *err) {
    if (name && !strcmp(name, "cpu")) {
        *out = QT_CPU;
        return QT_OK;
    }
    if (name && strcmp(name, "cuda") && strcmp(name, "gpu") && strcmp(name, "auto"))
        return qt_err_set(err, QT_ERR_ARG, "device must be auto, cpu or cuda, got '%s'", name);
    bool want_gpu = name && strcmp(name, "auto");
#ifdef QT_HAVE_CUDA
    if (qt_cuda_available()) {
        *out = QT_CUDA;
        return QT_OK;
    }
#endif
    if (want_gpu)
        return qt_err_set(err, QT_ERR_UNSUPPORTED, "device cuda: %s",
#ifdef QT_HAVE_CUDA
                          "no usable GPU was found"
#else
                          "this qtune was built without the CUDA backend (QTUNE_CUDA=OFF)"
#endif
        );
    *out = QT_CPU;
    return QT_OK;
}

qt_dtype qt_device_compute_dtype(qt_device dev) {
    return dev == QT_CUDA ? QT_BF16 : QT_F32;
}

int qt_ctx_init(qt_ctx *ctx, qt_device dev, uint64_t seed, qt_err *err) {
    memset(ctx, 0, sizeof *ctx);
    ctx->device = dev;
    ctx->rng_seed = seed;
    if (dev == QT_CUDA) {
#ifdef QT_HAVE_CUDA
        int rc = qt_cuda_ctx_create((qt_cuda_ctx **)&ctx->cuda, err);
        if (rc) return rc;
#else
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "this qtune was built without the CUDA backend (QTUNE_CUDA=OFF)");
#endif
    }
    qt_arena_init(&ctx->meta, QT_CPU, QT_META_CHUNK, NULL);
    qt_arena_init(&ctx->data, dev, QT_DATA_CHUNK, ctx->cuda);
    qt_arena_init(&ctx->span_meta, QT_CPU, QT_META_CHUNK, NULL);
    qt_arena_init(&ctx->grad_arena, dev, QT_META_CHUNK, ctx->cuda); /* grows to its high water */
    qt_arena_init(&ctx->grad_meta, QT_CPU, QT_META_CHUNK, NULL);
    return QT_OK;
}

void qt_ctx_free(qt_ctx *ctx) {
    qt_persist *p = ctx->persist;
    while (p) {
        qt_persist *n = p->next;
        qt_dev_free(p->t.device, ctx->cuda, p->t.data);
        free(p);
        p = n;
    }
    ctx->persist = NULL;
    free(ctx->tape);
    ctx->tape = NULL;
    qt_arena_free(&ctx->meta);
    qt_arena_free(&ctx->data);
    qt_arena_free(&ctx->span_meta);
    qt_arena_free(&ctx->grad_arena);
    qt_arena_free(&ctx->grad_meta);
    free(ctx->grad_live);
    ctx->grad_live = NULL;
#ifdef QT_HAVE_CUDA
    if (ctx->cuda) qt_cuda_ctx_destroy((qt_cuda_ctx *)ctx->cuda);
#endif
    ctx->cuda = NULL;
}

void qt_ctx_sync(qt_ctx *ctx) {
#ifdef QT_HAVE_CUDA
    if (ctx->device == QT_CUDA) qt_cuda_sync((qt_cuda_ctx *)ctx->cuda);
#else
    (void)ctx;
#endif
}

void qt_step_reset(qt_ctx *ctx) {
    QT_CHECK(ctx->in_checkpoint == 0, "step reset inside a checkpointed span");
    ctx->tape_len = 0;
    qt_arena_reset(&ctx->meta);
    qt_arena_reset(&ctx->data);
}

static void shape_init(qt_tensor *t, qt_dtype dt, int ndim, const int64_t *shape) {
    QT_CHECK(ndim >= 0 && ndim <= QT_MAX_DIMS, "ndim %d out of range", ndim);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        QT_CHECK(shape[i] >= 0, "negative dim %lld", (long long)shape[i]);
        t->shape[i] = shape[i];
    }
}

qt_tensor *qt_tensor_new(qt_ctx *ctx, qt_dtype dt, int ndim, const int64_t *shape) {
    /* a checkpointed span's first forward keeps its structs apart; its data is rewound */
    qt_arena *meta = ctx->in_checkpoint ? &ctx->span_meta : &ctx->meta;
    qt_arena *data = &ctx->data;
    qt_tensor *t = qt_arena_alloc(meta, sizeof *t);
    QT_CHECK(t, "host arena exhausted");
    memset(t, 0, sizeof *t);
    shape_init(t, dt, ndim, shape);
    t->device = ctx->device;
    t->data = qt_arena_alloc(data, qt_nbytes(t));
    QT_CHECK(t->data, "out of %s memory allocating %zu bytes for a step tensor",
             qt_device_name(ctx->device), qt_nbytes(t));
    return t;
}

qt_tensor *qt_tensor_new_like(qt_ctx *ctx, const qt_tensor *t) {
    return qt_tensor_new(ctx, t->dtype, t->ndim, t->shape);
}

qt_tensor *qt_tensor_view(qt_ctx *ctx, qt_tensor *t, int ndim, const int64_t *shape) {
    qt_tensor *v = qt_arena_alloc(ctx->in_checkpoint ? &ctx->span_meta : &ctx->meta, sizeof *v);
    QT_CHECK(v, "host arena exhausted");
    memset(v, 0, sizeof *v);
    shape_init(v, t->dtype, ndim, shape);
    QT_CHECK(qt_numel(v) == qt_numel(t), "view: %lld elements over %lld", (long long)qt_numel(v),
             (long long)qt_numel(t));
    v->device = t->device;
    v->data = t->data;
    v->is_view = true;
    return v;
}

qt_tensor *qt_param_new(qt_ctx *ctx, qt_dtype dt, int ndim, const int64_t *shape,
                        bool requires_grad, const char *name) {
    qt_persist *p = calloc(1, sizeof *p);
    QT_CHECK(p, "out of host memory");
    qt_tensor *t = &p->t;
    shape_init(t, dt, ndim, shape);
    t->device = ctx->device;
    t->persistent = true;
    t->requires_grad = requires_grad;
    qt_tensor_set_name(t, name);
    t->data = qt_dev_malloc(ctx->device, ctx->cuda, qt_nbytes(t));
    QT_CHECK(t->data, "out of %s memory allocating %zu bytes for '%s'", qt_device_name(ctx->device),
             qt_nbytes(t), t->name);
    p->next = ctx->persist;
    ctx->persist = p;
    ctx->persist_bytes += qt_nbytes(t);
    qt_tensor_zero(ctx, t);
    return t;
}

void qt_tensor_set_name(qt_tensor *t, const char *name) {
    if (!name) name = "";
    size_t n = strlen(name);
    if (n >= sizeof t->name) n = sizeof t->name - 1;
    memcpy(t->name, name, n);
    t->name[n] = 0;
}

void qt_tensor_zero(qt_ctx *ctx, qt_tensor *t) {
    if (t->device == QT_CPU) {
        memset(t->data, 0, qt_nbytes(t));
        return;
    }
#ifdef QT_HAVE_CUDA
    qt_cuda_memset0((qt_cuda_ctx *)ctx->cuda, t->data, qt_nbytes(t));
#endif
}

void qt_tensor_copy(qt_ctx *ctx, qt_tensor *dst, const qt_tensor *src) {
    qt_k_axpby(ctx, dst, src, 0.0f); /* beta 0: dst is not read */
}

void qt_tensor_upload(qt_ctx *ctx, qt_tensor *t, const void *host) {
    if (t->device == QT_CPU) {
        memcpy(t->data, host, qt_nbytes(t));
        return;
    }
#ifdef QT_HAVE_CUDA
    qt_cuda_copy_h2d((qt_cuda_ctx *)ctx->cuda, t->data, host, qt_nbytes(t));
#endif
}

void qt_tensor_download(qt_ctx *ctx, const qt_tensor *t, void *host) {
    if (t->device == QT_CPU) {
        memcpy(host, t->data, qt_nbytes(t));
        return;
    }
#ifdef QT_HAVE_CUDA
    qt_cuda_copy_d2h((qt_cuda_ctx *)ctx->cuda, host, t->data, qt_nbytes(t));
#endif
}

float qt_tensor_get(qt_ctx *ctx, const qt_tensor *t, int64_t i) {
    QT_CHECK(i >= 0 && i < qt_numel(t), "index %lld out of %lld", (long long)i,
             (long long)qt_numel(t));
    unsigned char buf[8];
    size_t es = qt_dtype_size(t->dtype);
    if (t->device == QT_CPU) {
        memcpy(buf, (const char *)t->data + (size_t)i * es, es);
    } else {
#ifdef QT_HAVE_CUDA
        qt_cuda_copy_d2h((qt_cuda_ctx *)ctx->cuda, buf, (const char *)t->data + (size_t)i * es, es);
#endif
    }
    switch (t->dtype) {
    case QT_F32: {
        float f;
        memcpy(&f, buf, 4);
        return f;
    }
    case QT_BF16: {
        uint16_t h;
        memcpy(&h, buf, 2);
        return qt_bf16_to_f32(h);
    }
    case QT_F16: {
        uint16_t h;
        memcpy(&h, buf, 2);
        return qt_f16_to_f32(h);
    }
    case QT_U8:
        return (float)buf[0];
    case QT_I8:
        return (float)(int8_t)buf[0];
    case QT_I32: {
        int32_t v;
        memcpy(&v, buf, 4);
        return (float)v;
    }
    default:
        break;
    }
    QT_CHECK(0, "bad dtype");
    return 0.0f;
}

void qt_no_grad_begin(qt_ctx *ctx) {
    ctx->no_grad_depth++;
}

void qt_no_grad_end(qt_ctx *ctx) {
    QT_CHECK(ctx->no_grad_depth > 0, "unbalanced qt_no_grad_end");
    ctx->no_grad_depth--;
}

bool qt_grad_enabled(const qt_ctx *ctx) {
    return ctx->no_grad_depth == 0;
}

void qt_grad_zero(qt_tensor *t) {
    t->grad_valid = false;
}
