/* test_eval.c - qt_eval_loss and `qtune eval` on a model no other test uses
 * (tests/fixtures/hf/eval_mistral: a bf16 sharded mistral with legacy rope keys) and its
 * pre-tokenized eval set, against transformers' figures (eval_ref.json):
 *   (a) the token-weighted loss to 1e-5 relative, the token and row counts exactly;
 *   (b) packing changes nothing: every row in one batch, a few rows per batch, and each row
 *       alone through qt_llama_loss with no packing at all agree to 1e-6 relative;
 *   (c) the built qtune binary (next to this test's executable) prints the same figures with
 *       --json and exits 0; exits 1 naming the line of a bad data row, 1 for a row longer than
 *       --max-tokens, a checkpoint file, a missing model; 2 for a missing --data. */
#define _POSIX_C_SOURCE 200809L /* popen, mkdtemp */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "qt_test.h"
#include "train/eval.h"
#include "train/hf_model.h"

#define DIR  "tests/fixtures/hf/eval_mistral"
#define DATA DIR "/eval.jsonl"

typedef struct {
    double loss, perplexity;
    int64_t tokens, rows;
} figures;

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

/* {"loss": .., "perplexity": .., "tokens": .., "rows": ..} -> figures; 0 when all four parse */
static int parse_figures(const char *text, figures *fg) {
    cJSON *o = cJSON_Parse(text);
    if (!o) return -1;
    const char *keys[4] = {"loss", "perplexity", "tokens", "rows"};
    double v[4];
    int rc = 0;
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, keys[i]);
        if (!cJSON_IsNumber(e)) rc = -1;
        v[i] = e ? e->valuedouble : 0;
    }
    cJSON_Delete(o);
    *fg = (figures){v[0], v[1], (int64_t)v[2], (int64_t)v[3]};
    return rc;
}

/* Sum of token losses of each row alone, [1, n] with default positions and one document:
 * no packing code involved. */
static double unpacked_sum(qt_ctx *ctx, qt_llama *m, const qt_pretok *ds, int64_t *tokens) {
    double sum = 0;
    *tokens = 0;
    qt_no_grad_begin(ctx);
    for (int64_t r = 0; r < ds->nrows; r++) {
        int64_t n = qt_pretok_len(ds, r), o = ds->offset[r];
        int32_t *tg = malloc((size_t)n * sizeof *tg);
        qt_llama_shift_labels(ds->labels + o, tg, 1, n);
        for (int64_t t = 0; t < n; t++) *tokens += tg[t] != QT_IGNORE_INDEX;
        qt_tensor *ids = qt_tensor_new(ctx, QT_I32, 2, (int64_t[]){1, n});
        qt_tensor *tt = qt_tensor_new(ctx, QT_I32, 1, &n);
        qt_tensor_upload(ctx, ids, ds->ids + o);
        qt_tensor_upload(ctx, tt, tg);
        free(tg);
        sum += qt_f32(qt_llama_loss(ctx, m, ids, tt, NULL, NULL, 1.0f))[0];
        qt_step_reset(ctx);
    }
    qt_no_grad_end(ctx);
    return sum;
}

static void check_library(const figures *ref) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_FULL;
    qt_err err = {0};
    int rc = qt_llama_load(&ctx, &m, DIR, &o, &err);
    QT_EXPECT(rc == 0, "load: %s", err.msg);
    if (rc) {
        qt_ctx_free(&ctx);
        return;
    }
    qt_pretok ds;
    rc = qt_pretok_load(&ds, DATA, m.cfg.vocab, &err);
    QT_EXPECT(rc == 0, "data: %s", err.msg);
    if (rc) {
        qt_llama_free(&m);
        qt_ctx_free(&ctx);
        return;
    }
    int64_t longest = 0;
    for (int64_t r = 0; r < ds.nrows; r++)
        longest = qt_pretok_len(&ds, r) > longest ? qt_pretok_len(&ds, r) : longest;

    /* (a) everything in one batch, against transformers */
    qt_eval_result all, few;
    rc = qt_eval_loss(&ctx, &m, &ds, 1 << 20, &all, &err);
    QT_EXPECT(rc == 0, "eval: %s", err.msg);
    QT_EXPECT(all.batches == 1, "one batch (got %lld)", (long long)all.batches);
    QT_EXPECT_CLOSE(all.loss, ref->loss, 0, 1e-5, "loss vs transformers");
    QT_EXPECT_CLOSE(all.perplexity, ref->perplexity, 0, 1e-5, "perplexity vs transformers");
    QT_EXPECT(all.tokens == ref->tokens, "tokens %lld, transformers %lld", (long long)all.tokens,
              (long long)ref->tokens);
    QT_EXPECT(all.rows == ref->rows, "rows %lld, want %lld", (long long)all.rows,
              (long long)ref->rows);
    printf("eval_mistral: loss %.9f (transformers %.9f, rel diff %.2e), perplexity %.6f "
           "(transformers %.6f), %lld tokens, %lld rows\n",
           all.loss, ref->loss, fabs(all.loss - ref->loss) / ref->loss, all.perplexity,
           ref->perplexity, (long long)all.tokens, (long long)all.rows);

    /* (b) the longest row as the batch limit: several batches, some packing two rows */
    rc = qt_eval_loss(&ctx, &m, &ds, longest, &few, &err);
    QT_EXPECT(rc == 0, "eval, max_tokens %lld: %s", (long long)longest, err.msg);
    QT_EXPECT(few.batches > 1 && few.batches < ds.nrows, "%lld batches for %lld rows",
              (long long)few.batches, (long long)ds.nrows);
    QT_EXPECT_CLOSE(few.loss, all.loss, 0, 1e-6, "loss, few rows per batch vs one batch");
    QT_EXPECT(few.tokens == all.tokens && few.rows == all.rows, "same counts");
    int64_t tok1;
    double sum1 = unpacked_sum(&ctx, &m, &ds, &tok1);
    QT_EXPECT(tok1 == all.tokens, "unpacked token count %lld", (long long)tok1);
    QT_EXPECT_CLOSE(sum1 / (double)tok1, all.loss, 0, 1e-6, "loss, each row alone vs one batch");
    printf("packing: one batch %.9f, %lld batches of <= %lld tokens %.9f, rows alone %.9f\n",
           all.loss, (long long)few.batches, (long long)longest, few.loss, sum1 / (double)tok1);

    /* errors: a row longer than a batch names its line; nothing to predict */
    rc = qt_eval_loss(&ctx, &m, &ds, longest - 1, &few, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, DATA ":3:") && strstr(err.msg, "more than a batch"),
              "row too long: rc %d '%s'", rc, err.msg);
    qt_pretok one = {.nrows = 1,
                     .ntokens = 1,
                     .offset = (int64_t[]){0, 1},
                     .line = (int64_t[]){7},
                     .ids = (int32_t[]){5},
                     .labels = (int32_t[]){5},
                     .has_labels = (uint8_t[]){0},
                     .path = "single.jsonl"};
    rc = qt_eval_loss(&ctx, &m, &one, 16, &few, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, "nothing to predict"), "one-token row: '%s'", err.msg);

    qt_pretok_free(&ds);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
}

/* Runs cmd (stdout captured into out, stderr into errfile); returns the exit code. */
static int run(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    QT_CHECK(p, "popen failed");
    size_t got = fread(out, 1, n - 1, p);
    out[got] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void check_cli(const char *argv0, const figures *ref) {
    char bin[1024], tmp[64], cmd[4096], out[4096], errfile[128];
    const char *slash = strrchr(argv0, '/');
    snprintf(bin, sizeof bin, "%.*s/qtune", slash ? (int)(slash - argv0) : 1, slash ? argv0 : ".");
    if (access(bin, X_OK) != 0) {
        QT_EXPECT(0, "the qtune binary is not at %s", bin);
        return;
    }
    snprintf(tmp, sizeof tmp, "/tmp/qt_eval_XXXXXX");
    QT_CHECK(mkdtemp(tmp), "mkdtemp failed");
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", tmp);

    /* the good run */
    snprintf(cmd, sizeof cmd, "'%s' eval " DIR " --data " DATA " --json 2>'%s'", bin, errfile);
    int rc = run(cmd, out, sizeof out);
    figures fg;
    QT_EXPECT(rc == 0, "qtune eval --json exit code %d", rc);
    QT_EXPECT(parse_figures(out, &fg) == 0, "qtune eval --json printed '%s'", out);
    QT_EXPECT(strchr(out, '\n') == out + strlen(out) - 1, "one line of JSON: '%s'", out);
    QT_EXPECT_CLOSE(fg.loss, ref->loss, 0, 1e-5, "CLI loss vs transformers");
    QT_EXPECT_CLOSE(fg.perplexity, ref->perplexity, 0, 1e-5, "CLI perplexity vs transformers");
    QT_EXPECT(fg.tokens == ref->tokens && fg.rows == ref->rows, "CLI counts: %s", out);
    printf("qtune eval --json: %s", out);

    /* the text form */
    snprintf(cmd, sizeof cmd, "'%s' eval " DIR " --data " DATA " --max-tokens 40 2>'%s'", bin,
             errfile);
    rc = run(cmd, out, sizeof out);
    QT_EXPECT(rc == 0 && !strncmp(out, "loss 5.7285 perplexity 307.5 tokens 67 rows 5", 45),
              "text output (exit %d): '%s'", rc, out);

    /* a bad data row on line 2 */
    char data[128];
    snprintf(data, sizeof data, "%s/bad.jsonl", tmp);
    FILE *f = fopen(data, "wb");
    QT_CHECK(f, "cannot write %s", data);
    fputs("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, \"5\", 6]}\n", f);
    fclose(f);
    struct {
        const char *args;
        int code;
        const char *says; /* in stderr */
    } cases[] = {
        {DIR " --data BAD", 1, "BAD:2: input_ids[1] is a string"},
        {DIR " --data " DATA " --max-tokens 32", 1, DATA ":3: the row has 33 tokens"},
        {DIR "/config.json --data " DATA, 1, "not a qtune checkpoint"},
        {DIR "/absent --data " DATA, 1, DIR "/absent"},
        {"tests/fixtures/hf --data " DATA, 1, "not a Hugging Face model directory"},
        {DIR " --data " DIR "/absent.jsonl", 1, "cannot read " DIR "/absent.jsonl"},
        {DIR, 2, "--data"},
        {DIR " --data", 2, "--data"},
        {DIR " --data " DATA " --max-tokens 0", 2, "--max-tokens"},
        {DIR " --data " DATA " --bogus", 2, "--bogus"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[512], says[512];
        const char *b = strstr(cases[i].args, "BAD");
        snprintf(args, sizeof args, "%.*s%s%s", b ? (int)(b - cases[i].args) : 0, cases[i].args,
                 b ? data : cases[i].args, b ? b + 3 : "");
        b = strstr(cases[i].says, "BAD");
        snprintf(says, sizeof says, "%.*s%s%s", b ? (int)(b - cases[i].says) : 0, cases[i].says,
                 b ? data : cases[i].says, b ? b + 3 : "");
        snprintf(cmd, sizeof cmd, "'%s' eval %s 2>'%s'", bin, args, errfile);
        rc = run(cmd, out, sizeof out);
        char *msg = slurp(errfile);
        QT_EXPECT(rc == cases[i].code, "qtune eval %s: exit %d, want %d", args, rc, cases[i].code);
        QT_EXPECT(msg && strstr(msg, says), "qtune eval %s: stderr '%s' does not say '%s'", args,
                  msg ? msg : "", says);
        QT_EXPECT(out[0] == 0, "qtune eval %s: printed '%s' on stdout", args, out);
        if (cases[i].code == 1 && msg) {
            /* a failed run says one line */
            char *nl = strchr(msg, '\n');
            QT_EXPECT(nl && nl[1] == 0, "one line of error: '%s'", msg);
            printf("exit %d: %s", rc, msg);
        }
        free(msg);
    }
    snprintf(cmd, sizeof cmd, "'%s' eval --help 2>'%s'", bin, errfile);
    rc = run(cmd, out, sizeof out);
    QT_EXPECT(rc == 0 && strstr(out, "usage: qtune eval MODEL --data FILE"), "eval --help: '%s'",
              out);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp);
}

int main(int argc, char **argv) {
    (void)argc;
    char *text = slurp(DIR "/eval_ref.json");
    figures ref;
    if (!text || parse_figures(text, &ref) != 0) {
        QT_EXPECT(0, "cannot read " DIR "/eval_ref.json");
        free(text);
        return qt_test_finish("eval");
    }
    free(text);
    check_library(&ref);
    check_cli(argv[0], &ref);
    return qt_test_finish("eval");
}
