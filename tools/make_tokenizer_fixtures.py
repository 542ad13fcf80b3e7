#!/usr/bin/env python3
"""make_tokenizer_fixtures.py - real tokenizer.json files and their encodings, made by the
Hugging Face `tokenizers` library itself (there is no model hub here), stored small in
tests/fixtures/tok/ for tests/test_tokenizer.c. Run on the GPU machine, which has `tokenizers`:
    python3 tools/make_tokenizer_fixtures.py OUTDIR

Small BPE tokenizers are trained on a few KB of varied text below, then given the exact
normalizer / pre-tokenizer / post-processor / decoder layout of the real model families:
  gpt2.json         ByteLevel BPE, ByteLevel pre-tokenizer with the GPT-2 regex (no prefix
                    space), <|endoftext|> special, ByteLevel decoder (GPT-2's file).
  gpt2_prefix.json  the same model with add_prefix_space=true and a TemplateProcessing that
                    appends <|endoftext|> (a post-processor adding a token at the end).
  llama3.json       Llama-3 layout: Sequence[Split(Llama-3 regex, Isolated),
                    ByteLevel(use_regex=false)], ignore_merges=true, special tokens after the
                    model vocab (<|begin_of_text|>, <|eot_id|>, ...), TemplateProcessing adding
                    <|begin_of_text|>; plus added tokens with lstrip / rstrip / single_word and
                    a non-special one, to cover those flags.
  llama2.json       sentencepiece-style BPE as Llama-2's file has it: <unk> <s> </s> then the
                    256 <0xXX> byte tokens, byte_fallback, fuse_unk, normalizer
                    Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, decoder
                    Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)],
                    TemplateProcessing adding <s>; plus a normalized non-special added token.
  mistral.json      the same model as Mistral / newer Llama files have it: no normalizer,
                    Metaspace(prepend_scheme="first", split=false) pre-tokenizer.
  metaspace.json    the same model with Metaspace(prepend_scheme="always", split=true) and a
                    Sequence[ByteFallback, Metaspace] decoder.
cases.json: {"texts": [...], "tokenizers": {name: {"encode": [{"ids", "ids_special", "decoded",
  "decoded_skip"}] one per text, "decode": [{"ids", "text", "text_skip"}]}}} where ids =
  encode(text, add_special_tokens=False), ids_special = encode(text, add_special_tokens=True),
  decoded = decode(ids, skip_special_tokens=False), decoded_skip = decode(ids_special,
  skip_special_tokens=True), and "decode" holds seeded random id sequences (byte tokens split
  mid-character, special tokens) with their decodings. A string holding NUL bytes is stored
  as {"hex": its UTF-8 bytes in hex}.
"""
import json
import os
import random
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tok"
os.makedirs(OUT, exist_ok=True)
VOCAB = 1100

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN = r"""
The tokenizer turns text into numbers. A byte pair encoding starts from single bytes or
characters and merges the most frequent neighbours, again and again, until the vocabulary is
full. Words that were seen often become single tokens; rare words are spelled out in pieces.
It's a simple idea, and it works well: we'll see that the numbers 1234567 and 3.14159 split
into groups of digits, that "don't" and "they're" keep their apostrophes, and that spaces
usually stick to the word that follows them. You'd think it's trivial; it isn't, quite.
Fine-tuning a language model needs exactly the same tokens as pre-training did, byte for byte.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.
Pack my box with five dozen liquor jugs! How vexingly quick daft zebras jump? Sphinx of black
quartz, judge my vow. 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024 1999 42 3.5 0.25 -7 +8 50%
In 1969, 600 million people watched; in 2023 the count was 4,000,000,000 or so (estimates vary).
Привет, мир! Как дела? Сегодня мы учимся токенизации текста. Русский язык богат и красив.
Съешь же ещё этих мягких французских булок, да выпей чаю.
Γειά σου κόσμε! Η γλώσσα είναι όμορφη. Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.
你好，世界！我们今天学习文本的分词方法。中文没有空格，所以分词更难。
日本語のテキストです。ひらがなとカタカナと漢字を使います。
مرحبا بالعالم. اللغة العربية تكتب من اليمين إلى اليسار.
नमस्ते दुनिया। हिंदी भाषा देवनागरी लिपि में लिखी जाती है।
Ça va très bien, merci. Größe, Straße, naïve café, señor, jalapeño, smørrebrød, Łódź.
한국어 텍스트도 조금 있습니다.
Emoji: 😀 😃 🎉 👍 ❤️ 🚀 ✨ 🙂
def tokenize(text):
    ids = []
    for word in text.split():
        if word in vocab:
            ids.append(vocab[word])
        else:
            ids.extend(fallback(word))
    return ids

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("%s\n", argv[i]);
    }
    return 0;
}
	Tabs	are	whitespace	too.
Line endings differ: Unix uses LF, Windows uses CR LF.
SELECT name, count(*) FROM tokens WHERE length > 3 GROUP BY name ORDER BY 2 DESC;
{"key": "value", "list": [1, 2, 3], "nested": {"a": true, "b": null}}
https://www.example.org/index.html?query=tokenizer&lang=en#section-2
email: someone@example.com, phone: +1 (555) 123-4567
"""

EXTRA_WORDS = ("model data train loss learning rate batch token sequence layer attention "
               "weight gradient optimizer schedule checkpoint export quantize adapter merge "
               "memory device kernel matrix vector tensor float integer string byte").split()


def corpus():
    lines = [l for l in TRAIN.split("\n")]
    rng = random.Random(7)
    # more running text so that the merges reach the vocabulary size
    for i in range(300):
        words = [rng.choice(EXTRA_WORDS) for _ in range(rng.randint(4, 12))]
        if i % 3 == 0:
            words.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";"]))
    return lines


CASES = [
    "",
    " ",
    "a",
    "Hello world",
    "Hello, world! How are you doing today?",
    "  leading spaces and trailing   ",
    "ending with one space ",
    "tabs\tand\t\tmore tabs\t",
    "line one\nline two\r\nline three\r\n\r\n",
    "\n\n\nmany newlines\n\n",
    "\r\n",
    "multiple     spaces    between  words",
    "mixed \t \n  whitespace\u00a0nbsp\u3000ideographic\u2028line sep\u0085nel\u2003em",
    "I'm sure they're fine, aren't they? We'll see; you'd've known. IT'S LOUD, SHE'LL COME",
    "Numbers: 1234567 and 3.14159, 0.001, 1e-9, 2024-06-01, 1,000,000 and 12345678901234",
    "Привет, мир! Как дела?",
    "Γειά σου κόσμε, αβγδε",
    "你好，世界。我们今天学习分词。",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "emoji 😀 🎉 👍🏽 and family 👨\u200d👩\u200d👧\u200d👦 and flag 🇫🇷 and ❤️",
    "def f(x):\n    return x * 2\n\n\tif x:\n\t\tpass\n",
    "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "    indented code\n        deeper\n",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>"
    "assistant<|end_header_id|>\n\n",
    "text<|endoftext|>more text <|endoftext|> spaced",
    "<s>Hello</s> <s> spaced </s>",
    "<s>",
    "word <mask> masked   <mask>x",
    "<tool>   after rstrip and xyzzy vs xyzzyx, plugh xyzzy.",
    "qtune rocks and foo bar baz and foo  bar",
    "unseen: ႠႡႢ ไทย 𐀀𐀁 ꙮ ⚛",
    "ALL CAPS AND lower and MiXeD and Ünïcödé",
    "punctuation!!! ??? ... --- ;;; (((brackets))) [x] {y} <tag/> &amp;",
    "url https://example.com/path?q=1&r=2#frag and email a.b@c.de",
    "\u2581 literal metaspace \u2581\u2581 chars \u2581",
    "<0x41> literal byte token text <0xZZ>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "tokenizer tokenizers tokenization retokenize",
    "combining: e\u0301 n\u0303 a\u0308, and \ufb01 ligature, \u212b angstrom",
    "control \x01 chars \x7f and \u200b zero width",
    "The quick brown fox jumps over the lazy dog.",
    "Съешь же ещё этих мягких французских булок",
    "don't DON'T Don'T 's 'S 'll",
    "   ",
    "\t",
    "x\n",
    "trailing newline\n",
    "nul\x00byte and \x00\x00",
    # white space the regexes' \s may or may not include, each after a space and before a letter
    "a \u0085b", "a \u00a0b", "a \u3000b", "a \u2028b", "a \u180eb", "a \u200bb",
    "a \u2003b", "a \x0bb", "a \x0cb", "a \x1cb", "a \x1fb", "a \u0085\u0085 b",
    "it\u017f and 'S and \u017f 'K \u212a",  # case-insensitive contractions: long s, Kelvin
    "Kawi \U00011f04\U00011f05 and Unicode 15 \U0001e030",
]


def S(x):
    """a string for cases.json; one with NUL bytes as {"hex": UTF-8 bytes}, since C JSON
    readers (cJSON) end strings at the first NUL"""
    return {"hex": x.encode("utf-8").hex()} if "\0" in x else x


def long_texts():
    """a paragraph of the training text (many merges apply) and seeded character soup"""
    rng = random.Random(11)
    alphabet = sorted(set(TRAIN))
    soup = "".join(rng.choice(alphabet) for _ in range(400))
    return [TRAIN.strip().split("\n\n")[0][:600], soup]


def set_components(tok, normalizer=None, pre_tokenizer=None, decoder=None, post=None):
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    tok.post_processor = post


def reload(d):
    """a tokenizer from the JSON dict, saved and read back: what the C side reads is exactly
    the file the encodings were made with"""
    return Tokenizer.from_str(json.dumps(d, ensure_ascii=False))


def make_bytelevel():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tr = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(corpus(), tr)
    set_components(tok, None, pre_tokenizers.ByteLevel(add_prefix_space=False),
                   decoders.ByteLevel(), processors.ByteLevel(trim_offsets=False))
    gpt2 = reload(json.loads(tok.to_str()))

    eot = gpt2.token_to_id("<|endoftext|>")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eot)])
    prefix = reload(json.loads(tok.to_str()))
    return gpt2, prefix


def make_llama3():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.pre_tokenizer = pre
    tr = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(corpus(), tr)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>", "<|eot_id|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([
        AddedToken("<mask>", lstrip=True, special=True, normalized=False),
        AddedToken("<tool>", rstrip=True, special=True, normalized=False),
        AddedToken("xyzzy", single_word=True, special=False, normalized=False),
        AddedToken("qtune rocks", special=False, normalized=True),
    ])
    bos = tok.token_to_id("<|begin_of_text|>")
    set_components(tok, None, pre, decoders.ByteLevel(), processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])]))
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = True
    return reload(d)


def make_sentencepiece():
    byte_toks = ["<0x%02X>" % b for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                 split=True)
    tr = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"] + byte_toks,
                             show_progress=False)
    tok.train_from_iterator(corpus(), tr)
    tok.add_tokens([AddedToken("foo bar", special=False, normalized=True)])
    bos = tok.token_to_id("<s>")
    template = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                             special_tokens=[("<s>", bos)])
    sp_decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])

    def finish(t):
        d = json.loads(t.to_str())
        # Llama-2's byte tokens are model vocabulary, not added tokens
        d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] not in byte_toks]
        d["model"].update(unk_token="<unk>", byte_fallback=True, fuse_unk=True)
        return reload(d)

    set_components(tok, normalizers.Sequence([normalizers.Prepend("\u2581"),
                                              normalizers.Replace(" ", "\u2581")]),
                   None, sp_decoder, template)
    llama2 = finish(tok)
    set_components(tok, None, pre_tokenizers.Metaspace(replacement="\u2581",
                                                       prepend_scheme="first", split=False),
                   sp_decoder, template)
    mistral = finish(tok)
    set_components(tok, None, pre_tokenizers.Metaspace(replacement="\u2581",
                                                       prepend_scheme="always", split=True),
                   decoders.Sequence([decoders.ByteFallback(),
                                      decoders.Metaspace(replacement="\u2581",
                                                         prepend_scheme="always", split=True)]),
                   template)
    metaspace = finish(tok)
    return llama2, mistral, metaspace


def cases_for(tok, seed):
    enc = []
    for text in CASES + long_texts():
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        enc.append({"ids": ids, "ids_special": ids_special,
                    "decoded": S(tok.decode(ids, skip_special_tokens=False)),
                    "decoded_skip": S(tok.decode(ids_special, skip_special_tokens=True))})
    rng = random.Random(seed)
    n = tok.get_vocab_size(with_added_tokens=True)
    dec = []
    for k in range(24):
        # mostly low ids (bytes, byte tokens, specials), some anywhere
        ids = [rng.randrange(0, 300) if rng.random() < 0.6 else rng.randrange(0, n)
               for _ in range(rng.randint(1, 16))]
        if k == 0:
            ids = []
        dec.append({"ids": ids, "text": S(tok.decode(ids, skip_special_tokens=False)),
                    "text_skip": S(tok.decode(ids, skip_special_tokens=True))})
    return {"encode": enc, "decode": dec}


def main():
    gpt2, gpt2_prefix = make_bytelevel()
    llama3 = make_llama3()
    llama2, mistral, metaspace = make_sentencepiece()
    toks = {"gpt2": gpt2, "gpt2_prefix": gpt2_prefix, "llama3": llama3, "llama2": llama2,
            "mistral": mistral, "metaspace": metaspace}
    out = {"tokenizers_version": tokenizers.__version__,
           "texts": [S(t) for t in CASES + long_texts()], "tokenizers": {}}
    for i, (name, tok) in enumerate(toks.items()):
        tok.save(os.path.join(OUT, name + ".json"), pretty=False)
        out["tokenizers"][name] = cases_for(tok, 100 + i)
        print(name, "vocab", tok.get_vocab_size(with_added_tokens=True))
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("tokenizers", tokenizers.__version__)


if __name__ == "__main__":
    main()
