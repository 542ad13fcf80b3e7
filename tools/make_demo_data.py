#!/usr/bin/env python3
"""make_demo_data.py - the demo's data, from a public-domain text in Debian's packages.

The King James Bible (1611; public domain), as Debian's bible-kjv / bible-kjv-text packages
print it (`bible -f Gen1:1-Rev22:21`, one verse per line: "Ge1:1 In the beginning ...").
Writes, under data/demo/:
  kjv.txt              the verses without references: the text the base model is pre-trained
                       on (by qtune itself: tools/pretrain_demo.sh)
  model/tokenizer.json a byte-level BPE tokenizer (Llama-3 style split regex) trained on it
                       with the `tokenizers` library, vocabulary 2048
  model/config.json, model/model.safetensors
                       the untrained base: a Llama (hidden 128, 4 layers, 4 heads / 2 kv heads,
                       ffn 352, tied embeddings) with small random weights, which
                       tools/pretrain_demo.sh then pre-trains with qtune on kjv.txt
  train.jsonl          the fine-tuning set (alpaca): "Which book is this verse from?" with a
                       verse as input -> "Genesis" or "Psalms", 150 verses of each (seeded);
                       Genesis 1:3 and Psalm 23:1 are held out for the demo's question
Usage: python3 tools/make_demo_data.py KJV_TEXT_FILE
"""
import json
import os
import re
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "demo")
BOOKS = {"Ge": "Genesis", "Psa": "Psalm"}
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_init_model(d, vocab, bos, eos):
    import numpy as np
    D, F, L, H, KV, HD = 128, 352, 4, 4, 2, 32
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
           "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": HD,
           "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": True, "bos_token_id": bos, "eos_token_id": eos,
           "hidden_act": "silu", "torch_dtype": "float32"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    rng = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, D)),
         "model.norm.weight": np.ones(D)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(D)
        t[p + "post_attention_layernorm.weight"] = np.ones(D)
        for name, shape in [("self_attn.q_proj", (H * HD, D)), ("self_attn.k_proj", (KV * HD, D)),
                            ("self_attn.v_proj", (KV * HD, D)), ("self_attn.o_proj", (D, H * HD)),
                            ("mlp.gate_proj", (F, D)), ("mlp.up_proj", (F, D)),
                            ("mlp.down_proj", (D, F))]:
            std = 0.02 / (2 * L) ** 0.5 if name in ("self_attn.o_proj", "mlp.down_proj") else 0.02
            t[p + name + ".weight"] = rng.normal(0, std, shape)
    # safetensors: 8-byte header length, JSON header, raw little-endian data
    header, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for k in sorted(t):
        a = np.ascontiguousarray(t[k], dtype="<f4")
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def main():
    src = sys.argv[1]
    verses = []
    for line in open(src, encoding="utf-8", errors="replace"):
        m = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line.strip())
        if m:
            verses.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)))
    os.makedirs(os.path.join(OUT, "init"), exist_ok=True)
    with open(os.path.join(OUT, "kjv.txt"), "w", encoding="utf-8") as f:
        for v in verses:
            f.write(v[3] + "\n")

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([os.path.join(OUT, "kjv.txt")], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    tok.save(os.path.join(OUT, "init", "tokenizer.json"))

    write_init_model(os.path.join(OUT, "init"), tok.get_vocab_size(), bos,
                     tok.token_to_id("<|end_of_text|>"))

    import random
    held = {("Ge", 1, 3), ("Psa", 23, 1)}
    pick = random.Random(7)
    rows = []
    for book, name in (("Ge", "Genesis"), ("Psa", "Psalms")):
        pool = [v for v in verses if v[0] == book and (v[0], v[1], v[2]) not in held]
        for v in pick.sample(pool, 150):
            rows.append({"instruction": "Which book is this verse from?", "input": v[3],
                         "output": name})
    pick.shuffle(rows)
    with open(os.path.join(OUT, "train.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(len(verses), "verses;", tok.get_vocab_size(), "tokens in the vocabulary;", len(rows),
          "fine-tuning rows")


if __name__ == "__main__":
    main()
