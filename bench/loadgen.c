/* loadgen: a load generator for any Unix-socket echo server, by socket path.
 *
 *   loadgen --path SOCK --mode pingpong|stream|connrate|idle [options]
 *
 * One thread, one epoll loop, non-blocking sockets. Every echoed byte is compared
 * with what was sent. Each run is bounded in time and prints one line of key=value pairs.
 *
 * Modes
 *   pingpong  --conns C connections; each sends one frame of --size S bytes and waits for the
 *             whole echo before sending the next. Figure: round trips/s.
 *   stream    --conns C connections; each keeps up to --window W bytes in flight (frames of
 *             --size S pipelined). Figure: MB/s echoed (one direction, payload bytes).
 *   connrate  --workers N concurrent slots; each connects, does one round trip of S bytes,
 *             closes, again. Figure: connections/s.
 *   idle      opens --conns N connections (one verified round trip each), holds them for
 *             --seconds, reports the server's RSS and (RSS at N - RSS at 0) / N.
 *
 * In every mode the connections are first set up (connect + one verified round trip each, at
 * most --ramp of them in progress at once) so the server has accepted them all before the
 * clock starts; then --warmup seconds of load are not counted; then --seconds are measured.
 *
 * --framing message: every frame is a 4-byte big-endian length then the payload, and the echo
 *   must come back framed the same way (which a plain byte echo also does).
 * --pid PID: the server's pid; its utime+stime (/proc/PID/stat) over the measured period gives
 *   CPU per operation, and VmRSS (/proc/PID/status) its memory.
 * --tag "k=v ...": copied at the start of the output line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PATLEN 1048573u /* pattern period (prime, so consecutive frames differ) */
#define RBUF (256 * 1024)
#define HDR 4

enum { M_PINGPONG, M_STREAM, M_CONNRATE, M_IDLE };
static const char *mode_names[] = { "pingpong", "stream", "connrate", "idle" };

/* ---- options ---- */
static const char *opt_path;
static int opt_mode = M_PINGPONG;
static int opt_conns = 1;
static size_t opt_size = 64;
static double opt_seconds = 3.0;
static double opt_warmup = 0.3;
static double opt_setup_timeout = 60.0;
static int opt_pid = 0;
static int opt_message = 0;
static size_t opt_window = 256 * 1024;
static int opt_workers = 4;
static int opt_ramp = 256;
static const char *opt_tag = "";

/* ---- state ---- */
static unsigned char *pat;   /* PATLEN + size bytes: pat[i] == pat[i % PATLEN] */
static int epfd;
static uint64_t t_measure_start, t_measure_end, t_setup_deadline;
static int measuring;        /* 0 = setup, 1 = warmup, 2 = measuring, 3 = over */
static uint64_t ops, payload_bytes, errors, connect_retries;
static char first_error[256];
static uint32_t *lat;        /* latencies in ns (clamped) of measured operations */
static size_t nlat, caplat;

typedef struct conn {
  int fd;
  int idx;
  int open;        /* fd is connected and in epoll */
  int dead;        /* failed: counted in errors, never reused (except connrate slots) */
  int out_armed;   /* EPOLLOUT registered */
  int setup_done;  /* first verified round trip finished */
  uint64_t base;   /* pattern offset of frame 0 */
  uint64_t sk, rk; /* frames started (sending) / completed (received) */
  size_t spos, rpos; /* position inside the current frame */
  uint64_t sbytes, rbytes;
  uint64_t max_frames; /* frames this connection may start (setup: 1) */
  uint64_t *ts;    /* ring: when frame k started sending */
  unsigned ring;
  uint64_t t_conn; /* connrate: when connect started */
  struct conn *retry_next;
} conn;

static conn *conns;
static int nconns;
static size_t frame_len;
static int setup_pending;    /* connections whose setup round trip has not finished */
static int setup_active;     /* connections connected and doing their setup round trip */
static int setup_next;       /* next connection index to connect during setup */
static conn *retry_list;

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loadgen: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

static void note_error(conn *c, const char *fmt, ...) {
  errors++;
  if (first_error[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(first_error, sizeof first_error, "conn %d: ", c ? c->idx : -1);
    vsnprintf(first_error + n, sizeof first_error - (size_t)n, fmt, ap);
    va_end(ap);
  }
}

/* ---- /proc ---- */
static int read_cpu_ticks(int pid, unsigned long long *out) {
  char p[64], buf[2048];
  snprintf(p, sizeof p, "/proc/%d/stat", pid);
  FILE *f = fopen(p, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *s = strrchr(buf, ')'); /* comm may hold spaces */
  if (!s) return -1;
  s += 2;
  /* fields from 3 (state) on; utime is 14, stime 15 */
  unsigned long long ut = 0, st = 0;
  int field = 3;
  char *tok = strtok(s, " ");
  while (tok) {
    if (field == 14) ut = strtoull(tok, NULL, 10);
    if (field == 15) { st = strtoull(tok, NULL, 10); break; }
    field++;
    tok = strtok(NULL, " ");
  }
  *out = ut + st;
  return 0;
}

/* busy ticks of the whole machine (user+nice+system+irq+softirq+steal), for the CPU
 * that other processes took during the run */
static unsigned long long read_busy_ticks(void) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return 0;
  unsigned long long v[8] = { 0 };
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                 &v[5], &v[6], &v[7]);
  fclose(f);
  if (n < 8) return 0;
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
}

static long read_rss_kb(int pid) {
  char p[64], line[256];
  snprintf(p, sizeof p, "/proc/%d/status", pid);
  FILE *f = fopen(p, "r");
  if (!f) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) { kb = strtol(line + 6, NULL, 10); break; }
  fclose(f);
  return kb;
}

/* ---- frames ---- */
static inline const unsigned char *payload_at(conn *c, uint64_t k, size_t off) {
  return pat + (size_t)((c->base + k * (uint64_t)opt_size) % PATLEN) + off;
}

static void hdr_bytes(unsigned char h[HDR]) {
  uint32_t n = (uint32_t)opt_size;
  h[0] = (unsigned char)(n >> 24); h[1] = (unsigned char)(n >> 16);
  h[2] = (unsigned char)(n >> 8);  h[3] = (unsigned char)n;
}

static void push_latency(uint64_t ns) {
  if (nlat == caplat) {
    caplat = caplat ? caplat * 2 : 1 << 16;
    lat = realloc(lat, caplat * sizeof *lat);
    if (!lat) fatal("out of memory");
  }
  lat[nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void arm_out(conn *c, int on) {
  if (c->out_armed == on || !c->open) return;
  struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c };
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->out_armed = on;
}

static void conn_close(conn *c) {
  if (c->fd >= 0) {
    if (c->open) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
  }
  c->fd = -1;
  c->open = 0;
  c->out_armed = 0;
}

static void conn_fail(conn *c) {
  if (!c->setup_done) { setup_pending--; setup_active--; }
  c->dead = 1;
  conn_close(c);
}

static int may_send(conn *c) {
  if (c->dead || !c->open) return 0;
  if (c->spos == 0) { /* about to start a new frame */
    if (c->sk >= c->max_frames) return 0;
    if (c->setup_done && (measuring == 0 || measuring == 3 || opt_mode == M_IDLE)) return 0;
    if (opt_mode == M_STREAM && c->setup_done) {
      if (c->sk - c->rk >= c->ring) return 0;
      if (c->sbytes - c->rbytes + frame_len > opt_window && c->sk > c->rk) return 0;
    } else if (c->sk > c->rk) {
      return 0;
    }
  }
  return 1;
}

static void pump_send(conn *c) {
  unsigned char h[HDR];
  hdr_bytes(h);
  while (may_send(c)) {
    if (c->spos == 0) c->ts[c->sk % c->ring] = now_ns();
    struct iovec iov[2];
    int n = 0;
    size_t hl = opt_message ? HDR : 0;
    if (c->spos < hl) iov[n++] = (struct iovec){ h + c->spos, hl - c->spos };
    size_t poff = c->spos > hl ? c->spos - hl : 0;
    iov[n++] = (struct iovec){ (void *)payload_at(c, c->sk, poff), opt_size - poff };
    ssize_t w = writev(c->fd, iov, n);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) { arm_out(c, 1); return; }
      if (errno == EINTR) continue;
      note_error(c, "write: %s", strerror(errno));
      conn_fail(c);
      return;
    }
    c->spos += (size_t)w;
    c->sbytes += (uint64_t)w;
    if (c->spos == frame_len) { c->spos = 0; c->sk++; }
  }
  arm_out(c, 0);
}

static void frame_done(conn *c, uint64_t t) {
  uint64_t k = c->rk;
  c->rk++;
  if (!c->setup_done) {
    c->setup_done = 1;
    setup_pending--;
    setup_active--;
    c->max_frames = opt_mode == M_CONNRATE ? 1 : UINT64_MAX;
    return;
  }
  if (measuring == 2) {
    ops++;
    payload_bytes += opt_size;
    push_latency(t - (opt_mode == M_CONNRATE ? c->t_conn : c->ts[k % c->ring]));
  }
}

/* Compares received bytes with the expected echo; returns -1 on a mismatch. */
static int consume(conn *c, const unsigned char *p, size_t n) {
  size_t hl = opt_message ? HDR : 0;
  unsigned char h[HDR];
  hdr_bytes(h);
  uint64_t t = 0;
  while (n > 0) {
    if (c->rk >= c->sk && !(c->rk == c->sk && c->spos > 0)) {
      note_error(c, "got %zu bytes that were never sent", n);
      return -1;
    }
    size_t take;
    if (c->rpos < hl) {
      take = hl - c->rpos;
      if (take > n) take = n;
      if (memcmp(p, h + c->rpos, take) != 0) {
        note_error(c, "frame %" PRIu64 ": bad message header", c->rk);
        return -1;
      }
    } else {
      size_t off = c->rpos - hl;
      take = opt_size - off;
      if (take > n) take = n;
      if (memcmp(p, payload_at(c, c->rk, off), take) != 0) {
        note_error(c, "frame %" PRIu64 ": echoed bytes differ from those sent (offset %zu)", c->rk, off);
        return -1;
      }
    }
    p += take;
    n -= take;
    c->rpos += take;
    c->rbytes += take;
    if (c->rbytes > c->sbytes) {
      note_error(c, "more bytes echoed than sent");
      return -1;
    }
    if (c->rpos == frame_len) {
      c->rpos = 0;
      if (!t) t = now_ns();
      frame_done(c, t);
    }
  }
  return 0;
}

static unsigned char rbuf[RBUF];

static void connrate_restart(conn *c);

static void on_readable(conn *c) {
  for (int i = 0; i < 64; i++) {
    ssize_t n = read(c->fd, rbuf, sizeof rbuf);
    if (n > 0) {
      if (consume(c, rbuf, (size_t)n) < 0) { conn_fail(c); return; }
      if ((size_t)n < sizeof rbuf) break;
      continue;
    }
    if (n == 0) {
      note_error(c, "the server closed the connection");
      conn_fail(c);
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    if (errno == EINTR) continue;
    note_error(c, "read: %s", strerror(errno));
    conn_fail(c);
    return;
  }
  if (opt_mode == M_CONNRATE && measuring >= 1 && c->setup_done && c->rk == c->sk && c->rpos == 0) {
    connrate_restart(c);
    return;
  }
  pump_send(c);
}

/* ---- connecting ---- */
static struct sockaddr_un addr;

/* 1 connected, 0 try again later (backlog full), -1 failed */
static int conn_connect(conn *c) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    note_error(c, "socket: %s", strerror(errno));
    return -1;
  }
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    if (e == EAGAIN) { connect_retries++; return 0; }
    note_error(c, "connect: %s", strerror(e));
    return -1;
  }
  c->fd = fd;
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    note_error(c, "epoll_ctl: %s", strerror(errno));
    close(fd);
    c->fd = -1;
    return -1;
  }
  c->open = 1;
  c->out_armed = 0;
  return 1;
}

/* Connects c now, or queues it to try again (backlog full), or gives it up. */
static void connect_or_retry(conn *c) {
  int r = conn_connect(c);
  if (r == 0) {
    c->retry_next = retry_list;
    retry_list = c;
  } else if (r < 0) {
    conn_fail(c);
  } else {
    pump_send(c);
  }
}

static void retry_connects(void) {
  conn *list = retry_list;
  retry_list = NULL;
  while (list) {
    conn *c = list;
    list = c->retry_next;
    c->retry_next = NULL;
    connect_or_retry(c);
  }
}

static void conn_reset_counters(conn *c) {
  c->sk = c->rk = 0;
  c->spos = c->rpos = 0;
  c->sbytes = c->rbytes = 0;
}

/* connrate: the slot's round trip is done; close and connect again. */
static void connrate_restart(conn *c) {
  conn_close(c);
  if (measuring == 3) return;
  conn_reset_counters(c);
  c->base = (c->base + 7919) % PATLEN;
  c->t_conn = now_ns();
  connect_or_retry(c);
}

/* Setup: connect connections (at most opt_ramp in progress) with one verified round trip. */
static void setup_step(void) {
  retry_connects();
  while (setup_next < nconns && setup_active < opt_ramp) {
    setup_active++;
    connect_or_retry(&conns[setup_next++]);
  }
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (nlat == 0) return 0;
  size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
  return lat[i] / 1000.0;
}

static void raise_nofile(int need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t want = (rlim_t)need + 64;
  if (rl.rlim_cur >= want) return;
  if (rl.rlim_max < want) {
    rl.rlim_max = want;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return;
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < want)
    fprintf(stderr, "loadgen: warning: RLIMIT_NOFILE is %llu, %d connections need more\n",
            (unsigned long long)rl.rlim_cur, need);
}

static void usage(void) {
  fprintf(stderr,
    "usage: loadgen --path SOCK [--mode pingpong|stream|connrate|idle] [--conns N] [--size BYTES]\n"
    "               [--seconds S] [--warmup S] [--pid SERVER_PID] [--framing bytes|message]\n"
    "               [--window BYTES] [--workers N] [--ramp N] [--setup-timeout S] [--tag 'k=v ...']\n");
  exit(2);
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "loadgen: hard time limit reached, giving up\n";
  if (write(2, msg, sizeof msg - 1)) {}
  _exit(3);
}

int main(int argc, char **argv) {
  static struct option lo[] = {
    { "path", 1, 0, 'p' }, { "mode", 1, 0, 'm' }, { "conns", 1, 0, 'c' }, { "size", 1, 0, 's' },
    { "seconds", 1, 0, 't' }, { "warmup", 1, 0, 'W' }, { "pid", 1, 0, 'P' }, { "framing", 1, 0, 'f' },
    { "window", 1, 0, 'w' }, { "workers", 1, 0, 'k' }, { "ramp", 1, 0, 'r' },
    { "setup-timeout", 1, 0, 'T' }, { "tag", 1, 0, 'g' }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
  int ch;
  while ((ch = getopt_long(argc, argv, "p:m:c:s:t:W:P:f:w:k:r:T:g:h", lo, NULL)) != -1) {
    switch (ch) {
    case 'p': opt_path = optarg; break;
    case 'm':
      if (!strcmp(optarg, "pingpong")) opt_mode = M_PINGPONG;
      else if (!strcmp(optarg, "stream")) opt_mode = M_STREAM;
      else if (!strcmp(optarg, "connrate")) opt_mode = M_CONNRATE;
      else if (!strcmp(optarg, "idle")) opt_mode = M_IDLE;
      else usage();
      break;
    case 'c': opt_conns = atoi(optarg); break;
    case 's': opt_size = strtoul(optarg, NULL, 10); break;
    case 't': opt_seconds = atof(optarg); break;
    case 'W': opt_warmup = atof(optarg); break;
    case 'P': opt_pid = atoi(optarg); break;
    case 'f':
      if (!strcmp(optarg, "message")) opt_message = 1;
      else if (!strcmp(optarg, "bytes")) opt_message = 0;
      else usage();
      break;
    case 'w': opt_window = strtoul(optarg, NULL, 10); break;
    case 'k': opt_workers = atoi(optarg); break;
    case 'r': opt_ramp = atoi(optarg); break;
    case 'T': opt_setup_timeout = atof(optarg); break;
    case 'g': opt_tag = optarg; break;
    default: usage();
    }
  }
  if (!opt_path || opt_size == 0 || opt_size > 16 * 1024 * 1024 || opt_seconds <= 0) usage();
  if (strlen(opt_path) >= sizeof addr.sun_path) fatal("socket path too long");
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, opt_path);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, on_alarm);
  alarm((unsigned)(opt_setup_timeout + opt_warmup + opt_seconds + 30));

  nconns = opt_mode == M_CONNRATE ? opt_workers : opt_conns;
  if (nconns < 1) usage();
  raise_nofile(nconns + 16);
  frame_len = (opt_message ? HDR : 0) + opt_size;
  if (opt_window < frame_len) opt_window = frame_len;

  pat = malloc(PATLEN + opt_size);
  if (!pat) fatal("out of memory");
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < PATLEN; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    pat[i] = (unsigned char)(x >> 32);
  }
  for (size_t i = 0; i < opt_size; i++) pat[PATLEN + i] = pat[i % PATLEN];

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) fatal("epoll_create1: %s", strerror(errno));
  conns = calloc((size_t)nconns, sizeof *conns);
  if (!conns) fatal("out of memory");
  unsigned ring = opt_mode == M_STREAM ? (unsigned)(opt_window / frame_len + 2) : 1;
  for (int i = 0; i < nconns; i++) {
    conn *c = &conns[i];
    c->fd = -1;
    c->idx = i;
    c->base = ((uint64_t)i * 104729u) % PATLEN;
    c->max_frames = 1;
    c->ring = ring;
    c->ts = calloc(ring, sizeof *c->ts);
    if (!c->ts) fatal("out of memory");
  }

  long rss0 = opt_pid ? read_rss_kb(opt_pid) : -1;
  if (opt_pid && rss0 < 0) fatal("cannot read /proc/%d/status", opt_pid);

  /* setup phase */
  uint64_t t0 = now_ns();
  t_setup_deadline = t0 + (uint64_t)(opt_setup_timeout * 1e9);
  setup_pending = nconns;
  struct epoll_event evs[512];
  while (setup_pending > 0) {
    setup_step();
    if (setup_pending == 0) break;
    if (now_ns() > t_setup_deadline) {
      note_error(NULL, "setup timed out with %d connections not established", setup_pending);
      errors += (uint64_t)setup_pending - 1;
      break;
    }
    int n = epoll_wait(epfd, evs, 512, retry_list ? 1 : 100);
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (c->dead || !c->open) continue;
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
      else if (evs[i].events & EPOLLOUT) pump_send(c);
    }
  }
  double setup_s = (double)(now_ns() - t0) / 1e9;
  int established = 0;
  for (int i = 0; i < nconns; i++) established += conns[i].setup_done && !conns[i].dead;

  /* load: warmup then measure */
  unsigned long long cpu0 = 0, cpu1 = 0;
  double self0 = 0, self1 = 0;
  unsigned long long busy0 = 0, busy1 = 0;
  long rss_mid = -1;
  uint64_t t_start = now_ns();
  t_measure_start = t_start + (uint64_t)(opt_warmup * 1e9);
  t_measure_end = t_measure_start + (uint64_t)(opt_seconds * 1e9);
  measuring = 1;
  if (opt_mode != M_IDLE) {
    for (int i = 0; i < nconns; i++) {
      conn *c = &conns[i];
      if (c->dead) continue;
      if (opt_mode == M_CONNRATE) connrate_restart(c);
      else pump_send(c);
    }
  }
  if (opt_warmup <= 0) {
    measuring = 2;
    self0 = self_cpu_s();
    busy0 = read_busy_ticks();
    if (opt_pid) read_cpu_ticks(opt_pid, &cpu0);
  }
  for (;;) {
    uint64_t t = now_ns();
    if (measuring == 1 && t >= t_measure_start) {
      measuring = 2;
      t_measure_start = t;
      t_measure_end = t + (uint64_t)(opt_seconds * 1e9);
      self0 = self_cpu_s();
      busy0 = read_busy_ticks();
      if (opt_pid) read_cpu_ticks(opt_pid, &cpu0);
    }
    if (measuring == 2 && t >= t_measure_end) {
      t_measure_end = t;
      measuring = 3;
      self1 = self_cpu_s();
      busy1 = read_busy_ticks();
      if (opt_pid) { read_cpu_ticks(opt_pid, &cpu1); rss_mid = read_rss_kb(opt_pid); }
      break;
    }
    retry_connects();
    uint64_t until = measuring == 1 ? t_measure_start : t_measure_end;
    int ms = (int)((until - t) / 1000000) + 1;
    if (retry_list && ms > 1) ms = 1;
    int n = epoll_wait(epfd, evs, 512, ms);
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (c->dead || !c->open) continue;
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
      else if (evs[i].events & EPOLLOUT) pump_send(c);
    }
  }
  double secs = (double)(t_measure_end - t_measure_start) / 1e9;

  /* idle mode: check every held connection is still alive (no EOF or error pending) */
  if (opt_mode == M_IDLE) {
    int n;
    while ((n = epoll_wait(epfd, evs, 512, 0)) > 0)
      for (int i = 0; i < n; i++) {
        conn *c = evs[i].data.ptr;
        if (!c->dead && c->open) on_readable(c);
      }
  }
  for (int i = 0; i < nconns; i++) conn_close(&conns[i]);

  qsort(lat, nlat, sizeof *lat, cmp_u32);
  double clk = (double)sysconf(_SC_CLK_TCK);
  double cpu_s = opt_pid ? (double)(cpu1 - cpu0) / clk : 0;

  printf("%s%smode=%s framing=%s conns=%d size=%zu", opt_tag, opt_tag[0] ? " " : "",
         mode_names[opt_mode], opt_message ? "message" : "bytes",
         opt_mode == M_CONNRATE ? opt_workers : opt_conns, opt_size);
  if (opt_mode == M_STREAM) printf(" window=%zu", opt_window);
  printf(" established=%d setup_s=%.2f seconds=%.2f ops=%" PRIu64, established, setup_s, secs, ops);
  switch (opt_mode) {
  case M_PINGPONG: printf(" rate=%.0f unit=rt/s", ops / secs); break;
  case M_STREAM:   printf(" rate=%.1f unit=MB/s", payload_bytes / secs / 1e6); break;
  case M_CONNRATE: printf(" rate=%.0f unit=conn/s", ops / secs); break;
  case M_IDLE:     printf(" rate=%d unit=conns", established); break;
  }
  if (opt_mode == M_STREAM) printf(" msgs_per_s=%.0f", ops / secs);
  if (opt_mode != M_IDLE) printf(" p50_us=%.1f p99_us=%.1f", pct(0.50), pct(0.99));
  printf(" errors=%" PRIu64 " connect_retries=%" PRIu64, errors, connect_retries);
  if (opt_mode != M_IDLE) printf(" loadgen_cpu_pct=%.0f", 100 * (self1 - self0) / secs);
  if (opt_pid && opt_mode != M_IDLE && busy1 > busy0) {
    /* what neither the server nor the load generator used: other processes (noise) */
    double other = (double)(busy1 - busy0) / clk - cpu_s - (self1 - self0);
    printf(" other_cpu_pct=%.0f", other > 0 ? 100 * other / secs : 0.0);
  }
  if (opt_pid) {
    if (opt_mode != M_IDLE) {
      double per = ops ? cpu_s * 1e6 / (double)ops : 0;
      printf(" server_cpu_s=%.2f cpu_us_per_op=%.2f server_cpu_pct=%.0f", cpu_s, per, 100 * cpu_s / secs);
    }
    printf(" rss0_kb=%ld rss_kb=%ld", rss0, rss_mid);
    if (opt_mode == M_IDLE || opt_conns >= 100) {
      double per = established ? (double)(rss_mid - rss0) * 1024.0 / established : 0;
      printf(" rss_per_conn_b=%.0f", per);
    }
  }
  printf("\n");
  if (first_error[0]) fprintf(stderr, "loadgen: first error: %s\n", first_error);
  return errors ? 1 : 0;
}
