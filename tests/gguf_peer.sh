#!/usr/bin/env bash
# gguf_peer.sh - ctest gguf_peer: qtune's GGUF exports read and checked by an independent reader,
# llama.cpp's own Python package `gguf` (PyPI) with numpy, through tools/check_gguf.py (which
# shares no code with qtune: gguf.GGUFReader for the file, gguf.quants to dequantize and
# re-quantize, llama.cpp's conventions written down there).
#
#   tests/gguf_peer.sh QTUNE [TEST_EXPORT_GGUF]    (repository root; ctest passes the two
#                                                  executables of its build; without the second,
#                                                  as tools/run_gpu_tests.sh may run it, part D
#                                                  is left out, visibly)
# The Python is .venv-tools/bin/python (made by tools/deps.sh --test-tools, which tools/test.sh
# runs), or $QT_PEER_PYTHON; without gguf and numpy there the test prints SKIPPED and exits 77.
#
#   A. a QLoRA job trained by `qtune train` on the demo model (data/demo/model: a real BPE
#      tokenizer, tied embeddings), exported by `qtune export` to gguf-f16, gguf-q8_0, gguf-q4_0,
#      gguf-q4_k_m and hf: each GGUF valid for llama.cpp, and every tensor within its format's
#      bound of the hf export (--safetensors).
#   B. a QAT + LoRA job against Q4_0 trained by `qtune train`, exported the same way: valid, and
#      the trained layers exact in an independent sense: the Q4_0 blocks of every linear weight,
#      dequantized by gguf.quants, round (to bf16, nearest-even) to the hf export's weights bit
#      for bit, and the f16 / q4_0 / q4_k_m files hold the same blocks. A control shows that the
#      comparison has teeth: A's re-quantized (not trained) Q4_0 layers fail it.
#   C. a plain Hugging Face directory (tests/fixtures/hf/qwen2: qkv biases, tied, no permutation)
#      exported without a vocabulary: valid, and close to the original f32 weights and to its hf
#      export.
#   D. bit-exactness of QAT exports against qtune's own fake-quant weights: test_export_gguf run
#      with QT_GGUF_DUMP keeps its GGUF files and writes .npy references of the weights the
#      forward multiplies by (qt_linear_merged: merged, fake-quantized, Hugging Face layout), so
#      the references come from qtune and no Python re-implements its QAT; the QAT files (Q4_0,
#      Q8_0, Q4_K, and Q4_0 layers in a Q4_K_M file) must match them bit for bit (--exact), also
#      when the same checkpoints are exported again by the `qtune export` CLI; the other files
#      (LoRA checkpoint, plain models; Llama 3, Llama 2 sentencepiece, GPT-2 and Qwen2
#      vocabularies) within their format's bound, their Q8_0 / Q4_0 tensors re-quantized by
#      gguf.quants and compared byte for byte.
# Closing line: "gguf_peer: N passed, N failed"; exit 0 when all passed.
set -uo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: tests/gguf_peer.sh QTUNE [TEST_EXPORT_GGUF]" >&2
    exit 2
fi
qtune=$1
teg=${2:-}
py=${QT_PEER_PYTHON:-.venv-tools/bin/python}
if [ ! -x "$py" ] || ! "$py" -c "import gguf, numpy" >/dev/null 2>&1; then
    echo "SKIPPED gguf_peer: no $py with the gguf and numpy packages (tools/deps.sh" \
        "--test-tools makes .venv-tools from PyPI; it needs network)"
    exit 77
fi
echo "gguf_peer: $("$py" -c "import sys, numpy, importlib.metadata as m; \
print('gguf', m.version('gguf'), 'numpy', numpy.__version__, 'python', sys.version.split()[0])")"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qt_gguf_peer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "ok   $*"
}
no() {
    failed=$((failed + 1))
    echo "FAIL $*"
}

# run LABEL CMD...: CMD must succeed; its output is shown when it does not
run() {
    local label=$1
    shift
    if "$@" >"$tmp/out.txt" 2>&1; then
        ok "$label"
    else
        no "$label (exit $?):"
        sed 's/^/    /' "$tmp/out.txt" | tail -n 40
    fi
}

# check FILE ARGS...: tools/check_gguf.py FILE ARGS --quiet; prints its findings
check() {
    local f=$1
    shift
    if "$py" tools/check_gguf.py "$f" "$@" --quiet >"$tmp/check.txt" 2>&1; then
        ok "check_gguf.py $(basename "$f") $*"
        grep -E '^(npy|safetensors):' "$tmp/check.txt" | sed 's/^/    /'
    else
        no "check_gguf.py $(basename "$f") $*:"
        grep -v '^  .*(llama.cpp: ' "$tmp/check.txt" | sed 's/^/    /' | tail -n 40
    fi
}

# a small training job on the demo model: job FILE OUTDIR [extra YAML lines]
job() {
    cat >"$1" <<EOF
base_model: data/demo/model
adapter: ${4:-qlora}
lora_r: 4
lora_alpha: 8
lora_dropout: 0.0
lora_target_linear: true
$3
datasets:
  - path: data/demo/train.jsonl
    type: alpaca
sequence_len: 128
sample_packing: true
micro_batch_size: 2
max_steps: 3
learning_rate: 1e-2
output_dir: $2
seed: 7
EOF
}

# export CKPT NAME: NAME-{f16,q8_0,q4_0,q4_k_m}.gguf and NAME_hf/ in $tmp
export_all() {
    local f
    for f in f16 q8_0 q4_0 q4_k_m; do
        run "qtune export $(basename "$1") --format gguf-$f" \
            "$qtune" export "$1" --format "gguf-$f" --out "$tmp/$2-$f.gguf"
    done
    run "qtune export $(basename "$1") --format hf" "$qtune" export "$1" --format hf --out "$tmp/$2_hf"
}

# ---- A. QLoRA checkpoint from qtune train ---------------------------------------------------------
job "$tmp/qlora.yaml" "$tmp/qlora_run" ""
run "qtune train (QLoRA, demo model)" "$qtune" train "$tmp/qlora.yaml" --device cpu
export_all "$tmp/qlora_run/checkpoint-3.h5" qlora
for f in f16 q8_0 q4_0 q4_k_m; do
    check "$tmp/qlora-$f.gguf" --safetensors "$tmp/qlora_hf"
done

# ---- B. QAT + LoRA against Q4_0 from qtune train ------------------------------------------------
job "$tmp/qat.yaml" "$tmp/qat_run" "qat:
  weight_format: q4_0" lora
run "qtune train (QAT q4_0 + LoRA, demo model)" "$qtune" train "$tmp/qat.yaml" --device cpu
export_all "$tmp/qat_run/checkpoint-3.h5" qat
for f in f16 q8_0 q4_0 q4_k_m; do
    check "$tmp/qat-$f.gguf" --safetensors "$tmp/qat_hf"
done

# QAT blocks against the hf export: bf16(dequant(block)) == the hf export's bf16 weight, for every
# Q4_0 linear weight; every file holds the same blocks. --expect-mismatch: the control.
cat >"$tmp/qat_vs_hf.py" <<'EOF'
import sys
import numpy as np
sys.path.insert(0, "tools")
import check_gguf as C  # noqa: E402  (its helpers: values, hf_name, permute, load_safetensors)
import gguf  # noqa: E402

args = sys.argv[1:]
control = args[0] == "--expect-mismatch"
if control:
    args = args[1:]
hf, files = args[0], args[1:]
st = C.load_safetensors(hf)


def bf16_rne(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


blocks = {}
bad = []
n = 0
for path in files:
    r = gguf.GGUFReader(path)
    f = {k: C.field_value(v) for k, v in r.fields.items() if not k.startswith("GGUF.")}
    arch = f["general.architecture"]
    for t in r.tensors:
        if not t.name.startswith("blk.") or t.tensor_type != gguf.GGMLQuantizationType.Q4_0:
            continue
        raw = np.asarray(t.data).tobytes()
        if blocks.setdefault(t.name, raw) != raw:
            bad.append("%s: %s holds other Q4_0 blocks than %s" % (t.name, path, files[0]))
        ref = st[C.hf_name(t.name)].astype(np.float32)
        if arch == "llama" and ".attn_q." in t.name:
            ref = C.permute(ref, f["llama.attention.head_count"])
        elif arch == "llama" and ".attn_k." in t.name:
            ref = C.permute(ref, f["llama.attention.head_count_kv"])
        got = bf16_rne(C.values(t))
        nd = int(np.sum(got.view(np.uint32) != ref.view(np.uint32)))
        n += 1
        if nd:
            bad.append("%s in %s: %d of %d values differ from the hf export after bf16 rounding"
                       % (t.name, path.split("/")[-1], nd, got.size))
print("%d Q4_0 linear weights in %d file(s) compared with %s" % (n, len(files), hf))
for b in bad[:12]:
    print("  " + b)
if n == 0:
    print("no Q4_0 linear weight found")
    sys.exit(1)
if control:
    print("control: %d of %d differ, as expected of re-quantized weights" % (len(bad), n))
    sys.exit(0 if bad else 1)
sys.exit(1 if bad else 0)
EOF
run "QAT Q4_0 blocks == bf16 hf export, and the same in qat-{f16,q4_0,q4_k_m}.gguf" \
    "$py" "$tmp/qat_vs_hf.py" "$tmp/qat_hf" "$tmp/qat-q4_0.gguf" "$tmp/qat-f16.gguf" \
    "$tmp/qat-q4_k_m.gguf"
sed 's/^/    /' "$tmp/out.txt"
run "control: the QLoRA (not QAT) q4_0 file fails that comparison" \
    "$py" "$tmp/qat_vs_hf.py" --expect-mismatch "$tmp/qlora_hf" "$tmp/qlora-q4_0.gguf"
tail -n 1 "$tmp/out.txt" | sed 's/^/    /'

# ---- C. a plain Hugging Face directory: qwen2, without a vocabulary -----------------------------
q=tests/fixtures/hf/qwen2
for f in f16 q4_0; do
    run "qtune export qwen2 --format gguf-$f --no-tokenizer" \
        "$qtune" export "$q" --format "gguf-$f" --out "$tmp/qwen2-$f.gguf" --no-tokenizer
done
run "qtune export qwen2 --format hf" "$qtune" export "$q" --format hf --out "$tmp/qwen2_hf"
for f in f16 q4_0; do
    check "$tmp/qwen2-$f.gguf" --safetensors "$q"
    check "$tmp/qwen2-$f.gguf" --safetensors "$tmp/qwen2_hf"
done

# ---- D. QAT bit-exactness against qtune's own fake-quant weights ---------------------------------
d=$tmp/dump
if [ -z "$teg" ]; then
    echo "note: no TEST_EXPORT_GGUF given: part D (QAT bit-exactness against qtune's fake-quant" \
        "weights) left out"
elif QT_GGUF_DUMP=$d "$teg" >"$tmp/teg.txt" 2>&1; then
    ok "test_export_gguf with QT_GGUF_DUMP ($(tail -n 1 "$tmp/teg.txt"))"
    # the QAT files, bit for bit
    check "$d/a_qat-q4_0.gguf" --npy "$d/a_qat_q4_0.h5_npy" --exact
    check "$d/a_qat_q4_0-q4_k_m.gguf" --npy "$d/a_qat_q4_0.h5_npy" --exact
    check "$d/a_qat-q8_0.gguf" --npy "$d/a_qat_q8_0.h5_npy" --exact
    check "$d/b_qat-q4_k_m.gguf" --npy "$d/b_qat_q4_k.h5_npy" --exact
    # the same checkpoints through the CLI
    for c in "a_qat_q4_0 q4_0" "a_qat_q4_0 q4_k_m" "a_qat_q8_0 q8_0" "b_qat_q4_k q4_k_m"; do
        set -- $c
        run "qtune export $1.h5 --format gguf-$2" \
            "$qtune" export "$d/$1.h5" --format "gguf-$2" --out "$tmp/cli-$1-$2.gguf"
        check "$tmp/cli-$1-$2.gguf" --npy "$d/$1.h5_npy" --exact
    done
    # the others within their bounds
    for f in f16 q8_0 q4_0 q4_k_m; do check "$d/a_lora-$f.gguf" --npy "$d/a_lora_npy"; done
    for f in q8_0 q4_0 q4_k_m; do check "$d/b-$f.gguf" --npy "$d/b_npy"; done
    for f in f16 q4_0; do check "$d/c-$f.gguf" --npy "$d/c_npy"; done
    check "$d/d-gpt2-f16.gguf"
    check "$d/notok.gguf"
else
    no "test_export_gguf with QT_GGUF_DUMP:"
    tail -n 20 "$tmp/teg.txt" | sed 's/^/    /'
fi

echo "gguf_peer: $passed passed, $failed failed"
[ "$failed" = 0 ]
