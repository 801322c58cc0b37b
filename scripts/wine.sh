#!/usr/bin/env bash
# Runs the C tests (framing decoder, engine) as Windows programs under Wine: libuv is
# built for Windows with mingw-w64 from Debian's own source package, then the tests are
# linked against it and npipe's Windows platform layer. Wine's stubs are reported by the
# tests themselves ("skip ...: Wine ...").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh gcc-mingw-w64-x86-64 wine64 dpkg-dev cmake
bash scripts/windows.sh >/dev/null # headers in build-windows/include, and the compile check
OUT=$PWD/build-windows
UV=$OUT/libuv

if [ ! -f "$UV/libuv_a.a" ]; then
  # Debian source packages come through the archive's own entry, with deb-src added.
  SOURCES=/etc/apt/sources.list.d/debian.sources
  if ! grep -q "deb-src" "$SOURCES" 2>/dev/null; then
    [ -f "$SOURCES" ] || { echo "wine.sh: no $SOURCES to enable source packages in" >&2; exit 1; }
    sed -i '0,/^Types: deb$/s//Types: deb deb-src/' "$SOURCES"
    apt-get update -qq
  fi
  rm -rf "$OUT/src" && mkdir -p "$OUT/src"
  (cd "$OUT/src" && apt-get source -qq libuv1 >/dev/null 2>&1)
  cat > "$OUT/mingw.cmake" <<'TOOLCHAIN'
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
TOOLCHAIN
  cmake -S "$OUT"/src/libuv1-*/ -B "$UV" -DCMAKE_TOOLCHAIN_FILE="$OUT/mingw.cmake" \
    -DLIBUV_BUILD_TESTS=OFF -DLIBUV_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$UV" -j"$(nproc)" --target uv_a >/dev/null 2>&1
fi

CC="x86_64-w64-mingw32-gcc -std=gnu11 -Wall -Wextra -Werror -D_WIN32_WINNT=0x0600 -I$OUT/include -Isrc"
WINLIBS="$UV/libuv_a.a -lws2_32 -liphlpapi -luserenv -ldbghelp -lole32 -lshell32"
$CC tests/test_framing.c src/np_framing.c -o "$OUT/test_framing.exe"
$CC tests/test_engine.c src/np_engine.c src/np_framing.c src/np_platform_win.c $WINLIBS -o "$OUT/test_engine.exe"

export WINEPREFIX=$OUT/wineprefix WINEDEBUG=-all
for t in test_framing test_engine; do
  (cd "$OUT" && timeout 300 /usr/lib/wine/wine64 "$t.exe" > "$t.wine.log" 2>&1) || { cat "$OUT/$t.wine.log"; exit 1; }
  grep -E "^skip" "$OUT/$t.wine.log" || true
  echo "wine clean: $t.exe ($(grep -c '^ok ' "$OUT/$t.wine.log") tests)"
done
