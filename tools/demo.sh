#!/usr/bin/env bash
# demo.sh - installs what is missing, builds qtune and runs the demo job: QLoRA fine-tuning of
# a small Llama (data/demo/model: pre-trained by qtune itself on the King James Bible, see
# data/demo/README.md) on data/demo/train.jsonl, which teaches it to tell a verse of Genesis
# from one of the Psalms. It asks the same questions before and after, so what it learned
# shows. About two minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target qtune
ask() { # the alpaca prompt of the fine-tuning data, for one verse
    ./build/qtune generate "$1" --max-new-tokens 4 --prompt "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:
Which book is this verse from?

### Input:
$2

### Response:
"
}
v1="And God said, Let there be light: and there was light."   # Genesis 1:3
v2="The LORD is my shepherd; I shall not want."              # Psalm 23:1
echo "== the question: which book is this verse from? (both verses are held out of the data)"
echo "== before fine-tuning (the pre-trained base model only continues the text):"
echo "  \"$v1\" -> $(ask data/demo/model "$v1")"
echo "  \"$v2\" -> $(ask data/demo/model "$v2")"
echo "== fine-tuning: qtune train configs/demo.yaml"
rm -rf runs/demo
./build/qtune train configs/demo.yaml
ckpt="runs/demo/$(cat runs/demo/latest)"
echo "== after fine-tuning ($ckpt):"
echo "  \"$v1\" -> $(ask "$ckpt" "$v1")   (Genesis 1:3)"
echo "  \"$v2\" -> $(ask "$ckpt" "$v2")   (Psalm 23:1)"
