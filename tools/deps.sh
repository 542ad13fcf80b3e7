#!/usr/bin/env bash
# deps.sh - installs the Debian packages qtune builds with, when any is missing.
# Sourced or run by tools/demo.sh and tools/test.sh; safe to run again (does nothing then).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-dev libhdf5-dev libyaml-dev libcjson-dev
      libpcre2-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "qtune: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
