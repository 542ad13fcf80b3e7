#!/usr/bin/env python3
"""make_hf_fixtures.py - reference values from the real peers (torch + transformers + peft),
run on the GPU machine (CPU math, fp32, deterministic), stored small in tests/fixtures/hf/.

For each tiny random model:
  <name>/config.json, <name>/model.safetensors     the model as transformers saves it
  <name>/ref.safetensors                           input_ids [B,T] i32, labels [B,T] i32 (-100 =
      ignored), logits [B,T,V] f32, loss [1] f32 (HF's mean over non-ignored next tokens),
      PEFT LoRA tensors (A/B, both random so gradients are non-trivial) named
      "<module>.lora_A" / "<module>.lora_B" with module e.g. "layers.0.self_attn.q_proj",
      their gradients after one backward "<...>.grad", the losses of three AdamW steps
      "adamw_losses" [3], and the LoRA tensors after them "<...>.after3".
  <name>/ref.json                                  the LoRA/optimizer settings used.
Models: llama (GQA, llama3 rope scaling, untied), qwen2 (q/k/v biases, tied embeddings).
Plus an evaluation set for a model the C side has no other reference for:
  eval_mistral/ (a mistral-type model in bf16, sharded in two files, legacy rope keys) with
  eval.jsonl (pre-tokenized rows {"input_ids": [...]}, one with "labels") and eval_ref.json:
  transformers' mean next-token loss over all rows' tokens and its perplexity.
Usage: python3 tools/make_hf_fixtures.py OUTDIR
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf"
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)

from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"])
OPT = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, warmup_steps=1,
           total_steps=3, max_grad_norm=0.05)


def configs():
    llama = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        max_position_embeddings=128, rms_norm_eps=1e-5,
                        rope_theta=10000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16},
                        tie_word_embeddings=False, attention_bias=False,
                        bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    qwen = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                       use_sliding_window=False, bos_token_id=1, eos_token_id=2,
                       torch_dtype="float32")
    return {"llama": llama, "qwen2": qwen}


def lora_name(n):
    # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    n = n.replace("base_model.model.", "", 1)
    if n.startswith("model."):
        n = n[len("model."):]
    return n.replace(".default.weight", "")


def main():
    from peft import LoraConfig, get_peft_model
    for name, cfg in configs().items():
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
        model.eval()
        with torch.no_grad():  # random non-trivial norm weights and biases
            for n, p in model.named_parameters():
                if "norm" in n or n.endswith(".bias"):
                    p.add_(0.1 * torch.randn_like(p))
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)

        B, T = 2, 12
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(3, 256, (B, T), generator=g)
        labels = ids.clone()
        labels[0, :3] = -100  # a masked prompt
        labels[1, 7] = -100
        ref = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32)}
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)
        ref["logits"] = out.logits.float().contiguous()
        ref["loss"] = out.loss.float().reshape(1)

        lcfg = LoraConfig(init_lora_weights=False, **LORA)
        torch.manual_seed(3)
        pm = get_peft_model(model, lcfg)
        pm.train()
        out = pm(input_ids=ids, labels=labels)
        out.loss.backward()
        lora = {lora_name(n): p for n, p in pm.named_parameters() if p.requires_grad}
        for k, p in lora.items():
            ref[k] = p.detach().float().contiguous().clone()
            ref[k + ".grad"] = p.grad.detach().float().contiguous().clone()
        ref["lora_loss"] = out.loss.detach().float().reshape(1)

        params = list(lora.values())
        opt = torch.optim.AdamW(params, lr=OPT["lr"], betas=OPT["betas"], eps=OPT["eps"],
                                weight_decay=OPT["weight_decay"])
        sched = get_cosine_schedule_with_warmup(opt, OPT["warmup_steps"], OPT["total_steps"])
        losses = []
        pm.zero_grad()
        for step in range(OPT["total_steps"]):
            out = pm(input_ids=ids, labels=labels)
            out.loss.backward()
            losses.append(out.loss.item())
            torch.nn.utils.clip_grad_norm_(params, OPT["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad()
        ref["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
        for k, p in lora.items():
            ref[k + ".after3"] = p.detach().float().contiguous().clone()
        save_file(ref, os.path.join(d, "ref.safetensors"))
        meta = dict(lora=LORA, optimizer=OPT, lr_scheduler="cosine", B=B, T=T,
                    transformers=__import__("transformers").__version__,
                    peft=__import__("peft").__version__, torch=torch.__version__)
        with open(os.path.join(d, "ref.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(name, "loss", ref["loss"].item(), "lora_loss", ref["lora_loss"].item(),
              "adamw", losses, flush=True)


def eval_fixture():
    from transformers import MistralConfig
    cfg = MistralConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                        num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                        max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500.0,
                        tie_word_embeddings=False, sliding_window=None, bos_token_id=1,
                        eos_token_id=2)
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
        model.to(torch.bfloat16)  # stored in bf16, as real checkpoints are
    d = os.path.join(OUT, "eval_mistral")
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True, max_shard_size="60KB")
    # the legacy form of the rope keys, as older transformers wrote them
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters", None)
    c["rope_theta"] = rp["rope_theta"] if rp else 500.0
    c["rope_scaling"] = None
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    model = model.float().eval()  # evaluate in fp32 from the bf16 weights
    g = torch.Generator().manual_seed(6)
    rows, total, count = [], 0.0, 0
    for i, T in enumerate([17, 5, 33, 2, 24]):
        ids = torch.randint(0, 300, (T,), generator=g)
        row = {"input_ids": ids.tolist()}
        labels = ids.clone()
        if i == 2:
            labels[:10] = -100
            row["labels"] = labels.tolist()
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].float()
        lp = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], reduction="sum",
                                               ignore_index=-100)
        total += lp.item()
        count += int((labels[1:] != -100).sum())
        rows.append(row)
    with open(os.path.join(d, "eval.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    import math
    with open(os.path.join(d, "eval_ref.json"), "w") as f:
        json.dump({"loss": total / count, "perplexity": math.exp(total / count),
                   "tokens": count, "rows": len(rows)}, f, indent=1)
    print("eval_mistral loss", total / count, "tokens", count, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "eval":
        eval_fixture()
    else:
        main()
        eval_fixture()
