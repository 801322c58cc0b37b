rockspec_format = "3.0"
package = "npipe"
version = "scm-1"
source = {
  -- `luarocks make` builds the checkout it is run from; this names the project's own tree.
  url = "git+file:///npipe",
}
description = {
  summary = "Scriptable named-pipe servers and clients for Lua, on a libuv engine",
  detailed = [[
    npipe serves and connects to named pipes (Unix domain sockets on Linux, named
    pipes on Windows) with handlers written in plain Lua: write, flush, disconnect,
    session ids, message framing, request/reply.
  ]],
  license = "MIT",
  labels = { "ipc", "pipe", "libuv", "server" },
}
dependencies = {
  "lua >= 5.1",
}
external_dependencies = {
  LIBUV = { header = "uv.h" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    NPIPE_LUA_INCDIR = "$(LUA_INCDIR)",
    NPIPE_INSTALL_CMOD = "$(LIBDIR)",
    NPIPE_INSTALL_LMOD = "$(LUADIR)",
    NPIPE_INSTALL_BIN = "$(BINDIR)",
    BUILD_TESTING = "OFF",
  },
  platforms = {
    -- No pkg-config there: libuv and the Lua library are named directly (scripts/wine.sh
    -- builds the same way with mingw-w64; the name below is MSYS2's import library, which
    -- `luarocks make NPIPE_UV_LIBRARY=...` replaces for other builds of libuv).
    windows = {
      variables = {
        NPIPE_LUA_LIBRARY = "$(LUA_LIBDIR)/$(LUALIB)",
        NPIPE_UV_INCDIR = "$(LIBUV_INCDIR)",
        NPIPE_UV_LIBRARY = "$(LIBUV_LIBDIR)/libuv.dll.a",
      },
    },
  },
}
