/* run_dir.h - a run's output directory: checkpoint-<step>.h5 files, the `latest` pointer (a
 * small text file naming the newest complete checkpoint, replaced atomically), the
 * save_total_limit rotation, resolving `--resume latest`; and the whole-file read and atomic
 * write the run's other files use. */
#ifndef QT_RUN_DIR_H
#define QT_RUN_DIR_H

#include <stdint.h>

#include "autograd/check.h"

/* Creates dir (and parents) if needed. */
int qt_run_dir_make(const char *dir, qt_err *err);
/* dir/checkpoint-<step>.h5 */
void qt_run_dir_ckpt_path(const char *dir, int64_t step, char *out, size_t cap);
/* Points dir/latest at the checkpoint file (its base name), atomically. */
int qt_run_dir_set_latest(const char *dir, const char *ckpt_path, qt_err *err);
/* The checkpoint `latest` names, as a path. */
int qt_run_dir_latest(const char *dir, char *out, size_t cap, qt_err *err);
/* Deletes the oldest checkpoint-<step>.h5 files beyond limit (limit <= 0: keep all); never the
 * one `latest` names. */
int qt_run_dir_rotate(const char *dir, int limit, qt_err *err);
/* The whole file, NUL-terminated (malloc'd; *len its size when len is not NULL), or NULL with
 * errno set when it cannot be read. */
char *qt_read_file(const char *path, size_t *len);
/* Writes text to dir/name atomically (tmp, fsync, rename, fsync dir). */
int qt_write_file_atomic(const char *path, const char *text, size_t len, qt_err *err);

#endif
