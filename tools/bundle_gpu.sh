#!/usr/bin/env bash
# bundle_gpu.sh - build qtune for the GPU machine and pack what runs there into .bundle/.
#
# Builds build-gpu/ (QTUNE_CUDA=ON, Release, sm_90), then fills .bundle/ (ignored by git) with
# the qtune binary, every test executable and .bundle/lib/: every non-system shared library
# they load (found by walking ldd), minus glibc's own libraries and the compiler runtime
# (present, newer, on the GPU machine) and the CUDA libraries (the GPU machine has them in
# /usr/local/cuda/lib64). Executables find lib/ through their rpath $ORIGIN/lib; bundled
# libraries get rpath $ORIGIN so that their own dependencies (libopenblas -> libgfortran) are
# found next to them. Libraries over 256 KiB are stored gzip'd (libopenblas: 36 MiB -> 11 MiB)
# to keep the carried bundle well under the 64 MiB a device call takes: .bundle/setup.sh
# unpacks them there (tools/run_gpu_tests.sh calls it).
#
# Usage: tools/bundle_gpu.sh            then: device run, carry [".bundle"],
#                                             command "bash tools/run_gpu_tests.sh"
# Tests read files (tests/fixtures/...) relative to the repo root, the working directory on
# the GPU machine too, where the repo tree travels with the call: no fixtures are copied.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${QT_BUNDLE_BUILD_DIR:-$root/build-gpu}
bundle=${QT_BUNDLE_DIR:-$root/.bundle}
jobs=$(nproc)
build_type=${QT_BUNDLE_BUILD_TYPE:-Release} # override only to work around a broken Release build

# ---- tools ------------------------------------------------------------------------------------
if ! command -v patchelf >/dev/null; then
    echo "bundle_gpu: installing patchelf"
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q patchelf >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q patchelf >/dev/null; }
    else
        sudo apt-get install -y -q patchelf >/dev/null
    fi
fi

# ---- build ------------------------------------------------------------------------------------
# libqtune shared: the CUDA kernels travel once, not once per executable
cmake -S . -B "$build" -DQTUNE_CUDA=ON -DQTUNE_SHARED=ON -DCMAKE_BUILD_TYPE="$build_type" \
    -DQTUNE_CUDA_ARCH=90 >/dev/null
cmake --build "$build" -j"$jobs"

# ---- executables ------------------------------------------------------------------------------
rm -rf "$bundle"
mkdir -p "$bundle/lib"
exes=()
# qtune, the benchmarks, the GPU tests and the tests that also run with the trainer on the GPU
# (test_train_job, test_train_modes: ctest's gpu_train_*); QT_BUNDLE_TESTS names a glob of
# other tests to add (e.g. 'test_gradcheck test_export*').
wanted=("$build"/qtune "$build"/bench_* "$build"/test_gpu_* "$build"/test_train_job
    "$build"/test_train_modes)
for g in ${QT_BUNDLE_TESTS:-}; do wanted+=("$build"/$g); done
for f in "${wanted[@]}"; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    cp "$f" "$bundle/"
    exes+=("$bundle/$(basename "$f")")
done
[ ${#exes[@]} -gt 0 ] || { echo "bundle_gpu: nothing built?" >&2; exit 1; }

# libraries that are not bundled: glibc's own, the compiler runtime (libstdc++, libgcc_s:
# always present on the GPU machine's Ubuntu 24.04, and newer than ours), the CUDA driver
# and toolkit libraries (in /usr/local/cuda/lib64 and the driver's folder there)
skip_lib() {
    case "$1" in
    linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libdl.so* | libpthread.so* | \
        librt.so* | libresolv.so* | libutil.so* | libanl.so* | libnsl.so* | libmvec.so* | \
        libnss_*.so* | libthread_db.so* | libBrokenLocale.so*) return 0 ;;
    libstdc++.so* | libgcc_s.so*) return 0 ;;
    libcuda.so* | libcudart.so* | libcublas.so* | libcublasLt.so* | libnccl.so* | libnvrtc*.so* | \
        libnvJitLink.so* | libnvidia-*.so* | libcufft*.so* | libcurand.so* | libcusparse*.so* | \
        libcusolver*.so* | libnvToolsExt.so* | libcupti.so*) return 0 ;;
    esac
    return 1
}

# ---- walk ldd (it lists the transitive closure) ---------------------------------------------
declare -A seen=()
missing=0
for e in "${exes[@]}"; do
    while read -r line; do
        name=$(basename "$(awk '{print $1}' <<<"$line")" 2>/dev/null || true)
        path=$(awk '$2 == "=>" {print $3}' <<<"$line")
        [ -n "$name" ] || continue
        skip_lib "$name" && continue
        if [[ "$line" == *"not found"* ]]; then
            echo "bundle_gpu: $(basename "$e") needs $name, which is not found here" >&2
            missing=1
            continue
        fi
        [ -n "$path" ] || continue
        [ -n "${seen[$name]:-}" ] && continue
        seen[$name]=$path
    done < <(ldd "$e")
done
[ $missing = 0 ] || exit 1
for name in "${!seen[@]}"; do
    cp -L "${seen[$name]}" "$bundle/lib/$name"
    chmod u+w "$bundle/lib/$name"
    patchelf --set-rpath '$ORIGIN' "$bundle/lib/$name"
done

# ---- rpaths of the executables: $ORIGIN/lib (CMake's BUILD_RPATH); fix where missing -------
for e in "${exes[@]}"; do
    rp=$(readelf -d "$e" | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]/\2/p')
    if [[ ":$rp:" != *':$ORIGIN/lib:'* ]]; then
        echo "bundle_gpu: $(basename "$e"): rpath '$rp' lacks \$ORIGIN/lib, setting it"
        patchelf --set-rpath '$ORIGIN/lib' "$e"
    fi
done

# ---- verify: every bundled dependency resolves inside .bundle/lib ----------------------------
bad=0
for f in "${exes[@]}" "$bundle"/lib/*; do
    while read -r line; do
        name=$(basename "$(awk '{print $1}' <<<"$line")" 2>/dev/null || true)
        path=$(awk '$2 == "=>" {print $3}' <<<"$line")
        [ -n "$name" ] || continue
        skip_lib "$name" && continue
        case "$path" in
        "$bundle"/lib/*) ;;
        *) echo "bundle_gpu: $(basename "$f"): $name resolves to '$path', not to .bundle/lib" >&2
           bad=1 ;;
        esac
    done < <(env -u LD_LIBRARY_PATH ldd "$f")
done
[ $bad = 0 ] || exit 1

# ---- compress the large libraries; setup.sh unpacks them on the GPU machine -----------------
for f in "$bundle"/lib/*; do
    if [ "$(stat -c %s "$f")" -gt $((256 << 10)) ]; then gzip -9 "$f"; fi
done
cat >"$bundle/setup.sh" <<'EOF'
#!/usr/bin/env bash
# Unpacks the bundle's gzip'd libraries (once) and sets up the CUDA library path. Source it
# or run it before the executables: bash .bundle/setup.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for f in "$here"/lib/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
EOF

{
    echo "qtune GPU bundle"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), $("$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" --version | grep -o 'release [0-9.]*')"
    echo "build: $build_type, CUDA arch 90"
    echo "files:"
    (cd "$bundle" && find . -type f ! -name MANIFEST | sort | xargs ls -l | awk '{printf "  %10d  %s\n", $5, $9}')
} >"$bundle/MANIFEST"

echo "bundle_gpu: ${#exes[@]} executables, $(ls "$bundle/lib" | wc -l) libraries:" \
    "$(ls "$bundle/lib" | tr '\n' ' ')"
size=$(du -sb "$bundle" | cut -f1)
echo "bundle_gpu: .bundle is $(du -sh "$bundle" | cut -f1) ($size bytes; a device call carries at most 64 MiB with the tree)"
if [ "$size" -gt $((48 << 20)) ]; then
    echo "bundle_gpu: WARNING: the bundle is over 48 MiB: too close to the 64 MiB limit" >&2
    exit 1
fi
