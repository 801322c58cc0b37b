/* core.share: npipe moves from its own loop onto luv's (Neovim's vim.uv, or luv in a
 * plain Lua), so that one loop serves both. luv publishes no C API for its loop: the
 * one assumption about luv's private layout is luv_head below, and share_refusal checks
 * it, and that both use the same copy of libuv, against what luv's Lua side says. */
#define _GNU_SOURCE /* dladdr */
#include <string.h>

#include "lnpipe.h"

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif

#define SHARE_KEY "npipe.share"

/* The head of luv's luv_ctx_t (luv.h; as in Debian's luv 1.44.2 build), which luv keeps
 * as a userdata in the registry under "luv_context". luv may change it: l_share takes
 * it only from a userdata at least this long, and share_refusal checks the loop in it
 * against uv.backend_fd() and uv.version() from luv's Lua side before npipe uses it. */
typedef struct luv_head {
  uv_loop_t *loop;
  lua_State *L; /* the thread luv calls back on */
  host_pcall pcall;
} luv_head;

static luv_head read_luv_head(lua_State *L) {
  luv_head head = {0};
  lua_getfield(L, LUA_REGISTRYINDEX, "luv_context");
  if (lua_type(L, -1) == LUA_TUSERDATA && lua_rawlen(L, -1) >= sizeof head)
    memcpy(&head, lua_touserdata(L, -1), sizeof head);
  lua_pop(L, 1);
  return head;
}

/* Two copies of one libuv version (a host that links it statically) keep separate
 * process-wide state, such as the signal pipe. The threadpool callback inside a loop
 * (uv_loop_t.wq_async, a libuv-internal field) is code of the copy that initialised the
 * loop: the same address means the same copy. */
static int same_libuv(const uv_loop_t *a, const uv_loop_t *b) {
  return a->wq_async.async_cb == b->wq_async.async_cb;
}

static void count_open(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) ++*(int *)arg;
}

/* Why npipe cannot move to the loop in head, or NULL. luv hands out the pointer on
 * trust, so it is checked against what luv's Lua side says about its loop. */
static const char *share_refusal(ctx *x, const luv_head *head, lua_Integer fd, lua_Integer version) {
  if (head->loop == NULL || head->pcall == NULL) return "luv has no loop in this Lua state";
  /* another libuv version may lay out uv_loop_t differently */
  if (version != (lua_Integer)uv_version()) return "luv runs another libuv version than npipe";
  if (uv_backend_fd(head->loop) != fd) return "luv's context does not describe the loop luv runs";
  if (!same_libuv(head->loop, &x->own)) return "luv uses another copy of libuv than npipe (linked statically?)";
  int open = 0;
  uv_walk(&x->own, count_open, &open);
  if (open > 2) /* the engine's flush and linger timers are always there */
    return "npipe already has servers, connections, timers or signals on its own loop";
  return NULL;
}

/* The close callbacks that npipe leaves on luv's loop at lua_close are code of this
 * module, and Lua 5.1 and LuaJIT unload a C module in its own finalizer, before luv's
 * loop finalizer runs them. So once it shares a loop the module stays loaded. */
static int pin_module(void) {
#ifdef _WIN32
  HMODULE m;
  DWORD how = GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_PIN;
  return GetModuleHandleExA(how, (LPCSTR)(void *)pin_module, &m) ? 0 : -1;
#else
  Dl_info info;
  if (dladdr((void *)pin_module, &info) == 0 || info.dli_fname == NULL) return -1;
  return dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE) ? 0 : -1;
#endif
}

/* Runs at lua_close before luv's loop finalizer: luv created its loop before npipe
 * could share it, and finalizers run newest first. luv's finalizer closes every handle
 * still open on its loop as one of its own, which npipe's are not. */
static int share_gc(lua_State *L) {
  ctx *x = *(ctx **)lua_touserdata(L, 1);
  if (x->shared && !x->closed) lnp_let_go_of_host_loop(x);
  return 0;
}

static void keep_share_guard(lua_State *L, ctx *x) {
  ctx **g = lua_newuserdata(L, sizeof *g);
  *g = x;
  lua_newtable(L);
  lua_pushcfunction(L, share_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, SHARE_KEY);
}

/* core.share(fd, version): moves npipe onto luv's loop. fd and version are luv's
 * uv.backend_fd() and uv.version(). true, or nil, message, code. */
int lnp_share(lua_State *L) {
  ctx *x = lnp_ctx(L);
  lua_Integer fd = luaL_checkinteger(L, 1), version = luaL_checkinteger(L, 2);
  if (x->shared) return lnp_push_error(L, UV_EBUSY, "npipe already runs on luv's loop");
  luv_head head = read_luv_head(L);
  const char *why = share_refusal(x, &head, fd, version);
  if (why == NULL && pin_module() != 0) why = "cannot keep npipe's module loaded";
  if (why) return lnp_push_error(L, UV_ENOTSUP, why);
  np_engine *e = np_engine_new(head.loop, &lnp_engine_events);
  if (e == NULL) return lnp_push_error(L, UV_ENOMEM, NULL);
  keep_share_guard(L, x);
  np_engine_release(x->engine); /* its handles are closing: let the own loop call back */
  for (int i = 0; i < 16 && uv_loop_close(&x->own) == UV_EBUSY; i++) uv_run(&x->own, UV_RUN_NOWAIT);
  x->engine = e;
  x->loop = head.loop;
  x->L = head.L;
  x->pcall = head.pcall;
  x->shared = 1;
  lua_pushboolean(L, 1);
  return 1;
}

#define LUVF_CALLBACK_NOEXIT 0x01 /* luv.h: an error in the callback does not exit */

/* Through luv's caller, npipe's callbacks are luv callbacks to the host: Neovim, for
 * one, then forbids its API in them (a fast event), as it does for vim.loop's. */
void lnp_luv_call(ctx *x, int nargs) { x->pcall(x->L, nargs, 0, LUVF_CALLBACK_NOEXIT); }
