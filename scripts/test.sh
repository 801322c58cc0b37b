#!/usr/bin/env bash
# Builds npipe and runs every test: C unit tests (ctest), luacheck, the busted specs,
# and a LuaRocks install used from another directory. Prints one summary line at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
source scripts/env.sh
LOG=$(mktemp -d /tmp/npipe-test.XXXXXX)
trap 'rm -rf "$LOG"' EXIT

echo "== C unit tests (ctest)"
(cd "${NPIPE_BUILD:-build}" && ctest --output-on-failure) | tee "$LOG/ctest"
c_passed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' "$LOG/ctest" |
           awk '{print $1 - $2}')

echo "== luacheck"
luacheck --no-color -q lua spec examples $( [ -d bin ] && echo bin ) $( [ -d bench ] && ls bench/*.lua 2>/dev/null )

echo "== busted specs (lua5.4)"
lua5.4 /usr/bin/busted --output=utfTerminal "$@" | tee "$LOG/busted"
summary=$(grep -E '^[0-9]+ success' "$LOG/busted" | tail -1)
b_passed=$(echo "$summary" | awk '{print $1}')

echo "== LuaRocks install, used from another directory"
TREE="$LOG/rocks"
luarocks --lua-version=5.4 --tree="$TREE" make rockspec/npipe-scm-1.rockspec >"$LOG/rocks.log" 2>&1 ||
  { cat "$LOG/rocks.log"; exit 1; }
(cd / && unset LUA_PATH LUA_CPATH && eval "$(luarocks --lua-version=5.4 --tree="$TREE" path)" &&
  T="$TREE" lua5.4 -e 'local n = require("npipe")
    assert(package.searchpath("npipe.core", package.cpath):find(os.getenv("T"), 1, true))
    print("installed: " .. n._VERSION)')
rm -rf build.luarocks

echo "npipe: $((c_passed + b_passed + 1)) passed, 0 failed"
