/* json_min.h - a cursor over JSON text for the two small documents quant/ reads: the
 * safetensors header and bitsandbytes' packed quant_state. Not a general JSON library: the
 * callers walk the grammar they expect and name what they found instead on error. */
#ifndef QT_JSON_MIN_H
#define QT_JSON_MIN_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *s; /* text, not NUL-terminated */
    size_t n, pos;
    char *err; /* caller's message buffer (may be NULL) */
    size_t errlen;
} qt_json;

void qt_json_init(qt_json *j, const char *s, size_t n, char *err, size_t errlen);
/* sets the message ("<what> at byte <pos>") and returns -1 */
int qt_json_fail(qt_json *j, const char *what);
void qt_json_ws(qt_json *j);
/* after whitespace: the next character, or 0 at the end */
char qt_json_peek(qt_json *j);
/* consumes c (after whitespace) or fails naming it */
int qt_json_expect(qt_json *j, char c);
/* a string into a malloc'd NUL-terminated UTF-8 buffer (escapes and \u surrogates decoded;
 * an embedded NUL is refused) */
int qt_json_string(qt_json *j, char **out);
/* an integer that fits int64 (no fraction, no exponent) */
int qt_json_int(qt_json *j, int64_t *out);
/* any JSON number */
int qt_json_number(qt_json *j, double *out);
/* after whitespace: consumes ',' and returns 1, or sees `close` and returns 0; else -1 */
int qt_json_next(qt_json *j, char close);
/* skips one value of any kind (nesting depth limited) */
int qt_json_skip(qt_json *j);

/* appends s to out as a JSON string literal (quotes and escapes); returns the length it needs,
 * writing at most cap bytes (snprintf-like, always NUL-terminated when cap > 0) */
size_t qt_json_quote(const char *s, char *out, size_t cap);

#endif
