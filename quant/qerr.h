/* qerr.h - the error codes every quant/ function returns (0 = ok, negative = failure).
 * quant/ depends on nothing but libc and libm, so it has its own small set rather than
 * autograd's qt_err; callers map them. */
#ifndef QT_QERR_H
#define QT_QERR_H

enum {
    QT_Q_OK = 0,
    QT_Q_EARG = -1,     /* a caller passed something unusable (NULL, bad size, bad block size) */
    QT_Q_ENOMEM = -2,   /* an allocation failed */
    QT_Q_EFORMAT = -3,  /* a file or buffer is malformed or truncated */
    QT_Q_EIO = -4,      /* a file could not be opened, read or written */
    QT_Q_ENOTFOUND = -5 /* a named tensor or key is absent */
};

#endif
