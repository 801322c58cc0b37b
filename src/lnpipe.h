/* The Lua binding's private side: the context of a Lua state, the box behind each
 * userdata, and the helpers its files share.
 *   lnpipe.c          the module and its functions, the context, the engine's events
 *   lnpipe_objects.c  the methods of servers and connections
 *   lnpipe_handles.c  timers and signals
 *   lnpipe_share.c    moving npipe onto luv's loop (core.share) */
#ifndef LNPIPE_H
#define LNPIPE_H

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "np_compat.h"
#include "np_engine.h"

#define CONN_MT "npipe.core.conn"
#define SERVER_MT "npipe.core.server"
#define TIMER_MT "npipe.core.timer"
#define SIGNAL_MT "npipe.core.signal"

/* The events npipe.core calls Lua for: the engine's, and its timers' and signals'. Their
 * names (core.init's keys) are event_names in lnpipe.c, indexed by these. */
enum { EV_ACCEPT, EV_FRAME, EV_CLOSED, EV_CONNECTED, EV_FLUSHED, EV_DRAINED, EV_EOF, EV_TIMER, EV_SIGNAL,
       EV_COUNT };

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
  int fast;         /* sched.lua's shared state S (lnpipe_fast.c), or LUA_NOREF */
  /* the fast path's idle plain coroutines: lnpipe_fast.c */
  lua_State **pool;
  int npool, pool_cap, pool_anchor;
} ctx;

/* How events find the Lua object that stands for a box. */
typedef enum {
  BOX_BOUND, /* the table core.bind binds to it (servers) */
  BOX_SELF,  /* the userdata itself, kept in ctx.objects (timers, signals, a client's
              * connection) */
  BOX_HELD   /* the userdata itself, held by its ref until its closed event and found
              * by nothing after it (a server's connection) */
} box_kind;

/* The peer's identity of a connection whose C object is gone: what conn:peer() and
 * the session methods still answer after the close. Allocated then, so that an open
 * connection does not carry a copy of what its np_conn has. */
typedef struct kept_peer {
  np_cred cred;
  long session;
  long posix_session;
} kept_peer;

/* The userdata behind every core object. A connection's userdata is the connection
 * object user code sees (lua/npipe/conn.lua's Conn methods through CONN_MT's __index):
 * one allocation per connection, its Lua fields in a table (its user value) made at the
 * first field set, so that an idle connection costs little (issue 13). */
typedef struct box {
  ctx *x;
  void *p;  /* np_conn*, np_server* or lhandle*; NULL once the C object is gone */
  /* connections: its id; its server's box (NULL for a client's end); when it last was
   * accepted or got a frame (loop ms); the peer as kept at close (NULL before) */
  uint64_t id;
  struct box *server;
  uint64_t last_active;
  kept_peer *kept;
  /* A server's connection is held from its accept until its closed event by a registry
   * reference (LUA_NOREF otherwise; the objects table then finds it). A server's table
   * is held while a connection of its is alive (conns of them): conn._server finds it
   * through the box. Servers: the data handler the fast path runs (LUA_NOREF: none). */
  int ref;
  int data_ref;
  int conns;
  unsigned char kind;   /* box_kind */
  unsigned char direct; /* the fast path may run its frames' handler (lnpipe_fast.c) */
  unsigned char jobs;   /* its Lua field _jobs is set: sched.lua has jobs of it */
  unsigned char admitted; /* a server's connection that its server admitted */
} box;

/* Events arrive on whichever Lua thread called into C; remember it for the call. */
#define WITH_THREAD(x, L, stmt) do { lua_State *saved_ = (x)->L; (x)->L = (L); stmt; (x)->L = saved_; } while (0)

/* ---- lnpipe.c ---- */

extern const np_events lnp_engine_events;
ctx *lnp_ctx(lua_State *L);
/* nil, message (msg, or the code's own text when msg is NULL or empty), code name: 3. */
int lnp_push_error(lua_State *L, int code, const char *msg);
/* A new userdata box for p, with metatable mt; nuv: its user values (0, or 1 for a
 * connection's field table). */
box *lnp_new_box(lua_State *L, ctx *x, void *p, const char *mt, box_kind kind, int nuv);
/* Pushes the Lua object that stands for b: 1, or 0 with nothing pushed when Lua has let
 * it go. */
int lnp_push_object(lua_State *L, box *b);
/* The C object of the box at idx, or a Lua error when it has been closed. */
void *lnp_check_open(lua_State *L, int idx, const char *mt, const char *what);
/* Calls the function below nargs values on L; an error there is a bug in npipe (the Lua
 * side catches handler errors itself), reported on stderr as an internal error in what
 * (with kind after it: " event", or ""), and survived. */
void lnp_pcall(lua_State *L, int nargs, const char *what, const char *kind);
/* Calls ev's Lua function with b's object alone, when there is a b and it can take
 * events (its context open, its Lua object alive). */
void lnp_dispatch0(box *b, int ev);
/* A metatable with methods as __index and gc as __gc. */
void lnp_new_metatable(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc);
/* On a loop npipe does not own: let go of everything npipe has there, at once. */
void lnp_let_go_of_host_loop(ctx *x);

/* ---- lnpipe_objects.c ---- */

void lnp_objects_open(lua_State *L); /* creates the metatables of servers and connections */
int lnp_conn_class(lua_State *L);    /* core.conn_class(Conn) */
void lnp_push_conn_functions(lua_State *L); /* core.conn */

/* ---- lnpipe_handles.c ---- */

int lnp_timer(lua_State *L);  /* core.timer() */
int lnp_signal(lua_State *L); /* core.signal(name) */
void lnp_handles_close_all(ctx *x);
void lnp_handles_open(lua_State *L); /* creates the metatables of timers and signals */

/* ---- lnpipe_fast.c ---- */

/* Runs the frame's data handler straight from C when nothing stands in the way: 1, or 0
 * with nothing done (the Lua path then delivers it). */
int lnp_fast_frame(box *b, const char *data, size_t len);
int lnp_fast_write(lua_State *L); /* core.fast_write(slow, drain): the C conn:write, or nil */
void lnp_fast_push_done(lua_State *L); /* core.DONE */
int lnp_plain_give(lua_State *L);      /* core.plain_give(co) */
void lnp_pool_free(ctx *x);

/* ---- lnpipe_share.c ---- */

int lnp_share(lua_State *L); /* core.share(fd, version) */
/* Calls the function below nargs values on x->L as luv calls its callbacks. */
void lnp_luv_call(ctx *x, int nargs);

#endif
