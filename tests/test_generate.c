/* test_generate.c - generation: greedy decoding is the argmax chain of the model's own logits,
 * sampling is reproducible from its seed and a vanishing top-p falls back to greedy, chat
 * prompts carry the template, and the CLI's exit codes. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "qt_test.h"
#include "tiny_model.h"
#include "train/checkpoint.h"
#include "train/generate.h"

int main(int argc, char **argv) {
    char dir[256], cmd[1400], qtune[1024];
    snprintf(dir, sizeof dir, "/tmp/qt_generate.%ld", (long)getpid());
    tiny_tok_model(dir);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    qt_err err = {0};
    QT_CHECK(qt_model_open(&ctx, &m, dir, base, sizeof base, &err) == 0, "%s", err.msg);
    qt_tok *t;
    snprintf(cmd, sizeof cmd, "%s/tokenizer.json", dir);
    QT_CHECK(qt_tok_load(&t, cmd, &err) == 0, "%s", err.msg);

    qt_gen_opts o = {.prompt = "The quick brown fox",
                     .chat = -1,
                     .max_new_tokens = 6,
                     .temperature = 0,
                     .top_p = 1};
    char *out;
    int32_t *ids;
    int n;
    QT_EXPECT(qt_generate(&ctx, &m, t, &o, &out, &ids, &n, &err) == 0, "greedy: %s", err.msg);
    /* the argmax chain, computed here from full logits */
    qt_tok_ids seq = {0};
    qt_tok_encode(t, o.prompt, strlen(o.prompt), true, &seq, &err);
    int ok = 1;
    for (int k = 0; k < n; k++) {
        qt_step_reset(&ctx);
        qt_no_grad_begin(&ctx);
        qt_tensor *it = qt_tensor_new(&ctx, QT_I32, 2, (int64_t[]){1, seq.n});
        qt_tensor_upload(&ctx, it, seq.ids);
        qt_tensor *lg = qt_llama_logits(&ctx, &m, it, NULL, NULL);
        const float *row = qt_f32(lg) + (seq.n - 1) * m.cfg.vocab;
        int32_t best = 0;
        for (int32_t v = 1; v < m.cfg.vocab; v++)
            if (row[v] > row[best]) best = v;
        qt_no_grad_end(&ctx);
        ok &= best == ids[k];
        seq.ids = realloc(seq.ids, (size_t)(seq.n + 1) * sizeof *seq.ids);
        seq.ids[seq.n++] = best;
    }
    QT_EXPECT(ok && n > 0, "greedy = the argmax chain (%d tokens: '%s')", n, out);
    free(out);
    free(seq.ids);

    o.temperature = 1.0, o.top_p = 0.9, o.seed = 5;
    int32_t *a, *b;
    int na, nb;
    char *sa, *sb;
    qt_generate(&ctx, &m, t, &o, &sa, &a, &na, &err);
    qt_generate(&ctx, &m, t, &o, &sb, &b, &nb, &err);
    QT_EXPECT(na == nb && !memcmp(a, b, (size_t)na * 4), "the same seed samples the same text");
    free(sa), free(sb), free(a), free(b);
    o.top_p = 1e-6;
    qt_generate(&ctx, &m, t, &o, &sa, &a, &na, &err);
    QT_EXPECT(na == n && !memcmp(a, ids, (size_t)n * 4), "a vanishing top-p is greedy");
    free(sa), free(a), free(ids);
    qt_tok_free(t);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);

    /* the CLI */
    snprintf(qtune, sizeof qtune, "%s", argv[0]);
    char *slash = strrchr(qtune, '/');
    snprintf(slash ? slash + 1 : qtune, 64, "qtune");
    (void)argc;
    snprintf(cmd, sizeof cmd,
             "%s generate %s --prompt hello --max-new-tokens 3 --chat llama3 "
             ">/dev/null 2>&1",
             qtune, dir);
    QT_EXPECT(system(cmd) == 0, "qtune generate --chat llama3 exits 0");
    snprintf(cmd, sizeof cmd, "%s generate %s --prompt hello --chat klingon >/dev/null 2>&1", qtune,
             dir);
    int rc = system(cmd);
    QT_EXPECT(WEXITSTATUS(rc) == 2, "an unknown template is bad usage (exit 2)");
    snprintf(cmd, sizeof cmd, "%s generate %s --prompt hello --chat >/dev/null 2>&1", qtune, dir);
    rc = system(cmd);
    QT_EXPECT(WEXITSTATUS(rc) == 1, "--chat auto without a template in the model is exit 1");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return qt_test_finish("generate");
}
