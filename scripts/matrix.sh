#!/usr/bin/env bash
# Builds the module for Lua 5.1, 5.2, 5.3 and LuaJIT 2.1 (Debian packages) and runs
# the spec suite under each interpreter. Lua 5.4 is the main run in scripts/test.sh.
# Arguments go to busted.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=${NPIPE_LUA_VERSIONS:-"lua5.1 lua5.2 lua5.3 luajit"}
pkgs=()
for v in $VERSIONS; do
  case $v in
    lua5.1) pkgs+=(lua5.1 liblua5.1-0-dev) ;;
    luajit) pkgs+=(luajit libluajit-5.1-dev) ;;
    *) pkgs+=("$v" "lib$v-dev") ;;
  esac
done
bash scripts/deps.sh "${pkgs[@]}"
for v in $VERSIONS; do
  echo "== $v"
  NPIPE_BUILD="build-$v" NPIPE_CMAKE_ARGS="-DNPIPE_LUA_PKG=$v" bash scripts/build.sh
  NPIPE_LUA=$v LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="$PWD/build-$v/?.so;;" \
    timeout 900 "$v" /usr/bin/busted --cpath="./build-$v/?.so" --output=utfTerminal "$@"
done
