/* test_gguf.c - GGUF v3: what the writer writes the reader reads back (metadata of every
 * value type, arrays, strings, tensors of F32/F16/Q8_0/Q4_0/Q4_K with their bytes), tensor data
 * aligned, and damaged files refused with a message: bad magic, unsupported version, a file
 * cut short, a tensor pointing past the end. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <unistd.h>

#include "qt_test.h"
#include "quant/gguf_blocks.h"
#include "train/gguf.h"

static char path[256], bad[256];

static void write_sample(void) {
    qt_gguf_writer *w = qt_gguf_writer_new(64);
    qt_gguf_set_str(w, "general.architecture", "llama");
    qt_gguf_set_u32(w, "llama.block_count", 2);
    qt_gguf_set_i32(w, "tokenizer.ggml.padding_token_id", -1);
    qt_gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    qt_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
    const char *toks[3] = {"<s>", "hello", "▁world"};
    qt_gguf_set_str_arr(w, "tokenizer.ggml.tokens", toks, 3);
    float scores[3] = {0, -1.5f, -2.5f};
    qt_gguf_set_arr(w, "tokenizer.ggml.scores", QT_GV_F32, scores, 3);
    float a[64 * 3];
    for (int i = 0; i < 64 * 3; i++) a[i] = (float)(i % 17) * 0.25f - 2.0f;
    qt_err err = {0};
    uint64_t d2[2] = {64, 3};
    QT_EXPECT(qt_gguf_add_tensor(w, "f32", QT_GGML_F32, 2, d2, a, sizeof a, &err) == 0, "add f32");
    uint8_t q8[3 * 2 * 34], q4[3 * 2 * 18], qk[256 / 256 * 144];
    qt_gguf_quantize_row(QT_GGUF_Q8_0, a, q8, 64 * 3);
    qt_gguf_quantize_row(QT_GGUF_Q4_0, a, q4, 64 * 3);
    float big[256];
    for (int i = 0; i < 256; i++) big[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    qt_gguf_quantize_row(QT_GGUF_Q4_K, big, qk, 256);
    QT_EXPECT(qt_gguf_add_tensor(w, "q8", QT_GGML_Q8_0, 2, d2, q8, sizeof q8, &err) == 0, "q8");
    QT_EXPECT(qt_gguf_add_tensor(w, "q4", QT_GGML_Q4_0, 2, d2, q4, sizeof q4, &err) == 0, "q4");
    uint64_t d1 = 256;
    QT_EXPECT(qt_gguf_add_tensor(w, "qk", QT_GGML_Q4_K, 1, &d1, qk, sizeof qk, &err) == 0, "qk");
    QT_EXPECT(qt_gguf_add_tensor(w, "bad", QT_GGML_Q4_0, 1, (uint64_t[]){33}, q4, 18, &err) != 0,
              "a tensor that is not whole blocks is refused");
    QT_EXPECT(qt_gguf_write(w, path, &err) == 0, "write: %s", err.msg);
    qt_gguf_writer_free(w);
}

static void test_round_trip(void) {
    qt_gguf_file f;
    qt_err err = {0};
    QT_EXPECT(qt_gguf_open(&f, path, &err) == 0, "open: %s", err.msg);
    if (err.msg[0]) return;
    QT_EXPECT(f.version == 3 && f.alignment == 64 && f.ntensors == 4, "header");
    char buf[64];
    const qt_gguf_kv *kv = qt_gguf_kv_find(&f, "general.architecture");
    QT_EXPECT(kv && !strcmp(kv->str, "llama"), "architecture");
    kv = qt_gguf_kv_find(&f, "llama.block_count");
    QT_EXPECT(kv && kv->type == QT_GV_U32 && kv->v.u == 2, "u32");
    kv = qt_gguf_kv_find(&f, "tokenizer.ggml.padding_token_id");
    QT_EXPECT(kv && kv->type == QT_GV_I32 && kv->v.i == -1, "i32");
    kv = qt_gguf_kv_find(&f, "llama.attention.layer_norm_rms_epsilon");
    QT_EXPECT(kv && kv->v.f == (double)1e-5f, "f32 %s", kv ? qt_gguf_kv_str(kv, buf, 64) : "");
    kv = qt_gguf_kv_find(&f, "tokenizer.ggml.add_bos_token");
    QT_EXPECT(kv && kv->type == QT_GV_BOOL && kv->v.u == 1, "bool");
    kv = qt_gguf_kv_find(&f, "tokenizer.ggml.tokens");
    QT_EXPECT(kv && kv->type == QT_GV_ARRAY && kv->arr_type == QT_GV_STRING && kv->n == 3,
              "string array");
    if (kv) { /* third string: "▁world" */
        const uint8_t *p = kv->arr;
        for (int i = 0; i < 2; i++) {
            uint64_t n = 0;
            memcpy(&n, p, 8);
            p += 8 + n;
        }
        uint64_t n;
        memcpy(&n, p, 8);
        QT_EXPECT(n == strlen("▁world") && !memcmp(p + 8, "▁world", n), "string element");
    }
    kv = qt_gguf_kv_find(&f, "tokenizer.ggml.scores");
    float s2;
    if (kv) memcpy(&s2, kv->arr + 8, 4);
    QT_EXPECT(kv && kv->n == 3 && s2 == -2.5f, "f32 array");
    const qt_gguf_tensor *t = qt_gguf_tensor_find(&f, "q4");
    QT_EXPECT(t && t->dims[0] == 64 && t->dims[1] == 3 && t->nbytes == 3 * 2 * 18, "q4 info");
    for (uint64_t i = 0; i < f.ntensors; i++)
        QT_EXPECT((size_t)(f.tensors[i].data - (const uint8_t *)f.map) % 64 == 0, "aligned %s",
                  f.tensors[i].name);
    t = qt_gguf_tensor_find(&f, "q8");
    float y[192], a[192];
    for (int i = 0; i < 192; i++) a[i] = (float)(i % 17) * 0.25f - 2.0f;
    qt_gguf_dequantize_row(QT_GGUF_Q8_0, t->data, y, 192);
    double e = 0;
    for (int i = 0; i < 192; i++) e = fmax(e, fabs(y[i] - a[i]));
    QT_EXPECT(e < 0.02, "q8 data survives (max err %g)", e);
    t = qt_gguf_tensor_find(&f, "f32");
    QT_EXPECT(t && !memcmp(t->data, a, sizeof a), "f32 data identical");
    qt_gguf_close(&f);
}

static void expect_bad(const char *want, const char *what) {
    qt_gguf_file f;
    qt_err err = {0};
    int rc = qt_gguf_open(&f, bad, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, want) && strstr(err.msg, bad), "%s: '%s'", what, err.msg);
    if (rc == 0) qt_gguf_close(&f);
}

static void test_damage(void) {
    FILE *in = fopen(path, "rb");
    static uint8_t b[1 << 16];
    size_t n = fread(b, 1, sizeof b, in);
    fclose(in);
    FILE *o = fopen(bad, "wb");
    fwrite(b, 1, n / 2, o);
    fclose(o);
    expect_bad("outside the file", "cut in the data");
    o = fopen(bad, "wb");
    fwrite(b, 1, 100, o);
    fclose(o);
    expect_bad("truncated", "cut in the metadata");
    b[0] = 'X';
    o = fopen(bad, "wb");
    fwrite(b, 1, n, o);
    fclose(o);
    expect_bad("not a GGUF", "bad magic");
    b[0] = 'G', b[4] = 7;
    o = fopen(bad, "wb");
    fwrite(b, 1, n, o);
    fclose(o);
    expect_bad("version 7", "future version");
}

int main(void) {
    snprintf(path, sizeof path, "/tmp/qt_gguf.%ld.gguf", (long)getpid());
    snprintf(bad, sizeof bad, "/tmp/qt_gguf_bad.%ld.gguf", (long)getpid());
    write_sample();
    test_round_trip();
    test_damage();
    unlink(path);
    unlink(bad);
    return qt_test_finish("gguf");
}
