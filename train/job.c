/* job.c - see job.h. */
#define _POSIX_C_SOURCE 200809L
#include "job.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/context.h"
#include <cjson/cJSON.h>

#include "data/datasets.h"
#include "data/loader.h"
#include "data/pretokenized.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/eval.h"
#include "train/hf_model.h"
#include "train/run_dir.h"
#include "train/trainer.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* tokenizer_config.json's chat_template, as one of the built-in templates (-1: none) */
static int model_chat_template(const char *base) {
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", base);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    int kind = -1;
    if (text && fread(text, 1, (size_t)n, f) == (size_t)n) {
        text[n] = 0;
        cJSON *c = cJSON_Parse(text);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "chat_template");
        if (cJSON_IsString(t)) kind = qt_chat_template_detect(t->valuestring);
        cJSON_Delete(c);
    }
    free(text);
    fclose(f);
    return kind;
}

/* one dataset's rows: pre-tokenized as it is, the rest through the model's tokenizer */
static int load_dataset(const qt_job_config *c, int d, const qt_model_config *mc, qt_tok **tok,
                        qt_pretok *p, qt_err *err) {
    const qt_dataset_config *ds = &c->datasets[d];
    if (ds->type == QT_DS_PRETOKENIZED) return qt_pretok_load(p, ds->path, mc->vocab, err);
    if (!*tok) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", c->base_model);
        int rc = qt_tok_load(tok, path, err);
        if (rc) return rc;
    }
    qt_dataset_spec sp = {.path = ds->path,
                          .field = ds->field,
                          .train_on_inputs = c->train_on_inputs,
                          .eos_id = (int32_t)mc->eos_id,
                          .text_chunk = c->sequence_len};
    switch (ds->type) {
    case QT_DS_ALPACA:
        sp.kind = QT_DATA_ALPACA;
        break;
    case QT_DS_COMPLETION:
        sp.kind = QT_DATA_COMPLETION;
        break;
    case QT_DS_TEXT:
        sp.kind = QT_DATA_TEXT;
        break;
    default: {
        sp.kind = QT_DATA_CHAT;
        int t = ds->chat_template == QT_CHAT_LLAMA3   ? QT_TEMPLATE_LLAMA3
                : ds->chat_template == QT_CHAT_CHATML ? QT_TEMPLATE_CHATML
                : ds->chat_template == QT_CHAT_LLAMA2 ? QT_TEMPLATE_LLAMA2
                                                      : model_chat_template(c->base_model);
        if (t < 0)
            return qt_err_set(err, QT_ERR_ARG,
                              "%s:%d:%d: datasets[%d]: chat_template tokenizer_default, but %s's "
                              "tokenizer_config.json has no llama3, chatml or llama2 template: "
                              "name one",
                              c->file ? c->file : "config", ds->at.line, ds->at.col, d,
                              c->base_model);
        sp.chat = (qt_chat_kind)t;
    }
    }
    return qt_dataset_load(p, *tok, &sp, err);
}

/* rows of every dataset, one after another */
static int load_rows(const qt_job_config *c, const qt_model_config *mc, qt_pretok *all,
                     qt_err *err) {
    memset(all, 0, sizeof *all);
    qt_tok *tok = NULL;
    int rc = QT_OK;
    for (int d = 0; d < c->n_datasets && !rc; d++) {
        qt_pretok p;
        if ((rc = load_dataset(c, d, mc, &tok, &p, err))) break;
        for (int64_t i = 0; i < p.ntokens; i++)
            if (p.ids[i] >= mc->vocab) {
                rc = qt_err_set(err, QT_ERR_FORMAT,
                                "%s: token id %d is outside the model's vocabulary (%lld): a "
                                "tokenizer that does not belong to %s?",
                                p.path, p.ids[i], (long long)mc->vocab, c->base_model);
                break;
            }
        if (rc) {
            qt_pretok_free(&p);
            break;
        }
        if (d == 0) {
            *all = p;
            continue;
        }
        /* append p to all */
        int64_t nr = all->nrows + p.nrows, nt = all->ntokens + p.ntokens;
        all->offset = realloc(all->offset, (size_t)(nr + 1) * sizeof *all->offset);
        all->line = realloc(all->line, (size_t)nr * sizeof *all->line);
        all->has_labels = realloc(all->has_labels, (size_t)nr);
        all->ids = realloc(all->ids, (size_t)nt * sizeof *all->ids);
        all->labels = realloc(all->labels, (size_t)nt * sizeof *all->labels);
        QT_CHECK(all->offset && all->line && all->has_labels && all->ids && all->labels,
                 "out of memory joining datasets");
        for (int64_t r = 0; r < p.nrows; r++) {
            all->offset[all->nrows + r + 1] = all->ntokens + p.offset[r + 1];
            all->line[all->nrows + r] = p.line[r];
            all->has_labels[all->nrows + r] = p.has_labels[r];
        }
        memcpy(all->ids + all->ntokens, p.ids, (size_t)p.ntokens * sizeof *p.ids);
        memcpy(all->labels + all->ntokens, p.labels, (size_t)p.ntokens * sizeof *p.labels);
        all->nrows = nr, all->ntokens = nt;
        qt_pretok_free(&p);
    }
    qt_tok_free(tok);
    return rc;
}

/* What must not change when resuming: the model, its adapters and quantization, and the data
 * stream. Everything else is reported. */
static int check_resume(const qt_job_config *now, const char *old_yaml, const char *ckpt, FILE *log,
                        qt_err *err) {
    qt_job_config old;
    qt_job_config_init(&old);
    qt_err e2 = {0};
    if (qt_job_config_parse_text(&old, old_yaml, strlen(old_yaml), ckpt, &e2) ||
        qt_job_config_finish(&old, &e2)) {
        qt_job_config_free(&old);
        return qt_err_set(err, QT_ERR_FORMAT, "%s: its stored config does not parse: %s", ckpt,
                          e2.msg);
    }
    struct {
        const char *key;
        bool same;
    } must[] = {
        {"base_model", !strcmp(now->base_model, old.base_model)},
        {"adapter", now->adapter == old.adapter},
        {"load_in_4bit", now->load_in_4bit == old.load_in_4bit},
        {"lora_r", now->lora_r == old.lora_r},
        {"lora_alpha", now->lora_alpha == old.lora_alpha},
        {"lora_target_modules",
         qt_job_config_lora_targets(now) == qt_job_config_lora_targets(&old)},
        {"peft_use_rslora", now->peft_use_rslora == old.peft_use_rslora},
        {"qat", now->qat.weight_format == old.qat.weight_format &&
                    now->qat.weight_group_size == old.qat.weight_group_size &&
                    now->qat.activation_format == old.qat.activation_format &&
                    now->qat.learn_scales == old.qat.learn_scales &&
                    now->qat.with_lora == old.qat.with_lora},
        {"sequence_len", now->sequence_len == old.sequence_len},
        {"micro_batch_size", now->micro_batch_size == old.micro_batch_size},
        {"sample_packing", now->sample_packing == old.sample_packing},
        {"val_set_size", now->val_set_size == old.val_set_size},
        {"seed", now->seed == old.seed},
        {"datasets", now->n_datasets == old.n_datasets},
    };
    /* the optimizer's state: fp32 moments and 8-bit codes do not convert into each other (the
     * aliases of one kind are the same optimizer) */
    bool now8 = now->optimizer >= QT_OPTIM_ADAMW_8BIT, old8 = old.optimizer >= QT_OPTIM_ADAMW_8BIT;
    if (now8 != old8) {
        const char *was = qt_job_optimizer_name(old.optimizer);
        int rc = qt_err_set(err, QT_ERR_ARG,
                            "%s: 'optimizer' is %s, the run that wrote this checkpoint used %s: "
                            "%s state cannot resume as %s state (set optimizer: %s, or start a "
                            "new run)",
                            ckpt, qt_job_optimizer_name(now->optimizer), was,
                            old8 ? "8-bit AdamW" : "32-bit AdamW",
                            now8 ? "8-bit AdamW" : "32-bit AdamW", was);
        qt_job_config_free(&old);
        return rc;
    }
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        if (!must[i].same) {
            qt_job_config_free(&old);
            return qt_err_set(err, QT_ERR_ARG,
                              "%s: '%s' differs from the run that wrote this checkpoint: resuming "
                              "would train a different model or data stream (start a new run, or "
                              "restore the key)",
                              ckpt, must[i].key);
        }
    for (int d = 0; d < now->n_datasets; d++)
        if (strcmp(now->datasets[d].path, old.datasets[d].path) ||
            now->datasets[d].type != old.datasets[d].type) {
            qt_job_config_free(&old);
            return qt_err_set(err, QT_ERR_ARG,
                              "%s: datasets[%d] differs from the run that wrote this checkpoint",
                              ckpt, d);
        }
    /* the harmless rest: say what changed */
    char *a = NULL, *b = NULL;
    size_t la, lb;
    if (!qt_job_config_emit(&old, &a, &la, &e2) && !qt_job_config_emit(now, &b, &lb, &e2)) {
        for (char *p = a, *q = b; p && q && *p && *q;) {
            char *pe = strchr(p, '\n'), *qe = strchr(q, '\n');
            size_t pl = pe ? (size_t)(pe - p) : strlen(p), ql = qe ? (size_t)(qe - q) : strlen(q);
            if (pl != ql || memcmp(p, q, pl))
                fprintf(log, "qtune: resuming with a changed setting: '%.*s' (was '%.*s')\n",
                        (int)ql, q, (int)pl, p);
            p = pe ? pe + 1 : NULL, q = qe ? qe + 1 : NULL;
        }
    }
    free(a), free(b);
    qt_job_config_free(&old);
    return QT_OK;
}

/* every linear layer's QAT weight format, so that QAT can start at qat.start_step */
typedef struct {
    qt_linear **l;
    const qt_fq_format **wq;
    int n;
} qat_switch;

static void collect_linear(qt_linear *l, void *user) {
    qat_switch *s = user;
    s->l[s->n] = l;
    s->wq[s->n++] = l->wq;
}

static void qat_enable(qat_switch *s, bool on) {
    for (int i = 0; i < s->n; i++) s->l[i]->wq = on ? s->wq[i] : NULL;
}

static void fmt_time(double s, char *buf, size_t cap) {
    long t = s > 0 && s < 3.6e7 ? (long)s : 0; /* < 10000 hours */
    snprintf(buf, cap, "%02ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static int save_ckpt(qt_ctx *ctx, qt_llama *m, qt_adamw *opt, const qt_job_config *cfg,
                     const qt_model_opts *mo, const qt_schedule *sch, const qt_loader *L,
                     int64_t step, char *path, size_t cap, qt_err *err) {
    qt_ckpt_info info = {.step = step,
                         .epoch = L->epoch,
                         .rng_seed = ctx->rng_seed,
                         .rng_offset = ctx->rng_offset,
                         .sched = *sch,
                         .opts = *mo};
    snprintf(info.base_model_path, sizeof info.base_model_path, "%s", cfg->base_model);
    snprintf(info.base_model_hash, sizeof info.base_model_hash, "%s", m->identity);
    size_t len;
    int rc = qt_job_config_emit(cfg, &info.config_yaml, &len, err);
    if (rc) return rc;
    uint8_t st[QT_LOADER_STATE_BYTES];
    qt_loader_state(L, st);
    info.loader_state = st, info.loader_state_len = sizeof st;
    qt_run_dir_ckpt_path(cfg->output_dir, step, path, cap);
    rc = qt_ckpt_save(path, ctx, &info, opt, err);
    free(info.config_yaml);
    if (!rc) rc = qt_run_dir_set_latest(cfg->output_dir, path, err);
    if (!rc) rc = qt_run_dir_rotate(cfg->output_dir, (int)cfg->save_total_limit, err);
    return rc;
}

static double eval_loss(qt_ctx *ctx, qt_llama *m, const qt_loader *L, qt_batch *b) {
    double sum = 0;
    int64_t count = 0;
    qt_no_grad_begin(ctx);
    for (int64_t i = 0; i < qt_loader_val_batches(L); i++) {
        qt_loader_val_batch(L, i, b);
        int64_t n = b->B * b->T, bt[2] = {b->B, b->T};
        int32_t *tg = malloc((size_t)n * sizeof *tg);
        qt_llama_shift_labels(b->labels, tg, b->B, b->T);
        for (int64_t k = 0; k < n; k++) count += tg[k] != QT_PRETOK_IGNORE;
        qt_step_reset(ctx);
        qt_tensor *ids = qt_tensor_new(ctx, QT_I32, 2, bt);
        qt_tensor *t = qt_tensor_new(ctx, QT_I32, 1, &n);
        qt_tensor_upload(ctx, ids, b->ids);
        qt_tensor_upload(ctx, t, tg);
        sum += qt_tensor_get(ctx, qt_llama_loss(ctx, m, ids, t, NULL, NULL, 1.0f), 0);
        free(tg);
    }
    qt_no_grad_end(ctx);
    return count ? sum / (double)count : -1;
}

int qt_job_run(const qt_job_opts *o, qt_job_result *res, qt_err *err) {
    memset(res, 0, sizeof *res);
    res->eval_loss = -1;
    FILE *log = o->log ? o->log : stderr;
    qt_job_config cfg;
    int rc = qt_job_config_load(&cfg, o->config_path, o->sets, o->nsets, err);
    if (rc) return rc;
    for (int i = 0; i < cfg.n_warnings; i++) fprintf(log, "qtune: warning: %s\n", cfg.warnings[i]);

    qt_ctx ctx;
    bool have_ctx = false, have_model = false, have_rows = false, have_loader = false;
    bool have_opt = false;
    qt_llama m;
    qt_pretok rows;
    qt_loader L;
    qt_adamw opt;
    qt_batch *mb = NULL;
    qt_micro_batch *mbv = NULL;
    qat_switch qs = {0};
    FILE *metrics = NULL;
    char resume_path[4200] = "", path[4300];
    qt_ckpt_info rinfo;
    bool resuming = false;

    if ((rc = qt_run_dir_make(cfg.output_dir, err))) goto done;
    const char *resume = o->resume ? o->resume : cfg.resume_from_checkpoint;
    if (resume) {
        if (!strcmp(resume, "latest"))
            rc = qt_run_dir_latest(cfg.output_dir, resume_path, sizeof resume_path, err);
        else
            snprintf(resume_path, sizeof resume_path, "%s", resume);
        if (!rc) rc = qt_ckpt_read_info(resume_path, &rinfo, err);
        if (rc) goto done;
        resuming = true;
        rc = check_resume(&cfg, rinfo.config_yaml, resume_path, log, err);
        qt_ckpt_info_free(&rinfo);
        if (rc) goto done;
    }
    snprintf(path, sizeof path, "%s/config.yaml", cfg.output_dir);
    if ((rc = qt_job_config_write(&cfg, path, err))) goto done;

    qt_model_opts mo;
    if ((rc = qt_job_config_model_opts(&cfg, &mo, err))) goto done;
    qt_device dev;
    if ((rc = qt_device_pick(o->device, &dev, err))) goto done;
    if ((rc = qt_ctx_init(&ctx, dev, (uint64_t)cfg.seed, err))) goto done;
    have_ctx = true;
    /* the CPU backend is the f32 reference: bf16 applies to the GPU */
    mo.compute = dev == QT_CUDA && qt_job_config_bf16(&cfg, true) ? QT_BF16 : QT_F32;
    if (dev == QT_CPU && cfg.bf16 == QT_BF16_TRUE)
        fprintf(log, "qtune: bf16: true has no effect on the CPU backend (it computes in f32)\n");
    if ((rc = qt_llama_load(&ctx, &m, cfg.base_model, &mo, err))) goto done;
    have_model = true;
    if ((rc = load_rows(&cfg, &m.cfg, &rows, err))) goto done;
    have_rows = true;
    if ((rc = qt_loader_init(&L, &rows, cfg.sequence_len, cfg.micro_batch_size, cfg.sample_packing,
                             cfg.val_set_size, (uint64_t)cfg.seed, err)))
        goto done;
    have_loader = true;
    if (L.dropped)
        fprintf(log, "qtune: %lld rows longer than sequence_len %lld were dropped\n",
                (long long)L.dropped, (long long)cfg.sequence_len);

    int64_t ga = cfg.gradient_accumulation_steps;
    int64_t per_epoch = (qt_loader_batches_per_epoch(&L) + ga - 1) / ga;
    int64_t total =
        cfg.max_steps > 0 ? cfg.max_steps : (int64_t)ceil(cfg.num_epochs * (double)per_epoch);
    if (total < 1) total = 1;
    int64_t warmup =
        cfg.warmup_steps > 0 ? cfg.warmup_steps : (int64_t)ceil(cfg.warmup_ratio * (double)total);
    qt_schedule sch = {.kind = (qt_sched_kind)cfg.lr_scheduler,
                       .lr = cfg.learning_rate,
                       .warmup = warmup,
                       .total = total};
    if ((rc = qt_adamw_init_bits(&opt, &ctx, m.train, m.train_decay, m.n_train, cfg.adam_beta1,
                                 cfg.adam_beta2, cfg.adam_epsilon, cfg.weight_decay,
                                 cfg.optimizer >= QT_OPTIM_ADAMW_8BIT ? 8 : 32, err)))
        goto done;
    have_opt = true;
    int64_t step = 0;
    if (resuming) {
        qt_ckpt_info info;
        if ((rc = qt_ckpt_load(resume_path, &ctx, &info, &opt, err))) goto done;
        if (strcmp(info.base_model_hash, m.identity) != 0) {
            rc = qt_err_set(err, QT_ERR_ARG,
                            "%s: was trained on base model %s (identity %s); %s is now %s",
                            resume_path, info.base_model_path, info.base_model_hash, cfg.base_model,
                            m.identity);
            qt_ckpt_info_free(&info);
            goto done;
        }
        rc = qt_loader_restore(&L, info.loader_state, info.loader_state_len, err);
        ctx.rng_offset = info.rng_offset;
        step = info.step;
        qt_ckpt_info_free(&info);
        if (rc) goto done;
        fprintf(log, "qtune: resumed from %s at step %lld\n", resume_path, (long long)step);
    }

    qs.l = calloc((size_t)(7 * m.cfg.layers), sizeof *qs.l);
    qs.wq = calloc((size_t)(7 * m.cfg.layers), sizeof *qs.wq);
    qt_llama_each_linear(&m, collect_linear, &qs);
    mb = calloc((size_t)ga, sizeof *mb);
    mbv = calloc((size_t)ga, sizeof *mbv);
    for (int64_t k = 0; k < ga; k++) qt_batch_alloc(&mb[k], cfg.micro_batch_size, cfg.sequence_len);
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg.output_dir);
    metrics = fopen(path, resuming ? "a" : "w");
    if (!metrics) {
        rc = qt_err_set(err, QT_ERR_IO, "%s: cannot write", path);
        goto done;
    }
    fprintf(log,
            "qtune: %s on %s (%s, %s): %d trainable tensors, %lld rows (%lld validation), %lld "
            "steps of %lld x %lld x %lld tokens\n",
            qt_job_adapter_name(cfg.adapter), cfg.base_model, dev == QT_CUDA ? "GPU" : "CPU",
            qt_dtype_name(mo.compute), m.n_train, (long long)L.n_train, (long long)L.n_val,
            (long long)total, (long long)ga, (long long)cfg.micro_batch_size,
            (long long)cfg.sequence_len);

    double t0 = now_s(), t_log = t0, tok_log = 0;
    int64_t steps_here = 0, saved_step = resuming ? step : -1;
    while (step < total) {
        if (o->stop && *o->stop) {
            res->stopped = true;
            break;
        }
        qat_enable(&qs, step >= cfg.qat.start_step);
        int64_t tokens = 0;
        for (int64_t k = 0; k < ga; k++) {
            qt_loader_next(&L, &mb[k], NULL);
            mbv[k] = (qt_micro_batch){.B = mb[k].B,
                                      .T = mb[k].T,
                                      .ids = mb[k].ids,
                                      .labels = mb[k].labels,
                                      .pos = mb[k].pos,
                                      .doc = mb[k].doc};
            tokens += mb[k].tokens;
        }
        qt_step_stats st;
        qt_train_opts to = {.max_grad_norm = cfg.max_grad_norm,
                            .optimizer_in_bwd = cfg.optimizer_in_bwd};
        if ((rc = qt_train_step_opts(&ctx, &m, &opt, &sch, mbv, (int)ga, &to, &st, err))) goto done;
        step++, steps_here++;
        tok_log += (double)tokens;
        res->last_loss = st.loss;
        double t = now_s();
        double tps = tok_log / fmax(t - t_log, 1e-9);
        double eta = (t - t0) / (double)steps_here * (double)(total - step);
        fprintf(metrics,
                "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, "
                "\"tokens\": %lld, \"tokens_per_s\": %.1f, \"epoch\": %lld}\n",
                (long long)step, st.loss, st.lr, st.grad_norm, (long long)tokens, tps,
                (long long)L.epoch);
        fflush(metrics);
        if (step % cfg.logging_steps == 0 || step == total || o->live) {
            char eb[48];
            fmt_time(eta, eb, sizeof eb);
            double mem =
                (double)(ctx.persist_bytes + ctx.data.high_water + ctx.grad_arena.high_water) /
                (1 << 20);
            fprintf(log, "%sstep %lld/%lld  loss %.4f  lr %.3g  %.0f tok/s  ETA %s  mem %.0f MiB%s",
                    o->live ? "\r" : "", (long long)step, (long long)total, st.loss, st.lr, tps, eb,
                    mem, o->live ? "\033[K" : "\n");
            fflush(log);
            t_log = t, tok_log = 0;
        }
        if (cfg.eval_steps > 0 && L.n_val && step % cfg.eval_steps == 0) {
            res->eval_loss = eval_loss(&ctx, &m, &L, &mb[0]);
            fprintf(log, "%seval step %lld: loss %.4f\n", o->live ? "\n" : "", (long long)step,
                    res->eval_loss);
            fprintf(metrics, "{\"step\": %lld, \"eval_loss\": %.6f}\n", (long long)step,
                    res->eval_loss);
            fflush(metrics);
        }
        bool stop_now =
            (o->stop && *o->stop) || (o->stop_after_steps > 0 && steps_here >= o->stop_after_steps);
        if ((cfg.save_steps > 0 && step % cfg.save_steps == 0) || step == total || stop_now) {
            if ((rc = save_ckpt(&ctx, &m, &opt, &cfg, &mo, &sch, &L, step, res->last_checkpoint,
                                sizeof res->last_checkpoint, err)))
                goto done;
            saved_step = step;
            if (o->live) fprintf(log, "\n");
            fprintf(log, "qtune: saved %s\n", res->last_checkpoint);
        }
        if (stop_now) {
            res->stopped = true;
            break;
        }
    }
    if (res->stopped && saved_step != step) {
        rc = save_ckpt(&ctx, &m, &opt, &cfg, &mo, &sch, &L, step, res->last_checkpoint,
                       sizeof res->last_checkpoint, err);
        if (!rc) fprintf(log, "qtune: stopped; saved %s\n", res->last_checkpoint);
    }
    res->steps_done = step, res->total_steps = total;
done:
    if (metrics) fclose(metrics);
    for (int64_t k = 0; mb && k < cfg.gradient_accumulation_steps; k++) qt_batch_free(&mb[k]);
    free(mb), free(mbv), free(qs.l), free(qs.wq);
    if (have_opt) qt_adamw_free(&opt);
    if (have_loader) qt_loader_free(&L);
    if (have_rows) qt_pretok_free(&rows);
    if (have_model) qt_llama_free(&m);
    if (have_ctx) qt_ctx_free(&ctx);
    qt_job_config_free(&cfg);
    return rc;
}
