#!/usr/bin/env python3
"""check_gguf.py - an independent check of a GGUF file qtune exported, with llama.cpp's own Python
package (`gguf`, from PyPI: pip install gguf) and numpy, sharing no code with qtune.

    tools/check_gguf.py MODEL.gguf [--npy DIR] [--exact] [--safetensors HF_DIR] [--quiet]

It reads the file with gguf.GGUFReader and
  - prints the metadata (key, type, value; arrays summarised) and the tensors (name, type, shape);
  - validates what llama.cpp's loader expects of a llama / qwen2 model: the keys and their value
    types (u32 counts, f32 rope base and RMS epsilon, strings), the tensor names, ggml shapes and
    types (1-D tensors F32), the vocabulary (tokens / token types / scores / merges of the right
    element types and lengths, no duplicate token, special ids inside it), and recomputes the
    Q4_K_M / Q4_0 / Q8_0 choice of type per tensor (llama-quant.cpp's llama_tensor_get_type) to
    report where the file differs (QAT layers keep the format they were trained in);
  - dequantizes every tensor with gguf.quants (numpy implementations of ggml's formats);
  - with --npy DIR: compares each tensor with DIR/<gguf name>.npy (f32, Hugging Face layout: the
    script applies llama.cpp's Q/K row permutation itself for llama), bit for bit with --exact
    (QAT exports), else by relative RMS error under a bound per type; for Q8_0 / Q4_0 tensors it
    also re-quantizes the reference with gguf.quants and compares the bytes;
  - with --safetensors HF_DIR: compares with the weights of a Hugging Face directory (e.g. a
    `qtune export --format hf` of the same model, bf16), mapping the names and permuting Q/K.
Exit status 0 when everything holds, 1 when something does not, 2 when it cannot run.
"""
import argparse
import json
import os
import sys

try:
    import numpy as np
except ImportError:
    sys.exit("check_gguf.py needs numpy: pip install numpy")
try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT
except ImportError:
    print("check_gguf.py needs the `gguf` package (llama.cpp's gguf-py): pip install gguf",
          file=sys.stderr)
    sys.exit(2)

problems = []


def bad(msg):
    problems.append(msg)
    print("PROBLEM:", msg)


# ---- metadata --------------------------------------------------------------------------------

def field_value(f):
    t = f.types[0]
    if t == VT.ARRAY:
        sub = f.types[-1]
        if sub == VT.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() if len(f.parts[i]) == 1 else f.parts[i].tolist()
                for i in f.data]
    if t == VT.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]][0]
    return bool(v) if t == VT.BOOL else v.item()


def type_name(f):
    t = f.types[0]
    if t == VT.ARRAY:
        return "array[%s]" % f.types[-1].name.lower()
    return t.name.lower()


def show(v):
    if isinstance(v, list):
        head = ", ".join(repr(x) for x in v[:5])
        return "[%s%s] (%d)" % (head, ", ..." if len(v) > 5 else "", len(v))
    if isinstance(v, str) and len(v) > 70:
        return repr(v[:67] + "...") + " (%d chars)" % len(v)
    return repr(v)


# ---- llama.cpp conventions, written down independently here ----------------------------------

def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (rows of Q or K, or their bias)"""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


BLOCK = {QT.F32: 1, QT.F16: 1, QT.BF16: 1, QT.Q8_0: 32, QT.Q4_0: 32, QT.Q4_1: 32, QT.Q5_0: 32,
         QT.Q5_1: 32, QT.Q4_K: 256, QT.Q5_K: 256, QT.Q6_K: 256}


def expected_type(ftype, name, ncols, layer, n_layer, tied):
    """llama-quant.cpp's llama_tensor_get_type + tensor_type_fallback for F16 (1), Q4_0 (2),
    Q8_0 (7) and Q4_K_M (15) files of a dense model; None: not a quantizable tensor"""
    if ftype == 1:
        return QT.F16
    default = {7: QT.Q8_0, 2: QT.Q4_0, 15: QT.Q4_K}[ftype]
    t = default
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if ncols % BLOCK[default]:
            t = QT.Q8_0
        elif default != QT.Q8_0:
            t = QT.Q6_K
    elif ftype == 15 and (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")):
        if layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2:
            t = QT.Q6_K
    if ncols % BLOCK[t]:
        t = {QT.Q4_K: QT.Q5_0, QT.Q6_K: QT.Q8_0}.get(t, t)
        if ncols % BLOCK[t]:
            t = QT.F16
    return t


TOL = {QT.F32: 0.0, QT.F16: 1e-3, QT.BF16: 8e-3, QT.Q8_0: 1e-2, QT.Q6_K: 3e-2, QT.Q5_0: 6e-2,
       QT.Q4_K: 0.12, QT.Q4_0: 0.15}


def rel_err(a, b):
    s = float(np.sum(b.astype(np.float64) ** 2))
    e = float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return (e / s) ** 0.5 if s > 0 else e ** 0.5


def values(t):
    """a tensor's values as f32 in numpy (row-major, Hugging Face) order"""
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def hf_name(name):
    """the Hugging Face tensor a GGUF tensor comes from"""
    fixed = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    p = name.split(".")
    if p[0] != "blk":
        return None
    sub = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
           "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
           "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    return "model.layers.%s.%s.%s" % (p[1], sub[p[2]], p[3])


def load_safetensors(d):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        load_file = None
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    out = {}
    for fn in files:
        path = os.path.join(d, fn)
        if load_file is not None:
            try:
                out.update({k: np.asarray(v, dtype=np.float32) for k, v in load_file(path).items()})
                continue
            except Exception:
                pass
        # a minimal reader (bf16 / f16 / f32), so that the check needs no torch
        with open(path, "rb") as fp:
            n = int.from_bytes(fp.read(8), "little")
            hdr = json.loads(fp.read(n))
            base = 8 + n
            buf = np.memmap(path, dtype=np.uint8, mode="r")
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            raw = np.asarray(buf[base + a: base + b])
            if v["dtype"] == "BF16":
                arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif v["dtype"] == "F16":
                arr = raw.view(np.float16).astype(np.float32)
            elif v["dtype"] == "F32":
                arr = raw.view(np.float32)
            else:
                continue
            out[k] = arr.reshape(v["shape"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf_file")
    ap.add_argument("--npy", help="directory of <gguf tensor name>.npy references (HF layout)")
    ap.add_argument("--exact", action="store_true", help="--npy values must match bit for bit")
    ap.add_argument("--safetensors", help="a Hugging Face directory to compare with")
    ap.add_argument("--quiet", action="store_true", help="no listing, problems and summary only")
    a = ap.parse_args()

    r = gguf.GGUFReader(a.gguf_file)
    meta = {}
    if not a.quiet:
        print("%s: GGUF, %d keys, %d tensors, alignment %d" %
              (a.gguf_file, len(r.fields), len(r.tensors), r.alignment))
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        meta[k] = (type_name(f), field_value(f))
        if not a.quiet:
            print("  %-44s %-14s %s" % (k, meta[k][0], show(meta[k][1])))

    def need(key, typ, required=True):
        if key not in meta:
            if required:
                bad("missing key %s" % key)
            return None
        if meta[key][0] != typ:
            bad("%s is %s, llama.cpp expects %s" % (key, meta[key][0], typ))
        return meta[key][1]

    arch = need("general.architecture", "string")
    if arch not in ("llama", "qwen2"):
        bad("general.architecture %r: this check knows llama and qwen2" % arch)
        arch = arch or "llama"
    ftype = need("general.file_type", "uint32")
    need("general.quantization_version", "uint32", ftype not in (0, 1))
    need("general.name", "string", False)
    n_layer = need(arch + ".block_count", "uint32")
    need(arch + ".context_length", "uint32")
    n_embd = need(arch + ".embedding_length", "uint32")
    n_ff = need(arch + ".feed_forward_length", "uint32")
    n_head = need(arch + ".attention.head_count", "uint32")
    n_kv = need(arch + ".attention.head_count_kv", "uint32")
    need(arch + ".rope.freq_base", "float32")
    need(arch + ".attention.layer_norm_rms_epsilon", "float32")
    n_rot = need(arch + ".rope.dimension_count", "uint32", False)
    hd_k = need(arch + ".attention.key_length", "uint32", False) or n_embd // n_head
    hd_v = need(arch + ".attention.value_length", "uint32", False) or n_embd // n_head
    n_vocab_kv = need(arch + ".vocab_size", "uint32", False)
    if n_rot is not None and n_rot != hd_k:
        bad("rope.dimension_count %d != head size %d (llama.cpp refuses it for %s)" %
            (n_rot, hd_k, arch))

    tensors = {t.name: t for t in r.tensors}
    if len(tensors) != len(r.tensors):
        bad("duplicate tensor names")
    te = tensors.get("token_embd.weight")
    n_vocab = int(te.shape[1]) if te is not None else None
    if n_vocab_kv is not None and n_vocab is not None and n_vocab_kv != n_vocab:
        bad("vocab_size %d != token_embd rows %d" % (n_vocab_kv, n_vocab))

    # vocabulary
    model = need("tokenizer.ggml.model", "string")
    if model in ("gpt2", "llama"):
        toks = need("tokenizer.ggml.tokens", "array[string]")
        types = need("tokenizer.ggml.token_type", "array[int32]")
        if toks is not None:
            if n_vocab is not None and len(toks) != n_vocab:
                bad("%d tokens for a vocabulary of %d" % (len(toks), n_vocab))
            if len(set(toks)) != len(toks):
                bad("duplicate tokens (llama.cpp refuses them)")
            if types is not None and len(types) != len(toks):
                bad("token_type has %d entries for %d tokens" % (len(types), len(toks)))
            if types is not None and not set(types) <= {1, 2, 3, 4, 5, 6}:
                bad("token types outside 1..6")
        if model == "gpt2":
            merges = need("tokenizer.ggml.merges", "array[string]")
            if merges is not None and toks is not None:
                tokset = set(toks)
                nbadm = sum(1 for m in merges if " " not in m[1:] or
                            (m[:m.index(" ", 1)] + m[m.index(" ", 1) + 1:]) not in tokset)
                if nbadm:
                    bad("%d merges are not 'a b' with a + b in the vocabulary" % nbadm)
            pre = need("tokenizer.ggml.pre", "string")
            if pre not in ("llama-bpe", "qwen2", "gpt-2", "default"):
                print("note: tokenizer.ggml.pre %r is not one qtune writes" % pre)
        else:
            scores = need("tokenizer.ggml.scores", "array[float32]")
            if scores is not None and toks is not None and len(scores) != len(toks):
                bad("scores has %d entries for %d tokens" % (len(scores), len(toks)))
        for s in ("bos", "eos", "unknown", "seperator", "padding", "mask"):
            v = need("tokenizer.ggml.%s_token_id" % s, "uint32", False)
            if v is not None and toks is not None and v >= len(toks):
                bad("%s token id %d outside the vocabulary" % (s, v))
        need("tokenizer.ggml.add_bos_token", "bool", False)
        need("tokenizer.chat_template", "string", False)
    elif model not in ("none", "no_vocab"):
        bad("tokenizer.ggml.model %r" % model)

    # tensors: names, shapes, types
    tied = "output.weight" not in tensors
    want = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,)}
    if not tied:
        want["output.weight"] = (n_embd, n_vocab)
    if "rope_freqs.weight" in tensors:
        if arch != "llama":
            bad("rope_freqs.weight in a %s model" % arch)
        want["rope_freqs.weight"] = ((n_rot or hd_k) // 2,)
    for i in range(n_layer or 0):
        b = "blk.%d." % i
        want.update({b + "attn_norm.weight": (n_embd,), b + "ffn_norm.weight": (n_embd,),
                     b + "attn_q.weight": (n_embd, n_head * hd_k),
                     b + "attn_k.weight": (n_embd, n_kv * hd_k),
                     b + "attn_v.weight": (n_embd, n_kv * hd_v),
                     b + "attn_output.weight": (n_head * hd_v, n_embd),
                     b + "ffn_gate.weight": (n_embd, n_ff), b + "ffn_up.weight": (n_embd, n_ff),
                     b + "ffn_down.weight": (n_ff, n_embd)})
        for p, rows in (("attn_q", n_head * hd_k), ("attn_k", n_kv * hd_k),
                        ("attn_v", n_kv * hd_v)):
            if arch == "qwen2" or b + p + ".bias" in tensors:
                want[b + p + ".bias"] = (rows,)
        for p, rows in (("attn_output", n_embd), ("ffn_gate", n_ff), ("ffn_up", n_ff),
                        ("ffn_down", n_embd)):
            if b + p + ".bias" in tensors:
                want[b + p + ".bias"] = (rows,)
    for name in sorted(set(want) - set(tensors)):
        bad("missing tensor %s" % name)
    for name in sorted(set(tensors) - set(want)):
        bad("unexpected tensor %s (llama.cpp counts tensors and refuses extras)" % name)
    mix_diff = []
    for t in r.tensors:
        shape = tuple(int(x) for x in t.shape.tolist())
        if t.name in want and shape != want[t.name]:
            bad("%s has shape %s, expected %s" % (t.name, shape, want[t.name]))
        if len(shape) == 1 and t.tensor_type != QT.F32:
            bad("%s is 1-D and %s (llama.cpp keeps 1-D tensors F32)" % (t.name, t.tensor_type.name))
        if len(shape) == 2 and ftype in (1, 2, 7, 15):
            layer = int(t.name.split(".")[1]) if t.name.startswith("blk.") else 0
            e = expected_type(ftype, t.name, shape[0], layer, n_layer, tied)
            if t.tensor_type != e:
                mix_diff.append("%s: %s (llama.cpp: %s)" % (t.name, t.tensor_type.name, e.name))
        if not a.quiet:
            print("  %-34s %-5s %s" % (t.name, t.tensor_type.name, list(shape)))

    # values
    nonfinite = [t.name for t in r.tensors if not np.all(np.isfinite(values(t)))]
    for n in nonfinite:
        bad("%s has non-finite values" % n)

    def reference_of(name, ref):
        """HF-layout reference -> the file's layout (llama.cpp's Q/K permutation for llama)"""
        if arch == "llama" and ".attn_q." in name:
            ref = permute(ref, n_head)
        elif arch == "llama" and ".attn_k." in name:
            ref = permute(ref, n_kv)
        return ref

    compared = exact_ok = bytes_ok = bytes_cmp = 0
    worst = (0.0, "")
    if a.npy:
        for t in r.tensors:
            path = os.path.join(a.npy, t.name + ".npy")
            if not os.path.exists(path):
                continue
            ref = reference_of(t.name, np.load(path).astype(np.float32))
            got = values(t)
            if got.shape != ref.shape:
                bad("%s: shape %s, reference %s" % (t.name, got.shape, ref.shape))
                continue
            compared += 1
            if a.exact:
                if np.array_equal(got.view(np.uint32), ref.view(np.uint32)) or \
                        np.array_equal(got, ref):
                    exact_ok += 1
                else:
                    nd = int(np.sum(got != ref))
                    bad("%s: %d of %d values differ from the reference (max |diff| %.3g)" %
                        (t.name, nd, got.size, float(np.max(np.abs(got - ref)))))
            else:
                e = rel_err(got, ref)
                worst = max(worst, (e, t.name))
                if e > TOL.get(t.tensor_type, 0.2):
                    bad("%s: relative error %.3g over the %s bound %.3g" %
                        (t.name, e, t.tensor_type.name, TOL.get(t.tensor_type, 0.2)))
            if t.tensor_type in (QT.Q8_0, QT.Q4_0):
                bytes_cmp += 1
                mine = np.asarray(gguf.quants.quantize(ref, t.tensor_type)).tobytes()
                if mine == np.asarray(t.data).tobytes():
                    bytes_ok += 1
                elif not a.exact:
                    print("note: %s: gguf.quants quantizes the reference to other bytes" % t.name)
        print("npy: %d tensors compared%s; %d of %d Q8_0/Q4_0 tensors byte-identical to "
              "gguf.quants' quantization of the reference" %
              (compared, (", %d bit-exact" % exact_ok) if a.exact else
               (", worst relative error %.3e (%s)" % worst), bytes_ok, bytes_cmp))
        if compared == 0:
            bad("no .npy reference matched a tensor name")
    if a.safetensors:
        st = load_safetensors(a.safetensors)
        n = 0
        worst = (0.0, "")
        for t in r.tensors:
            hn = hf_name(t.name)
            if hn is None or hn not in st:
                if hn is not None and not (tied and t.name == "output.weight"):
                    bad("%s: %s not in %s" % (t.name, hn, a.safetensors))
                continue
            ref = reference_of(t.name, st[hn].astype(np.float32))
            got = values(t)
            if got.shape != ref.shape:
                bad("%s: shape %s, %s has %s" % (t.name, got.shape, hn, ref.shape))
                continue
            e = rel_err(got, ref)
            n += 1
            worst = max(worst, (e, t.name))
            bound = TOL.get(t.tensor_type, 0.2) + 8e-3  # + the HF export's bf16 rounding
            if e > bound:
                bad("%s: relative error %.3g against %s over %.3g" % (t.name, e, hn, bound))
        print("safetensors: %d tensors compared, worst relative error %.3e (%s)" %
              (n, worst[0], worst[1]))
    if mix_diff:
        print("types that differ from llama.cpp's choice (expected for QAT layers and for "
              "Q5_0, which qtune writes as Q8_0):")
        for d in mix_diff:
            print("  " + d)
    print("%s: %s" % (a.gguf_file, "OK" if not problems else "%d problem(s)" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
