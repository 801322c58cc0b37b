#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time
# (NPIPE_FUZZ_SECONDS, default 30) from the corpus kept in tests/fuzz/corpus.
# A crash or failed assertion fails the run and leaves the input in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh clang libclang-rt-14-dev
SECONDS_EACH=${NPIPE_FUZZ_SECONDS:-30}
OUT=build-fuzz
mkdir -p "$OUT"
UV_FLAGS=$(pkg-config --cflags --libs libuv)
FLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Isrc"
clang $FLAGS tests/fuzz/fuzz_framing.c src/np_framing.c -o "$OUT/fuzz_framing"
clang $FLAGS tests/fuzz/fuzz_resolve.c src/np_platform_unix.c $UV_FLAGS -o "$OUT/fuzz_resolve"
for t in framing resolve; do
  work="$OUT/corpus-$t"
  rm -rf "$work" && mkdir -p "$work"
  cp tests/fuzz/corpus/$t/* "$work"/ 2>/dev/null || true
  echo "== fuzz_$t for ${SECONDS_EACH}s"
  (cd "$OUT" && ./fuzz_$t -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=0 \
     "corpus-$t" 2>fuzz_$t.log) || { tail -40 "$OUT/fuzz_$t.log"; exit 1; }
  grep -E '^#[0-9]+.*DONE' "$OUT/fuzz_$t.log" | tail -1 || tail -2 "$OUT/fuzz_$t.log"
done
