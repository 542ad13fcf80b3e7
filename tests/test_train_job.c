/* test_train_job.c - `qtune train` end to end on the tiny llama fixture with a pre-tokenized
 * dataset, through the real binary:
 *   exact resume: 12 steps straight, and 5 steps + stop + `--resume latest` + 7 more, give the
 *   same per-step losses and bit-identical final LoRA tensors;
 *   SIGINT saves a checkpoint and exits 0;
 *   kill -9 at random moments while checkpoints are written every step, 8 times: every time the
 *   checkpoint `latest` names loads, and the run resumes to the end;
 *   a changed lora_r is refused on resume, a changed max_steps is allowed and reported;
 *   optimizer_in_bwd gives the normal run's losses, gradient norms and final tensors (one
 *   micro-batch, no clipping), stopped and resumed too, and is refused with accumulation;
 *   metrics.jsonl and config.yaml are written. */
#define _XOPEN_SOURCE 700
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qt_test.h"
#include "tiny_model.h"
#include "train/checkpoint.h"
#include "train/run_dir.h"

static char qtune[1024], dir[256];

/* runs qtune with args; stderr to errfile; returns the exit status (or -signal) */
static pid_t spawn(const char *const *args, const char *errfile, const char *env) {
    pid_t p = fork();
    if (p == 0) {
        FILE *e = freopen(errfile, "w", stderr);
        (void)e;
        if (env) { /* "NAME=value" */
            char name[64];
            const char *eq = strchr(env, '=');
            snprintf(name, sizeof name, "%.*s", (int)(eq - env), env);
            setenv(name, eq + 1, 1);
        }
        char *argv[16];
        int n = 0;
        argv[n++] = qtune;
        for (; args[n - 1] && n < 15; n++) argv[n] = (char *)args[n - 1];
        argv[n] = NULL;
        execv(qtune, argv);
        _exit(127);
    }
    return p;
}

static int wait_rc(pid_t p) {
    int st;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

static int run(const char *const *args, const char *errfile, const char *env) {
    return wait_rc(spawn(args, errfile, env));
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = calloc(1, (size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) b[0] = 0;
    fclose(f);
    return b;
}

static void write_job(const char *path, const char *out, int max_steps, int save_steps,
                      int save_limit) {
    char data[300];
    snprintf(data, sizeof data, "%s/train.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "base_model: tests/fixtures/hf/llama\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n"
            "lora_dropout: 0.1\nlora_target_linear: true\n"
            "datasets:\n  - path: %s\n    type: pretokenized\n"
            "sequence_len: 32\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\n"
            "max_steps: %d\nlearning_rate: 0.01\nlr_scheduler: cosine\nwarmup_steps: 2\n"
            "save_steps: %d\nsave_total_limit: %d\neval_steps: 4\nval_set_size: 0.1\n"
            "logging_steps: 1\noutput_dir: %s\nseed: 7\n",
            data, max_steps, save_steps, save_limit, out);
    fclose(f);
}

static void write_data(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/train.jsonl", dir);
    FILE *f = fopen(path, "w");
    for (int r = 0; r < 40; r++) {
        fprintf(f, "{\"input_ids\": [");
        int len = 6 + (r * 7) % 20;
        for (int t = 0; t < len; t++)
            fprintf(f, "%s%d", t ? ", " : "", 3 + (r * 31 + t * 17) % 250);
        fprintf(f, "]}\n");
    }
    fclose(f);
}

/* a per-step field of metrics.jsonl ("\"loss\": "), as printed */
static int field(const char *out, const char *key, char lines[][32], int max) {
    char p[300];
    snprintf(p, sizeof p, "%s/metrics.jsonl", out);
    char *m = slurp(p);
    int n = 0;
    size_t kl = strlen(key);
    for (char *s = strstr(m, key); s && n < max; s = strstr(s + 1, key)) {
        int step;
        char *st = s;
        while (st > m && *st != '{') st--;
        if (sscanf(st, "{\"step\": %d", &step) != 1 || step < 1 || step > max) continue;
        sscanf(s + kl, "%31[^,]", lines[step - 1]);
        n++;
    }
    free(m);
    return n;
}

/* the per-step losses of metrics.jsonl, as printed */
static int losses(const char *out, char lines[][32], int max) {
    return field(out, "\"loss\": ", lines, max);
}

/* the LoRA tensors of a checkpoint, concatenated */
static size_t tensors(const char *ckpt, float *buf) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    qt_err err = {0};
    size_t off = 0;
    if (qt_model_open(&ctx, &m, ckpt, base, sizeof base, &err) == 0) {
        for (int i = 0; i < m.n_train; i++) {
            qt_tensor_download(&ctx, m.train[i], buf + off);
            off += (size_t)qt_numel(m.train[i]);
        }
        qt_llama_free(&m);
    } else {
        QT_EXPECT(0, "open %s: %s", ckpt, err.msg);
    }
    qt_ctx_free(&ctx);
    return off;
}

static void test_resume(void) {
    char job[300], a[300], b[300], errf[300], ca[4200], cb[4200];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(errf, sizeof errf, "%s/err.txt", dir);
    snprintf(job, sizeof job, "%s/job_a.yaml", dir);
    write_job(job, a, 12, 4, 2);
    int rc = run((const char *[]){"train", job, NULL}, errf, NULL);
    char *e = slurp(errf);
    QT_EXPECT(rc == 0, "straight run: rc %d: %s", rc, e);
    free(e);
    snprintf(job, sizeof job, "%s/job_b.yaml", dir);
    write_job(job, b, 12, 4, 2);
    rc = run((const char *[]){"train", job, NULL}, errf, "QTUNE_STOP_AFTER_STEPS=5");
    QT_EXPECT(rc == 0, "first half: rc %d", rc);
    qt_err err = {0};
    QT_EXPECT(qt_run_dir_latest(b, cb, sizeof cb, &err) == 0 && strstr(cb, "checkpoint-5.h5"),
              "stopped at step 5 with a checkpoint (%s)", cb);
    rc = run((const char *[]){"train", job, "--resume", "latest", NULL}, errf, NULL);
    e = slurp(errf);
    QT_EXPECT(rc == 0 && strstr(e, "resumed from"), "resume: rc %d: %s", rc, e);
    free(e);
    char la[12][32] = {{0}}, lb[12][32] = {{0}};
    QT_EXPECT(losses(a, la, 12) == 12 && losses(b, lb, 12) == 12, "12 logged steps each");
    int same = 1;
    for (int i = 0; i < 12; i++) same &= !strcmp(la[i], lb[i]) && la[i][0];
    QT_EXPECT(same, "per-step losses identical (step 6: %s vs %s, step 12: %s vs %s)", la[5], lb[5],
              la[11], lb[11]);
    qt_run_dir_latest(a, ca, sizeof ca, &err);
    qt_run_dir_latest(b, cb, sizeof cb, &err);
    static float ta[40000], tb[40000];
    size_t na = tensors(ca, ta), nb = tensors(cb, tb);
    QT_EXPECT(na == nb && na > 0 && !memcmp(ta, tb, na * sizeof *ta),
              "final LoRA tensors bit-identical (%zu values)", na);
    char p[400];
    snprintf(p, sizeof p, "%s/config.yaml", a);
    char *cfg = slurp(p);
    QT_EXPECT(strstr(cfg, "lora_r: 4") != NULL, "resolved config written");
    free(cfg);
    snprintf(p, sizeof p, "%s/checkpoint-4.h5", a);
    QT_EXPECT(access(p, F_OK) != 0, "save_total_limit 2 removed checkpoint-4");

    /* a changed rank is refused, a changed max_steps is reported */
    rc = run((const char *[]){"train", job, "--resume", "latest", "--set", "lora_r=8", NULL}, errf,
             NULL);
    e = slurp(errf);
    QT_EXPECT(rc == 1 && strstr(e, "lora_r"), "changed lora_r refused: rc %d: %s", rc, e);
    free(e);
    /* 8-bit AdamW state cannot continue 32-bit state: refused, naming the file and the key */
    rc = run(
        (const char *[]){"train", job, "--resume", "latest", "--set", "optimizer=adamw_8bit", NULL},
        errf, NULL);
    e = slurp(errf);
    QT_EXPECT(rc == 1 && strstr(e, "checkpoint-") && strstr(e, "'optimizer' is adamw_8bit"),
              "changed optimizer kind refused: rc %d: %s", rc, e);
    free(e);
    rc = run((const char *[]){"train", job, "--resume", "latest", "--set", "max_steps=14", NULL},
             errf, NULL);
    e = slurp(errf);
    QT_EXPECT(rc == 0 && strstr(e, "max_steps"), "changed max_steps allowed and reported: %s", e);
    free(e);
}

/* optimizer_in_bwd: the same run as the normal step (one micro-batch, no clipping), losses,
 * logged gradient norms and final tensors, also when stopped and resumed */
static void test_in_bwd(void) {
    char job[300], a[300], b[300], errf[300], ca[4200], cb[4200];
    snprintf(a, sizeof a, "%s/ib_a", dir);
    snprintf(b, sizeof b, "%s/ib_b", dir);
    snprintf(errf, sizeof errf, "%s/err_ib.txt", dir);
    snprintf(job, sizeof job, "%s/job_ib_a.yaml", dir);
    write_job(job, a, 8, 4, 0);
    const char *ga = "gradient_accumulation_steps=1", *mg = "max_grad_norm=0";
    int rc = run((const char *[]){"train", job, "--set", ga, "--set", mg, NULL}, errf, NULL);
    char *e = slurp(errf);
    QT_EXPECT(rc == 0, "normal run: rc %d: %s", rc, e);
    free(e);
    snprintf(job, sizeof job, "%s/job_ib_b.yaml", dir);
    write_job(job, b, 8, 4, 0);
    const char *ib = "optimizer_in_bwd=true";
    rc = run((const char *[]){"train", job, "--set", ga, "--set", mg, "--set", ib, NULL}, errf,
             "QTUNE_STOP_AFTER_STEPS=3");
    QT_EXPECT(rc == 0, "in-backward run, first part: rc %d", rc);
    rc = run((const char *[]){"train", job, "--set", ga, "--set", mg, "--set", ib, "--resume",
                              "latest", NULL},
             errf, NULL);
    e = slurp(errf);
    QT_EXPECT(rc == 0 && strstr(e, "resumed from"), "in-backward resume: rc %d: %s", rc, e);
    free(e);
    char la[8][32] = {{0}}, lb[8][32] = {{0}}, na[8][32] = {{0}}, nb[8][32] = {{0}};
    QT_EXPECT(losses(a, la, 8) == 8 && losses(b, lb, 8) == 8, "8 logged steps each");
    QT_EXPECT(field(a, "\"grad_norm\": ", na, 8) == 8 && field(b, "\"grad_norm\": ", nb, 8) == 8,
              "8 logged gradient norms each");
    int same = 1;
    for (int i = 0; i < 8; i++)
        same &= !strcmp(la[i], lb[i]) && la[i][0] && !strcmp(na[i], nb[i]) && na[i][0];
    QT_EXPECT(same,
              "in backward: per-step losses and norms as the normal run's (step 8: %s vs %s, "
              "norm %s vs %s)",
              la[7], lb[7], na[7], nb[7]);
    qt_err err = {0};
    qt_run_dir_latest(a, ca, sizeof ca, &err);
    qt_run_dir_latest(b, cb, sizeof cb, &err);
    static float ta[40000], tb[40000];
    size_t n1 = tensors(ca, ta), n2 = tensors(cb, tb);
    QT_EXPECT(n1 == n2 && n1 > 0 && !memcmp(ta, tb, n1 * sizeof *ta),
              "in backward: final LoRA tensors bit-identical to the normal run's (%zu values)", n1);
    /* refused with accumulation, naming the key */
    rc = run((const char *[]){"train", job, "--set", mg, "--set", ib, NULL}, errf, NULL);
    e = slurp(errf);
    QT_EXPECT(rc == 1 && strstr(e, "optimizer_in_bwd: cannot be used with "
                                   "gradient_accumulation_steps: 2"),
              "in backward with accumulation refused: rc %d: %s", rc, e);
    free(e);
}

static void test_sigint(void) {
    char job[300], out[300], errf[300];
    snprintf(out, sizeof out, "%s/c", dir);
    snprintf(errf, sizeof errf, "%s/err_c.txt", dir);
    snprintf(job, sizeof job, "%s/job_c.yaml", dir);
    write_job(job, out, 100000, 0, 2);
    pid_t p = spawn((const char *[]){"train", job, NULL}, errf, NULL);
    nanosleep(&(struct timespec){1, 500000000}, NULL);
    kill(p, SIGINT);
    int rc = wait_rc(p);
    char *e = slurp(errf);
    QT_EXPECT(rc == 0 && strstr(e, "stopped"), "SIGINT: rc %d: %s", rc, e);
    free(e);
    char latest[4200];
    qt_err err = {0};
    qt_ckpt_info info;
    QT_EXPECT(qt_run_dir_latest(out, latest, sizeof latest, &err) == 0 &&
                  qt_ckpt_read_info(latest, &info, &err) == 0,
              "SIGINT left a loadable checkpoint: %s", err.msg);
    if (!err.msg[0]) qt_ckpt_info_free(&info);
}

static void test_kill9(void) {
    char job[300], out[300], errf[300];
    snprintf(out, sizeof out, "%s/d", dir);
    snprintf(errf, sizeof errf, "%s/err_d.txt", dir);
    snprintf(job, sizeof job, "%s/job_d.yaml", dir);
    write_job(job, out, 60, 1, 3);
    unsigned seed = (unsigned)time(NULL);
    printf("kill -9 test: seed %u\n", seed);
    srand(seed);
    int loads = 0, tries = 8, started = 0;
    for (int k = 0; k < tries; k++) {
        const char *args[] = {"train", job, started ? "--resume" : NULL, "latest", NULL};
        pid_t p = spawn(args, errf, NULL);
        long us = 300000 + rand() % 900000;
        nanosleep(&(struct timespec){us / 1000000, (us % 1000000) * 1000}, NULL);
        kill(p, SIGKILL);
        wait_rc(p);
        char latest[4200];
        qt_err err = {0};
        qt_ckpt_info info;
        if (qt_run_dir_latest(out, latest, sizeof latest, &err) != 0) continue; /* none yet */
        started = 1;
        if (qt_ckpt_read_info(latest, &info, &err) == 0) {
            loads++;
            qt_ckpt_info_free(&info);
        } else {
            QT_EXPECT(0, "after kill -9 #%d the latest checkpoint does not load: %s", k, err.msg);
        }
    }
    QT_EXPECT(started && loads > 0, "checkpoints were written between kills (%d loads)", loads);
    int rc = run((const char *[]){"train", job, "--resume", "latest", NULL}, errf, NULL);
    char *e = slurp(errf);
    QT_EXPECT(rc == 0 && strstr(e, "done at step 60"), "the run resumes to its end: rc %d: %s", rc,
              e);
    free(e);
}

/* an alpaca QLoRA job on a tiny model with a real tokenizer, end to end */
static void test_alpaca(void) {
    char mdir[300], p[400], errf[300], job[300], out[300];
    snprintf(mdir, sizeof mdir, "%s/tokmodel", dir);
    tiny_tok_model(mdir);
    FILE *f;
    snprintf(p, sizeof p, "%s/alpaca.jsonl", dir);
    f = fopen(p, "w");
    for (int r = 0; r < 16; r++)
        fprintf(f,
                "{\"instruction\": \"Repeat %d\", \"input\": \"\", \"output\": "
                "\"%d %d %d\"}\n",
                r, r, r, r);
    fclose(f);
    snprintf(out, sizeof out, "%s/alpaca_run", dir);
    snprintf(job, sizeof job, "%s/alpaca.yaml", dir);
    f = fopen(job, "w");
    fprintf(f,
            "base_model: %s\nadapter: qlora\nlora_r: 4\ndatasets:\n  - path: %s\n"
            "    type: alpaca\nsequence_len: 128\nsample_packing: true\nmicro_batch_size: 2\n"
            "max_steps: 6\nlearning_rate: 0.01\noutput_dir: %s\n",
            mdir, p, out);
    fclose(f);
    snprintf(errf, sizeof errf, "%s/err_alpaca.txt", dir);
    int rc = run((const char *[]){"train", job, NULL}, errf, NULL);
    char *e2 = slurp(errf);
    QT_EXPECT(rc == 0 && strstr(e2, "done at step 6"), "an alpaca QLoRA job runs: rc %d: %s", rc,
              e2);
    free(e2);
}

int main(int argc, char **argv) {
    /* --device cuda: the same tests with the trainer on the GPU (ctest's gpu_train_job) */
    if (argc == 3 && !strcmp(argv[1], "--device")) {
        qt_device dev;
        qt_err err = {0};
        if (qt_device_pick(argv[2], &dev, &err) != 0) return qt_test_skip("train_job", err.msg);
        setenv("QTUNE_DEVICE", argv[2], 1);
        printf("train_job: trainer on %s\n", argv[2]);
    } else {
        setenv("QTUNE_DEVICE", "cpu", 1); /* the reference, also on a machine with a GPU */
    }
    snprintf(qtune, sizeof qtune, "%s", argv[0]);
    char *slash = strrchr(qtune, '/');
    snprintf(slash ? slash + 1 : qtune, sizeof qtune - (size_t)(slash ? slash + 1 - qtune : 0),
             "qtune");
    if (access(qtune, X_OK) != 0) return qt_test_skip("train_job", "qtune binary not found");
    snprintf(dir, sizeof dir, "/tmp/qt_train_job.%ld", (long)getpid());
    mkdir(dir, 0700);
    write_data();
    test_resume();
    test_in_bwd();
    test_sigint();
    test_kill9();
    test_alpaca();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return qt_test_finish("train_job");
}
