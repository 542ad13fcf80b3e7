#!/usr/bin/env bash
# test.sh - installs what is missing, builds qtune (the CUDA backend too when nvcc is present)
# and runs the whole test suite; then builds again with AddressSanitizer + UndefinedBehavior-
# Sanitizer (CPU backend) and runs the suite once more. GPU tests (label gpu) skip visibly
# when no GPU is present. Usage: tools/test.sh [--no-sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
# say why GPU tests were skipped, if they were
(cd build && ctest -L gpu -V 2>&1 | grep -E "SKIPPED" || true)
if [ "${1:-}" != "--no-sanitize" ]; then
    cmake -S . -B build-san -DQTUNE_CUDA=OFF -DQTUNE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
    cmake --build build-san -j"$jobs"
    (cd build-san && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --output-on-failure -j"$jobs")
fi
