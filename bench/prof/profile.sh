#!/usr/bin/env bash
# Instruction profile of the npipe echo server under a short pingpong load (callgrind).
#   bash bench/prof/profile.sh [SECONDS=3] [CONNS=16] [FRAMING=bytes] [SERVER=npipe]
# SERVER=luv profiles bench/servers/luv_echo.lua the same way instead (bytes framing only),
# for the reference figure of the same machine and run.
# perf is not usable on these VMs (`perf stat -e instructions true` says <not supported>), and
# callgrind's instruction counts repeat exactly, so they show what an engine change saves.
# Writes bench/results/callgrind.out.npipe and prints the top 15 functions, inclusive and self.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
BUILD=$BENCH/build
OUT=${BENCH_OUT:-$BENCH/results}
SECS=${1:-3}; CONNS=${2:-16}; FRAMING=${3:-bytes}; SERVER=${4:-npipe}
case $SERVER in
  npipe) SCRIPT=$BENCH/servers/npipe_echo.lua ;;
  luv) SCRIPT=$BENCH/servers/luv_echo.lua; FRAMING=bytes ;;
  *) echo "SERVER must be npipe or luv" >&2; exit 2 ;;
esac
mkdir -p "$OUT"

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
# symbols for liblua5.4 (Debian's lua5.4 binary is stripped; luahost links the shared library)
if [ ! -e /usr/lib/debug/.build-id ] || ! dpkg -s liblua5.4-0-dbg >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] && apt-get install -y liblua5.4-0-dbg >/dev/null 2>&1 || echo "(no liblua5.4-0-dbg: Lua functions will show as addresses)" >&2
fi
make -s -C "$BENCH" OUT="$BUILD" >&2
NPIPE_BUILD=bench/build/npipe NPIPE_CMAKE_ARGS="-DNPIPE_WERROR=OFF" bash "$ROOT/scripts/build.sh" >&2
export NPIPE_BUILD=bench/build/npipe
# shellcheck source=/dev/null
source "$ROOT/scripts/env.sh"
UVA=$(pkg-config --variable=libdir libuv)/libuv_a.a
# shellcheck disable=SC2046 # pkg-config prints several flags
cc -O2 -g $(pkg-config --cflags lua5.4 libuv) -o "$BUILD/luahost" "$BENCH/prof/luahost.c" -rdynamic \
  $(pkg-config --libs lua5.4) -Wl,--whole-archive "$UVA" -Wl,--no-whole-archive -lpthread -ldl

SOCKDIR=$(mktemp -d /tmp/npipe-prof.XXXXXX)
SOCK=$SOCKDIR/npipe.sock
CG=$OUT/callgrind.out.$SERVER
SPID=""
cleanup() {
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then kill -KILL "$SPID" 2>/dev/null || true; fi
  rm -rf "$SOCKDIR"
}
trap cleanup EXIT

taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$CG" --dump-instr=no --separate-recs=8 \
  "$BUILD/luahost" "$SCRIPT" "$SOCK" "$FRAMING" 2>"$OUT/callgrind.log" &
SPID=$!
for _ in $(seq 300); do [ -S "$SOCK" ] && break; kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "server did not start under valgrind; see $OUT/callgrind.log" >&2; exit 1; }
# (no callgrind_control -z: zeroing inside the running loop breaks inclusive costs; start-up is a few %)
LINE=$(timeout 120 taskset -c 0 "$BUILD/loadgen" --path "$SOCK" --pid "$SPID" --mode pingpong --conns "$CONNS" \
  --size 64 --framing "$FRAMING" --seconds "$SECS" --warmup 0 --tag "server=$SERVER-under-callgrind") || true
echo "$LINE"
OPS=$(sed -n 's/.* ops=\([0-9]*\).*/\1/p' <<<"$LINE")
kill -TERM "$SPID"
for _ in $(seq 300); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
wait "$SPID" 2>/dev/null || true
SPID=""

echo
echo "== callgrind (C level; counts include start-up, about 6 M instructions)"
lua5.4 "$BENCH/prof/summarize.lua" "$CG" "${OPS:-0}"
[ "$SERVER" = npipe ] || exit 0

# Lua level: which Lua functions run the VM instructions (a count hook; a plain lua5.4 run)
rm -f "$SOCK"
taskset -c 1 lua5.4 "$BENCH/prof/luaprof.lua" "$OUT/luaprof.txt" "$BENCH/servers/npipe_echo.lua" "$SOCK" "$FRAMING" &
SPID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; kill -0 "$SPID" 2>/dev/null || break; sleep 0.05; done
timeout 60 taskset -c 0 "$BUILD/loadgen" --path "$SOCK" --mode pingpong --conns "$CONNS" --size 64 \
  --framing "$FRAMING" --seconds 1 --warmup 0 >/dev/null || true
kill -TERM "$SPID"
for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.05; done
wait "$SPID" 2>/dev/null || true
SPID=""
echo
echo "== Lua functions by VM instructions executed (self; $OUT/luaprof.txt)"
head -16 "$OUT/luaprof.txt"
echo
echo "(full profile: callgrind_annotate --inclusive=yes $CG, or open it in kcachegrind)"
