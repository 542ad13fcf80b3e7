/* test_quant_safetensors.c - the safetensors reader / writer and the bitsandbytes layout on top
 * of it: round trips (dtypes, 0-d and empty tensors, metadata, escaped names), the writer's
 * layout rules, every malformed-file error with its message, files on disk, Python float
 * repr, and writing / reading an NF4 weight (nested and plain) with its error cases. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qt_test.h"
#include "quant/nf4.h"
#include "quant/nf4_bnb.h"
#include "quant/safetensors.h"

static uint8_t *make(const char *json, const void *data, size_t dlen, size_t *len) {
    size_t jl = strlen(json);
    uint8_t *b = malloc(8 + jl + dlen + 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)jl >> (8 * i));
    memcpy(b + 8, json, jl);
    if (dlen) memcpy(b + 8 + jl, data, dlen);
    *len = 8 + jl + dlen;
    return b;
}

/* expects a parse failure whose message contains `want` */
static void bad(const char *json, size_t dlen, const char *want) {
    static const uint8_t zeros[64] = {0};
    size_t len;
    uint8_t *b = make(json, zeros, dlen, &len);
    qt_st_file f;
    char err[400] = "";
    int rc = qt_st_load_buffer(&f, b, len, err, sizeof err);
    QT_EXPECT(rc == QT_Q_EFORMAT && strstr(err, want), "malformed %s: rc %d, message '%s'", json,
              rc, err);
    free(b);
}

static void test_roundtrip(void) {
    float f32[6] = {1, 2, 3, 4, 5, 6};
    uint16_t bf[3] = {0x3f80, 0x4000, 0xc040};
    uint8_t u8[5] = {1, 2, 3, 4, 5};
    int32_t i32[2] = {-7, 1 << 30};
    float scalar = 3.25f;
    qt_st_entry e[6] = {
        {"w.f32", QT_ST_F32, 2, {2, 3}, f32},
        {"b.bf16", QT_ST_BF16, 1, {3}, bf},
        {"codes", QT_ST_U8, 2, {5, 1}, u8},
        {"idx", QT_ST_I32, 1, {2}, i32},
        {"scalar", QT_ST_F32, 0, {0}, &scalar},
        {"empty \"q\" \\ \xc3\xa9", QT_ST_F32, 1, {0}, NULL},
    };
    qt_st_kv meta[2] = {{"format", "pt"}, {"note", "a \"quoted\"\nline"}};
    uint8_t *buf;
    size_t len;
    char err[300];
    QT_EXPECT(qt_st_serialize(e, 6, meta, 2, &buf, &len, err, sizeof err) == 0, "serialize %s",
              err);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | buf[i];
    QT_EXPECT((8 + hl) % 8 == 0, "data section 8-byte aligned");
    /* layout: dtype descending (F32 > I32 > BF16 > U8), then name */
    const char *h = (const char *)buf + 8;
    const char *p_scalar = strstr(h, "\"scalar\""), *p_w = strstr(h, "\"w.f32\""),
               *p_idx = strstr(h, "\"idx\""), *p_b = strstr(h, "\"b.bf16\""),
               *p_c = strstr(h, "\"codes\"");
    QT_EXPECT(p_scalar && p_w && p_idx && p_b && p_c && strstr(h, "\"empty") < p_scalar &&
                  p_scalar < p_w && p_w < p_idx && p_idx < p_b && p_b < p_c,
              "tensor order in the header: %.*s", (int)hl, h);
    QT_EXPECT(!strncmp(h, "{\"__metadata__\":{\"format\":\"pt\",", 31), "metadata first");
    qt_st_file f;
    QT_EXPECT(qt_st_load_buffer(&f, buf, len, err, sizeof err) == 0, "load: %s", err);
    QT_EXPECT(f.ntensors == 6 && f.nmeta == 2, "counts");
    for (int i = 0; i < 6; i++) {
        const qt_st_tensor *t = qt_st_find(&f, e[i].name);
        QT_EXPECT(t && t->dtype == e[i].dtype && t->ndim == e[i].ndim, "tensor %s", e[i].name);
        if (!t) continue;
        size_t nb = (size_t)qt_st_dtype_size(t->dtype) * (size_t)qt_st_numel(t);
        QT_EXPECT(nb == t->end - t->begin && (!nb || !memcmp(t->data, e[i].data, nb)),
                  "bytes of %s", e[i].name);
        for (int d = 0; d < t->ndim; d++) QT_EXPECT(t->shape[d] == e[i].shape[d], "shape");
    }
    QT_EXPECT(qt_st_numel(qt_st_find(&f, "scalar")) == 1, "0-d tensor has one element");
    QT_EXPECT(!strcmp(qt_st_meta_get(&f, "note"), "a \"quoted\"\nline"), "metadata escapes");
    QT_EXPECT(qt_st_find(&f, "nope") == NULL && qt_st_meta_get(&f, "nope") == NULL, "absent");
    /* re-serializing what was read gives the same bytes */
    qt_st_entry e2[6];
    for (int i = 0; i < 6; i++) {
        const qt_st_tensor *t = &f.tensors[i];
        e2[i] = (qt_st_entry){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(e2[i].shape, t->shape, sizeof t->shape);
    }
    uint8_t *buf2;
    size_t len2;
    qt_st_serialize(e2, 6, f.meta, f.nmeta, &buf2, &len2, err, sizeof err);
    QT_EXPECT(len2 == len && !memcmp(buf, buf2, len), "re-serialize is identical");
    free(buf2);
    qt_st_free(&f);
    free(buf);
    /* writer argument errors */
    qt_st_entry dup[2] = {{"a", QT_ST_U8, 1, {1}, u8}, {"a", QT_ST_U8, 1, {1}, u8}};
    QT_EXPECT(qt_st_serialize(dup, 2, NULL, 0, &buf, &len, err, sizeof err) == QT_Q_EARG &&
                  strstr(err, "twice"),
              "duplicate names refused");
    qt_st_entry md = {"__metadata__", QT_ST_U8, 1, {1}, u8};
    QT_EXPECT(qt_st_serialize(&md, 1, NULL, 0, &buf, &len, err, sizeof err) == QT_Q_EARG,
              "reserved name refused");
    /* no tensors, no metadata */
    QT_EXPECT(qt_st_serialize(NULL, 0, NULL, 0, &buf, &len, err, sizeof err) == 0 && len == 16,
              "empty file is 8 + 8 bytes");
    QT_EXPECT(qt_st_load_buffer(&f, buf, len, err, sizeof err) == 0 && f.ntensors == 0, "empty");
    qt_st_free(&f);
    free(buf);
}

static void test_malformed(void) {
    qt_st_file f;
    char err[400];
    uint8_t tiny[5] = {1, 2, 3, 4, 5};
    QT_EXPECT(qt_st_load_buffer(&f, tiny, 5, err, sizeof err) == QT_Q_EFORMAT &&
                  strstr(err, "truncated"),
              "5 bytes: %s", err);
    uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, '{', '}'};
    QT_EXPECT(qt_st_load_buffer(&f, big, 16, err, sizeof err) == QT_Q_EFORMAT &&
                  strstr(err, "100 MB"),
              "huge header: %s", err);
    uint8_t shorth[12] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '"', 'a', '"'};
    QT_EXPECT(qt_st_load_buffer(&f, shorth, 12, err, sizeof err) == QT_Q_EFORMAT &&
                  strstr(err, "truncated: header says 100"),
              "short header: %s", err);
    bad("[1,2]", 0, "not a JSON object");
    bad("{\"a\" {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "expected ':'");
    bad("{\"a\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "truncated");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}",
        8, "overlaps");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12, "after the last");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
        8, "appears twice");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, "lacks");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "negative");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
        "unknown key");
    bad("{\"__metadata__\":{\"k\":1}}", 0, "must be strings");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "expected ','");
    bad("{\"a\":{\"dtype\":\"F32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "trailing");
    bad("{\"a\\q\":{}}", 0, "bad escape");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
        "expected an integer");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, "truncated");
    QT_EXPECT(qt_st_load_file(&f, "/nonexistent/dir/x.safetensors", err, sizeof err) == QT_Q_EIO &&
                  strstr(err, "/nonexistent/dir/x.safetensors"),
              "missing file names its path: %s", err);
}

static void test_file(void) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/qt_test_st_%ld_%ld.safetensors", (long)time(NULL),
             (long)clock());
    float v[4] = {1, -2, 3, -4};
    qt_st_entry e = {"v", QT_ST_F32, 1, {4}, v};
    char err[300];
    QT_EXPECT(qt_st_save_file(path, &e, 1, NULL, 0, err, sizeof err) == 0, "save: %s", err);
    qt_st_file f;
    QT_EXPECT(qt_st_load_file(&f, path, err, sizeof err) == 0, "load: %s", err);
    const qt_st_tensor *t = qt_st_find(&f, "v");
    QT_EXPECT(t && !memcmp(t->data, v, 16), "file round trip");
    qt_st_free(&f);
    /* a truncated copy on disk */
    FILE *fp = fopen(path, "r+b");
    if (fp) {
        uint8_t b[256];
        size_t n = fread(b, 1, sizeof b, fp);
        fclose(fp);
        fp = fopen(path, "wb");
        if (fp) {
            fwrite(b, 1, n - 3, fp);
            fclose(fp);
        }
    }
    QT_EXPECT(qt_st_load_file(&f, path, err, sizeof err) == QT_Q_EFORMAT && strstr(err, path) &&
                  strstr(err, "truncated"),
              "truncated file: %s", err);
    remove(path);
}

static void test_py_repr(void) {
    struct {
        double v;
        const char *s;
    } c[] = {{0.05496788024902344, "0.05496788024902344"},
             {1.53125, "1.53125"},
             {2.4267578125, "2.4267578125"},
             {0.0, "0.0"},
             {-0.0, "-0.0"},
             {1e-05, "1e-05"},
             {0.0001, "0.0001"},
             {1.5e-07, "1.5e-07"},
             {123.0, "123.0"},
             {1e16, "1e+16"},
             {1234567890123456.0, "1234567890123456.0"},
             {0.1, "0.1"},
             {(double)0.1f, "0.10000000149011612"},
             {-2.5, "-2.5"}};
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        char b[64];
        qt_py_float_repr(c[i].v, b, sizeof b);
        QT_EXPECT(!strcmp(b, c[i].s), "repr(%.17g) = %s, want %s", c[i].v, b, c[i].s);
    }
}

static void test_bnb_layout(void) {
    int64_t shape[2] = {32, 96};
    float x[32 * 96];
    for (int i = 0; i < 32 * 96; i++) x[i] = (float)((i * 7919) % 201 - 100) / 3000.0f;
    for (int nested = 1; nested >= 0; nested--) {
        qt_nf4_tensor t, r;
        qt_nf4_tensor_quantize(&t, x, QT_NF4_F32, 2, shape, 64, nested);
        qt_nf4_bnb_pack p;
        QT_EXPECT(qt_nf4_bnb_pack_init(&p, &t, "model.layers.0.mlp.up_proj") == 0, "pack");
        QT_EXPECT(p.nentries == (nested ? 6 : 4), "entries");
        QT_EXPECT(!strcmp(p.names[3], "model.layers.0.mlp.up_proj.weight.quant_state."
                                      "bitsandbytes__nf4"),
                  "key name %s", p.names[3]);
        static const char *const head =
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", "
            "\"shape\": [32, 96], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
            "\"nested_offset\": ";
        if (nested)
            QT_EXPECT(!strncmp(p.json, head, strlen(head)), "quant_state JSON: %s", p.json);
        else
            QT_EXPECT(!strcmp(p.json, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": "
                                      "\"float32\", \"shape\": [32, 96]}"),
                      "plain JSON: %s", p.json);
        uint8_t *buf;
        size_t len;
        char err[300];
        qt_st_kv meta = {"format", "pt"};
        QT_EXPECT(qt_st_serialize(p.entries, p.nentries, &meta, 1, &buf, &len, err, sizeof err) ==
                      0,
                  "serialize");
        qt_st_file f;
        QT_EXPECT(qt_st_load_buffer(&f, buf, len, err, sizeof err) == 0, "load");
        QT_EXPECT(qt_nf4_bnb_read(&r, &f, "model.layers.0.mlp.up_proj", err, sizeof err) == 0,
                  "read: %s", err);
        QT_EXPECT(r.nested == nested && r.numel == t.numel && r.offset == t.offset &&
                      !memcmp(r.data, t.data, (size_t)(t.numel + 1) / 2) && r.dtype == t.dtype,
                  "read back");
        float a[32 * 96], b[32 * 96];
        qt_nf4_tensor_dequantize_f32(&t, a);
        qt_nf4_tensor_dequantize_f32(&r, b);
        QT_EXPECT(!memcmp(a, b, sizeof a), "same dequantization");
        qt_nf4_tensor_free(&r);
        QT_EXPECT(qt_nf4_bnb_read(&r, &f, "model.layers.1", err, sizeof err) == QT_Q_ENOTFOUND,
                  "absent prefix");
        qt_st_free(&f);
        free(buf);
        /* a missing piece, a wrong dtype, an fp4 state */
        if (nested) {
            qt_st_serialize(p.entries, 5, NULL, 0, &buf, &len, err, sizeof err); /* no map */
            qt_st_load_buffer(&f, buf, len, err, sizeof err);
            QT_EXPECT(qt_nf4_bnb_read(&r, &f, "model.layers.0.mlp.up_proj", err, sizeof err) ==
                              QT_Q_ENOTFOUND &&
                          strstr(err, "nested_quant_map"),
                      "missing nested_quant_map: %s", err);
            qt_st_free(&f);
            free(buf);
            qt_st_entry e[6];
            memcpy(e, p.entries, sizeof e);
            e[1].dtype = QT_ST_I8;
            qt_st_serialize(e, 6, NULL, 0, &buf, &len, err, sizeof err);
            qt_st_load_buffer(&f, buf, len, err, sizeof err);
            QT_EXPECT(qt_nf4_bnb_read(&r, &f, "model.layers.0.mlp.up_proj", err, sizeof err) ==
                              QT_Q_EFORMAT &&
                          strstr(err, "absmax"),
                      "wrong absmax dtype: %s", err);
            qt_st_free(&f);
            free(buf);
            char fp4name[QT_BNB_NAME_MAX];
            snprintf(fp4name, sizeof fp4name, "m.weight.quant_state.bitsandbytes__fp4");
            qt_st_entry e4 = {fp4name, QT_ST_U8, 1, {2}, "{}"};
            qt_st_serialize(&e4, 1, NULL, 0, &buf, &len, err, sizeof err);
            qt_st_load_buffer(&f, buf, len, err, sizeof err);
            QT_EXPECT(qt_nf4_bnb_read(&r, &f, "m", err, sizeof err) == QT_Q_EFORMAT &&
                          strstr(err, "FP4"),
                      "fp4: %s", err);
            qt_st_free(&f);
            free(buf);
            const char *badjs = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": "
                                "\"float32\", \"shape\": [32, 96], \"extra\": 1}";
            snprintf(fp4name, sizeof fp4name, "m.weight.quant_state.bitsandbytes__nf4");
            qt_st_entry ej = {fp4name, QT_ST_U8, 1, {(int64_t)strlen(badjs)}, badjs};
            qt_st_serialize(&ej, 1, NULL, 0, &buf, &len, err, sizeof err);
            qt_st_load_buffer(&f, buf, len, err, sizeof err);
            QT_EXPECT(qt_nf4_bnb_read(&r, &f, "m", err, sizeof err) == QT_Q_EFORMAT &&
                          strstr(err, "unknown quant_state key"),
                      "unknown key: %s", err);
            qt_st_free(&f);
            free(buf);
        }
        qt_nf4_tensor_free(&r);
        qt_nf4_tensor_free(&t);
    }
}

int main(void) {
    test_roundtrip();
    test_malformed();
    test_file();
    test_py_repr();
    test_bnb_layout();
    return qt_test_finish("quant_safetensors");
}
