#!/usr/bin/env bash
# run_gpu_tests.sh - what runs ON the GPU machine: the bundle's tests, plain and under
# compute-sanitizer. Working directory: the repo root, with .bundle/ carried (made here by
# tools/bundle_gpu.sh). Logs go to $OUT/ (the device tool brings that folder back; at most 8
# files, so one log per kind of run): summary.txt, nvidia-smi.txt, gpu.log, memcheck.log,
# racecheck.log, cpu.log. Exits non-zero when anything failed.
#   1. nvidia-smi summary
#   2. every .bundle/test_gpu_* (on a GPU machine a skip counts as a failure)
#   3. the same under compute-sanitizer --tool memcheck (with leak check) and --tool racecheck
#   4. every other .bundle/test_* once (the CPU suite, on this machine's CPUs)
# Environment: QT_SEED (replay a seed), QT_GPU_TEST_TIMEOUT (seconds per run, default 240).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-test-logs}
mkdir -p "$OUT"
tmo=${QT_GPU_TEST_TIMEOUT:-240}
summary=$OUT/summary.txt
: >"$summary"
fails=0

say() { echo "$*" | tee -a "$summary"; }

if [ ! -d .bundle ]; then
    say "run_gpu_tests: no .bundle here: run tools/bundle_gpu.sh and carry .bundle"
    exit 2
fi
# unpacks the gzip'd libraries, puts /usr/local/cuda/lib64 on LD_LIBRARY_PATH
# shellcheck disable=SC1091
source .bundle/setup.sh
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "run_gpu_tests: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
sed -n '2,4p' .bundle/MANIFEST 2>/dev/null | tee -a "$summary"

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

say "run_gpu_tests: $fails failure(s); logs in $OUT"
[ $fails = 0 ]
