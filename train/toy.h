/* toy.h - a tiny byte-level Llama-shaped model trained from scratch on a built-in text: the
 * smoke test of the whole autograd stack (every op of a Llama block, checkpointing, the tape)
 * and what `qtune toy` runs until the real demo job exists. */
#ifndef QT_TOY_H
#define QT_TOY_H

#include <stdint.h>
#include <stdio.h>

#include "autograd/context.h"

typedef struct {
    int steps;      /* optimizer steps */
    int batch, seq; /* sequences per step, tokens per sequence */
    int dim, layers, heads, kv_heads, ffn;
    float lr;
    float dropout;
    int checkpoint; /* checkpoint every block */
    uint64_t seed;
    FILE *log; /* progress lines, or NULL */
} qt_toy_opts;

qt_toy_opts qt_toy_defaults(void);

/* Trains and fills losses[0..steps-1] (the training loss of each step). */
int qt_toy_train(const qt_toy_opts *o, qt_device dev, float *losses, qt_err *err);

#endif
