#include "np_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One read buffer per engine: libuv reads into it and the framer consumes it before
 * the read callback returns, so connections do not each hold 64 KiB while idle. */
#define READ_BUFFER_SIZE (64 * 1024)
#define FLUSH_POLL_MS 2

enum { C_CONNECTING, C_OPEN, C_CLOSED };

struct np_engine {
  uv_loop_t *loop;
  np_events ev;
  np_server *servers;
  np_conn *conns;      /* open connections */
  np_conn *connecting; /* clients whose connect has not finished */
  np_conn *flushing;
  uv_timer_t flush_timer;
  int flush_timer_on;
  uv_timer_t accept_timer; /* retries servers that ran out of descriptors */
  int accept_timer_made;
  uint64_t next_id;
  unsigned handles; /* libuv handles not yet called back after close */
  int releasing;    /* np_engine_release: free at the last close callback */
  char readbuf[READ_BUFFER_SIZE];
};

struct np_server {
  uv_pipe_t *listener;
  uv_poll_t *poll;   /* watches the listener where the engine accepts itself, else NULL */
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
  np_stats stats;
  void *data;
};

struct np_conn {
  uv_pipe_t pipe;
  np_engine *e;
  np_conn *prev, *next;
  np_conn *flush_next;
  np_flush *flush_op; /* an off-thread flush in flight (Windows) */
  np_server *server;
  np_conn_opts opts;
  np_framer fr;
  size_t queued;
  unsigned nwrites;
  int state;
  int paused;   /* the host asked to stop reading */
  int reading;  /* libuv is reading now */
  int flush_pending; /* the host waits for a flushed event */
  int flush_listed;  /* on the engine's poll list */
  int over_high;
  np_cred cred;
  long session; /* the peer's session, taken at connect time like cred */
  uint64_t id;
  void *data;
};

typedef struct np_wreq {
  uv_write_t req;
  np_conn *c;
  size_t len;
  char bytes[];
} np_wreq;

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

/* ---- engine ---- */

np_engine *np_engine_new(uv_loop_t *loop, const np_events *events) {
  np_engine *e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->loop = loop;
  e->ev = *events;
  e->next_id = 1;
  uv_timer_init(loop, &e->flush_timer);
  e->flush_timer.data = e;
  e->handles = 1;
  np_platform_init();
  return e;
}

static void conn_end(np_conn *c, const char *code, const char *reason, int notify);
static void server_conn_gone(np_server *s);

/* A handle of e has been called back after uv_close: a released engine goes with its last. */
static void handle_gone(np_engine *e) {
  if (--e->handles == 0 && e->releasing) free(e);
}

static void on_flush_timer_closed(uv_handle_t *h) { handle_gone(h->data); }

void np_engine_shutdown(np_engine *e) {
  while (e->servers) np_server_close(e->servers);
  while (e->conns) conn_end(e->conns, "SHUTDOWN", "engine shut down", 0);
  while (e->connecting) conn_end(e->connecting, "SHUTDOWN", "engine shut down", 0);
  if (!uv_is_closing((uv_handle_t *)&e->flush_timer))
    uv_close((uv_handle_t *)&e->flush_timer, on_flush_timer_closed);
  if (e->accept_timer_made && !uv_is_closing((uv_handle_t *)&e->accept_timer))
    uv_close((uv_handle_t *)&e->accept_timer, on_flush_timer_closed);
}

void np_engine_free(np_engine *e) { free(e); }

static void release_now(np_engine *e, void **data) {
  if (*data && e->ev.released) e->ev.released(*data);
  *data = NULL;
}

/* The host lets go of everything now, and the close callbacks may run later, on a loop
 * the host does not run itself (or not at all), after its own memory is gone. */
void np_engine_release(np_engine *e) {
  for (np_conn *c = e->conns; c; c = c->next) release_now(e, &c->data);
  for (np_conn *c = e->connecting; c; c = c->next) release_now(e, &c->data);
  for (np_server *s = e->servers; s; s = s->next) release_now(e, &s->data);
  e->ev.released = NULL;
  np_engine_shutdown(e);
  e->releasing = 1;
  if (e->handles == 0) free(e);
}

/* ---- connections ---- */

static np_conn *conn_new(np_engine *e, const np_conn_opts *opts) {
  np_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->e = e;
  c->opts = *opts;
  c->id = e->next_id++;
  c->cred.pid = c->cred.uid = c->cred.gid = -1;
  c->session = UV_ENOTSUP;
  np_framer_init(&c->fr, opts->framing, opts->max_message);
  uv_pipe_init(e->loop, &c->pipe, 0);
  c->pipe.data = c;
  e->handles++;
  return c;
}

static void on_conn_closed(uv_handle_t *h) {
  np_conn *c = h->data;
  np_engine *e = c->e;
  if (c->data && e->ev.released) e->ev.released(c->data);
  np_framer_free(&c->fr);
  free(c);
  handle_gone(e);
}

/* The host no longer waits. A conn that on_flush_poll holds in its own list at this
 * moment (an event of another conn led here) is not in e->flushing: it stays linked,
 * since unlinking it would cut that list, and the poll skips it as no longer pending. */
static void flush_forget(np_conn *c) {
  c->flush_pending = 0;
  for (np_conn **p = &c->e->flushing; c->flush_listed && *p; p = &(*p)->flush_next) {
    if (*p == c) {
      *p = c->flush_next;
      c->flush_next = NULL;
      c->flush_listed = 0;
      break;
    }
  }
  np_platform_flush_cancel(c->flush_op);
  c->flush_op = NULL;
}

static void conn_end(np_conn *c, const char *code, const char *reason, int notify) {
  if (c->state == C_CLOSED) return;
  int was_open = c->state == C_OPEN;
  c->state = C_CLOSED;
  flush_forget(c);
  if (was_open) LIST_DEL(c->e->conns, c);
  else LIST_DEL(c->e->connecting, c);
  if (c->server && was_open) server_conn_gone(c->server);
  if (was_open && notify && c->e->ev.closed) c->e->ev.closed(c, code, reason);
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void conn_fail(np_conn *c, int err, const char *what) {
  char reason[160];
  snprintf(reason, sizeof reason, "%s failed: %s (%s)", what, uv_err_name(err), uv_strerror(err));
  conn_end(c, uv_err_name(err), reason, 1);
}

static int on_frame(void *ctx, const char *data, size_t len) {
  np_conn *c = ctx;
  if (c->server) c->server->stats.messages_in++;
  int rc = c->e->ev.frame(c, data, len);
  return rc ? rc : (c->state != C_OPEN);
}

static void framing_error(np_conn *c, int rc) {
  char reason[200];
  if (rc == NP_FRAME_ETOOBIG) {
    snprintf(reason, sizeof reason, "%s too large: %llu bytes, the limit is %zu",
             c->opts.framing == NP_FRAMING_LINES ? "line" : "message",
             (unsigned long long)c->fr.announced, c->opts.max_message);
    conn_end(c, "EMSGSIZE", reason, 1);
  } else {
    np_framer_partial_text(&c->fr, reason, sizeof reason);
    conn_end(c, "EPROTO", reason, 1);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  np_conn *c = h->data;
  (void)suggested;
  buf->base = c->e->readbuf;
  buf->len = READ_BUFFER_SIZE;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  np_conn *c = s->data;
  int rc;
  if (n > 0) {
    if (c->server) c->server->stats.bytes_in += (uint64_t)n;
    rc = np_framer_feed(&c->fr, buf->base, (size_t)n, on_frame, c);
    if (rc < 0 && c->state == C_OPEN) framing_error(c, rc);
  } else if (n == UV_EOF || n == UV_EPIPE) {
    /* EPIPE: Windows reports a read on a pipe that the server ended with
     * DisconnectNamedPipe as ERROR_PIPE_NOT_CONNECTED; it is the same end of stream. */
    rc = np_framer_finish(&c->fr, on_frame, c);
    if (c->state != C_OPEN) return;
    if (rc < 0) framing_error(c, rc);
    else conn_end(c, "EOF", "the peer closed the pipe", 1);
  } else if (n < 0) {
    conn_fail(c, (int)n, "read");
  }
}

/* Reading stops while the host asks (pause) or while the write queue is over the
 * high-water mark, so that neither side's backlog can grow without bound. */
static void update_reading(np_conn *c) {
  if (c->state != C_OPEN) return;
  int want = !c->paused && !c->over_high;
  if (want == c->reading) return;
  c->reading = want;
  if (want) uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  else uv_read_stop((uv_stream_t *)&c->pipe);
}

static int conn_open(np_conn *c) {
  c->state = C_OPEN;
  np_platform_peer_cred(&c->pipe, &c->cred);
  c->session = np_platform_peer_session(&c->pipe, &c->cred);
  LIST_ADD(c->e->conns, c);
  c->reading = 1;
  return uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_write(uv_write_t *req, int status) {
  np_wreq *w = (np_wreq *)req;
  np_conn *c = w->c;
  c->queued -= w->len;
  c->nwrites--;
  free(w);
  if (c->state != C_OPEN) return;
  if (status < 0) {
    conn_fail(c, status, "write");
    return;
  }
  if (c->over_high && c->queued <= c->opts.high_water / 2) {
    c->over_high = 0;
    update_reading(c);
    if (c->e->ev.drained) c->e->ev.drained(c);
  }
}

/* Copies what uv_try_write could not send into one request. */
static int queue_rest(np_conn *c, uv_buf_t *bufs, int nbufs, size_t skip, size_t rest) {
  np_wreq *w = malloc(sizeof *w + rest);
  if (w == NULL) return UV_ENOMEM;
  size_t at = 0;
  for (int i = 0; i < nbufs; i++) {
    size_t off = skip < bufs[i].len ? skip : bufs[i].len;
    skip -= off;
    memcpy(w->bytes + at, bufs[i].base + off, bufs[i].len - off);
    at += bufs[i].len - off;
  }
  w->c = c;
  w->len = rest;
  uv_buf_t b = uv_buf_init(w->bytes, (unsigned)rest);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
  if (rc < 0) {
    free(w);
    return rc;
  }
  c->queued += rest;
  c->nwrites++;
  if (c->queued >= c->opts.high_water && !c->over_high) {
    c->over_high = 1;
    update_reading(c); /* a peer that does not read gets no more reads from us either */
  }
  return 0;
}

/* A small frame is copied into one buffer (scratch) so that it goes out in one write
 * rather than a writev of header and payload, which costs the kernel more. */
#define SMALL_FRAME 1024

static int frame_bufs(np_conn *c, const char *data, size_t len, char *scratch, uv_buf_t *bufs) {
  int n = 0;
  size_t extra = c->opts.framing == NP_FRAMING_BYTES ? 0 : (c->opts.framing == NP_FRAMING_LINES ? 1 : 4);
  if (extra && len + extra <= SMALL_FRAME) {
    size_t at = 0;
    if (c->opts.framing == NP_FRAMING_MESSAGE) {
      np_message_header(scratch, (uint32_t)len);
      at = NP_MESSAGE_HEADER;
    }
    memcpy(scratch + at, data, len);
    if (c->opts.framing == NP_FRAMING_LINES) scratch[len] = '\n';
    bufs[0] = uv_buf_init(scratch, (unsigned)(len + extra));
    return 1;
  }
  if (c->opts.framing == NP_FRAMING_MESSAGE) {
    np_message_header(scratch, (uint32_t)len);
    bufs[n++] = uv_buf_init(scratch, NP_MESSAGE_HEADER);
  }
  bufs[n++] = uv_buf_init((char *)data, (unsigned)len);
  if (c->opts.framing == NP_FRAMING_LINES) bufs[n++] = uv_buf_init("\n", 1);
  return n;
}

int np_conn_write(np_conn *c, const char *data, size_t len) {
  if (c->state != C_OPEN) return UV_ENOTCONN;
  if (len > UINT32_MAX) return UV_E2BIG;
  if (len == 0 && c->opts.framing == NP_FRAMING_BYTES) return 0;
  char scratch[SMALL_FRAME];
  uv_buf_t bufs[2];
  int nbufs = frame_bufs(c, data, len, scratch, bufs);
  size_t total = 0, done = 0;
  for (int i = 0; i < nbufs; i++) total += bufs[i].len;
  if (c->server) {
    c->server->stats.bytes_out += total;
    c->server->stats.messages_out++;
  }
  if (c->nwrites == 0) {
    int r = uv_try_write((uv_stream_t *)&c->pipe, bufs, (unsigned)nbufs);
    if (r >= 0) {
      done = (size_t)r;
    } else if (r != UV_EAGAIN) {
      conn_fail(c, r, "write");
      return r;
    }
  }
  if (done == total) return 0;
  int rc = queue_rest(c, bufs, nbufs, done, total - done);
  if (rc < 0) conn_fail(c, rc, "write");
  return rc;
}

void np_conn_end(np_conn *c, const char *code, const char *reason) {
  conn_end(c, code ? code : "DISCONNECTED", reason ? reason : "disconnected by the server", 1);
}

void np_conn_disconnect(np_conn *c, const char *code, const char *reason) {
  if (c->state == C_OPEN) np_platform_disconnect(&c->pipe);
  np_conn_end(c, code, reason);
}

static void on_flush_poll(uv_timer_t *t);

static void flush_list(np_conn *c) {
  np_engine *e = c->e;
  if (!c->flush_listed) {
    c->flush_listed = 1;
    c->flush_next = e->flushing;
    e->flushing = c;
  }
  if (!e->flush_timer_on) {
    e->flush_timer.data = e;
    uv_timer_start(&e->flush_timer, on_flush_poll, FLUSH_POLL_MS, FLUSH_POLL_MS);
    e->flush_timer_on = 1;
  }
}

static void flush_finished(np_conn *c) {
  c->flush_pending = 0;
  if (c->e->ev.flushed) c->e->ev.flushed(c);
}

static void on_flush_op(void *arg, int status) {
  np_conn *c = arg;
  c->flush_op = NULL;
  if (status < 0) conn_fail(c, status, "flush");
  else if (c->nwrites > 0) flush_list(c); /* written meanwhile: wait for libuv's queue again */
  else flush_finished(c);
}

/* 1: the peer has read everything; 0: not yet (an off-thread wait may have started). */
static int flush_check(np_conn *c) {
  if (c->nwrites > 0 || c->flush_op) return 0;
  long unread = np_platform_unread(&c->pipe);
  if (unread >= 0) return unread == 0;
  int rc = np_platform_flush_start(c->e->loop, &c->pipe, on_flush_op, c, &c->flush_op);
  return rc == UV_ENOTSUP ? 1 : rc;
}

/* Polled, because no OS call tells when the peer has consumed a Unix socket's data. */
static void on_flush_poll(uv_timer_t *t) {
  np_engine *e = t->data;
  np_conn *list = e->flushing;
  e->flushing = NULL;
  while (list) {
    np_conn *c = list;
    list = c->flush_next;
    c->flush_next = NULL;
    c->flush_listed = 0;
    if (c->state != C_OPEN || !c->flush_pending) continue;
    int rc = flush_check(c);
    if (rc < 0) conn_fail(c, rc, "flush");
    else if (rc == 1) flush_finished(c);
    else if (c->flush_op == NULL) flush_list(c);
  }
  if (e->flushing == NULL) {
    uv_timer_stop(t);
    e->flush_timer_on = 0;
  }
}

int np_conn_flush(np_conn *c) {
  if (c->state != C_OPEN) return UV_ENOTCONN;
  int rc = flush_check(c);
  if (rc != 0) return rc;
  c->flush_pending = 1;
  if (c->flush_op == NULL) flush_list(c);
  return 0;
}

void np_conn_flush_cancel(np_conn *c) {
  if (c->state == C_OPEN) flush_forget(c);
}

void np_conn_pause(np_conn *c) {
  c->paused = 1;
  update_reading(c);
}

void np_conn_resume(np_conn *c) {
  c->paused = 0;
  update_reading(c);
}

int np_conn_is_open(const np_conn *c) { return c->state == C_OPEN; }

int np_conn_peer(np_conn *c, np_cred *out) {
  *out = c->cred;
  return c->cred.pid < 0 && c->cred.uid < 0 ? UV_ENOTSUP : 0;
}

long np_conn_peer_session(np_conn *c) { return c->session; }

size_t np_conn_queued(const np_conn *c) { return c->queued; }
uint64_t np_conn_id(const np_conn *c) { return c->id; }
void np_conn_set_data(np_conn *c, void *data) { c->data = data; }
void *np_conn_data(const np_conn *c) { return c->data; }

/* ---- client ---- */

static void on_connect(uv_connect_t *req, int status) {
  np_conn *c = req->handle->data;
  free(req);
  if (c->state == C_CLOSED) return; /* given up while connecting */
  LIST_DEL(c->e->connecting, c);
  if (status == 0) status = conn_open(c);
  if (status < 0) {
    c->state = C_CLOSED;
    if (c->e->ev.connected) c->e->ev.connected(c, status);
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    return;
  }
  if (c->e->ev.connected) c->e->ev.connected(c, 0);
}

int np_conn_connect(np_engine *e, const char *path, const np_conn_opts *opts, np_conn **out) {
  uv_connect_t *req = malloc(sizeof *req);
  np_conn *c = req ? conn_new(e, opts) : NULL;
  if (c == NULL) {
    free(req);
    return UV_ENOMEM;
  }
  c->state = C_CONNECTING;
  LIST_ADD(e->connecting, c);
  uv_pipe_connect(req, &c->pipe, path, on_connect);
  *out = c;
  return 0;
}

int np_conn_open_fd(np_engine *e, int fd, const np_conn_opts *opts, np_conn **out) {
  uv_handle_type kind = uv_guess_handle(fd);
  /* epoll cannot watch regular files (libuv would abort), so only streams are taken */
  if (kind != UV_NAMED_PIPE && kind != UV_TTY && kind != UV_TCP) return UV_EINVAL;
  np_conn *c = conn_new(e, opts);
  if (c == NULL) return UV_ENOMEM;
  int rc = uv_pipe_open(&c->pipe, fd);
  if (rc == 0) rc = conn_open(c);
  if (rc < 0) {
    if (c->state == C_OPEN) LIST_DEL(e->conns, c);
    c->state = C_CLOSED;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    return rc;
  }
  *out = c;
  return 0;
}

/* ---- servers ---- */

/* Where the platform lets it (Unix), the engine accepts by itself instead of through
 * uv_listen: libuv 1.44's accept loop (uv__server_io), out of descriptors, accepts and
 * closes every client waiting in the backlog (uv__emfile_trick), so they would be reset,
 * unseen and uncounted. Here a server out of descriptors stops watching its socket, and
 * its clients wait in the backlog until a connection of this engine closes, or until the
 * accept timer tries again (descriptors may free elsewhere in the process). */
#define ACCEPT_RETRY_MS 100
#define ACCEPT_BATCH 64 /* clients accepted per loop turn, so that one server cannot hog it */

static void server_free(np_server *s) {
  if (s->data && s->e->ev.released) s->e->ev.released(s->data);
  free(s->path);
  free(s);
}

static void on_listener_closed(uv_handle_t *h) {
  np_server *s = h->data;
  np_engine *e = s->e;
  free(h);
  server_free(s);
  handle_gone(e);
}

/* A handle that outlives its server (its data is the engine). */
static void on_spare_handle_closed(uv_handle_t *h) {
  np_engine *e = h->data;
  free(h);
  handle_gone(e);
}

static void on_connection(uv_stream_t *ls, int status);
static void on_listener_ready(uv_poll_t *p, int status, int events);

static int at_capacity(const np_server *s) {
  return s->opts.max_instances > 0 && s->stats.active >= (uint64_t)s->opts.max_instances;
}

/* Linux queues backlog + 1 clients. With max_instances the backlog is kept one below the
 * free instances, so that active and waiting clients together never exceed
 * max_instances + 1, also while a client connects between an accept and the listen()
 * that follows it: at the limit one client waits and every other is refused as busy
 * (EAGAIN) at once, however many connected before the server got to accept them. */
static int wanted_backlog(const np_server *s) {
  if (s->opts.max_instances <= 0) return s->opts.backlog;
  long room = (long)s->opts.max_instances - (long)s->stats.active - 1;
  if (room < 0) room = 0;
  return room < s->opts.backlog ? (int)room : s->opts.backlog;
}

/* Watches the socket while the server may accept; adjusts the backlog to the limit. */
static void server_update(np_server *s) {
  if (s->closing || s->poll == NULL) return;
  int backlog = wanted_backlog(s);
  if (backlog != s->backlog && np_platform_listen(s->listener, backlog) == 0) s->backlog = backlog;
  int want = !s->starved && !at_capacity(s);
  if (want == s->polling) return;
  s->polling = want;
  if (want) uv_poll_start(s->poll, UV_READABLE, on_listener_ready);
  else uv_poll_stop(s->poll);
}

/* Descriptors may be free again: every server that ran out of them tries again. Its
 * poll reports a waiting client on a later loop turn, after the closes under way. */
static void wake_starved(np_engine *e) {
  for (np_server *s = e->servers; s; s = s->next) {
    if (!s->starved) continue;
    s->starved = 0;
    server_update(s);
  }
}

static void on_accept_timer(uv_timer_t *t) { wake_starved(t->data); }

static void starve(np_server *s) {
  np_engine *e = s->e;
  s->starved = 1;
  server_update(s);
  if (!e->accept_timer_made) {
    uv_timer_init(e->loop, &e->accept_timer);
    e->accept_timer.data = e;
    e->accept_timer_made = 1;
    e->handles++;
  }
  uv_timer_start(&e->accept_timer, on_accept_timer, ACCEPT_RETRY_MS, 0);
}

/* c is open on a new client of s. */
static void server_take(np_server *s, np_conn *c) {
  c->server = s;
  s->stats.accepted++;
  s->stats.active++;
  if (conn_open(c) != 0) {
    conn_end(c, "EIO", "could not start reading", 0);
    return;
  }
  server_update(s);
  s->e->ev.accept(s, c);
}

static void on_listener_ready(uv_poll_t *p, int status, int events) {
  np_server *s = p->data;
  (void)events;
  if (status < 0) {
    starve(s);
    return;
  }
  for (int i = 0; i < ACCEPT_BATCH && s->polling && !s->closing; i++) {
    if (s->spare == NULL && (s->spare = conn_new(s->e, &s->opts.conn)) == NULL) {
      starve(s); /* out of memory: the client waits, as for descriptors */
      return;
    }
    int rc = np_platform_accept(s->listener, &s->spare->pipe);
    if (rc == UV_EAGAIN) return;
    if (rc == UV_ECONNABORTED) continue;
    if (rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOBUFS || rc == UV_ENOMEM) {
      starve(s);
      return;
    }
    if (rc < 0) { /* the client was accepted and could not be kept: say so in the count */
      s->stats.rejected++;
      continue;
    }
    np_conn *c = s->spare;
    s->spare = NULL;
    server_take(s, c);
  }
}

/* uv_listen's callback, where libuv accepts (Windows). */
static void on_connection(uv_stream_t *ls, int status) {
  np_server *s = ls->data;
  if (status < 0) return;
  np_conn *c = conn_new(s->e, &s->opts.conn);
  if (c == NULL) return;
  if (uv_accept(ls, (uv_stream_t *)&c->pipe) != 0) {
    c->state = C_CLOSED;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    return;
  }
  if (at_capacity(s)) { /* libuv accepts every client: refuse the ones over the limit */
    s->stats.rejected++;
    c->state = C_CLOSED;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    return;
  }
  server_take(s, c);
}

/* A connection of s ended: make room for the next client. */
static void server_conn_gone(np_server *s) {
  s->stats.active--;
  server_update(s);
  wake_starved(s->e);
}

/* Starts accepting: on a poll of the socket where the platform lets the engine accept,
 * else through uv_listen. */
static int start_accepting(np_server *s) {
  int fd = np_platform_listener_fd(s->listener);
  if (fd == UV_ENOTSUP) return uv_listen((uv_stream_t *)s->listener, s->opts.backlog, on_connection);
  if (fd < 0) return fd;
  s->backlog = wanted_backlog(s);
  int rc = np_platform_listen(s->listener, s->backlog);
  if (rc < 0) return rc;
  uv_poll_t *p = malloc(sizeof *p);
  if (p == NULL) return UV_ENOMEM;
  rc = uv_poll_init(s->e->loop, p, fd);
  if (rc < 0) {
    free(p);
    return rc;
  }
  p->data = s;
  s->poll = p;
  s->e->handles++;
  server_update(s);
  return 0;
}

static int bind_or_reclaim(np_server *s, const char *path, char *err, size_t errlen) {
  int rc = np_platform_bind(s->listener, path, s->opts.mode);
  if (rc != UV_EADDRINUSE) return rc;
  int live = np_platform_reclaim(path, err, errlen);
  if (live < 0) return live;
  if (live) {
    snprintf(err, errlen, "pipe %s is already in use by a live server", path);
    return UV_EADDRINUSE;
  }
  return np_platform_bind(s->listener, path, s->opts.mode);
}

/* Closes what s has open besides its listener, whose close callback frees s. */
static void server_close_handles(np_server *s) {
  if (s->poll) {
    s->poll->data = s->e;
    uv_close((uv_handle_t *)s->poll, on_spare_handle_closed);
    s->poll = NULL;
  }
  s->polling = 0;
  if (s->spare) {
    s->spare->state = C_CLOSED;
    uv_close((uv_handle_t *)&s->spare->pipe, on_conn_closed);
    s->spare = NULL;
  }
  uv_close((uv_handle_t *)s->listener, on_listener_closed);
}

static int server_fail(np_server *s, int rc, const char *what, char *err, size_t errlen) {
  if (err[0] == '\0') snprintf(err, errlen, "%s %s: %s", what, s->path, uv_strerror(rc));
  s->closing = 1;
  server_close_handles(s);
  return rc;
}

static uv_pipe_t *listener_new(np_server *s) {
  uv_pipe_t *lp = malloc(sizeof *lp);
  if (lp == NULL) return NULL;
  uv_pipe_init(s->e->loop, lp, 0);
  lp->data = s;
  s->e->handles++;
  return lp;
}

int np_server_listen(np_engine *e, const char *path, const np_server_opts *opts, np_server **out,
                     char *err, size_t errlen) {
  np_server *s = calloc(1, sizeof *s);
  if (s == NULL || (s->path = strdup(path)) == NULL) {
    free(s);
    return UV_ENOMEM;
  }
  err[0] = '\0';
  s->e = e;
  s->opts = *opts;
  if ((s->listener = listener_new(s)) == NULL) {
    free(s->path);
    free(s);
    return UV_ENOMEM;
  }
  int rc = bind_or_reclaim(s, path, err, errlen);
  if (rc < 0) return server_fail(s, rc, "cannot bind", err, errlen);
  s->have_fid = np_platform_file_id(path, &s->fid) == 0;
  rc = start_accepting(s);
  if (rc < 0) {
    if (s->have_fid) np_platform_unlink_if_same(path, &s->fid);
    return server_fail(s, rc, "cannot listen on", err, errlen);
  }
  LIST_ADD(e->servers, s);
  *out = s;
  return 0;
}

void np_server_close(np_server *s) {
  if (s->closing) return;
  s->closing = 1;
  LIST_DEL(s->e->servers, s);
  for (np_conn *c = s->e->conns; c; c = c->next)
    if (c->server == s) c->server = NULL;
  if (s->have_fid) np_platform_unlink_if_same(s->path, &s->fid);
  server_close_handles(s);
}

const char *np_server_path(const np_server *s) { return s->path; }
np_stats np_server_stats(const np_server *s) { return s->stats; }
void np_server_set_data(np_server *s, void *data) { s->data = data; }
void *np_server_data(const np_server *s) { return s->data; }
