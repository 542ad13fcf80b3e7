/* test_datasets.c - alpaca, completion, chat (llama3, chatml, llama2 and ShareGPT's layout)
 * and text datasets become the token rows and labels axolotl would train on: the prompt masked
 * (-100) unless train_on_inputs, only assistant turns trained in chats, EOS appended, text cut
 * into rows; the decoded row is the exact template text; malformed lines name file:line. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <unistd.h>

#include "data/datasets.h"
#include "qt_test.h"

static char dir[256];

static const char *put_file(const char *name, const char *text) {
    static char p[8][300];
    static int k;
    char *path = p[k++ % 8];
    snprintf(path, 300, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

/* decodes the trained (label != -100) and all tokens of row r */
static void decode_row(const qt_tok *t, const qt_pretok *p, int64_t r, char **all, char **trained) {
    int64_t a = p->offset[r], n = p->offset[r + 1] - a, m = 0;
    int32_t *tr = malloc((size_t)n * sizeof *tr);
    for (int64_t i = 0; i < n; i++)
        if (p->labels[a + i] != -100) tr[m++] = p->ids[a + i];
    size_t len;
    qt_err err;
    qt_tok_decode(t, p->ids + a, n, false, all, &len, &err);
    qt_tok_decode(t, tr, m, false, trained, &len, &err);
    free(tr);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/qt_datasets.%ld", (long)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    qt_tok *t;
    qt_err err = {0};
    QT_CHECK(qt_tok_load(&t, "tests/fixtures/tok/llama3.json", &err) == 0, "%s", err.msg);
    int32_t eos = qt_tok_token_id(t, "<|end_of_text|>", 15);
    qt_pretok p;
    char *all, *tr;

    /* alpaca */
    const char *ap = put_file("a.jsonl", "{\"instruction\": \"Add\", \"input\": \"2 and 3\", "
                                      "\"output\": \"5\"}\n\n{\"instruction\": \"Say hi\", "
                                      "\"output\": \"hi\"}\n");
    qt_dataset_spec s = {.kind = QT_DATA_ALPACA, .path = ap, .eos_id = eos};
    QT_EXPECT(qt_dataset_load(&p, t, &s, &err) == 0 && p.nrows == 2, "alpaca: %s", err.msg);
    decode_row(t, &p, 0, &all, &tr);
    QT_EXPECT(strstr(all, "### Instruction:\nAdd\n\n### Input:\n2 and 3\n\n### Response:\n5") &&
                  strstr(all, "paired with an input"),
              "alpaca prompt with input: [%s]", all);
    QT_EXPECT(!strcmp(tr, "5<|end_of_text|>"), "only the response and EOS trained: [%s]", tr);
    free(all), free(tr);
    decode_row(t, &p, 1, &all, &tr);
    QT_EXPECT(!strstr(all, "### Input:") && strstr(all, "### Instruction:\nSay hi"),
              "alpaca without input: [%s]", all);
    free(all), free(tr);
    QT_EXPECT(p.line[1] == 3, "row 2 came from line 3");
    qt_pretok_free(&p);
    s.train_on_inputs = true;
    qt_dataset_load(&p, t, &s, &err);
    decode_row(t, &p, 0, &all, &tr);
    QT_EXPECT(!strcmp(all, tr), "train_on_inputs trains every token");
    free(all), free(tr);
    qt_pretok_free(&p);

    /* chat: llama3 and chatml; ShareGPT layout */
    const char *cp =
        put_file("c.jsonl", "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                         "{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", "
                         "\"content\": \"Hello!\"}]}\n"
                         "{\"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}, "
                         "{\"from\": \"gpt\", \"value\": \"A\"}]}\n");
    qt_dataset_spec c = {
        .kind = QT_DATA_CHAT, .path = cp, .chat = QT_TEMPLATE_LLAMA3, .eos_id = -1};
    QT_EXPECT(qt_dataset_load(&p, t, &c, &err) == 0 && p.nrows == 2, "chat: %s", err.msg);
    decode_row(t, &p, 0, &all, &tr);
    QT_EXPECT(!strcmp(all, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe "
                           "brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_"
                           "id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"),
              "llama3 template: [%s]", all);
    QT_EXPECT(!strcmp(tr, "Hello!<|eot_id|>"), "only the assistant turn trained: [%s]", tr);
    free(all), free(tr);
    decode_row(t, &p, 1, &all, &tr);
    QT_EXPECT(strstr(all, "user<|end_header_id|>\n\nQ") && !strcmp(tr, "A<|eot_id|>"),
              "ShareGPT layout: [%s] [%s]", all, tr);
    free(all), free(tr);
    qt_pretok_free(&p);
    c.chat = QT_TEMPLATE_CHATML;
    qt_dataset_load(&p, t, &c, &err);
    decode_row(t, &p, 0, &all, &tr);
    QT_EXPECT(strstr(all, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
                          "<|im_end|>\n") &&
                  !strcmp(tr, "Hello!<|im_end|>\n"),
              "chatml: [%s] [%s]", all, tr);
    free(all), free(tr);
    qt_pretok_free(&p);

    /* completion and text */
    const char *op = put_file("o.jsonl", "{\"body\": \"one two three\"}\n");
    qt_dataset_spec o = {.kind = QT_DATA_COMPLETION, .path = op, .field = "body", .eos_id = eos};
    QT_EXPECT(qt_dataset_load(&p, t, &o, &err) == 0, "completion: %s", err.msg);
    decode_row(t, &p, 0, &all, &tr);
    QT_EXPECT(strstr(all, "one two three<|end_of_text|>") && !strcmp(all, tr), "completion: [%s]",
              all);
    free(all), free(tr);
    qt_pretok_free(&p);
    const char *tp = put_file("t.txt", "It was the best of times, it was the worst of times, it "
                                    "was the age of wisdom, it was the age of foolishness.");
    qt_dataset_spec x = {.kind = QT_DATA_TEXT, .path = tp, .text_chunk = 8, .eos_id = -1};
    QT_EXPECT(qt_dataset_load(&p, t, &x, &err) == 0 && p.nrows >= 2, "text: %s", err.msg);
    for (int64_t r = 0; r + 1 < p.nrows; r++)
        QT_EXPECT(p.offset[r + 1] - p.offset[r] == 8, "text rows of 8 tokens");
    qt_pretok_free(&p);

    /* errors name file:line */
    const char *bp = put_file("b.jsonl", "{\"instruction\": \"x\", \"output\": \"y\"}\nnot json\n");
    QT_EXPECT(qt_dataset_load(&p, t, &s, &err) == 0, "");
    qt_pretok_free(&p);
    s.path = bp;
    char want[400];
    snprintf(want, sizeof want, "%s:2: not a JSON object", bp);
    QT_EXPECT(qt_dataset_load(&p, t, &s, &err) != 0 && strstr(err.msg, want), "bad line: %s",
              err.msg);
    const char *mp = put_file("m.jsonl", "{\"instruction\": \"x\"}\n");
    s.path = mp;
    QT_EXPECT(qt_dataset_load(&p, t, &s, &err) != 0 && strstr(err.msg, ":1:") &&
                  strstr(err.msg, "output"),
              "missing field: %s", err.msg);
    const char *rp =
        put_file("r.jsonl", "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n");
    c.path = rp;
    QT_EXPECT(qt_dataset_load(&p, t, &c, &err) != 0 && strstr(err.msg, "robot"), "bad role: %s",
              err.msg);
    QT_EXPECT(qt_chat_template_detect("{{ '<|im_start|>' + m['role'] }}") == QT_TEMPLATE_CHATML &&
                  qt_chat_template_detect("{{ x }}") == -1,
              "template detection");
    qt_tok_free(t);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return qt_test_finish("datasets");
}
