/* test_quant_bnb.c - NF4 + double quantization against real bitsandbytes output
 * (tests/fixtures/bnb/, made by tools/make_bnb_fixtures.py with bitsandbytes' CUDA kernels).
 * Required identical: the packed 4-bit codes, the fp32 block absmax, the 8-bit absmax codes,
 * the second-level absmax (given bitsandbytes' offset), the recovered absmax, the dequantized
 * weights (in their dtype), the quant_state JSON, the dynamic map, the 8-bit codes of every
 * midpoint of the map, and a Linear4bit state_dict file byte for byte. The offset (torch's CUDA
 * mean) may differ from ours by one ulp (DESIGN.md, "QLoRA numerics"). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qt_test.h"
#include "quant/dynamic_map.h"
#include "quant/half.h"
#include "quant/nf4.h"
#include "quant/nf4_bnb.h"
#include "quant/safetensors.h"

#define FIX "tests/fixtures/bnb/"

static const qt_st_tensor *get(const qt_st_file *f, const char *c, const char *what) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", c, what);
    const qt_st_tensor *t = qt_st_find(f, name);
    QT_EXPECT(t != NULL, "fixture tensor %s missing", name);
    return t;
}

/* float from possibly unaligned fixture bytes */
static float fget(const qt_st_tensor *t, int64_t i) {
    float v;
    memcpy(&v, t->data + 4 * i, 4);
    return v;
}

static int64_t count_diff(const uint8_t *a, const uint8_t *b, size_t n) {
    int64_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

static int ulp_dist(float a, float b) {
    int32_t x = (int32_t)qt_f32_bits(a), y = (int32_t)qt_f32_bits(b);
    if (x < 0) x = INT32_MIN - x;
    if (y < 0) y = INT32_MIN - y;
    int64_t d = (int64_t)x - y;
    return (int)(d < 0 ? -d : d);
}

static void check_case(const qt_st_file *f, const char *c) {
    const qt_st_tensor *in = get(f, c, "input"), *codes = get(f, c, "codes"),
                       *am = get(f, c, "absmax_f32"), *amq = get(f, c, "absmax_q"),
                       *off = get(f, c, "offset"), *nam = get(f, c, "nested_absmax"),
                       *qmap = get(f, c, "quant_map"), *nmap = get(f, c, "nested_quant_map"),
                       *amdq = get(f, c, "absmax_dq"), *deq = get(f, c, "dequant"),
                       *qs = get(f, c, "quant_state");
    if (!in || !codes || !am || !amq || !off || !nam || !qmap || !nmap || !amdq || !deq || !qs)
        return;
    int64_t n = qt_st_numel(in);
    qt_nf4_dtype dt = in->dtype == QT_ST_BF16  ? QT_NF4_BF16
                      : in->dtype == QT_ST_F16 ? QT_NF4_F16
                                               : QT_NF4_F32;
    int bs = 0;
    for (int b = 32; b <= 4096; b *= 2) /* blocksize from the absmax count */
        if ((n + b - 1) / b == qt_st_numel(am)) bs = b;
    /* the JSON names the block size too: take it from there when counts are ambiguous */
    const char *p = strstr((const char *)qs->data, "\"blocksize\": ");
    if (p) bs = atoi(p + 13);
    QT_EXPECT(bs > 0, "%s: block size", c);

    qt_nf4_tensor t;
    int rc = qt_nf4_tensor_quantize(&t, in->data, dt, in->ndim, in->shape, bs, 1);
    QT_EXPECT(rc == 0, "%s: quantize rc %d", c, rc);
    if (rc) return;
    QT_EXPECT(qt_st_numel(codes) == (n + 1) / 2 && codes->ndim == 2 && codes->shape[1] == 1,
              "%s: codes shape", c);
    int64_t dcodes = count_diff(t.data, codes->data, (size_t)((n + 1) / 2));
    QT_EXPECT(dcodes == 0, "%s: %lld of %lld packed code bytes differ from bitsandbytes", c,
              (long long)dcodes, (long long)((n + 1) / 2));

    /* first-level absmax: recompute plainly */
    float *x = malloc((size_t)n * sizeof(float)), *amax = malloc((size_t)t.nblocks * 4);
    uint8_t *packed = malloc((size_t)(n + 1) / 2);
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        if (dt == QT_NF4_F32)
            memcpy(&x[i], in->data + 4 * i, 4);
        else {
            memcpy(&h, in->data + 2 * i, 2);
            x[i] = dt == QT_NF4_BF16 ? qt_bf16_to_f32(h) : qt_f16_to_f32(h);
        }
    }
    qt_nf4_quantize_f32(x, n, bs, packed, amax);
    int64_t dam = 0;
    for (int64_t i = 0; i < t.nblocks; i++) dam += qt_f32_bits(amax[i]) != qt_f32_bits(fget(am, i));
    QT_EXPECT(dam == 0, "%s: %lld block absmax differ", c, (long long)dam);

    /* offset: ours vs torch's CUDA mean */
    float boff = fget(off, 0);
    int od = ulp_dist(t.offset, boff);
    QT_EXPECT(od <= 1, "%s: offset %.9g vs bitsandbytes %.9g (%d ulp)", c, t.offset, boff, od);
    printf("  %s: n=%lld block=%d blocks=%lld offset %s (%d ulp)\n", c, (long long)n, bs,
           (long long)t.nblocks, od ? "differs" : "identical", od);

    /* second level with bitsandbytes' offset: identical bytes required */
    uint8_t *q8 = malloc((size_t)t.nblocks);
    float *n2 = malloc((size_t)t.nested_nblocks * 4);
    qt_nf4_dq_compress(amax, t.nblocks, boff, q8, n2);
    int64_t dq = count_diff(q8, amq->data, (size_t)t.nblocks);
    QT_EXPECT(dq == 0, "%s: %lld 8-bit absmax codes differ (bitsandbytes' offset)", c,
              (long long)dq);
    int64_t dn = 0;
    for (int64_t i = 0; i < t.nested_nblocks; i++)
        dn += qt_f32_bits(n2[i]) != qt_f32_bits(fget(nam, i));
    QT_EXPECT(dn == 0, "%s: %lld nested absmax differ (bitsandbytes' offset)", c, (long long)dn);
    /* with our own offset: codes identical; the nested absmax max|absmax - offset| moves with
     * the offset, so by at most the offset's difference (plus its own rounding) */
    int64_t dq_own = count_diff(t.absmax_q, amq->data, (size_t)t.nblocks);
    QT_EXPECT(dq_own == 0, "%s: %lld 8-bit absmax codes differ (own offset)", c, (long long)dq_own);
    for (int64_t i = 0; i < t.nested_nblocks; i++) {
        float ref = fget(nam, i);
        double tol = fabs((double)t.offset - boff) + (nextafterf(ref, INFINITY) - ref);
        QT_EXPECT(fabs((double)t.nested_absmax[i] - ref) <= tol,
                  "%s: nested absmax %lld: %.9g vs %.9g", c, (long long)i, t.nested_absmax[i], ref);
    }

    /* maps */
    QT_EXPECT(!memcmp(qmap->data, qt_nf4_code, 64), "%s: NF4 quant_map differs", c);
    float map[256];
    qt_dynmap_default(map);
    QT_EXPECT(!memcmp(nmap->data, map, 1024), "%s: dynamic map differs", c);

    /* recovered absmax from bitsandbytes' stored state */
    float *rec = malloc((size_t)t.nblocks * 4);
    qt_nf4_dq_decompress(amq->data, (const float *)nam->data, t.nblocks, boff, rec);
    int64_t dr = 0;
    for (int64_t i = 0; i < t.nblocks; i++) dr += qt_f32_bits(rec[i]) != qt_f32_bits(fget(amdq, i));
    QT_EXPECT(dr == 0, "%s: %lld recovered absmax differ", c, (long long)dr);

    /* dequantization of bitsandbytes' state, in the weight's dtype */
    t.offset = boff;
    memcpy(t.nested_absmax, nam->data, (size_t)t.nested_nblocks * 4);
    memcpy(t.absmax_q, amq->data, (size_t)t.nblocks);
    size_t esz = dt == QT_NF4_F32 ? 4 : 2;
    uint8_t *out = malloc((size_t)n * esz);
    qt_nf4_tensor_dequantize(&t, out);
    int64_t dd = 0;
    for (int64_t i = 0; i < n; i++) dd += memcmp(out + esz * i, deq->data + esz * i, esz) != 0;
    QT_EXPECT(dd == 0, "%s: %lld dequantized values differ", c, (long long)dd);

    /* quant_state JSON, given the same offset */
    char js[QT_BNB_JSON_MAX];
    int jl = qt_nf4_bnb_quant_state_json(&t, js, sizeof js);
    QT_EXPECT(jl == (int)qt_st_numel(qs) && !memcmp(js, qs->data, (size_t)jl),
              "%s: quant_state JSON differs:\n  ours %s\n  bnb  %.*s", c, js, (int)qt_st_numel(qs),
              (const char *)qs->data);

    free(x);
    free(amax);
    free(packed);
    free(q8);
    free(n2);
    free(rec);
    free(out);
    qt_nf4_tensor_free(&t);
}

static void check_dq8(const qt_st_file *f) {
    float map[256];
    qt_dynmap_default(map);
    const char *names[2] = {"dq8", "dq8n"};
    int bss[2] = {4096, 256};
    for (int k = 0; k < 2; k++) {
        const qt_st_tensor *in = get(f, names[k], "input"), *codes = get(f, names[k], "codes"),
                           *am = get(f, names[k], "absmax");
        if (!in || !codes || !am) return;
        int64_t n = qt_st_numel(in), nb = qt_st_numel(am);
        float *x = malloc((size_t)n * 4), *a = malloc((size_t)nb * 4), *y = malloc((size_t)n * 4);
        uint8_t *q = malloc((size_t)n);
        memcpy(x, in->data, (size_t)n * 4);
        qt_dynmap_quantize_blockwise(x, n, bss[k], map, q, a);
        int64_t d = count_diff(q, codes->data, (size_t)n);
        QT_EXPECT(d == 0, "%s: %lld of %lld 8-bit codes differ", names[k], (long long)d,
                  (long long)n);
        QT_EXPECT(!memcmp(a, am->data, (size_t)nb * 4), "%s: absmax differs", names[k]);
        if (k == 1) {
            const qt_st_tensor *dq = get(f, names[k], "dequant");
            qt_dynmap_dequantize_blockwise(q, a, n, bss[k], map, y);
            QT_EXPECT(dq && !memcmp(y, dq->data, (size_t)n * 4), "dq8n: dequant differs");
        }
        free(x);
        free(a);
        free(y);
        free(q);
    }
    const qt_st_tensor *m = qt_st_find(f, "map.dynamic");
    QT_EXPECT(m && !memcmp(m->data, map, 1024), "create_dynamic_map differs");
}

static void check_linear(const qt_st_file *f) {
    char err[512];
    qt_st_file lin;
    int rc = qt_st_load_file(&lin, FIX "bnb_linear4bit.safetensors", err, sizeof err);
    QT_EXPECT(rc == 0, "load linear4bit: %s", err);
    if (rc) return;
    const qt_st_tensor *in = qt_st_find(f, "linear.input");
    QT_EXPECT(in != NULL, "linear.input missing");
    if (!in) {
        qt_st_free(&lin);
        return;
    }
    /* read bitsandbytes' file */
    qt_nf4_tensor tb;
    rc = qt_nf4_bnb_read(&tb, &lin, "proj", err, sizeof err);
    QT_EXPECT(rc == 0, "qt_nf4_bnb_read: %s", err);
    /* quantize the same weight ourselves, with bitsandbytes' offset, and write the file */
    qt_nf4_tensor t;
    rc = qt_nf4_tensor_quantize(&t, in->data, QT_NF4_BF16, 2, in->shape, 64, 1);
    QT_EXPECT(rc == 0, "quantize linear");
    if (!rc && tb.data) {
        QT_EXPECT(ulp_dist(t.offset, tb.offset) <= 1, "linear offset");
        if (t.offset != tb.offset) { /* redo the second level with bitsandbytes' offset */
            t.offset = tb.offset;
            float *amax = malloc((size_t)t.nblocks * 4);
            float *x = malloc((size_t)t.numel * 4);
            for (int64_t i = 0; i < t.numel; i++) {
                uint16_t h;
                memcpy(&h, in->data + 2 * i, 2);
                x[i] = qt_bf16_to_f32(h);
            }
            qt_nf4_quantize_f32(x, t.numel, 64, t.data, amax);
            qt_nf4_dq_compress(amax, t.nblocks, t.offset, t.absmax_q, t.nested_absmax);
            free(amax);
            free(x);
        }
        qt_nf4_bnb_pack pack;
        rc = qt_nf4_bnb_pack_init(&pack, &t, "proj");
        QT_EXPECT(rc == 0, "pack");
        qt_st_kv meta = {"format", "pt"};
        uint8_t *buf = NULL;
        size_t len = 0;
        rc = qt_st_serialize(pack.entries, pack.nentries, &meta, 1, &buf, &len, err, sizeof err);
        QT_EXPECT(rc == 0, "serialize: %s", err);
        QT_EXPECT(len == lin.len && buf && !memcmp(buf, lin.buf, len),
                  "Linear4bit file differs from bitsandbytes' (%zu vs %zu bytes)", len, lin.len);
        free(buf);
        /* bitsandbytes' file dequantizes to what ours does */
        float *a = malloc((size_t)t.numel * 4), *b = malloc((size_t)t.numel * 4);
        qt_nf4_tensor_dequantize_f32(&t, a);
        qt_nf4_tensor_dequantize_f32(&tb, b);
        QT_EXPECT(!memcmp(a, b, (size_t)t.numel * 4), "Linear4bit dequant differs");
        free(a);
        free(b);
    }
    qt_nf4_tensor_free(&t);
    qt_nf4_tensor_free(&tb);
    qt_st_free(&lin);
}

int main(void) {
    char err[512];
    qt_st_file f;
    int rc = qt_st_load_file(&f, FIX "bnb_nf4.safetensors", err, sizeof err);
    if (rc) return qt_test_skip("quant_bnb", err);
    static const char *const cases[] = {"g64x128_b64", "g64x128_b128", "g64x128_f16_b64",
                                        "t96x200_b64", "g7x143_b64",   "g128x512_b64",
                                        "g96x200_b32", "ties_f32_b64"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_case(&f, cases[i]);
    check_dq8(&f);
    check_linear(&f);
    qt_st_free(&f);
    return qt_test_finish("quant_bnb");
}
