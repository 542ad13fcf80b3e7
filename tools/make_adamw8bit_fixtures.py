#!/usr/bin/env python3
"""make_adamw8bit_fixtures.py - the real bitsandbytes AdamW8bit (its CUDA kernels) on four
tensors at once, three steps, stored small for tests/test_optim.c: the 8-bit path at and past
min_8bit_size, the 32-bit path below it (bitsandbytes' own 32-bit Adam kernel, which orders the
weight decay after the update, unlike torch), and both with and without weight decay.

  tensor  elements  param group             state
  a       4097      weight_decay = WD       8-bit: 17 blocks of 256, the last with 1 element
  b       1000      weight_decay = WD       32-bit (below min_8bit_size 4096)
  c       4096      weight_decay = 0        8-bit: exactly min_8bit_size
  d       300       weight_decay = 0        32-bit

bnb.optim.AdamW8bit(lr, betas=(B1, B2), eps=EPS) with its defaults otherwise (min_8bit_size
4096, blockwise, block 256, no paging); the learning rate changes per step (LRS), as a schedule
would change it.

Values are exact dyadic fractions from a 32-bit integer hash (no RNG, no libm), so the C test
regenerates the start and the gradients bit for bit instead of storing them:
  p0[i] = (h(t, i, 0) % 2049 - 1024) / 2048
  g_k[i] = (h(t, i, k) % 2049 - 1024) / 1024, then: tensor a, i % 256 == 5 at k = 1: x 32 (an
           outlier that sets its block's absmax); k = 2: zero where h % 7 == 0; tensor a,
           i == 300 at k = 3: NaN (bitsandbytes zeroes that element's moments and leaves it);
           tensor c, i < 8: zero at every step
(t = the tensor's index 0..3, k = step 1..3; h below). gen.* holds the first 64 values of a's
start and gradients so that the test can check its generator against this one.

Writes OUTDIR/bnb_adamw8bit_groups.safetensors (about 180 KB):
  hparams                       f32 [7]: beta1, beta2, eps, weight_decay, lr of steps 1..3
  qmap1, qmap2                  f32 [256]: the signed and unsigned dynamic maps it used
  <t>.p<k>                      f32: tensor t after step k (k = 1, 2, 3)
  <t>.state1_<k>, .state2_<k>   u8 (a, c): the codes of exp_avg / exp_avg_sq after step k
  <t>.absmax1_<k>, .absmax2_<k> f32 (a, c): their per-block absmax
  <t>.state1_3, <t>.state2_3    f32 (b, d): exp_avg / exp_avg_sq after the last step
  gen.p0, gen.g1, gen.g2, gen.g3  f32 [64]: tensor a's first values (generator check)
and metadata naming the bitsandbytes and torch versions and the device.

Usage (GPU machine, repo root; .peers from tools/fetch_peer_wheels.sh holds bitsandbytes):
  python3 tools/make_adamw8bit_fixtures.py tests/fixtures/bnb
(.peers/site is put on sys.path by this script when present, as bench/peer.py does.)
--device cpu runs bitsandbytes' CPU backend instead: a dry run of this script only (its CPU
AdamW orders the weight decay differently), never a fixture.
"""
import argparse
import json
import os
import sys

_PEERS_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".peers", "site")
if os.path.isdir(_PEERS_SITE) and _PEERS_SITE not in [os.path.abspath(p) for p in sys.path if p]:
    sys.path.append(_PEERS_SITE)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import bitsandbytes as bnb  # noqa: E402

B1, B2, EPS, WD = 0.9, 0.999, 1e-8, 0.1
LRS = [1e-2, 5e-3, 2e-3]
SIZES = {"a": 4097, "b": 1000, "c": 4096, "d": 300}
DECAY = {"a": True, "b": True, "c": False, "d": False}
EIGHT = {"a": True, "b": False, "c": True, "d": False}
M32 = 0xFFFFFFFF


def h(t, i, k):
    """a 32-bit integer hash of (tensor, element, step); tests/test_optim.c has the same"""
    x = (i * 0x9E3779B1 + k * 0x85EBCA77 + t * 0xC2B2AE3D + 0x27D4EB2F) & M32
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & M32
    x ^= x >> 12
    x = (x * 0x297A2D39) & M32
    x ^= x >> 15
    return x


def start(t, n):
    return [(h(t, i, 0) % 2049 - 1024) / 2048.0 for i in range(n)]


def grad(name, t, n, k):
    g = [(h(t, i, k) % 2049 - 1024) / 1024.0 for i in range(n)]
    for i in range(n):
        if name == "a" and k == 1 and i % 256 == 5:
            g[i] *= 32.0
        if k == 2 and h(t, i, k) % 7 == 0:
            g[i] = 0.0
        if name == "c" and i < 8:
            g[i] = 0.0
    if name == "a" and k == 3:
        g[300] = float("nan")
    return g


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cuda (the fixture) or cpu (a dry run of the script; not a fixture)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("make_adamw8bit_fixtures: no CUDA device: the fixture must come from bitsandbytes' CUDA kernels")

    names = list(SIZES)
    params = {nm: torch.nn.Parameter(torch.tensor(start(t, SIZES[nm]), dtype=torch.float32, device=dev))
              for t, nm in enumerate(names)}
    groups = [{"params": [params[nm] for nm in names if DECAY[nm]], "weight_decay": WD},
              {"params": [params[nm] for nm in names if not DECAY[nm]], "weight_decay": 0.0}]
    opt = bnb.optim.AdamW8bit(groups, lr=LRS[0], betas=(B1, B2), eps=EPS)

    out = {"hparams": torch.tensor([B1, B2, EPS, WD] + LRS, dtype=torch.float32)}
    out["gen.p0"] = torch.tensor(start(0, 64), dtype=torch.float32)
    for k in (1, 2, 3):
        for t, nm in enumerate(names):
            params[nm].grad = torch.tensor(grad(nm, t, SIZES[nm], k), dtype=torch.float32, device=dev)
        out[f"gen.g{k}"] = params["a"].grad[:64].cpu().clone()
        for g in opt.param_groups:
            g["lr"] = LRS[k - 1]
        opt.step()
        for nm in names:
            st = opt.state[params[nm]]
            out[f"{nm}.p{k}"] = params[nm].detach().float().cpu().clone()
            if EIGHT[nm]:
                assert st["state1"].dtype == torch.uint8, f"{nm}: expected 8-bit state"
                for s in ("state1", "state2", "absmax1", "absmax2"):
                    out[f"{nm}.{s}_{k}"] = st[s].cpu().clone()
                out["qmap1"] = st["qmap1"].cpu().clone()
                out["qmap2"] = st["qmap2"].cpu().clone()
            else:
                assert st["state1"].dtype == torch.float32, f"{nm}: expected 32-bit state"
                if k == 3:
                    out[f"{nm}.state1_3"] = st["state1"].cpu().clone()
                    out[f"{nm}.state2_3"] = st["state2"].cpu().clone()
            assert st["step"] == k
    assert out["a.absmax1_1"].numel() == 17 and out["c.absmax1_1"].numel() == 16
    meta = {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(dev) if args.device == "cuda" else "cpu (dry run)"}
    os.makedirs(args.outdir, exist_ok=True)
    path = os.path.join(args.outdir, "bnb_adamw8bit_groups.safetensors" if args.device == "cuda"
                        else "bnb_adamw8bit_groups.cpu-dry-run.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={k: str(v) for k, v in meta.items()})
    meta["path"] = path
    meta["bytes"] = os.path.getsize(path)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
