#!/usr/bin/env bash
# deps.sh - installs the Debian packages qtune builds with, when any is missing.
# Run by tools/demo.sh and tools/test.sh; safe to run again (does nothing then).
# --test-tools (tools/test.sh): also the Python the peer tests run the independent readers with:
# a venv at .venv-tools (ignored by git) holding llama.cpp's `gguf` package and numpy from PyPI
# (tools/check_gguf.py, ctest gguf_peer). It is optional: without network, or without a python3
# that can make a venv, a warning says so and the peer test skips visibly.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
pkgs=(build-essential cmake pkg-config libopenblas-dev libhdf5-dev libyaml-dev libcjson-dev
      libpcre2-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "qtune: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--test-tools" ] || exit 0

# ---- .venv-tools: gguf + numpy for the peer tests ---------------------------------------------
venv=$root/.venv-tools
gguf_version=0.19.0 # the version tools/check_gguf.py was written against
have_tools() {
    "$venv/bin/python" -c "import numpy, gguf, importlib.metadata as m; \
assert m.version('gguf') == '$gguf_version'" >/dev/null 2>&1
}
have_tools && exit 0
# a python3 whose venv module works (Debian's needs python3-venv; pyenv's has it)
can_venv() { "$1" -c "import venv, ensurepip" >/dev/null 2>&1; }
py=""
for c in "$(command -v python3 || true)" /usr/bin/python3; do
    if [ -n "$c" ] && can_venv "$c"; then py=$c; break; fi
done
if [ -z "$py" ]; then
    echo "qtune: installing python3-venv (for the test tools' venv)"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends python3-venv; } >/dev/null 2>&1 || true
    can_venv /usr/bin/python3 && py=/usr/bin/python3
fi
if [ -z "$py" ]; then
    echo "qtune: WARNING: no python3 with a working venv module (apt-get install python3-venv" \
         "failed): the GGUF peer test (ctest gguf_peer) will skip" >&2
    exit 0
fi
echo "qtune: installing gguf==$gguf_version and numpy from PyPI into .venv-tools (test tools)"
log=$(mktemp)
if { [ -x "$venv/bin/pip" ] || "$py" -m venv --clear "$venv"; } >"$log" 2>&1 &&
    "$venv/bin/pip" install -q --disable-pip-version-check --timeout 30 --retries 2 \
        "gguf==$gguf_version" numpy >>"$log" 2>&1 && have_tools; then
    rm -f "$log"
else
    echo "qtune: WARNING: could not make .venv-tools with gguf and numpy (no network to PyPI?):" \
         "the GGUF peer test (ctest gguf_peer) will skip. pip said:" >&2
    tail -n 5 "$log" | sed 's/^/  /' >&2
    rm -f "$log"
fi
exit 0
