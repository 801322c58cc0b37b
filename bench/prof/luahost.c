/* luahost: a minimal lua5.4 stand-in for profiling. Debian's /usr/bin/lua5.4 has Lua linked in
 * and stripped, so a profiler sees only addresses; this host links the shared liblua5.4 (whose
 * symbols come from the liblua5.4-0-dbg package) and a static libuv exported with -rdynamic, so
 * npipe/core.so's libuv calls bind to a copy that has its internal function names.
 *   luahost SCRIPT [ARGS...]   (arg[0] = SCRIPT, arg[1..] = ARGS, like lua5.4) */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <uv.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: luahost SCRIPT [ARGS...]\n");
    return 2;
  }
  (void)uv_version(); /* keep libuv linked in */
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  if (luaL_loadfile(L, argv[1]) != LUA_OK) {
    fprintf(stderr, "luahost: %s\n", lua_tostring(L, -1));
    return 1;
  }
  for (int i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
  if (lua_pcall(L, argc - 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "luahost: %s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_close(L);
  return 0;
}
