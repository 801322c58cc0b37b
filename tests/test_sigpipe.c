/* SIGPIPE and the host (Unix only; API.md, "Error conventions"): creating an engine
 * (as `require("npipe")` does) ignores SIGPIPE only while it is at its default, so a
 * write to a vanished peer fails with EPIPE instead of killing the process; a handler
 * the host installed before is kept, and still runs. Seen through real writes to a
 * socket whose other end is closed, not only through sigaction. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "np_engine.h"


static volatile sig_atomic_t host_handler_calls;
static void host_handler(int sig) {
  (void)sig;
  host_handler_calls++;
}

static const np_events NO_EVENTS = {0};

/* Creates an engine on a fresh loop and takes it down again. */
static void engine_comes_and_goes(void) {
  uv_loop_t loop;
  CHECK(uv_loop_init(&loop) == 0);
  np_engine *e = np_engine_new(&loop, &NO_EVENTS);
  CHECK(e != NULL);
  np_engine_shutdown(e);
  uv_run(&loop, UV_RUN_DEFAULT);
  np_engine_free(e);
  CHECK(uv_loop_close(&loop) == 0);
}

/* write() to a socket whose peer has closed: -1 and errno EPIPE, if we are still alive. */
static int write_to_vanished_peer(void) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  close(sv[1]);
  ssize_t n = write(sv[0], "x", 1);
  int err = n < 0 ? errno : 0;
  close(sv[0]);
  return err;
}

static void current_action(struct sigaction *sa) { CHECK(sigaction(SIGPIPE, NULL, sa) == 0); }

TEST_IMPL(host_handler_is_kept) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = host_handler;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGPIPE, &sa, NULL) == 0);
  engine_comes_and_goes();
  current_action(&sa);
  CHECK(sa.sa_handler == host_handler);
  host_handler_calls = 0;
  CHECK(write_to_vanished_peer() == EPIPE);
  CHECK(host_handler_calls == 1); /* the host's handler saw the signal */
}

TEST_IMPL(default_becomes_ignored) {
  struct sigaction sa;
  CHECK(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
  engine_comes_and_goes();
  current_action(&sa);
  CHECK(sa.sa_handler == SIG_IGN);
  CHECK(write_to_vanished_peer() == EPIPE); /* and this process is still here to see it */
}

/* A host that ignores SIGPIPE itself keeps that too. */
TEST_IMPL(ignored_stays_ignored) {
  struct sigaction sa;
  CHECK(signal(SIGPIPE, SIG_IGN) != SIG_ERR);
  engine_comes_and_goes();
  current_action(&sa);
  CHECK(sa.sa_handler == SIG_IGN);
}

static const test_entry TESTS[] = {
    TEST_ENTRY(host_handler_is_kept),
    TEST_ENTRY(default_becomes_ignored),
    TEST_ENTRY(ignored_stays_ignored),
};

int main(int argc, char **argv) { return run_tests(TESTS, TEST_COUNT(TESTS), argc, argv); }
