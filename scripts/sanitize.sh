#!/usr/bin/env bash
# The whole spec suite again with the module built under AddressSanitizer and
# UndefinedBehaviorSanitizer (loaded into the stock lua5.4 with the runtimes
# preloaded), and the C tests under valgrind. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh valgrind

echo "== C tests under valgrind"
for t in build/test_*; do
  [ -x "$t" ] || continue
  valgrind -q --leak-check=full --show-leak-kinds=definite,indirect,possible --errors-for-leak-kinds=definite,indirect,possible \
    --error-exitcode=1 "$t" >/dev/null
  echo "valgrind clean: $t"
done

echo "== specs under ASan + UBSan"
NPIPE_BUILD=build-asan NPIPE_CMAKE_ARGS="-DNPIPE_SANITIZE=ON" NPIPE_BUILD_TYPE=Debug bash scripts/build.sh
NPIPE_BUILD=build-asan
source scripts/env.sh
export LUA_CPATH="$NPIPE_ROOT/build-asan/?.so;;"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$NPIPE_ROOT/scripts/lsan.supp:print_suppressions=0"
# bounded: a hang under the sanitizers fails the run instead of stalling CI
exec timeout 900 lua5.4 /usr/bin/busted --output=utfTerminal "$@"
