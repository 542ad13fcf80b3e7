/* ops_attention.c - causal grouped-query attention with an optional document / padding mask:
 * the public function and the CPU reference kernels.
 * Memory is linear in T: no [T, T] matrix is ever made. The forward works one query row at a
 * time (a score row of T per thread) and saves the row's log-sum-exp; the backward recomputes
 * the probabilities from it, flash-attention-2 style, in two deterministic parallel passes.
 * Node: in = {q, k, v, doc or NULL}, saved[0] = lse [B, Hq, T] f32 (-inf for padding rows),
 * fp[0] = scale. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef struct {
    int64_t B, T, Hq, Hkv, hd;
    int64_t grp; /* query heads per kv head: query head h reads kv head h / grp */
} at_geom;

static at_geom geom_of(const qt_tensor *q, const qt_tensor *k) {
    at_geom g = {q->shape[0], q->shape[1], q->shape[2], k->shape[2], q->shape[3], 0};
    g.grp = g.Hkv ? g.Hq / g.Hkv : 0;
    return g;
}

static bool is_float(qt_dtype dt) {
    return dt == QT_F32 || dt == QT_BF16 || dt == QT_F16;
}

qt_tensor *qt_attention(qt_ctx *ctx, qt_tensor *q, qt_tensor *k, qt_tensor *v, qt_tensor *doc,
                        float scale) {
    char sq[64], sk[64], sv[64];
    QT_CHECK(q->ndim == 4 && k->ndim == 4 && v->ndim == 4,
             "attention: q, k, v must be [B, T, heads, hd] (got %s, %s, %s)",
             qt_shape_str(q, sq, sizeof sq), qt_shape_str(k, sk, sizeof sk),
             qt_shape_str(v, sv, sizeof sv));
    QT_CHECK(qt_same_shape(k, v), "attention: k %s and v %s differ", qt_shape_str(k, sk, sizeof sk),
             qt_shape_str(v, sv, sizeof sv));
    QT_CHECK(q->shape[0] == k->shape[0] && q->shape[1] == k->shape[1] && q->shape[3] == k->shape[3],
             "attention: q %s and k %s differ in B, T or hd", qt_shape_str(q, sq, sizeof sq),
             qt_shape_str(k, sk, sizeof sk));
    QT_CHECK(k->shape[2] > 0 && q->shape[2] % k->shape[2] == 0,
             "attention: %lld query heads are not a multiple of %lld kv heads",
             (long long)q->shape[2], (long long)k->shape[2]);
    QT_CHECK(is_float(q->dtype) && q->dtype == k->dtype && q->dtype == v->dtype,
             "attention: q, k, v must share one float dtype");
    if (doc)
        QT_CHECK(doc->dtype == QT_I32 && doc->ndim == 2 && doc->shape[0] == q->shape[0] &&
                     doc->shape[1] == q->shape[1],
                 "attention: doc must be i32 [%lld, %lld]", (long long)q->shape[0],
                 (long long)q->shape[1]);
    QT_CHECK(isfinite(scale), "attention: scale must be finite");

    qt_node n = {.op = QT_OP_ATTENTION, .n_in = 4, .in = {q, k, v, doc}};
    n.out = qt_tensor_new_like(ctx, q);
    n.saved[0] =
        qt_tensor_new(ctx, QT_F32, 3, (const int64_t[]){q->shape[0], q->shape[2], q->shape[1]});
    n.fp[0] = scale;
    qt_node_run(ctx, &n);
    return n.out;
}

/* ---- CPU kernels ---------------------------------------------------------------------- */

static inline double dot(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t d = 0; d < n; d++) s += (double)a[d] * b[d];
    return s;
}

/* first contribution overwrites (the buffer may hold anything), later ones add */
static inline void put(float *g, double val, float beta) {
    *g = beta != 0.0f ? *g + (float)val : (float)val;
}

static void *scratch(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    QT_CHECK(p, "out of host memory (%zu bytes of attention scratch)", bytes);
    return p;
}

void qt_cpu_attention_fwd(qt_ctx *ctx, qt_node *n) {
    at_geom g = geom_of(n->in[0], n->in[1]);
    const float *q = qt_f32(n->in[0]), *k = qt_f32(n->in[1]), *v = qt_f32(n->in[2]);
    const int32_t *doc = n->in[3] ? qt_i32(n->in[3]) : NULL; /* [B, T] */
    float *o = qt_f32(n->out), *lse = qt_f32(n->saved[0]);   /* [B, T, Hq, hd], [B, Hq, T] */
    const double scale = n->fp[0];
    const int64_t T = g.T, hd = g.hd, rows = g.B * g.Hq * g.T;

#pragma omp parallel
    {
        double *s = scratch((size_t)T * sizeof *s);      /* [T] scores of one query row */
        double *acc = scratch((size_t)hd * sizeof *acc); /* [hd] */
        /* rows differ in cost (causal): dynamic chunks balance them; every row is computed by
         * one thread in a fixed order, so the result does not depend on the schedule */
#pragma omp for schedule(dynamic, 8)
        for (int64_t r = 0; r < rows; r++) { /* r = (b, h, i), the lse layout */
            int64_t b = r / (g.Hq * T), h = (r / T) % g.Hq, i = r % T, kh = h / g.grp;
            const float *qi = q + ((b * T + i) * g.Hq + h) * hd;
            float *oi = o + ((b * T + i) * g.Hq + h) * hd;
            const int32_t *db = doc ? doc + b * T : NULL;
            if (db && db[i] < 0) { /* padding: sees nothing, outputs zeros */
                memset(oi, 0, (size_t)hd * sizeof *oi);
                lse[r] = -INFINITY;
                continue;
            }
            double m = -INFINITY;
            for (int64_t j = 0; j <= i; j++) {
                if (db && db[j] != db[i]) continue;
                s[j] = scale * dot(qi, k + ((b * T + j) * g.Hkv + kh) * hd, hd);
                if (s[j] > m) m = s[j];
            }
            double l = 0;
            for (int64_t d = 0; d < hd; d++) acc[d] = 0;
            for (int64_t j = 0; j <= i; j++) {
                if (db && db[j] != db[i]) continue;
                double p = exp(s[j] - m);
                const float *vj = v + ((b * T + j) * g.Hkv + kh) * hd;
                l += p;
                for (int64_t d = 0; d < hd; d++) acc[d] += p * vj[d];
            }
            /* l >= 1: the row's maximum contributes exp(0) */
            for (int64_t d = 0; d < hd; d++) oi[d] = (float)(acc[d] / l);
            lse[r] = (float)(m + log(l));
        }
        free(s);
        free(acc);
    }
}

/* With P_ij = exp(scale q_i·k_j - lse_i), dP_ij = dO_i·v_j, D_i = dO_i·O_i and
 * dS_ij = P_ij (dP_ij - D_i):  dQ_i = scale Σ_j dS_ij k_j,  dK_j = scale Σ_i dS_ij q_i,
 * dV_j = Σ_i P_ij dO_i. Pass 1 owns query rows (D and dQ), pass 2 owns key rows (dK, dV,
 * summing the group's query heads and then i in a fixed order): no two threads ever add into
 * one element, so the result is deterministic. */
void qt_cpu_attention_bwd(qt_ctx *ctx, qt_node *n) {
    at_geom g = geom_of(n->in[0], n->in[1]);
    const float *q = qt_f32(n->in[0]), *k = qt_f32(n->in[1]), *v = qt_f32(n->in[2]);
    const int32_t *doc = n->in[3] ? qt_i32(n->in[3]) : NULL;     /* [B, T] */
    const float *o = qt_f32(n->out), *go = qt_f32(n->out->grad); /* [B, T, Hq, hd] */
    const float *lse = qt_f32(n->saved[0]);                      /* [B, Hq, T] */
    const double scale = n->fp[0];
    const int64_t T = g.T, hd = g.hd, rows = g.B * g.Hq * g.T, krows = g.B * g.Hkv * g.T;
    bool need_q = qt_needs_grad(n->in[0]), need_k = qt_needs_grad(n->in[1]),
         need_v = qt_needs_grad(n->in[2]);
    /* acquired in this order so that a tensor passed twice (q == k, ...) sets, then adds */
    float bq = 0, bk = 0, bv = 0;
    float *gq = need_q ? qt_f32(qt_grad_acquire(ctx, n->in[0], false, &bq)) : NULL;
    float *gk = need_k ? qt_f32(qt_grad_acquire(ctx, n->in[1], false, &bk)) : NULL;
    float *gv = need_v ? qt_f32(qt_grad_acquire(ctx, n->in[2], false, &bv)) : NULL;
    double *D = scratch((size_t)rows * sizeof *D); /* [B, Hq, T] */

    /* pass 1: D_i, and dQ_i */
#pragma omp parallel
    {
        double *acc = scratch((size_t)hd * sizeof *acc);
#pragma omp for schedule(dynamic, 8)
        for (int64_t r = 0; r < rows; r++) {
            int64_t b = r / (g.Hq * T), h = (r / T) % g.Hq, i = r % T, kh = h / g.grp;
            int64_t at = ((b * T + i) * g.Hq + h) * hd;
            const int32_t *db = doc ? doc + b * T : NULL;
            bool pad = db && db[i] < 0;
            D[r] = pad ? 0 : dot(go + at, o + at, hd);
            if (!need_q) continue;
            for (int64_t d = 0; d < hd; d++) acc[d] = 0;
            if (!pad) {
                for (int64_t j = 0; j <= i; j++) {
                    if (db && db[j] != db[i]) continue;
                    const float *kj = k + ((b * T + j) * g.Hkv + kh) * hd;
                    const float *vj = v + ((b * T + j) * g.Hkv + kh) * hd;
                    double p = exp(scale * dot(q + at, kj, hd) - lse[r]);
                    double ds = p * (dot(go + at, vj, hd) - D[r]);
                    for (int64_t d = 0; d < hd; d++) acc[d] += ds * kj[d];
                }
            }
            for (int64_t d = 0; d < hd; d++) put(gq + at + d, scale * acc[d], bq);
        }
        free(acc);
    }

    /* pass 2: dK_j and dV_j, one kv row per iteration */
    if (need_k || need_v) {
#pragma omp parallel
        {
            double *ak = scratch((size_t)hd * sizeof *ak), *av = scratch((size_t)hd * sizeof *av);
#pragma omp for schedule(dynamic, 8)
            for (int64_t r = 0; r < krows; r++) { /* r = (b, kv head, j) */
                int64_t b = r / (g.Hkv * T), kh = (r / T) % g.Hkv, j = r % T;
                int64_t at = ((b * T + j) * g.Hkv + kh) * hd;
                const int32_t *db = doc ? doc + b * T : NULL;
                for (int64_t d = 0; d < hd; d++) ak[d] = av[d] = 0;
                /* a padding key is seen by no query, not even its own row */
                if (!(db && db[j] < 0)) {
                    for (int64_t h = kh * g.grp; h < (kh + 1) * g.grp; h++) {
                        for (int64_t i = j; i < T; i++) {
                            if (db && db[i] != db[j]) continue;
                            int64_t qa = ((b * T + i) * g.Hq + h) * hd, qr = (b * g.Hq + h) * T + i;
                            double p = exp(scale * dot(q + qa, k + at, hd) - lse[qr]);
                            for (int64_t d = 0; d < hd; d++) av[d] += p * go[qa + d];
                            if (!need_k) continue;
                            double ds = p * (dot(go + qa, v + at, hd) - D[qr]);
                            for (int64_t d = 0; d < hd; d++) ak[d] += ds * q[qa + d];
                        }
                    }
                }
                if (need_k)
                    for (int64_t d = 0; d < hd; d++) put(gk + at + d, scale * ak[d], bk);
                if (need_v)
                    for (int64_t d = 0; d < hd; d++) put(gv + at + d, av[d], bv);
            }
            free(ak);
            free(av);
        }
    }
    free(D);
}
