#!/usr/bin/env bash
# run.sh - the benchmark, on the GPU machine: qtune (bench_train from the bundle) and the Python
# peer (bench/peer.py) on the same jobs, one process per job, JSON lines into $OUT.
#   bash bench/run.sh [--qtune-only | --peers-only] [JOB...]
# Jobs (default: all): 1b-qlora 1b-lora 1b-full 1b-qat 7b-qlora 7b-lora nf4-dequant, and
# 1b-full+8bit 1b-qat+8bit: the same with 8-bit AdamW on both sides (qtune's adamw_8bit,
# bitsandbytes' AdamW8bit).
# Needs .bundle (tools/bundle_gpu.sh) for qtune and .peers (tools/fetch_peer_wheels.sh) for
# bitsandbytes / torchao. Results: $OUT/qtune.jsonl, $OUT/peer.jsonl, logs in $OUT/bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
what=both
if [ "${1:-}" = --qtune-only ] || [ "${1:-}" = --peers-only ]; then what=${1#--}; shift; fi
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(1b-qlora 1b-lora 1b-full 1b-qat 1b-full+8bit 1b-qat+8bit 7b-qlora 7b-lora nf4-dequant)
log=$OUT/bench.log
if [ "$what" != peers-only ]; then
    # shellcheck disable=SC1091
    source .bundle/setup.sh
    for j in "${jobs[@]}"; do
        if [ "$j" = nf4-dequant ]; then
            args=(--nf4-dequant)
        else
            base=${j%+8bit}
            args=(--shape "${base%%-*}" --mode "${base#*-}")
            [ "$base" != "$j" ] && args+=(--optim adamw_8bit)
            [ -n "${QT_BENCH_PROFILE:-}" ] && args+=(--profile)
        fi
        echo "===== qtune $j" >>"$log"
        timeout 300 .bundle/bench_train "${args[@]}" --json "$OUT/qtune.jsonl" >>"$log" 2>&1
        echo "===== qtune $j: rc=$?" >>"$log"
    done
fi
if [ "$what" != qtune-only ]; then
    for j in "${jobs[@]}"; do
        echo "===== peer $j" >>"$log"
        # stdout is the job's one JSON line
        popt=()
        [ "${j%+8bit}" != "$j" ] && popt=(--optim adamw_8bit)
        PYTHONPATH=.peers/site${PYTHONPATH:+:$PYTHONPATH} timeout 400 python3 bench/peer.py \
            --job "${j%+8bit}" "${popt[@]}" >>"$OUT/peer.jsonl" 2>>"$log"
        echo "===== peer $j: rc=$?" >>"$log"
    done
fi
cat "$OUT"/*.jsonl 2>/dev/null
