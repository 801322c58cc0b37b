/* npipe.core: the thin Lua binding of the engine. It turns engine events into
 * calls of Lua functions that lua/npipe/init.lua registers with core.init, and
 * exposes servers, connections, timers and signals as userdata (their methods are in
 * lnpipe_objects.c and lnpipe_handles.c). This file holds the module's functions, the
 * context of a Lua state and the events. Scheduling, coroutines and the public API
 * live on the Lua side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lnpipe.h"

#define CTX_KEY "npipe.ctx"
#define PATH_MAX_LEN 4096
#define ERR_LEN 512

/* The keys of core.init's table, and the names in npipe's own error reports. */
static const char *const event_names[EV_COUNT] = {
    [EV_ACCEPT] = "accept",   [EV_FRAME] = "frame",     [EV_CLOSED] = "closed",
    [EV_CONNECTED] = "connected", [EV_FLUSHED] = "flushed", [EV_DRAINED] = "drained",
    [EV_EOF] = "eof",         [EV_TIMER] = "timer",     [EV_SIGNAL] = "signal"};

ctx *lnp_ctx(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY);
  ctx *x = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return x;
}

int lnp_push_error(lua_State *L, int code, const char *msg) {
  lua_pushnil(L);
  if (msg && msg[0]) lua_pushstring(L, msg);
  else lua_pushfstring(L, "%s (%s)", uv_strerror(code), uv_err_name(code));
  lua_pushstring(L, uv_err_name(code));
  return 3;
}

/* ---- objects ---- */

box *lnp_new_box(lua_State *L, ctx *x, void *p, const char *mt, box_kind kind, int nuv) {
  box *b = nuv ? np_newuserdata1(L, sizeof *b) : lua_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  b->x = x;
  b->p = p;
  b->kind = (unsigned char)kind;
  b->ref = b->data_ref = LUA_NOREF;
  luaL_setmetatable(L, mt);
  if (kind == BOX_SELF) { /* BOX_BOUND: through core.bind; BOX_HELD: by its ref */
    lua_rawgeti(L, LUA_REGISTRYINDEX, x->objects);
    lua_pushvalue(L, -2);
    lua_rawsetp(L, -2, b);
    lua_pop(L, 1);
  }
  return b;
}

/* Pushes the Lua object that stands for b (see box_kind): for servers the table bound
 * to it by core.bind (the object user code sees; an event for one that Lua has let go
 * is dropped), for connections, timers and signals the userdata itself. */
int lnp_push_object(lua_State *L, box *b) {
  if (b->ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->ref);
    return 1;
  }
  if (b->kind == BOX_HELD) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->kind == BOX_SELF ? b->x->objects : b->x->bound);
  lua_rawgetp(L, -1, b);
  lua_remove(L, -2);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

void *lnp_check_open(lua_State *L, int idx, const char *mt, const char *what) {
  box *b = luaL_checkudata(L, idx, mt);
  if (b->p == NULL) luaL_error(L, "attempt to use a closed %s", what);
  return b->p;
}

/* ---- events: engine -> Lua ---- */

/* An event is the registered Lua function for ev called with the object's Lua side
 * and the event's values: event_begin pushes the function and the object and returns
 * the thread to push the values on (NULL, nothing pushed: no box, a context that takes
 * no events, closed or with no running thread, or an object Lua has let go), the
 * caller pushes nargs values, event_call calls. The Lua side catches handler errors
 * itself; an error here is a bug in npipe, reported and survived. */
static lua_State *event_begin(box *b, int ev) {
  if (b == NULL || b->x->L == NULL || b->x->closed) return NULL;
  lua_State *L = b->x->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->x->refs[ev]);
  if (lnp_push_object(L, b)) return L;
  lua_pop(L, 1);
  return NULL;
}

void lnp_pcall(lua_State *L, int nargs, const char *what, const char *kind) {
  if (lua_pcall(L, nargs, 0, 0) != 0) {
    fprintf(stderr, "npipe: internal error in %s%s: %s\n", what, kind, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

static void event_call(box *b, int ev, int nargs) {
  ctx *x = b->x;
  if (x->pcall) {
    lnp_luv_call(x, nargs + 1);
    return;
  }
  lnp_pcall(x->L, nargs + 1, event_names[ev], " event");
}

void lnp_dispatch0(box *b, int ev) {
  if (event_begin(b, ev)) event_call(b, ev, 0);
}

static void ev_accept(np_server *s, np_conn *c) {
  box *sb = np_server_data(s);
  lua_State *L = event_begin(sb, EV_ACCEPT);
  if (L == NULL) {
    np_conn_end(c, "SHUTDOWN", "server object is gone");
    return;
  }
  if (sb->conns++ == 0) { /* the server's table (pushed by event_begin) */
    lua_pushvalue(L, -1);
    sb->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  /* Held by a registry reference until its closed event: that costs less than an entry
   * of the objects table, and the fast path pushes it with one lua_rawgeti. */
  box *b = lnp_new_box(L, sb->x, c, CONN_MT, BOX_HELD, 1);
  lua_pushvalue(L, -1);
  b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  b->id = np_conn_id(c);
  b->server = sb;
  b->last_active = uv_now(sb->x->loop);
  np_conn_set_data(c, b);
  event_call(sb, EV_ACCEPT, 1);
}

static void ev_frame(np_conn *c, const char *data, size_t len) {
  box *b = np_conn_data(c);
  if (b == NULL) return;
  b->last_active = uv_now(b->x->loop);
  if (lnp_fast_frame(b, data, len)) return;
  lua_State *L = event_begin(b, EV_FRAME);
  if (L == NULL) return;
  lua_pushlstring(L, data, len);
  event_call(b, EV_FRAME, 1);
}

/* After its closed event, a server's connection goes when nothing else holds it. */
static void let_go(box *b, lua_State *L) {
  b->direct = 0;
  if (b->ref == LUA_NOREF) return;
  luaL_unref(L, LUA_REGISTRYINDEX, b->ref);
  b->ref = LUA_NOREF;
}

/* Without memory the peer is unknown after the close, as for a peer the OS does not name. */
static void keep_peer(box *b, np_conn *c) {
  np_cred cr;
  if (b->kept || np_conn_peer(c, &cr) < 0 || (b->kept = malloc(sizeof *b->kept)) == NULL) return;
  b->kept->cred = cr;
  b->kept->session = np_conn_peer_session(c);
  b->kept->posix_session = np_conn_peer_posix_session(c);
}

static void ev_closed(np_conn *c, const char *code, const char *reason) {
  box *b = np_conn_data(c);
  if (!b) return;
  b->direct = 0;
  keep_peer(b, c);
  lua_State *L = event_begin(b, EV_CLOSED);
  if (L == NULL) return;
  uint64_t bytes, msgs;
  np_conn_undelivered(c, &bytes, &msgs);
  lua_pushstring(L, reason);
  lua_pushstring(L, code);
  lua_pushinteger(L, (lua_Integer)bytes);
  lua_pushinteger(L, (lua_Integer)msgs);
  event_call(b, EV_CLOSED, 4);
  let_go(b, L);
}

static void ev_connected(np_conn *c, int status) {
  box *b = np_conn_data(c);
  lua_State *L = event_begin(b, EV_CONNECTED);
  if (L == NULL) return;
  if (status == 0) {
    event_call(b, EV_CONNECTED, 0);
    return;
  }
  lua_pushfstring(L, "%s (%s)", uv_strerror(status), uv_err_name(status));
  lua_pushstring(L, uv_err_name(status));
  event_call(b, EV_CONNECTED, 2);
}

static void ev_flushed(np_conn *c) { lnp_dispatch0(np_conn_data(c), EV_FLUSHED); }

static void ev_drained(np_conn *c) { lnp_dispatch0(np_conn_data(c), EV_DRAINED); }

/* Nobody left to finish the connection's work: end it now rather than at the linger time. */
static void ev_eof(np_conn *c) {
  box *b = np_conn_data(c);
  if (event_begin(b, EV_EOF)) event_call(b, EV_EOF, 0);
  else np_conn_end(c, "EOF", "the peer closed the pipe");
}

static void ev_released(void *data) { ((box *)data)->p = NULL; }

const np_events lnp_engine_events = {ev_accept,  ev_frame,   ev_closed,   ev_connected,
                                     ev_flushed, ev_drained, ev_released, ev_eof};

/* ---- module functions ---- */

/* core.init(events[, shared]): the Lua functions of the events, and sched.lua's shared
 * state for the fast path (lnpipe_fast.c). */
static int l_init(lua_State *L) {
  ctx *x = lnp_ctx(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  for (int i = 0; i < EV_COUNT; i++) {
    lua_getfield(L, 1, event_names[i]);
    luaL_argcheck(L, lua_isfunction(L, -1), 1, event_names[i]);
    luaL_unref(L, LUA_REGISTRYINDEX, x->refs[i]);
    x->refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, x->fast);
  x->fast = LUA_NOREF;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushvalue(L, 2);
    x->fast = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

static int l_resolve(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  /* C would see the name only up to the NUL, and serve or reach another pipe */
  if (strlen(name) != len)
    return lnp_push_error(L, UV_EINVAL, lua_pushfstring(L, "invalid pipe name: it contains a NUL byte (at byte %d)",
                                                    (int)strlen(name) + 1));
  static const char *const policies[] = {"trust", "create", "check", NULL};
  int dir = luaL_checkoption(L, 2, "trust", policies); /* the order of NP_DIR_* */
  char path[PATH_MAX_LEN], err[ERR_LEN];
  int rc = np_platform_resolve(name, dir, path, sizeof path, err, sizeof err);
  if (rc < 0) return lnp_push_error(L, rc, err);
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
  ctx *x = lnp_ctx(L);
  const char *path = luaL_checkstring(L, 1);
  np_server_opts o;
  check_conn_opts(L, 2, &o.conn);
  o.mode = (int)luaL_checkinteger(L, 5);
  o.backlog = (int)luaL_checkinteger(L, 6);
  o.max_instances = (int)luaL_optinteger(L, 7, 0);
  luaL_argcheck(L, o.max_instances >= 0, 7, "max_instances must not be negative");
  check_linger(L, 8, &o.conn);
  o.sddl = luaL_optstring(L, 9, NULL);
  np_server *s;
  char err[ERR_LEN];
  int rc = np_server_listen(x->engine, path, &o, &s, err, sizeof err);
  if (rc < 0) return lnp_push_error(L, rc, err);
  np_server_set_data(s, lnp_new_box(L, x, s, SERVER_MT, BOX_BOUND, 0));
  return 1;
}

/* core.connect's and core.open_fd's options: framing, max_message, high_water, linger. */
static void check_client_opts(lua_State *L, np_conn_opts *o) {
  check_conn_opts(L, 2, o);
  check_linger(L, 5, o);
}

/* What core.connect and core.open_fd return: the new connection's userdata, or nil,
 * message, code. */
static int conn_result(lua_State *L, ctx *x, int rc, np_conn *c) {
  if (rc < 0) return lnp_push_error(L, rc, NULL);
  box *b = lnp_new_box(L, x, c, CONN_MT, BOX_SELF, 1);
  b->id = np_conn_id(c);
  np_conn_set_data(c, b);
  return 1;
}

/* core.connect(path, framing, max_message, high_water, linger) */
static int l_connect(lua_State *L) {
  ctx *x = lnp_ctx(L);
  const char *path = luaL_checkstring(L, 1);
  np_conn_opts o;
  check_client_opts(L, &o);
  np_conn *c = NULL;
  int rc = np_conn_connect(x->engine, path, &o, &c); /* before conn_result reads c */
  return conn_result(L, x, rc, c);
}

/* Binds a Lua table to a server: events then carry the table. The table holds the
 * userdata; both go when user code lets go of the table. */
static int l_bind(lua_State *L) {
  ctx *x = lnp_ctx(L);
  box *b = luaL_checkudata(L, 1, SERVER_MT);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_rawgeti(L, LUA_REGISTRYINDEX, x->bound);
  lua_pushvalue(L, 2);
  lua_rawsetp(L, -2, b);
  return 0;
}

/* core.open_fd(fd, framing, max_message, high_water, linger) */
static int l_open_fd(lua_State *L) {
  ctx *x = lnp_ctx(L);
  int fd = (int)luaL_checkinteger(L, 1);
  np_conn_opts o;
  check_client_opts(L, &o);
  np_conn *c = NULL;
  int rc = np_conn_open_fd(x->engine, fd, &o, &c); /* before conn_result reads c */
  return conn_result(L, x, rc, c);
}

/* "live" (with the server's pid, uid, gid where known), "stale", or nil, message, code. */
static int l_probe(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  np_cred cr;
  char err[ERR_LEN];
  int rc = np_platform_probe(path, &cr, err, sizeof err);
  if (rc < 0) return lnp_push_error(L, rc, err);
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
  ctx *x = lnp_ctx(L);
  int mode = luaL_checkoption(L, 1, "default", modes);
  int alive;
  if (x->shared) return luaL_error(L, "npipe: the loop is luv's; only its owner may run it");
  WITH_THREAD(x, L, alive = uv_run(x->loop, uv_modes[mode]));
  lua_pushboolean(L, alive);
  return 1;
}

static int l_stop(lua_State *L) {
  ctx *x = lnp_ctx(L);
  if (x->shared) return luaL_error(L, "npipe: the loop is luv's; only its owner may stop it");
  uv_stop(x->loop);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* The loop's clock in seconds: what conn:last_active() is measured in. */
static int l_loop_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_now(lnp_ctx(L)->loop) / 1000);
  return 1;
}

static int l_session_id(lua_State *L) {
  long sid = np_platform_session_id();
  if (sid < 0) return lnp_push_error(L, (int)sid, lua_pushfstring(L, "cannot read this process's login session: %s",
                                                                   uv_strerror((int)sid)));
  lua_pushinteger(L, sid);
  return 1;
}

static int l_posix_session_id(lua_State *L) {
  long sid = np_platform_posix_session_id();
  if (sid < 0) return lnp_push_error(L, (int)sid, "this process has no POSIX session");
  lua_pushinteger(L, sid);
  return 1;
}

static int l_pid(lua_State *L) {
  lua_pushinteger(L, np_platform_pid());
  return 1;
}

static int l_backend_fd(lua_State *L) {
  lua_pushinteger(L, uv_backend_fd(lnp_ctx(L)->loop));
  return 1;
}

static int l_backend_timeout(lua_State *L) {
  lua_pushinteger(L, uv_backend_timeout(lnp_ctx(L)->loop));
  return 1;
}

/* ---- state lifetime ---- */

/* On luv's loop: close what is npipe's and leave the rest to whoever runs the loop
 * (luv's own finalizer, Neovim, or nobody at exit). The close callbacks touch only
 * malloc'd memory, which they free, never the Lua state that is going away. */
void lnp_let_go_of_host_loop(ctx *x) {
  x->closed = 1;
  np_engine_release(x->engine);
  x->engine = NULL;
  lnp_handles_close_all(x);
}

/* lua_close: finalizers run newest first, so by now every object has been let go. */
static int ctx_gc(lua_State *L) {
  ctx *x = lua_touserdata(L, 1);
  if (x->closed) return 0;
  lnp_pool_free(x);
  if (x->shared) {
    lnp_let_go_of_host_loop(x);
    return 0;
  }
  x->closed = 1;
  np_engine_shutdown(x->engine);
  lnp_handles_close_all(x);
  uv_run(&x->own, UV_RUN_DEFAULT);
  np_engine_free(x->engine);
  uv_loop_close(&x->own);
  return 0;
}

void lnp_new_metatable(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
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
  x->fast = LUA_NOREF;
  x->loop = &x->own;
  if (uv_loop_init(&x->own) != 0) luaL_error(L, "npipe: cannot create an event loop");
  x->engine = np_engine_new(&x->own, &lnp_engine_events);
  if (x->engine == NULL) luaL_error(L, "npipe: out of memory");
  lua_newtable(L); /* metatable of the ctx */
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, CTX_KEY);
  x->objects = weak_table(L);
  x->bound = weak_table(L);
  lua_newtable(L);
  x->pool_anchor = luaL_ref(L, LUA_REGISTRYINDEX);
}

static const luaL_Reg module_functions[] = {
    {"init", l_init},           {"bind", l_bind},           {"resolve", l_resolve},   {"listen", l_listen},
    {"connect", l_connect},     {"run", l_run},           {"stop", l_stop},
    {"now", l_now},             {"timer", lnp_timer},       {"session_id", l_session_id},
    {"posix_session_id", l_posix_session_id},
    {"pid", l_pid},             {"backend_fd", l_backend_fd},
    {"backend_timeout", l_backend_timeout}, {"open_fd", l_open_fd}, {"probe", l_probe},
    {"scandir", l_scandir},     {"signal", lnp_signal},     {"share", lnp_share},
    {"fast_write", lnp_fast_write}, {"loop_now", l_loop_now},
    {"plain_give", lnp_plain_give}, {"conn_class", lnp_conn_class}, {NULL, NULL}};

int luaopen_npipe_core(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY);
  int have_ctx = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!have_ctx) create_ctx(L);
  lnp_objects_open(L);
  lnp_handles_open(L);
  luaL_newlib(L, module_functions);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "version");
  lnp_fast_push_done(L);
  lua_setfield(L, -2, "DONE");
  lnp_push_conn_functions(L);
  lua_setfield(L, -2, "conn");
  return 1;
}
