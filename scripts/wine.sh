#!/usr/bin/env bash
# Runs npipe as Windows programs under Wine: libuv, Lua 5.4 and the C modules busted
# needs are built for Windows with mingw-w64 from Debian's own source packages. Then
# the C tests (framing decoder, engine) run, and busted runs the Lua specs that hold on
# every platform (those in SPECS below) with the Windows build of npipe.core.
# Wine's stubs are reported by the tests themselves ("skip ...: Wine ...").
# Built pieces stay in build-windows/ and are reused; npipe's own code is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh gcc-mingw-w64-x86-64 wine64 dpkg-dev cmake
bash scripts/windows.sh >/dev/null # headers in build-windows/include, and the compile check
ROOT=$PWD
OUT=$ROOT/build-windows
UV=$OUT/libuv
LUA=$OUT/lua # lua.exe, lua54.dll and the C modules, laid out as package.cpath finds them

# Debian source packages come through the archive's own entry, with deb-src added.
enable_deb_src() {
  local sources=/etc/apt/sources.list.d/debian.sources
  grep -q "deb-src" "$sources" 2>/dev/null && return
  [ -f "$sources" ] || { echo "wine.sh: no $sources to enable source packages in" >&2; exit 1; }
  sed -i '0,/^Types: deb$/s//Types: deb deb-src/' "$sources"
  apt-get update -qq >&2
}

# Unpacks Debian's source package $1 into $OUT/src/$1/tree; prints that directory.
source_pkg() {
  local dir=$OUT/src/$1
  if [ ! -d "$dir/tree" ]; then
    enable_deb_src
    rm -rf "$dir" && mkdir -p "$dir"
    if ! (cd "$dir" && apt-get source -qq "$1" >/dev/null 2>&1); then
      # The mirror lacks some packaging tarballs (lua-term's .debian.tar.xz answers 404);
      # the upstream tarball, fetched before the failure, holds the source itself.
      local orig
      orig=$(find "$dir" -maxdepth 1 -name "*.orig.tar.*" | head -1)
      [ -n "$orig" ] || { echo "wine.sh: cannot fetch the source package $1" >&2; exit 1; }
      tar xf "$orig" -C "$dir"
    fi
    mv "$(find "$dir" -mindepth 1 -maxdepth 1 -type d | head -1)" "$dir/tree"
  fi
  echo "$dir/tree"
}

MINGW=x86_64-w64-mingw32-gcc

cat > "$OUT/mingw.cmake" <<'TOOLCHAIN'
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
TOOLCHAIN
if [ ! -f "$UV/libuv_a.a" ]; then
  LIBUV_SRC=$(source_pkg libuv1)
  cmake -S "$LIBUV_SRC" -B "$UV" -DCMAKE_TOOLCHAIN_FILE="$OUT/mingw.cmake" \
    -DLIBUV_BUILD_TESTS=OFF -DLIBUV_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$UV" -j"$(nproc)" --target uv_a >/dev/null 2>&1
fi

# Lua 5.4 as lua54.dll + lua.exe, the way Lua's own "mingw" make target builds it.
# Debian's patches change only the Unix side of luaconf.h and the build system.
LUA_SRC=$(source_pkg lua5.4)/src
if [ ! -f "$LUA/lua.exe" ]; then
  mkdir -p "$OUT/lua-obj" "$LUA"
  LUA_CFLAGS="-std=gnu99 -O2 -DLUA_COMPAT_5_3 -DLUA_BUILD_AS_DLL"
  find "$LUA_SRC" -maxdepth 1 -name "*.c" ! -name lua.c ! -name luac.c -printf "%f\n" |
    xargs -P"$(nproc)" -I{} $MINGW $LUA_CFLAGS -c "$LUA_SRC/{}" -o "$OUT/lua-obj/{}.o"
  $MINGW -shared -s "$OUT"/lua-obj/*.o -o "$LUA/lua54.dll"
  $MINGW $LUA_CFLAGS -s "$LUA_SRC/lua.c" "$LUA/lua54.dll" -o "$LUA/lua.exe"
fi
# Modules link against lua54.dll itself, as Lua's own makefile does for lua.exe.
MODULE="$MINGW -O2 -shared -s -I$LUA_SRC"
if [ ! -f "$LUA/lfs.dll" ]; then
  $MODULE "$(source_pkg lua-filesystem)/src/lfs.c" "$LUA/lua54.dll" -o "$LUA/lfs.dll"
fi
if [ ! -f "$LUA/term/core.dll" ]; then
  mkdir -p "$LUA/term"
  $MODULE "$(source_pkg lua-term)/core.c" "$LUA/lua54.dll" -o "$LUA/term/core.dll"
fi
# npipe itself through its own CMakeLists.txt, as LuaRocks on Windows would build it:
# the module against lua54.dll, and the C tests, with warnings as errors.
NP=$OUT/npipe
cmake -S . -B "$NP" -DCMAKE_TOOLCHAIN_FILE="$OUT/mingw.cmake" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNPIPE_UV_INCDIR="$OUT/include" -DNPIPE_UV_LIBRARY="$UV/libuv_a.a" \
  -DNPIPE_LUA_INCDIR="$LUA_SRC" -DNPIPE_LUA_LIBRARY="$LUA/lua54.dll" -DBUILD_TESTING=ON >/dev/null
cmake --build "$NP" -j"$(nproc)" >/dev/null
mkdir -p "$LUA/npipe"
cp "$NP/npipe/core.dll" "$LUA/npipe/core.dll"
cp "$NP/test_framing.exe" "$NP/test_engine.exe" "$OUT/"
# A client made of Win32 calls only, for spec/win32_spec.lua.
$MINGW -std=gnu11 -Wall -Wextra -Werror -O2 tests/win32_client.c -o "$OUT/win32_client.exe" -ladvapi32

export WINEPREFIX=$OUT/wineprefix WINEDEBUG=-all
for t in test_framing test_engine; do
  (cd "$OUT" && timeout 300 /usr/lib/wine/wine64 "$t.exe" > "$t.wine.log" 2>&1) || { cat "$OUT/$t.wine.log"; exit 1; }
  grep -E "^skip" "$OUT/$t.wine.log" || true
  echo "wine clean: $t.exe ($(grep -c '^ok ' "$OUT/$t.wine.log") tests)"
done

# busted and its pure-Lua dependencies are Debian's, read through Wine's Z: drive.
zpath() { local p=${1//\//\\}; printf 'Z:%s' "$p"; }
SHARE=$(zpath /usr/share/lua/5.4)
LUA_PATH_WIN="$(zpath "$ROOT/lua")\\?.lua;$(zpath "$ROOT/lua")\\?\\init.lua;$SHARE\\?.lua;$SHARE\\?\\init.lua"
LUA_CPATH_WIN="$(zpath "$LUA")\\?.dll"
# Tests tagged #unix need a shell, socket files or Unix permissions; #prefix ones write
# message framing's length prefix, which a Windows message-type pipe does not use.
SPECS=(spec/portable_spec.lua spec/echo_spec.lua spec/request_spec.lua spec/disconnect_spec.lua
  spec/errors_spec.lua spec/badinput_spec.lua spec/nt_spec.lua spec/win32_spec.lua)
# .busted's cpath names the Linux build; the command line replaces it.
# NPIPE_LUA: the interpreter the portable spec starts its client process with.
if ! env -u LUA_PATH -u LUA_CPATH LUA_PATH_5_4="$LUA_PATH_WIN" LUA_CPATH_5_4="$LUA_CPATH_WIN" \
    NPIPE_LUA="$(zpath "$LUA")\\lua.exe" NPIPE_WIN32_CLIENT="$(zpath "$OUT")\\win32_client.exe" \
    timeout 300 /usr/lib/wine/wine64 "$LUA/lua.exe" "$(zpath "$ROOT/scripts/busted-wine.lua")" \
    --output=plainTerminal --exclude-tags=unix,prefix --cpath="$LUA_CPATH_WIN" "${SPECS[@]}" > "$OUT/busted.wine.log" 2>&1; then
  cat "$OUT/busted.wine.log"
  exit 1
fi
echo "== busted under Wine: ${SPECS[*]}"
grep -E '^[0-9]+ success' "$OUT/busted.wine.log"
