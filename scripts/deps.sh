#!/usr/bin/env bash
# Installs the Debian packages npipe needs to build, run and test, if any is missing.
# Usage: bash scripts/deps.sh [extra-package ...]
set -euo pipefail

PACKAGES=(gcc make cmake pkg-config libuv1-dev lua5.4 liblua5.4-dev lua-busted
          luarocks lua-check python3 socat procps util-linux "$@")

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3 may come from elsewhere (pyenv); the specs only need some python3 on PATH.
if command -v python3 >/dev/null; then
  missing=("${missing[@]/python3}")
fi
want=()
for p in "${missing[@]}"; do [ -n "$p" ] && want+=("$p"); done
if [ ${#want[@]} -gt 0 ]; then
  echo "npipe: installing ${want[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
