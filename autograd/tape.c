/* tape.c - recording, the reverse walk, gradient buffers, and activation checkpointing. */
#define _POSIX_C_SOURCE 200809L
#include "tape.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static double prof_now(qt_ctx *ctx) {
    qt_ctx_sync(ctx);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* runs k on n, timing it into ctx->prof (exclusive of nested ops) when profiling */
static void run_kernel(qt_ctx *ctx, qt_kernel k, qt_node *n, int dir) {
    qt_prof *p = ctx->prof;
    qt_op op = n->op; /* a span's backward grows the tape, which may move n */
    if (!p || op >= QT_PROF_OPS) {
        k(ctx, n);
        return;
    }
    double a0 = p->accounted, t0 = prof_now(ctx);
    k(ctx, n);
    double excl = prof_now(ctx) - t0 - (p->accounted - a0);
    p->accounted += excl;
    p->sec[op][dir] += excl;
    p->calls[op][dir]++;
}

static void tape_push(qt_ctx *ctx, const qt_node *n) {
    if (ctx->tape_len == ctx->tape_cap) {
        int cap = ctx->tape_cap ? ctx->tape_cap * 2 : 256;
        qt_node *t = realloc(ctx->tape, (size_t)cap * sizeof *t);
        QT_CHECK(t, "out of host memory growing the tape to %d nodes", cap);
        ctx->tape = t;
        ctx->tape_cap = cap;
    }
    ctx->tape[ctx->tape_len++] = *n;
}

void qt_node_run(qt_ctx *ctx, qt_node *n) {
    const qt_op_def *d = qt_op_get(n->op);
    for (int i = 0; i < n->n_in; i++)
        if (n->in[i])
            QT_CHECK(n->in[i]->device == ctx->device, "%s: input %d ('%s') is on %s, context on %s",
                     d->name, i, n->in[i]->name, qt_device_name(n->in[i]->device),
                     qt_device_name(ctx->device));
    qt_kernel f = d->fwd[ctx->device];
    QT_CHECK(f, "op %s has no %s forward kernel", d->name, qt_device_name(ctx->device));
    if (!ctx->skip_values) run_kernel(ctx, f, n, 0);
    bool rg = false;
    if (qt_grad_enabled(ctx))
        for (int i = 0; i < n->n_in; i++)
            if (n->in[i] && n->in[i]->requires_grad) rg = true;
    n->out->requires_grad = rg;
    /* inside a checkpointed span's first forward requires_grad still propagates (the span
     * must know whether it needs a replay) but nothing is recorded */
    if (rg && !ctx->in_checkpoint) tape_push(ctx, n);
    /* Optimizer in backward: count the uses of trainable tensors. A span's first forward
     * counts too: its replay records the same nodes again (not counted a second time), and
     * backward passes those. */
    if (rg && ctx->grad_ready && !ctx->replaying)
        for (int i = 0; i < n->n_in; i++) {
            qt_tensor *t = n->in[i];
            if (!t || !t->persistent || !t->requires_grad) continue;
            if (t->uses_epoch != ctx->grad_epoch) t->uses_epoch = ctx->grad_epoch, t->uses = 0;
            t->uses++;
        }
}

/* A gradient of a persistent tensor while the optimizer runs in backward: from the gradient
 * arena, on the stack of live gradients, so that releasing it (qt_grad_release) can give the
 * memory back at once when it is the newest. */
static qt_tensor *grad_live_new(qt_ctx *ctx, qt_tensor *t) {
    if (ctx->n_grad_live == ctx->cap_grad_live) {
        int cap = ctx->cap_grad_live ? 2 * ctx->cap_grad_live : 64;
        qt_grad_live *l = realloc(ctx->grad_live, (size_t)cap * sizeof *l);
        QT_CHECK(l, "out of host memory growing the gradient stack to %d entries", cap);
        ctx->grad_live = l;
        ctx->cap_grad_live = cap;
    }
    qt_grad_live *e = &ctx->grad_live[ctx->n_grad_live++];
    e->t = t;
    e->dead = false;
    e->data_mark = qt_arena_get_mark(&ctx->grad_arena);
    e->meta_mark = qt_arena_get_mark(&ctx->grad_meta);
    /* the struct outlives the rewinds of ctx->meta that end each checkpointed span */
    qt_tensor *g = qt_arena_alloc(&ctx->grad_meta, sizeof *g);
    QT_CHECK(g, "host arena exhausted");
    memset(g, 0, sizeof *g);
    g->dtype = t->dtype;
    g->device = t->device;
    g->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) g->shape[i] = t->shape[i];
    snprintf(g->name, sizeof g->name, "%.40s.grad", t->name);
    g->data = qt_arena_alloc(&ctx->grad_arena, qt_nbytes(t));
    QT_CHECK(g->data, "out of %s memory allocating %zu bytes for the gradient of '%s'",
             qt_device_name(ctx->device), qt_nbytes(t), t->name);
    return g;
}

/* a persistent tensor's gradient is persistent too: it accumulates across micro-steps (with
 * the optimizer in backward it lives only until the optimizer has consumed it) */
static void grad_alloc(qt_ctx *ctx, qt_tensor *t) {
    if (t->persistent && ctx->grad_ready) {
        t->grad = grad_live_new(ctx, t);
    } else if (t->persistent) {
        char name[64];
        snprintf(name, sizeof name, "%.40s.grad", t->name);
        t->grad = qt_param_new(ctx, t->dtype, t->ndim, t->shape, false, name);
    } else {
        t->grad = qt_tensor_new_like(ctx, t);
    }
    t->grad_valid = false;
}

bool qt_grad_handover(qt_ctx *ctx, qt_tensor *t, qt_tensor *g) {
    if (!t->requires_grad || t->grad || t->persistent || !g || g->dtype != t->dtype ||
        qt_numel(g) != qt_numel(t))
        return false;
    qt_tensor *v = qt_arena_alloc(&ctx->meta, sizeof *v); /* t's shape over g's data */
    QT_CHECK(v, "host arena exhausted");
    *v = *t;
    v->data = g->data;
    v->grad = NULL;
    v->requires_grad = false, v->grad_valid = false, v->persistent = false, v->is_view = true;
    t->grad = v;
    t->grad_valid = true;
    return true;
}

qt_tensor *qt_grad_acquire(qt_ctx *ctx, qt_tensor *t, bool partial, float *beta) {
    QT_CHECK(t->requires_grad, "gradient requested for '%s', which does not require grad", t->name);
    if (!t->grad) grad_alloc(ctx, t);
    if (t->grad_valid) {
        *beta = 1.0f;
    } else {
        if (partial) qt_tensor_zero(ctx, t->grad);
        *beta = partial ? 1.0f : 0.0f;
        t->grad_valid = true;
    }
    return t->grad;
}

/* Backward has passed node n (run or skipped): n's trainable inputs have one use less to wait
 * for; a gradient whose last use this was is complete. A span's own node is not counted (its
 * inputs were not counted: it is no qt_node_run), the nodes of its replay are. */
static void uses_done(qt_ctx *ctx, const qt_node *n) {
    if (!ctx->grad_ready || n->op == QT_OP_CHECKPOINT) return;
    for (int i = 0; i < n->n_in; i++) {
        qt_tensor *t = n->in[i];
        if (!t || !t->persistent || !t->requires_grad || t->uses_epoch != ctx->grad_epoch ||
            t->uses <= 0)
            continue;
        if (--t->uses == 0 && t->grad && t->grad_valid)
            ctx->grad_ready(ctx, t, ctx->grad_ready_user);
    }
}

static void backward_range(qt_ctx *ctx, int from, int to) {
    for (int i = to - 1; i >= from; i--) {
        qt_node *n = &ctx->tape[i];
        if (n->out->grad_valid) { /* else no gradient reached this node */
            const qt_op_def *d = qt_op_get(n->op);
            qt_kernel b = d->bwd[ctx->device];
            QT_CHECK(b, "op %s has no %s backward kernel", d->name, qt_device_name(ctx->device));
            run_kernel(ctx, b, n, 1);
            /* a span's replay may have grown the tape: n may have moved */
            n = &ctx->tape[i];
        }
        uses_done(ctx, n);
    }
}

void qt_grad_ready_begin(qt_ctx *ctx, qt_grad_ready_fn fn, void *user) {
    QT_CHECK(fn && !ctx->grad_ready, "qt_grad_ready_begin: %s",
             fn ? "a hook is already installed" : "no hook");
    QT_CHECK(ctx->n_grad_live == 0, "qt_grad_ready_begin: gradients of an earlier step live");
    ctx->grad_ready = fn;
    ctx->grad_ready_user = user;
    ctx->grad_epoch++; /* every use count of an earlier step reads as 0 */
    /* after a step that spread over several chunks: one chunk of the high water */
    qt_arena_reset(&ctx->grad_arena);
    qt_arena_reset(&ctx->grad_meta);
}

void qt_grad_release(qt_ctx *ctx, qt_tensor *t) {
    t->grad_valid = false;
    int k = ctx->n_grad_live - 1;
    while (k >= 0 && (ctx->grad_live[k].t != t || ctx->grad_live[k].dead)) k--;
    if (k < 0) return; /* a persistent buffer (made before the hook): it stays */
    ctx->grad_live[k].dead = true;
    t->grad = NULL;
    /* rewind past every dead entry on top: nothing live points above the new top */
    while (ctx->n_grad_live > 0 && ctx->grad_live[ctx->n_grad_live - 1].dead) {
        qt_grad_live *e = &ctx->grad_live[--ctx->n_grad_live];
        qt_arena_rewind(&ctx->grad_arena, e->data_mark);
        qt_arena_rewind(&ctx->grad_meta, e->meta_mark);
    }
}

void qt_grad_ready_end(qt_ctx *ctx) {
    /* what was not released is dropped: no tensor may keep a pointer into the arena */
    for (int k = 0; k < ctx->n_grad_live; k++)
        if (!ctx->grad_live[k].dead) {
            ctx->grad_live[k].t->grad = NULL;
            ctx->grad_live[k].t->grad_valid = false;
        }
    ctx->n_grad_live = 0;
    ctx->grad_ready = NULL;
    ctx->grad_ready_user = NULL;
    qt_arena_reset(&ctx->grad_arena);
    qt_arena_reset(&ctx->grad_meta);
}

void qt_backward_from(qt_ctx *ctx, qt_tensor *out, const qt_tensor *gout) {
    QT_CHECK(out->requires_grad, "backward from '%s', which does not require grad", out->name);
    QT_CHECK(qt_same_shape(out, gout) && out->dtype == gout->dtype, "gradient shape/dtype");
    float beta;
    qt_tensor *g = qt_grad_acquire(ctx, out, false, &beta);
    qt_k_axpby(ctx, g, gout, beta);
    backward_range(ctx, 0, ctx->tape_len);
}

void qt_backward(qt_ctx *ctx, qt_tensor *loss) {
    QT_CHECK(qt_numel(loss) == 1 && loss->dtype == QT_F32, "loss must be one f32 value");
    qt_tensor *one = qt_tensor_new_like(ctx, loss);
    float v = 1.0f;
    qt_tensor_upload(ctx, one, &v);
    qt_backward_from(ctx, loss, one);
}

/* ---- activation checkpointing ---------------------------------------------------------- */

typedef struct {
    qt_span_fn fn;
    void *user;
    uint64_t rng_offset; /* the dropout stream position at the span's start */
} span_info;

qt_tensor *qt_checkpoint(qt_ctx *ctx, qt_span_fn fn, int n_in, qt_tensor **inputs, void *user) {
    QT_CHECK(n_in >= 1 && n_in <= QT_MAX_IN, "checkpoint with %d inputs", n_in);
    if (!qt_grad_enabled(ctx)) return fn(ctx, inputs, user);
    QT_CHECK(ctx->in_checkpoint == 0, "nested checkpointed spans are not supported");
    span_info *si = qt_arena_alloc(&ctx->meta, sizeof *si);
    QT_CHECK(si, "host arena exhausted");
    si->fn = fn;
    si->user = user;
    si->rng_offset = ctx->rng_offset;

    /* The span's activations go to the step arena after a mark and are rewound once its
     * output is copied out, so the untaped forward costs no memory of its own. The output is
     * made before the mark when it is shaped like the first input (a residual block); any
     * other shape is known only afterwards: then it goes above the span and down below it
     * (and the guess stays unused until the step ends). */
    qt_tensor *out = qt_tensor_new_like(ctx, inputs[0]); /* the guess */
    qt_arena_mark md = qt_arena_get_mark(&ctx->data);
    ctx->in_checkpoint++;
    qt_tensor *tmp = fn(ctx, inputs, user);
    ctx->in_checkpoint--;
    if (qt_same_shape(tmp, out) && tmp->dtype == out->dtype) {
        qt_k_axpby(ctx, out, tmp, 0.0f);
        qt_arena_rewind(&ctx->data, md);
    } else {
        qt_tensor *hold = qt_tensor_new_like(ctx, tmp); /* above everything the span made */
        qt_k_axpby(ctx, hold, tmp, 0.0f);
        qt_arena_rewind(&ctx->data, md);
        out = qt_tensor_new_like(ctx, tmp); /* at the mark, below hold: no overlap */
        qt_k_axpby(ctx, out, hold, 0.0f);
    }
    out->requires_grad = tmp->requires_grad;
    qt_arena_reset(&ctx->span_meta);
    if (out->requires_grad) {
        qt_node n = {.op = QT_OP_CHECKPOINT, .n_in = n_in, .out = out, .extra = si};
        for (int i = 0; i < n_in; i++) n.in[i] = inputs[i];
        tape_push(ctx, &n);
    }
    return out;
}

/* The backward of a span: replay its forward on a sub-tape over aliases of its inputs, whose
 * gradient buffers are the inputs' own, back-propagate, then drop everything the replay made. */
void qt_checkpoint_bwd(qt_ctx *ctx, qt_node *node) {
    /* the replay appends to the tape, which may move it: work on a copy of the node */
    qt_node copy = *node, *n = &copy;
    span_info *si = n->extra;
    /* A chain of blocks (the residual stream) would otherwise pile up one input gradient per
     * block until the step ends. When the span has one input shaped like its output whose
     * gradient is born here, that gradient is made after the mark and, once the span is done,
     * moved into the output gradient's buffer (dead from then on): one buffer serves the
     * whole chain. */
    qt_tensor *in0 = n->in[0], *gout = n->out->grad;
    bool reuse = n->n_in == 1 && in0->requires_grad && !in0->grad && !in0->persistent && gout &&
                 !gout->persistent && qt_same_shape(in0, n->out) && in0->dtype == n->out->dtype;
    qt_arena_mark mm = qt_arena_get_mark(&ctx->meta), md = qt_arena_get_mark(&ctx->data);
    /* otherwise buffers that must outlive the rewind are made before the mark */
    for (int i = 0; i < n->n_in; i++) {
        qt_tensor *in = n->in[i];
        if (in->requires_grad && !in->grad) grad_alloc(ctx, in);
    }
    if (!reuse) mm = qt_arena_get_mark(&ctx->meta), md = qt_arena_get_mark(&ctx->data);
    int tape0 = ctx->tape_len;
    qt_tensor *alias[QT_MAX_IN];
    for (int i = 0; i < n->n_in; i++) {
        alias[i] = qt_arena_alloc(&ctx->meta, sizeof(qt_tensor));
        QT_CHECK(alias[i], "host arena exhausted");
        *alias[i] = *n->in[i];
        alias[i]->persistent = false;
    }
    uint64_t rng_now = ctx->rng_offset;
    ctx->rng_offset = si->rng_offset;
    ctx->replaying++;
    qt_tensor *out = si->fn(ctx, alias, si->user);
    ctx->replaying--;
    ctx->rng_offset = rng_now;
    QT_CHECK(qt_same_shape(out, n->out), "checkpointed span replayed to a different shape");
    if (out->requires_grad) {
        /* the replayed output takes the span output's gradient as its own */
        out->grad = n->out->grad;
        out->grad_valid = true;
        backward_range(ctx, tape0, ctx->tape_len);
    }
    for (int i = 0; i < n->n_in; i++)
        if (n->in[i]->requires_grad) n->in[i]->grad_valid = alias[i]->grad_valid;
    if (reuse) {
        if (in0->grad_valid) qt_k_axpby(ctx, gout, in0->grad, 0.0f);
        in0->grad = gout;
    }
    ctx->tape_len = tape0;
    qt_arena_rewind(&ctx->meta, mm);
    qt_arena_rewind(&ctx->data, md);
}
