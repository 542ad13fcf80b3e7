#!/usr/bin/env bash
# test.sh - installs what is missing, builds qtune (the CUDA backend too when nvcc is present)
# and runs the whole test suite; then builds again with AddressSanitizer + UndefinedBehavior-
# Sanitizer (CPU backend) and runs the suite once more. Tests that cannot run here skip visibly
# and say why: GPU tests (label gpu) without a GPU, the GGUF peer test (gguf_peer) without the
# test tools' Python (.venv-tools: gguf + numpy from PyPI, made by tools/deps.sh --test-tools).
# Usage: tools/test.sh [--no-sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh --test-tools
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
# say why tests were skipped, if any were (their SKIPPED lines, from ctest's log of this run)
skipped() { grep -h "^SKIPPED" "$1/Testing/Temporary/LastTest.log" 2>/dev/null | sort -u || true; }
skipped build
if [ "${1:-}" != "--no-sanitize" ]; then
    cmake -S . -B build-san -DQTUNE_CUDA=OFF -DQTUNE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
    cmake --build build-san -j"$jobs"
    (cd build-san && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --output-on-failure -j"$jobs")
    skipped build-san
fi
