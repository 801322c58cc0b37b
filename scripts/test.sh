#!/usr/bin/env bash
# Builds npipe and runs every test: C unit tests (ctest), luacheck, the busted specs,
# a LuaRocks install used from another directory, the specs again under ASan+UBSan,
# the C tests under valgrind, and the fuzz targets for a bounded time.
# Ends with one line "npipe: N passed, M failed": M is 0, or 1 naming the stage that failed
# (the run stops there). Arguments go to busted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh valgrind clang libclang-rt-14-dev gcc-mingw-w64-x86-64 wine64 dpkg-dev lua5.1 liblua5.1-0-dev \
  lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev luajit libluajit-5.1-dev nodejs lua-luv neovim
bash scripts/build.sh
# A LuaJIT build too, for the spec that hosts npipe inside Neovim (LuaJIT + luv).
NPIPE_BUILD=build-luajit NPIPE_CMAKE_ARGS="-DNPIPE_LUA_PKG=luajit" bash scripts/build.sh
export NPIPE_LUAJIT_CPATH="$PWD/build-luajit/?.so;;"
source scripts/env.sh
LOG=$(mktemp -d /tmp/npipe-test.XXXXXX)
# The pipes the tests make (and the stale sockets of the servers they kill) live in a
# directory of this run's own, not in the user's per-user pipe directory.
XDG_RUNTIME_DIR=$(mktemp -d /tmp/npipe-run.XXXXXX)
export XDG_RUNTIME_DIR
passed=0
stage="setup"
finish() {
  local rc=$?
  [ "$rc" -eq 0 ] || echo "npipe: $passed passed, 1 failed (in: $stage)"
  rm -rf "$LOG" "$XDG_RUNTIME_DIR"
  return "$rc"
}
trap finish EXIT

count_busted() { # adds the successes of a busted log, fails on any failure or error
  local line
  line=$(grep -E '^[0-9]+ success' "$1" | tail -1)
  [ -n "$line" ] || { echo "no busted summary in $1"; exit 1; }
  passed=$((passed + $(echo "$line" | awk '{print $1}')))
}

stage="C unit tests (ctest)"
echo "== C unit tests (ctest)"
(cd "${NPIPE_BUILD:-build}" && ctest --output-on-failure) | tee "$LOG/ctest"
passed=$((passed + $(sed -n 's/.*tests passed, [0-9]* tests failed out of \([0-9]*\).*/\1/p' "$LOG/ctest")))

stage="luacheck"
echo "== luacheck"
luacheck --no-color -q lua spec examples bin $(ls bench/*.lua bench/*/*.lua 2>/dev/null)
passed=$((passed + 1))

stage="busted specs (lua5.4)"
echo "== busted specs (lua5.4)"
timeout 900 lua5.4 /usr/bin/busted --output=utfTerminal "$@" | tee "$LOG/busted"
count_busted "$LOG/busted"

stage="LuaRocks install, used from another directory"
echo "== LuaRocks install, used from another directory"
TREE="$LOG/rocks"
luarocks --lua-version=5.4 --tree="$TREE" make rockspec/npipe-scm-1.rockspec >"$LOG/rocks.log" 2>&1 ||
  { cat "$LOG/rocks.log"; exit 1; }
rm -rf build.luarocks
(cd / && unset LUA_PATH LUA_CPATH && eval "$(luarocks --lua-version=5.4 --tree="$TREE" path)" &&
  T="$TREE" lua5.4 -e 'local n = require("npipe")
    assert(package.searchpath("npipe.core", package.cpath):find(os.getenv("T"), 1, true))
    print("installed: " .. n._VERSION)' &&
  "$TREE/bin/npipe" --version)
passed=$((passed + 1))
# A user's own spec, outside the repository, with npipe.test from the installed rock and
# plain busted (examples/spec: a handlers script and its spec; docs/TESTING.md).
USERSPEC="$LOG/user-spec"
mkdir "$USERSPEC"
cp examples/spec/greeter.lua examples/spec/greeter_spec.lua "$USERSPEC/"
(cd "$USERSPEC" && unset LUA_PATH LUA_CPATH && eval "$(luarocks --lua-version=5.4 --tree="$TREE" path)" &&
  T="$TREE" lua5.4 -e 'assert(package.searchpath("npipe.test", package.path):find(os.getenv("T"), 1, true))' &&
  lua5.4 /usr/bin/busted --output=utfTerminal greeter_spec.lua) | tee "$LOG/user-spec.log"
count_busted "$LOG/user-spec.log"

stage="sanitizers and valgrind"
echo "== sanitizers and valgrind"
bash scripts/sanitize.sh "$@" | tee "$LOG/asan"
count_busted "$LOG/asan"
passed=$((passed + $(grep -c '^valgrind clean' "$LOG/asan")))

if [ "${NPIPE_FUZZ_SECONDS:-30}" != 0 ]; then
  stage="fuzzing"
  echo "== fuzzing"
  bash scripts/fuzz.sh
  passed=$((passed + 2))
fi

stage="Windows cross-compile (mingw-w64), and the C tests and portable specs under Wine"
echo "== Windows cross-compile (mingw-w64), and the C tests and portable specs under Wine"
bash scripts/windows.sh
passed=$((passed + 1))
bash scripts/wine.sh | tee "$LOG/wine"
passed=$((passed + $(grep -c '^wine clean' "$LOG/wine")))
count_busted "$LOG/wine" # the portable specs under Wine

if [ "${NPIPE_MATRIX:-1}" != 0 ]; then
  stage="Lua 5.1, 5.2, 5.3, LuaJIT"
  echo "== Lua 5.1, 5.2, 5.3, LuaJIT"
  bash scripts/matrix.sh ${NPIPE_MATRIX_SPECS:-} | tee "$LOG/matrix"
  while read -r line; do
    passed=$((passed + $(echo "$line" | awk '{print $1}')))
  done < <(grep -E '^[0-9]+ success' "$LOG/matrix")
fi

echo "npipe: $passed passed, 0 failed"
