/* tiny_model.h - a tiny random llama (1 layer, hidden 32, tied embeddings) whose vocabulary
 * is the llama3 test tokenizer's (tests/fixtures/tok/llama3.json, copied in as tokenizer.json),
 * written as a Hugging Face directory: for tests that need a model and a tokenizer together. */
#ifndef QT_TINY_MODEL_H
#define QT_TINY_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "data/tokenizer.h"
#include "quant/safetensors.h"

static void tiny_tok_model(const char *mdir) {
    char p[600];
    mkdir(mdir, 0700);
    qt_tok *t;
    qt_err err = {0};
    QT_CHECK(qt_tok_load(&t, "tests/fixtures/tok/llama3.json", &err) == 0, "%s", err.msg);
    int64_t V = qt_tok_vocab_size(t), D = 32, F = 64;
    int eos = qt_tok_token_id(t, "<|end_of_text|>", 15);
    qt_tok_free(t);
    snprintf(p, sizeof p, "%s/config.json", mdir);
    FILE *f = fopen(p, "w");
    fprintf(f,
            "{\"model_type\": \"llama\", \"vocab_size\": %lld, \"hidden_size\": %lld, "
            "\"intermediate_size\": %lld, \"num_hidden_layers\": 1, "
            "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, "
            "\"rms_norm_eps\": 1e-5, \"eos_token_id\": %d, \"tie_word_embeddings\": true}\n",
            (long long)V, (long long)D, (long long)F, eos);
    fclose(f);
    const char *names[] = {"model.embed_tokens.weight",
                           "model.norm.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.mlp.up_proj.weight",
                           "model.layers.0.mlp.down_proj.weight"};
    int64_t shapes[11][2] = {{V, D},     {D, 0}, {D, 0}, {D, 0}, {D, D}, {D / 2, D},
                             {D / 2, D}, {D, D}, {F, D}, {F, D}, {D, F}};
    qt_st_entry e[11];
    float *bufs[11];
    uint64_t rs = 1;
    for (int i = 0; i < 11; i++) {
        int nd = shapes[i][1] ? 2 : 1;
        int64_t n = shapes[i][0] * (nd == 2 ? shapes[i][1] : 1);
        bufs[i] = malloc((size_t)n * 4);
        for (int64_t k = 0; k < n; k++) {
            rs = rs * 6364136223846793005ull + 1442695040888963407ull;
            bufs[i][k] = nd == 1 ? 1.0f : ((float)(rs >> 40) / 16777216.0f - 0.5f) * 0.1f;
        }
        e[i] = (qt_st_entry){.name = names[i], .dtype = QT_ST_F32, .ndim = nd, .data = bufs[i]};
        e[i].shape[0] = shapes[i][0], e[i].shape[1] = shapes[i][1];
    }
    char msg[256];
    snprintf(p, sizeof p, "%s/model.safetensors", mdir);
    QT_CHECK(qt_st_save_file(p, e, 11, NULL, 0, msg, sizeof msg) == 0, "%s", msg);
    for (int i = 0; i < 11; i++) free(bufs[i]);
    snprintf(p, sizeof p, "cp tests/fixtures/tok/llama3.json %s/tokenizer.json", mdir);
    QT_CHECK(system(p) == 0, "copy tokenizer");
}

#endif
