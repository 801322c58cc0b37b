/* uv_echo: a plain C libuv echo server on a Unix socket, the ceiling for npipe.
 *   uv_echo SOCKET_PATH
 * Reads into one shared buffer, echoes with uv_try_write and queues only what the
 * socket did not take (copied), like a careful C server would. Reading stops while
 * more than 1 MiB waits to be written. SIGTERM/SIGINT: unlink the socket and exit. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#define BUF_SIZE (64 * 1024)
#define HIGH_WATER (1024 * 1024)

static char readbuf[BUF_SIZE];
static const char *path;
static uv_loop_t *loop;

typedef struct {
  uv_pipe_t pipe;
  size_t queued;
  int reading;
} client_t;

typedef struct {
  uv_write_t req;
  client_t *c;
  size_t len;
  char bytes[];
} wreq_t;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h; (void)suggested;
  buf->base = readbuf;
  buf->len = BUF_SIZE;
}

static void on_close(uv_handle_t *h) { free(h->data); }

static void client_close(client_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->pipe)) uv_close((uv_handle_t *)&c->pipe, on_close);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
  wreq_t *w = (wreq_t *)req;
  client_t *c = w->c;
  c->queued -= w->len;
  free(w);
  if (status < 0) { client_close(c); return; }
  if (!c->reading && c->queued <= HIGH_WATER / 2 && !uv_is_closing((uv_handle_t *)&c->pipe)) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  client_t *c = s->data;
  if (n < 0) { client_close(c); return; }
  if (n == 0) return;
  size_t done = 0;
  if (c->queued == 0) {
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
    int r = uv_try_write(s, &b, 1);
    if (r >= 0) done = (size_t)r;
    else if (r != UV_EAGAIN) { client_close(c); return; }
  }
  if (done == (size_t)n) return;
  size_t rest = (size_t)n - done;
  wreq_t *w = malloc(sizeof *w + rest);
  if (!w) { client_close(c); return; }
  memcpy(w->bytes, buf->base + done, rest);
  w->c = c;
  w->len = rest;
  uv_buf_t b = uv_buf_init(w->bytes, (unsigned)rest);
  if (uv_write(&w->req, s, &b, 1, on_write) < 0) { free(w); client_close(c); return; }
  c->queued += rest;
  if (c->queued > HIGH_WATER && c->reading) {
    c->reading = 0;
    uv_read_stop(s);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  client_t *c = calloc(1, sizeof *c);
  if (!c) return;
  uv_pipe_init(loop, &c->pipe, 0);
  c->pipe.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) { client_close(c); return; }
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_signal(uv_signal_t *h, int sig) {
  (void)h; (void)sig;
  unlink(path);
  exit(0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: uv_echo SOCKET_PATH\n");
    return 2;
  }
  path = argv[1];
  signal(SIGPIPE, SIG_IGN);
  loop = uv_default_loop();
  uv_pipe_t server;
  uv_pipe_init(loop, &server, 0);
  unlink(path);
  int r = uv_pipe_bind(&server, path);
  if (r == 0) r = uv_listen((uv_stream_t *)&server, 511, on_connection);
  if (r != 0) {
    fprintf(stderr, "uv_echo: %s: %s\n", path, uv_strerror(r));
    return 1;
  }
  uv_signal_t sigterm, sigint;
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigint, on_signal, SIGINT);
  return uv_run(loop, UV_RUN_DEFAULT);
}
