/* test_checkpoint.c - HDF5 checkpoints:
 *   exact resume: 6 LoRA steps straight (with LoRA dropout, so the RNG stream matters) and
 *   3 + save + a fresh process state + load + 3 give bit-identical losses and weights;
 *   refusals with a message and no crash: truncated file, a flipped byte in a tensor's chunk
 *   (Fletcher32), a text file, an HDF5 file that is not a checkpoint, a newer format version,
 *   a job whose adapter rank or targets differ; saving into a missing directory fails cleanly
 *   and leaves no temporary file; the base model identity differs between models. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <hdf5.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qt_test.h"
#include "train/checkpoint.h"
#include "train/hf_model.h"
#include "train/trainer.h"

#define MODEL "tests/fixtures/hf/llama"

typedef struct {
    qt_ctx ctx;
    qt_llama m;
    qt_model_opts opts;
    qt_adamw opt;
    qt_schedule sch;
} job;

/* LoRA with r and targets, or (r == 0) full fine-tuning; AdamW with `bits` of state */
static int job_open_bits(job *j, int r, unsigned targets, int bits, qt_err *err) {
    qt_ctx_init(&j->ctx, QT_CPU, 77, NULL);
    qt_model_opts o = qt_model_opts_default();
    o.mode = r ? QT_MODE_LORA : QT_MODE_FULL, o.lora_r = r, o.lora_alpha = 8;
    o.lora_dropout = 0.1, o.lora_targets = targets, o.seed = 5;
    j->opts = o;
    int rc = qt_llama_load(&j->ctx, &j->m, MODEL, &o, err);
    if (rc) return rc;
    j->sch = (qt_schedule){.kind = QT_SCHED_COSINE, .lr = 5e-3, .warmup = 2, .total = 6};
    return qt_adamw_init_bits(&j->opt, &j->ctx, j->m.train, j->m.train_decay, j->m.n_train, 0.9,
                              0.999, 1e-8, 0.01, bits, err);
}

static int job_open(job *j, int r, unsigned targets, qt_err *err) {
    return job_open_bits(j, r, targets, 32, err);
}

static void job_close(job *j) {
    qt_adamw_free(&j->opt);
    qt_llama_free(&j->m);
    qt_ctx_free(&j->ctx);
}

/* the batch of step `step`: a function of the step only, like a loader at a saved position */
static double job_step(job *j, int step) {
    int32_t ids[2 * 12], lab[2 * 12];
    for (int i = 0; i < 24; i++) ids[i] = lab[i] = 3 + (step * 31 + i * 17) % 250;
    qt_micro_batch mb[2] = {{.B = 1, .T = 12, .ids = ids, .labels = lab},
                            {.B = 1, .T = 12, .ids = ids + 12, .labels = lab + 12}};
    qt_step_stats st;
    qt_err err = {0};
    qt_train_step(&j->ctx, &j->m, &j->opt, &j->sch, mb, 2, 1.0, &st, &err);
    return st.loss;
}

static void weights(job *j, float *w) {
    int64_t off = 0;
    for (int i = 0; i < j->m.n_train; i++) {
        memcpy(w + off, j->m.train[i]->data, qt_nbytes(j->m.train[i]));
        off += qt_numel(j->m.train[i]);
    }
}

static char dir[256];

static int save(job *j, const char *path, int step, qt_err *err) {
    qt_ckpt_info info = {.step = step,
                         .rng_seed = j->ctx.rng_seed,
                         .rng_offset = j->ctx.rng_offset,
                         .sched = j->sch,
                         .opts = j->opts};
    snprintf(info.base_model_path, sizeof info.base_model_path, "%s", MODEL);
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", j->m.identity);
    info.config_yaml = "base_model: tests/fixtures/hf/llama\nadapter: lora\nlora_r: 4\n";
    uint8_t loader[3] = {1, 2, (uint8_t)step};
    info.loader_state = loader, info.loader_state_len = 3;
    return qt_ckpt_save(path, &j->ctx, &info, &j->opt, err);
}

static void test_resume(void) {
    qt_err err = {0};
    job a, b;
    double la[6], lb[6];
    static float wa[20000], wb[20000];
    QT_CHECK(job_open(&a, 4, QT_PROJ_ALL, &err) == 0, "%s", err.msg);
    for (int s = 0; s < 6; s++) la[s] = job_step(&a, s);
    weights(&a, wa);
    job_close(&a);

    char path[300];
    snprintf(path, sizeof path, "%s/checkpoint-3.h5", dir);
    QT_CHECK(job_open(&b, 4, QT_PROJ_ALL, &err) == 0, "%s", err.msg);
    for (int s = 0; s < 3; s++) lb[s] = job_step(&b, s);
    QT_EXPECT(save(&b, path, 3, &err) == 0, "save: %s", err.msg);
    job_close(&b);

    /* a new "process": fresh context and model, state from the file only */
    QT_CHECK(job_open(&b, 4, QT_PROJ_ALL, &err) == 0, "%s", err.msg);
    b.ctx.rng_offset = 12345; /* whatever it was: the checkpoint must restore it */
    qt_ckpt_info info;
    QT_EXPECT(qt_ckpt_load(path, &b.ctx, &info, &b.opt, &err) == 0, "load: %s", err.msg);
    QT_EXPECT(info.step == 3 && b.opt.step == 3, "step restored (%lld, %lld)", (long long)info.step,
              (long long)b.opt.step);
    QT_EXPECT(info.loader_state_len == 3 && info.loader_state[2] == 3, "loader state restored");
    QT_EXPECT(!strcmp(info.base_model_hash, b.m.identity), "base identity stored");
    QT_EXPECT(strstr(info.config_yaml, "lora_r: 4") != NULL, "config text stored");
    QT_EXPECT(info.sched.kind == QT_SCHED_COSINE && info.sched.total == 6, "schedule stored");
    b.ctx.rng_offset = info.rng_offset;
    b.sch = info.sched;
    qt_ckpt_info_free(&info);
    for (int s = 3; s < 6; s++) lb[s] = job_step(&b, s);
    weights(&b, wb);
    job_close(&b);
    QT_EXPECT(!memcmp(la, lb, sizeof la), "losses identical after resume");
    QT_EXPECT(!memcmp(wa, wb, sizeof wa), "weights bit-identical after resume");
    printf("resume: losses %.7f .. %.7f, straight and resumed identical: %s\n", la[0], la[5],
           !memcmp(la, lb, sizeof la) && !memcmp(wa, wb, sizeof wa) ? "yes" : "NO");
}

/* full fine-tuning with 8-bit AdamW (the fixture's projections are >= 4096 elements: 8-bit
 * state; its norms keep fp32 moments): the same exact resume, and a 32-bit job refuses it */
static void test_resume_8bit(void) {
    qt_err err = {0};
    job a, b;
    double la[6], lb[6];
    static float wa[400000], wb[400000];
    QT_CHECK(job_open_bits(&a, 0, 0, 8, &err) == 0, "%s", err.msg);
    int n8 = 0;
    int64_t total = 0;
    for (int i = 0; i < a.opt.n; i++) n8 += a.opt.slot[i].m8 != NULL;
    for (int i = 0; i < a.m.n_train; i++) total += qt_numel(a.m.train[i]);
    QT_CHECK(total <= 400000, "the fixture grew: %lld trainable elements", (long long)total);
    QT_EXPECT(n8 > 0 && n8 < a.opt.n, "8-bit state for the large tensors only (%d of %d)", n8,
              a.opt.n);
    for (int s = 0; s < 6; s++) la[s] = job_step(&a, s);
    weights(&a, wa);
    job_close(&a);

    char path[300];
    snprintf(path, sizeof path, "%s/checkpoint-8bit.h5", dir);
    QT_CHECK(job_open_bits(&b, 0, 0, 8, &err) == 0, "%s", err.msg);
    for (int s = 0; s < 3; s++) lb[s] = job_step(&b, s);
    QT_EXPECT(save(&b, path, 3, &err) == 0, "save: %s", err.msg);
    job_close(&b);
    QT_CHECK(job_open_bits(&b, 0, 0, 8, &err) == 0, "%s", err.msg);
    qt_ckpt_info info;
    QT_EXPECT(qt_ckpt_load(path, &b.ctx, &info, &b.opt, &err) == 0, "load: %s", err.msg);
    b.ctx.rng_offset = info.rng_offset;
    b.sch = info.sched;
    qt_ckpt_info_free(&info);
    for (int s = 3; s < 6; s++) lb[s] = job_step(&b, s);
    weights(&b, wb);
    job_close(&b);
    QT_EXPECT(!memcmp(la, lb, sizeof la), "8-bit AdamW: losses identical after resume");
    QT_EXPECT(!memcmp(wa, wb, (size_t)total * 4), "8-bit AdamW: weights identical after resume");
    printf("resume with 8-bit AdamW (%d of %d tensors 8-bit): losses %.7f .. %.7f, identical: "
           "%s\n",
           n8, b.opt.n, la[0], la[5],
           !memcmp(la, lb, sizeof la) && !memcmp(wa, wb, (size_t)total * 4) ? "yes" : "NO");

    /* a 32-bit job on the 8-bit checkpoint */
    QT_CHECK(job_open_bits(&b, 0, 0, 32, &err) == 0, "%s", err.msg);
    int rc = qt_ckpt_load(path, &b.ctx, &info, &b.opt, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, "do not mix") && strstr(err.msg, path) &&
                  strstr(err.msg, "'optimizer'"),
              "32-bit AdamW refuses an 8-bit checkpoint, naming the file and the key: rc %d, '%s'",
              rc, err.msg);
    if (rc == 0)
        qt_ckpt_info_free(&info);
    else
        printf("refused (32-bit job, 8-bit checkpoint): %s\n", err.msg);
    job_close(&b);

    /* the reverse: an 8-bit job on a 32-bit checkpoint of the same full fine-tuning */
    char path32[300];
    snprintf(path32, sizeof path32, "%s/checkpoint-32bit-full.h5", dir);
    QT_CHECK(job_open_bits(&b, 0, 0, 32, &err) == 0, "%s", err.msg);
    job_step(&b, 0);
    QT_EXPECT(save(&b, path32, 1, &err) == 0, "save: %s", err.msg);
    job_close(&b);
    QT_CHECK(job_open_bits(&b, 0, 0, 8, &err) == 0, "%s", err.msg);
    rc = qt_ckpt_load(path32, &b.ctx, &info, &b.opt, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, path32) && strstr(err.msg, "'optimizer'") &&
                  strstr(err.msg, "optimizer: adamw_torch"),
              "8-bit AdamW refuses a 32-bit checkpoint: rc %d, '%s'", rc, err.msg);
    if (rc == 0) qt_ckpt_info_free(&info);
    job_close(&b);

    /* LoRA on this model trains only tensors under 4096 elements: with adamw_8bit they keep
     * fp32 moments too, so the datasets alone look alike; the recorded kind still refuses (the
     * 32-bit LoRA checkpoint of test_resume, which runs first) */
    snprintf(path32, sizeof path32, "%s/checkpoint-3.h5", dir);
    QT_CHECK(job_open_bits(&b, 4, QT_PROJ_ALL, 8, &err) == 0, "%s", err.msg);
    int lora8 = 0;
    for (int i = 0; i < b.opt.n; i++) lora8 += b.opt.slot[i].m8 != NULL;
    rc = qt_ckpt_load(path32, &b.ctx, &info, &b.opt, &err);
    QT_EXPECT(lora8 == 0 && rc != 0 && strstr(err.msg, "'optimizer'"),
              "8-bit AdamW with only fp32-moment tensors refuses a 32-bit checkpoint (%d 8-bit "
              "tensors): rc %d, '%s'",
              lora8, rc, err.msg);
    if (rc == 0)
        qt_ckpt_info_free(&info);
    else
        printf("refused (8-bit LoRA job, 32-bit checkpoint): %s\n", err.msg);
    job_close(&b);
}

static void copy_file(const char *from, const char *to, long keep) {
    FILE *f = fopen(from, "rb"), *g = fopen(to, "wb");
    int c;
    long n = 0;
    while ((c = fgetc(f)) != EOF && (keep < 0 || n < keep)) fputc(c, g), n++;
    fclose(f);
    fclose(g);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* load must fail and its message contain `want` */
static void expect_refusal(const char *path, int r, unsigned targets, const char *want,
                           const char *what) {
    job j;
    qt_err err = {0};
    QT_CHECK(job_open(&j, r, targets, &err) == 0, "%s", err.msg);
    qt_ckpt_info info;
    int rc = qt_ckpt_load(path, &j.ctx, &info, &j.opt, &err);
    QT_EXPECT(rc != 0 && strstr(err.msg, want), "%s: rc %d, message '%s' (wanted '%s')", what, rc,
              err.msg, want);
    if (rc == 0)
        qt_ckpt_info_free(&info);
    else
        printf("refused (%s): %s\n", what, err.msg);
    job_close(&j);
}

static void test_refusals(void) {
    char good[300], bad[300];
    snprintf(good, sizeof good, "%s/checkpoint-3.h5", dir);
    snprintf(bad, sizeof bad, "%s/bad.h5", dir);

    copy_file(good, bad, file_size(good) / 2);
    expect_refusal(bad, 4, QT_PROJ_ALL, "truncated", "truncated file");

    /* flip a byte inside the first chunk of a trainable tensor */
    copy_file(good, bad, -1);
    hid_t f = H5Fopen(bad, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "tensors/layers.0.mlp.up_proj.lora_A", H5P_DEFAULT);
    haddr_t addr = 0;
    hsize_t size = 0, off[2] = {0, 0};
    unsigned mask = 0;
    H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size);
    H5Dclose(d);
    H5Fclose(f);
    QT_EXPECT(addr > 0 && size > 16, "found the tensor's chunk");
    FILE *fp = fopen(bad, "r+b");
    fseek(fp, (long)addr + 10, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, (long)addr + 10, SEEK_SET);
    fputc(c ^ 0x40, fp);
    fclose(fp);
    expect_refusal(bad, 4, QT_PROJ_ALL, "checksum", "flipped byte");

    FILE *t = fopen(bad, "w");
    fputs("step: 3\n", t);
    fclose(t);
    expect_refusal(bad, 4, QT_PROJ_ALL, "not a qtune checkpoint", "text file");

    f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    expect_refusal(bad, 4, QT_PROJ_ALL, "not a qtune checkpoint", "other HDF5 file");

    copy_file(good, bad, -1);
    f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int64_t v = 99;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    expect_refusal(bad, 4, QT_PROJ_ALL, "newer", "newer format");

    expect_refusal(good, 8, QT_PROJ_ALL, "shape", "different rank");
    expect_refusal(good, 4, QT_PROJ_Q | QT_PROJ_V, "trainable tensors", "different targets");

    /* a failed save: nothing written, no temporary file left behind */
    job j;
    qt_err err = {0};
    QT_CHECK(job_open(&j, 4, QT_PROJ_ALL, &err) == 0, "%s", err.msg);
    char missing[320];
    snprintf(missing, sizeof missing, "%s/no/such/dir/c.h5", dir);
    QT_EXPECT(save(&j, missing, 1, &err) != 0 && err.msg[0], "save into a missing directory");
    /* overwrite the good checkpoint: the target is replaced whole, no temp file remains */
    QT_EXPECT(save(&j, good, 7, &err) == 0, "save over an existing checkpoint: %s", err.msg);
    qt_ckpt_info info;
    QT_EXPECT(qt_ckpt_read_info(good, &info, &err) == 0 && info.step == 7, "new step readable");
    qt_ckpt_info_free(&info);
    job_close(&j);
    DIR *dd = opendir(dir);
    struct dirent *e;
    int tmps = 0;
    while ((e = readdir(dd)))
        if (strstr(e->d_name, ".tmp")) tmps++;
    closedir(dd);
    QT_EXPECT(tmps == 0, "no temporary files left (%d)", tmps);
}

/* a checkpoint opens as a model: base + trained tensors give the trained model's loss */
static void test_open_model(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/checkpoint-7.h5", dir);
    qt_err err = {0};
    job j;
    QT_CHECK(job_open(&j, 4, QT_PROJ_Q | QT_PROJ_DOWN, &err) == 0, "%s", err.msg);
    for (int s = 0; s < 3; s++) job_step(&j, s);
    QT_EXPECT(save(&j, path, 3, &err) == 0, "save: %s", err.msg);
    int32_t ids[12];
    for (int i = 0; i < 12; i++) ids[i] = 5 + i * 13;
    double want, got = -1;
    {
        qt_step_reset(&j.ctx);
        qt_no_grad_begin(&j.ctx);
        qt_tensor *it = qt_tensor_new(&j.ctx, QT_I32, 2, (int64_t[]){1, 12});
        qt_tensor_upload(&j.ctx, it, ids);
        int32_t tg[12];
        qt_llama_shift_labels(ids, tg, 1, 12);
        qt_tensor *tt = qt_tensor_new(&j.ctx, QT_I32, 1, (int64_t[]){12});
        qt_tensor_upload(&j.ctx, tt, tg);
        for (int64_t l = 0; l < j.m.cfg.layers; l++)
            j.m.layer[l].q.lora_dropout = 0, j.m.layer[l].down.lora_dropout = 0;
        want = qt_tensor_get(&j.ctx, qt_llama_loss(&j.ctx, &j.m, it, tt, NULL, NULL, 0), 0);
        qt_no_grad_end(&j.ctx);
    }
    job_close(&j);
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama m;
    char base[512];
    QT_EXPECT(qt_model_open(&ctx, &m, path, base, sizeof base, &err) == 0, "open: %s", err.msg);
    if (!err.msg[0]) {
        QT_EXPECT(!strcmp(base, MODEL) && m.n_train == 2 * 2 * 2,
                  "rebuilt with the checkpoint's "
                  "adapters (%d trainable)",
                  m.n_train);
        qt_no_grad_begin(&ctx);
        qt_tensor *it = qt_tensor_new(&ctx, QT_I32, 2, (int64_t[]){1, 12});
        qt_tensor_upload(&ctx, it, ids);
        int32_t tg[12];
        qt_llama_shift_labels(ids, tg, 1, 12);
        qt_tensor *tt = qt_tensor_new(&ctx, QT_I32, 1, (int64_t[]){12});
        qt_tensor_upload(&ctx, tt, tg);
        got = qt_tensor_get(&ctx, qt_llama_loss(&ctx, &m, it, tt, NULL, NULL, 0), 0);
        qt_no_grad_end(&ctx);
        qt_llama_free(&m);
    }
    qt_ctx_free(&ctx);
    QT_EXPECT(got == want, "the checkpoint's model gives the trained loss (%.9g vs %.9g)", got,
              want);
}

static void test_identity(void) {
    qt_ctx ctx;
    qt_ctx_init(&ctx, QT_CPU, 1, NULL);
    qt_llama a, b;
    qt_model_opts o = qt_model_opts_default();
    o.mode = QT_MODE_FULL;
    qt_err err = {0};
    QT_CHECK(qt_llama_load(&ctx, &a, "tests/fixtures/hf/llama", &o, &err) == 0, "%s", err.msg);
    QT_CHECK(qt_llama_load(&ctx, &b, "tests/fixtures/hf/qwen2", &o, &err) == 0, "%s", err.msg);
    QT_EXPECT(strlen(a.identity) == 16 && strcmp(a.identity, b.identity) != 0,
              "identities %s and %s", a.identity, b.identity);
    qt_llama_free(&a);
    qt_llama_free(&b);
    qt_ctx_free(&ctx);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/qt_ckpt_test.%ld", (long)getpid());
    mkdir(dir, 0700);
    test_resume();
    test_resume_8bit();
    test_refusals();
    test_identity();
    test_open_model();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return qt_test_finish("checkpoint");
}
