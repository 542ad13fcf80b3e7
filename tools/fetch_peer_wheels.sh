#!/usr/bin/env bash
# fetch_peer_wheels.sh - fetch the Python peer's optional packages for the GPU machine.
#
# The GPU machine has torch, transformers, peft and accelerate but neither bitsandbytes nor
# torchao, and it cannot reach a package registry. This script, run here (where PyPI is
# reachable), downloads their wheels for the GPU machine's Python (3.12, x86-64, glibc), unpacks
# them into .peers/site/ (ignored by git) and strips them down to what runs there:
#   bitsandbytes: the Python package plus libbitsandbytes_cuda130.so (the GPU machine's torch is
#                 built for CUDA 13.0; bitsandbytes picks its library from torch.version.cuda)
#                 and the 63 KB libbitsandbytes_cpu.so (lets `bench/peer.py --device cpu` run
#                 here); every other CUDA, ROCm and XPU library goes.
#   torchao:      the Python package; its prebuilt C++/CUTLASS extensions (_C*.so, ~13 MB, not
#                 used by QAT fake quantization: torchao imports fine without them), its bundled
#                 example models (_models/) and the stray top-level `test` package the wheel
#                 ships (it would shadow Python's own `test`) go.
#   extras:       QT_PEER_EXTRA (default "gguf==0.19.*": pure Python, 0.5 MB; the GGUF peer check
#                 of tools/run_gpu_tests.sh imports it from .peers/site), unpacked whole; an extra
#                 that cannot be downloaded is a warning, not a failure.
# The result travels to the GPU machine in the device call's carry (".peers"), next to the
# qtune bundle, so it must stay small: the script prints `du -sh .peers` at the end.
#
# Usage: tools/fetch_peer_wheels.sh [--force]
#   then on the GPU machine: PYTHONPATH=.peers/site python3 bench/peer.py --job 1b-qlora ...
# Idempotent: when .peers/STAMP already names the wanted wheels it does nothing (--force
# rebuilds). Downloaded wheels are cached outside the repo, in $QT_PEER_WHEEL_CACHE
# (default ~/.cache/qtune/peer-wheels), so a rebuild needs no second download.
#
# Versions: QT_BNB_SPEC (default bitsandbytes==0.50.*) and QT_TORCHAO_SPECS (a space-separated
# list tried in order; default "torchao==0.19.* torchao==0.18.*": the benchmark's reference
# numbers name torchao 0.19, but PyPI may only have 0.18, whose QAT API is the same
# (torchao.quantization.qat.QATConfig + IntxFakeQuantizeConfig) and which is built for
# torch >= 2.11, the GPU machine's torch).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
peers=$root/.peers
site=$peers/site
cache=${QT_PEER_WHEEL_CACHE:-$HOME/.cache/qtune/peer-wheels}
bnb_spec=${QT_BNB_SPEC:-bitsandbytes==0.50.*}
torchao_specs=${QT_TORCHAO_SPECS:-torchao==0.19.* torchao==0.18.*}
extra_specs=${QT_PEER_EXTRA-gguf==0.19.*}
py=${PYTHON:-python3}
force=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "fetch_peer_wheels: unknown argument $a" >&2; exit 2 ;;
    esac
done

mkdir -p "$cache"
# The GPU machine: CPython 3.12, x86-64, glibc 2.39 (Ubuntu 24.04). pip matches manylinux tags
# exactly, so name every glibc level a wheel might be tagged with.
plat=()
for n in 39 35 34 31 28 27 24 17; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

download() { # spec -> prints the wheel's path in the cache, or fails
    local spec=$1 log
    log=$(mktemp)
    if ! "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --abi cp312 --abi abi3 --abi none "${plat[@]}" \
            -d "$cache" "$spec" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; return 1
    fi
    rm -f "$log"
    # newest cached wheel of that name matching the spec's version prefix
    "$py" - "$cache" "$spec" <<'EOF'
import sys, pathlib, re
from fnmatch import fnmatch
cache, spec = pathlib.Path(sys.argv[1]), sys.argv[2]
name, _, ver = spec.partition("==")
best = None
for w in cache.glob(name.replace("-", "_") + "-*.whl"):
    v = w.name.split("-")[1]
    if ver and not fnmatch(v, ver):
        continue
    key = tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+]", v))
    if best is None or key > best[0]:
        best = (key, w)
if best is None:
    sys.exit(f"no cached wheel for {spec}")
print(best[1])
EOF
}

echo "fetch_peer_wheels: downloading $bnb_spec"
bnb_whl=$(download "$bnb_spec") || { echo "fetch_peer_wheels: $bnb_spec: no wheel" >&2; exit 1; }
ao_whl=
for spec in $torchao_specs; do
    echo "fetch_peer_wheels: downloading $spec"
    if ao_whl=$(download "$spec" 2>/dev/null); then break; fi
    echo "fetch_peer_wheels: $spec not available, trying the next"
    ao_whl=
done
[ -n "$ao_whl" ] || { echo "fetch_peer_wheels: no torchao wheel from: $torchao_specs" >&2; exit 1; }
extra_whls=()
for spec in $extra_specs; do
    echo "fetch_peer_wheels: downloading $spec"
    if w=$(download "$spec"); then extra_whls+=("$w")
    else echo "fetch_peer_wheels: WARNING: $spec not available, left out" >&2; fi
done

stamp="$(basename "$bnb_whl") $(basename "$ao_whl")"
for w in "${extra_whls[@]}"; do stamp+=" $(basename "$w")"; done
stamp+=" strip-v1"
if [ $force = 0 ] && [ -f "$peers/STAMP" ] && [ "$(cat "$peers/STAMP")" = "$stamp" ] \
        && [ -d "$site/bitsandbytes" ] && [ -d "$site/torchao" ]; then
    echo "fetch_peer_wheels: .peers/site already holds $stamp"
else
    rm -rf "$site" "$peers/STAMP"
    mkdir -p "$site"
    # Unpack member by member, skipping what is stripped, so the 120+ MB of unused libraries
    # are never written.
    "$py" - "$site" "$bnb_whl" "$ao_whl" "${extra_whls[@]}" <<'EOF'
import sys, zipfile, re
site, wheels = sys.argv[1], sys.argv[2:]
keep_lib = re.compile(r"^bitsandbytes/libbitsandbytes_(cuda130|cpu)\.so$")
def wanted(name):
    if name.startswith("bitsandbytes/libbitsandbytes_"):
        return bool(keep_lib.match(name))
    if name.startswith("test/"):                       # torchao's stray top-level tests
        return False
    if name.startswith("torchao/_models/"):
        return False
    if re.match(r"^torchao/_C[^/]*\.so$", name):        # prebuilt CUTLASS/MX extensions
        return False
    if "/__pycache__/" in name:
        return False
    return True
for w in wheels:
    with zipfile.ZipFile(w) as z:
        members = [m for m in z.namelist() if wanted(m)]
        z.extractall(site, members)
        dropped = len(z.namelist()) - len(members)
        print(f"fetch_peer_wheels: {w.rsplit('/', 1)[-1]}: unpacked {len(members)} files, dropped {dropped}")
EOF
    chmod +x "$site"/bitsandbytes/*.so 2>/dev/null || true
    echo "$stamp" >"$peers/STAMP"
fi

# bytecode left by local runs (python3 here is not the GPU machine's 3.12): never carried
find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +
[ -f "$site/bitsandbytes/libbitsandbytes_cuda130.so" ] || {
    echo "fetch_peer_wheels: the bitsandbytes wheel has no libbitsandbytes_cuda130.so:" >&2
    ls "$site/bitsandbytes" >&2
    exit 1
}
echo "fetch_peer_wheels: kept in .peers/site:"
for d in "$site"/*; do
    printf '  %-40s %s\n' "$(basename "$d")" "$(du -sh "$d" | cut -f1)"
done
echo "  bitsandbytes native libraries: $(cd "$site/bitsandbytes" && ls libbitsandbytes_*.so | tr '\n' ' ')"
echo "fetch_peer_wheels: du -sh .peers: $(du -sh "$peers" | cut -f1)"
