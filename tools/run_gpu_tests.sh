#!/usr/bin/env bash
# run_gpu_tests.sh - what runs ON the GPU machine: the bundle's tests, plain and under
# compute-sanitizer, then the peer checks of qtune's exports. Working directory: the repo root,
# with .bundle/ carried (made here by tools/bundle_gpu.sh). Logs go to $OUT/ (the device tool
# brings that folder back; at most 8 files, so one log per kind of run): summary.txt,
# nvidia-smi.txt, gpu.log, memcheck.log, racecheck.log, cpu.log, peer.log. Exits non-zero when
# anything failed (a peer that is not installed there is a visible SKIP, not a failure).
#   1. nvidia-smi summary
#   2. every .bundle/test_gpu_* (on a GPU machine a skip counts as a failure)
#   3. the same under compute-sanitizer --tool memcheck (with leak check) and --tool racecheck
#   4. every other .bundle/test_* once (the CPU suite, on this machine's CPUs)
#   5. peer checks (peer.log), with the bundled qtune making the models: a LoRA and a QLoRA job
#      trained on the demo model (CPU, f32), exported, and loaded by the Python peers:
#      tools/check_exports.py (transformers: hf; peft: peft adapter; bitsandbytes: bnb-nf4, its
#      loss and its bytes against bitsandbytes' own quantize_4bit) against `qtune eval`'s losses,
#      and tests/gguf_peer.sh (llama.cpp's gguf package: GGUF files, QAT exactness) when gguf
#      imports. Python: $QT_PEER_PYTHON or python3, with .peers/site put on PYTHONPATH when
#      that folder is there (bitsandbytes, peft, gguf unpacked from their wheels).
# Usage: bash tools/run_gpu_tests.sh [--peers-only]    (--peers-only: section 5 alone)
# Environment: QT_SEED (replay a seed), QT_GPU_TEST_TIMEOUT (seconds per run, default 240),
# QT_PEER_PYTHON, QT_QTUNE (the qtune binary for section 5; default .bundle/qtune; with it
# --peers-only runs without a bundle, e.g. on a CPU machine: bnb then reports no CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-test-logs}
mkdir -p "$OUT"
tmo=${QT_GPU_TEST_TIMEOUT:-240}
summary=$OUT/summary.txt
: >"$summary"
fails=0

say() { echo "$*" | tee -a "$summary"; }

peers_only=0
[ "${1:-}" = "--peers-only" ] && peers_only=1
qtune=${QT_QTUNE:-.bundle/qtune}
if [ ! -d .bundle ] && { [ $peers_only = 0 ] || [ -z "${QT_QTUNE:-}" ]; }; then
    say "run_gpu_tests: no .bundle here: run tools/bundle_gpu.sh and carry .bundle"
    exit 2
fi
# unpacks the gzip'd libraries, puts /usr/local/cuda/lib64 on LD_LIBRARY_PATH (not when
# --peers-only runs another qtune: a bundle made here must stay packed to travel)
# shellcheck disable=SC1091
if [ $peers_only = 0 ] || [ -z "${QT_QTUNE:-}" ]; then source .bundle/setup.sh; fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "run_gpu_tests: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
sed -n '2,4p' .bundle/MANIFEST 2>/dev/null | tee -a "$summary"

# run_one LABEL LOG ALLOW_SKIP CMD...: runs CMD with a timeout, appends its output to LOG
# (and its last lines to the console), records PASS / SKIP / FAIL
run_one() {
    local label=$1 log=$2 allow_skip=$3
    shift 3
    local t0=$SECONDS rc
    {
        echo "===== $label: $*"
    } >>"$log"
    timeout "$tmo" "$@" >>"$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) verdict
    if [ $rc = 0 ]; then
        verdict=PASS
    elif [ $rc = 77 ] && [ "$allow_skip" = 1 ]; then
        verdict=SKIP
    else
        verdict=FAIL
        fails=$((fails + 1))
    fi
    [ $rc = 124 ] && verdict="FAIL (timeout ${tmo}s)"
    echo "===== $label: rc=$rc $verdict (${dt}s)" >>"$log"
    say "$(printf '%-9s %-28s rc=%-3s %3ss  %s' "$verdict" "$label" "$rc" "$dt" "$(basename "$log")")"
    return $rc
}

if [ $peers_only = 0 ]; then

# ---- 1. the GPU ---------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,temperature.gpu,clocks.sm \
        --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$summary"
else
    say "gpu: nvidia-smi not found"
fi

# ---- every executable finds its libraries -------------------------------------------------------
for e in .bundle/qtune .bundle/test_*; do
    [ -x "$e" ] || continue
    if ldd "$e" | grep -q 'not found'; then
        say "FAIL libraries: $(basename "$e"): $(ldd "$e" | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
        fails=$((fails + 1))
    fi
done

# ---- 2. GPU tests -------------------------------------------------------------------------------
gpu_tests=()
for t in .bundle/test_gpu_*; do [ -x "$t" ] && gpu_tests+=("$t"); done
if [ ${#gpu_tests[@]} = 0 ]; then
    say "FAIL no .bundle/test_gpu_* executables"
    fails=$((fails + 1))
fi
for t in "${gpu_tests[@]}"; do
    run_one "$(basename "$t")" "$OUT/gpu.log" 0 "$t"
    # the parity numbers: the test's closing lines
    grep -E '^gpu_ops: |^SKIPPED|^  .*FAIL|^FAIL' "$OUT/gpu.log" | tail -n 40 >>"$summary"
done

# the job and mode tests again with the trainer on the GPU (ctest gpu_train_job, gpu_train_modes):
# exact resume, SIGINT / kill -9 safety and every mode learning, on CUDA
for t in test_train_job test_train_modes; do
    [ -x ".bundle/$t" ] && run_one "$t --device cuda" "$OUT/gpu.log" 0 ".bundle/$t" --device cuda
done

# ---- 3. compute-sanitizer -----------------------------------------------------------------------
san=""
for c in /usr/local/cuda/bin/compute-sanitizer "$(command -v compute-sanitizer 2>/dev/null)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then san=$c; break; fi
done
if [ -z "$san" ]; then
    say "compute-sanitizer: not found (looked in /usr/local/cuda/bin and PATH): memcheck/racecheck NOT run"
else
    say "compute-sanitizer: $san ($("$san" --version 2>/dev/null | grep -i version | head -1))"
    # under the sanitizers the GPU tests run their small cases only and skip timings: the
    # large attention shapes take minutes instrumented, and timings mean nothing there
    export QT_QUICK=1 QT_NF4_NO_BENCH=1
    for tool in memcheck racecheck; do
        opts=(--tool "$tool" --error-exitcode 86 --print-limit 50)
        [ $tool = memcheck ] && opts+=(--leak-check full)
        for t in "${gpu_tests[@]}"; do
            log=$OUT/$tool.log
            touch "$log"
            before=$(wc -l <"$log")
            run_one "$tool $(basename "$t")" "$log" 0 "$san" "${opts[@]}" "$t"
            rc=$?
            new=$(tail -n +"$((before + 1))" "$log")
            if grep -q -i 'device not supported\|is not supported on this' <<<"$new"; then
                say "  $tool: this machine's runtime does not support compute-sanitizer (see $tool.log): NOT a test failure"
                [ $rc != 0 ] && fails=$((fails - 1))
            fi
            grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|Invalid|Race reported|hazard' <<<"$new" |
                sort | uniq -c | head -n 12 | sed 's/^/  /' >>"$summary"
        done
    done
fi

# ---- 4. the CPU suite, once ---------------------------------------------------------------------
for t in .bundle/test_*; do
    [ -x "$t" ] || continue
    case "$(basename "$t")" in test_gpu_*) continue ;; esac
    run_one "$(basename "$t")" "$OUT/cpu.log" 1 "$t"
done

fi # peers_only

# ---- 5. peer checks: qtune's exports loaded by the Python peers ---------------------------------
# qtune's side of these comparisons is the f32 CPU reference (the tolerances assume it)
export QTUNE_DEVICE=cpu
# peer LABEL ALLOW_SKIP CMD...: run_one into peer.log, then the checks' verdict lines to the summary
peer() {
    local label=$1 allow_skip=$2 log=$OUT/peer.log before rc
    shift 2
    touch "$log"
    before=$(wc -l <"$log")
    run_one "$label" "$log" "$allow_skip" "$@"
    rc=$?
    tail -n +"$((before + 1))" "$log" |
        grep -E '^(hf export|peft|bnb-nf4|bitsandbytes|check_exports|SKIPPED|gguf_peer|FAIL|note:)' |
        sed 's/^/  /' | tee -a "$summary"
    return $rc
}

# peer_job FILE OUTDIR BASE ADAPTER STEPS LR: a small job on the demo rows
peer_job() {
    cat >"$1" <<EOF
base_model: $3
adapter: $4
lora_r: 8
lora_alpha: 16
lora_dropout: 0.0
lora_target_linear: true
datasets:
  - path: data/demo/train.jsonl
    type: alpaca
sequence_len: 128
sample_packing: true
micro_batch_size: 2
max_steps: $5
learning_rate: $6
output_dir: $2
seed: 5
EOF
}

# peer_loss FILE: the loss of a `qtune eval --json` line
peer_loss() { sed -n 's/.*"loss": *\([-0-9.eE+]*\).*/\1/p' "$1" | tail -n 1; }

# peer_transformers PY WORKDIR: a LoRA and a QLoRA job trained by qtune on the demo model (CPU,
# f32), exported, and loaded by transformers / peft / bitsandbytes (tools/check_exports.py)
peer_transformers() {
    local py=$1 w=$2 log=$OUT/peer.log m=data/demo/model ok=1 f wl wq wn
    # evaluation rows: demo rows tokenized by qtune (the model's tokenizer.json)
    "$py" -c '
import json
rows = [json.loads(l) for l in open("data/demo/train.jsonl")][-24:]
for r in rows:
    print(json.dumps(r["input"] + " " + r["output"]))' >"$w/text.jsonl"
    "$qtune" tokenize --tokenizer $m --jsonl <"$w/text.jsonl" |
        sed 's/^/{"input_ids": /; s/$/}/' >"$w/eval.jsonl"
    peer_job "$w/lora.yaml" "$w/lora" $m lora 4 1e-2
    peer_job "$w/qlora.yaml" "$w/qlora" $m qlora 4 1e-2
    peer "qtune train lora" 0 "$qtune" train "$w/lora.yaml" --device cpu || ok=0
    peer "qtune train qlora" 0 "$qtune" train "$w/qlora.yaml" --device cpu || ok=0
    [ $ok = 1 ] || return
    local L=$w/lora/checkpoint-4.h5 Q=$w/qlora/checkpoint-4.h5
    for f in hf peft; do
        peer "qtune export lora $f" 0 "$qtune" export "$L" --format $f --out "$w/lora_$f"
    done
    for f in hf bnb-nf4; do
        peer "qtune export qlora $f" 0 "$qtune" export "$Q" --format $f --out "$w/qlora_$f"
    done
    "$qtune" eval "$L" --data "$w/eval.jsonl" --json --device cpu >"$w/lora.loss" 2>>"$log"
    "$qtune" eval "$Q" --data "$w/eval.jsonl" --json --device cpu >"$w/qlora.loss" 2>>"$log"
    # qtune's loss of the NF4 weights the bnb export holds: the hf export loaded as a QLoRA base
    # (quantized from its bf16 weights exactly as the bnb export was: NF4, block 64, double
    # quant) with adapters that stay zero (one step at learning rate 1e-30)
    peer_job "$w/nf4.yaml" "$w/nf4" "$w/qlora_hf" qlora 1 1e-30
    peer "qtune train nf4 of qlora_hf" 0 "$qtune" train "$w/nf4.yaml" --device cpu
    "$qtune" eval "$w/nf4/checkpoint-1.h5" --data "$w/eval.jsonl" --json --device cpu \
        >"$w/nf4.loss" 2>>"$log"
    wl=$(peer_loss "$w/lora.loss") wq=$(peer_loss "$w/qlora.loss") wn=$(peer_loss "$w/nf4.loss")
    say "  qtune eval (cpu, f32): lora checkpoint ${wl:-?}, qlora checkpoint ${wq:-?}," \
        "NF4 of the qlora checkpoint's merged weights ${wn:-?}"
    if [ -z "$wl" ] || [ -z "$wq" ]; then
        say "FAIL      qtune eval gave no loss (peer.log)"
        fails=$((fails + 1))
        return
    fi
    peer "check_exports lora hf+peft" 0 "$py" tools/check_exports.py \
        --data "$w/eval.jsonl" --want "$wl" --hf "$w/lora_hf" --peft "$w/lora_peft" --base $m
    peer "check_exports qlora hf+bnb" 0 "$py" tools/check_exports.py \
        --data "$w/eval.jsonl" --want "$wq" --hf "$w/qlora_hf" --bnb "$w/qlora_bnb-nf4" \
        ${wn:+--want-nf4 "$wn"} --bnb-ref "$w/qlora_hf"
}

peer_checks() {
    local log=$OUT/peer.log py=${QT_PEER_PYTHON:-python3} w teg=""
    touch "$log"
    [ -d .peers/site ] && export PYTHONPATH=$PWD/.peers/site${PYTHONPATH:+:$PYTHONPATH}
    if [ ! -x "$qtune" ]; then
        say "FAIL      peer checks: no qtune binary at $qtune"
        fails=$((fails + 1))
        return
    fi
    say "peers ($py): $("$py" -c '
import importlib, importlib.metadata as md
out = []
for m in ("torch", "transformers", "peft", "bitsandbytes", "gguf", "numpy"):
    try:
        mod = importlib.import_module(m)
        out.append("%s %s" % (m, getattr(mod, "__version__", None) or md.version(m)))
    except Exception as e:
        out.append("%s unavailable (%s)" % (m, type(e).__name__))
print(", ".join(out))' 2>>"$log")"
    w=$(mktemp -d "${TMPDIR:-/tmp}/qt_peer.XXXXXX")
    if "$py" -c "import torch, transformers" >>"$log" 2>&1; then
        peer_transformers "$py" "$w"
    else
        say "SKIP      check_exports: $py cannot import torch + transformers (peer.log says why)"
    fi
    # GGUF: tests/gguf_peer.sh with this machine's Python (part D needs test_export_gguf, bundled
    # only with QT_BUNDLE_TESTS=test_export_gguf)
    if "$py" -c "import gguf, numpy" >>"$log" 2>&1; then
        [ -x .bundle/test_export_gguf ] && teg=.bundle/test_export_gguf
        peer "gguf_peer" 1 env QT_PEER_PYTHON="$py" bash tests/gguf_peer.sh "$qtune" $teg
    else
        say "SKIP      gguf_peer: $py cannot import gguf + numpy (put gguf in .peers/site)"
    fi
    rm -rf "$w"
}
peer_checks

say "run_gpu_tests: $fails failure(s); logs in $OUT"
[ $fails = 0 ]
