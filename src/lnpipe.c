/* npipe.core: the thin Lua binding of the engine. It turns engine events into
 * calls of Lua functions that lua/npipe/init.lua registers with core.init, and
 * exposes servers, connections and timers as userdata. Scheduling, coroutines
 * and the public API live on the Lua side. */
#define _GNU_SOURCE /* dladdr */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "np_compat.h"
#include "np_engine.h"

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif

#define CTX_KEY "npipe.ctx"
#define SHARE_KEY "npipe.share"
#define CONN_MT "npipe.core.conn"
#define SERVER_MT "npipe.core.server"
#define TIMER_MT "npipe.core.timer"
#define SIGNAL_MT "npipe.core.signal"
#define PATH_MAX_LEN 4096
#define ERR_LEN 512

enum { EV_ACCEPT, EV_FRAME, EV_CLOSED, EV_CONNECTED, EV_FLUSHED, EV_DRAINED, EV_EOF, EV_TIMER, EV_SIGNAL,
       EV_COUNT };
static const char *const event_names[EV_COUNT] = {"accept",  "frame",   "closed", "connected", "flushed",
                                                  "drained", "eof",     "timer",  "signal"};

/* What luv calls its callbacks with (luv_CFpcall in luv.h). */
typedef int (*host_pcall)(lua_State *L, int nargs, int nresults, int flags);

/* A timer or signal of npipe's, listed so that closing npipe closes exactly these and
 * never a handle of a host whose loop npipe shares. */
typedef struct lhandle {
  union { uv_handle_t handle; uv_timer_t timer; uv_signal_t signal; } u;
  struct lhandle *prev, *next;
} lhandle;

typedef struct ctx {
  uv_loop_t own;    /* npipe's own loop; closed once npipe shares luv's */
  uv_loop_t *loop;  /* where npipe's handles live: &own, or luv's loop */
  np_engine *engine;
  lua_State *L;     /* the running thread that may receive events now */
  int refs[EV_COUNT];
  int objects;      /* weak table: box address -> userdata, for timers and signals */
  int bound;        /* weak table: box address -> the Lua table that stands for it */
  int closed;
  int shared;
  host_pcall pcall; /* on luv's loop: luv's way of calling back into Lua */
  lhandle *handles;
} ctx;

typedef struct box {
  ctx *x;
  void *p;  /* np_conn*, np_server* or uv_timer_t*; NULL once the C object is gone */
  /* connections: the peer's identity, kept when the C object goes */
  np_cred cred;
  long session;
  int peer_kept;
} box;

/* Events arrive on whichever Lua thread called into C; remember it for the call. */
#define WITH_THREAD(x, L, stmt) do { lua_State *saved_ = (x)->L; (x)->L = (L); stmt; (x)->L = saved_; } while (0)

static ctx *get_ctx(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY);
  ctx *x = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return x;
}

static int push_error(lua_State *L, int code, const char *msg) {
  lua_pushnil(L);
  if (msg && msg[0]) lua_pushstring(L, msg);
  else lua_pushfstring(L, "%s (%s)", uv_strerror(code), uv_err_name(code));
  lua_pushstring(L, uv_err_name(code));
  return 3;
}

/* ---- objects ---- */

static box *new_box(lua_State *L, ctx *x, void *p, const char *mt) {
  box *b = lua_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  b->x = x;
  b->p = p;
  luaL_setmetatable(L, mt);
  if (strcmp(mt, TIMER_MT) == 0 || strcmp(mt, SIGNAL_MT) == 0) { /* the others: through core.bind */
    lua_rawgeti(L, LUA_REGISTRYINDEX, x->objects);
    lua_pushvalue(L, -2);
    lua_rawsetp(L, -2, b);
    lua_pop(L, 1);
  }
  return b;
}

/* Pushes the Lua object that stands for b: for connections and servers the table
 * bound to it by core.bind (the object user code sees; an event for one that Lua has
 * let go is dropped), for timers and signals the userdata itself. */
static int push_box(lua_State *L, int table, box *b) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, table);
  lua_rawgetp(L, -1, b);
  lua_remove(L, -2);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

static void *check_open(lua_State *L, int idx, const char *mt, const char *what) {
  box *b = luaL_checkudata(L, idx, mt);
  if (b->p == NULL) luaL_error(L, "attempt to use a closed %s", what);
  return b->p;
}

/* ---- events: engine -> Lua ---- */

/* An event is the registered Lua function for ev called with the object's Lua side
 * and the event's values: event_begin pushes the function and the object (0: the
 * object is gone, nothing pushed), the caller pushes nargs values, event_call calls.
 * The Lua side catches handler errors itself; an error here is a bug in npipe,
 * reported and survived. */
static int event_begin(ctx *x, int ev, box *b) {
  lua_State *L = x->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, x->refs[ev]);
  if (push_box(L, ev >= EV_TIMER ? x->objects : x->bound, b)) return 1;
  lua_pop(L, 1);
  return 0;
}

#define LUVF_CALLBACK_NOEXIT 0x01 /* luv.h */

static void event_call(ctx *x, int ev, int nargs) {
  lua_State *L = x->L;
  /* Through luv's caller, npipe's callbacks are luv callbacks to the host: Neovim, for
   * one, then forbids its API in them (a fast event), as it does for vim.loop's. */
  if (x->pcall) {
    x->pcall(L, nargs + 1, 0, LUVF_CALLBACK_NOEXIT);
    return;
  }
  if (lua_pcall(L, nargs + 1, 0, 0) != 0) {
    fprintf(stderr, "npipe: internal error in %s event: %s\n", event_names[ev], lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

static void dispatch0(ctx *x, int ev, box *b) {
  if (event_begin(x, ev, b)) event_call(x, ev, 0);
}

static int ready(ctx *x, void *data) { return data != NULL && x->L != NULL && !x->closed; }

static void ev_accept(np_server *s, np_conn *c) {
  box *sb = np_server_data(s);
  if (!sb || !ready(sb->x, sb) || !event_begin(sb->x, EV_ACCEPT, sb)) {
    np_conn_end(c, "SHUTDOWN", "server object is gone");
    return;
  }
  np_conn_set_data(c, new_box(sb->x->L, sb->x, c, CONN_MT));
  event_call(sb->x, EV_ACCEPT, 1);
}

static void ev_frame(np_conn *c, const char *data, size_t len) {
  box *b = np_conn_data(c);
  if (!b || !ready(b->x, b) || !event_begin(b->x, EV_FRAME, b)) return;
  lua_pushlstring(b->x->L, data, len);
  event_call(b->x, EV_FRAME, 1);
}

static void ev_closed(np_conn *c, const char *code, const char *reason) {
  box *b = np_conn_data(c);
  if (!b) return;
  b->peer_kept = np_conn_peer(c, &b->cred) == 0;
  b->session = np_conn_peer_session(c);
  if (!ready(b->x, b) || !event_begin(b->x, EV_CLOSED, b)) return;
  uint64_t bytes, msgs;
  np_conn_undelivered(c, &bytes, &msgs);
  lua_pushstring(b->x->L, reason);
  lua_pushstring(b->x->L, code);
  lua_pushinteger(b->x->L, (lua_Integer)bytes);
  lua_pushinteger(b->x->L, (lua_Integer)msgs);
  event_call(b->x, EV_CLOSED, 4);
}

static void ev_connected(np_conn *c, int status) {
  box *b = np_conn_data(c);
  if (!b || !ready(b->x, b) || !event_begin(b->x, EV_CONNECTED, b)) return;
  if (status == 0) {
    event_call(b->x, EV_CONNECTED, 0);
    return;
  }
  lua_pushfstring(b->x->L, "%s (%s)", uv_strerror(status), uv_err_name(status));
  lua_pushstring(b->x->L, uv_err_name(status));
  event_call(b->x, EV_CONNECTED, 2);
}

static void ev_flushed(np_conn *c) {
  box *b = np_conn_data(c);
  if (b && ready(b->x, b)) dispatch0(b->x, EV_FLUSHED, b);
}

static void ev_drained(np_conn *c) {
  box *b = np_conn_data(c);
  if (b && ready(b->x, b)) dispatch0(b->x, EV_DRAINED, b);
}

/* Nobody left to finish the connection's work: end it now rather than at the linger time. */
static void ev_eof(np_conn *c) {
  box *b = np_conn_data(c);
  if (b && ready(b->x, b) && event_begin(b->x, EV_EOF, b)) event_call(b->x, EV_EOF, 0);
  else np_conn_end(c, "EOF", "the peer closed the pipe");
}

static void ev_released(void *data) { ((box *)data)->p = NULL; }

static const np_events engine_events = {ev_accept,  ev_frame,   ev_closed,   ev_connected,
                                        ev_flushed, ev_drained, ev_released, ev_eof};

/* ---- module functions ---- */

static int l_init(lua_State *L) {
  ctx *x = get_ctx(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  for (int i = 0; i < EV_COUNT; i++) {
    lua_getfield(L, 1, event_names[i]);
    luaL_argcheck(L, lua_isfunction(L, -1), 1, event_names[i]);
    luaL_unref(L, LUA_REGISTRYINDEX, x->refs[i]);
    x->refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

static int l_resolve(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  /* C would see the name only up to the NUL, and serve or reach another pipe */
  if (strlen(name) != len)
    return push_error(L, UV_EINVAL, lua_pushfstring(L, "invalid pipe name: it contains a NUL byte (at byte %d)",
                                                    (int)strlen(name) + 1));
  static const char *const policies[] = {"trust", "create", "check", NULL};
  int dir = luaL_checkoption(L, 2, "trust", policies); /* the order of NP_DIR_* */
  char path[PATH_MAX_LEN], err[ERR_LEN];
  int rc = np_platform_resolve(name, dir, path, sizeof path, err, sizeof err);
  if (rc < 0) return push_error(L, rc, err);
  lua_pushstring(L, path);
  return 1;
}

static void check_conn_opts(lua_State *L, int idx, np_conn_opts *o) {
  int framing = np_framing_parse(luaL_checkstring(L, idx));
  luaL_argcheck(L, framing >= 0, idx, "framing must be 'bytes', 'lines' or 'message'");
  lua_Integer max = luaL_checkinteger(L, idx + 1);
  luaL_argcheck(L, max > 0 && max <= 0xFFFFFFFF, idx + 1, "max_message must be 1 .. 4294967295");
  lua_Integer high = luaL_checkinteger(L, idx + 2);
  luaL_argcheck(L, high > 0, idx + 2, "high_water must be positive");
  o->framing = (np_framing_mode)framing;
  o->max_message = (size_t)max;
  o->high_water = (size_t)high;
  o->linger_ms = 0;
}

/* The linger time in seconds at idx, as the engine's milliseconds. */
static void check_linger(lua_State *L, int idx, np_conn_opts *o) {
  lua_Number s = luaL_checknumber(L, idx);
  luaL_argcheck(L, s >= 0 && s <= 1e9, idx, "linger must be 0 .. 1e9 seconds");
  o->linger_ms = (uint64_t)(s * 1000);
}

static int l_listen(lua_State *L) {
  ctx *x = get_ctx(L);
  const char *path = luaL_checkstring(L, 1);
  np_server_opts o;
  check_conn_opts(L, 2, &o.conn);
  o.mode = (int)luaL_checkinteger(L, 5);
  o.backlog = (int)luaL_checkinteger(L, 6);
  o.max_instances = (int)luaL_optinteger(L, 7, 0);
  luaL_argcheck(L, o.max_instances >= 0, 7, "max_instances must not be negative");
  check_linger(L, 8, &o.conn);
  np_server *s;
  char err[ERR_LEN];
  int rc = np_server_listen(x->engine, path, &o, &s, err, sizeof err);
  if (rc < 0) return push_error(L, rc, err);
  np_server_set_data(s, new_box(L, x, s, SERVER_MT));
  return 1;
}

static int l_connect(lua_State *L) {
  ctx *x = get_ctx(L);
  const char *path = luaL_checkstring(L, 1);
  np_conn_opts o;
  check_conn_opts(L, 2, &o);
  check_linger(L, 5, &o);
  np_conn *c;
  int rc = np_conn_connect(x->engine, path, &o, &c);
  if (rc < 0) return push_error(L, rc, NULL);
  np_conn_set_data(c, new_box(L, x, c, CONN_MT));
  return 1;
}

/* Binds a Lua table to a core object: events then carry the table. The table holds
 * the userdata; both go when user code lets go of the table. */
static int l_bind(lua_State *L) {
  ctx *x = get_ctx(L);
  box *b = lua_touserdata(L, 1);
  luaL_argcheck(L, b != NULL && lua_getmetatable(L, 1), 1, "npipe object expected");
  lua_pop(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_rawgeti(L, LUA_REGISTRYINDEX, x->bound);
  lua_pushvalue(L, 2);
  lua_rawsetp(L, -2, b);
  return 0;
}

static int l_open_fd(lua_State *L) {
  ctx *x = get_ctx(L);
  int fd = (int)luaL_checkinteger(L, 1);
  np_conn_opts o;
  check_conn_opts(L, 2, &o);
  check_linger(L, 5, &o);
  np_conn *c;
  int rc = np_conn_open_fd(x->engine, fd, &o, &c);
  if (rc < 0) return push_error(L, rc, NULL);
  np_conn_set_data(c, new_box(L, x, c, CONN_MT));
  return 1;
}

/* "live" (with the server's pid, uid, gid where known), "stale", or nil, message, code. */
static int l_probe(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  np_cred cr;
  char err[ERR_LEN];
  int rc = np_platform_probe(path, &cr, err, sizeof err);
  if (rc < 0) return push_error(L, rc, err);
  lua_pushstring(L, rc ? "live" : "stale");
  if (!rc || cr.pid < 0) return 1;
  lua_pushinteger(L, cr.pid);
  lua_pushinteger(L, cr.uid);
  lua_pushinteger(L, cr.gid);
  return 4;
}

/* Names in a directory with their kind ("socket", "file", "dir", ...). */
static int l_scandir(lua_State *L) {
  static const char *const kinds[] = {"unknown", "file", "dir", "link", "fifo", "socket", "char", "block"};
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  uv_dirent_t ent;
  int rc = uv_fs_scandir(NULL, &req, path, 0, NULL);
  if (rc < 0) {
    uv_fs_req_cleanup(&req);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot list %s: %s", path, uv_strerror(rc));
    lua_pushstring(L, uv_err_name(rc));
    return 3;
  }
  lua_newtable(L);
  int i = 0;
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, ent.name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, kinds[ent.type <= UV_DIRENT_BLOCK ? ent.type : 0]);
    lua_setfield(L, -2, "type");
    lua_rawseti(L, -2, ++i);
  }
  uv_fs_req_cleanup(&req);
  return 1;
}

static int l_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  static const uv_run_mode uv_modes[] = {UV_RUN_DEFAULT, UV_RUN_ONCE, UV_RUN_NOWAIT};
  ctx *x = get_ctx(L);
  int mode = luaL_checkoption(L, 1, "default", modes);
  int alive;
  if (x->shared) return luaL_error(L, "npipe: the loop is luv's; only its owner may run it");
  WITH_THREAD(x, L, alive = uv_run(x->loop, uv_modes[mode]));
  lua_pushboolean(L, alive);
  return 1;
}

static int l_stop(lua_State *L) {
  ctx *x = get_ctx(L);
  if (x->shared) return luaL_error(L, "npipe: the loop is luv's; only its owner may stop it");
  uv_stop(x->loop);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

static int l_session_id(lua_State *L) {
  lua_pushinteger(L, np_platform_session_id());
  return 1;
}

static int l_pid(lua_State *L) {
  lua_pushinteger(L, np_platform_pid());
  return 1;
}

static int l_backend_fd(lua_State *L) {
  lua_pushinteger(L, uv_backend_fd(get_ctx(L)->loop));
  return 1;
}

static int l_backend_timeout(lua_State *L) {
  lua_pushinteger(L, uv_backend_timeout(get_ctx(L)->loop));
  return 1;
}

/* ---- server ---- */

static int server_close(lua_State *L) {
  box *b = luaL_checkudata(L, 1, SERVER_MT);
  if (b->p) {
    np_server_set_data(b->p, NULL);
    np_server_close(b->p);
    b->p = NULL;
  }
  return 0;
}

static int server_path(lua_State *L) {
  lua_pushstring(L, np_server_path(check_open(L, 1, SERVER_MT, "server")));
  return 1;
}

static void set_number(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static int server_stats(lua_State *L) {
  np_stats st = np_server_stats(check_open(L, 1, SERVER_MT, "server"));
  lua_createtable(L, 0, 7);
  set_number(L, "accepted", st.accepted);
  set_number(L, "active", st.active);
  set_number(L, "rejected", st.rejected);
  set_number(L, "bytes_in", st.bytes_in);
  set_number(L, "bytes_out", st.bytes_out);
  set_number(L, "messages_in", st.messages_in);
  set_number(L, "messages_out", st.messages_out);
  return 1;
}

static int server_is_open(lua_State *L) {
  box *b = luaL_checkudata(L, 1, SERVER_MT);
  lua_pushboolean(L, b->p != NULL);
  return 1;
}

/* ---- connection ---- */

static np_conn *open_conn(lua_State *L) {
  np_conn *c = check_open(L, 1, CONN_MT, "connection");
  return c;
}

/* true when the write queue is now over high_water (wait for drained), else false. */
static int conn_write(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (b->p == NULL || !np_conn_is_open(b->p)) return push_error(L, UV_EPIPE, "pipe is closed");
  int rc;
  WITH_THREAD(b->x, L, rc = np_conn_write(b->p, data, len));
  if (rc < 0) return push_error(L, rc, NULL);
  lua_pushboolean(L, rc);
  return 1;
}

static int conn_queued(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  lua_pushinteger(L, b->p ? (lua_Integer)np_conn_queued(b->p) : 0);
  return 1;
}

static int conn_disconnect(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  const char *reason = luaL_optstring(L, 2, NULL);
  const char *code = luaL_optstring(L, 3, NULL);
  int drop = lua_toboolean(L, 4); /* DisconnectNamedPipe: conn:disconnect() asked for it */
  if (b->p && np_conn_is_open(b->p))
    WITH_THREAD(b->x, L, (drop ? np_conn_disconnect : np_conn_end)(b->p, code, reason));
  return 0;
}

static int conn_gc(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  if (b->p) {
    np_conn_set_data(b->p, NULL); /* no events for an object Lua has let go */
    np_conn_end(b->p, "GC", "connection object collected");
    b->p = NULL;
  }
  return 0;
}

static int conn_flush(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  if (b->p == NULL) return push_error(L, UV_EPIPE, "pipe is closed");
  int rc;
  WITH_THREAD(b->x, L, rc = np_conn_flush(b->p));
  if (rc == UV_ENOTCONN) return push_error(L, UV_EPIPE, "pipe is closed");
  if (rc < 0) return push_error(L, rc, "the peer closed the pipe before reading everything");
  lua_pushboolean(L, rc);
  return 1;
}

static int conn_flush_cancel(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  if (b->p) np_conn_flush_cancel(b->p);
  return 0;
}

/* hold(reason, on): "user", "jobs" or "inbox" (NP_HOLD_*). A release may deliver kept
 * frames at once, so events can run inside this call. */
static int conn_hold(lua_State *L) {
  static const char *const names[] = {"user", "jobs", "inbox", NULL};
  static const unsigned bits[] = {NP_HOLD_USER, NP_HOLD_JOBS, NP_HOLD_INBOX};
  box *b = luaL_checkudata(L, 1, CONN_MT);
  unsigned bit = bits[luaL_checkoption(L, 2, NULL, names)];
  int on = lua_toboolean(L, 3);
  if (b->p) WITH_THREAD(b->x, L, np_conn_hold(b->p, bit, on));
  return 0;
}

static int conn_is_open(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  lua_pushboolean(L, b->p && np_conn_is_open(b->p));
  return 1;
}

/* The peer's identity as taken at connect time: pid, uid, gid (-1 where the OS does
 * not tell) and session id (nil and a message when it could not be read). */
static int conn_peer(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  np_cred cr;
  long sid;
  if (b->p) {
    if (np_conn_peer(b->p, &cr) < 0) return push_error(L, UV_ENOTSUP, "peer credentials are not available");
    sid = np_conn_peer_session(b->p);
  } else if (b->peer_kept) {
    cr = b->cred;
    sid = b->session;
  } else {
    return push_error(L, UV_ENOTSUP, "peer credentials are not available");
  }
  lua_pushinteger(L, cr.pid);
  lua_pushinteger(L, cr.uid);
  lua_pushinteger(L, cr.gid);
  if (sid >= 0) {
    lua_pushinteger(L, sid);
    return 4;
  }
  lua_pushnil(L);
  lua_pushfstring(L, "cannot read the session of the process at the other end: %s", uv_strerror((int)sid));
  lua_pushstring(L, uv_err_name((int)sid));
  return 6;
}

static int conn_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)np_conn_id(open_conn(L)));
  return 1;
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t) {
  box *b = t->data;
  if (b && ready(b->x, b)) dispatch0(b->x, EV_TIMER, b);
}

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

static int l_timer(lua_State *L) {
  ctx *x = get_ctx(L);
  lhandle *h = lhandle_new(L, x);
  uv_timer_init(x->loop, &h->u.timer);
  h->u.timer.data = new_box(L, x, h, TIMER_MT);
  return 1;
}

static int timer_start(lua_State *L) {
  uv_timer_t *t = check_open(L, 1, TIMER_MT, "timer");
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
  uv_timer_stop(check_open(L, 1, TIMER_MT, "timer"));
  return 0;
}

static int timer_close(lua_State *L) {
  box *b = luaL_checkudata(L, 1, TIMER_MT);
  if (b->p) lhandle_close(b->x, b->p);
  return 0;
}

/* ---- signals ---- */

static void on_signal(uv_signal_t *h, int signum) {
  box *b = h->data;
  (void)signum;
  if (b && ready(b->x, b)) dispatch0(b->x, EV_SIGNAL, b);
}

static int l_signal(lua_State *L) {
  static const char *const names[] = {"SIGINT", "SIGTERM", "SIGHUP", NULL};
  static const int numbers[] = {SIGINT, SIGTERM, SIGHUP};
  ctx *x = get_ctx(L);
  int which = luaL_checkoption(L, 1, NULL, names);
  lhandle *h = lhandle_new(L, x);
  uv_signal_init(x->loop, &h->u.signal);
  h->u.signal.data = new_box(L, x, h, SIGNAL_MT);
  int rc = uv_signal_start(&h->u.signal, on_signal, numbers[which]);
  if (rc < 0) return luaL_error(L, "cannot watch %s: %s", names[which], uv_strerror(rc));
  uv_unref(&h->u.handle); /* watching a signal alone does not keep npipe.run() going */
  return 1;
}

static int signal_close(lua_State *L) {
  box *b = luaL_checkudata(L, 1, SIGNAL_MT);
  if (b->p) lhandle_close(b->x, b->p);
  return 0;
}

/* ---- state lifetime ---- */

/* On luv's loop: close what is npipe's and leave the rest to whoever runs the loop
 * (luv's own finalizer, Neovim, or nobody at exit). The close callbacks touch only
 * malloc'd memory, which they free, never the Lua state that is going away. */
static void let_go_of_host_loop(ctx *x) {
  x->closed = 1;
  np_engine_release(x->engine);
  x->engine = NULL;
  while (x->handles) lhandle_close(x, x->handles);
}

/* lua_close: finalizers run newest first, so by now every object has been let go. */
static int ctx_gc(lua_State *L) {
  ctx *x = lua_touserdata(L, 1);
  if (x->closed) return 0;
  if (x->shared) {
    let_go_of_host_loop(x);
    return 0;
  }
  x->closed = 1;
  np_engine_shutdown(x->engine);
  while (x->handles) lhandle_close(x, x->handles);
  uv_run(&x->own, UV_RUN_DEFAULT);
  np_engine_free(x->engine);
  uv_loop_close(&x->own);
  return 0;
}

static void new_metatable(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}

static int weak_table(lua_State *L) {
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void create_ctx(lua_State *L) {
  ctx *x = lua_newuserdata(L, sizeof *x);
  memset(x, 0, sizeof *x);
  for (int i = 0; i < EV_COUNT; i++) x->refs[i] = LUA_NOREF;
  x->loop = &x->own;
  if (uv_loop_init(&x->own) != 0) luaL_error(L, "npipe: cannot create an event loop");
  x->engine = np_engine_new(&x->own, &engine_events);
  if (x->engine == NULL) luaL_error(L, "npipe: out of memory");
  lua_newtable(L); /* metatable of the ctx */
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, CTX_KEY);
  x->objects = weak_table(L);
  x->bound = weak_table(L);
}

/* ---- sharing luv's loop ---- */

/* The head of luv's luv_ctx_t (luv.h; as in Debian's luv 1.44.2 build), which luv keeps as a
 * userdata in the registry under "luv_context". */
typedef struct luv_head {
  uv_loop_t *loop;
  lua_State *L; /* the thread luv calls back on */
  host_pcall pcall;
} luv_head;

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
  /* Two copies of one libuv version (a host that links it statically) keep separate
   * process-wide state, such as the signal pipe. The threadpool callback inside the
   * loop is libuv-internal code: the same address means the same copy. */
  if (head->loop->wq_async.async_cb != x->own.wq_async.async_cb)
    return "luv uses another copy of libuv than npipe (linked statically?)";
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
  if (x->shared && !x->closed) let_go_of_host_loop(x);
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
static int l_share(lua_State *L) {
  ctx *x = get_ctx(L);
  lua_Integer fd = luaL_checkinteger(L, 1), version = luaL_checkinteger(L, 2);
  if (x->shared) return push_error(L, UV_EBUSY, "npipe already runs on luv's loop");
  lua_getfield(L, LUA_REGISTRYINDEX, "luv_context");
  luv_head head = {0};
  if (lua_type(L, -1) == LUA_TUSERDATA && lua_rawlen(L, -1) >= sizeof head)
    memcpy(&head, lua_touserdata(L, -1), sizeof head);
  lua_pop(L, 1);
  const char *why = share_refusal(x, &head, fd, version);
  if (why == NULL && pin_module() != 0) why = "cannot keep npipe's module loaded";
  if (why) return push_error(L, UV_ENOTSUP, why);
  np_engine *e = np_engine_new(head.loop, &engine_events);
  if (e == NULL) return push_error(L, UV_ENOMEM, NULL);
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

static const luaL_Reg server_methods[] = {
    {"close", server_close}, {"path", server_path}, {"stats", server_stats},
    {"is_open", server_is_open}, {NULL, NULL}};

static const luaL_Reg conn_methods[] = {
    {"write", conn_write},   {"disconnect", conn_disconnect}, {"flush", conn_flush},
    {"flush_cancel", conn_flush_cancel},
    {"hold", conn_hold},     {"queued", conn_queued},         {"is_open", conn_is_open},
    {"peer", conn_peer},     {"id", conn_id},                 {NULL, NULL}};

static const luaL_Reg timer_methods[] = {
    {"start", timer_start}, {"stop", timer_stop}, {"close", timer_close}, {NULL, NULL}};

static const luaL_Reg signal_methods[] = {{"close", signal_close}, {NULL, NULL}};

static const luaL_Reg module_functions[] = {
    {"init", l_init},           {"bind", l_bind},           {"resolve", l_resolve},   {"listen", l_listen},
    {"connect", l_connect},     {"run", l_run},           {"stop", l_stop},
    {"now", l_now},             {"timer", l_timer},       {"session_id", l_session_id},
    {"pid", l_pid},             {"backend_fd", l_backend_fd},
    {"backend_timeout", l_backend_timeout}, {"open_fd", l_open_fd}, {"probe", l_probe},
    {"scandir", l_scandir},     {"signal", l_signal},     {"share", l_share},
    {NULL, NULL}};

int luaopen_npipe_core(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY);
  int have_ctx = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!have_ctx) create_ctx(L);
  new_metatable(L, SERVER_MT, server_methods, server_close);
  new_metatable(L, CONN_MT, conn_methods, conn_gc);
  new_metatable(L, TIMER_MT, timer_methods, timer_close);
  new_metatable(L, SIGNAL_MT, signal_methods, signal_close);
  luaL_newlib(L, module_functions);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "version");
  return 1;
}
