/* generate.c - see generate.h. */
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "data/datasets.h"

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    float p;
    int32_t id;
} cand;

static int by_p_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->p, y = ((const cand *)b)->p;
    return x < y ? 1 : x > y ? -1 : ((const cand *)a)->id - ((const cand *)b)->id;
}

/* greedy, or temperature + nucleus sampling over the logits of one position */
static int32_t pick(const float *logits, int64_t V, const qt_gen_opts *o, uint64_t *rng, cand *c) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (o->temperature <= 0) return (int32_t)best;
    double z = 0;
    for (int64_t i = 0; i < V; i++) {
        c[i].p = (float)exp((logits[i] - logits[best]) / o->temperature);
        c[i].id = (int32_t)i;
        z += c[i].p;
    }
    qsort(c, (size_t)V, sizeof *c, by_p_desc);
    double keep = 0, top_p = o->top_p > 0 && o->top_p < 1 ? o->top_p : 1.0;
    int64_t k = 0;
    while (k < V && (k == 0 || keep < top_p * z)) keep += c[k++].p;
    double u = (double)(mix(rng) >> 11) / 9007199254740992.0 * keep, acc = 0;
    for (int64_t i = 0; i < k; i++)
        if ((acc += c[i].p) > u) return c[i].id;
    return c[k - 1].id;
}

static char *template_prompt(const char *prompt, int chat) {
    size_t n = strlen(prompt) + 256;
    char *s = malloc(n);
    if (!s) return NULL;
    switch (chat) {
    case QT_TEMPLATE_LLAMA3:
        snprintf(s, n,
                 "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n",
                 prompt);
        break;
    case QT_TEMPLATE_CHATML:
        snprintf(s, n, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", prompt);
        break;
    case QT_TEMPLATE_LLAMA2:
        snprintf(s, n, "<s>[INST] %s [/INST]", prompt);
        break;
    default:
        snprintf(s, n, "%s", prompt);
        break;
    }
    return s;
}

int qt_generate(qt_ctx *ctx, qt_llama *m, const qt_tok *tok, const qt_gen_opts *o, char **out,
                int32_t **ids_out, int *n_out, qt_err *err) {
    *out = NULL;
    char *text = template_prompt(o->prompt, o->chat);
    if (!text) return qt_err_set(err, QT_ERR_MEMORY, "out of memory");
    qt_tok_ids ids = {0};
    /* chat templates carry their own BOS; plain prompts get the tokenizer's */
    int rc = qt_tok_encode(tok, text, strlen(text), o->chat < 0, &ids, err);
    free(text);
    if (rc) return rc;
    int64_t V = m->cfg.vocab, start = ids.n;
    int32_t stop[3] = {(int32_t)m->cfg.eos_id, -1, -1};
    if (o->chat == QT_TEMPLATE_LLAMA3) stop[1] = qt_tok_token_id(tok, "<|eot_id|>", 10);
    if (o->chat == QT_TEMPLATE_CHATML) stop[1] = qt_tok_token_id(tok, "<|im_end|>", 10);
    if (o->chat == QT_TEMPLATE_LLAMA2) stop[1] = qt_tok_token_id(tok, "</s>", 4);
    cand *c = malloc((size_t)V * sizeof *c);
    float *logits = malloc((size_t)V * sizeof *logits);
    uint64_t rng = o->seed;
    size_t shown = 0;
    for (int step = 0; step < o->max_new_tokens && c && logits; step++) {
        int64_t T = ids.n;
        qt_step_reset(ctx);
        qt_no_grad_begin(ctx);
        qt_tensor *it = qt_tensor_new(ctx, QT_I32, 2, (int64_t[]){1, T});
        qt_tensor_upload(ctx, it, ids.ids);
        qt_tensor *h = qt_llama_hidden(ctx, m, it, NULL, NULL); /* [1, T, D] */
        qt_tensor *last = qt_slice(ctx, h, 1, T - 1, 1);        /* [1, 1, D] */
        qt_tensor *lg =
            qt_matmul(ctx, last, qt_to_dtype(ctx, m->lm_head, last->dtype), false, true);
        lg = qt_to_dtype(ctx, lg, QT_F32); /* [1, 1, V] */
        qt_tensor_download(ctx, lg, logits);
        qt_no_grad_end(ctx);
        int32_t next = pick(logits, V, o, &rng, c);
        if (next == stop[0] || next == stop[1]) break;
        if (ids.n == ids.cap) {
            ids.cap = ids.cap ? 2 * ids.cap : 64;
            ids.ids = realloc(ids.ids, (size_t)ids.cap * sizeof *ids.ids);
        }
        ids.ids[ids.n++] = next;
        if (o->stream) { /* print what the new token completes (multi-byte characters whole) */
            char *s = NULL;
            size_t len = 0;
            qt_err e2;
            if (qt_tok_decode(tok, ids.ids + start, ids.n - start, true, &s, &len, &e2) == 0 &&
                len > shown && !strstr(s + shown, "\xef\xbf\xbd")) {
                fwrite(s + shown, 1, len - shown, o->stream);
                fflush(o->stream);
                shown = len;
            }
            free(s);
        }
    }
    size_t len = 0;
    rc = qt_tok_decode(tok, ids.ids + start, ids.n - start, true, out, &len, err);
    if (!rc && o->stream && len > shown) fwrite(*out + shown, 1, len - shown, o->stream);
    if (ids_out) {
        *ids_out = malloc((size_t)(ids.n - start + 1) * sizeof **ids_out);
        memcpy(*ids_out, ids.ids + start, (size_t)(ids.n - start) * sizeof **ids_out);
    }
    if (n_out) *n_out = (int)(ids.n - start);
    free(c);
    free(logits);
    qt_tok_ids_free(&ids);
    return rc;
}
