/* Servers: listening (binding, or reclaiming a stale socket file), accepting (by hand on
 * a Unix socket, or from the pipe instances the Windows platform layer creates),
 * max_instances, and running out of descriptors. */
#include "np_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
  s->copts->server = NULL; /* a server that failed to listen has not been closed */
  np__copts_unref(s->copts);
  free(s->path);
  free(s);
}

static void on_listener_closed(uv_handle_t *h) {
  np_server *s = h->data;
  np_engine *e = s->e;
  free(h);
  server_free(s);
  np__handle_gone(e);
}

/* A handle that outlives its server (its data is the engine). */
static void on_spare_handle_closed(uv_handle_t *h) {
  np_engine *e = h->data;
  free(h);
  np__handle_gone(e);
}

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
  c->server_end = 1;
  s->stats.accepted++;
  s->stats.active++;
  if (np__conn_open(c) != 0) {
    np__close_now(c, "EIO", "could not start reading", 0);
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
    if (s->spare == NULL && (s->spare = np__conn_new(s->copts)) == NULL) {
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

/* A client of the platform's instances connected (Windows); fd is its instance. */
static void on_instance(void *arg, int fd) {
  np_server *s = arg;
  np_conn *c = np__conn_new(s->copts);
  if (c == NULL) {
    uv_fs_t req;
    uv_fs_close(s->e->loop, &req, fd, NULL); /* the client sees its pipe close */
    uv_fs_req_cleanup(&req);
    s->stats.rejected++;
    return;
  }
  if (np_platform_instance_open(&c->pipe, fd) != 0) {
    s->stats.rejected++;
    np__conn_discard(c);
    return;
  }
  server_take(s, c);
}

static void on_instances_closed(void *arg) { np__handle_gone(arg); }

void np__server_room(np_server *s) {
  if (s->inst) np_platform_instances_room(s->inst);
}

void np__server_conn_gone(np_server *s) {
  s->stats.active--;
  server_update(s);
  wake_starved(s->e);
}

/* Starts accepting on a poll of the listening socket. */
static int start_accepting(np_server *s) {
  int fd = np_platform_listener_fd(s->listener);
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
  if (s->inst) {
    np_platform_instances_close(s->inst, on_instances_closed, s->e);
    s->inst = NULL;
  }
  if (s->poll) {
    s->poll->data = s->e;
    uv_close((uv_handle_t *)s->poll, on_spare_handle_closed);
    s->poll = NULL;
  }
  s->polling = 0;
  if (s->spare) {
    np__conn_discard(s->spare);
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
  if (s == NULL || (s->path = strdup(path)) == NULL || (s->copts = np__copts_new(e, &opts->conn)) == NULL) {
    if (s) free(s->path);
    free(s);
    return UV_ENOMEM;
  }
  err[0] = '\0';
  s->e = e;
  s->opts = *opts;
  s->copts->server = s;
  if ((s->listener = listener_new(s)) == NULL) {
    np__copts_unref(s->copts);
    free(s->path);
    free(s);
    return UV_ENOMEM;
  }
  int rc = np_platform_instances_start(e->loop, path, opts->max_instances,
                                       opts->conn.framing == NP_FRAMING_MESSAGE, opts->sddl, on_instance,
                                       s, &s->inst, err, errlen);
  if (rc == 0) {
    e->handles++; /* the instances, until on_instances_closed */
    LIST_ADD(e->servers, s);
    *out = s;
    return 0;
  }
  if (rc != UV_ENOTSUP) return server_fail(s, rc, "cannot create pipe", err, errlen);
  rc = bind_or_reclaim(s, path, err, errlen);
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
  s->copts->server = NULL; /* for its connections */
  if (s->have_fid) np_platform_unlink_if_same(s->path, &s->fid);
  server_close_handles(s);
}

const char *np_server_path(const np_server *s) { return s->path; }
np_stats np_server_stats(const np_server *s) { return s->stats; }
void np_server_set_data(np_server *s, void *data) { s->data = data; }
void *np_server_data(const np_server *s) { return s->data; }
