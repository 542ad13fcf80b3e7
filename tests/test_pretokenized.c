/* test_pretokenized.c - the pre-tokenized JSONL reader (data/pretokenized.h): a good file with
 * labels, rows without labels and blank lines reads back exactly; every malformed case (not
 * JSON, not an object, missing / non-array / empty input_ids, a non-integer or out-of-range id
 * or label, labels of another length, an unreadable file, a file without rows) is an error whose
 * message names the file and the right line. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <stdio.h>
#include <unistd.h>

#include "data/pretokenized.h"
#include "qt_test.h"

static char tmpdir[64];

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    QT_CHECK(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void check_good(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/good.jsonl", tmpdir);
    write_file(path, "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n"
                     "\n"
                     "   \t\r\n"
                     "{\"input_ids\": [7], \"attention_mask\": [1]}\r\n"
                     "{\"labels\": [4, -100], \"input_ids\": [299, 0], \"text\": \"x\"}\n"
                     "\n"
                     "{\"input_ids\":[5,6,7,8]}"); /* no final newline */
    qt_pretok ds;
    qt_err err = {0};
    int rc = qt_pretok_load(&ds, path, 300, &err);
    QT_EXPECT(rc == 0, "good file: %s", err.msg);
    if (rc) return;
    QT_EXPECT(ds.nrows == 4 && ds.ntokens == 10, "4 rows, 10 tokens (got %lld, %lld)",
              (long long)ds.nrows, (long long)ds.ntokens);
    const int64_t off[] = {0, 3, 4, 6, 10}, line[] = {1, 4, 5, 7};
    const int32_t ids[] = {1, 2, 3, 7, 299, 0, 5, 6, 7, 8};
    const int32_t lab[] = {-100, 2, 3, 7, 4, -100, 5, 6, 7, 8};
    const uint8_t has[] = {1, 0, 1, 0};
    for (int r = 0; r < 4 && ds.nrows == 4; r++) {
        QT_EXPECT(ds.offset[r] == off[r] && ds.offset[r + 1] == off[r + 1], "row %d offsets", r);
        QT_EXPECT(ds.line[r] == line[r], "row %d: line %lld, want %lld", r, (long long)ds.line[r],
                  (long long)line[r]);
        QT_EXPECT(ds.has_labels[r] == has[r], "row %d has_labels", r);
    }
    for (int i = 0; i < 10 && ds.ntokens == 10; i++) {
        QT_EXPECT(ds.ids[i] == ids[i], "ids[%d] = %d, want %d", i, ds.ids[i], ids[i]);
        QT_EXPECT(ds.labels[i] == lab[i], "labels[%d] = %d, want %d", i, ds.labels[i], lab[i]);
    }
    QT_EXPECT(qt_pretok_len(&ds, 3) == 4, "row 3 length");
    qt_pretok_free(&ds);

    /* vocab <= 0: no vocabulary bound, only non-negative int32 */
    write_file(path, "{\"input_ids\": [2147483647, 0]}\n");
    rc = qt_pretok_load(&ds, path, 0, &err);
    QT_EXPECT(rc == 0 && ds.ids[0] == 2147483647, "unbounded vocab: %s", err.msg);
    qt_pretok_free(&ds);
}

/* The file with `text` fails to load, naming the file and "file:line:" (line > 0) and
 * containing `what`. */
static void check_bad(const char *name, const char *text, int line, const char *what) {
    char path[128], want[192];
    snprintf(path, sizeof path, "%s/%s.jsonl", tmpdir, name);
    write_file(path, text);
    qt_pretok ds;
    qt_err err = {0};
    int rc = qt_pretok_load(&ds, path, 300, &err);
    QT_EXPECT(rc != 0, "%s: loaded a malformed file", name);
    if (line > 0)
        snprintf(want, sizeof want, "%s:%d: ", path, line);
    else
        snprintf(want, sizeof want, "%s", path);
    QT_EXPECT(strstr(err.msg, want), "%s: message '%s' does not name '%s'", name, err.msg, want);
    QT_EXPECT(strstr(err.msg, what), "%s: message '%s' does not say '%s'", name, err.msg, what);
    QT_EXPECT(ds.nrows == 0 && ds.ids == NULL, "%s: a failed load leaves the dataset empty", name);
    qt_pretok_free(&ds);
    printf("  %-14s %s\n", name, err.msg);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qt_pretok_XXXXXX");
    QT_CHECK(mkdtemp(tmpdir), "mkdtemp failed");
    check_good();

    const char *ok = "{\"input_ids\": [1, 2]}\n";
    char buf[512];
#define BAD(name, line, what, second)                                                              \
    snprintf(buf, sizeof buf, "%s\n%s%s\n", ok, ok, second), check_bad(name, buf, line, what)
    /* every bad row is on line 4: a good row, a blank line, a good row, the bad one */
    BAD("not_json", 4, "not valid JSON", "{\"input_ids\": [1, 2}");
    BAD("trailing", 4, "not valid JSON", "{\"input_ids\": [1]} extra");
    BAD("not_object", 4, "not a JSON object", "[1, 2, 3]");
    BAD("missing", 4, "missing \"input_ids\"", "{\"ids\": [1, 2]}");
    BAD("not_array", 4, "not an array", "{\"input_ids\": 5}");
    BAD("string_id", 4, "input_ids[1] is a string", "{\"input_ids\": [1, \"2\"]}");
    BAD("float_id", 4, "input_ids[0] = 1.5 is not an integer", "{\"input_ids\": [1.5]}");
    BAD("null_id", 4, "input_ids[2] is null", "{\"input_ids\": [1, 2, null]}");
    BAD("big_id", 4, "input_ids[1] = 300 is outside the vocabulary [0, 300)",
        "{\"input_ids\": [299, 300]}");
    BAD("huge_id", 4, "input_ids[0] = 1e+30 is not an integer", "{\"input_ids\": [1e30]}");
    BAD("negative_id", 4, "input_ids[0] = -100 is outside", "{\"input_ids\": [-100]}");
    BAD("empty", 4, "\"input_ids\" is empty", "{\"input_ids\": []}");
    BAD("labels_len", 4, "\"labels\" has 3 entries but \"input_ids\" has 2",
        "{\"input_ids\": [1, 2], \"labels\": [1, 2, 3]}");
    BAD("labels_type", 4, "\"labels\" is not an array", "{\"input_ids\": [1, 2], \"labels\": 1}");
    BAD("label_range", 4, "labels[1] = -5 is outside the vocabulary [0, 300) and is not -100",
        "{\"input_ids\": [1, 2], \"labels\": [-100, -5]}");
#undef BAD
    check_bad("first_line", "{\"input_ids\": [1, \"x\"]}\n", 1, "is a string");
    check_bad("no_rows", "\n  \n", 0, "no rows");
    check_bad("empty_file", "", 0, "no rows");

    /* a file that cannot be read: missing, and a directory */
    qt_pretok ds;
    qt_err err = {0};
    char path[128];
    snprintf(path, sizeof path, "%s/absent.jsonl", tmpdir);
    QT_EXPECT(qt_pretok_load(&ds, path, 300, &err) == QT_ERR_IO, "missing file is an IO error");
    QT_EXPECT(strstr(err.msg, path) && strstr(err.msg, "cannot read"), "message: %s", err.msg);
    QT_EXPECT(qt_pretok_load(&ds, tmpdir, 300, &err) == QT_ERR_IO, "directory is an IO error");
    QT_EXPECT(strstr(err.msg, tmpdir), "message: %s", err.msg);
    printf("  %-14s %s\n", "directory", err.msg);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return qt_test_finish("pretokenized");
}
