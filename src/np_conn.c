/* A connection's lifetime and its input: opening (accepted, connected or an open
 * descriptor), reading with holds, the peer's EOF, graceful and immediate ends, and
 * the close. Its output (write queue, flush) is in np_conn_write.c. */
#include "np_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Issue 13 wants a connection's idle memory below luv's: what np_conn holds beyond the
 * libuv pipe is bounded here, on the platform where that was measured, so that it cannot
 * grow back unnoticed (it was 408 bytes; 192 was the target; 160 makes 424 with libuv
 * 1.44's pipe, a 432-byte glibc chunk). Rarely needed state goes in np_rare instead,
 * what a server's connections have in common in np_copts. */
#if defined(__linux__) && defined(__x86_64__)
_Static_assert(sizeof(np_conn) - sizeof(uv_pipe_t) <= 160, "np_conn grew: see issue 13 (idle memory)");
#endif

np_copts *np__copts_new(np_engine *e, const np_conn_opts *o) {
  np_copts *co = malloc(sizeof *co);
  if (co == NULL) return NULL;
  co->o = *o;
  co->e = e;
  co->server = NULL;
  co->refs = 1;
  return co;
}

void np__copts_unref(np_copts *o) {
  if (o && --o->refs == 0) free(o);
}

np_conn *np__conn_new(np_copts *opts) {
  np_engine *e = opts->e;
  np_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->opts = opts;
  opts->refs++;
  c->framing = (uint8_t)opts->o.framing;
  c->id = e->next_id++;
  c->cred.pid = c->cred.uid = c->cred.gid = -1;
  c->session = UV_ENOTSUP;
  c->posix_session = UV_ENOTSUP;
  np_framer_init(&c->fr, opts->o.framing, opts->o.max_message);
  uv_pipe_init(e->loop, &c->pipe, 0);
  c->pipe.data = c;
  e->handles++;
  return c;
}

np_rare *np__rare(np_conn *c) {
  if (c->rare == NULL) c->rare = calloc(1, sizeof *c->rare);
  return c->rare;
}

static void on_conn_closed(uv_handle_t *h) {
  np_conn *c = h->data;
  np_engine *e = c->opts->e;
  if (c->data && e->ev.released) e->ev.released(c->data);
  np_framer_free(&c->fr);
  np__copts_unref(c->opts);
  if (c->rare) {
    np__wq_free(&c->rare->pend);
    free(c->rare->kept);
    free(c->rare->end_why);
    free(c->rare);
  }
  free(c);
  np__handle_gone(e);
}

void np__conn_discard(np_conn *c) {
  c->state = C_CLOSED;
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

void np__close_now(np_conn *c, const char *code, const char *reason, int notify) {
  if (c->state == C_CLOSED) return;
  int was_open = c->state == C_OPEN || c->state == C_ENDING;
  c->state = C_CLOSED;
  np__flush_forget(c);
  if (c->rare && c->rare->deadline) {
    c->opts->e->lingering--;
    c->rare->deadline = 0;
  }
  if (was_open) LIST_DEL(c->opts->e->conns, c);
  else LIST_DEL(c->opts->e->connecting, c);
  if (c->opts->server && was_open) np__server_conn_gone(c->opts->server);
  if (was_open && notify && c->opts->e->ev.closed) c->opts->e->ev.closed(c, code, reason);
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
  /* uv_close has closed the pipe handle (c lives on until on_conn_closed), so its
   * instance is free now; the closed event may have closed the server (server NULL). */
  if (c->opts->server && was_open) np__server_room(c->opts->server);
}

/* Counted when asked rather than kept: in the closed event the queue is as the close
 * found it (libuv cancels the writes after the event). */
void np_conn_undelivered(const np_conn *c, uint64_t *bytes, uint64_t *messages) {
  *bytes = *messages = 0;
  if (c->state == C_CLOSED) np__count_lost(c, bytes, messages);
}

void np__close_ending(np_conn *c, const char *late) {
  const char *code = c->rare->end_why, *reason = code + strlen(code) + 1;
  np__flush_at_close(c);
  if (c->state == C_CLOSED) return; /* the flushed event ended it */
  uint64_t lost_bytes, lost_msgs;
  np__count_lost(c, &lost_bytes, &lost_msgs);
  char text[400];
  if (lost_bytes > 0)
    snprintf(text, sizeof text, "%s; %llu bytes (%llu messages) not delivered%s", reason,
             (unsigned long long)lost_bytes, (unsigned long long)lost_msgs, late);
  else
    snprintf(text, sizeof text, "%s", reason);
  np__close_now(c, code, text, 1);
}

static void feed(np_conn *c, const char *data, size_t len);
static int on_frame(void *ctx, const char *data, size_t len);

static size_t kept_len(const np_conn *c) { return c->rare ? c->rare->kept_len : 0; }

/* A write found the peer gone (EPIPE, ECONNRESET). What it sent before it went may still
 * be in the socket, unread only because the loop had not come round to it: it is
 * delivered before the connection closes, as the loop's read would have, and a last
 * unterminated line with it. Bounded: 16 reads of the engine's buffer at most. Not
 * inside the framer, nor while input is held (kept bytes come first). */
static void read_what_arrived(np_conn *c) {
  if (c->state != C_OPEN || c->input_ended || c->feeding || kept_len(c) > 0 || c->hold) return;
  for (int i = 0; i < 16 && c->state == C_OPEN && kept_len(c) == 0 && !c->hold; i++) {
    long n = np_platform_read_now(&c->pipe, c->opts->e->readbuf, READ_BUFFER_SIZE);
    if (n > 0) {
      if (c->opts->server) c->opts->server->stats.bytes_in += (uint64_t)n;
      feed(c, c->opts->e->readbuf, (size_t)n);
      continue;
    }
    if (n == 0 || n == UV_ECONNRESET) (void)np_framer_finish(&c->fr, on_frame, c);
    return;
  }
}

void np__conn_fail(np_conn *c, int err, const char *what) {
  char reason[160];
  if (c->state == C_OPEN && (err == UV_EPIPE || err == UV_ECONNRESET) && strcmp(what, "write") == 0) {
    read_what_arrived(c);
    if (c->state != C_OPEN) return; /* what it delivered ended the connection */
  }
  /* After the peer's EOF, a failed write means the peer has gone entirely: that is the
   * end of stream it announced, not an I/O fault. */
  if (c->input_ended && (err == UV_EPIPE || err == UV_ECONNRESET)) {
    np__close_now(c, "EOF", "the peer closed the pipe", 1);
    return;
  }
  snprintf(reason, sizeof reason, "%s failed: %s (%s)", what, uv_err_name(err), uv_strerror(err));
  np__close_now(c, uv_err_name(err), reason, 1);
}

/* ---- ends ---- */

/* np_conn_end: closes now when nothing is queued, else once the queue drains or the
 * linger time runs out. */
void np_conn_end(np_conn *c, const char *code, const char *reason) {
  code = code ? code : "DISCONNECTED";
  reason = reason ? reason : "disconnected by the server";
  if (c->state == C_OPEN) np__flush_at_close(c);
  if (c->state == C_CONNECTING || (c->state == C_OPEN && np__queue_empty(c))) {
    np__close_now(c, code, reason, 1);
    return;
  }
  if (c->state != C_OPEN) return;
  /* Something is queued, so c has its rare part (np_rare). Out of memory here, the end
   * is an immediate one. */
  size_t lc = strlen(code), lr = strlen(reason);
  char *why = malloc(lc + lr + 2);
  if (why == NULL || np__rare(c) == NULL) {
    free(why);
    np__close_now(c, code, reason, 1);
    return;
  }
  memcpy(why, code, lc + 1);
  memcpy(why + lc + 1, reason, lr + 1);
  c->rare->end_why = why;
  c->state = C_ENDING;
  np__update_reading(c);
  if (c->opts->o.linger_ms == 0) np__close_ending(c, "");
  else (void)np__set_deadline(c); /* cannot fail: c has its rare part */
}

void np_conn_disconnect(np_conn *c, const char *code, const char *reason) {
  if (c->state == C_OPEN || c->state == C_ENDING) np_platform_disconnect(&c->pipe);
  np__close_now(c, code ? code : "DISCONNECTED", reason ? reason : "disconnected by the server", 1);
}

/* ---- reading ---- */

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
void np__update_reading(np_conn *c) {
  if (c->state == C_CLOSED || c->state == C_CONNECTING) return;
  int want = !held(c) && kept_len(c) == 0 && !c->input_ended;
  if (want == (int)c->reading) return;
  c->reading = want;
  if (want) uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  else uv_read_stop((uv_stream_t *)&c->pipe);
}

static int on_frame(void *ctx, const char *data, size_t len) {
  np_conn *c = ctx;
  if (c->opts->server) c->opts->server->stats.messages_in++;
  c->opts->e->ev.frame(c, data, len);
  return held(c); /* stop: closed, ending, or held (then the rest is kept) */
}

/* A peer that breaks the framing gets no more frames, and still what was written to it. */
static void framing_error(np_conn *c, int rc) {
  char reason[200];
  if (rc == NP_FRAME_ETOOBIG) {
    snprintf(reason, sizeof reason, "%s too large: %llu bytes, the limit is %zu",
             c->framing == NP_FRAMING_LINES ? "line" : "message",
             (unsigned long long)c->fr.announced, c->fr.max_message);
    np_conn_end(c, "EMSGSIZE", reason);
  } else {
    np_framer_partial_text(&c->fr, reason, sizeof reason);
    np_conn_end(c, "EPROTO", reason);
  }
}

/* Keeps the unread rest of a read (at most one read buffer) until the hold is released. */
static void keep_rest(np_conn *c, const char *data, size_t n) {
  np_rare *r = np__rare(c);
  if (r == NULL || (r->kept == NULL && (r->kept = malloc(READ_BUFFER_SIZE)) == NULL)) {
    np_conn_end(c, "ENOMEM", "out of memory keeping input");
    return;
  }
  memmove(r->kept, data, n);
  r->kept_len = n;
}

static void feed(np_conn *c, const char *data, size_t len) {
  size_t used = 0;
  uint8_t was = c->feeding; /* a flag: nested feeds leave it set */
  c->feeding = 1;
  int rc = np_framer_feed_some(&c->fr, data, len, on_frame, c, &used);
  c->feeding = was;
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
  np__update_reading(c);
  /* Out of memory for the deadline, the engine ends it as if the host had no eof event. */
  if (c->opts->e->ev.eof == NULL || np__set_deadline(c) < 0) {
    np_conn_end(c, "EOF", "the peer closed the pipe");
    return;
  }
  c->opts->e->ev.eof(c);
}

/* Inside the framer (a frame's event released the hold) the running feed goes on by
 * itself. */
void np__release_input(np_conn *c) {
  if (c->feeding || c->state != C_OPEN) return;
  np_rare *r = c->rare;
  if (kept_len(c) > 0 && !held(c)) {
    size_t n = r->kept_len;
    r->kept_len = 0;
    feed(c, r->kept, n);
    if (c->state != C_OPEN) return;
    if (r->kept_len == 0) {
      free(r->kept);
      r->kept = NULL;
    }
  }
  np__update_reading(c);
}

/* A message-type pipe read in byte read mode: a read never goes past the message at
 * the head of the pipe, so its end is a message's end. The read buffer keeps room
 * before the body for the framer's headers, which on_read passes before a message's
 * first bytes: two of them when an empty message was at the head (see native_read). */
#define NATIVE_ROOM (2 * NP_MESSAGE_HEADER)

/* c has its rare part (np__conn_open made it). */
static void native_alloc(np_conn *c, uv_buf_t *buf) {
  char *body = c->opts->e->readbuf + NATIVE_ROOM;
  size_t room = READ_BUFFER_SIZE - NATIVE_ROOM;
  np_rare *r = c->rare;
  c->msg_head = 0;
  if (r->msg_left == 0) {
    long left = np_platform_message_left(&c->pipe);
    if (left < 0) {
      r->msg_err = (int)left;
      *buf = uv_buf_init(body, 0); /* libuv reports UV_ENOBUFS to on_read */
      return;
    }
    r->msg_left = (size_t)left;
    c->msg_head = 1;
  }
  size_t want = r->msg_left < room ? r->msg_left : room;
  *buf = uv_buf_init(body, (unsigned)(want ? want : 1)); /* libuv takes a 0 as UV_ENOBUFS */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  np_conn *c = h->data;
  (void)suggested;
  if (c->native) {
    native_alloc(c, buf);
    return;
  }
  buf->base = c->opts->e->readbuf;
  buf->len = READ_BUFFER_SIZE;
}

/* An empty message at the head of the pipe cannot be read alone (libuv takes a
 * zero-length buffer as UV_ENOBUFS), and a read in byte read mode goes on into the next
 * message: then the bytes read start that message, whose rest PeekNamedPipe tells. */
static void native_read(np_conn *c, size_t n, char *body) {
  char *at = body;
  size_t len = n;
  np_rare *r = c->rare;
  if (c->msg_head) {
    size_t total = r->msg_left;
    if (total == 0 && n > 0) { /* an empty message, then n bytes of the next */
      long rest = np_platform_message_left(&c->pipe);
      total = n + (rest > 0 ? (size_t)rest : 0);
      r->msg_left = total;
      np_message_header(body - 2 * NP_MESSAGE_HEADER, 0);
      at -= NP_MESSAGE_HEADER; /* the empty message's header, then this one's */
      len += NP_MESSAGE_HEADER;
    }
    np_message_header(body - NP_MESSAGE_HEADER, (uint32_t)total);
    at -= NP_MESSAGE_HEADER;
    len += NP_MESSAGE_HEADER;
    c->msg_head = 0;
  }
  r->msg_left -= n < r->msg_left ? n : r->msg_left;
  if (c->opts->server) c->opts->server->stats.bytes_in += (uint64_t)n;
  if (len == 0) return;
  feed(c, at, len);
  np__update_reading(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  np_conn *c = s->data;
  if (c->native && n >= 0) {
    native_read(c, (size_t)n, buf->base);
  } else if (c->native && n == UV_ENOBUFS && c->rare->msg_err) {
    np__conn_fail(c, c->rare->msg_err, "read");
  } else if (n > 0) {
    if (c->opts->server) c->opts->server->stats.bytes_in += (uint64_t)n;
    feed(c, buf->base, (size_t)n);
    np__update_reading(c); /* a hold set by a frame stops reading here */
  } else if (n == UV_EOF || n == UV_EPIPE) {
    /* EPIPE: Windows reports a read on a pipe that the server ended with
     * DisconnectNamedPipe as ERROR_PIPE_NOT_CONNECTED; it is the same end of stream. */
    input_ended(c);
  } else if (n < 0) {
    /* ECONNRESET: the peer closed with what this side sent unread. Everything it sent
     * has arrived, so its last unterminated line is delivered first, as at EOF (an
     * incomplete message is not reported over the reset). */
    if (n == UV_ECONNRESET) (void)np_framer_finish(&c->fr, on_frame, c);
    if (c->state == C_OPEN) np__conn_fail(c, (int)n, "read");
  }
}

int np__conn_open(np_conn *c) {
  c->state = C_OPEN;
  c->native = c->framing == NP_FRAMING_MESSAGE && np_platform_message_pipe(&c->pipe);
  np_platform_peer_cred(&c->pipe, &c->cred);
  np_platform_peer_sessions(&c->pipe, &c->cred, &c->session, &c->posix_session);
  LIST_ADD(c->opts->e->conns, c);
  if (c->native && np__rare(c) == NULL) return UV_ENOMEM; /* for msg_left */
  c->reading = 1;
  return uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* The NP_HOLD_* reasons fit the byte np_conn keeps them in. */
void np_conn_hold(np_conn *c, unsigned reason, int on) {
  unsigned was = c->hold;
  c->hold = (uint8_t)(on ? (c->hold | reason) : (c->hold & ~reason));
  if (c->hold == was) return;
  if (c->hold) np__update_reading(c);
  else np__release_input(c);
}

void np_conn_pause(np_conn *c) { np_conn_hold(c, NP_HOLD_USER, 1); }
void np_conn_resume(np_conn *c) { np_conn_hold(c, NP_HOLD_USER, 0); }

/* ---- a client's end ---- */

static void connect_finished(np_conn *c, int status) {
  LIST_DEL(c->opts->e->connecting, c);
  if (status == 0) status = np__conn_open(c);
  if (status < 0) {
    if (c->state == C_OPEN) LIST_DEL(c->opts->e->conns, c); /* np__conn_open failed */
    c->state = C_CLOSED;
    if (c->opts->e->ev.connected) c->opts->e->ev.connected(c, status);
    np__conn_discard(c);
    return;
  }
  if (c->opts->e->ev.connected) c->opts->e->ev.connected(c, 0);
}

static void on_connect(uv_connect_t *req, int status) {
  np_conn *c = req->handle->data;
  free(req);
  if (c->state == C_CLOSED) return; /* given up while connecting */
  connect_finished(c, status);
}

/* Client ends the platform opened at once (or could not) get their connected event
 * here, from the loop, as uv_pipe_connect's would come. An event may connect or close
 * others, so the list is searched again after each. */
static void on_connect_timer(uv_timer_t *t) {
  np_engine *e = t->data;
  for (;;) {
    np_conn *c = e->connecting;
    while (c && !c->connect_done) c = c->next;
    if (c == NULL) return;
    c->connect_done = 0;
    connect_finished(c, c->connect_rc);
  }
}

/* 0: the platform opened (or refused) c's end at once; UV_ENOTSUP: connect through libuv. */
static int connect_now(np_engine *e, np_conn *c, const char *path) {
  int rc = np_platform_connect(&c->pipe, path);
  if (rc == UV_ENOTSUP) return rc;
  c->connect_rc = (int16_t)(rc < INT16_MIN ? UV_UNKNOWN : rc);
  c->connect_done = 1;
  if (!e->connect_timer_made) {
    uv_timer_init(e->loop, &e->connect_timer);
    e->connect_timer.data = e;
    e->connect_timer_made = 1;
    e->handles++;
  }
  uv_timer_start(&e->connect_timer, on_connect_timer, 0, 0);
  return 0;
}

/* A client's end has options of its own (a reference that only it holds). */
static np_conn *conn_new_own(np_engine *e, const np_conn_opts *opts) {
  np_copts *o = np__copts_new(e, opts);
  np_conn *c = o ? np__conn_new(o) : NULL;
  np__copts_unref(o);
  return c;
}

int np_conn_connect(np_engine *e, const char *path, const np_conn_opts *opts, np_conn **out) {
  uv_connect_t *req = malloc(sizeof *req);
  np_conn *c = req ? conn_new_own(e, opts) : NULL;
  if (c == NULL) {
    free(req);
    return UV_ENOMEM;
  }
  c->state = C_CONNECTING;
  LIST_ADD(e->connecting, c);
  if (connect_now(e, c, path) == 0) free(req);
  else uv_pipe_connect(req, &c->pipe, path, on_connect);
  *out = c;
  return 0;
}

int np_conn_open_fd(np_engine *e, int fd, const np_conn_opts *opts, np_conn **out) {
  uv_handle_type kind = uv_guess_handle(fd);
  /* epoll cannot watch regular files (libuv would abort), so only streams are taken */
  if (kind != UV_NAMED_PIPE && kind != UV_TTY && kind != UV_TCP) return UV_EINVAL;
  np_conn *c = conn_new_own(e, opts);
  if (c == NULL) return UV_ENOMEM;
  int rc = uv_pipe_open(&c->pipe, fd);
  if (rc == 0) rc = np__conn_open(c);
  if (rc < 0) {
    if (c->state == C_OPEN) LIST_DEL(e->conns, c);
    np__conn_discard(c);
    return rc;
  }
  *out = c;
  return 0;
}

/* ---- what the host asks of a connection ---- */

int np_conn_is_open(const np_conn *c) { return c->state == C_OPEN; }

int np_conn_peer(np_conn *c, np_cred *out) {
  *out = c->cred;
  return c->cred.pid < 0 && c->cred.uid < 0 ? UV_ENOTSUP : 0;
}

long np_conn_peer_session(np_conn *c) { return c->session; }
long np_conn_peer_posix_session(np_conn *c) { return c->posix_session; }

size_t np_conn_queued(const np_conn *c) { return c->rare ? c->rare->cost : 0; }
uint64_t np_conn_id(const np_conn *c) { return c->id; }
void np_conn_set_data(np_conn *c, void *data) { c->data = data; }
void *np_conn_data(const np_conn *c) { return c->data; }
