/* test_train_toy.c - a 2-layer byte-level Llama learns: over 60 Adam steps on
 * the built-in text the mean loss of the last 10 steps must fall below 60% of
 * the first step's loss (which starts near ln 256 = 5.55). Run with and without
 * checkpointing: the losses must be bit-identical. */
#include <stdio.h>

#include "qt_test.h"
#include "train/toy.h"

int main(void) {
    qt_toy_opts o = qt_toy_defaults();
    o.steps = 60;
    float a[60], b[60];
    qt_err err = {0};
    QT_EXPECT(qt_toy_train(&o, QT_CPU, a, &err) == 0, "toy train: %s", err.msg);
    double last = 0;
    for (int i = 50; i < 60; i++) last += a[i] / 10.0;
    printf("toy: first loss %.4f, mean of last 10 %.4f\n", a[0], last);
    QT_EXPECT(a[0] > 5.0f && a[0] < 6.0f, "initial loss %.4f near ln 256", a[0]);
    QT_EXPECT(last < 0.6 * a[0], "loss fell from %.4f to %.4f (needs < 60%%)", a[0], last);

    o.checkpoint = 0;
    o.steps = 8;
    QT_EXPECT(qt_toy_train(&o, QT_CPU, b, &err) == 0, "toy train: %s", err.msg);
    QT_EXPECT(!memcmp(a, b, 8 * sizeof(float)), "checkpointing does not change the losses");

    o.steps = 8;
    o.dropout = 0.1f;
    o.checkpoint = 1;
    float c[8], d[8];
    qt_toy_train(&o, QT_CPU, c, &err);
    o.checkpoint = 0;
    qt_toy_train(&o, QT_CPU, d, &err);
    QT_EXPECT(!memcmp(c, d, sizeof c), "with dropout, the replay reproduces the same masks");
    return qt_test_finish("train_toy");
}
