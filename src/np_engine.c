/* The engine's lifetime, and the timers that every connection of an engine shares:
 * the linger sweep (graceful ends and EOFs that must close by a deadline) and the
 * flush poll. Connections are in np_conn.c and np_conn_write.c, servers in np_server.c. */
#include "np_internal.h"

#include <stdlib.h>

#define FLUSH_POLL_MS 2
#define LINGER_SWEEP_MS 20

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

void np__handle_gone(np_engine *e) {
  if (--e->handles == 0 && e->releasing) free(e);
}

static void on_timer_closed(uv_handle_t *h) { np__handle_gone(h->data); }

static void close_timer(uv_timer_t *t) {
  if (!uv_is_closing((uv_handle_t *)t)) uv_close((uv_handle_t *)t, on_timer_closed);
}

void np_engine_shutdown(np_engine *e) {
  while (e->servers) np_server_close(e->servers);
  while (e->conns) np__close_now(e->conns, "SHUTDOWN", "engine shut down", 0);
  while (e->connecting) np__close_now(e->connecting, "SHUTDOWN", "engine shut down", 0);
  close_timer(&e->flush_timer);
  close_timer(&e->linger_timer);
  if (e->accept_timer_made) close_timer(&e->accept_timer);
  if (e->connect_timer_made) close_timer(&e->connect_timer);
}

void np_engine_free(np_engine *e) { free(e); }

static void release_now(np_engine *e, void **data) {
  if (*data && e->ev.released) e->ev.released(*data);
  *data = NULL;
}

np_conn *np_engine_next_conn(np_engine *e, np_conn *c) { return c ? c->next : e->conns; }

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

/* ---- the linger sweep ---- */

static void on_linger(uv_timer_t *t) {
  np_engine *e = t->data;
  uint64_t now = uv_now(e->loop);
  np_conn *c = e->conns;
  while (c) {
    np_conn *next = c->next; /* closing c takes it off the list */
    if (c->rare && c->rare->deadline && now >= c->rare->deadline) {
      if (c->state == C_ENDING) np__close_ending(c, " within the linger time");
      else np__close_now(c, "EOF", "the peer closed the pipe; its handlers had not finished within the linger time", 1);
    }
    c = next;
  }
  if (e->lingering == 0) uv_timer_stop(t);
}

int np__set_deadline(np_conn *c) {
  np_engine *e = c->opts->e;
  np_rare *r = np__rare(c);
  if (r == NULL) return UV_ENOMEM;
  if (r->deadline) return 0;
  r->deadline = uv_now(e->loop) + c->opts->o.linger_ms;
  if (e->lingering++ == 0) uv_timer_start(&e->linger_timer, on_linger, LINGER_SWEEP_MS, LINGER_SWEEP_MS);
  return 0;
}

/* ---- the flush poll ---- */

/* Polled, because no OS call tells when the peer has consumed a Unix socket's data. */
static void on_flush_poll(uv_timer_t *t) {
  np_engine *e = t->data;
  np_conn *list = e->flushing;
  e->flushing = NULL;
  while (list) {
    np_conn *c = list; /* listed, so it has its rare part */
    list = c->rare->flush_next;
    c->rare->flush_next = NULL;
    c->rare->flush_listed = 0;
    if (c->state == C_CLOSED || !c->flush_pending) continue;
    int rc = np__flush_check(c);
    if (rc < 0) np__conn_fail(c, rc, "flush");
    else if (rc == 1) np__flush_finished(c);
    else if (c->rare->flush_op == NULL) np__flush_list(c);
  }
  if (e->flushing == NULL) {
    uv_timer_stop(t);
    e->flush_timer_on = 0;
  }
}

void np__flush_list(np_conn *c) {
  np_engine *e = c->opts->e;
  if (!c->rare->flush_listed) {
    c->rare->flush_listed = 1;
    c->rare->flush_next = e->flushing;
    e->flushing = c;
  }
  if (!e->flush_timer_on) {
    e->flush_timer.data = e;
    uv_timer_start(&e->flush_timer, on_flush_poll, FLUSH_POLL_MS, FLUSH_POLL_MS);
    e->flush_timer_on = 1;
  }
}
