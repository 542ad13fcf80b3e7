/* job.h - `qtune train`: one training run from a job file, start to finish. The resolved config
 * goes to output_dir/config.yaml; the model is loaded in the job's mode; the datasets become
 * token rows, then micro-batches (data/loader.h); each optimizer step accumulates
 * gradient_accumulation_steps micro-batches (train/trainer.h); a progress line and
 * output_dir/metrics.jsonl report loss, learning rate, tokens/s, ETA and memory; validation
 * loss at eval_steps; checkpoints at save_steps, at the end, and when a stop is requested
 * (SIGINT/SIGTERM: the CLI sets the flag), rotated by save_total_limit, `latest` updated.
 * Resuming (--resume FILE|latest or resume_from_checkpoint) continues the exact run; a config
 * change that would make it a different run is refused, harmless ones are reported. */
#ifndef QT_JOB_H
#define QT_JOB_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/check.h"

typedef struct {
    const char *config_path;
    const char *const *sets; /* "key=value" overrides */
    int nsets;
    const char *resume;          /* a checkpoint path, "latest", or NULL (then the config's) */
    const char *device;          /* "auto" (NULL too), "cpu" or "cuda" */
    FILE *log;                   /* progress and messages (stderr) */
    bool live;                   /* rewrite one progress line in place (a terminal) */
    volatile sig_atomic_t *stop; /* set asynchronously to save and stop; may be NULL */
    int64_t stop_after_steps;    /* > 0: stop (with a checkpoint) after this many steps of this
                                    process (tests of resuming) */
} qt_job_opts;

typedef struct {
    int64_t steps_done, total_steps;
    double last_loss, eval_loss; /* eval_loss < 0: not evaluated */
    bool stopped;                /* stopped early by request */
    char last_checkpoint[4200];
} qt_job_result;

int qt_job_run(const qt_job_opts *o, qt_job_result *res, qt_err *err);

#endif
