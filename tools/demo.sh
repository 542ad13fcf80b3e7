#!/usr/bin/env bash
# demo.sh - installs what is missing, builds qtune and runs the demo: for now a tiny Llama
# trained from scratch on the CPU (`qtune toy`), printing a falling loss. The QLoRA demo job
# (configs/demo.yaml) replaces it when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target qtune
./build/qtune toy --steps "${STEPS:-200}"
