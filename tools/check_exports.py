#!/usr/bin/env python3
"""check_exports.py - do the peers load qtune's exports and get qtune's loss? Run on the GPU
machine (torch + transformers + peft there).

  python3 tools/check_exports.py --data EVAL.jsonl --want LOSS [--hf DIR] [--peft DIR --base DIR]

EVAL.jsonl is pre-tokenized ({"input_ids": [...]} per line); LOSS is what `qtune eval` printed
for the checkpoint the exports came from (token-weighted next-token loss). Loads the hf export
with transformers (fp32 compute from its bf16 weights) and the PEFT adapter onto its base with
peft, computes the same loss, prints both, and exits 1 when a loss is off by more than the
stated tolerance (hf: 2e-3 relative, bf16 rounding of merged weights; peft: 1e-4).
"""
import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def loss_of(model, rows):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0].float()
            total += torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--want", type=float, required=True)
    ap.add_argument("--hf")
    ap.add_argument("--peft")
    ap.add_argument("--base")
    a = ap.parse_args()
    rows = [json.loads(l)["input_ids"] for l in open(a.data) if l.strip()]
    bad = 0
    if a.hf:
        m = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32).eval()
        got = loss_of(m, rows)
        ok = abs(got - a.want) <= 2e-3 * a.want
        bad += not ok
        print(f"hf export via transformers: loss {got:.7f}, qtune {a.want:.7f}: "
              f"{'ok' if ok else 'MISMATCH'}")
    if a.peft:
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
        m = PeftModel.from_pretrained(base, a.peft).eval()
        got = loss_of(m, rows)
        ok = abs(got - a.want) <= 1e-4 * a.want
        bad += not ok
        print(f"peft adapter via peft: loss {got:.7f}, qtune {a.want:.7f}: "
              f"{'ok' if ok else 'MISMATCH'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
