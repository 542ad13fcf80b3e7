#!/usr/bin/env python3
"""bench/peer.py - measure the Python peer (transformers + peft, + bitsandbytes / torchao).

One job per process, so that peak memory is clean:

    PYTHONPATH=.peers/site python3 bench/peer.py --job 1b-qlora [--steps 10 --warmup 3] [--json OUT]

Jobs (random weights, random token ids, labels = input ids):
    1b-qlora 1b-lora 1b-full 1b-qat 7b-qlora 7b-lora   training steps, tokens/s and peak memory
    nf4-dequant                                          bitsandbytes NF4 + double-quant dequant GB/s
"1b" is the Llama-3.2-1B shape at batch 4 x 2048, "7b" the Llama-2-7B shape at batch 2 x 2048.
Modes: lora (bf16 base frozen, PEFT LoRA r16 a32 on all 7 projections), qlora (the base in
bitsandbytes NF4 + double quant, prepare_model_for_kbit_training, then the same LoRA), full
(full bf16 fine-tune), qat (full fine-tune with torchao fake quantization: int8 per-token
asymmetric activations, int4 group-32 symmetric weights, on every linear but lm_head).
Every training job: gradient checkpointing (use_reentrant=False), torch.optim.AdamW lr 1e-4
(fused where supported; --optim adamw_8bit: bitsandbytes' AdamW8bit), one optimizer step per batch, bf16 autocast (as the HF Trainer's
bf16=True does; --no-autocast turns it off).

Prints one JSON object (and writes it to --json). On failure it prints a JSON object with
"error" and exits 3. bitsandbytes and torchao are imported lazily: where they cannot be
imported the job that needs them fails with "unavailable" in its error.

--tiny shrinks every shape (hidden 64, 2 layers, vocab 512, T 128) for a smoke test, e.g.
--device cpu --tiny.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

# .peers/site (tools/fetch_peer_wheels.sh: bitsandbytes, torchao) is also found without
# PYTHONPATH; appended last, so packages installed on the machine take precedence.
_PEERS_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".peers", "site")
if os.path.isdir(_PEERS_SITE) and _PEERS_SITE not in [os.path.abspath(p) for p in sys.path if p]:
    sys.path.append(_PEERS_SITE)

JOBS = ["1b-qlora", "1b-lora", "1b-full", "1b-qat", "7b-qlora", "7b-lora", "nf4-dequant"]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Model shapes. batch/seq are the benchmark's; the tiny variants keep each shape's structure
# (GQA ratio, tying) at a size a CPU runs in seconds.
SHAPES = {
    "1b": dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        batch=4, seq=2048,
    ),
    "7b": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        head_dim=128, intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False,
        rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096,
        batch=2, seq=2048,
    ),
}
TINY = {
    "1b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, intermediate_size=256, vocab_size=512, max_position_embeddings=256,
               seq=128),
    "7b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
               head_dim=16, intermediate_size=172, vocab_size=512, max_position_embeddings=256,
               seq=128),
}

NF4_SHAPE = (11008, 4096)
NF4_TINY_SHAPE = (256, 512)


class JobError(Exception):
    """A failure with a clean message (no traceback needed), e.g. a package unavailable."""


# ---- helpers ------------------------------------------------------------------------------------

def emit(obj, json_path):
    text = json.dumps(obj, indent=None, sort_keys=False)
    print(text, flush=True)
    if json_path:
        d = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(d, exist_ok=True)
        with open(json_path, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")


def pkg_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        mod = sys.modules.get(name)
        return getattr(mod, "__version__", "unknown")


def import_bnb():
    try:
        import bitsandbytes as bnb  # noqa: F401
        import bitsandbytes.functional  # noqa: F401
    except Exception as e:  # ImportError, or a RuntimeError from a missing native library
        raise JobError(f"bitsandbytes unavailable: {type(e).__name__}: {e}") from None
    return bnb


def import_torchao():
    try:
        import torchao  # noqa: F401
    except Exception as e:
        raise JobError(f"torchao unavailable: {type(e).__name__}: {e}") from None
    return torchao


def device_name(torch, device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n):
    return round(n / 2**30, 3)


# ---- model construction ---------------------------------------------------------------------------

def build_model(torch, shape_name, tiny, device):
    """LlamaForCausalLM with random weights, built directly in bf16 on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = dict(SHAPES[shape_name])
    if tiny:
        s.update(TINY[shape_name])
    batch, seq = s.pop("batch"), s.pop("seq")
    config = LlamaConfig(**s, attn_implementation="sdpa", use_cache=False,
                         attention_bias=False, mlp_bias=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    model.train()
    return model, config, batch, seq


def quantize_nf4_(torch, model, bnb):
    """Replace every decoder nn.Linear with bnb.nn.Linear4bit (NF4, double quant, bf16
    compute, uint8 storage), as transformers' BitsAndBytesConfig(load_in_4bit=True, ...) does
    when loading (replace_with_bnb_linear + Params4bit(...).to(device)); lm_head stays bf16
    (transformers never converts the output embedding). Marks the model is_loaded_in_4bit so
    that peft's prepare_model_for_kbit_training treats it as a k-bit model."""
    import torch.nn as nn

    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and n.split(".")[-1] != "lm_head"]
    for name in names:
        old = model.get_submodule(name)
        w = old.weight.data
        new = bnb.nn.Linear4bit(
            old.in_features, old.out_features, bias=old.bias is not None,
            compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
            quant_storage=torch.uint8, device="meta",
        )
        new.weight = bnb.nn.Params4bit(
            w, requires_grad=False, blocksize=64, compress_statistics=True, quant_type="nf4",
            quant_storage=torch.uint8, module=new,
        ).to(w.device)  # quantizes here (Params4bit.to on an unquantized weight)
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.data, requires_grad=False)
        new.source_cls = nn.Linear
        new.requires_grad_(False)
        model.set_submodule(name, new)
        del old, w
    model.is_loaded_in_4bit = True
    model.is_4bit_serializable = True
    return len(names)


def lora_config():
    from peft import LoraConfig
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")


def setup_training(torch, mode, model, device, info):
    """Applies the mode's recipe to the bf16 model; returns the model to train."""
    gc_kwargs = {"use_reentrant": False}
    if mode == "qlora":
        bnb = import_bnb()
        info["bitsandbytes"] = pkg_version("bitsandbytes")
        from peft import get_peft_model, prepare_model_for_kbit_training
        info["quantized_linears"] = quantize_nf4_(torch, model, bnb)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=gc_kwargs)
        model = get_peft_model(model, lora_config())
    elif mode == "lora":
        from peft import get_peft_model
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model = get_peft_model(model, lora_config())
    elif mode == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    elif mode == "qat":
        import_torchao()
        info["torchao"] = pkg_version("torchao")
        import torch.nn as nn

        def not_lm_head(mod, fqn):
            return isinstance(mod, nn.Linear) and fqn.split(".")[-1] != "lm_head"

        try:
            from torchao.quantization import quantize_
            from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
        except ImportError:
            QATConfig = None
        if QATConfig is not None:
            act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
            wgt = IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=True)
            quantize_(model, QATConfig(activation_config=act, weight_config=wgt, step="prepare"),
                      filter_fn=not_lm_head)
            info["qat_api"] = ("torchao.quantization.quantize_(QATConfig(IntxFakeQuantizeConfig("
                               "int8, per_token, asym), IntxFakeQuantizeConfig(int4, group 32, "
                               "sym)))")
        else:  # older torchao: the legacy quantizer (also fake-quantizes lm_head)
            from torchao.quantization.qat import Int8DynActInt4WeightQATQuantizer
            model = Int8DynActInt4WeightQATQuantizer(groupsize=32).prepare(model)
            info["qat_api"] = "Int8DynActInt4WeightQATQuantizer(groupsize=32)"
        fq = sum(1 for m in model.modules() if type(m).__name__.startswith("FakeQuantized"))
        info["fake_quantized_linears"] = fq
        if fq == 0:
            raise JobError("torchao QAT prepare replaced no linear layer")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    else:
        raise JobError(f"unknown mode {mode}")
    model.train()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "is_gradient_checkpointing", False):
        raise JobError(f"gradient checkpointing is not on in mode {mode}")
    return model


def make_optimizer(torch, params, device, optim="adamw"):
    if optim == "adamw_8bit":  # bitsandbytes' blockwise 8-bit AdamW, what axolotl's adamw_bnb_8bit is
        bnb = import_bnb()
        return bnb.optim.AdamW8bit(params, lr=1e-4), "bitsandbytes AdamW8bit(lr=1e-4)"
    try:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        return opt, "AdamW(lr=1e-4, fused)"
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=device.type == "cuda")
        return opt, "AdamW(lr=1e-4, foreach)" if device.type == "cuda" else "AdamW(lr=1e-4)"


# ---- jobs ---------------------------------------------------------------------------------------

def run_training(torch, args, device, result):
    shape_name, mode = args.job.split("-", 1)
    t_setup = time.perf_counter()
    torch.manual_seed(0)
    model, config, batch, seq = build_model(torch, shape_name, args.tiny, device)
    info = {}
    model = setup_training(torch, mode, model, device, info)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise JobError("no trainable parameter")
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
                  for p in model.parameters())  # Params4bit packs 2 values a byte
    opt, opt_name = make_optimizer(torch, params, device, args.optim)

    steps, warmup = args.steps, args.warmup
    g = torch.Generator(device=device).manual_seed(1234)
    batches = [torch.randint(0, config.vocab_size, (batch, seq), device=device, generator=g)
               for _ in range(warmup + steps)]
    sync(torch, device)
    setup_s = time.perf_counter() - t_setup

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if args.autocast else None)

    times, losses = [], []
    for i, ids in enumerate(batches):
        sync(torch, device)
        t0 = time.perf_counter()
        if autocast is not None:
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(torch, device)
        t1 = time.perf_counter()
        losses.append(loss.detach().float().item())
        if i >= warmup:
            times.append(t1 - t0)
        if args.verbose:
            print(f"step {i}{' (warm-up)' if i < warmup else ''}: {1e3 * (t1 - t0):.1f} ms, "
                  f"loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
        if not math.isfinite(losses[-1]):
            raise JobError(f"loss is {losses[-1]} at step {i}")

    med = statistics.median(times)
    peer = f"transformers {pkg_version('transformers')}"
    if mode in ("lora", "qlora"):
        peer += f" + peft {pkg_version('peft')}"
    if mode == "qlora":
        peer += f" + bitsandbytes {info['bitsandbytes']}"
    if mode == "qat":
        peer += f" + torchao {info['torchao']}"
    result.update({
        "peer": peer,
        "tokens_per_s": round(batch * seq / med, 1),
        "step_ms_median": round(1e3 * med, 3),
        "peak_alloc_gib": gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
        "steps": steps,
        "loss_first": round(losses[0], 5),
        "loss_last": round(losses[-1], 5),
        "device": device_name(torch, device),
        # extras
        "warmup": warmup,
        "batch": batch,
        "seq": seq,
        "tiny": args.tiny,
        "autocast_bf16": args.autocast,
        "optimizer": opt_name,
        "gradient_checkpointing": True,
        "params_total": n_total,
        "params_trainable": n_train,
        "step_ms": [round(1e3 * t, 3) for t in times],
        "setup_s": round(setup_s, 2),
        "torch": torch.__version__,
    })
    result.update(info)


def time_op(torch, device, fn, iters, warmup, prefill):
    """Median seconds of fn() over iters calls after warmup calls. On CUDA each call is timed by
    its own pair of events; with prefill the GPU is first kept busy (torch.cuda._sleep) so that
    the events enclose the kernels alone, not the host's time to launch them."""
    for _ in range(warmup):
        fn()
    sync(torch, device)
    out = []
    if device.type == "cuda":
        can_sleep = prefill and hasattr(torch.cuda, "_sleep")
        for _ in range(iters):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            if can_sleep:
                torch.cuda._sleep(2_000_000)  # ~1 ms at 1.98 GHz: longer than the launches
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(out), out


def run_nf4_dequant(torch, args, device, result):
    bnb = import_bnb()
    F = bnb.functional
    rows, cols = NF4_TINY_SHAPE if args.tiny else NF4_SHAPE
    n = rows * cols
    blocksize = 64
    torch.manual_seed(0)
    w = (torch.randn(rows, cols, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16)
    packed, qs = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=True, quant_type="nf4")
    if not qs.nested:
        raise JobError("quantize_4bit(compress_statistics=True) returned no nested state")
    out = torch.empty(rows, cols, device=device, dtype=torch.bfloat16)

    ref = F.dequantize_4bit(packed, qs)
    if ref.shape != w.shape or ref.dtype != torch.bfloat16:
        raise JobError(f"dequantize_4bit gave {tuple(ref.shape)} {ref.dtype}")
    # Dequantize into a preallocated output (what a training step's reused buffer does) where
    # the backend has the .out kernel (CUDA does; bitsandbytes' CPU backend does not).
    try:
        F.dequantize_4bit(packed, qs, out=out)
        into_out = True
    except (NotImplementedError, RuntimeError):
        into_out = False

    def dequant():
        if into_out:
            F.dequantize_4bit(packed, qs, out=out)
        else:
            F.dequantize_4bit(packed, qs)  # allocates its output (from the caching allocator)

    if not into_out:
        out.copy_(ref)
    sync(torch, device)
    same_as_alloc = bool(torch.equal(out, ref))
    rel_err = ((out.float() - w.float()).norm() / w.float().norm()).item()

    src = torch.empty_like(out).copy_(w)

    def copy():
        out.copy_(src)

    # bytes, as the benchmark counts them: read = packed codes + quantized absmax (uint8, one a
    # block) + nested absmax (fp32, one per 256 blocks) + offset; written = 2 bytes a value.
    # The 16-entry NF4 code and the 256-entry absmax code are negligible and not counted.
    bytes_read = (packed.numel() * packed.element_size()
                  + qs.absmax.numel() * qs.absmax.element_size()
                  + qs.state2.absmax.numel() * qs.state2.absmax.element_size()
                  + (qs.offset.numel() * qs.offset.element_size() if qs.offset is not None else 0))
    bytes_written = 2 * n
    copy_bytes = 2 * (2 * n)

    iters, warm = 20, max(args.warmup, 3)
    t_dq, all_dq = time_op(torch, device, dequant, iters, warm, prefill=True)
    t_cp, all_cp = time_op(torch, device, copy, iters, warm, prefill=True)
    t_dq_l, _ = time_op(torch, device, dequant, iters, warm, prefill=False)
    t_cp_l, _ = time_op(torch, device, copy, iters, warm, prefill=False)

    gbps = lambda b, t: round(b / t / 1e9, 1)  # noqa: E731
    result.update({
        "peer": f"bitsandbytes {pkg_version('bitsandbytes')}",
        "shape": [rows, cols],
        "quant": "nf4, blocksize 64, double quant (absmax uint8, nested blocksize 256 fp32)",
        "dequant_us_median": round(t_dq * 1e6, 2),
        "dequant_gbps": gbps(bytes_read + bytes_written, t_dq),
        "copy_us_median": round(t_cp * 1e6, 2),
        "copy_gbps": gbps(copy_bytes, t_cp),
        "dequant_vs_copy": round((bytes_read + bytes_written) / t_dq / (copy_bytes / t_cp), 3),
        "bytes_read": bytes_read,
        "bytes_written": bytes_written,
        "copy_bytes": copy_bytes,
        "timing": ("CUDA events around each call, median of 20 after warm-up, GPU kept busy "
                   "before each call so launches are not timed" if device.type == "cuda"
                   else "perf_counter, median of 20 after warm-up"),
        # the same with the launch (host) time inside the events
        "dequant_gbps_with_launch": gbps(bytes_read + bytes_written, t_dq_l),
        "copy_gbps_with_launch": gbps(copy_bytes, t_cp_l),
        "dequant_us_all": [round(t * 1e6, 2) for t in all_dq],
        "copy_us_all": [round(t * 1e6, 2) for t in all_cp],
        "rel_error_vs_bf16": round(rel_err, 5),
        "out_matches_fresh_alloc": same_as_alloc,
        "dequant_into_preallocated": into_out,
        "device": device_name(torch, device),
        "tiny": args.tiny,
        "torch": torch.__version__,
    })


# ---- main ---------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="jobs: " + " ".join(JOBS))
    ap.add_argument("--job", choices=JOBS, help="the job to run (one per process)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    ap.add_argument("--json", metavar="OUT", help="also write the JSON object to OUT")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for a smoke test")
    ap.add_argument("--optim", choices=["adamw", "adamw_8bit"], default="adamw",
                    help="torch AdamW (default) or bitsandbytes' AdamW8bit")
    ap.add_argument("--no-autocast", dest="autocast", action="store_false",
                    help="run the step without bf16 autocast")
    ap.add_argument("--verbose", "-v", action="store_true", help="per-step times on stderr")
    ap.add_argument("--list", action="store_true", help="list the jobs and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(JOBS))
        return 0
    if not args.job:
        ap.error("--job is required")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    result = {"job": args.job + ("+8bit" if args.optim == "adamw_8bit" else "")}
    try:
        try:
            import torch
        except Exception as e:
            raise JobError(f"torch unavailable: {type(e).__name__}: {e}") from None
        device = torch.device(args.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise JobError("CUDA is not available (use --device cpu --tiny for a smoke test)")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        if args.job == "nf4-dequant":
            run_nf4_dequant(torch, args, device, result)
        else:
            for pkg in ("transformers",) + (("peft",) if "lora" in args.job else ()):
                try:
                    __import__(pkg)
                except Exception as e:
                    raise JobError(f"{pkg} unavailable: {type(e).__name__}: {e}") from None
            run_training(torch, args, device, result)
    except JobError as e:
        result["error"] = str(e)
        emit(result, args.json)
        return 3
    except BaseException as e:  # noqa: BLE001 - report everything, OOM included, as JSON
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        result["error"] = f"{type(e).__name__}: {e}"[:2000]
        result["traceback"] = tb[-4000:]
        try:
            import torch
            if torch.cuda.is_available():
                result["peak_alloc_gib"] = gib(torch.cuda.max_memory_allocated())
                result["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
        except Exception:
            pass
        emit(result, args.json)
        return 3
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
