/* datasets.c - see datasets.h. */
#define _POSIX_C_SOURCE 200809L
#include "datasets.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* rows under construction */
typedef struct {
    qt_pretok *p;
    int64_t cap_rows, cap_tok;
} builder;

static int row_add(builder *b, const int32_t *ids, const int32_t *lab, int64_t n, int64_t line,
                   qt_err *err) {
    qt_pretok *p = b->p;
    if (p->nrows + 1 > b->cap_rows) {
        b->cap_rows = b->cap_rows ? 2 * b->cap_rows : 256;
        p->offset = realloc(p->offset, (size_t)(b->cap_rows + 1) * sizeof *p->offset);
        p->line = realloc(p->line, (size_t)b->cap_rows * sizeof *p->line);
        p->has_labels = realloc(p->has_labels, (size_t)b->cap_rows);
    }
    if (p->ntokens + n > b->cap_tok) {
        while (p->ntokens + n > b->cap_tok) b->cap_tok = b->cap_tok ? 2 * b->cap_tok : 65536;
        p->ids = realloc(p->ids, (size_t)b->cap_tok * sizeof *p->ids);
        p->labels = realloc(p->labels, (size_t)b->cap_tok * sizeof *p->labels);
    }
    if (!p->offset || !p->line || !p->has_labels || !p->ids || !p->labels)
        return qt_err_set(err, QT_ERR_MEMORY, "%s: out of memory", p->path);
    if (p->nrows == 0) p->offset[0] = 0;
    memcpy(p->ids + p->ntokens, ids, (size_t)n * sizeof *ids);
    memcpy(p->labels + p->ntokens, lab, (size_t)n * sizeof *lab);
    p->ntokens += n;
    p->line[p->nrows] = line;
    p->has_labels[p->nrows] = 1;
    p->offset[++p->nrows] = p->ntokens;
    return QT_OK;
}

/* one row's ids and labels, built segment by segment */
typedef struct {
    qt_tok_ids ids;
    int32_t *lab;
    int64_t cap;
} seq;

static int seq_text(seq *s, const qt_tok *t, const char *text, bool special, bool trained,
                    qt_err *err) {
    int64_t n0 = s->ids.n;
    int rc = qt_tok_encode(t, text, strlen(text), special, &s->ids, err);
    if (rc) return rc;
    if (s->ids.n > s->cap) {
        s->cap = s->ids.cap;
        s->lab = realloc(s->lab, (size_t)s->cap * sizeof *s->lab);
        if (!s->lab) return qt_err_set(err, QT_ERR_MEMORY, "out of memory");
    }
    for (int64_t i = n0; i < s->ids.n; i++) s->lab[i] = trained ? s->ids.ids[i] : QT_PRETOK_IGNORE;
    return QT_OK;
}

static int seq_id(seq *s, int32_t id, bool trained) {
    if (s->ids.n + 1 > s->ids.cap) {
        s->ids.cap = s->ids.cap ? 2 * s->ids.cap : 64;
        s->ids.ids = realloc(s->ids.ids, (size_t)s->ids.cap * sizeof *s->ids.ids);
    }
    if (s->ids.n + 1 > s->cap) {
        s->cap = s->ids.cap;
        s->lab = realloc(s->lab, (size_t)s->cap * sizeof *s->lab);
    }
    if (!s->ids.ids || !s->lab) return QT_ERR_MEMORY;
    s->lab[s->ids.n] = trained ? id : QT_PRETOK_IGNORE;
    s->ids.ids[s->ids.n++] = id;
    return QT_OK;
}

static const char *str_field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "Below is an instruction..." as Stanford Alpaca (and axolotl's alpaca type) write it */
static int alpaca_row(seq *s, const qt_tok *t, const cJSON *o, const qt_dataset_spec *sp,
                      const char *where, qt_err *err) {
    const char *ins = str_field(o, "instruction"), *in = str_field(o, "input");
    const char *out = str_field(o, "output");
    if (!ins || !out)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: an alpaca row needs string fields "
                          "'instruction' and 'output'",
                          where);
    size_t n = strlen(ins) + (in ? strlen(in) : 0) + 400;
    char *prompt = malloc(n);
    if (in && in[0])
        snprintf(prompt, n,
                 "Below is an instruction that describes a task, paired with an input that "
                 "provides further context. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n",
                 ins, in);
    else
        snprintf(prompt, n,
                 "Below is an instruction that describes a task. Write a response that "
                 "appropriately completes the request.\n\n### Instruction:\n%s\n\n### "
                 "Response:\n",
                 ins);
    int rc = seq_text(s, t, prompt, true, sp->train_on_inputs, err);
    free(prompt);
    if (!rc) rc = seq_text(s, t, out, false, true, err);
    if (!rc && sp->eos_id >= 0) rc = seq_id(s, sp->eos_id, true);
    return rc;
}

/* messages: [{role, content}] or ShareGPT's conversations: [{from, value}] */
static int chat_row(seq *s, const qt_tok *t, const cJSON *o, const qt_dataset_spec *sp,
                    const char *where, qt_err *err) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    bool sharegpt = false;
    if (!msgs) msgs = cJSON_GetObjectItemCaseSensitive(o, "conversations"), sharegpt = true;
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: a chat row needs a non-empty 'messages' list",
                          where);
    int rc = QT_OK, i = 0;
    const cJSON *m;
    const char *system = NULL;
    bool first = true;
    cJSON_ArrayForEach(m, msgs) {
        const char *role = str_field(m, sharegpt ? "from" : "role");
        const char *text = str_field(m, sharegpt ? "value" : "content");
        if (!role || !text)
            return qt_err_set(err, QT_ERR_FORMAT, "%s: messages[%d] needs string '%s' and '%s'",
                              where, i, sharegpt ? "from" : "role", sharegpt ? "value" : "content");
        if (!strcmp(role, "human")) role = "user";
        if (!strcmp(role, "gpt")) role = "assistant";
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
            return qt_err_set(err, QT_ERR_FORMAT,
                              "%s: messages[%d]: role '%s' (system, user or assistant)", where, i,
                              role);
        bool asst = !strcmp(role, "assistant"), tr = asst || sp->train_on_inputs;
        size_t n = strlen(text) + strlen(role) + 128;
        char *buf = malloc(n);
        switch (sp->chat) {
        case QT_TEMPLATE_LLAMA3:
            snprintf(buf, n, "%s<|start_header_id|>%s<|end_header_id|>\n\n",
                     first ? "<|begin_of_text|>" : "", role);
            rc = seq_text(s, t, buf, false, sp->train_on_inputs, err);
            snprintf(buf, n, "%s<|eot_id|>", text);
            if (!rc) rc = seq_text(s, t, buf, false, tr, err);
            break;
        case QT_TEMPLATE_CHATML:
            snprintf(buf, n, "<|im_start|>%s\n", role);
            rc = seq_text(s, t, buf, false, sp->train_on_inputs, err);
            snprintf(buf, n, "%s<|im_end|>\n", text);
            if (!rc) rc = seq_text(s, t, buf, false, tr, err);
            break;
        case QT_TEMPLATE_LLAMA2: /* <s>[INST] <<SYS>>\n..\n<</SYS>>\n\nuser [/INST] asst </s> */
            if (!strcmp(role, "system")) {
                system = text;
            } else if (!asst) {
                size_t k = n + (system ? strlen(system) : 0) + 32;
                char *u = malloc(k);
                if (system)
                    snprintf(u, k, "<s>[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]", system, text);
                else
                    snprintf(u, k, "<s>[INST] %s [/INST]", text);
                system = NULL;
                rc = seq_text(s, t, u, false, sp->train_on_inputs, err);
                free(u);
            } else {
                snprintf(buf, n, " %s </s>", text);
                rc = seq_text(s, t, buf, false, true, err);
            }
            break;
        }
        free(buf);
        if (rc) return rc;
        first = false;
        i++;
    }
    return rc;
}

static int load_jsonl(qt_pretok *out, const qt_tok *t, const qt_dataset_spec *sp, qt_err *err) {
    FILE *f = fopen(sp->path, "rb");
    if (!f) return qt_err_set(err, QT_ERR_IO, "%s: cannot read: %s", sp->path, strerror(errno));
    builder b = {out, 0, 0};
    char *line = NULL;
    size_t cap = 0;
    long n;
    int64_t lineno = 0;
    int rc = QT_OK;
    seq s = {0};
    while (!rc && (n = (long)getline(&line, &cap, f)) >= 0) {
        lineno++;
        char where[600];
        snprintf(where, sizeof where, "%s:%lld", sp->path, (long long)lineno);
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
        if (!*p) continue;
        cJSON *o = cJSON_Parse(line);
        if (!cJSON_IsObject(o)) {
            cJSON_Delete(o);
            rc = qt_err_set(err, QT_ERR_FORMAT, "%s: not a JSON object", where);
            break;
        }
        s.ids.n = 0;
        if (sp->kind == QT_DATA_ALPACA) {
            rc = alpaca_row(&s, t, o, sp, where, err);
        } else if (sp->kind == QT_DATA_CHAT) {
            rc = chat_row(&s, t, o, sp, where, err);
        } else {
            const char *field = sp->field ? sp->field : "text";
            const char *text = str_field(o, field);
            if (!text)
                rc = qt_err_set(err, QT_ERR_FORMAT, "%s: no string field '%s'", where, field);
            else
                rc = seq_text(&s, t, text, true, true, err);
            if (!rc && sp->eos_id >= 0) rc = seq_id(&s, sp->eos_id, true);
        }
        cJSON_Delete(o);
        if (rc && err && !strstr(err->msg, sp->path)) { /* tokenizer errors: add the place */
            char inner[sizeof err->msg];
            snprintf(inner, sizeof inner, "%s", err->msg);
            qt_err_set(err, (qt_err_code)rc, "%s: %s", where, inner);
        }
        if (!rc) rc = row_add(&b, s.ids.ids, s.lab, s.ids.n, lineno, err);
    }
    free(line);
    free(s.lab);
    qt_tok_ids_free(&s.ids);
    fclose(f);
    if (!rc && out->nrows == 0) rc = qt_err_set(err, QT_ERR_FORMAT, "%s: no rows", sp->path);
    return rc;
}

static int load_text(qt_pretok *out, const qt_tok *t, const qt_dataset_spec *sp, qt_err *err) {
    FILE *f = fopen(sp->path, "rb");
    if (!f) return qt_err_set(err, QT_ERR_IO, "%s: cannot read: %s", sp->path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    size_t got = text ? fread(text, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!text || got != (size_t)n) {
        free(text);
        return qt_err_set(err, QT_ERR_IO, "%s: cannot read", sp->path);
    }
    text[n] = 0;
    qt_tok_ids ids = {0};
    int rc = qt_tok_encode(t, text, (size_t)n, true, &ids, err);
    free(text);
    if (rc) {
        char inner[sizeof err->msg];
        snprintf(inner, sizeof inner, "%s", err->msg);
        qt_err_set(err, (qt_err_code)rc, "%s: %s", sp->path, inner);
        return rc;
    }
    builder b = {out, 0, 0};
    int64_t chunk = sp->text_chunk > 1 ? sp->text_chunk : 2048;
    for (int64_t at = 0; !rc && at < ids.n; at += chunk) {
        int64_t len = ids.n - at < chunk ? ids.n - at : chunk;
        if (len < 2) break;
        rc = row_add(&b, ids.ids + at, ids.ids + at, len, 1, err);
    }
    qt_tok_ids_free(&ids);
    if (!rc && out->nrows == 0) rc = qt_err_set(err, QT_ERR_FORMAT, "%s: no text", sp->path);
    return rc;
}

int qt_dataset_load(qt_pretok *out, const qt_tok *t, const qt_dataset_spec *sp, qt_err *err) {
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", sp->path);
    int rc = sp->kind == QT_DATA_TEXT ? load_text(out, t, sp, err) : load_jsonl(out, t, sp, err);
    if (rc) qt_pretok_free(out);
    return rc;
}

int qt_chat_template_detect(const char *j) {
    if (!j) return -1;
    if (strstr(j, "<|start_header_id|>")) return QT_TEMPLATE_LLAMA3;
    if (strstr(j, "<|im_start|>")) return QT_TEMPLATE_CHATML;
    if (strstr(j, "[INST]")) return QT_TEMPLATE_LLAMA2;
    return -1;
}
