/* The few Lua C API calls the binding uses that differ between Lua 5.1/LuaJIT,
 * 5.2, 5.3 and 5.4. The binding is written against 5.4; older versions get these. */
#ifndef NP_COMPAT_H
#define NP_COMPAT_H

#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM < 502
#if !defined(luaL_newlib) /* LuaJIT 2.1 has these three already */
static inline void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  (void)nup; /* the binding registers no upvalues */
  luaL_register(L, NULL, l);
}
#define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
static inline void luaL_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
#endif
#define lua_rawlen(L, idx) lua_objlen(L, idx)
static inline void lua_rawgetp(lua_State *L, int idx, const void *p) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx--; /* the key is pushed first */
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, idx);
}
static inline void lua_rawsetp(lua_State *L, int idx, const void *p) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx--;
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, idx);
}
#endif

#endif
