#include "np_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One read buffer per engine: libuv reads into it and the framer consumes it before
 * the read callback returns, so connections do not each hold 64 KiB while idle. */
#define READ_BUFFER_SIZE (64 * 1024)
#define FLUSH_POLL_MS 2
#define LINGER_SWEEP_MS 20

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
} np_wout;

struct np_conn {
  uv_pipe_t pipe;
  np_engine *e;
  np_conn *prev, *next;
  np_conn *flush_next;
  np_flush *flush_op; /* an off-thread flush in flight (Windows) */
  np_server *server;
  np_conn_opts opts;
  np_framer fr;
  np_wout *out;  /* in flight, or NULL */
  np_wq pend;    /* written while out was in flight: goes out as one write after it */
  size_t cost;   /* what out and pend hold, bookkeeping included */
  char *kept;    /* the unread rest of a read that arrived while input was held */
  size_t kept_len;
  char *end_why; /* graceful end: "code\0reason" for the closed event */
  uint64_t deadline; /* loop time (ms) by which an ending or EOF conn closes; 0: none */
  uint64_t lost_bytes, lost_msgs; /* undelivered, for the closed event */
  uint64_t failed_bytes, failed_msgs; /* in a write the OS refused: not known to have arrived */
  int state;
  unsigned hold;     /* NP_HOLD_* set by the host */
  int feeding;       /* inside the framer: a release of the hold is picked up there */
  int reading;       /* libuv is reading now */
  int input_ended;   /* EOF seen */
  int flush_pending; /* the host waits for a flushed event */
  int flush_listed;  /* on the engine's poll list */
  int over_high;
  int server_end; /* accepted by a server (not a client's end) */
  np_cred cred;
  long session; /* the peer's session, taken at connect time like cred */
  uint64_t id;
  void *data;
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

/* ---- engine ---- */

np_engine *np_engine_new(uv_loop_t *loop, const np_events *events) {
  np_engine *e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->loop = loop;
  e->ev = *events;
  e->next_id = 1;
  uv_timer_init(loop, &e->flush_timer);
  e->flush_timer.data = e;
  uv_timer_init(loop, &e->linger_timer);
  e->linger_timer.data = e;
  uv_unref((uv_handle_t *)&e->linger_timer); /* the connections keep the loop alive */
  e->handles = 2;
  np_platform_init();
  return e;
}

static void close_now(np_conn *c, const char *code, const char *reason, int notify);
static void server_conn_gone(np_server *s);

/* A handle of e has been called back after uv_close: a released engine goes with its last. */
static void handle_gone(np_engine *e) {
  if (--e->handles == 0 && e->releasing) free(e);
}

static void on_timer_closed(uv_handle_t *h) { handle_gone(h->data); }

void np_engine_shutdown(np_engine *e) {
  while (e->servers) np_server_close(e->servers);
  while (e->conns) close_now(e->conns, "SHUTDOWN", "engine shut down", 0);
  while (e->connecting) close_now(e->connecting, "SHUTDOWN", "engine shut down", 0);
  uv_timer_t *timers[] = {&e->flush_timer, &e->linger_timer};
  for (int i = 0; i < 2; i++)
    if (!uv_is_closing((uv_handle_t *)timers[i])) uv_close((uv_handle_t *)timers[i], on_timer_closed);
  if (e->accept_timer_made && !uv_is_closing((uv_handle_t *)&e->accept_timer))
    uv_close((uv_handle_t *)&e->accept_timer, on_timer_closed);
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

/* ---- write queue ---- */

/* What a queue costs against high_water: its bytes and one frame end for each frame. */
static size_t wq_cost(const np_wq *q) { return q->len + q->n * sizeof(size_t); }

static void wq_free(np_wq *q) {
  free(q->bytes);
  free(q->ends);
  memset(q, 0, sizeof *q);
}

static int grow(void **p, size_t *cap, size_t need, size_t unit, size_t first) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : first;
  while (n < need) n *= 2;
  void *np = realloc(*p, n * unit);
  if (np == NULL) return UV_ENOMEM;
  *p = np;
  *cap = n;
  return 0;
}

/* Appends one frame (bufs, less its first skip bytes) to q. */
static int wq_push(np_wq *q, const uv_buf_t *bufs, int nbufs, size_t skip) {
  size_t add = 0;
  for (int i = 0; i < nbufs; i++) add += bufs[i].len;
  add -= skip;
  if (grow((void **)&q->bytes, &q->cap, q->len + add, 1, 256) != 0 ||
      grow((void **)&q->ends, &q->ncap, q->n + 1, sizeof(size_t), 8) != 0)
    return UV_ENOMEM;
  for (int i = 0; i < nbufs; i++) {
    size_t off = skip < bufs[i].len ? skip : bufs[i].len;
    skip -= off;
    memcpy(q->bytes + q->len, bufs[i].base + off, bufs[i].len - off);
    q->len += bufs[i].len - off;
  }
  q->ends[q->n++] = q->len;
  return 0;
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
  wq_free(&c->pend);
  free(c->kept);
  free(c->end_why);
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

static int queue_empty(const np_conn *c) { return c->out == NULL && c->pend.len == 0; }

/* What is still queued at a close: all of pend, and of out what libuv has not written
 * (write_queue_size), with every frame that ends in that part. */
static void count_lost(np_conn *c) {
  c->lost_bytes = c->failed_bytes + c->pend.len;
  c->lost_msgs = c->failed_msgs + c->pend.n;
  if (c->out == NULL) return;
  const np_wq *q = &c->out->q;
  size_t left = c->pipe.write_queue_size < q->len ? c->pipe.write_queue_size : q->len;
  size_t written = q->len - left;
  c->lost_bytes += left;
  for (size_t i = q->n; i > 0 && q->ends[i - 1] > written; i--) c->lost_msgs++;
}

static void flush_finished(np_conn *c);

/* A peer that read everything and then closed has still been flushed: tell the host so
 * before the closed event. Only where the OS counts unread bytes (no thread to wait for). */
static void flush_at_close(np_conn *c) {
  if (c->flush_pending && queue_empty(c) && np_platform_unread(&c->pipe) == 0) flush_finished(c);
}

static void close_now(np_conn *c, const char *code, const char *reason, int notify) {
  if (c->state == C_CLOSED) return;
  int was_open = c->state == C_OPEN || c->state == C_ENDING;
  c->state = C_CLOSED;
  flush_forget(c);
  count_lost(c);
  if (c->deadline) c->e->lingering--;
  c->deadline = 0;
  if (was_open) LIST_DEL(c->e->conns, c);
  else LIST_DEL(c->e->connecting, c);
  if (c->server && was_open) server_conn_gone(c->server);
  if (was_open && notify && c->e->ev.closed) c->e->ev.closed(c, code, reason);
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

void np_conn_undelivered(const np_conn *c, uint64_t *bytes, uint64_t *messages) {
  *bytes = c->lost_bytes;
  *messages = c->lost_msgs;
}

/* An ending conn closes with the reason it was given, and says what it could not deliver. */
static void close_ending(np_conn *c, const char *late) {
  const char *code = c->end_why, *reason = code + strlen(code) + 1;
  flush_at_close(c);
  if (c->state == C_CLOSED) return; /* the flushed event ended it */
  count_lost(c);
  char text[400];
  if (c->lost_bytes > 0)
    snprintf(text, sizeof text, "%s; %llu bytes (%llu messages) not delivered%s", reason,
             (unsigned long long)c->lost_bytes, (unsigned long long)c->lost_msgs, late);
  else
    snprintf(text, sizeof text, "%s", reason);
  close_now(c, code, text, 1);
}

static void conn_fail(np_conn *c, int err, const char *what) {
  char reason[160];
  /* After the peer's EOF, a failed write means the peer has gone entirely: that is the
   * end of stream it announced, not an I/O fault. */
  if (c->input_ended && (err == UV_EPIPE || err == UV_ECONNRESET)) {
    close_now(c, "EOF", "the peer closed the pipe", 1);
    return;
  }
  snprintf(reason, sizeof reason, "%s failed: %s (%s)", what, uv_err_name(err), uv_strerror(err));
  close_now(c, uv_err_name(err), reason, 1);
}

static void on_linger(uv_timer_t *t);

/* Gives c until linger_ms from now to close (kept if it already has a deadline). */
static void set_deadline(np_conn *c) {
  np_engine *e = c->e;
  if (c->deadline) return;
  c->deadline = uv_now(e->loop) + c->opts.linger_ms;
  if (e->lingering++ == 0) uv_timer_start(&e->linger_timer, on_linger, LINGER_SWEEP_MS, LINGER_SWEEP_MS);
}

static void on_linger(uv_timer_t *t) {
  np_engine *e = t->data;
  uint64_t now = uv_now(e->loop);
  np_conn *c = e->conns;
  while (c) {
    np_conn *next = c->next; /* closing c takes it off the list */
    if (c->deadline && now >= c->deadline) {
      if (c->state == C_ENDING) close_ending(c, " within the linger time");
      else close_now(c, "EOF", "the peer closed the pipe; its handlers had not finished within the linger time", 1);
    }
    c = next;
  }
  if (e->lingering == 0) uv_timer_stop(t);
}

/* A full write queue holds input only on a server's end: there it means a client that
 * does not read, whose requests would only queue more replies. A client's end keeps
 * reading, since its own reader may be what the server waits for (both holding would
 * deadlock an echo); the host's inbox bounds what it keeps. */
static int held(const np_conn *c) {
  return c->hold || (c->over_high && c->server_end) || c->state != C_OPEN;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* Reading goes on while nothing holds input, no earlier read is still kept, and the
 * peer has not ended its input. */
static void update_reading(np_conn *c) {
  if (c->state == C_CLOSED || c->state == C_CONNECTING) return;
  int want = !held(c) && c->kept_len == 0 && !c->input_ended;
  if (want == c->reading) return;
  c->reading = want;
  if (want) uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  else uv_read_stop((uv_stream_t *)&c->pipe);
}

/* np_conn_end: closes now when nothing is queued, else once the queue drains or the
 * linger time runs out. */
void np_conn_end(np_conn *c, const char *code, const char *reason) {
  code = code ? code : "DISCONNECTED";
  reason = reason ? reason : "disconnected by the server";
  if (c->state == C_OPEN) flush_at_close(c);
  if (c->state == C_CONNECTING || (c->state == C_OPEN && queue_empty(c))) {
    close_now(c, code, reason, 1);
    return;
  }
  if (c->state != C_OPEN) return;
  size_t lc = strlen(code), lr = strlen(reason);
  if ((c->end_why = malloc(lc + lr + 2)) == NULL) {
    close_now(c, code, reason, 1);
    return;
  }
  memcpy(c->end_why, code, lc + 1);
  memcpy(c->end_why + lc + 1, reason, lr + 1);
  c->state = C_ENDING;
  update_reading(c);
  if (c->opts.linger_ms == 0) close_ending(c, "");
  else set_deadline(c);
}

void np_conn_disconnect(np_conn *c, const char *code, const char *reason) {
  if (c->state == C_OPEN || c->state == C_ENDING) np_platform_disconnect(&c->pipe);
  close_now(c, code ? code : "DISCONNECTED", reason ? reason : "disconnected by the server", 1);
}

/* ---- reading ---- */

static int on_frame(void *ctx, const char *data, size_t len) {
  np_conn *c = ctx;
  if (c->server) c->server->stats.messages_in++;
  c->e->ev.frame(c, data, len);
  return held(c); /* stop: closed, ending, or held (then the rest is kept) */
}

/* A peer that breaks the framing gets no more frames, and still what was written to it. */
static void framing_error(np_conn *c, int rc) {
  char reason[200];
  if (rc == NP_FRAME_ETOOBIG) {
    snprintf(reason, sizeof reason, "%s too large: %llu bytes, the limit is %zu",
             c->opts.framing == NP_FRAMING_LINES ? "line" : "message",
             (unsigned long long)c->fr.announced, c->opts.max_message);
    np_conn_end(c, "EMSGSIZE", reason);
  } else {
    np_framer_partial_text(&c->fr, reason, sizeof reason);
    np_conn_end(c, "EPROTO", reason);
  }
}

/* Keeps the unread rest of a read (at most one read buffer) until the hold is released. */
static void keep_rest(np_conn *c, const char *data, size_t n) {
  if (c->kept == NULL && (c->kept = malloc(READ_BUFFER_SIZE)) == NULL) {
    np_conn_end(c, "ENOMEM", "out of memory keeping input");
    return;
  }
  memmove(c->kept, data, n);
  c->kept_len = n;
}

static void feed(np_conn *c, const char *data, size_t len) {
  size_t used = 0;
  c->feeding++;
  int rc = np_framer_feed_some(&c->fr, data, len, on_frame, c, &used);
  c->feeding--;
  if (c->state != C_OPEN) return;
  if (rc < 0) framing_error(c, rc);
  else if (used < len) keep_rest(c, data + used, len - used);
}

static void input_ended(np_conn *c) {
  int rc = np_framer_finish(&c->fr, on_frame, c);
  if (c->state != C_OPEN) return;
  if (rc < 0) {
    framing_error(c, rc);
    return;
  }
  c->input_ended = 1;
  update_reading(c);
  if (c->e->ev.eof == NULL) {
    np_conn_end(c, "EOF", "the peer closed the pipe");
    return;
  }
  set_deadline(c);
  c->e->ev.eof(c);
}

/* Input was held and no longer is: deliver what was kept, then read again. Inside the
 * framer (a frame's event released it) the running feed goes on by itself. */
static void release_input(np_conn *c) {
  if (c->feeding || c->state != C_OPEN) return;
  if (c->kept_len > 0 && !held(c)) {
    size_t n = c->kept_len;
    c->kept_len = 0;
    feed(c, c->kept, n);
    if (c->state != C_OPEN) return;
    if (c->kept_len == 0) {
      free(c->kept);
      c->kept = NULL;
    }
  }
  update_reading(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  np_conn *c = h->data;
  (void)suggested;
  buf->base = c->e->readbuf;
  buf->len = READ_BUFFER_SIZE;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  np_conn *c = s->data;
  if (n > 0) {
    if (c->server) c->server->stats.bytes_in += (uint64_t)n;
    feed(c, buf->base, (size_t)n);
    update_reading(c); /* a hold set by a frame stops reading here */
  } else if (n == UV_EOF || n == UV_EPIPE) {
    /* EPIPE: Windows reports a read on a pipe that the server ended with
     * DisconnectNamedPipe as ERROR_PIPE_NOT_CONNECTED; it is the same end of stream. */
    input_ended(c);
  } else if (n < 0) {
    conn_fail(c, (int)n, "read");
  }
}

static int conn_open(np_conn *c) {
  c->state = C_OPEN;
  np_platform_peer_cred(&c->pipe, &c->cred);
  c->session = np_platform_peer_session(&c->pipe, &c->cred);
  LIST_ADD(c->e->conns, c);
  c->reading = 1;
  return uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

void np_conn_hold(np_conn *c, unsigned reason, int on) {
  unsigned was = c->hold;
  c->hold = on ? (c->hold | reason) : (c->hold & ~reason);
  if (c->hold == was) return;
  if (c->hold) update_reading(c);
  else release_input(c);
}

void np_conn_pause(np_conn *c) { np_conn_hold(c, NP_HOLD_USER, 1); }
void np_conn_resume(np_conn *c) { np_conn_hold(c, NP_HOLD_USER, 0); }

/* ---- writing ---- */

static void on_write(uv_write_t *req, int status);

static int start_write(np_conn *c, np_wout *w) {
  uv_buf_t b = uv_buf_init(w->q.bytes, (unsigned)w->q.len);
  c->out = w;
  int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
  if (rc < 0) c->out = NULL;
  return rc;
}

/* The queue's cost dropped: below half of high_water the host may write again, and
 * input held for it flows again. */
static void after_drain(np_conn *c) {
  if (!c->over_high || c->cost > c->opts.high_water / 2) return;
  c->over_high = 0;
  if (c->e->ev.drained) c->e->ev.drained(c);
  release_input(c);
}

static void on_write(uv_write_t *req, int status) {
  np_wout *w = (np_wout *)req;
  np_conn *c = w->c;
  if (c->state == C_CLOSED) { /* cancelled by the close; counted as lost there */
    wq_free(&w->q);
    free(w);
    return;
  }
  c->out = NULL;
  c->cost -= wq_cost(&w->q);
  if (status < 0) {
    c->failed_bytes += w->q.len;
    c->failed_msgs += w->q.n;
    wq_free(&w->q);
    free(w);
    conn_fail(c, status, "write");
    return;
  }
  if (c->pend.len > 0) { /* all that was written meanwhile, as one write */
    np_wq sent = w->q;
    w->q = c->pend;
    c->pend = sent;
    c->pend.len = c->pend.n = 0;
    int rc = start_write(c, w);
    if (rc < 0) {
      conn_fail(c, rc, "write");
      return;
    }
  } else {
    wq_free(&w->q);
    free(w);
  }
  if (c->state == C_ENDING && queue_empty(c)) {
    close_ending(c, "");
    return;
  }
  after_drain(c);
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

/* Queues what the OS did not take at once: behind the write in flight, or as it. */
static int enqueue(np_conn *c, const uv_buf_t *bufs, int nbufs, size_t skip) {
  if (c->out) {
    size_t before = wq_cost(&c->pend);
    int rc = wq_push(&c->pend, bufs, nbufs, skip);
    if (rc == 0) c->cost += wq_cost(&c->pend) - before;
    return rc;
  }
  np_wout *w = calloc(1, sizeof *w);
  if (w == NULL) return UV_ENOMEM;
  w->c = c;
  int rc = wq_push(&w->q, bufs, nbufs, skip);
  if (rc == 0) rc = start_write(c, w);
  if (rc < 0) {
    wq_free(&w->q);
    free(w);
    return rc;
  }
  c->cost += wq_cost(&w->q);
  return 0;
}

int np_conn_write(np_conn *c, const char *data, size_t len) {
  if (c->state != C_OPEN) return UV_ENOTCONN;
  if (len > UINT32_MAX) return UV_E2BIG;
  if (len == 0 && c->opts.framing == NP_FRAMING_BYTES) return c->over_high;
  char scratch[SMALL_FRAME];
  uv_buf_t bufs[3];
  int nbufs = frame_bufs(c, data, len, scratch, bufs);
  size_t total = 0, done = 0;
  for (int i = 0; i < nbufs; i++) total += bufs[i].len;
  if (c->server) {
    c->server->stats.bytes_out += total;
    c->server->stats.messages_out++;
  }
  if (queue_empty(c)) {
    int r = uv_try_write((uv_stream_t *)&c->pipe, bufs, (unsigned)nbufs);
    if (r >= 0) {
      done = (size_t)r;
    } else if (r != UV_EAGAIN) {
      conn_fail(c, r, "write");
      return r;
    }
  }
  if (done == total) return c->over_high;
  int rc = enqueue(c, bufs, nbufs, done);
  if (rc < 0) {
    conn_fail(c, rc, "write");
    return rc;
  }
  if (c->cost >= c->opts.high_water && !c->over_high) {
    c->over_high = 1;
    update_reading(c); /* a client that does not read gets no more reads from us either */
  }
  return c->over_high;
}

/* ---- flush ---- */

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
  else if (!queue_empty(c)) flush_list(c); /* written meanwhile: wait for the queue again */
  else flush_finished(c);
}

/* 1: the peer has read everything; 0: not yet (an off-thread wait may have started);
 * <0: the peer closed without reading everything. */
static int flush_check(np_conn *c) {
  if (!queue_empty(c) || c->flush_op) return 0;
  long unread = np_platform_unread(&c->pipe);
  if (unread >= 0) return unread == 0;
  if (unread != UV_ENOTSUP) return (int)unread;
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
    if (c->state == C_CLOSED || !c->flush_pending) continue;
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
  if (c->state != C_OPEN && c->state != C_ENDING) return UV_ENOTCONN;
  int rc = flush_check(c);
  if (rc < 0) conn_fail(c, rc, "flush"); /* the peer is gone: so is the connection */
  if (rc != 0) return rc;
  c->flush_pending = 1;
  if (c->flush_op == NULL) flush_list(c);
  return 0;
}

void np_conn_flush_cancel(np_conn *c) {
  if (c->state != C_CLOSED) flush_forget(c);
}

int np_conn_is_open(const np_conn *c) { return c->state == C_OPEN; }

int np_conn_peer(np_conn *c, np_cred *out) {
  *out = c->cred;
  return c->cred.pid < 0 && c->cred.uid < 0 ? UV_ENOTSUP : 0;
}

long np_conn_peer_session(np_conn *c) { return c->session; }

size_t np_conn_queued(const np_conn *c) { return c->cost; }
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
  c->server_end = 1;
  s->stats.accepted++;
  s->stats.active++;
  if (conn_open(c) != 0) {
    close_now(c, "EIO", "could not start reading", 0);
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
