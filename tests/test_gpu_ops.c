/* test_gpu_ops.c - CPU-vs-CUDA parity of every op in the table (label gpu).
 *
 * For every op and every case variant of tests/op_cases.h, the case is built from one seed on
 * a CPU context and on a CUDA context (the builders upload host-generated data, so the leaves
 * are identical), run with grad on both, back-propagated from the same random output gradient,
 * and the outputs and every input gradient are compared. Sections:
 *   f32     every op's cases, f32 storage
 *   large   the elementwise ops and cast on shapes that fill several grid-stride rounds and
 *           several bias-reduction column chunks and row groups
 *   bf16    the elementwise ops, RMSNorm, RoPE and lora_add with their leaves (not the f32
 *           tables) cast to bf16 on both devices: the GPU runs the op in bf16 storage, the
 *           CPU in f32 on the bf16-rounded values (output and gradients rounded the same way)
 *   determinism  the large cases run twice on the GPU: bit-identical outputs and gradients
 *   fq      fake quantization with a bf16 input and/or output, every kind of format: bit for
 *           bit the CPU's f32 op on the same values, rounded where the GPU stores
 *   axpby   the gradient helper directly, f32/bf16, beta 0 and 1
 * The GPU's step memory is filled with NaN bytes before each case: an element no kernel
 * writes cannot pass for a stale right answer.
 * Tolerances (|gpu - cpu| <= rtol * |cpu| + atol, atol = afrac * max|cpu| of the tensor):
 *   f32 storage    rtol 1e-5, afrac 1e-6 (add/mul/scale are bit-exact; expf differs by an ulp)
 *   a cast in the case (gradients stored in bf16/f16 on the way): the case's own tolerance
 *   bf16 storage   rtol 1e-2, afrac 4e-3 (one bf16 rounding flip is 2^-8..2^-7 relative;
 *                  where terms cancel, a flip of a term is a step of the tensor's scale: cuBLASLt
 *                  rounds the product before adding C for some small shapes)
 * An op whose case needs an op without a CUDA forward/backward prints "no CUDA kernel yet" and
 * is counted as skipped, not failed (the CUDA issue turns that into a failure).
 * Without a CUDA build or without a GPU: prints SKIPPED and exits 77 (ctest: skipped).
 * Seeds come from QT_SEED or the clock and are printed. */
#include <stdio.h>

#include "qt_test.h"

#ifndef QT_HAVE_CUDA

int main(void) {
    return qt_test_skip("gpu_ops", "this build has no CUDA backend (QTUNE_CUDA=OFF) (no GPU)");
}

#else

#include <time.h>

#include "autograd/kernels.h"
#include "cuda/cuda_backend.h"
#include "op_cases.h"
#include "quant/half.h"

enum { MODE_F32, MODE_BF16 };

#define TAPE_TRACE_CAP 4096

typedef struct {
    qt_ctx cpu, gpu;
    int cases_pass, cases_fail, cases_skip;
    double worst[2]; /* largest normalised error seen, per mode */
} gpu_test;

/* ---- host views of tensors ----------------------------------------------------------------- */

static float *to_host_f32(qt_ctx *ctx, const qt_tensor *t) {
    int64_t n = qt_numel(t);
    size_t es = qt_dtype_size(t->dtype);
    unsigned char *raw = malloc((size_t)(n ? n : 1) * es);
    float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
    QT_CHECK(raw && f, "out of host memory");
    qt_tensor_download(ctx, t, raw);
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case QT_F32:
            memcpy(&f[i], raw + 4 * i, 4);
            break;
        case QT_BF16: {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            f[i] = qt_bf16_to_f32(h);
        } break;
        case QT_F16: {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            f[i] = qt_f16_to_f32(h);
        } break;
        case QT_I32: {
            int32_t v;
            memcpy(&v, raw + 4 * i, 4);
            f[i] = (float)v;
        } break;
        default:
            QT_CHECK(0, "dtype %s not compared", qt_dtype_name(t->dtype));
        }
    }
    free(raw);
    return f;
}

/* compares got (GPU) with ref (CPU); returns the normalised max error max|d| / max|ref|
 * (NaN when anything is NaN or off the tolerance: the check then fails) */
static double compare(const char *what, const float *got, const float *ref, int64_t n, double rtol,
                      double afrac, int *ok) {
    double refmax = 0, maxd = 0;
    for (int64_t i = 0; i < n; i++) refmax = fmax(refmax, fabs(ref[i]));
    double atol = afrac * refmax + 1e-30;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        int nan = isnan(got[i]) != isnan(ref[i]);
        if (!isnan(d)) maxd = fmax(maxd, d);
        if (nan || d > atol + rtol * fabs(ref[i])) {
            if (bad++ < 3)
                fprintf(stderr, "    %s[%lld]: gpu %.9g cpu %.9g (|d| %.3g, allowed %.3g)\n", what,
                        (long long)i, got[i], ref[i], d, atol + rtol * fabs(ref[i]));
        }
    }
    *ok = bad == 0;
    return refmax > 0 ? maxd / refmax : maxd;
}

/* ---- running a case on one device ------------------------------------------------------- */

typedef struct {
    op_case c;
    qt_tensor *out; /* f32 */
} case_run;

/* Fills the GPU's step arena with 0xff bytes (NaN in every float dtype), so that an output or
 * gradient element a kernel forgets to write, or a beta-0 gradient kernel that reads its old
 * buffer, shows up as NaN instead of as a stale value that may happen to be right. */
static void poison_step_arena(qt_ctx *ctx) {
    if (ctx->device != QT_CUDA) return;
    for (qt_arena_chunk *c = ctx->data.head; c; c = c->next)
        qt_cuda_fill_bytes((qt_cuda_ctx *)ctx->cuda, c->base, 0xff, c->cap);
}

/* Builds variant v on ctx and runs it forward (in bf16 mode through casts of the leaves).
 * Returns 0 when the variant does not exist. */
static int case_forward(qt_ctx *ctx, op_case_builder build, int v, uint64_t seed, int mode,
                        case_run *r) {
    qt_step_reset(ctx);
    poison_step_arena(ctx);
    ctx->rng_seed = seed;
    ctx->rng_offset = 0;
    memset(&r->c, 0, sizeof r->c);
    if (!build(ctx, v, seed, &r->c)) return 0;
    qt_tensor *in[QT_MAX_IN] = {0};
    for (int k = 0; k < r->c.n_in; k++) {
        in[k] = r->c.in[k];
        /* tables such as RoPE's frequencies stay f32 */
        if (mode == MODE_BF16 && in[k] && in[k]->dtype == QT_F32 && !r->c.keep_f32[k]) {
            in[k] = qt_cast(ctx, in[k], QT_BF16);
            /* the CPU computes in f32 on the bf16-rounded values */
            if (ctx->device == QT_CPU) in[k] = qt_cast(ctx, in[k], QT_F32);
        }
    }
    qt_tensor *out = r->c.fn(ctx, in, &r->c);
    if (mode == MODE_BF16) {
        /* the GPU's output is bf16; the CPU rounds its f32 output the same way */
        if (ctx->device == QT_CPU) out = qt_cast(ctx, out, QT_BF16);
        out = qt_cast(ctx, out, QT_F32);
    }
    QT_CHECK(out->dtype == QT_F32, "case outputs must be f32 (got %s)", qt_dtype_name(out->dtype));
    r->out = out;
    return 1;
}

static void case_backward(qt_ctx *ctx, case_run *r, const float *R) {
    if (!r->out->requires_grad) return;
    qt_tensor *g = qt_tensor_new_like(ctx, r->out);
    qt_tensor_upload(ctx, g, R);
    qt_backward_from(ctx, r->out, g);
}

/* The CPU context's tape is pre-allocated and zeroed before each case, so after the backward
 * every node ever recorded in it (also those of a checkpointed span's replay, which the
 * backward pushes and then drops) is still there to read: that is the list of ops the case
 * runs, and each must have CUDA kernels for the case to be comparable. */
static void tape_trace_reset(qt_ctx *cpu) {
    memset(cpu->tape, 0, (size_t)cpu->tape_cap * sizeof *cpu->tape);
}

/* fills missing (a "matmul, slice" list) and returns 1 when an op of the case lacks a CUDA
 * kernel; *has_cast says whether a cast is among the ops */
static int trace_missing(qt_ctx *cpu, qt_op op, char *missing, size_t n, int *has_cast) {
    bool used[QT_OP_COUNT] = {0};
    if (op < QT_OP_COUNT) used[op] = true;
    int scan = cpu->tape_cap < TAPE_TRACE_CAP ? cpu->tape_cap : TAPE_TRACE_CAP;
    if (cpu->tape_len > scan) scan = cpu->tape_len;
    for (int i = 0; i < scan; i++)
        if (cpu->tape[i].out) used[cpu->tape[i].op] = true;
    missing[0] = 0;
    *has_cast = used[QT_OP_CAST];
    int any = 0;
    for (int o = 0; o < QT_OP_COUNT; o++) {
        if (!used[o]) continue;
        const qt_op_def *d = qt_op_get((qt_op)o);
        /* a checkpointed span has no forward kernel on any device: its ops are traced */
        bool fwd_ok = o == QT_OP_CHECKPOINT || d->fwd[QT_CUDA];
        if (fwd_ok && d->bwd[QT_CUDA]) continue;
        size_t l = strlen(missing);
        snprintf(missing + l, n - l, "%s%s", any ? ", " : "", qt_op_name((qt_op)o));
        any = 1;
    }
    return any;
}

/* ---- one parity case ------------------------------------------------------------------------ */

/* Runs variant v of build on both devices and compares. Returns 0 when the variant does not
 * exist, 1 when it ran (pass or fail), 2 when it was skipped. */
static int parity_case(gpu_test *T, const char *section, const char *opname, qt_op op,
                       op_case_builder build, int v, uint64_t seed, int mode) {
    case_run rc, rg;
    tape_trace_reset(&T->cpu);
    if (!case_forward(&T->cpu, build, v, seed, mode, &rc)) return 0;
    int64_t no = qt_numel(rc.out);
    float *R = malloc((size_t)(no ? no : 1) * sizeof *R);
    uint64_t s = seed ^ 0x5eedull;
    for (int64_t i = 0; i < no; i++) R[i] = (float)(2.0 * tc_uniform(&s) - 1.0);
    case_backward(&T->cpu, &rc, R);

    char missing[256];
    int has_cast = 0;
    if (trace_missing(&T->cpu, op, missing, sizeof missing, &has_cast)) {
        printf("  %-6s %-14s [%d] %-22s no CUDA kernel yet (%s): skipped\n", section, opname, v,
               rc.c.desc, missing);
        T->cases_skip++;
        free(R);
        return 2;
    }

    QT_CHECK(case_forward(&T->gpu, build, v, seed, mode, &rg), "variant vanished on the GPU");
    QT_EXPECT(rg.out->requires_grad == rc.out->requires_grad && qt_numel(rg.out) == no,
              "%s %s[%d]: output shape/requires_grad differ", section, opname, v);
    case_backward(&T->gpu, &rg, R);

    double rtol = mode == MODE_BF16 ? 1e-2 : 1e-5, afrac = mode == MODE_BF16 ? 4e-3 : 1e-6;
    if (mode == MODE_F32 && has_cast && rc.c.tol > rtol) rtol = rc.c.tol;
    int all_ok = 1, ok;
    char what[160], line[512];
    float *gc = to_host_f32(&T->cpu, rc.out), *gg = to_host_f32(&T->gpu, rg.out);
    snprintf(what, sizeof what, "%s %s[%d] out", section, opname, v);
    double e = compare(what, gg, gc, no, rtol, afrac, &ok);
    QT_EXPECT(ok, "%s: GPU output differs from the CPU (seed %llu)", what,
              (unsigned long long)seed);
    all_ok &= ok;
    double worst = e;
    int len = snprintf(line, sizeof line, "out %.1e", e);
    free(gc);
    free(gg);
    for (int k = 0; k < rc.c.n_in; k++) {
        qt_tensor *xc = rc.c.in[k], *xg = rg.c.in[k];
        if (!xc || !xc->requires_grad) continue;
        bool vc = xc->grad && xc->grad_valid, vg = xg->grad && xg->grad_valid;
        QT_EXPECT(vc == vg, "%s %s[%d]: input %d has a gradient on %s only", section, opname, v, k,
                  vc ? "the CPU" : "the GPU");
        if (!vc || !vg) {
            all_ok &= vc == vg;
            continue;
        }
        float *a = to_host_f32(&T->cpu, xc->grad), *b = to_host_f32(&T->gpu, xg->grad);
        snprintf(what, sizeof what, "%s %s[%d] d/d in%d", section, opname, v, k);
        e = compare(what, b, a, qt_numel(xc), rtol, afrac, &ok);
        QT_EXPECT(ok, "%s: GPU gradient differs from the CPU (seed %llu)", what,
                  (unsigned long long)seed);
        all_ok &= ok;
        worst = fmax(worst, e);
        if (len < (int)sizeof line - 32)
            len += snprintf(line + len, sizeof line - len, ", d%d %.1e", k, e);
        free(a);
        free(b);
    }
    if (isnan(worst)) worst = INFINITY;
    T->worst[mode] = fmax(T->worst[mode], worst);
    printf("  %-6s %-14s [%d] %-22s %s (rtol %.0e): %s\n", section, opname, v, rc.c.desc, line,
           rtol, all_ok ? "ok" : "FAIL");
    if (all_ok)
        T->cases_pass++;
    else
        T->cases_fail++;
    free(R);
    return 1;
}

/* ---- large shapes ---------------------------------------------------------------------------- */

static qt_tensor *fn_cast_big(qt_ctx *ctx, qt_tensor **in, const op_case *c) {
    /* x -> narrow -> f32, times x: the cast's forward and backward in both directions */
    qt_tensor *h = qt_cast(ctx, in[0], (qt_dtype)c->ip[0]);
    return qt_mul(ctx, qt_cast(ctx, h, QT_F32), in[0]);
}

/* variants: add, mul, scale, bias_add, silu, swiglu, add(self), cast bf16, cast f16.
 * [3, 257, 401] = 309,171 elements: more than 8 blocks x 256 threads on each of 132 SMs, so
 * the grid-stride loops go round more than once; the bias case has 666 rows (83 per row
 * group) and 517 columns (17 column chunks, the last one partial). */
static int case_large(qt_ctx *ctx, int v, uint64_t seed, op_case *c) {
    static const char *names[] = {"add",    "mul",      "scale",     "bias_add", "silu",
                                  "swiglu", "add self", "cast bf16", "cast f16"};
    if (v >= 9) return 0;
    uint64_t s = seed;
    const int64_t *sh = TC_SHAPE(3, 257, 401);
    double lo = (v == 4 || v == 5) ? -6 : -1, hi = -lo;
    c->tol = 2e-3;
    switch (v) {
    case 3: /* bias_add */
        c->n_in = 2;
        c->in[0] = tc_uniform_leaf(ctx, &s, 3, TC_SHAPE(2, 333, 517), -1, 1, true, "x");
        c->in[1] = tc_uniform_leaf(ctx, &s, 1, TC_SHAPE(517), -1, 1, true, "b");
        c->fn = fn_bias_add;
        break;
    case 2:
    case 4:
    case 6:
    case 7:
    case 8:
        c->n_in = 1;
        c->in[0] = tc_uniform_leaf(ctx, &s, 3, sh, lo, hi, true, "x");
        c->fn = v == 2 ? fn_scale : v == 4 ? fn_silu : v == 6 ? fn_add_self : fn_cast_big;
        c->fp[0] = 0.37f;
        c->ip[0] = v == 7 ? QT_BF16 : QT_F16;
        /* the gradient passes through bf16/f16 storage: one rounding flip is allowed */
        if (v == 7) c->tol = 8e-3;
        if (v == 8) c->tol = 1e-3;
        break;
    default: /* add, mul, swiglu */
        c->n_in = 2;
        c->in[0] = tc_uniform_leaf(ctx, &s, 3, sh, lo, hi, true, "a");
        c->in[1] = tc_uniform_leaf(ctx, &s, 3, sh, lo, hi, true, "b");
        c->fn = v == 0 ? fn_add : v == 1 ? fn_mul : fn_swiglu;
        break;
    }
    for (int k = 0; k < c->n_in; k++) c->check[k] = true;
    snprintf(c->desc, sizeof c->desc, "large %s", names[v]);
    return 1;
}

static bool bf16_op(qt_op op) {
    return op == QT_OP_ADD || op == QT_OP_MUL || op == QT_OP_SCALE || op == QT_OP_BIAS_ADD ||
           op == QT_OP_SILU || op == QT_OP_SWIGLU || op == QT_OP_RMSNORM || op == QT_OP_ROPE ||
           op == QT_OP_LORA_ADD;
}

/* ---- determinism: the same case twice on the GPU, bit for bit ------------------------------ */

static int bytes_equal(qt_ctx *ctx, const qt_tensor *a, const qt_tensor *b) {
    size_t n = qt_nbytes(a);
    if (n != qt_nbytes(b)) return 0;
    unsigned char *x = malloc(n ? n : 1), *y = malloc(n ? n : 1);
    qt_tensor_download(ctx, a, x);
    qt_tensor_download(ctx, b, y);
    int eq = memcmp(x, y, n) == 0;
    free(x);
    free(y);
    return eq;
}

static void determinism(gpu_test *T, int v, uint64_t seed, int mode) {
    case_run r1, r2;
    if (!case_forward(&T->gpu, case_large, v, seed, mode, &r1)) return;
    int64_t no = qt_numel(r1.out);
    float *R = malloc((size_t)no * sizeof *R);
    uint64_t s = seed ^ 0x5eedull;
    for (int64_t i = 0; i < no; i++) R[i] = (float)(2.0 * tc_uniform(&s) - 1.0);
    case_backward(&T->gpu, &r1, R);
    /* keep the first run's output: the second run's step reset recycles its memory */
    qt_tensor *keep = qt_param_new(&T->gpu, QT_F32, r1.out->ndim, r1.out->shape, false, "keep");
    qt_k_axpby(&T->gpu, keep, r1.out, 0.0f);
    QT_CHECK(case_forward(&T->gpu, case_large, v, seed, mode, &r2), "variant vanished");
    case_backward(&T->gpu, &r2, R);
    int eq = bytes_equal(&T->gpu, keep, r2.out);
    for (int k = 0; k < r1.c.n_in; k++)
        if (r1.c.in[k]->grad && r1.c.in[k]->grad_valid)
            eq &= bytes_equal(&T->gpu, r1.c.in[k]->grad, r2.c.in[k]->grad);
    QT_EXPECT(eq, "determinism: %s (%s) differs between two identical GPU runs", r1.c.desc,
              mode == MODE_BF16 ? "bf16" : "f32");
    printf("  determ %-14s %-4s two GPU runs bit-identical: %s\n", r1.c.desc,
           mode == MODE_BF16 ? "bf16" : "f32", eq ? "ok" : "FAIL");
    free(R);
}

/* ---- axpby ---------------------------------------------------------------------------------- */

static void axpby_check(gpu_test *T, qt_dtype dt, float beta, uint64_t seed) {
    qt_ctx *ctx = &T->gpu;
    qt_step_reset(ctx);
    int64_t n = 300001;
    uint64_t s = seed;
    float *d = malloc((size_t)n * sizeof *d), *x = malloc((size_t)n * sizeof *x);
    uint16_t *dh = malloc((size_t)n * 2), *xh = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) {
        d[i] = (float)(2 * tc_uniform(&s) - 1);
        x[i] = (float)(2 * tc_uniform(&s) - 1);
        dh[i] = qt_f32_to_bf16(d[i]);
        xh[i] = qt_f32_to_bf16(x[i]);
    }
    qt_tensor *dst = qt_tensor_new(ctx, dt, 1, &n), *src = qt_tensor_new(ctx, dt, 1, &n);
    qt_tensor_upload(ctx, dst, dt == QT_F32 ? (void *)d : (void *)dh);
    qt_tensor_upload(ctx, src, dt == QT_F32 ? (void *)x : (void *)xh);
    qt_k_axpby(ctx, dst, src, beta);
    float *got = to_host_f32(ctx, dst);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float want;
        if (dt == QT_F32)
            want = beta != 0.0f ? d[i] + x[i] : x[i];
        else
            want = qt_bf16_to_f32(
                beta != 0.0f ? qt_f32_to_bf16(qt_bf16_to_f32(dh[i]) + qt_bf16_to_f32(xh[i]))
                             : xh[i]);
        if (memcmp(&want, &got[i], 4) != 0) bad++;
    }
    QT_EXPECT(bad == 0, "axpby %s beta %g: %lld of %lld elements differ", qt_dtype_name(dt),
              (double)beta, (long long)bad, (long long)n);
    printf("  axpby  %-4s beta %g n=%lld: %s\n", qt_dtype_name(dt), (double)beta, (long long)n,
           bad ? "FAIL" : "exact");
    free(got);
    free(d);
    free(x);
    free(dh);
    free(xh);
}

/* ---- fake quantization with bf16 input / output --------------------------------------------
 * The op computes in f32 from the loaded values and rounds only what it stores, so with a bf16
 * side it must equal the CPU's f32 op on the same (bf16-representable) values, rounded the same
 * way, bit for bit: forward output and x's gradient. LSQ's scale gradients are f64 sums in
 * another order (relative 1e-6). */

static void fill_dtype(qt_dtype dt, const float *src, int64_t n, float *rounded, uint16_t *h) {
    for (int64_t i = 0; i < n; i++) {
        h[i] = qt_f32_to_bf16(src[i]);
        rounded[i] = dt == QT_BF16 ? qt_bf16_to_f32(h[i]) : src[i];
    }
}

static qt_tensor *leaf_of(qt_ctx *ctx, qt_dtype dt, int ndim, const int64_t *shape, const float *f,
                          const uint16_t *h, bool grad, const char *name) {
    qt_tensor *t = qt_param_new(ctx, dt, ndim, shape, grad, name);
    qt_tensor_upload(ctx, t, dt == QT_F32 ? (const void *)f : (const void *)h);
    return t;
}

/* bitwise: a (device tensor of dtype dt) against want (f32 rounded to dt) */
static int64_t count_differing(qt_ctx *ctx, const qt_tensor *a, const float *want) {
    float *got = to_host_f32(ctx, a);
    int64_t bad = 0, n = qt_numel(a);
    for (int64_t i = 0; i < n; i++) {
        float w = a->dtype == QT_BF16 ? qt_bf16_to_f32(qt_f32_to_bf16(want[i])) : want[i];
        if (memcmp(&w, &got[i], 4) != 0) bad++;
    }
    free(got);
    return bad;
}

static void fakequant_dtypes(gpu_test *T, uint64_t seed) {
    static const struct {
        qt_fq_format f;
        qt_fq_backward bwd;
        const char *desc;
    } F[] = {
        {{.kind = QT_FQ_INT,
          .bits = 4,
          .symmetric = 1,
          .granularity = QT_FQ_PER_GROUP,
          .group = 32},
         QT_FQ_STE_CLIP,
         "int4 g32"},
        {{.kind = QT_FQ_INT, .bits = 8, .symmetric = 0, .granularity = QT_FQ_PER_TOKEN},
         QT_FQ_STE,
         "int8 per-token asym"},
        {{.kind = QT_FQ_Q4_0}, QT_FQ_STE_CLIP, "Q4_0"},
        {{.kind = QT_FQ_Q8_0}, QT_FQ_STE_CLIP, "Q8_0"},
        {{.kind = QT_FQ_Q4_K}, QT_FQ_STE_CLIP, "Q4_K"},
        {{.kind = QT_FQ_NF4, .blocksize = 64}, QT_FQ_STE_CLIP, "NF4 + DQ"},
        {{.kind = QT_FQ_INT,
          .bits = 4,
          .symmetric = 1,
          .granularity = QT_FQ_PER_CHANNEL,
          .scale_mode = QT_FQ_LEARNED},
         QT_FQ_LSQ,
         "int4 per-channel LSQ"},
        {{.kind = QT_FQ_INT,
          .bits = 3,
          .symmetric = 0,
          .granularity = QT_FQ_PER_TENSOR,
          .scale_mode = QT_FQ_LEARNED},
         QT_FQ_LSQ,
         "int3 asym LSQ+"},
    };
    static const qt_dtype D[3][2] = {{QT_BF16, QT_BF16}, {QT_F32, QT_BF16}, {QT_BF16, QT_F32}};
    int64_t shape[2] = {6, 512}, n = shape[0] * shape[1];
    float *x0 = malloc((size_t)n * 4), *xr = malloc((size_t)n * 4), *g0 = malloc((size_t)n * 4);
    float *gr = malloc((size_t)n * 4), *y = malloc((size_t)n * 4), *gx = malloc((size_t)n * 4);
    uint16_t *xh = malloc((size_t)n * 2), *gh = malloc((size_t)n * 2);
    uint8_t *mask = malloc((size_t)(n + 7) / 8);
    float s0[8], b0[8], gs[8], go[8];
    uint16_t dummy[8];
    for (size_t v = 0; v < sizeof F / sizeof F[0]; v++) {
        const qt_fq_format *f = &F[v].f;
        bool learned = f->scale_mode == QT_FQ_LEARNED;
        int64_t ns = learned ? qt_fq_num_scales(f, 2, shape) : 0;
        for (int d = 0; d < 3; d++) {
            qt_dtype xdt = D[d][0], ydt = D[d][1];
            uint64_t s = seed + v * 31 + (uint64_t)d;
            for (int64_t i = 0; i < n; i++) {
                x0[i] = (float)tc_normal(&s);
                g0[i] = (float)tc_normal(&s);
            }
            fill_dtype(xdt, x0, n, xr, xh);
            fill_dtype(ydt, g0, n, gr, gh);
            if (learned) { /* scales that clip part of each group */
                int qmin, qmax;
                qt_fq_range(f, &qmin, &qmax);
                int64_t G = n / ns;
                for (int64_t k = 0; k < ns; k++) {
                    float mx = 0, mn = 0;
                    for (int64_t i = k * G; i < (k + 1) * G; i++)
                        mx = fmaxf(mx, xr[i]), mn = fminf(mn, xr[i]);
                    s0[k] = 0.6f * (f->symmetric ? fmaxf(mx, -mn) : mx - mn) / qmax;
                    b0[k] = f->symmetric ? 0.0f : 0.8f * mn;
                }
            }
            /* reference: the CPU's f32 functions on the rounded values */
            QT_CHECK(qt_fq_forward(f, xr, 2, shape, learned ? s0 : NULL,
                                   learned && !f->symmetric ? b0 : NULL, y, mask) == 0,
                     "reference forward");
            if (F[v].bwd == QT_FQ_STE)
                memcpy(gx, gr, (size_t)n * 4);
            else if (F[v].bwd == QT_FQ_STE_CLIP)
                qt_fq_backward_ste(gr, mask, n, gx);
            else
                QT_CHECK(qt_fq_backward_lsq(f, xr, 2, shape, s0, f->symmetric ? NULL : b0, gr, gx,
                                            gs, f->symmetric ? NULL : go) == 0,
                         "reference LSQ backward");
            /* the GPU */
            qt_ctx *ctx = &T->gpu;
            qt_step_reset(ctx);
            qt_tensor *x = leaf_of(ctx, xdt, 2, shape, xr, xh, true, "x");
            qt_tensor *sc = NULL, *of = NULL;
            if (learned) {
                sc = leaf_of(ctx, QT_F32, 1, &ns, s0, dummy, true, "scale");
                if (!f->symmetric) of = leaf_of(ctx, QT_F32, 1, &ns, b0, dummy, true, "offset");
            }
            qt_tensor *out = qt_fakequant_to(ctx, x, f, sc, of, F[v].bwd, ydt);
            qt_tensor *g = qt_tensor_new_like(ctx, out);
            qt_tensor_upload(ctx, g, ydt == QT_F32 ? (void *)gr : (void *)gh);
            qt_backward_from(ctx, out, g);
            int64_t bad_y = count_differing(ctx, out, y);
            int64_t bad_g = count_differing(ctx, x->grad, gx);
            double err_s = 0;
            for (int k = 0; k < 2 && learned; k++) {
                qt_tensor *p = k ? of : sc;
                if (!p) continue;
                float *got = to_host_f32(ctx, p->grad), *want = k ? go : gs;
                for (int64_t j = 0; j < ns; j++)
                    err_s = fmax(err_s, fabs(got[j] - want[j]) / (fabs(want[j]) + 1e-30));
                free(got);
            }
            bool ok = bad_y == 0 && bad_g == 0 && err_s <= 1e-6;
            QT_EXPECT(ok,
                      "fakequant %s, x %s -> %s: %lld outputs and %lld x-gradients differ "
                      "bitwise, scale gradients %.2e relative",
                      F[v].desc, qt_dtype_name(xdt), qt_dtype_name(ydt), (long long)bad_y,
                      (long long)bad_g, err_s);
            printf("  fq     %-20s x %-4s -> %-4s: %s\n", F[v].desc, qt_dtype_name(xdt),
                   qt_dtype_name(ydt), ok ? "exact" : "FAIL");
        }
    }
    free(x0), free(xr), free(g0), free(gr), free(y), free(gx), free(xh), free(gh), free(mask);
}

/* ---- main ------------------------------------------------------------------------------------ */

static uint64_t case_seed(uint64_t seed0, int op, int v, int salt) {
    return seed0 * 1000003ull + (uint64_t)op * 101 + (uint64_t)v + (uint64_t)salt * 7919;
}

int main(void) {
    if (!qt_cuda_available()) return qt_test_skip("gpu_ops", "no CUDA device found (no GPU)");
    const char *env = getenv("QT_SEED");
    uint64_t seed0 = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);

    static gpu_test T;
    qt_err err = {0};
    QT_CHECK(qt_ctx_init(&T.cpu, QT_CPU, 1, NULL) == 0, "CPU context");
    if (qt_ctx_init(&T.gpu, QT_CUDA, 1, &err) != 0) {
        fprintf(stderr, "gpu_ops: a GPU is present but the CUDA context failed: %s\n", err.msg);
        QT_EXPECT(0, "CUDA context creation");
        qt_ctx_free(&T.cpu);
        return qt_test_finish("gpu_ops");
    }
    /* the CPU tape, pre-allocated so that trace_missing can read every node ever recorded */
    T.cpu.tape = calloc(TAPE_TRACE_CAP, sizeof *T.cpu.tape);
    QT_CHECK(T.cpu.tape, "out of host memory");
    T.cpu.tape_cap = TAPE_TRACE_CAP;

    printf("gpu_ops: %s; seed %llu (set QT_SEED to replay)\n",
           qt_cuda_device_name((qt_cuda_ctx *)T.gpu.cuda), (unsigned long long)seed0);
    int ncases = (int)(sizeof qt_op_cases / sizeof qt_op_cases[0]);

    /* f32: every op of the table, every variant */
    int ops_skipped = 0;
    for (int op = 0; op < QT_OP_COUNT; op++) {
        const char *name = qt_op_name((qt_op)op);
        int found = 0, ran = 0, skipped = 0;
        for (int e = 0; e < ncases; e++) {
            if (qt_op_cases[e].op != (qt_op)op) continue;
            found = 1;
            for (int v = 0; v < 64; v++) {
                int r = parity_case(&T, "f32", name, (qt_op)op, qt_op_cases[e].build, v,
                                    case_seed(seed0, op, v, e), MODE_F32);
                if (!r) break;
                ran += r == 1;
                skipped += r == 2;
            }
        }
        if (!found)
            printf("  f32    %-14s no test case in tests/op_cases.h (the gradcheck says so)\n",
                   name);
        if (skipped && !ran) ops_skipped++;
    }

    /* large shapes (f32) */
    for (int v = 0;; v++)
        if (!parity_case(&T, "large", "elementwise", QT_OP_COUNT, case_large, v,
                         case_seed(seed0, 1000, v, 0), MODE_F32))
            break;

    /* bf16 storage: the elementwise ops' cases and the large ones (not cast: its case casts
     * on its own) */
    for (int e = 0; e < ncases; e++) {
        qt_op op = qt_op_cases[e].op;
        if (!bf16_op(op)) continue;
        for (int v = 0; v < 64; v++)
            if (!parity_case(&T, "bf16", qt_op_name(op), op, qt_op_cases[e].build, v,
                             case_seed(seed0, op, v, 100 + e), MODE_BF16))
                break;
    }
    for (int v = 0; v < 7; v++)
        parity_case(&T, "bf16", "elementwise", QT_OP_COUNT, case_large, v,
                    case_seed(seed0, 2000, v, 0), MODE_BF16);

    /* determinism of the GPU kernels (the bias reduction in particular) */
    for (int v = 0; v < 9; v++) determinism(&T, v, case_seed(seed0, 3000, v, 0), MODE_F32);
    for (int v = 0; v < 7; v++) determinism(&T, v, case_seed(seed0, 4000, v, 0), MODE_BF16);

    /* fake quantization straight from / into bf16 */
    fakequant_dtypes(&T, seed0 + 5);

    /* the gradient helper */
    axpby_check(&T, QT_F32, 0.0f, seed0 + 1);
    axpby_check(&T, QT_F32, 1.0f, seed0 + 2);
    axpby_check(&T, QT_BF16, 0.0f, seed0 + 3);
    axpby_check(&T, QT_BF16, 1.0f, seed0 + 4);

    printf("gpu_ops: cases %d passed, %d failed, %d skipped (no CUDA kernel yet; %d ops without "
           "any); largest normalised error: f32 %.2e, bf16 %.2e\n",
           T.cases_pass, T.cases_fail, T.cases_skip, ops_skipped, T.worst[MODE_F32],
           T.worst[MODE_BF16]);
    qt_ctx_free(&T.gpu);
    qt_ctx_free(&T.cpu);
    return qt_test_finish("gpu_ops");
}

#endif
