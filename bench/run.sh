#!/usr/bin/env bash
# run.sh - the benchmark, on the GPU machine: qtune (bench_train from the bundle) and the Python
# peer (bench/peer.py) on the same jobs, one process per job, JSON lines into $OUT.
#   bash bench/run.sh [--qtune-only | --peers-only] [JOB...]
# Jobs (default: all): 1b-qlora 1b-lora 1b-full 1b-qat 7b-qlora 7b-lora nf4-dequant, and
# 1b-full+8bit 1b-qat+8bit: the same with 8-bit AdamW on both sides (qtune's adamw_8bit,
# bitsandbytes' AdamW8bit); 1b-qat+inbwd: qtune's optimizer in backward (optimizer_in_bwd, no
# clipping), against the peer's plain 1b-qat step (its line is named 1b-qat; not run twice when
# 1b-qat is in the list too).
# Needs .bundle (tools/bundle_gpu.sh) for qtune and .peers (tools/fetch_peer_wheels.sh) for
# bitsandbytes / torchao. Results: $OUT/qtune.jsonl, $OUT/peer.jsonl, logs in $OUT/bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
what=both
if [ "${1:-}" = --qtune-only ] || [ "${1:-}" = --peers-only ]; then what=${1#--}; shift; fi
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(1b-qlora 1b-lora 1b-full 1b-qat 1b-full+8bit 1b-qat+8bit 1b-qat+inbwd 7b-qlora 7b-lora nf4-dequant)
log=$OUT/bench.log
if [ "$what" != peers-only ]; then
    # shellcheck disable=SC1091
    source .bundle/setup.sh
    for j in "${jobs[@]}"; do
        if [ "$j" = nf4-dequant ]; then
            args=(--nf4-dequant)
        else
            nb=${j%+inbwd}
            base=${nb%+8bit}
            args=(--shape "${base%%-*}" --mode "${base#*-}")
            [ "$base" != "$nb" ] && args+=(--optim adamw_8bit)
            [ "$nb" != "$j" ] && args+=(--optim-in-bwd)
            [ -n "${QT_BENCH_PROFILE:-}" ] && args+=(--profile)
        fi
        echo "===== qtune $j" >>"$log"
        timeout 300 .bundle/bench_train "${args[@]}" --json "$OUT/qtune.jsonl" >>"$log" 2>&1
        echo "===== qtune $j: rc=$?" >>"$log"
    done
fi
if [ "$what" != qtune-only ]; then
    for j in "${jobs[@]}"; do
        # the peer has no optimizer in backward: its plain step is the comparison
        pj=${j%+inbwd}
        if [ "$pj" != "$j" ] && [[ " ${jobs[*]} " == *" $pj "* ]]; then
            echo "===== peer $j: the peer's $pj (run as its own job)" >>"$log"
            continue
        fi
        echo "===== peer $j" >>"$log"
        # stdout is the job's one JSON line
        popt=()
        [ "${pj%+8bit}" != "$pj" ] && popt=(--optim adamw_8bit)
        PYTHONPATH=.peers/site${PYTHONPATH:+:$PYTHONPATH} timeout 400 python3 bench/peer.py \
            --job "${pj%+8bit}" "${popt[@]}" >>"$OUT/peer.jsonl" 2>>"$log"
        echo "===== peer $j: rc=$?" >>"$log"
    done
fi
cat "$OUT"/*.jsonl 2>/dev/null
