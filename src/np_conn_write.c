/* A connection's output: the write queue, writing with backpressure (high_water,
 * drained), what a close leaves undelivered, and flush (has the peer read it all?). */
#include "np_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- write queue ---- */

/* What a queue costs against high_water: its bytes and one frame end for each frame. */
static size_t wq_cost(const np_wq *q) { return q->len + q->n * sizeof(size_t); }

void np__wq_free(np_wq *q) {
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

/* Queued bytes exist only with the rare part (enqueue makes it first). */
int np__queue_empty(const np_conn *c) { return c->out == NULL && (c->rare == NULL || c->rare->pend.len == 0); }

/* What is still queued at a close: all of pend, and of out what libuv has not written
 * (write_queue_size), with every frame that ends in that part. */
void np__count_lost(const np_conn *c, uint64_t *bytes, uint64_t *msgs) {
  *bytes = *msgs = 0;
  if (c->rare == NULL) return; /* nothing was ever queued */
  *bytes = c->rare->failed_bytes + c->rare->pend.len;
  *msgs = c->rare->failed_msgs + c->rare->pend.n;
  if (c->out == NULL) return;
  const np_wq *q = &c->out->q;
  size_t left = c->pipe.write_queue_size < q->len ? c->pipe.write_queue_size : q->len;
  size_t written = q->len - left;
  *bytes += left;
  for (size_t i = q->n; i > 0 && q->ends[i - 1] > written; i--) (*msgs)++;
}

/* ---- writing ---- */

static void on_write(uv_write_t *req, int status);

/* All of w's frames in one write, or on a message-type pipe one write per frame. */
static int start_write(np_conn *c, np_wout *w) {
  size_t n = c->native ? w->q.n : 1, at = 0;
  free(w->more);
  w->more = NULL;
  if (n > 1 && (w->more = malloc((n - 1) * sizeof *w->more)) == NULL) return UV_ENOMEM;
  w->waiting = 0;
  w->status = 0;
  c->out = w;
  for (size_t i = 0; i < n; i++) {
    size_t end = c->native ? w->q.ends[i] : w->q.len;
    uv_write_t *req = i == 0 ? &w->req : &w->more[i - 1];
    uv_buf_t b = uv_buf_init(w->q.bytes + at, (unsigned)(end - at));
    req->data = w;
    int rc = uv_write(req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc < 0 && w->waiting == 0) {
      c->out = NULL;
      return rc;
    }
    if (rc < 0) { /* the writes under way call back, and on_write reports this */
      w->status = rc;
      break;
    }
    w->waiting++;
    at = end;
  }
  return 0;
}

static void wout_free(np_wout *w) {
  np__wq_free(&w->q);
  free(w->more);
  free(w);
}

/* The queue's cost dropped: below half of high_water the host may write again, and
 * input held for it flows again. */
static void after_drain(np_conn *c) {
  if (!c->over_high || c->rare->cost > c->opts->o.high_water / 2) return;
  c->over_high = 0;
  if (c->opts->e->ev.drained) c->opts->e->ev.drained(c);
  np__release_input(c);
}

/* A write the OS refused: its frames are not known to have arrived. */
static void write_failed(np_conn *c, np_wout *w) {
  c->rare->failed_bytes += w->q.len;
  c->rare->failed_msgs += w->q.n;
  wout_free(w);
}

/* The write in flight is done: what was written meanwhile goes out as one write. */
static int write_pending(np_conn *c, np_wout *w) {
  np_rare *r = c->rare;
  if (r->pend.len == 0) {
    wout_free(w);
    return 0;
  }
  np_wq sent = w->q;
  w->q = r->pend;
  r->pend = sent;
  r->pend.len = r->pend.n = 0;
  int rc = start_write(c, w);
  if (rc < 0) write_failed(c, w); /* else w, with what was pending, leaked uncounted */
  return rc;
}

static void on_write(uv_write_t *req, int status) {
  np_wout *w = req->data;
  np_conn *c = w->c;
  if (status < 0 && w->status == 0) w->status = status;
  if (--w->waiting > 0) return;
  status = w->status;
  if (c->state == C_CLOSED) { /* cancelled by the close; counted as lost there */
    c->out = NULL;
    wout_free(w);
    return;
  }
  c->out = NULL;
  c->rare->cost -= wq_cost(&w->q);
  if (status < 0) {
    write_failed(c, w);
    np__conn_fail(c, status, "write");
    return;
  }
  int rc = write_pending(c, w);
  if (rc < 0) {
    np__conn_fail(c, rc, "write");
    return;
  }
  if (c->state == C_ENDING && np__queue_empty(c)) {
    np__close_ending(c, "");
    return;
  }
  after_drain(c);
}

/* A small frame is copied into one buffer (scratch) so that it goes out in one write
 * rather than a writev of header and payload, which costs the kernel more. */
#define SMALL_FRAME 1024

static int frame_bufs(np_conn *c, const char *data, size_t len, char *scratch, uv_buf_t *bufs) {
  int n = 0;
  if (c->native) { /* the pipe keeps the message's bounds */
    bufs[0] = uv_buf_init((char *)data, (unsigned)len);
    return 1;
  }
  size_t extra = c->framing == NP_FRAMING_BYTES ? 0 : (c->framing == NP_FRAMING_LINES ? 1 : 4);
  if (extra && len + extra <= SMALL_FRAME) {
    size_t at = 0;
    if (c->framing == NP_FRAMING_MESSAGE) {
      np_message_header(scratch, (uint32_t)len);
      at = NP_MESSAGE_HEADER;
    }
    memcpy(scratch + at, data, len);
    if (c->framing == NP_FRAMING_LINES) scratch[len] = '\n';
    bufs[0] = uv_buf_init(scratch, (unsigned)(len + extra));
    return 1;
  }
  if (c->framing == NP_FRAMING_MESSAGE) {
    np_message_header(scratch, (uint32_t)len);
    bufs[n++] = uv_buf_init(scratch, NP_MESSAGE_HEADER);
  }
  bufs[n++] = uv_buf_init((char *)data, (unsigned)len);
  if (c->framing == NP_FRAMING_LINES) bufs[n++] = uv_buf_init("\n", 1);
  return n;
}

/* Queues what the OS did not take at once: behind the write in flight, or as it. The
 * rare part comes first, so that a write that fails later can be counted. */
static int enqueue(np_conn *c, const uv_buf_t *bufs, int nbufs, size_t skip) {
  np_rare *r = np__rare(c);
  if (r == NULL) return UV_ENOMEM;
  if (c->out) {
    size_t before = wq_cost(&r->pend);
    int rc = wq_push(&r->pend, bufs, nbufs, skip);
    if (rc == 0) r->cost += wq_cost(&r->pend) - before;
    return rc;
  }
  np_wout *w = calloc(1, sizeof *w);
  if (w == NULL) return UV_ENOMEM;
  w->c = c;
  int rc = wq_push(&w->q, bufs, nbufs, skip);
  if (rc == 0) rc = start_write(c, w);
  if (rc < 0) {
    wout_free(w);
    return rc;
  }
  r->cost += wq_cost(&w->q);
  return 0;
}

/* Writes what the OS takes at once, when nothing is queued before it: how much, or a
 * negative uv error code. */
static int try_write(np_conn *c, const uv_buf_t *bufs, int nbufs) {
  if (!np__queue_empty(c)) return 0;
  int r = uv_try_write((uv_stream_t *)&c->pipe, bufs, (unsigned)nbufs);
  return r == UV_EAGAIN ? 0 : r;
}

int np_conn_write(np_conn *c, const char *data, size_t len) {
  if (c->state != C_OPEN) return UV_ENOTCONN;
  if (len > UINT32_MAX) return UV_E2BIG;
  if (len == 0 && c->framing == NP_FRAMING_BYTES) return c->over_high;
  char scratch[SMALL_FRAME];
  uv_buf_t bufs[3];
  int nbufs = frame_bufs(c, data, len, scratch, bufs);
  size_t total = 0;
  for (int i = 0; i < nbufs; i++) total += bufs[i].len;
  if (c->opts->server) {
    c->opts->server->stats.bytes_out += total;
    c->opts->server->stats.messages_out++;
  }
  /* A message goes out whole, as one write (libuv 1.44 takes none at once from a
   * Windows pipe anyway). */
  int rc = c->native ? 0 : try_write(c, bufs, nbufs);
  if (rc >= 0 && (size_t)rc == total && !c->native) return c->over_high;
  if (rc >= 0) rc = enqueue(c, bufs, nbufs, (size_t)rc);
  if (rc < 0) {
    np__conn_fail(c, rc, "write");
    return rc;
  }
  if (c->rare->cost >= c->opts->o.high_water && !c->over_high) {
    c->over_high = 1;
    np__update_reading(c); /* a client that does not read gets no more reads from us either */
  }
  return c->over_high;
}

/* ---- flush ---- */

/* The host no longer waits. A conn that the flush poll holds in its own list at this
 * moment (an event of another conn led here) is not in e->flushing: it stays linked,
 * since unlinking it would cut that list, and the poll skips it as no longer pending. */
void np__flush_forget(np_conn *c) {
  np_rare *r = c->rare;
  c->flush_pending = 0;
  if (r == NULL) return; /* never flushed */
  for (np_conn **p = &c->opts->e->flushing; r->flush_listed && *p; p = &(*p)->rare->flush_next) {
    if (*p == c) {
      *p = r->flush_next;
      r->flush_next = NULL;
      r->flush_listed = 0;
      break;
    }
  }
  np_platform_flush_cancel(r->flush_op);
  r->flush_op = NULL;
}

void np__flush_finished(np_conn *c) {
  c->flush_pending = 0;
  if (c->opts->e->ev.flushed) c->opts->e->ev.flushed(c);
}

/* A peer that read everything and then closed has still been flushed: tell the host so
 * before the closed event. Only where the OS counts unread bytes (no thread to wait for). */
void np__flush_at_close(np_conn *c) {
  if (c->flush_pending && np__queue_empty(c) && np_platform_unread(&c->pipe) == 0) np__flush_finished(c);
}

static void on_flush_op(void *arg, int status) {
  np_conn *c = arg;
  c->rare->flush_op = NULL;
  if (status < 0) np__conn_fail(c, status, "flush");
  else if (!np__queue_empty(c)) np__flush_list(c); /* written meanwhile: wait for the queue again */
  else np__flush_finished(c);
}

/* 0 may also mean that an off-thread wait has started. */
int np__flush_check(np_conn *c) {
  if (!np__queue_empty(c) || c->rare->flush_op) return 0;
  long unread = np_platform_unread(&c->pipe);
  if (unread >= 0) return unread == 0;
  if (unread != UV_ENOTSUP) return (int)unread;
  int rc = np_platform_flush_start(c->opts->e->loop, &c->pipe, on_flush_op, c, &c->rare->flush_op);
  return rc == UV_ENOTSUP ? 1 : rc;
}

/* The flush's state is in the rare part: out of memory for it, the flush fails alone. */
int np_conn_flush(np_conn *c) {
  if (c->state != C_OPEN && c->state != C_ENDING) return UV_ENOTCONN;
  if (np__rare(c) == NULL) return UV_ENOMEM;
  int rc = np__flush_check(c);
  if (rc < 0) np__conn_fail(c, rc, "flush"); /* the peer is gone: so is the connection */
  if (rc != 0) return rc;
  c->flush_pending = 1;
  if (c->rare->flush_op == NULL) np__flush_list(c);
  return 0;
}

void np_conn_flush_cancel(np_conn *c) {
  if (c->state != C_CLOSED) np__flush_forget(c);
}
