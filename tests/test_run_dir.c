/* test_run_dir.c - the run directory: nested creation, the `latest` pointer written
 * atomically and read back, save_total_limit rotation that keeps the newest checkpoints and
 * never the one `latest` names, and clear errors for a missing or bad pointer. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

#include "qt_test.h"
#include "train/run_dir.h"

static int exists(const char *p) {
    return access(p, F_OK) == 0;
}

int main(void) {
    char dir[256], p[4200], got[4200];
    qt_err err = {0};
    snprintf(dir, sizeof dir, "/tmp/qt_run_dir.%ld/a/b", (long)getpid());
    QT_EXPECT(qt_run_dir_make(dir, &err) == 0, "make nested: %s", err.msg);
    QT_EXPECT(qt_run_dir_latest(dir, got, sizeof got, &err) != 0 && strstr(err.msg, "latest"),
              "no pointer yet: %s", err.msg);
    for (int s = 1; s <= 5; s++) {
        qt_run_dir_ckpt_path(dir, s * 10, p, sizeof p);
        QT_EXPECT(qt_write_file_atomic(p, "x", 1, &err) == 0, "write %s", p);
    }
    qt_run_dir_ckpt_path(dir, 20, p, sizeof p);
    QT_EXPECT(qt_run_dir_set_latest(dir, p, &err) == 0, "set latest: %s", err.msg);
    QT_EXPECT(qt_run_dir_latest(dir, got, sizeof got, &err) == 0 && !strcmp(got, p),
              "latest reads back (%s)", got);
    QT_EXPECT(qt_run_dir_rotate(dir, 2, &err) == 0, "rotate: %s", err.msg);
    int keep[6] = {0, 0, 1, 0, 1, 1}; /* 20 (latest), 40, 50 */
    for (int s = 1; s <= 5; s++) {
        qt_run_dir_ckpt_path(dir, s * 10, p, sizeof p);
        QT_EXPECT(exists(p) == keep[s], "checkpoint-%d kept=%d", s * 10, keep[s]);
    }
    DIR *d = opendir(dir);
    struct dirent *e;
    int tmps = 0;
    while ((e = readdir(d))) tmps += strstr(e->d_name, ".tmp") != NULL;
    closedir(d);
    QT_EXPECT(tmps == 0, "no temporary files left");
    snprintf(p, sizeof p, "%s/latest", dir);
    qt_write_file_atomic(p, "../../etc/passwd\n", 17, &err);
    QT_EXPECT(qt_run_dir_latest(dir, got, sizeof got, &err) != 0, "a pointer with a path is refused");
    snprintf(p, sizeof p, "%s/file", dir);
    qt_write_file_atomic(p, "x", 1, &err);
    QT_EXPECT(qt_run_dir_make(p, &err) != 0 && strstr(err.msg, "not a directory"),
              "a file is not a run directory: %s", err.msg);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf /tmp/qt_run_dir.%ld", (long)getpid());
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return qt_test_finish("run_dir");
}
