/* run_dir.c - see run_dir.h. */
#define _POSIX_C_SOURCE 200809L
#include "run_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int qt_run_dir_make(const char *dir, qt_err *err) {
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return qt_err_set(err, QT_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return qt_err_set(err, QT_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
        return qt_err_set(err, QT_ERR_IO, "%s: not a directory", p);
    return QT_OK;
}

void qt_run_dir_ckpt_path(const char *dir, int64_t step, char *out, size_t cap) {
    snprintf(out, cap, "%s/checkpoint-%lld.h5", dir, (long long)step);
}

char *qt_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b), b = NULL;
        errno = EIO;
    }
    if (b) {
        b[n] = 0;
        if (len) *len = (size_t)n;
    }
    fclose(f);
    return b;
}

int qt_write_file_atomic(const char *path, const char *text, size_t len, qt_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return qt_err_set(err, QT_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            close(fd);
            unlink(tmp);
            return qt_err_set(err, QT_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return qt_err_set(err, QT_ERR_IO, "%s: cannot replace: %s", path, strerror(errno));
    }
    char *d = strdup(path);
    int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY);
    free(d);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return QT_OK;
}

int qt_run_dir_set_latest(const char *dir, const char *ckpt_path, qt_err *err) {
    char *b = strdup(ckpt_path), line[1100], path[4200];
    snprintf(line, sizeof line, "%s\n", basename(b));
    free(b);
    snprintf(path, sizeof path, "%s/latest", dir);
    return qt_write_file_atomic(path, line, strlen(line), err);
}

int qt_run_dir_latest(const char *dir, char *out, size_t cap, qt_err *err) {
    char path[4200], name[1024] = "";
    snprintf(path, sizeof path, "%s/latest", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return qt_err_set(err, QT_ERR_IO, "%s: no 'latest' checkpoint pointer (%s)", dir,
                          strerror(errno));
    if (!fgets(name, sizeof name, f)) name[0] = 0;
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    if (!name[0] || strchr(name, '/'))
        return qt_err_set(err, QT_ERR_FORMAT, "%s: does not name a checkpoint file", path);
    snprintf(out, cap, "%s/%s", dir, name);
    return QT_OK;
}

/* step of "checkpoint-<step>.h5", or -1 */
static int64_t ckpt_step(const char *name) {
    long long step;
    char tail[8];
    if (sscanf(name, "checkpoint-%lld%7s", &step, tail) != 2 || strcmp(tail, ".h5")) return -1;
    return step;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int qt_run_dir_rotate(const char *dir, int limit, qt_err *err) {
    if (limit <= 0) return QT_OK;
    char latest[4200] = "";
    qt_err ignore;
    qt_run_dir_latest(dir, latest, sizeof latest, &ignore);
    DIR *d = opendir(dir);
    if (!d) return qt_err_set(err, QT_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    int64_t steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        int64_t s = ckpt_step(e->d_name);
        if (s >= 0) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof steps[0], cmp_i64);
    for (int i = 0; i + limit < n; i++) {
        char p[4200];
        qt_run_dir_ckpt_path(dir, steps[i], p, sizeof p);
        if (!strcmp(p, latest)) continue;
        if (unlink(p) != 0 && errno != ENOENT)
            return qt_err_set(err, QT_ERR_IO, "%s: cannot delete: %s", p, strerror(errno));
    }
    return QT_OK;
}
