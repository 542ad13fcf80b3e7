#!/usr/bin/env python3
"""make_bnb_fixtures.py - reference NF4 + double-quant bytes from the real bitsandbytes, run on the
GPU machine (bitsandbytes' CUDA kernels), stored small in tests/fixtures/bnb/ for
tests/test_quant_bnb.c.

Writes into OUTDIR:
  bnb_nf4.safetensors   for each case C (seeded weights, see CASES):
      C.input            the weight as quantized (bf16 / f16 / f32, its real shape)
      C.codes            packed NF4 codes, u8 [(n+1)/2, 1], first element in the high nibble
      C.absmax_f32       first-level absmax, f32 [blocks] (quantize_4bit without nested stats)
      C.absmax_q         8-bit codes of absmax - offset, u8 [blocks]
      C.offset           mean(absmax) as bitsandbytes computed it on the GPU, f32 [1]
      C.nested_absmax    second-level absmax, f32 [ceil(blocks/256)]
      C.quant_map        NF4 code values, f32 [16]
      C.nested_quant_map the signed dynamic map, f32 [256]
      C.absmax_dq        dequantize_blockwise(absmax_q) + offset, f32 [blocks]
      C.dequant          dequantize_4bit(codes), input dtype and shape
      C.quant_state      the packed quant_state JSON (QuantState.as_dict(packed=True)), u8
    plus dq8.*: 8-bit blockwise quantization with the dynamic map of a vector holding every
    midpoint between neighbouring map values and the floats just above / below each
    (dq8.input, dq8.codes, dq8.absmax, blocksize 4096), and of Gaussian data (dq8n.*, block 256);
    map.dynamic = create_dynamic_map() and map.linspace<k> = torch.linspace(0.1, 1, k, float32).
  bnb_linear4bit.safetensors  a Linear4bit(128 -> 128, nf4, nested) inside ModuleDict {"proj": ...}
      saved from its state_dict with safetensors (metadata {"format": "pt"} as transformers does);
      its bf16 input weight is "linear.input" in bnb_nf4.safetensors.
  bnb_meta.json         versions, CPU capability, state_dict key order, the quant_state strings.

Usage (GPU machine, bitsandbytes importable): python3 tools/make_bnb_fixtures.py OUTDIR
bitsandbytes is not installed there: unpack its manylinux x86_64 wheel (0.50.2 was used) into an
ignored folder, keeping the python package and libbitsandbytes_cuda130.so only, carry that
folder and put it on PYTHONPATH.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

import bitsandbytes as bnb
import bitsandbytes.functional as F

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/bnb"
os.makedirs(OUT, exist_ok=True)
DEV = "cuda"

# NF4 decision thresholds of dQuantizeNF4 (csrc/kernels.cu), for the tie case
NF4_THRESH = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
              -0.23460740596055984, -0.13791173323988914, -0.045525018125772476,
              0.03979014977812767, 0.1202552504837513, 0.2035212516784668, 0.2920137718319893,
              0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011]


def gen():
    return torch.Generator().manual_seed(20240611)


def cases():
    g = gen()
    out = []
    w = torch.randn(64, 128, generator=g) * 0.02
    w[0, :64] = 0.0                    # an all-zero block
    w[1, 5] = -0.5                     # a block whose absmax is a negative element
    out.append(("g64x128_b64", w.to(torch.bfloat16), 64))
    out.append(("g64x128_b128", w.to(torch.bfloat16), 128))
    out.append(("g64x128_f16_b64", (torch.randn(64, 128, generator=g) * 0.05).to(torch.float16), 64))
    t = torch.distributions.StudentT(torch.tensor(3.0)).sample((96, 200)) * 0.02
    out.append(("t96x200_b64", t.to(torch.bfloat16), 64))            # 300 blocks: partial 2nd-level
    out.append(("g7x143_b64", (torch.randn(7, 143, generator=g)).to(torch.bfloat16), 64))  # odd n
    out.append(("g128x512_b64", (torch.randn(128, 512, generator=g) * 0.02).to(torch.bfloat16), 64))
    out.append(("g96x200_b32", (torch.randn(96, 200, generator=g) * 0.02).to(torch.bfloat16), 32))
    # exact ties: every threshold, and the floats either side of it, in blocks whose scale is exact
    th = torch.tensor(NF4_THRESH, dtype=torch.float32)
    inf = torch.tensor(float("inf"))
    blk = torch.cat([torch.tensor([1.0]), th, torch.nextafter(th, inf), torch.nextafter(th, -inf)])
    blk = torch.cat([blk, torch.zeros(64 - blk.numel())])
    ties = torch.cat([blk, -blk, blk * 0.125, blk * 4.0]).reshape(4, 64)
    out.append(("ties_f32_b64", ties.to(torch.float32), 64))
    return out


def main():
    T = {}
    meta = {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cases": {}}
    for name, w, bs in cases():
        wd = w.to(DEV)
        q, st = F.quantize_4bit(wd, blocksize=bs, compress_statistics=True, quant_type="nf4")
        q2, st_plain = F.quantize_4bit(wd, blocksize=bs, compress_statistics=False, quant_type="nf4")
        assert torch.equal(q, q2)
        deq = F.dequantize_4bit(q, st)
        absmax_dq = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
        packed = st.as_dict(packed=True)
        js = bytes(packed["quant_state.bitsandbytes__nf4"].cpu().numpy()).decode()
        T[name + ".input"] = w.contiguous()
        T[name + ".codes"] = q.cpu()
        T[name + ".absmax_f32"] = st_plain.absmax.cpu()
        T[name + ".absmax_q"] = st.absmax.cpu()
        T[name + ".offset"] = st.offset.reshape(1).float().cpu()
        T[name + ".nested_absmax"] = st.state2.absmax.cpu()
        T[name + ".quant_map"] = st.code.cpu().clone()
        T[name + ".nested_quant_map"] = st.state2.code.cpu().clone()
        T[name + ".absmax_dq"] = absmax_dq.float().cpu()
        T[name + ".dequant"] = deq.cpu()
        T[name + ".quant_state"] = packed["quant_state.bitsandbytes__nf4"].cpu().clone()
        meta["cases"][name] = {"shape": list(w.shape), "dtype": str(w.dtype), "blocksize": bs,
                               "quant_state": js, "offset_repr": repr(st.offset.item())}
        print(name, tuple(w.shape), w.dtype, bs, "blocks", st_plain.absmax.numel(), js, flush=True)

    code = F.create_dynamic_map()
    T["map.dynamic"] = code.clone()
    for k in (2, 3, 5, 9, 17, 33, 65):
        T["map.linspace%d" % k] = torch.linspace(0.1, 1, k, dtype=torch.float32)
    mids = (code[:-1] + code[1:]) * 0.5
    inf = torch.tensor(float("inf"))
    a = torch.cat([torch.tensor([1.0]), mids, torch.nextafter(mids, inf),
                   torch.nextafter(mids, -inf), code]).contiguous()
    c8, s8 = F.quantize_blockwise(a.to(DEV), blocksize=4096)
    T["dq8.input"], T["dq8.codes"], T["dq8.absmax"] = a, c8.cpu(), s8.absmax.cpu()
    g = gen()
    an = torch.randn(1000, generator=g)
    c8n, s8n = F.quantize_blockwise(an.to(DEV), blocksize=256)
    T["dq8n.input"], T["dq8n.codes"], T["dq8n.absmax"] = an, c8n.cpu(), s8n.absmax.cpu()
    T["dq8n.dequant"] = F.dequantize_blockwise(c8n, s8n).cpu()

    # a Linear4bit saved the way transformers saves a 4-bit model's state_dict
    wl = (torch.randn(128, 128, generator=g) * 0.02).to(torch.bfloat16)
    lin = bnb.nn.Linear4bit(128, 128, bias=False, compute_dtype=torch.bfloat16,
                            compress_statistics=True, quant_type="nf4")
    lin.weight.data = wl.clone()
    m = torch.nn.ModuleDict({"proj": lin}).to(DEV)
    sd = m.state_dict()
    T["linear.input"] = wl
    meta["linear4bit_keys"] = [[k, str(v.dtype), list(v.shape)] for k, v in sd.items()]
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()},
              os.path.join(OUT, "bnb_linear4bit.safetensors"), metadata={"format": "pt"})
    print("linear4bit keys", meta["linear4bit_keys"], flush=True)

    save_file({k: v.contiguous() for k, v in T.items()}, os.path.join(OUT, "bnb_nf4.safetensors"))
    with open(os.path.join(OUT, "bnb_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("ok", meta["bitsandbytes"], meta["torch"], meta["cpu_capability"], flush=True)


if __name__ == "__main__":
    main()
