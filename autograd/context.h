/* context.h - qt_ctx: everything an op needs that is not a tensor. The device, the per-step
 * arenas, the tape, grad mode, the dropout RNG stream, the list of persistent allocations and
 * (with CUDA) the stream/handles. There are no globals: two contexts never share state. */
#ifndef QT_CONTEXT_H
#define QT_CONTEXT_H

#include "arena.h"
#include "tensor.h"

struct qt_node;
struct qt_ctx;

/* Optimizer in backward (tape.h, qt_grad_ready_begin): called when a trainable tensor's
 * gradient is complete, in the middle of the backward. */
typedef void (*qt_grad_ready_fn)(struct qt_ctx *ctx, qt_tensor *t, void *user);

/* One gradient of a persistent tensor taken from the gradient arena while the hook is on:
 * freed in LIFO order, lazily (an entry released under a live one waits for it). */
typedef struct {
    qt_tensor *t;            /* whose gradient (t->grad) this is, until released */
    qt_arena_mark data_mark; /* grad_arena before the buffer */
    qt_arena_mark meta_mark; /* grad_meta before its struct */
    bool dead;               /* released: t->grad no longer points here */
} qt_grad_live;

typedef struct qt_persist {
    struct qt_persist *next;
    qt_tensor t;
} qt_persist;

/* Per-op wall time, when a caller asks for it (bench_train --profile): the device is
 * synchronised around every kernel, so it slows the step; times are exclusive of nested ops
 * (a checkpoint's replay counts under the replayed ops). [op][0] forward, [op][1] backward. */
#define QT_PROF_OPS 64
typedef struct qt_prof {
    double sec[QT_PROF_OPS][2];
    int64_t calls[QT_PROF_OPS][2];
    double accounted; /* exclusive time recorded so far */
} qt_prof;

typedef struct qt_ctx {
    qt_device device;
    void *cuda;           /* qt_cuda_ctx* when device == QT_CUDA */
    qt_arena meta;        /* host: tensor structs and op side data of this step */
    qt_arena data;        /* device: activation and gradient data of this step */
    qt_arena span_meta;   /* tensor structs of a checkpointed span's untaped forward, emptied
                           * once its output is out (its data is rewound in `data` itself) */
    struct qt_node *tape; /* recorded nodes, in execution order */
    int tape_len, tape_cap;
    int no_grad_depth; /* > 0: nothing is recorded */
    int in_checkpoint; /* > 0: inside a checkpointed span's first (untaped) forward */
    int replaying;     /* > 0: inside a checkpointed span's replay (its backward) */
    int skip_values;   /* > 0: ops are recorded but compute no output: the caller knows that
                        * neither the forward nor any backward reads those values */
    uint64_t rng_seed; /* dropout stream: Philox keyed by seed, one offset per call */
    uint64_t rng_offset;
    qt_prof *prof;       /* NULL: no profiling (the default) */
    qt_persist *persist; /* persistent tensors, freed with the context */
    size_t persist_bytes;
    /* Optimizer in backward (tape.h): while grad_ready is set, uses of trainable tensors are
     * counted (epoch grad_epoch) and their gradients live in grad_arena (data) / grad_meta
     * (structs) rather than in persistent allocations, stacked in grad_live. */
    qt_grad_ready_fn grad_ready;
    void *grad_ready_user;
    uint32_t grad_epoch;
    qt_arena grad_arena;
    qt_arena grad_meta;
    qt_grad_live *grad_live;
    int n_grad_live, cap_grad_live;
} qt_ctx;

/* The device a name asks for: "cpu", "cuda", or "auto" / NULL (the GPU when this build has the
 * CUDA backend and a usable GPU is present, else the CPU). Unknown names are an error. */
int qt_device_pick(const char *name, qt_device *out, qt_err *err);
/* The dtype activations and frozen weights take on dev: F32 on the CPU (the reference), BF16
 * on the GPU (fp32 accumulation inside every kernel). */
qt_dtype qt_device_compute_dtype(qt_device dev);

/* Creates a context on dev. With dev == QT_CUDA and no CUDA backend built or no GPU present,
 * returns non-zero with a message in err. */
int qt_ctx_init(qt_ctx *ctx, qt_device dev, uint64_t seed, qt_err *err);
void qt_ctx_free(qt_ctx *ctx);
/* Waits until the device has finished everything queued (no-op on the CPU). */
void qt_ctx_sync(qt_ctx *ctx);

/* Forget the tape and every step tensor (activations and their gradients). Gradients of
 * persistent tensors survive: they accumulate across micro-steps until qt_grad_zero. */
void qt_step_reset(qt_ctx *ctx);

/* Tensors that live for this step only: zero-initialised is NOT promised. */
qt_tensor *qt_tensor_new(qt_ctx *ctx, qt_dtype dt, int ndim, const int64_t *shape);
qt_tensor *qt_tensor_new_like(qt_ctx *ctx, const qt_tensor *t);
/* A step tensor over t's data with the given shape (same element count): a view (reshape, and
 * ops whose output is written into their input's buffer). */
qt_tensor *qt_tensor_view(qt_ctx *ctx, qt_tensor *t, int ndim, const int64_t *shape);
/* Persistent tensors (parameters, optimizer state): zero-filled. */
qt_tensor *qt_param_new(qt_ctx *ctx, qt_dtype dt, int ndim, const int64_t *shape,
                        bool requires_grad, const char *name);

void qt_tensor_set_name(qt_tensor *t, const char *name);
void qt_tensor_zero(qt_ctx *ctx, qt_tensor *t);
/* dst = src: same dtype and element count, on the context's device (no tape node) */
void qt_tensor_copy(qt_ctx *ctx, qt_tensor *dst, const qt_tensor *src);
/* host <-> tensor copies (bytes in the tensor's own dtype) */
void qt_tensor_upload(qt_ctx *ctx, qt_tensor *t, const void *host);
void qt_tensor_download(qt_ctx *ctx, const qt_tensor *t, void *host);
/* value of element i as float (any dtype, any device; slow: for tests and messages) */
float qt_tensor_get(qt_ctx *ctx, const qt_tensor *t, int64_t i);

/* Grad mode: a no-grad region records nothing and makes no tensor require grad. */
void qt_no_grad_begin(qt_ctx *ctx);
void qt_no_grad_end(qt_ctx *ctx);
bool qt_grad_enabled(const qt_ctx *ctx);

/* Marks a persistent tensor's gradient as empty (the next contribution sets it). */
void qt_grad_zero(qt_tensor *t);

#endif
