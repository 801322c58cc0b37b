#!/usr/bin/env bash
# Cross-compiles the C core (engine, framing, Windows platform layer and the Lua
# binding) for Windows with mingw-w64, against Debian's libuv and Lua headers, with
# warnings as errors, so that the Windows side cannot rot. Compile only: scripts/wine.sh
# links and runs them. It keeps its Windows builds of libuv and Lua in the same
# directory, so only what this script makes is replaced, not the whole directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh gcc-mingw-w64-x86-64
OUT=build-windows
rm -rf "$OUT/include" "$OUT"/*.o && mkdir -p "$OUT/include/uv"
# Only the headers: /usr/include itself would bring in Linux's libc headers.
cp /usr/include/uv.h "$OUT/include/"
cp /usr/include/uv/*.h "$OUT/include/uv/"
cp /usr/include/lua5.4/lua.h /usr/include/lua5.4/luaconf.h /usr/include/lua5.4/lauxlib.h "$OUT/include/"
for c in src/*.c; do
  f=$(basename "$c" .c)
  [ "$f" = np_platform_unix ] && continue # every other file of src/ is built for Windows
  x86_64-w64-mingw32-gcc -std=gnu11 -Wall -Wextra -Werror -D_WIN32_WINNT=0x0600 \
    -I"$OUT/include" -Isrc -c "$c" -o "$OUT/$f.o"
done
echo "windows cross-compile clean: $(ls "$OUT"/*.o | wc -l) objects"
