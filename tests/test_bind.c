/* np_platform_bind on Unix: the socket file has exactly the mode asked for, whatever
 * the umask, the process umask is never touched (every thread of a host shares it),
 * nothing is left beside the socket, and a path that exists already is refused
 * (EADDRINUSE), which the engine's stale-socket reclaim depends on. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "np_platform.h"

static char dir[256];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/npipe-bind-test-XXXXXX");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    exit(1);
  }
}

static mode_t current_umask(void) {
  mode_t m = umask(0);
  umask(m);
  return m;
}

/* Binds a fresh handle to path with mode; the handle is closed again (the file stays). */
static int bind_once(const char *path, int mode) {
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_loop_init(&loop);
  uv_pipe_init(&loop, &pipe, 0);
  int rc = np_platform_bind(&pipe, path, mode);
  uv_close((uv_handle_t *)&pipe, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return rc;
}

/* The names in d: one expected name (or none, NULL), nothing else. */
static int holds_only(const char *d, const char *name) {
  DIR *h = opendir(d);
  struct dirent *ent;
  int seen = 0, other = 0;
  if (h == NULL) return 0;
  while ((ent = readdir(h)) != NULL) {
    if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
    if (name && strcmp(ent->d_name, name) == 0) seen = 1;
    else other = 1;
  }
  closedir(h);
  return !other && seen == (name != NULL);
}

static int mode_of(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) return -1;
  return (int)(st.st_mode & 07777);
}

/* A listening socket at path answers a client that connects by that name. */
static int answers(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path));
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return ok;
}

static void check_mode(int mode, mode_t mask) {
  char path[300];
  snprintf(path, sizeof path, "%s/sock", dir);
  mode_t before = umask(mask);
  CHECK(bind_once(path, mode) == 0);
  CHECK(current_umask() == mask); /* untouched */
  umask(before);
  CHECK(mode_of(path) == mode);
  CHECK(holds_only(dir, "sock")); /* no staging directory left */
  CHECK(unlink(path) == 0);
}

TEST_IMPL(mode_0600_whatever_the_umask) {
  check_mode(0600, 022);
  check_mode(0600, 0);
}

TEST_IMPL(mode_0666_under_umask_077) { check_mode(0666, 077); }

TEST_IMPL(existing_file_is_refused) {
  char path[300];
  snprintf(path, sizeof path, "%s/taken", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  CHECK(fd >= 0 && write(fd, "mine", 4) == 4);
  close(fd);
  CHECK(bind_once(path, 0600) == UV_EADDRINUSE);
  struct stat st;
  CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 4);
  CHECK(holds_only(dir, "taken"));
  /* a socket left behind (stale) is refused the same way: the engine reclaims it */
  CHECK(unlink(path) == 0);
  CHECK(bind_once(path, 0600) == 0);
  CHECK(bind_once(path, 0600) == UV_EADDRINUSE);
  CHECK(holds_only(dir, "taken"));
  CHECK(unlink(path) == 0);
}

/* The socket that bind made elsewhere is the one at path: clients reach it there. */
TEST_IMPL(bound_socket_answers_at_its_path) {
  char path[300];
  snprintf(path, sizeof path, "%s/live", dir);
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_loop_init(&loop);
  uv_pipe_init(&loop, &pipe, 0);
  CHECK(np_platform_bind(&pipe, path, 0600) == 0);
  CHECK(np_platform_listen(&pipe, 4) == 0);
  CHECK(answers(path));
  uv_close((uv_handle_t *)&pipe, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  CHECK(unlink(path) == 0);
}

/* A path of the most that fits, with a short last name: the staging path would not fit
 * sun_path, and the socket still comes out right. */
TEST_IMPL(longest_path_with_a_short_name) {
  char sub[300], path[300];
  size_t n = strlen(dir);
  memcpy(sub, dir, n);
  sub[n++] = '/';
  while (n < 107 - 2) sub[n++] = 'd'; /* dir/ddd...d/s: 107 bytes */
  sub[n] = '\0';
  CHECK(mkdir(sub, 0700) == 0);
  memcpy(path, sub, n);
  memcpy(path + n, "/s", 3);
  CHECK(strlen(path) == 107);
  CHECK(bind_once(path, 0600) == 0);
  CHECK(mode_of(path) == 0600);
  CHECK(holds_only(sub, "s"));
  CHECK(unlink(path) == 0);
  CHECK(rmdir(sub) == 0);
}

TEST_IMPL(directory_is_left_empty) { CHECK(holds_only(dir, NULL) && rmdir(dir) == 0); }

static const test_entry TESTS[] = {
    TEST_ENTRY(mode_0600_whatever_the_umask),
    TEST_ENTRY(mode_0666_under_umask_077),
    TEST_ENTRY(existing_file_is_refused),
    TEST_ENTRY(bound_socket_answers_at_its_path),
    TEST_ENTRY(longest_path_with_a_short_name),
    TEST_ENTRY(directory_is_left_empty),
};

int main(int argc, char **argv) {
  make_dir();
  return run_tests(TESTS, TEST_COUNT(TESTS), argc, argv);
}
