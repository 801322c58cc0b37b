/* npipe.core's servers and connections as Lua sees them. A server's userdata has its
 * methods, and user code sees it through the table lua/npipe binds to it (core.bind).
 * A connection's userdata is the object user code sees: CONN_MT finds the methods of
 * lua/npipe/conn.lua's Conn (core.conn_class) and keeps its fields in a table made at
 * the first field set; the C functions Conn's methods are built on are core.conn.*.
 * Their events are in lnpipe.c. */
#include <stdlib.h>
#include <string.h>

#include "lnpipe.h"

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
  lua_pushstring(L, np_server_path(lnp_check_open(L, 1, SERVER_MT, "server")));
  return 1;
}

static void set_number(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static int server_stats(lua_State *L) {
  np_stats st = np_server_stats(lnp_check_open(L, 1, SERVER_MT, "server"));
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

/* set_data(fn or nil): the data handler the fast path runs for this server's
 * connections (lnpipe_fast.c). */
static int server_set_data(lua_State *L) {
  box *b = luaL_checkudata(L, 1, SERVER_MT);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, b->data_ref);
  b->data_ref = LUA_NOREF;
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    b->data_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* conns(): a list of the server's admitted connections whose closed event has not come,
 * in no order. The engine's list of connections is the only one: a server keeps none
 * of its own, which would cost every connection a place in it (issue 13). */
static int server_conns(lua_State *L) {
  box *sb = luaL_checkudata(L, 1, SERVER_MT);
  np_engine *e = sb->x->engine;
  int n = 0;
  lua_createtable(L, sb->conns, 0);
  for (np_conn *c = e ? np_engine_next_conn(e, NULL) : NULL; c; c = np_engine_next_conn(e, c)) {
    box *b = np_conn_data(c);
    if (b == NULL || b->server != sb || !b->direct || !lnp_push_object(L, b)) continue;
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

static int server_is_open(lua_State *L) {
  box *b = luaL_checkudata(L, 1, SERVER_MT);
  lua_pushboolean(L, b->p != NULL);
  return 1;
}

/* ---- connection ---- */


/* true when the write queue is now over high_water (wait for drained), else false. */
static int conn_write(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (b->p == NULL || !np_conn_is_open(b->p)) return lnp_push_error(L, UV_EPIPE, "pipe is closed");
  int rc;
  WITH_THREAD(b->x, L, rc = np_conn_write(b->p, data, len));
  if (rc < 0) return lnp_push_error(L, rc, NULL);
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
  free(b->kept);
  b->kept = NULL;
  box *sb = b->server;
  b->server = NULL;
  if (sb && --sb->conns == 0) { /* its server's table may go now */
    luaL_unref(L, LUA_REGISTRYINDEX, sb->ref);
    sb->ref = LUA_NOREF;
  }
  if (b->p) {
    np_conn_set_data(b->p, NULL); /* no events for an object Lua has let go */
    np_conn_end(b->p, "GC", "connection object collected");
    b->p = NULL;
  }
  return 0;
}

static int conn_flush(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  if (b->p == NULL) return lnp_push_error(L, UV_EPIPE, "pipe is closed");
  int rc;
  WITH_THREAD(b->x, L, rc = np_conn_flush(b->p));
  if (rc == UV_ENOTCONN) return lnp_push_error(L, UV_EPIPE, "pipe is closed");
  if (rc < 0) return lnp_push_error(L, rc, "the peer closed the pipe before reading everything");
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
    if (np_conn_peer(b->p, &cr) < 0) return lnp_push_error(L, UV_ENOTSUP, "peer credentials are not available");
    sid = np_conn_peer_session(b->p);
  } else if (b->kept) {
    cr = b->kept->cred;
    sid = b->kept->session;
  } else {
    return lnp_push_error(L, UV_ENOTSUP, "peer credentials are not available");
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

/* direct(conn): the connection is admitted: the fast path may run its frames' data
 * handler, and its server lists it (server_conns) until its closed event. */
static int conn_direct(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  b->direct = b->p != NULL && b->ref != LUA_NOREF;
  b->admitted = 1;
  return 0;
}

/* admitted(conn): whether its server admitted it (even after its close). */
static int conn_admitted(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  lua_pushboolean(L, b->admitted);
  return 1;
}

/* When the connection was accepted or last got a frame, in seconds of the loop's clock
 * (core.loop_now()). */
static int conn_last_active(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  lua_pushnumber(L, (lua_Number)b->last_active / 1000);
  return 1;
}

/* The peer's user SID (Windows), taken at connect time: a string, or nil where the OS
 * has none (Unix) or it could not be read. */
static int conn_peer_sid(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  np_cred cr;
  if (b->p && np_conn_peer(b->p, &cr) == 0 && cr.sid[0]) lua_pushstring(L, cr.sid);
  else if (!b->p && b->kept && b->kept->cred.sid[0]) lua_pushstring(L, b->kept->cred.sid);
  else lua_pushnil(L);
  return 1;
}

/* The peer's POSIX session as taken at connect time (kept like conn_peer's values): the
 * integer, or nil, message, code. */
static int conn_posix_session(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  long sid = b->p ? np_conn_peer_posix_session(b->p) : b->kept ? b->kept->posix_session : UV_ENOTSUP;
  if (sid >= 0) {
    lua_pushinteger(L, sid);
    return 1;
  }
  if (sid == UV_ENOTSUP) return lnp_push_error(L, UV_ENOTSUP, "the peer's POSIX session is not available");
  return lnp_push_error(L, (int)sid, lua_pushfstring(L, "cannot read the POSIX session of the process at the other end: %s",
                                                     uv_strerror((int)sid)));
}

static int conn_id(lua_State *L) {
  box *b = luaL_checkudata(L, 1, CONN_MT);
  lua_pushinteger(L, (lua_Integer)b->id);
  return 1;
}

/* ---- a connection as an object ---- */

/* The fields table of the connection at 1, made now if it has none; pushed. */
static void push_fields(lua_State *L) {
  if (np_getuv(L, 1) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, -1);
  np_setuv(L, 1);
}

/* conn[k] for a k that is neither a field nor a method. */
static int conn_index_special(lua_State *L) {
  box *b = lua_touserdata(L, 1);
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
  if (strcmp(k, "state") == 0) { /* conn.state: a table of the user's, made when first asked for */
    push_fields(L);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "state");
    return 1;
  }
  if (strcmp(k, "_server") == 0 && b->server && lnp_push_object(L, b->server)) return 1;
  lua_pushnil(L);
  return 1;
}

/* __index: the methods of Conn (upvalue 1), then the connection's own fields. Methods
 * first: a method call, what every handler makes, then costs one lookup (conn_newindex
 * refuses a field named as a method, so nothing is hidden). */
static int conn_index(lua_State *L) {
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  if (np_getuv(L, 1) == LUA_TTABLE) {
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return conn_index_special(L);
}

/* __newindex: into the fields table; a method's name is refused (upvalue 1: Conn), as a
 * field of that name could never be read. The field _jobs (sched.lua's queue of the
 * connection's jobs) is mirrored in the box, where the fast path reads it. */
static int conn_newindex(lua_State *L) {
  box *b = lua_touserdata(L, 1);
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  if (!lua_isnil(L, -1))
    return luaL_error(L, "cannot set the field '%s' of a connection: it is a method", lua_tostring(L, 2));
  lua_pop(L, 1);
  push_fields(L);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "_jobs") == 0) b->jobs = !lua_isnil(L, 3);
  return 0;
}

/* core.conn_class(Conn): the methods of connections, and its __tostring and __close. */
int lnp_conn_class(lua_State *L) {
  static const char *const events[] = {"__tostring", "__close", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_getmetatable(L, CONN_MT);
  for (int i = 0; i < 2; i++) {
    lua_getfield(L, -1, i ? "__newindex" : "__index");
    lua_pushvalue(L, 1);
    lua_setupvalue(L, -2, 1);
    lua_pop(L, 1);
  }
  for (int i = 0; events[i]; i++) {
    lua_getfield(L, 1, events[i]);
    lua_setfield(L, -2, events[i]);
  }
  return 0;
}

/* Pushes core.conn: the C functions of connections, each taking the connection first. */
void lnp_push_conn_functions(lua_State *L) {
  static const luaL_Reg conn_functions[] = {
      {"write", conn_write},   {"disconnect", conn_disconnect}, {"flush", conn_flush},
      {"flush_cancel", conn_flush_cancel},
      {"hold", conn_hold},     {"queued", conn_queued},         {"is_open", conn_is_open},
      {"peer", conn_peer},     {"peer_sid", conn_peer_sid},     {"id", conn_id},
      {"posix_session", conn_posix_session},                    {"direct", conn_direct}, {"admitted", conn_admitted},
      {"last_active", conn_last_active}, {NULL, NULL}};
  luaL_newlib(L, conn_functions);
}

void lnp_objects_open(lua_State *L) {
  static const luaL_Reg server_methods[] = {
      {"close", server_close}, {"path", server_path}, {"stats", server_stats},
      {"is_open", server_is_open}, {"set_data", server_set_data}, {"conns", server_conns}, {NULL, NULL}};
  lnp_new_metatable(L, SERVER_MT, server_methods, server_close);
  if (luaL_newmetatable(L, CONN_MT)) {
    lua_newtable(L); /* Conn's place until core.conn_class */
    lua_pushcclosure(L, conn_index, 1);
    lua_setfield(L, -2, "__index");
    lua_newtable(L);
    lua_pushcclosure(L, conn_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}
