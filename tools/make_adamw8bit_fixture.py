#!/usr/bin/env python3
"""make_adamw8bit_fixture.py - three steps of the real bitsandbytes AdamW8bit (its CUDA kernel),
stored small in tests/fixtures/bnb/ for tests/test_optim.c to hold qtune's 8-bit AdamW to.

Writes OUTDIR/bnb_adamw8bit.safetensors:
  p0            the starting parameter, f32 [5000] (19 full blocks of 256 and a partial one)
  g<k>          the gradient of step k (k = 1, 2, 3), f32 [5000]; some elements of g2 are zero,
                one element of block 3 is forty times the others
  p<k>          the parameter after step k, f32 [5000]
  state1_<k>, state2_<k>    the 8-bit codes of exp_avg / exp_avg_sq after step k, u8 [5000]
  absmax1_<k>, absmax2_<k>  their block absmax, f32 [20]
  qmap1, qmap2  the signed and unsigned dynamic maps the optimizer used, f32 [256]
  hparams       lr, beta1, beta2, eps, weight_decay, f32 [5]
Values are generated from closed formulas (no RNG), so the C test can also check the inputs.

Usage (GPU machine): PYTHONPATH=.peers/site python3 tools/make_adamw8bit_fixture.py OUTDIR
(.peers from tools/fetch_peer_wheels.sh holds bitsandbytes.)
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

import bitsandbytes as bnb

N = 5000
LR, B1, B2, EPS, WD = 1e-2, 0.9, 0.999, 1e-8, 0.1


def start():
    return torch.tensor([math.sin(0.37 * i) * 0.5 for i in range(N)], dtype=torch.float32)


def grad(k):
    g = [math.cos(0.11 * i * k + k) * (1.0 + 0.5 * math.sin(0.013 * i)) for i in range(N)]
    if k == 2:
        for i in range(0, N, 97):
            g[i] = 0.0
    g[3 * 256 + 5] *= 40.0
    return torch.tensor(g, dtype=torch.float32)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    dev = torch.device("cuda")
    p = torch.nn.Parameter(start().to(dev))
    opt = bnb.optim.AdamW8bit([p], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    t = {"p0": start(), "hparams": torch.tensor([LR, B1, B2, EPS, WD], dtype=torch.float32)}
    for k in (1, 2, 3):
        g = grad(k)
        t[f"g{k}"] = g
        p.grad = g.to(dev)
        opt.step()
        st = opt.state[p]
        t[f"p{k}"] = p.detach().float().cpu().clone()
        t[f"state1_{k}"] = st["state1"].cpu().clone()
        t[f"state2_{k}"] = st["state2"].cpu().clone()
        t[f"absmax1_{k}"] = st["absmax1"].cpu().clone()
        t[f"absmax2_{k}"] = st["absmax2"].cpu().clone()
        t["qmap1"] = st["qmap1"].cpu().clone()
        t["qmap2"] = st["qmap2"].cpu().clone()
    assert t["state1_1"].dtype == torch.uint8 and t["absmax1_1"].numel() == 20
    meta = {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(dev)}
    save_file({k: v.contiguous() for k, v in t.items()},
              os.path.join(out, "bnb_adamw8bit.safetensors"), metadata={k: str(v) for k, v in meta.items()})
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
