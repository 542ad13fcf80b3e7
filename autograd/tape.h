/* tape.h - the tape: nodes recorded by ops run with grad enabled, walked in reverse by
 * qt_backward. A node is also how every op's kernels receive their arguments (inputs, output,
 * saved tensors, integer and float parameters), on the tape or not, on any device.
 * Gradient rule: the first contribution to a tensor's gradient sets it, later ones add
 * (kernels take a beta of 0 or 1). Tensors that do not require grad never get a buffer. */
#ifndef QT_TAPE_H
#define QT_TAPE_H

#include "context.h"
#include "ops.h"

#define QT_MAX_IN    8
#define QT_MAX_SAVED 4
#define QT_MAX_PARAM 8

typedef struct qt_node {
    qt_op op;
    int n_in;
    qt_tensor *in[QT_MAX_IN];
    qt_tensor *out;
    qt_tensor *saved[QT_MAX_SAVED]; /* step tensors kept for backward (e.g. rstd, lse) */
    int64_t ip[QT_MAX_PARAM];       /* integer parameters, meaning per op */
    float fp[QT_MAX_PARAM];         /* float parameters, meaning per op */
    void *extra;                    /* op-specific side data in the meta arena */
} qt_node;

/* Runs the node's forward on its device and, when grad is enabled and an input requires
 * grad, marks the output as requiring grad and appends the node to the tape. */
void qt_node_run(qt_ctx *ctx, qt_node *n);

/* Seeds d(loss)/d(loss) = 1 (loss has one element) and walks the tape in reverse. */
void qt_backward(qt_ctx *ctx, qt_tensor *loss);
/* Same, with an explicit gradient for out (same shape): used by tests and by chunked losses. */
void qt_backward_from(qt_ctx *ctx, qt_tensor *out, const qt_tensor *gout);

/* For backward kernels: the gradient buffer of t, allocated on first use, and *beta = 0 when
 * this is the first contribution (overwrite) or 1 (accumulate). A kernel that writes only part
 * of the gradient asks with partial = true: a fresh buffer is then zero-filled and beta = 1. */
qt_tensor *qt_grad_acquire(qt_ctx *ctx, qt_tensor *t, bool partial, float *beta);
/* Hands g's buffer to t as its gradient, without a copy, when that is safe: t needs a
 * gradient, has no gradient buffer yet (not a checkpointed span's input, whose buffer is
 * pre-made) and is not persistent, and g belongs to an op output that nothing reads any more
 * (the caller's promise: the backward of an op whose output is read by nothing else).
 * Returns false when it did not (then the caller copies). Same numel as t. */
bool qt_grad_handover(qt_ctx *ctx, qt_tensor *t, qt_tensor *g);

/* ---- optimizer in backward ----------------------------------------------------------------
 * Between qt_grad_ready_begin and qt_grad_ready_end (one step: a forward and its backward):
 * - every use of a persistent, requires-grad tensor (a trainable parameter) as an input of an
 *   op run with grad is counted, including the ops of a checkpointed span's first forward
 *   (its replay records them again and is not counted twice);
 * - backward, having passed a node (run or skipped because no gradient reached it), takes one
 *   use off each such input; when the count reaches 0 and the tensor has a gradient, that
 *   gradient is complete and fn(ctx, t, user) is called, in the middle of the backward. fn
 *   consumes the gradient (an optimizer update) and calls qt_grad_release;
 * - gradients of persistent tensors that have no buffer yet come from ctx->grad_arena instead
 *   of persistent allocations (the full set of gradients never exists at once), freed last in,
 *   first out as they are released.
 * Uses that backward never passes leave their tensor's count above 0: a tensor passed as a
 * checkpointed span's input (the replay sees an alias), a span that no gradient reached. The
 * caller handles those after the backward, then ends the hook, which drops every gradient not
 * released (t->grad = NULL). Not for gradient accumulation: each step starts empty. */
void qt_grad_ready_begin(qt_ctx *ctx, qt_grad_ready_fn fn, void *user);
/* t's gradient has been consumed: marked empty, and when it came from the gradient arena its
 * buffer is given back (t->grad = NULL) as soon as no later gradient lives above it. */
void qt_grad_release(qt_ctx *ctx, qt_tensor *t);
void qt_grad_ready_end(qt_ctx *ctx);

/* Whether backward must produce a gradient for t. */
static inline bool qt_needs_grad(const qt_tensor *t) {
    return t && t->requires_grad;
}

/* Activation checkpointing of a span: fn(ctx, inputs, user) computes one output from inputs
 * (and parameters reached through user). In forward the span runs untaped and only its inputs
 * and output are kept; in backward it is replayed on a sub-tape, back-propagated, and its
 * activations released. fn must be deterministic given the dropout stream, which is restored
 * for the replay. */
typedef qt_tensor *(*qt_span_fn)(qt_ctx *ctx, qt_tensor **inputs, void *user);
qt_tensor *qt_checkpoint(qt_ctx *ctx, qt_span_fn fn, int n_in, qt_tensor **inputs, void *user);

#endif
