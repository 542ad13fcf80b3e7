#!/usr/bin/env bash
# pretrain_demo.sh - rebuilds data/demo from scratch: the King James Bible from Debian's
# packages, a tokenizer trained on it, random initial weights (tools/make_demo_data.py), then
# qtune pre-trains the model (configs/demo-pretrain.yaml) and exports it into data/demo/model.
# About 10 minutes on 16 cores; much longer on 2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
if ! command -v bible >/dev/null; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get install -y -qq bible-kjv bible-kjv-text >/dev/null
fi
python3 -c "import tokenizers, numpy" 2>/dev/null || python3 -m pip install -q tokenizers numpy
bible -f "Gen1:1-Rev22:21" > /tmp/qtune-kjv.txt
python3 tools/make_demo_data.py /tmp/qtune-kjv.txt
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target qtune
rm -rf runs/demo-pretrain
./build/qtune train configs/demo-pretrain.yaml
rm -rf data/demo/model
./build/qtune export "runs/demo-pretrain/$(cat runs/demo-pretrain/latest)" --format hf --out data/demo/model
