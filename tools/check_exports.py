#!/usr/bin/env python3
"""check_exports.py - do the peers load qtune's exports and get qtune's loss? Run on the GPU
machine (torch + transformers there; peft and bitsandbytes when importable, e.g. from
PYTHONPATH=.peers/site). tools/run_gpu_tests.sh runs it after the GPU tests.

  python3 tools/check_exports.py --data EVAL.jsonl --want LOSS [--hf DIR]
          [--peft DIR --base DIR] [--bnb DIR [--want-nf4 LOSS] [--bnb-ref HF_DIR]]

EVAL.jsonl is pre-tokenized ({"input_ids": [...]} per line); LOSS is what `qtune eval` printed
for the checkpoint the exports came from (token-weighted next-token loss, f32 on the CPU).

  --hf DIR     `qtune export --format hf`: loaded by transformers, fp32 compute from its bf16
               weights. Tolerance 2e-3 relative (the bf16 rounding of the merged weights).
  --peft DIR   `qtune export --format peft`, loaded by peft onto --base (the checkpoint's base
               model, which must be what the adapters were trained on: a LoRA job, not QLoRA).
               Tolerance 1e-4 (fp32 on both sides).
  --bnb DIR    `qtune export --format bnb-nf4`: loaded by transformers + bitsandbytes on cuda
               (its config.json's quantization_config makes the linear layers bnb Linear4bit,
               NF4 + double quant, bf16 compute); checks that they are Linear4bit, then
                 (1) the loss as bitsandbytes computes it (bf16 activations in its 4-bit
                     matmul; the other modules, which transformers loads in bf16, cast to
                     fp32, exactly): tolerance 1e-2 relative;
                 (2) the loss with each Linear4bit's weight dequantized by bitsandbytes
                     (dequantize_4bit, the bf16 values qtune's own NF4 dequant gives) in fp32
                     nn.Linear layers: tolerance 1e-4 relative;
               both against --want-nf4: qtune's loss of the same NF4 weights (run_gpu_tests.sh
               gets it by loading the hf export as a QLoRA base, quantized from bf16 as the bnb
               export was, with adapters that stay zero). Without --want-nf4 they are compared
               with --want, whose difference includes the NF4 re-quantization of the merged
               weights, under a tolerance of 5e-2 relative.
  --bnb-ref HF_DIR  the hf export of the same checkpoint (the bf16 merged weights the bnb
               export was quantized from): bitsandbytes' own quantize_4bit (blocksize 64,
               compress_statistics, nf4) of each of its linear weights on cuda must give the
               export's bytes: the packed 4-bit codes and the 8-bit absmax codes identical, the
               quant maps identical, and the double-quant offset and second-level absmax equal
               or within 1 ulp (bitsandbytes takes the offset with torch's CUDA mean, whose
               summation order differs from qtune's: ../shared/DESIGN.md, QLoRA numerics).
               When the offset differs, 8-bit codes that differ with it are reported, not failed.

--bnb-device cpu runs the bnb part on bitsandbytes' CPU backend: only a smoke test of this
script (that backend's 8-bit absmax codes differ from its own CUDA kernels' in a few blocks).
Prints one line per check; "bitsandbytes unavailable: skipped" (or peft) when the package does
not import. Exits 1 when a check fails, 0 otherwise (skips included).
"""
import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

TOL_HF, TOL_PEFT = 2e-3, 1e-4
TOL_BNB_NATIVE, TOL_BNB_DEQUANT, TOL_BNB_VS_CKPT = 1e-2, 1e-4, 5e-2


def loss_of(model, rows):
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids], device=dev)
            logits = model(input_ids=x).logits[0].float()
            total += torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    return total / count


def verdict(label, got, want, tol, what="qtune"):
    ok = abs(got - want) <= tol * abs(want)
    print(f"{label}: loss {got:.7f}, {what} {want:.7f}, relative difference "
          f"{abs(got - want) / abs(want):.2e} (tolerance {tol:g}): {'ok' if ok else 'MISMATCH'}",
          flush=True)
    return ok


def load_st(path_dir):
    """every tensor of a directory's *.safetensors, on the CPU"""
    from safetensors.torch import load_file
    out = {}
    for fn in sorted(os.listdir(path_dir)):
        if fn.endswith(".safetensors"):
            out.update(load_file(os.path.join(path_dir, fn)))
    return out


def ulps_apart(a, b):
    """how many f32 ulps two f32 tensors are apart, elementwise (same sign assumed)"""
    ia = a.float().contiguous().view(torch.int32).long()
    ib = b.float().contiguous().view(torch.int32).long()
    return (ia - ib).abs()


def check_bnb_bytes(bnb_dir, ref_dir, F, dev):
    """the bnb export's NF4 tensors against bitsandbytes' quantize_4bit of the hf export's
    bf16 weights; returns the number of problems"""
    exp, ref = load_st(bnb_dir), load_st(ref_dir)
    prefixes = sorted(k[: -len(".weight.absmax")] for k in exp if k.endswith(".weight.absmax"))
    problems, n, notes = 0, 0, []
    codes_same = absq_same = 0
    worst_off = worst_nest = 0
    for p in prefixes:
        w = ref.get(p + ".weight")
        if w is None:
            print(f"  {p}.weight: not in {ref_dir}")
            problems += 1
            continue
        n += 1
        qs = json.loads(bytes(exp[p + ".weight.quant_state.bitsandbytes__nf4"].tolist()).decode())
        q, st = F.quantize_4bit(w.to(dev), blocksize=qs["blocksize"], compress_statistics=True,
                                quant_type="nf4")
        mine = {"codes": q.cpu().reshape(-1), "absmax_q": st.absmax.cpu().reshape(-1),
                "nested_absmax": st.state2.absmax.cpu().float().reshape(-1),
                "quant_map": st.code.cpu().float(), "nested_quant_map": st.state2.code.cpu().float(),
                "offset": st.offset.reshape(1).float().cpu()}
        theirs = {"codes": exp[p + ".weight"].reshape(-1),
                  "absmax_q": exp[p + ".weight.absmax"].reshape(-1),
                  "nested_absmax": exp[p + ".weight.nested_absmax"].float().reshape(-1),
                  "quant_map": exp[p + ".weight.quant_map"].float(),
                  "nested_quant_map": exp[p + ".weight.nested_quant_map"].float(),
                  "offset": torch.tensor([qs["nested_offset"]], dtype=torch.float32)}
        bad = []
        if theirs["codes"].dtype != torch.uint8 or not torch.equal(mine["codes"], theirs["codes"]):
            nd = int((mine["codes"] != theirs["codes"]).sum()) if \
                mine["codes"].shape == theirs["codes"].shape else -1
            bad.append(f"4-bit codes differ ({nd} of {theirs['codes'].numel()} bytes)")
        else:
            codes_same += 1
        for k in ("quant_map", "nested_quant_map"):
            if not torch.equal(mine[k], theirs[k]):
                bad.append(k + " differs")
        d_off = int(ulps_apart(mine["offset"], theirs["offset"]).max())
        d_nest = int(ulps_apart(mine["nested_absmax"], theirs["nested_absmax"]).max()) \
            if mine["nested_absmax"].shape == theirs["nested_absmax"].shape else 99
        worst_off, worst_nest = max(worst_off, d_off), max(worst_nest, d_nest)
        if d_off > 1:
            bad.append(f"offset {theirs['offset'].item()!r} vs bitsandbytes' "
                       f"{mine['offset'].item()!r} ({d_off} ulps)")
        # the second level holds max |absmax - offset|: an offset d_off ulps away moves it by up
        # to d_off of the offset's ulps, which are several of its own when it is smaller
        if d_nest > 1 and mine["nested_absmax"].shape == theirs["nested_absmax"].shape:
            off = theirs["offset"].float()
            off_ulp = (torch.nextafter(off, off * 2) - off).abs().item()
            diff = (mine["nested_absmax"] - theirs["nested_absmax"]).abs().max().item()
            one = (torch.nextafter(theirs["nested_absmax"], theirs["nested_absmax"] * 2)
                   - theirs["nested_absmax"]).abs().max().item()
            if diff > d_off * off_ulp + one:
                bad.append(f"second-level absmax {d_nest} ulps from bitsandbytes' (more than "
                           f"the offset's {d_off} ulp explains)")
            else:
                notes.append(f"  note: {p}: second-level absmax {d_nest} ulps apart, within what "
                             f"the offset's {d_off} ulp moves it")
        elif d_nest > 1:
            bad.append(f"second-level absmax {d_nest} ulps from bitsandbytes'")
        if torch.equal(mine["absmax_q"], theirs["absmax_q"]):
            absq_same += 1
        else:
            nd = int((mine["absmax_q"] != theirs["absmax_q"]).sum())
            msg = f"{nd} of {theirs['absmax_q'].numel()} 8-bit absmax codes differ"
            if d_off == 0 and d_nest == 0:
                bad.append(msg)
            else:
                notes.append(f"  note: {p}: {msg}, with the offset {d_off} / second-level absmax "
                             f"{d_nest} ulp(s) apart (torch's CUDA mean)")
        for k in ("quant_type", "blocksize", "dtype", "shape", "nested_blocksize",
                  "nested_dtype"):
            want = {"quant_type": "nf4", "blocksize": st.blocksize,
                    "dtype": str(st.dtype).replace("torch.", ""), "shape": list(st.shape),
                    "nested_blocksize": st.state2.blocksize,
                    "nested_dtype": str(st.state2.absmax.dtype).replace("torch.", "")}[k]
            if qs.get(k) != want:
                bad.append(f"quant_state {k} {qs.get(k)!r}, bitsandbytes {want!r}")
        if bad:
            problems += 1
            print(f"  {p}: " + "; ".join(bad))
    for s in notes[:10]:
        print(s)
    ok = problems == 0 and n > 0
    print(f"bnb-nf4 bytes vs bitsandbytes quantize_4bit of the hf export's weights: {n} linear "
          f"weights, 4-bit codes identical in {codes_same}, 8-bit absmax codes identical in "
          f"{absq_same}, offset within {worst_off} ulp, second-level absmax within {worst_nest} "
          f"ulp (explained by the offset): {'ok' if ok else 'MISMATCH'}", flush=True)
    return 0 if ok else 1


def check_bnb(a, rows):
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:  # ImportError, or a library that does not load
        print(f"bitsandbytes unavailable: skipped ({type(e).__name__}: {e})", flush=True)
        return 0
    dev = a.bnb_device
    if dev == "cuda" and not torch.cuda.is_available():
        print("bitsandbytes: no CUDA device: skipped", flush=True)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    print(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if dev == 'cuda' else dev}", flush=True)
    bad = 0
    cfg = json.load(open(os.path.join(a.bnb, "config.json")))
    qc = cfg.get("quantization_config", {})
    print(f"bnb-nf4 export: quantization_config {json.dumps(qc, sort_keys=True)}")
    try:
        m = AutoModelForCausalLM.from_pretrained(a.bnb, device_map=dev,
                                                 dtype=torch.float32).eval()
    except Exception as e:  # the export's files refused: a failure of the export, said plainly
        print(f"bnb-nf4 export: transformers + bitsandbytes cannot load it: "
              f"{type(e).__name__}: {e}: MISMATCH", flush=True)
        return 1
    lin4 = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, bnb.nn.Linear4bit)]
    # transformers keeps the other modules in the file's bf16 whatever dtype= says; fp32 here
    # (exact: the values are bf16), so that the losses below differ by bitsandbytes alone
    kept = sorted({str(p.dtype) for p in m.parameters() if p.is_floating_point()})
    with torch.no_grad():
        for p in m.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
    print(f"bnb-nf4 export: non-quantized parameters loaded as {', '.join(kept)}, cast to fp32")
    want_n = 7 * cfg["num_hidden_layers"]
    if len(lin4) != want_n:
        print(f"bnb-nf4 export: {len(lin4)} Linear4bit layers, expected {want_n}: MISMATCH")
        bad += 1
    else:
        st = lin4[0][1].weight.quant_state
        print(f"bnb-nf4 export: {len(lin4)} Linear4bit layers (quant_type {st.quant_type}, "
              f"blocksize {st.blocksize}, double quant {st.nested}, compute dtype "
              f"{lin4[0][1].compute_dtype})")
    # the weights as bitsandbytes dequantizes them, taken before any forward (its CPU backend
    # repacks a Linear4bit's weight in place on the first call)
    deq = {name: F.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
           for name, mod in lin4}
    if a.want_nf4 is not None:
        want, what, tn, td = a.want_nf4, "qtune (same NF4 weights)", TOL_BNB_NATIVE, TOL_BNB_DEQUANT
    else:
        want, what = a.want, "qtune checkpoint (before NF4 re-quantization)"
        tn = td = TOL_BNB_VS_CKPT
    bad += not verdict("bnb-nf4 export via transformers + bitsandbytes (bf16 compute)",
                       loss_of(m, rows), want, tn, what)
    # the same weights as bitsandbytes dequantizes them, in fp32 layers
    for name, mod in lin4:
        w = deq.pop(name)
        lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                              device=dev, dtype=torch.float32)
        with torch.no_grad():
            lin.weight.copy_(w.reshape(mod.out_features, mod.in_features))
            if mod.bias is not None:
                lin.bias.copy_(mod.bias.float())
        parent = m.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], lin)
    bad += not verdict("bnb-nf4 export, bitsandbytes-dequantized weights in fp32",
                       loss_of(m, rows), want, td, what)
    del m
    if a.bnb_ref:
        bad += check_bnb_bytes(a.bnb, a.bnb_ref, F, dev)
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="pre-tokenized JSONL")
    ap.add_argument("--want", type=float, required=True, help="qtune eval's loss of the checkpoint")
    ap.add_argument("--hf", help="a `qtune export --format hf` directory")
    ap.add_argument("--peft", help="a `qtune export --format peft` directory (with --base)")
    ap.add_argument("--base", help="the base model directory the PEFT adapter goes on")
    ap.add_argument("--bnb", help="a `qtune export --format bnb-nf4` directory")
    ap.add_argument("--want-nf4", type=float,
                    help="qtune's loss of the NF4 weights the bnb export holds")
    ap.add_argument("--bnb-ref", help="the hf export the bnb export's bytes are checked against")
    ap.add_argument("--bnb-device", default="cuda",
                    help="cuda (default); cpu only for a smoke test of this script off the GPU "
                         "machine (bitsandbytes' CPU backend: its numbers prove nothing)")
    a = ap.parse_args()
    if a.peft and not a.base:
        ap.error("--peft needs --base")
    if (a.want_nf4 is not None or a.bnb_ref) and not a.bnb:
        ap.error("--want-nf4 and --bnb-ref go with --bnb")
    rows = [json.loads(l)["input_ids"] for l in open(a.data) if l.strip()]
    print(f"check_exports: {len(rows)} rows, {sum(len(r) - 1 for r in rows)} scored tokens; "
          f"torch {torch.__version__}", flush=True)
    bad = 0
    if a.hf:
        m = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32).eval()
        bad += not verdict("hf export via transformers", loss_of(m, rows), a.want, TOL_HF)
        del m
    if a.peft:
        try:
            from peft import PeftModel
        except Exception as e:
            print(f"peft unavailable: skipped ({type(e).__name__}: {e})", flush=True)
        else:
            base = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
            m = PeftModel.from_pretrained(base, a.peft).eval()
            bad += not verdict("peft adapter via peft", loss_of(m, rows), a.want, TOL_PEFT)
            del m
    if a.bnb:
        bad += check_bnb(a, rows)
    print(f"check_exports: {'all ok' if not bad else '%d check(s) failed' % bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
