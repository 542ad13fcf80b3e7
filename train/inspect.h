/* inspect.h - `qtune inspect FILE`: what is in a safetensors file (tensors, dtypes, shapes,
 * parameter count, metadata, bitsandbytes NF4 weights), a qtune checkpoint (format, step, base
 * model, trainable tensors, the config it was trained with), a GGUF file (metadata, tensors
 * and their ggml types), or a Hugging Face model directory (its config and weights). */
#ifndef QT_INSPECT_H
#define QT_INSPECT_H

#include <stdio.h>

#include "autograd/check.h"

int qt_inspect(const char *path, FILE *out, qt_err *err);

#endif
