/* main.c - the qtune command line. Library code returns errors; this is the
 * only place that decides exit codes: 0 success, 1 a run failed (message on
 * stderr), 2 bad usage. Subcommands arrive with their issues (train, eval,
 * export, generate, inspect, plan); today: `toy`, a tiny from-scratch training
 * run that shows the whole stack working, and `eval`, the loss and perplexity of
 * a Hugging Face model on a pre-tokenized dataset. docs/CLI.md lists them. */
#define _POSIX_C_SOURCE 200809L /* stat */
#include <math.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/pretokenized.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"
#include "train/eval.h"
#include "train/export.h"
#include "train/hf_model.h"
#include "train/inspect.h"
#include "data/datasets.h"
#include "train/generate.h"
#include "train/gguf_model.h"
#include "train/job.h"
#include "train/plan.h"
#include "train/toy.h"

#define QT_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f, "usage: qtune <command> [options]\n"
               "\n"
               "commands:\n"
               "  train     run a training job (YAML): LoRA, QLoRA, QAT or full\n"
               "  plan      the memory a job needs, before running it\n"
               "  generate  continue a prompt with a model (greedy or sampled)\n"
               "  toy       train a tiny byte-level Llama from scratch on a "
               "built-in text\n"
               "  eval      loss and perplexity of a model on a pre-tokenized "
               "dataset\n"
               "  inspect   what is in a safetensors / checkpoint / GGUF file or model dir\n"
               "  tokenize  text to token ids and back with a tokenizer.json\n"
               "  export    write a checkpoint as a HF model, bnb-nf4 model or PEFT adapter\n"
               "  version   print the version\n"
               "\n"
               "`qtune <command> --help` describes a command. Exit codes: 0 "
               "success, 1 the run\n"
               "failed, 2 bad usage.\n");
}

#define QT_TOY_STEPS 200 /* the CLI's default: enough steps to see the loss fall */

static void toy_usage(FILE *f) {
    qt_toy_opts d = qt_toy_defaults();
    fprintf(f,
            "usage: qtune toy [--steps N] [--seed N] [--lr X] [--dropout P] "
            "[--no-checkpoint]\n"
            "                 [--device cpu|cuda]\n"
            "Trains a %d-layer byte-level Llama (dim %d, %d heads, %d kv heads) "
            "for --steps\n"
            "Adam steps (default %d) on windows of a public-domain text and "
            "prints the loss\n"
            "of every step. The loss falls from ~ln(256) = 5.5 as the model "
            "learns.\n",
            d.layers, d.dim, d.heads, d.kv_heads, QT_TOY_STEPS);
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < lo || x > hi) {
        fprintf(stderr, "qtune: %s needs an integer in [%ld, %ld], got '%s'\n", flag, lo, hi,
                v ? v : "");
        return 0;
    }
    *out = x;
    return 1;
}

static int parse_float(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "qtune: %s needs a number in [%g, %g], got '%s'\n", flag, lo, hi,
                v ? v : "");
        return 0;
    }
    *out = x;
    return 1;
}

/* --device's default: $QTUNE_DEVICE, else auto */
static const char *default_device(void) {
    const char *e = getenv("QTUNE_DEVICE");
    return e && e[0] ? e : "auto";
}

/* a context on the device a --device value names (auto: the GPU when one is usable) */
static int open_ctx(const char *cmd, const char *device, qt_ctx *ctx) {
    qt_err err = {0};
    if (!device) device = default_device();
    qt_device dev;
    if (qt_device_pick(device, &dev, &err) != 0 || qt_ctx_init(ctx, dev, 0, &err) != 0) {
        fprintf(stderr, "qtune %s: %s\n", cmd, err.msg);
        return 1;
    }
    return 0;
}

static int cmd_toy(int argc, char **argv) {
    qt_toy_opts o = qt_toy_defaults();
    o.steps = QT_TOY_STEPS;
    o.log = stdout;
    qt_device dev = QT_CPU;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        double x;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            toy_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--steps")) {
            if (!parse_int(a, v, 1, 1000000, &n)) return 2;
            o.steps = (int)n, i++;
        } else if (!strcmp(a, "--seed")) {
            if (!parse_int(a, v, 0, 0x7fffffffL, &n)) return 2;
            o.seed = (uint64_t)n, i++;
        } else if (!strcmp(a, "--lr")) {
            if (!parse_float(a, v, 0, 1, &x)) return 2;
            o.lr = (float)x, i++;
        } else if (!strcmp(a, "--dropout")) {
            if (!parse_float(a, v, 0, 0.99, &x)) return 2;
            o.dropout = (float)x, i++;
        } else if (!strcmp(a, "--no-checkpoint")) {
            o.checkpoint = 0;
        } else if (!strcmp(a, "--device")) {
            if (v && !strcmp(v, "cpu"))
                dev = QT_CPU;
            else if (v && !strcmp(v, "cuda"))
                dev = QT_CUDA;
            else {
                fprintf(stderr, "qtune: --device must be cpu or cuda, got '%s'\n", v ? v : "");
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "qtune toy: unknown option '%s' (see qtune toy --help)\n", a);
            return 2;
        }
    }
    float *losses = malloc((size_t)o.steps * sizeof *losses);
    qt_err err = {0};
    int rc = qt_toy_train(&o, dev, losses, &err);
    if (rc) {
        fprintf(stderr, "qtune toy: %s\n", err.msg);
        free(losses);
        return 1;
    }
    printf("loss: first step %.4f, last step %.4f\n", losses[0], losses[o.steps - 1]);
    free(losses);
    return 0;
}

#define QT_EVAL_MAX_TOKENS 4096

static void eval_usage(FILE *f) {
    fprintf(f,
            "usage: qtune eval MODEL --data FILE [--json] [--max-tokens N] [--device D]\n"
            "Mean next-token loss and perplexity of MODEL, a Hugging Face model "
            "directory\n"
            "(config.json + safetensors), a GGUF file (F16/BF16/F32, Q8_0, Q4_0, Q4_1, Q4_K,\n"
            "Q6_K tensors dequantized to f32) or a qtune checkpoint (.h5: its base model with\n"
            "its trained tensors), on FILE, a pre-tokenized JSONL dataset: one\n"
            "{\"input_ids\": [...]} per line, with optional \"labels\" of the "
            "same length\n"
            "(-100 = not scored; without labels the input_ids are the labels). "
            "Each row is\n"
            "its own sequence; the loss is token-weighted over all rows, as "
            "transformers\n"
            "computes it.\n"
            "  --data FILE      the dataset (required)\n"
            "  --json           print one JSON line: loss, perplexity, tokens, "
            "rows\n"
            "  --max-tokens N   rows are packed into batches of at most N tokens "
            "(default\n"
            "                   %d); a longer row is an error. Changes speed "
            "and memory,\n"
            "                   not the result.\n"
            "  --device D       auto (default: the GPU when one is usable, bf16), cpu (the\n"
            "                   f32 reference) or cuda\n",
            QT_EVAL_MAX_TOKENS);
}

/* a figure for JSON: NaN and infinity have no JSON spelling */
static void json_num(const char *key, double x, const char *sep) {
    if (isfinite(x))
        printf("\"%s\": %.9g%s", key, x, sep);
    else
        printf("\"%s\": null%s", key, sep);
}

static int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *device = NULL;
    int json = 0;
    long max_tokens = QT_EVAL_MAX_TOKENS;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            eval_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--data")) {
            if (!v) {
                fprintf(stderr, "qtune eval: --data needs a file\n");
                return 2;
            }
            data = v, i++;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--device") && v) {
            device = v, i++;
        } else if (!strcmp(a, "--max-tokens")) {
            if (!parse_int(a, v, 1, 0x7fffffffL, &max_tokens)) return 2;
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qtune eval: unknown option '%s' (see qtune eval --help)\n", a);
            return 2;
        } else if (model) {
            fprintf(stderr, "qtune eval: one MODEL only, got '%s' and '%s'\n", model, a);
            return 2;
        } else {
            model = a;
        }
    }
    if (!model || !data) {
        fprintf(stderr, "qtune eval: %s\n", !model ? "MODEL is missing" : "--data FILE is missing");
        eval_usage(stderr);
        return 2;
    }
    /* the model first (its vocabulary checks the data), then the data */
    qt_err err = {0};
    qt_ctx ctx;
    if (open_ctx("eval", device, &ctx)) return 1;
    qt_llama m;
    char base[4096];
    if (qt_model_open(&ctx, &m, model, base, sizeof base, &err) != 0) {
        fprintf(stderr, "qtune eval: %s\n", err.msg);
        qt_ctx_free(&ctx);
        return 1;
    }
    qt_pretok ds;
    if (qt_pretok_load(&ds, data, m.cfg.vocab, &err) != 0) {
        fprintf(stderr, "qtune eval: %s\n", err.msg);
        qt_llama_free(&m);
        qt_ctx_free(&ctx);
        return 1;
    }
    qt_eval_result r;
    int rc = qt_eval_loss(&ctx, &m, &ds, max_tokens, &r, &err);
    qt_llama_free(&m);
    qt_ctx_free(&ctx);
    qt_pretok_free(&ds);
    if (rc) {
        fprintf(stderr, "qtune eval: %s\n", err.msg);
        return 1;
    }
    if (json) {
        printf("{");
        json_num("loss", r.loss, ", ");
        json_num("perplexity", r.perplexity, ", ");
        printf("\"tokens\": %lld, \"rows\": %lld}\n", (long long)r.tokens, (long long)r.rows);
    } else {
        printf("loss %.4f perplexity %.1f tokens %lld rows %lld\n", r.loss, r.perplexity,
               (long long)r.tokens, (long long)r.rows);
    }
    return 0;
}

static int cmd_inspect(int argc, char **argv) {
    if (argc == 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
        printf("usage: qtune inspect FILE|DIR\n"
               "Shows what is in a safetensors file, a qtune checkpoint (.h5), a GGUF file, or a\n"
               "Hugging Face model directory: metadata, tensors, dtypes and shapes.\n");
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: qtune inspect FILE|DIR (see qtune inspect --help)\n");
        return 2;
    }
    qt_err err = {0};
    if (qt_inspect(argv[0], stdout, &err) != 0) {
        fprintf(stderr, "qtune inspect: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static void export_usage(FILE *f) {
    fprintf(f,
            "usage: qtune export MODEL --format FORMAT --out PATH [--shard-size BYTES]\n"
            "                    [--no-tokenizer]\n"
            "Writes MODEL (a qtune checkpoint, or a Hugging Face directory) for other tools:\n"
            "  hf        Hugging Face directory, LoRA merged, bf16 safetensors\n"
            "  bnb-nf4   the same with the linear layers in bitsandbytes NF4 + double quant\n"
            "  peft      the LoRA adapter alone (adapter_config.json + safetensors)\n"
            "  gguf-f16, gguf-q8_0, gguf-q4_0, gguf-q4_k_m\n"
            "            one GGUF file for llama.cpp (its tensor names, metadata, tokenizer and\n"
            "            llama-quantize's choice of type per tensor; docs/EXPORT.md)\n"
            "LoRA is merged onto the weights it was trained against (dequantized NF4 for\n"
            "QLoRA). The merge report goes to stderr. --shard-size splits the weights into\n"
            "files of at most BYTES (default 5e9, as transformers does). GGUF files carry the\n"
            "base model's tokenizer.json; --no-tokenizer writes them without a vocabulary.\n");
}

static int cmd_export(int argc, char **argv) {
    const char *model = NULL, *fmt = NULL, *out = NULL;
    double shard = 0;
    bool no_tokenizer = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            export_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--format") && v) {
            fmt = v, i++;
        } else if (!strcmp(a, "--out") && v) {
            out = v, i++;
        } else if (!strcmp(a, "--shard-size")) {
            if (!parse_float(a, v, 1024, 1e15, &shard)) return 2;
            i++;
        } else if (!strcmp(a, "--no-tokenizer")) {
            no_tokenizer = true;
        } else if (a[0] == '-') {
            fprintf(stderr, "qtune export: unknown or incomplete option '%s'\n", a);
            return 2;
        } else if (model) {
            fprintf(stderr, "qtune export: one MODEL only\n");
            return 2;
        } else {
            model = a;
        }
    }
    qt_export_opts o = {.out = out,
                        .shard_bytes = (size_t)shard,
                        .report = stderr,
                        .gguf_no_tokenizer = no_tokenizer};
    if (!model || !fmt || !out || qt_export_format_parse(fmt, &o.format) != 0) {
        fprintf(stderr, "qtune export: %s\n",
                !model ? "MODEL is missing"
                : !fmt ? "--format is missing"
                : !out ? "--out is missing"
                       : "--format must be hf, bnb-nf4, peft, gguf-f16, gguf-q8_0, gguf-q4_0 "
                         "or gguf-q4_k_m");
        export_usage(stderr);
        return 2;
    }
    qt_err err = {0};
    qt_ctx ctx;
    if (qt_ctx_init(&ctx, QT_CPU, 0, &err) != 0) {
        fprintf(stderr, "qtune export: %s\n", err.msg);
        return 1;
    }
    qt_llama m;
    char base[4096];
    int rc = qt_model_open(&ctx, &m, model, base, sizeof base, &err);
    if (!rc) {
        o.base_dir = base;
        struct stat st;
        if (stat(model, &st) == 0 && !S_ISDIR(st.st_mode)) { /* the adapter's settings */
            qt_ckpt_info info;
            if (qt_ckpt_read_info(model, &info, &err) == 0) {
                o.lora_r = info.opts.lora_r, o.lora_alpha = info.opts.lora_alpha;
                o.lora_dropout = info.opts.lora_dropout, o.rslora = info.opts.rslora;
                o.lora_targets = info.opts.lora_targets;
                qt_ckpt_info_free(&info);
            }
        }
        rc = qt_export(&ctx, &m, &o, &err);
        qt_llama_free(&m);
    }
    qt_ctx_free(&ctx);
    if (rc) {
        fprintf(stderr, "qtune export: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "qtune export: wrote %s (%s)\n", out, fmt);
    return 0;
}

/* The one global of qtune: a signal handler can reach nothing else. The trainer polls it
 * between steps, saves a checkpoint and returns. */
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void train_usage(FILE *f) {
    fprintf(f, "usage: qtune train JOB.yaml [--set key=value]... [--resume FILE|latest]\n"
               "                   [--device auto|cpu|cuda]\n"
               "Runs the training job: the resolved config, checkpoints (checkpoint-<step>.h5,\n"
               "`latest`) and metrics.jsonl go to output_dir. --set overrides a key of the job\n"
               "file (qat.weight_format=q4_0 for the qat block). --resume continues a run exactly\n"
               "from a checkpoint (or output_dir's latest). Ctrl-C (SIGINT) or SIGTERM saves a\n"
               "checkpoint and stops; run the same command with --resume latest to go on.\n"
               "--device: auto (default, or $QTUNE_DEVICE) trains on the GPU when one is usable\n"
               "(bf16 compute, fp32 trainable tensors and optimizer), else on the CPU (the f32\n"
               "reference).\n");
}

static int cmd_train(int argc, char **argv) {
    const char *cfg = NULL, *resume = NULL, *device = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int nsets = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            train_usage(stdout);
            free(sets);
            return 0;
        } else if (!strcmp(a, "--set") && v) {
            sets[nsets++] = v, i++;
        } else if (!strncmp(a, "--set=", 6)) {
            sets[nsets++] = a + 6;
        } else if (!strcmp(a, "--resume") && v) {
            resume = v, i++;
        } else if (!strcmp(a, "--device") && v) {
            device = v, i++;
        } else if (a[0] == '-') {
            fprintf(stderr, "qtune train: unknown or incomplete option '%s' (see --help)\n", a);
            free(sets);
            return 2;
        } else if (cfg) {
            fprintf(stderr, "qtune train: one job file only\n");
            free(sets);
            return 2;
        } else {
            cfg = a;
        }
    }
    if (!cfg) {
        train_usage(stderr);
        free(sets);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *stop_env = getenv("QTUNE_STOP_AFTER_STEPS"); /* tests of resuming */
    qt_job_opts o = {.config_path = cfg,
                     .sets = sets,
                     .nsets = nsets,
                     .resume = resume,
                     .device = device ? device : default_device(),
                     .log = stderr,
                     .live = isatty(fileno(stderr)),
                     .stop = &stop_requested,
                     .stop_after_steps = stop_env ? atoll(stop_env) : 0};
    qt_job_result r;
    qt_err err = {0};
    int rc = qt_job_run(&o, &r, &err);
    free(sets);
    if (rc) {
        fprintf(stderr, "qtune train: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "qtune train: %s at step %lld/%lld, loss %.4f%s\n",
            r.stopped ? "stopped" : "done", (long long)r.steps_done, (long long)r.total_steps,
            r.last_loss, r.last_checkpoint[0] ? "" : " (no checkpoint)");
    return 0;
}

static int cmd_plan(int argc, char **argv) {
    const char *cfg = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int nsets = 0;
    qt_device dev = QT_CUDA;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: qtune plan JOB.yaml [--set key=value]... [--device cuda|cpu]\n"
                   "The memory the job needs, from its config and the model's config.json (no\n"
                   "weights are read): frozen base, trainable tensors with gradients, masters and\n"
                   "AdamW moments (exact), and the step's activations (an estimate). --device\n"
                   "picks the storage: cuda (bf16, the default) or cpu (f32).\n");
            free(sets);
            return 0;
        } else if (!strcmp(a, "--set") && v) {
            sets[nsets++] = v, i++;
        } else if (!strcmp(a, "--device") && v && (!strcmp(v, "cpu") || !strcmp(v, "cuda"))) {
            dev = strcmp(v, "cpu") ? QT_CUDA : QT_CPU, i++;
        } else if (a[0] == '-' || cfg) {
            fprintf(stderr, "qtune plan: unexpected '%s' (see qtune plan --help)\n", a);
            free(sets);
            return 2;
        } else {
            cfg = a;
        }
    }
    if (!cfg) {
        fprintf(stderr, "usage: qtune plan JOB.yaml (see qtune plan --help)\n");
        free(sets);
        return 2;
    }
    qt_err err = {0};
    qt_job_config job;
    int rc = qt_job_config_load(&job, cfg, sets, nsets, &err);
    free(sets);
    if (rc) {
        fprintf(stderr, "qtune plan: %s\n", err.msg);
        return 1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", job.base_model);
    qt_model_config mc;
    qt_plan p;
    rc = qt_model_config_load(&mc, path, &err);
    if (!rc) rc = qt_plan_make(&job, &mc, dev, &p, &err);
    if (!rc) qt_plan_print(&job, &mc, dev, &p, stdout);
    qt_job_config_free(&job);
    if (rc) {
        fprintf(stderr, "qtune plan: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static void tokenize_usage(FILE *f) {
    fprintf(f, "usage: qtune tokenize --tokenizer FILE [--jsonl] [--decode] [--no-special]\n"
               "Runs a Hugging Face tokenizer.json (BPE: GPT-2, Llama 2/3, Mistral styles)\n"
               "on standard input with the tokenizers library's results. FILE may be a model\n"
               "directory holding tokenizer.json.\n"
               "  (default)     the whole input is one text; prints its ids as a JSON array\n"
               "  --jsonl       each input line is a JSON string; prints one array per line\n"
               "  --decode      the other way: a JSON array of ids in (one per line with\n"
               "                --jsonl), the text out (a JSON string per line with --jsonl)\n"
               "  --no-special  encode without the tokens the post-processor adds (BOS);\n"
               "                decode leaving special tokens out\n");
}

static int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL;
    qt_tok_cli_opts o = {.add_special = true};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "qtune tokenize: --tokenizer needs a file\n");
                return 2;
            }
            path = argv[++i];
        } else if (!strcmp(a, "--jsonl")) {
            o.jsonl = true;
        } else if (!strcmp(a, "--decode")) {
            o.decode = true;
        } else if (!strcmp(a, "--no-special")) {
            o.add_special = false, o.skip_special = true;
        } else {
            fprintf(stderr, "qtune tokenize: unknown option '%s' (see qtune tokenize --help)\n", a);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "qtune tokenize: --tokenizer FILE is missing\n");
        tokenize_usage(stderr);
        return 2;
    }
    char file[4096];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
        path = file;
    }
    qt_tok *t;
    qt_err err = {0};
    if (qt_tok_load(&t, path, &err)) {
        fprintf(stderr, "qtune tokenize: %s\n", err.msg);
        return 1;
    }
    int rc = qt_tok_cli_run(t, &o, stdin, "<stdin>", stdout, &err);
    qt_tok_free(t);
    if (rc) {
        fprintf(stderr, "qtune tokenize: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static void generate_usage(FILE *f) {
    fprintf(f, "usage: qtune generate MODEL --prompt TEXT [--chat [auto|llama3|chatml|llama2]]\n"
               "                      [--max-new-tokens N] [--temperature T] [--top-p P] "
               "[--seed N] [--device D]\n"
               "Continues TEXT with MODEL (a Hugging Face directory, a GGUF file or a qtune\n"
               "checkpoint; the tokenizer is the base model's tokenizer.json or the GGUF's own)\n"
               "and prints the new text as it comes. --chat wraps the prompt as a user turn of\n"
               "the chat template (auto: the one tokenizer_config.json or the GGUF names). Greedy "
               "by default (--temperature 0); with a\n"
               "temperature, samples from the top-p nucleus (default 0.9). Defaults: 128 new\n"
               "tokens, seed 0. --device: auto (default: the GPU when one is usable), cpu or\n"
               "cuda.\n");
}

static int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *chat = NULL, *device = NULL;
    qt_gen_opts o = {.chat = -1, .max_new_tokens = 128, .top_p = 0.9, .stream = stdout};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        double x;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--prompt") && v) {
            o.prompt = v, i++;
        } else if (!strcmp(a, "--chat")) {
            chat = v && v[0] != '-' ? (i++, v) : "auto";
        } else if (!strcmp(a, "--max-new-tokens")) {
            if (!parse_int(a, v, 1, 100000, &n)) return 2;
            o.max_new_tokens = (int)n, i++;
        } else if (!strcmp(a, "--temperature")) {
            if (!parse_float(a, v, 0, 100, &x)) return 2;
            o.temperature = x, i++;
        } else if (!strcmp(a, "--top-p")) {
            if (!parse_float(a, v, 0.0001, 1, &x)) return 2;
            o.top_p = x, i++;
        } else if (!strcmp(a, "--seed")) {
            if (!parse_int(a, v, 0, 0x7fffffffL, &n)) return 2;
            o.seed = (uint64_t)n, i++;
        } else if (!strcmp(a, "--device") && v) {
            device = v, i++;
        } else if (a[0] == '-' || model) {
            fprintf(stderr, "qtune generate: unexpected '%s' (see qtune generate --help)\n", a);
            return 2;
        } else {
            model = a;
        }
    }
    if (!model || !o.prompt) {
        generate_usage(stderr);
        return 2;
    }
    if (chat && strcmp(chat, "auto") && strcmp(chat, "llama3") && strcmp(chat, "chatml") &&
        strcmp(chat, "llama2")) {
        fprintf(stderr, "qtune generate: --chat takes auto, llama3, chatml or llama2\n");
        return 2;
    }
    qt_err err = {0};
    qt_ctx ctx;
    if (open_ctx("generate", device, &ctx)) return 1;
    qt_llama m;
    char base[4096], path[4200];
    int rc = qt_model_open(&ctx, &m, model, base, sizeof base, &err);
    qt_tok *tok = NULL;
    if (!rc) {
        rc = qt_model_tokenizer(&tok, base, &err); /* tokenizer.json, or a GGUF's own */
        if (rc) qt_llama_free(&m);
    }
    if (!rc && chat) {
        if (!strcmp(chat, "llama3"))
            o.chat = QT_TEMPLATE_LLAMA3;
        else if (!strcmp(chat, "chatml"))
            o.chat = QT_TEMPLATE_CHATML;
        else if (!strcmp(chat, "llama2"))
            o.chat = QT_TEMPLATE_LLAMA2;
        else {
            char *text = qt_model_chat_text(base, path, sizeof path);
            o.chat = text ? qt_chat_template_detect(text) : -1;
            free(text);
            if (o.chat < 0) {
                rc = qt_err_set(&err, QT_ERR_ARG,
                                "%s: no llama3, chatml or llama2 chat template: name one with "
                                "--chat",
                                path);
                qt_llama_free(&m);
            }
        }
    }
    if (!rc) {
        char *out = NULL;
        rc = qt_generate(&ctx, &m, tok, &o, &out, NULL, NULL, &err);
        if (!rc) printf("\n");
        free(out);
        qt_llama_free(&m);
    }
    qt_tok_free(tok);
    qt_ctx_free(&ctx);
    if (rc) {
        fprintf(stderr, "qtune generate: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("qtune %s\n", QT_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "toy")) return cmd_toy(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(cmd, "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "plan")) return cmd_plan(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    fprintf(stderr, "qtune: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
