/* npipe engine: servers and connections on a libuv loop, with framing and a write
 * queue. No Lua here: a host (the Lua binding, or a C program) receives events
 * through np_events and owns nothing but the opaque pointers it is handed.
 *
 * Events run from the loop, and also synchronously, inside some calls of the host:
 *   np_conn_write       closed, when the write fails (the connection is gone then); when it
 *                       found the peer gone (EPIPE, ECONNRESET), first a frame for each one
 *                       the peer sent before it went that was not read yet
 *   np_conn_end         flushed and closed, when nothing is left to deliver
 *   np_conn_disconnect  closed
 *   np_conn_hold (and np_conn_resume), releasing the last hold: frame for each kept
 *                       frame, then flushed and closed if the kept input breaks the framing
 *   np_conn_flush       closed, when the peer has gone without reading everything
 *   np_engine_release   released, for every object
 * Each declaration below says so again. Every other call emits nothing inside it:
 * np_server_listen, np_server_close, np_conn_connect, np_conn_open_fd,
 * np_conn_flush_cancel, np_engine_shutdown (its released events come from the loop).
 * A host that calls these from an event handler, or with its own state half updated,
 * must expect to be called back before they return. */
#ifndef NP_ENGINE_H
#define NP_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "np_framing.h"
#include "np_platform.h"

typedef struct np_engine np_engine;
typedef struct np_server np_server;
typedef struct np_conn np_conn;

typedef struct np_events {
  /* A client connected to a server; reading has started. */
  void (*accept)(np_server *s, np_conn *c);
  /* One chunk, line or message. The host may end or hold the connection from here:
   * the engine delivers no further frame then. */
  void (*frame)(np_conn *c, const char *data, size_t len);
  /* The connection ended (exactly once per connection that was established).
   * code is a short stable name ("EOF", "DISCONNECTED", "EMSGSIZE", libuv error names). */
  void (*closed)(np_conn *c, const char *code, const char *reason);
  /* A client connect finished; status < 0 means it failed and the conn is gone. */
  void (*connected)(np_conn *c, int status);
  /* Every byte written so far has been read by the peer. */
  void (*flushed)(np_conn *c);
  /* The write queue dropped below the low-water mark after passing the high one. */
  void (*drained)(np_conn *c);
  /* The engine is about to free an object: forget every pointer to it. */
  void (*released)(void *host_data);
  /* The peer ended its input (a half-close such as shutdown(SHUT_WR), or a close):
   * every frame it sent has been delivered, reading has stopped, and the connection
   * stays open for writing until the host ends it (np_conn_end), at the latest after
   * the linger time, when the engine ends it with code "EOF". NULL: the engine ends it
   * itself at once, gracefully. */
  void (*eof)(np_conn *c);
} np_events;

typedef struct np_conn_opts {
  np_framing_mode framing;
  size_t max_message;
  /* What the write queue may cost before np_conn_write reports backpressure and, on a
   * server's end, the engine stops reading and delivering frames; the cost counts every
   * byte held, frame bookkeeping included, so that many tiny writes are bounded too. */
  size_t high_water;
  /* How long a graceful end (np_conn_end, or the peer's EOF) may take to deliver
   * what is queued, in ms; what is left then is dropped and reported. */
  uint64_t linger_ms;
} np_conn_opts;

typedef struct np_server_opts {
  np_conn_opts conn;
  int mode;    /* permission bits of the socket file */
  int backlog;
  int max_instances; /* 0: unlimited (PIPE_UNLIMITED_INSTANCES) */
  /* Windows: the pipe's security descriptor in SDDL; NULL: this user and SYSTEM only.
   * Read during np_server_listen only. Not used on Unix (mode is). */
  const char *sddl;
} np_server_opts;

typedef struct np_stats {
  uint64_t accepted, active, rejected, bytes_in, bytes_out, messages_in, messages_out;
} np_stats;

np_engine *np_engine_new(uv_loop_t *loop, const np_events *events);
/* Closes every server and connection (no events but released, and those from the loop
 * as each handle closes); run the loop afterwards until it has nothing left, then call
 * np_engine_free. */
void np_engine_shutdown(np_engine *e);
void np_engine_free(np_engine *e);
/* For a loop that belongs to someone else: calls released for every server and
 * connection now, inside this call, closes them without any further event, and frees the engine when
 * libuv has called back for the last of its handles, whoever runs the loop then. */
void np_engine_release(np_engine *e);

int np_server_listen(np_engine *e, const char *path, const np_server_opts *opts, np_server **out,
                     char *err, size_t errlen);
/* Stops accepting and removes the socket file. Connections stay open. No event inside
 * the call; released comes from the loop, once the listener has closed. */
void np_server_close(np_server *s);
const char *np_server_path(const np_server *s);
np_stats np_server_stats(const np_server *s);
void np_server_set_data(np_server *s, void *data);

/* Starts connecting; the connected event comes from the loop, never inside this call. */
int np_conn_connect(np_engine *e, const char *path, const np_conn_opts *opts, np_conn **out);
/* Wraps an open file descriptor (a pipe, socket or terminal such as stdin) as a
 * connection, so that a host reads it with the same framing and events. Reading starts
 * at once; no event inside this call. */
int np_conn_open_fd(np_engine *e, int fd, const np_conn_opts *opts, np_conn **out);
/* Queues len bytes as one frame: 0, 1 when the queue's cost is now at or above
 * high_water (the host should wait for the drained event before writing more), or a
 * negative uv error code: UV_ENOTCONN once the connection is ending or closed, UV_E2BIG
 * for a frame over 4 GiB (no event for these); any other error (I/O, out of memory)
 * ends the connection, and its closed event runs inside this call, before it returns.
 * A peer that has gone may have sent frames not read yet: their frame events come first,
 * inside this call too, so that a close loses nothing that had arrived. */
int np_conn_write(np_conn *c, const char *data, size_t len);
/* DisconnectNamedPipe: immediate; queued writes and unread input are dropped (on
 * Windows also what the client has not read yet; a Unix peer still reads it).
 * The closed event runs inside this call, with the given code and reason (none for a
 * client still connecting: it gets neither connected nor closed, only released). */
void np_conn_disconnect(np_conn *c, const char *code, const char *reason);
/* A graceful end (CloseHandle without DisconnectNamedPipe): reading stops at once,
 * writes are refused, what is queued is delivered while the peer reads, for up to
 * the linger time, then the connection closes. The closed event comes then; it runs
 * inside this call when nothing is queued or linger_ms is 0, after a flushed event
 * when the host waits for one and the peer has read everything. What could not be
 * delivered is added to its reason and told by np_conn_undelivered. A client still
 * connecting closes at once without an event, as with np_conn_disconnect. For ends the
 * host's user did not ask for, such as a handler error or an idle timeout, and the end
 * of a peer's input. */
void np_conn_end(np_conn *c, const char *code, const char *reason);
/* In the closed event: what was queued and never reached the peer. */
void np_conn_undelivered(const np_conn *c, uint64_t *bytes, uint64_t *messages);
/* 1: the peer has read everything (no flushed event then); 0: a flushed event will
 * follow, from the loop; <0: error. When the peer closed without reading everything,
 * the connection fails: its closed event runs inside this call, before it returns the
 * error. UV_ENOTCONN: ending or closed already (no event). UV_ENOMEM: no memory for the
 * flush's state; the connection stays as it was (no event). */
int np_conn_flush(np_conn *c);
/* The host no longer waits for the flushed event (its wait timed out): stop polling,
 * and on Windows interrupt the FlushFileBuffers still blocked on a pool thread. No event. */
void np_conn_flush_cancel(np_conn *c);
/* Reasons a host holds a connection's input: while any is set the engine reads
 * nothing more from the peer and delivers no further frame of what it has read (the
 * rest of a read is kept, at most one read buffer), so a host's queues are bounded
 * by the frame that set the hold. The engine adds its own: a write queue over
 * high_water, the end of input, a graceful end. */
enum { NP_HOLD_USER = 1, NP_HOLD_JOBS = 2, NP_HOLD_INBOX = 4 }; /* kept in a byte: 8 at most */
/* Setting a hold emits nothing. Releasing the last one delivers what was kept inside
 * this call: a frame event for each kept frame (whose handlers may hold again), and,
 * when the kept input breaks the framing, the end of the connection (flushed and
 * closed, as np_conn_end). The peer's EOF comes later, from the loop. */
void np_conn_hold(np_conn *c, unsigned reason, int on);
void np_conn_pause(np_conn *c);  /* np_conn_hold(c, NP_HOLD_USER, 1) */
void np_conn_resume(np_conn *c); /* np_conn_hold(c, NP_HOLD_USER, 0): may emit events */
/* Open for writing: connected, and not ending or closed. */
int np_conn_is_open(const np_conn *c);
int np_conn_peer(np_conn *c, np_cred *out);
/* GetNamedPipeClientSessionId / GetNamedPipeServerSessionId: the peer's login session
 * (np_platform_peer_sessions), taken at connect time. */
long np_conn_peer_session(np_conn *c);
/* The peer's POSIX session (getsid), taken at connect time; UV_ENOTSUP on Windows. */
long np_conn_peer_posix_session(np_conn *c);
/* What the write queue costs now (bytes held, bookkeeping included). */
size_t np_conn_queued(const np_conn *c);
uint64_t np_conn_id(const np_conn *c);
void np_conn_set_data(np_conn *c, void *data);
void *np_conn_data(const np_conn *c);
void *np_server_data(const np_server *s);
/* The open and ending connections of e (servers' and clients'), one after another: the
 * first for NULL, NULL after the last. Closing one ends its place in the walk. */
np_conn *np_engine_next_conn(np_engine *e, np_conn *c);

#endif
