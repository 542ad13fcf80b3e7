/* check.h - always-on invariant checks (QT_CHECK) and the recoverable-error type.
 * QT_CHECK guards programming errors (a shape or dtype an op cannot take): it reports file:line
 * and the failed condition, then aborts. Bad *input* (files, configs, data) is never checked
 * this way: such code returns a qt_err so that only the CLI decides to exit. */
#ifndef QT_CHECK_H
#define QT_CHECK_H

#include <stddef.h>

#if defined(__GNUC__)
#define QT_NORETURN     __attribute__((noreturn))
#define QT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define QT_NORETURN
#define QT_PRINTF(a, b)
#endif

QT_NORETURN void qt_fatal(const char *file, int line, const char *cond, const char *fmt, ...)
    QT_PRINTF(4, 5);

#define QT_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) qt_fatal(__FILE__, __LINE__, #cond, __VA_ARGS__);                             \
    } while (0)

/* A recoverable error: a code and a message that names what was being done. */
typedef enum {
    QT_OK = 0,
    QT_ERR_IO = 1,     /* a file could not be read or written */
    QT_ERR_FORMAT = 2, /* a file or value is malformed */
    QT_ERR_ARG = 3,    /* a caller passed something unusable */
    QT_ERR_MEMORY = 4, /* an allocation failed */
    QT_ERR_DEVICE = 5, /* the CUDA runtime or a CUDA library failed */
    QT_ERR_UNSUPPORTED = 6,
} qt_err_code;

typedef struct {
    qt_err_code code;
    char msg[1024];
} qt_err;

/* Sets err (when not NULL) and returns code, so callers can write `return qt_err_set(...)`. */
int qt_err_set(qt_err *err, qt_err_code code, const char *fmt, ...) QT_PRINTF(3, 4);

#endif
