#!/usr/bin/env bash
# Installs the Debian packages npipe needs to build, run and test, if any is missing.
# Usage: bash scripts/deps.sh [extra-package ...]
set -euo pipefail

PACKAGES=(gcc make cmake pkg-config libuv1-dev lua5.4 liblua5.4-dev lua-busted
          luarocks lua-check python3 socat procps util-linux "$@")
# Satisfied by the command alone, wherever it came from (pyenv, NodeSource, ...).
declare -A BY_COMMAND=([python3]=python3 [nodejs]=node)

want=()
for p in "${PACKAGES[@]}"; do
  if [ -n "${BY_COMMAND[$p]:-}" ] && command -v "${BY_COMMAND[$p]}" >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || want+=("$p")
done
if [ ${#want[@]} -gt 0 ]; then
  echo "npipe: installing ${want[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
