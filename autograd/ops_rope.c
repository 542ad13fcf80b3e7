/* ops_rope.c - rotary position embedding in Hugging Face's rotate-half convention: the public
 * op, its CPU kernels, and qt_rope_inv_freq (the default and llama3 frequency tables).
 * For i < hd/2, with f = f32(pos) * inv_freq[i] (f32, as torch's rotary embedding computes it),
 * c = cos(f) * attn_scale, s = sin(f) * attn_scale:
 *   y[i] = x[i] * c - x[i + hd/2] * s,   y[i + hd/2] = x[i + hd/2] * c + x[i] * s.
 * Positions are a tensor because they restart at every packed document. */
#include <math.h>
#include <stdbool.h>

#include "kernels.h"
#include "rope.h"

static bool is_float(qt_dtype d) {
    return d == QT_F32 || d == QT_BF16 || d == QT_F16;
}

static qt_tensor *rope(qt_ctx *ctx, qt_tensor *x, qt_tensor *pos, qt_tensor *inv_freq,
                       float attn_scale, bool in_place) {
    char b0[64], b1[64], b2[64];
    QT_CHECK(x->ndim == 4 && is_float(x->dtype), "rope: x must be a float [B, T, H, hd], got %s %s",
             qt_dtype_name(x->dtype), qt_shape_str(x, b0, sizeof b0));
    int64_t hd = x->shape[3];
    QT_CHECK(hd > 0 && hd % 2 == 0, "rope: head_dim %lld must be even", (long long)hd);
    QT_CHECK(pos->dtype == QT_I32 && pos->ndim == 2 && pos->shape[0] == x->shape[0] &&
                 pos->shape[1] == x->shape[1],
             "rope: pos must be i32 [B, T] for x %s, got %s %s", qt_shape_str(x, b0, sizeof b0),
             qt_dtype_name(pos->dtype), qt_shape_str(pos, b1, sizeof b1));
    QT_CHECK(inv_freq->dtype == QT_F32 && inv_freq->ndim == 1 && inv_freq->shape[0] == hd / 2,
             "rope: inv_freq must be f32 [%lld], got %s %s", (long long)(hd / 2),
             qt_dtype_name(inv_freq->dtype), qt_shape_str(inv_freq, b2, sizeof b2));
    /* the frequencies are a fixed table: a gradient for them would silently be missing */
    QT_CHECK(!inv_freq->requires_grad, "rope: inv_freq must not require grad");
    qt_node n = {.op = QT_OP_ROPE, .n_in = 3, .in = {x, pos, inv_freq}};
    if (in_place) { /* the output is a second tensor over x's data (each pair is read first) */
        QT_CHECK(!x->persistent, "rope: '%s' is persistent: not rotated in place", x->name);
        n.out = qt_tensor_view(ctx, x, x->ndim, x->shape);
    } else {
        n.out = qt_tensor_new_like(ctx, x);
    }
    n.fp[0] = attn_scale;
    qt_node_run(ctx, &n);
    return n.out;
}

qt_tensor *qt_rope(qt_ctx *ctx, qt_tensor *x, qt_tensor *pos, qt_tensor *inv_freq,
                   float attn_scale) {
    return rope(ctx, x, pos, inv_freq, attn_scale, false);
}

qt_tensor *qt_rope_inplace(qt_ctx *ctx, qt_tensor *x, qt_tensor *pos, qt_tensor *inv_freq,
                           float attn_scale) {
    return rope(ctx, x, pos, inv_freq, attn_scale, true);
}

/* sign = +1: the rotation (forward); sign = -1: its transpose (backward, gradients) */
static void rope_apply(const float *x /* [B*T, H, hd] */, float *y /* [B*T, H, hd] */,
                       const int32_t *pos /* [B*T] */, const float *inv_freq /* [hd/2] */,
                       int64_t bt, int64_t H, int64_t hd, float scale, float sign, float beta) {
    int64_t h = hd / 2;
#pragma omp parallel for schedule(static) if (bt * H * hd > 65536)
    for (int64_t r = 0; r < bt; r++) {
        float p = (float)pos[r];
        for (int64_t i = 0; i < h; i++) {
            float f = p * inv_freq[i];
            float c = cosf(f) * scale, s = sinf(f) * scale * sign;
            for (int64_t k = 0; k < H; k++) {
                const float *xr = x + (r * H + k) * hd;
                float *yr = y + (r * H + k) * hd;
                float a = xr[i], b = xr[i + h];
                float ya = a * c - b * s, yb = b * c + a * s;
                if (beta != 0.0f) ya += yr[i], yb += yr[i + h];
                yr[i] = ya;
                yr[i + h] = yb;
            }
        }
    }
}

void qt_cpu_rope_fwd(qt_ctx *ctx, qt_node *n) {
    qt_tensor *x = n->in[0];
    rope_apply(qt_f32(x), qt_f32(n->out), qt_i32(n->in[1]), qt_f32(n->in[2]),
               x->shape[0] * x->shape[1], x->shape[2], x->shape[3], n->fp[0], 1.0f, 0.0f);
}

void qt_cpu_rope_bwd(qt_ctx *ctx, qt_node *n) {
    qt_tensor *x = n->in[0];
    if (!qt_needs_grad(x)) return;
    float beta = 0.0f;
    /* gy is dead after this op: rotated in place into x's gradient when it can be */
    qt_tensor *g =
        qt_grad_handover(ctx, x, n->out->grad) ? x->grad : qt_grad_acquire(ctx, x, false, &beta);
    rope_apply(qt_f32(n->out->grad), qt_f32(g), qt_i32(n->in[1]), qt_f32(n->in[2]),
               x->shape[0] * x->shape[1], x->shape[2], x->shape[3], n->fp[0], -1.0f, beta);
}

/* ---- frequency tables --------------------------------------------------------------------
 * Each line mirrors one torch expression on f32 tensors, with Python scalars cast to f32 as
 * torch's type promotion does. torch evaluates `scalar / tensor` as tensor.reciprocal() *
 * scalar, which is why the divisions below are written as reciprocals. */

void qt_rope_inv_freq(float *out, int head_dim, double theta, const qt_rope_scaling *sc) {
    QT_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim %d must be even", head_dim);
    QT_CHECK(theta > 0, "rope: theta %g must be positive", theta);
    int h = head_dim / 2;
    float base = (float)theta;
    /* inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)) */
    for (int k = 0; k < h; k++) {
        float e = (float)(2 * k) / (float)head_dim;
        float p = (float)pow((double)base, (double)e);
        out[k] = 1.0f / p;
    }
    if (!sc || sc->type == QT_ROPE_DEFAULT) return;
    QT_CHECK(sc->type == QT_ROPE_LLAMA3, "rope: unknown rope scaling type %d", sc->type);
    QT_CHECK(sc->factor > 0 && sc->low_freq_factor > 0 &&
                 sc->high_freq_factor > sc->low_freq_factor &&
                 sc->original_max_position_embeddings > 0,
             "rope: bad llama3 scaling (factor %g, low_freq_factor %g, high_freq_factor %g, "
             "original_max_position_embeddings %lld)",
             sc->factor, sc->low_freq_factor, sc->high_freq_factor,
             (long long)sc->original_max_position_embeddings);
    double old_d = (double)sc->original_max_position_embeddings;
    float factor = (float)sc->factor;
    float low_ff = (float)sc->low_freq_factor;
    float old = (float)old_d;
    float low_wavelen = (float)(old_d / sc->low_freq_factor);
    float high_wavelen = (float)(old_d / sc->high_freq_factor);
    float span = (float)(sc->high_freq_factor - sc->low_freq_factor);
    float two_pi = (float)6.283185307179586; /* Python's 2 * math.pi, cast to f32 */
    for (int k = 0; k < h; k++) {
        float inv = out[k];
        float wavelen = (1.0f / inv) * two_pi;
        float inv_l = wavelen > low_wavelen ? inv / factor : inv;
        float smooth = ((1.0f / wavelen) * old - low_ff) / span;
        float smoothed = (1.0f - smooth) * inv_l / factor + smooth * inv_l;
        bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        out[k] = medium ? smoothed : inv_l;
    }
}
