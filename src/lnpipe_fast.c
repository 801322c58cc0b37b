/* The per-message fast path. Two things every echo-like handler does per message,
 * done without Lua frames of npipe's own:
 *   - a frame for an admitted server connection, arriving when no job runs and the
 *     connection has no job waiting or queued, starts the server's data handler straight
 *     from C as the body of a pooled plain coroutine (what sched.event, events.frame,
 *     sched.submit and sched.start do in Lua with a worker);
 *   - conn:write on an open connection with room under high_water queues the string
 *     from C (what Conn:write and the core write method do).
 * Every other case takes the Lua path, which stays the definition of the behaviour: a
 * job waiting or queued, an event arriving inside a job, luv's loop (its callbacks go
 * through luv's own pcall), and Lua 5.1, 5.2 and LuaJIT (built for 5.3's lua_resume and
 * lua_callk continuations only).
 * The scheduler's state that both sides use is sched.lua's table S (slots S_*). */
#include <stdlib.h>

#include "lnpipe.h"

/* What a worker of sched.lua yields when its job ended (core.DONE). */
static char done_marker;

void lnp_fast_push_done(lua_State *L) { lua_pushlightuserdata(L, &done_marker); }

void lnp_pool_free(ctx *x) {
  free(x->pool);
  x->pool = NULL;
  x->npool = x->pool_cap = 0;
}

#if LUA_VERSION_NUM >= 503

/* The slots of sched.lua's S. */
enum { S_CURRENT = 1, S_RUNNABLE, S_REGISTER = 5, S_AFTER, S_ENDED, S_PUMP };

static int resume(lua_State *co, lua_State *from, int nargs, int *nres) {
#if LUA_VERSION_NUM >= 504
  return lua_resume(co, from, nargs, nres);
#else
  int st = lua_resume(co, from, nargs);
  *nres = lua_gettop(co);
  return st;
#endif
}

/* ---- the pool of plain coroutines ----
 * A plain coroutine runs one handler as its body: pushed with its arguments and
 * resumed. When the body returns, the coroutine (status OK, empty stack) can take the
 * next one, which costs no yield. x->pool[i - 1] is the one in slot i (1 .. npool); the
 * registry table pool_anchor holds the same thread at [i] so that the collector keeps
 * it. A slot keeps its pointer and anchor after it is taken: giving the same coroutine
 * back to the same slot, as every job that just ends does, then costs no Lua call. */

/* Idle coroutines kept at most: a burst of handlers that wait needs one coroutine each,
 * and without a bound the pool would keep the memory of the largest burst for good
 * (about 1 KiB each). Beyond it, a coroutine whose job ended is left to the collector. */
#define POOL_MAX 256

static int pool_grow(ctx *x) {
  int cap = x->pool_cap ? x->pool_cap * 2 : 16;
  lua_State **p = realloc(x->pool, (size_t)cap * sizeof *p);
  if (p == NULL) return 0;
  for (int i = x->pool_cap; i < cap; i++) p[i] = NULL;
  x->pool = p;
  x->pool_cap = cap;
  return 1;
}

/* Back to the pool, co (its stack empty); L is a thread to work on. A pool at POOL_MAX,
 * or full and unable to grow, lets it go. */
static void pool_give(ctx *x, lua_State *L, lua_State *co) {
  if (x->npool >= POOL_MAX || (x->npool == x->pool_cap && !pool_grow(x))) return;
  int i = ++x->npool;
  if (x->pool[i - 1] == co) return;
  x->pool[i - 1] = co;
  lua_rawgeti(L, LUA_REGISTRYINDEX, x->pool_anchor);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawseti(L, -2, i);
  lua_pop(L, 1);
}

/* core.plain_give(co): a plain coroutine whose job waited has ended (sched.lua). */
int lnp_plain_give(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  lua_State *co = lua_tothread(L, 1);
  lua_settop(co, 0);
  pool_give(lnp_ctx(L), L, co);
  return 0;
}

/* A plain coroutine from the pool, or a new one (left pushed on L, which keeps it until
 * it is pooled or sched.lua has it; S at s). */
static lua_State *take_plain(ctx *x, lua_State *L, int s) {
  if (x->npool > 0) return x->pool[--x->npool];
  lua_State *co = lua_newthread(L);
  lua_rawgeti(L, s, S_REGISTER);
  lua_pushvalue(L, -2);
  lnp_pcall(L, 1, "the scheduler", "");
  return co;
}

/* ---- frames ---- */

/* The job ran in co for the connection at conn (S at s): settle as sched.lua's start
 * and sched.event would. */
static void after_job(ctx *x, lua_State *L, lua_State *co, int st, int nres, int s, int conn) {
  lua_rawgeti(L, s, S_RUNNABLE);
  int runnable = lua_toboolean(L, -1);
  if (st == LUA_OK) { /* it ended */
    if (nres > 0) lua_settop(co, 0);
    pool_give(x, L, co);
    /* Nothing became runnable, so no job was queued for this connection either (sched
     * marks that runnable): the connection is idle again. */
    if (!runnable) return;
    lua_rawgeti(L, s, S_ENDED);
    lua_pushvalue(L, conn);
    lnp_pcall(L, 1, "the scheduler", "");
    return;
  }
  lua_rawgeti(L, s, S_AFTER);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushvalue(L, conn);
  lua_pushboolean(L, st == LUA_YIELD);
  if (st != LUA_YIELD) {
    lua_xmove(co, L, 1); /* the error; the dead coroutine keeps its stack for the traceback */
  } else if (nres > 0) {
    lua_settop(co, lua_gettop(co) - nres + 1); /* the first yielded value: sched's tag */
    lua_xmove(co, L, 1);
    lua_settop(co, 0);
  } else {
    lua_pushnil(L);
  }
  lnp_pcall(L, 4, "the scheduler", "");
}

/* Every lua_ call costs; this path makes as few as it can, and leaves what it pushed
 * on L to one lua_settop at the end. */
int lnp_fast_frame(box *b, const char *data, size_t len) {
  ctx *x = b->x;
  lua_State *L = x->L;
  box *sb = b->server;
  /* b->jobs: a job of this connection waits or is queued */
  if (L == NULL || x->closed || x->pcall || x->fast == LUA_NOREF || !b->direct || b->jobs || sb == NULL ||
      sb->data_ref == LUA_NOREF || !lua_checkstack(L, 12))
    return 0;
  int top = lua_gettop(L), s = top + 1, conn = top + 2;
  lua_rawgeti(L, LUA_REGISTRYINDEX, x->fast);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->ref);
  int idle = lua_rawgeti(L, s, S_CURRENT) == LUA_TNIL; /* no job runs now */
  /* (An empty coroutine has room for the three values: Lua never shrinks a stack
   * below BASIC_STACK_SIZE slots.) */
  lua_State *co = idle ? take_plain(x, L, s) : NULL;
  if (co == NULL) {
    lua_settop(L, top);
    return 0;
  }
  lua_rawgeti(co, LUA_REGISTRYINDEX, sb->data_ref);
  lua_pushvalue(L, conn);
  lua_xmove(L, co, 1);
  lua_pushlstring(co, data, len);
  lua_pushboolean(L, 1);
  lua_rawseti(L, s, S_CURRENT);
  int nres = 0;
  int st = resume(co, L, 2, &nres);
  lua_pushnil(L);
  lua_rawseti(L, s, S_CURRENT);
  after_job(x, L, co, st, nres, s, conn);
  lua_settop(L, top);
  return 1;
}

/* ---- conn:write ---- */

enum { UP_MT = 1, UP_SLOW, UP_DRAIN };

static int write_done(lua_State *L, int status, lua_KContext base) {
  (void)status;
  return lua_gettop(L) - (int)base;
}

/* Calls the Lua function at upvalue up with the first nargs arguments of the call,
 * where it may wait, and returns what it returns. */
static int call_slow(lua_State *L, int up, int nargs) {
  int base = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(up));
  for (int i = 1; i <= nargs; i++) lua_pushvalue(L, i);
  lua_callk(L, nargs, LUA_MULTRET, base, write_done);
  return write_done(L, LUA_OK, base);
}

/* conn:write(data) with a string: the connection's box when arg 1 is a connection of
 * npipe's (a userdata with npipe's connection metatable, whose address is the upvalue
 * UP_MT), else NULL. Leaves values on the stack above arg 2. */
static box *conn_box(lua_State *L) {
  if (lua_gettop(L) != 2 || lua_type(L, 2) != LUA_TSTRING) return NULL;
  box *b = lua_touserdata(L, 1);
  if (b == NULL || !lua_getmetatable(L, 1)) return NULL;
  return lua_topointer(L, 3) == lua_touserdata(L, lua_upvalueindex(UP_MT)) ? b : NULL;
}

static int fast_write(lua_State *L) {
  box *b = conn_box(L);
  if (b == NULL || b->p == NULL || !np_conn_is_open(b->p)) return call_slow(L, UP_SLOW, 2);
  size_t len;
  const char *data = lua_tolstring(L, 2, &len);
  int rc;
  WITH_THREAD(b->x, L, rc = np_conn_write(b->p, data, len));
  if (rc < 0) return lnp_push_error(L, rc, NULL);
  if (rc > 0) return call_slow(L, UP_DRAIN, 1); /* queued; over high_water: wait */
  lua_pushboolean(L, 1);
  return 1;
}

/* core.fast_write(slow, drain): the C conn:write. slow(conn, ...) is the Lua definition,
 * for every case but the common one; drain(conn) waits after a write that went over
 * high_water and returns what write returns then. */
int lnp_fast_write(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_getmetatable(L, CONN_MT);
  lua_pushlightuserdata(L, (void *)lua_topointer(L, -1)); /* kept alive by the registry */
  lua_replace(L, -2);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, fast_write, 3);
  return 1;
}

#else /* Lua 5.1 and 5.2: the Lua path only */

int lnp_fast_frame(box *b, const char *data, size_t len) {
  (void)b, (void)data, (void)len;
  return 0;
}

int lnp_fast_write(lua_State *L) {
  lua_pushnil(L);
  return 1;
}

int lnp_plain_give(lua_State *L) { return luaL_error(L, "npipe: no plain coroutines before Lua 5.3"); }

#endif
