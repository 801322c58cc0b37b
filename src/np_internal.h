/* The engine's private side: the objects behind np_engine.h's opaque pointers and the
 * calls its files make into each other. Not for hosts; only src/np_*.c include it.
 *   np_engine.c      the engine's lifetime and the timers all connections share
 *                    (the linger sweep, the flush poll)
 *   np_conn.c        a connection's lifetime: open, end, close, and its input
 *   np_conn_write.c  a connection's output: the write queue, writing, flush
 *   np_server.c      servers: listen, accept, max_instances, running out of descriptors
 * Internal calls are named np__*, as libuv names its own uv__*. */
#ifndef NP_INTERNAL_H
#define NP_INTERNAL_H

#include "np_engine.h"

/* One read buffer per engine: libuv reads into it and the framer consumes it before
 * the read callback returns, so connections do not each hold 64 KiB while idle. */
#define READ_BUFFER_SIZE (64 * 1024)

/* C_ENDING: a graceful end delivers what is queued; no reading, no new writes. */
enum { C_CONNECTING, C_OPEN, C_ENDING, C_CLOSED };

struct np_engine {
  uv_loop_t *loop;
  np_events ev;
  np_server *servers;
  np_conn *conns;      /* open and ending connections */
  np_conn *connecting; /* clients whose connect has not finished */
  np_conn *flushing;
  uv_timer_t flush_timer;
  int flush_timer_on;
  uv_timer_t linger_timer; /* runs while some connection has a deadline */
  unsigned lingering;
  uv_timer_t accept_timer; /* retries servers that ran out of descriptors */
  int accept_timer_made;
  uv_timer_t connect_timer; /* reports client ends the platform opened at once (Windows) */
  int connect_timer_made;
  uint64_t next_id;
  unsigned handles; /* libuv handles not yet called back after close */
  int releasing;    /* np_engine_release: free at the last close callback */
  char readbuf[READ_BUFFER_SIZE];
};

/* What the connections of a server have in common, one copy for all of them rather
 * than one in each (issue 13): their options, engine and server. Counted, since a server
 * may close before its connections. A client's end, or an open descriptor, has its own. */
typedef struct np_copts {
  np_conn_opts o;
  np_engine *e;
  np_server *server; /* accepting them; NULL once it has closed, and for a client's end */
  unsigned refs;
} np_copts;

struct np_server {
  uv_pipe_t *listener;
  uv_poll_t *poll;   /* watches the listener where the engine accepts itself, else NULL */
  np_instances *inst; /* the pipe instances, where the platform creates them (Windows) */
  np_conn *spare;    /* a connection made for a client that was not there (yet) */
  int polling;       /* poll started */
  int starved;       /* out of descriptors: accepting waits for one to free */
  int backlog;       /* what the listener was last listen()ed with */
  np_engine *e;
  np_server *prev, *next;
  char *path;
  np_file_id fid;
  int have_fid;
  int closing;
  np_server_opts opts;
  np_copts *copts; /* opts.conn, for its connections */
  np_stats stats;
  void *data;
};

/* Frames waiting to be written, back to back, with where each ends: one allocation
 * however many frames, and the ends tell how many messages a drop loses. */
typedef struct np_wq {
  char *bytes;
  size_t len, cap;
  size_t *ends;
  size_t n, ncap;
} np_wq;

/* The one write libuv has in flight for a connection. */
typedef struct np_wout {
  uv_write_t req;
  struct np_conn *c;
  np_wq q;
  /* A message-type pipe: one uv_write per frame (the first is req), since one uv_write
   * is one WriteFile, which is one message. */
  uv_write_t *more;
  size_t waiting; /* writes not yet called back */
  int status;     /* the first of their failures */
} np_wout;

/* What a connection needs only now and then: allocated on first need (np__rare) and
 * freed with the connection, so that an idle connection does not carry it (issue 13).
 * A connection has it while anything is queued (np_conn_write makes it before the first
 * write that does not go out at once, so that a failed write can always be counted),
 * once it is ending or has had its EOF, while input is kept, after a flush, and on a
 * message-type pipe. */
typedef struct np_rare {
  np_wq pend;    /* written while out was in flight: goes out as one write after it */
  size_t cost;   /* what out and pend hold, bookkeeping included */
  uint64_t failed_bytes, failed_msgs; /* in a write the OS refused: not known to have arrived */
  char *kept;    /* the unread rest of a read that arrived while input was held */
  size_t kept_len;
  char *end_why; /* graceful end: "code\0reason" for the closed event */
  uint64_t deadline; /* loop time (ms) by which an ending or EOF conn closes; 0: none */
  np_conn *flush_next;
  np_flush *flush_op; /* an off-thread flush in flight (Windows) */
  int flush_listed;   /* on the engine's poll list */
  int msg_err;        /* message-type pipe: the size of the next message could not be read */
  size_t msg_left;    /* message-type pipe: bytes of the current message not read yet */
} np_rare;

/* Kept small: idle memory per connection is issue 13's target (see the size check in
 * np_conn.c). What every read and write touches comes first after the pipe, in the cache
 * line that the pipe's last bytes start; the framer follows; then what only opening,
 * closing and the host's questions need. */
struct np_conn {
  uv_pipe_t pipe;
  uint8_t state;
  uint8_t hold;      /* NP_HOLD_* set by the host */
  uint8_t feeding;   /* inside the framer: a release of the hold is picked up there */
  uint8_t framing;   /* opts.framing, for the write path */
  unsigned reading : 1;       /* libuv is reading now */
  unsigned input_ended : 1;   /* EOF seen */
  unsigned flush_pending : 1; /* the host waits for a flushed event */
  unsigned over_high : 1;
  unsigned server_end : 1;    /* accepted by a server (not a client's end) */
  /* Message framing on a message-type pipe (Windows): the pipe keeps the boundaries, no
   * length prefix on the wire. Each read is sized to what is left of the message at the
   * head of the pipe (rare->msg_left), and the framer gets the message's length as a
   * header of ours. */
  unsigned native : 1;
  unsigned msg_head : 1;      /* the read under way starts a message: its header is before it */
  unsigned connect_done : 1;  /* a client end the platform opened: connect_timer reports it */
  int16_t connect_rc;         /* and its result (uv error codes are above -4100) */
  np_rare *rare;              /* or NULL */
  np_copts *opts;             /* shared: has e and server; the framer has framing and max_message */
  np_wout *out;               /* in flight, or NULL */
  void *data;
  np_framer fr;
  np_conn *prev, *next;
  uint64_t id;
  np_cred cred;
  long session; /* the peer's login session, taken at connect time like cred */
  long posix_session; /* and its POSIX session (getsid), likewise */
};

/* ---- intrusive lists ---- */

#define LIST_ADD(head, x) do {       \
    (x)->prev = NULL;                 \
    (x)->next = (head);               \
    if (head) { (head)->prev = (x); } \
    (head) = (x);                     \
  } while (0)
#define LIST_DEL(head, x) do {                                         \
    if ((x)->prev) { (x)->prev->next = (x)->next; } else { (head) = (x)->next; } \
    if ((x)->next) { (x)->next->prev = (x)->prev; }                     \
    (x)->prev = (x)->next = NULL;                                       \
  } while (0)

/* ---- np_engine.c ---- */

/* A handle of e has been called back after uv_close: a released engine goes with its last. */
void np__handle_gone(np_engine *e);
/* Gives c until linger_ms from now to close (kept if it already has a deadline): 0, or
 * UV_ENOMEM when c's rare part could not be made. */
int np__set_deadline(np_conn *c);
/* Puts c, which has its rare part, on the engine's flush poll list and starts the poll. */
void np__flush_list(np_conn *c);

/* ---- np_conn.c ---- */

/* What connections of e share (server NULL): refs 1; NULL when out of memory. */
np_copts *np__copts_new(np_engine *e, const np_conn_opts *o);
void np__copts_unref(np_copts *o);
/* A connection with these options (it takes a reference to them). */
np_conn *np__conn_new(np_copts *opts);
/* c's rare part, made on first need; NULL when out of memory. */
np_rare *np__rare(np_conn *c);
/* Marks c open, takes the peer's identity and starts reading. */
int np__conn_open(np_conn *c);
/* Closes c's handle for a connection that was never open to the host: no event. */
void np__conn_discard(np_conn *c);
/* Closes c now; with notify, a connection that was open gets its closed event. */
void np__close_now(np_conn *c, const char *code, const char *reason, int notify);
/* An ending connection closes with the reason it was given, and what it could not deliver. */
void np__close_ending(np_conn *c, const char *late);
/* An I/O error (what: "read", "write", "flush") ends c with its code. */
void np__conn_fail(np_conn *c, int err, const char *what);
/* Starts or stops libuv reading as the holds, the kept input and the EOF say. */
void np__update_reading(np_conn *c);
/* Input was held and no longer is: deliver what was kept, then read again. */
void np__release_input(np_conn *c);

/* ---- np_conn_write.c ---- */

int np__queue_empty(const np_conn *c);
void np__wq_free(np_wq *q);
/* What is still queued, and what a refused write took: undelivered at a close. */
void np__count_lost(const np_conn *c, uint64_t *bytes, uint64_t *msgs);
/* The host no longer waits for a flushed event. */
void np__flush_forget(np_conn *c);
/* Tells the host c is flushed before it closes, when the peer read everything. */
void np__flush_at_close(np_conn *c);
void np__flush_finished(np_conn *c);
/* 1: the peer has read everything; 0: not yet; <0: the peer closed without reading it.
 * c has its rare part. */
int np__flush_check(np_conn *c);

/* ---- np_server.c ---- */

/* A connection of s ended: make room for the next client. */
void np__server_conn_gone(np_server *s);
/* The handle of a connection of s has been closed: an instance is free (Windows). */
void np__server_room(np_server *s);

#endif
