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

/* A userdata with one user value (nil until set), and access to it: np_getuv pushes it
 * and returns its type. Lua 5.1 has the userdata's environment table instead, which
 * is never nil: a fresh one gets the registry's shared empty table NP_NO_FIELDS, which
 * np_getuv reports as nil. */
#if LUA_VERSION_NUM >= 504
#define np_newuserdata1(L, size) lua_newuserdatauv(L, size, 1)
#define np_getuv(L, idx) lua_getiuservalue(L, idx, 1)
#define np_setuv(L, idx) ((void)lua_setiuservalue(L, idx, 1))
#elif LUA_VERSION_NUM >= 502
#define np_newuserdata1(L, size) lua_newuserdata(L, size)
static inline int np_getuv(lua_State *L, int idx) {
  lua_getuservalue(L, idx);
  return lua_type(L, -1);
}
#define np_setuv(L, idx) lua_setuservalue(L, idx)
#else
#define NP_NO_FIELDS "npipe.nofields"
static inline void *np_newuserdata1(lua_State *L, size_t size) {
  void *p = lua_newuserdata(L, size);
  lua_getfield(L, LUA_REGISTRYINDEX, NP_NO_FIELDS);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, NP_NO_FIELDS);
  }
  lua_setfenv(L, -2);
  return p;
}
static inline int np_getuv(lua_State *L, int idx) {
  lua_getfenv(L, idx);
  lua_getfield(L, LUA_REGISTRYINDEX, NP_NO_FIELDS);
  int none = lua_rawequal(L, -1, -2);
  lua_pop(L, 1);
  if (!none) return lua_type(L, -1);
  lua_pop(L, 1);
  lua_pushnil(L);
  return LUA_TNIL;
}
#define np_setuv(L, idx) ((void)lua_setfenv(L, idx))
#endif

#endif
