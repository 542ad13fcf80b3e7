/* main.c - the qtune command line. Library code returns errors; this is the
 * only place that decides exit codes: 0 success, 1 a run failed (message on
 * stderr), 2 bad usage. Subcommands arrive with their issues (train, eval,
 * export, generate, inspect, plan); today: `toy`, a tiny from-scratch training
 * run that shows the whole stack working. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/toy.h"

#define QT_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f, "usage: qtune <command> [options]\n"
               "\n"
               "commands:\n"
               "  toy       train a tiny byte-level Llama from scratch on a "
               "built-in text\n"
               "  version   print the version\n"
               "\n"
               "`qtune <command> --help` describes a command. Exit codes: 0 "
               "success, 1 the run\n"
               "failed, 2 bad usage.\n");
}

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
            d.layers, d.dim, d.heads, d.kv_heads, d.steps);
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

static int cmd_toy(int argc, char **argv) {
    qt_toy_opts o = qt_toy_defaults();
    o.steps = 200;
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
    fprintf(stderr, "qtune: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
