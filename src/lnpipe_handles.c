/* npipe.core's timers and signals: libuv handles of npipe's own, listed in the context
 * so that closing npipe closes exactly these, also on a loop it shares with a host. */
#include <signal.h>
#include <stdlib.h>

#include "lnpipe.h"

static lhandle *lhandle_new(lua_State *L, ctx *x) {
  lhandle *h = malloc(sizeof *h);
  if (h == NULL) luaL_error(L, "out of memory");
  h->u.handle.data = NULL; /* libuv leaves data alone */
  h->prev = NULL;
  h->next = x->handles;
  if (x->handles) x->handles->prev = h;
  x->handles = h;
  return h;
}

static void free_handle(uv_handle_t *h) { free(h); } /* the lhandle: u is its first member */

static void lhandle_close(ctx *x, lhandle *h) {
  box *b = h->u.handle.data;
  if (b) b->p = NULL;
  h->u.handle.data = NULL;
  if (h->prev) h->prev->next = h->next;
  else x->handles = h->next;
  if (h->next) h->next->prev = h->prev;
  uv_close(&h->u.handle, free_handle);
}

void lnp_handles_close_all(ctx *x) {
  while (x->handles) lhandle_close(x, x->handles);
}

/* close() and __gc of both kinds. */
static int handle_close(lua_State *L, const char *mt) {
  box *b = luaL_checkudata(L, 1, mt);
  if (b->p) lhandle_close(b->x, b->p);
  return 0;
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t) { lnp_dispatch0(t->data, EV_TIMER); }

int lnp_timer(lua_State *L) {
  ctx *x = lnp_ctx(L);
  lhandle *h = lhandle_new(L, x);
  uv_timer_init(x->loop, &h->u.timer);
  h->u.timer.data = lnp_new_box(L, x, h, TIMER_MT, BOX_SELF, 0);
  return 1;
}

static int timer_start(lua_State *L) {
  uv_timer_t *t = lnp_check_open(L, 1, TIMER_MT, "timer");
  lua_Number ms = luaL_checknumber(L, 2);
  lua_Number rep = luaL_optnumber(L, 3, 0);
  luaL_argcheck(L, ms >= 0 && rep >= 0, 2, "time must not be negative");
  /* libuv counts from the time cached at the last loop turn, which is stale after
   * the script ran for a while without the loop: a timeout would expire early. */
  uv_update_time(t->loop);
  uv_timer_start(t, on_timer, (uint64_t)ms, (uint64_t)rep);
  return 0;
}

static int timer_stop(lua_State *L) {
  uv_timer_stop(lnp_check_open(L, 1, TIMER_MT, "timer"));
  return 0;
}

static int timer_close(lua_State *L) { return handle_close(L, TIMER_MT); }

/* ---- signals ---- */

static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  lnp_dispatch0(h->data, EV_SIGNAL);
}

int lnp_signal(lua_State *L) {
  static const char *const names[] = {"SIGINT", "SIGTERM", "SIGHUP", NULL};
  static const int numbers[] = {SIGINT, SIGTERM, SIGHUP};
  ctx *x = lnp_ctx(L);
  int which = luaL_checkoption(L, 1, NULL, names);
  lhandle *h = lhandle_new(L, x);
  uv_signal_init(x->loop, &h->u.signal);
  h->u.signal.data = lnp_new_box(L, x, h, SIGNAL_MT, BOX_SELF, 0);
  int rc = uv_signal_start(&h->u.signal, on_signal, numbers[which]);
  if (rc < 0) return luaL_error(L, "cannot watch %s: %s", names[which], uv_strerror(rc));
  uv_unref(&h->u.handle); /* watching a signal alone does not keep npipe.run() going */
  return 1;
}

static int signal_close(lua_State *L) { return handle_close(L, SIGNAL_MT); }

void lnp_handles_open(lua_State *L) {
  static const luaL_Reg timer_methods[] = {
      {"start", timer_start}, {"stop", timer_stop}, {"close", timer_close}, {NULL, NULL}};
  static const luaL_Reg signal_methods[] = {{"close", signal_close}, {NULL, NULL}};
  lnp_new_metatable(L, TIMER_MT, timer_methods, timer_close);
  lnp_new_metatable(L, SIGNAL_MT, signal_methods, signal_close);
}
