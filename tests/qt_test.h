/* qt_test.h - the tiny harness every tests/test_*.c uses: named checks, float comparisons
 * with stated tolerances, one closing line, exit code 0 (pass), 1 (fail) or 77 (skip). */
#ifndef QT_TEST_H
#define QT_TEST_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int passed, failed;
} qt_test_state;

static qt_test_state qt_test_st; /* one per test executable; the library itself has no globals */

static inline void qt_test_report(int ok, const char *file, int line, const char *fmt, ...) {
    if (ok) {
        qt_test_st.passed++;
        return;
    }
    qt_test_st.failed++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define QT_EXPECT(cond, ...) qt_test_report(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* |a - b| <= atol + rtol * |b| (b is the reference) */
#define QT_EXPECT_CLOSE(a, b, atol, rtol, what)                                                    \
    do {                                                                                           \
        double qa_ = (double)(a), qb_ = (double)(b);                                               \
        QT_EXPECT(fabs(qa_ - qb_) <= (atol) + (rtol)*fabs(qb_) && !isnan(qa_) && !isnan(qb_),      \
                  "%s: got %.9g want %.9g (atol %g rtol %g)", what, qa_, qb_, (double)(atol),      \
                  (double)(rtol));                                                                 \
    } while (0)

static inline int qt_test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, qt_test_st.passed, qt_test_st.failed);
    return qt_test_st.failed ? 1 : 0;
}

static inline int qt_test_skip(const char *name, const char *why) {
    printf("SKIPPED %s: %s\n", name, why);
    return 77;
}

#endif
