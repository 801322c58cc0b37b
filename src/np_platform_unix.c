/* Linux/Unix side of the platform layer: a named pipe is an AF_UNIX stream socket. */
#define _GNU_SOURCE
#include "np_platform.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/sockios.h>
#endif

#define WIN_PREFIX "\\\\.\\pipe\\"
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

void np_platform_init(void) {
  struct sigaction sa;
  /* Leave a handler the host installed alone; only the default (die) is replaced. */
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
}

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *arg) {
  snprintf(err, errlen, fmt, arg);
  return code;
}

/* The per-user directory must be ours alone: a directory someone else can write to
 * lets them replace our socket with theirs. */
static int check_dir(const char *dir, char *err, size_t errlen) {
  struct stat st;
  if (lstat(dir, &st) != 0) return fail(err, errlen, -errno, "cannot use pipe directory %s", dir);
  if (!S_ISDIR(st.st_mode)) return fail(err, errlen, UV_ENOTDIR, "pipe directory %s is not a directory", dir);
  if (st.st_uid != geteuid())
    return fail(err, errlen, UV_EPERM, "pipe directory %s is owned by another user", dir);
  if (st.st_mode & 022)
    return fail(err, errlen, UV_EPERM, "pipe directory %s is writable by other users", dir);
  return 0;
}

static void user_dir(char *out, size_t outlen) {
  const char *xdg = getenv("XDG_RUNTIME_DIR");
  if (xdg && xdg[0] == '/')
    snprintf(out, outlen, "%s/npipe", xdg);
  else
    snprintf(out, outlen, "/tmp/npipe-%lu", (unsigned long)geteuid());
}

static int valid_bare_name(const char *name) {
  return name[0] != '\0' && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

int np_platform_resolve(const char *name, int dir_policy, char *out, size_t outlen, char *err,
                        size_t errlen) {
  if (strncmp(name, WIN_PREFIX, strlen(WIN_PREFIX)) == 0) name += strlen(WIN_PREFIX);
  if (strchr(name, '/') != NULL) {
    snprintf(out, outlen, "%s", name);
  } else {
    char dir[512];
    if (!valid_bare_name(name)) return fail(err, errlen, UV_EINVAL, "invalid pipe name '%s'", name);
    user_dir(dir, sizeof dir);
    if (dir_policy == NP_DIR_CREATE && mkdir(dir, 0700) != 0 && errno != EEXIST)
      return fail(err, errlen, -errno, "cannot create pipe directory %s", dir);
    if (dir_policy == NP_DIR_CREATE || (dir_policy == NP_DIR_CHECK && access(dir, F_OK) == 0)) {
      int rc = check_dir(dir, err, errlen);
      if (rc) return rc;
    }
    if ((size_t)snprintf(out, outlen, "%s/%s", dir, name) >= outlen) out[0] = '\0';
  }
  size_t n = strlen(out);
  if (n == 0 || n > SUN_PATH_MAX) {
    snprintf(err, errlen, "pipe path too long for a Unix socket (%zu bytes, the limit is %zu)",
             n ? n : strlen(name), (size_t)SUN_PATH_MAX);
    return UV_ENAMETOOLONG;
  }
  return 0;
}

static void peer_of_fd(int fd, np_cred *out) {
  out->pid = out->uid = out->gid = -1;
#if defined(SO_PEERCRED)
  struct ucred uc;
  socklen_t len = sizeof uc;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0) {
    out->pid = uc.pid;
    out->uid = uc.uid;
    out->gid = uc.gid;
  }
#else
  (void)fd;
#endif
}

int np_platform_probe(const char *path, np_cred *out, char *err, size_t errlen) {
  struct stat st;
  if (lstat(path, &st) != 0) return fail(err, errlen, -errno, "cannot inspect %s", path);
  if (!S_ISSOCK(st.st_mode)) return fail(err, errlen, UV_EEXIST, "%s exists and is not a socket", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(err, errlen, -errno, "cannot probe %s", path);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) < SUN_PATH_MAX ? strlen(path) : SUN_PATH_MAX);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  int e = errno;
  if (rc == 0) peer_of_fd(fd, out);
  else out->pid = out->uid = out->gid = -1;
  close(fd);
  if (rc == 0 || e == EAGAIN || e == EINPROGRESS) return 1; /* someone listens */
  if (e == ECONNREFUSED) return 0;
  return fail(err, errlen, -e, "cannot probe %s", path);
}

int np_platform_reclaim(const char *path, char *err, size_t errlen) {
  np_cred cred;
  int rc = np_platform_probe(path, &cred, err, errlen);
  if (rc == UV_ENOENT) return 0; /* gone meanwhile: just bind again */
  if (rc != 0) return rc;
  if (unlink(path) != 0 && errno != ENOENT) return fail(err, errlen, -errno, "cannot remove stale socket %s", path);
  return 0;
}

static int pipe_fd(uv_pipe_t *pipe) {
  uv_os_fd_t fd;
  return uv_fileno((uv_handle_t *)pipe, &fd) == 0 ? fd : -1;
}

int np_platform_peer_cred(uv_pipe_t *pipe, np_cred *out) {
#if defined(SO_PEERCRED)
  struct ucred uc;
  socklen_t len = sizeof uc;
  int fd = pipe_fd(pipe);
  if (fd < 0) return UV_EBADF;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) return -errno;
  out->pid = uc.pid;
  out->uid = uc.uid;
  out->gid = uc.gid;
  return 0;
#else
  uid_t uid;
  gid_t gid;
  int fd = pipe_fd(pipe);
  if (fd < 0) return UV_EBADF;
  if (getpeereid(fd, &uid, &gid) != 0) return -errno;
  out->pid = -1;
  out->uid = uid;
  out->gid = gid;
  return 0;
#endif
}

/* The audit session id that /proc/<who>/sessionid holds: 4294967295 (unset) is a
 * process outside any login, which Windows would put in session 0 like its services;
 * UV_ENOENT when the file is missing. */
#define NP_AUDIT_UNSET 4294967295UL

static long read_login_session(const char *who) {
  char path[64], buf[32];
  snprintf(path, sizeof path, "/proc/%s/sessionid", who);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  int e = errno;
  close(fd);
  if (n <= 0) return n < 0 ? -e : UV_EIO;
  buf[n] = '\0';
  char *end;
  unsigned long v = strtoul(buf, &end, 10);
  if (end == buf) return UV_EIO;
  return v == NP_AUDIT_UNSET ? 0 : (long)v;
}

/* A kernel without audit (or a system without /proc) tracks no login sessions: 0. */
long np_platform_session_id(void) {
  long v = read_login_session("self");
  return v == UV_ENOENT ? 0 : v;
}

#if defined(__linux__) && !defined(SO_PEERPIDFD)
#define SO_PEERPIDFD 77 /* Linux 6.5; Debian 12's headers lack it */
#endif

/* A pidfd of the peer (SO_PEERPIDFD), or -1 where the kernel has none. */
static int peer_pidfd(uv_pipe_t *pipe) {
#if defined(SO_PEERPIDFD)
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  int fd = pipe_fd(pipe);
  if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) return pidfd;
#else
  (void)pipe;
#endif
  return -1;
}

/* Whether the process behind pidfd has not been reaped: until then its pid cannot be
 * reused, so what was read under that pid was the peer's. Signal 0 through the pidfd
 * (one system call) succeeds until the process is reaped (a zombie too) and then fails
 * with ESRCH; without that call, fdinfo says "Pid: -1" once it has been reaped; a
 * kernel that tells neither is trusted. */
static int pidfd_alive(int pidfd) {
#if defined(SYS_pidfd_send_signal)
  if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0) return 1;
  if (errno == ESRCH) return 0;
#endif
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 1;
  buf[n] = '\0';
  const char *p = strstr(buf, "\nPid:");
  return p == NULL || strtol(p + 5, NULL, 10) > 0;
}

static long posix_session_of(long pid) {
  pid_t sid = getsid((pid_t)pid);
  return sid < 0 ? -errno : (long)sid;
}

static long peer_login_session(long pid) {
  char who[24];
  snprintf(who, sizeof who, "%ld", pid);
  long v = read_login_session(who);
  if (v != UV_ENOENT) return v;
  /* no such file: the peer has gone, or the kernel tracks no sessions (0, as for us) */
  return read_login_session("self") == UV_ENOENT ? 0 : UV_ESRCH;
}

/* Reads the peer's sessions by its pid, then checks with the peer's pidfd (where the
 * kernel gives one) that the pid was not reused by another process meanwhile: a client
 * that exits right after connecting must not lend its pid, and a session that
 * same_session admits, to an unrelated process. Both at once: every accept pays for
 * this, so one pidfd serves both. */
void np_platform_peer_sessions(uv_pipe_t *pipe, const np_cred *cred, long *login, long *posix) {
  if (cred->pid <= 0) {
    *login = *posix = UV_ENOTSUP;
    return;
  }
  int pidfd = peer_pidfd(pipe);
  *login = peer_login_session(cred->pid);
  *posix = posix_session_of(cred->pid);
  if (pidfd >= 0) {
    if (!pidfd_alive(pidfd)) *login = *posix = UV_ESRCH;
    close(pidfd);
  }
}

long np_platform_posix_session_id(void) {
  pid_t sid = getsid(0);
  return sid < 0 ? -errno : (long)sid;
}


long np_platform_pid(void) { return (long)getpid(); }

/* A peer that closes with our bytes unread frees them, so SIOCOUTQ reads 0 as if it
 * had read them; but Linux first marks our socket with ECONNRESET, which poll shows as
 * POLLERR without consuming it (a read would). */
long np_platform_read_now(uv_pipe_t *pipe, char *buf, size_t len) {
  int fd = pipe_fd(pipe);
  if (fd < 0) return UV_EBADF;
  ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
  if (n >= 0) return (long)n;
  return errno == EAGAIN || errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
}

long np_platform_unread(uv_pipe_t *pipe) {
#if defined(SIOCOUTQ)
  int n = 0;
  int fd = pipe_fd(pipe);
  if (fd < 0 || ioctl(fd, SIOCOUTQ, &n) != 0) return UV_ENOTSUP;
  if (n > 0) return n;
  struct pollfd p = {.fd = fd, .events = 0, .revents = 0};
  if (poll(&p, 1, 0) == 1 && (p.revents & POLLERR)) return UV_ECONNRESET;
  return 0;
#else
  (void)pipe;
  return UV_ENOTSUP;
#endif
}

/* Unix answers a flush through SIOCOUTQ, polled by the engine: no thread needed. */
int np_platform_flush_start(uv_loop_t *loop, uv_pipe_t *pipe, np_flush_cb cb, void *arg, np_flush **out) {
  (void)loop;
  (void)pipe;
  (void)cb;
  (void)arg;
  *out = NULL;
  return UV_ENOTSUP;
}

void np_platform_flush_cancel(np_flush *f) { (void)f; }

void np_platform_disconnect(uv_pipe_t *pipe) { (void)pipe; }

int np_platform_file_id(const char *path, np_file_id *out) {
  struct stat st;
  if (lstat(path, &st) != 0) return -errno;
  out->dev = st.st_dev;
  out->ino = st.st_ino;
  return 0;
}

void np_platform_unlink_if_same(const char *path, const np_file_id *id) {
  np_file_id now;
  if (np_platform_file_id(path, &now) == 0 && now.dev == id->dev && now.ino == id->ino) unlink(path);
}

/* Where a socket is made before it moves to its path: a directory of its own, 0700 and
 * next to the path (the same filesystem, so that the socket can be linked into place). */
typedef struct staging {
  char dir[SUN_PATH_MAX + 16];
  char sock[SUN_PATH_MAX + 32];  /* dir/s */
  char name[SUN_PATH_MAX + 1];   /* what bind is given: sock, or a shorter name for it */
  int dirfd;
} staging;

/* A path near the limit with a short last name: Linux reaches the directory by a
 * shorter name, the descriptor's entry in /proc. */
static int staging_short_name(staging *st) {
  char fddir[32];
  st->dirfd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (st->dirfd < 0) return -errno;
  snprintf(fddir, sizeof fddir, "/proc/self/fd/%d", st->dirfd);
  if (access(fddir, X_OK) != 0) return UV_ENAMETOOLONG; /* no /proc */
  snprintf(st->name, sizeof st->name, "%s/s", fddir);
  return 0;
}

static void staging_remove(staging *st);

static int staging_make(staging *st, const char *path) {
  const char *slash = strrchr(path, '/');
  /* ".XXXXXX": a dot file, and short, since the socket's own name must fit sun_path */
  if (slash) snprintf(st->dir, sizeof st->dir, "%.*s/.XXXXXX", (int)(slash - path), path);
  else snprintf(st->dir, sizeof st->dir, ".XXXXXX");
  st->dirfd = -1;
  st->sock[0] = '\0';
  if (mkdtemp(st->dir) == NULL) return -errno; /* 0700 */
  snprintf(st->sock, sizeof st->sock, "%s/s", st->dir);
  size_t len = strlen(st->sock);
  if (len <= SUN_PATH_MAX) {
    memcpy(st->name, st->sock, len + 1);
    return 0;
  }
  int rc = staging_short_name(st);
  if (rc < 0) staging_remove(st);
  return rc;
}

static void staging_remove(staging *st) {
  unlink(st->sock);
  rmdir(st->dir);
  if (st->dirfd >= 0) close(st->dirfd);
}

/* Puts the socket at path, failing (EEXIST) when something is there already, as bind
 * does: the stale-socket reclaim depends on that. link(2) where the filesystem has hard
 * links, else Linux's rename without replace. */
static int move_into_place(const char *from, const char *path) {
  if (link(from, path) == 0) return 0;
  int e = errno;
#if defined(RENAME_NOREPLACE)
  if (e == EPERM || e == EOPNOTSUPP || e == ENOTSUP) {
    if (renameat2(AT_FDCWD, from, AT_FDCWD, path, RENAME_NOREPLACE) == 0) return 0;
    e = errno == EINVAL || errno == ENOSYS ? e : errno;
  }
#endif
  return -e;
}

/* Binds fd to path with the file never wider than mode, at no moment, without the
 * process umask (which every thread of a host such as Neovim shares): the socket is
 * made in a private 0700 directory, where nobody else can reach it, given its mode
 * there, and then moved to path. (getsockname and /proc/net/unix name the staging
 * path, gone by then; npipe asks neither.) */
static int bind_staged(int fd, const char *path, int mode) {
  staging st;
  int rc = staging_make(&st, path);
  if (rc < 0) return rc;
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, st.name, strlen(st.name));
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || chmod(st.sock, (mode_t)(mode & 0777)) != 0)
    rc = -errno;
  if (rc == 0) rc = move_into_place(st.sock, path);
  staging_remove(&st);
  return rc == UV_EEXIST ? UV_EADDRINUSE : rc;
}

int np_platform_bind(uv_pipe_t *pipe, const char *path, int mode) {
  if (strlen(path) > SUN_PATH_MAX) return UV_ENAMETOOLONG;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int rc = bind_staged(fd, path, mode);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  rc = uv_pipe_open(pipe, fd);
  if (rc != 0) {
    unlink(path);
    close(fd);
  }
  return rc;
}

int np_platform_listener_fd(uv_pipe_t *listener) {
  int fd = pipe_fd(listener);
  return fd < 0 ? UV_EBADF : fd;
}

int np_platform_listen(uv_pipe_t *listener, int backlog) {
  int fd = pipe_fd(listener);
  if (fd < 0) return UV_EBADF;
  return listen(fd, backlog) == 0 ? 0 : -errno;
}

int np_platform_accept(uv_pipe_t *listener, uv_pipe_t *client) {
  int lfd = pipe_fd(listener);
  if (lfd < 0) return UV_EBADF;
  int fd;
  do {
#if defined(__linux__)
    fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    fd = accept(lfd, NULL, NULL);
#endif
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
#if !defined(__linux__)
  fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
  int rc = uv_pipe_open(client, fd); /* makes it non-blocking */
  if (rc != 0) close(fd);
  return rc;
}

/* The engine accepts on the socket itself (np_platform_listener_fd): no instances here. */
int np_platform_instances_start(uv_loop_t *loop, const char *path, int max_instances, int message,
                                const char *sddl, np_instance_cb cb, void *arg, np_instances **out,
                                char *err, size_t errlen) {
  (void)loop, (void)path, (void)max_instances, (void)message, (void)sddl, (void)cb, (void)arg;
  (void)err, (void)errlen;
  *out = NULL;
  return UV_ENOTSUP;
}

void np_platform_instances_room(np_instances *in) { (void)in; }

void np_platform_instances_close(np_instances *in, void (*closed)(void *arg), void *arg) {
  (void)in, (void)closed, (void)arg;
}

int np_platform_instance_open(uv_pipe_t *client, int fd) {
  (void)client, (void)fd;
  return UV_ENOTSUP;
}

/* uv_pipe_connect does it, without blocking the loop. */
int np_platform_connect(uv_pipe_t *pipe, const char *path) {
  (void)pipe, (void)path;
  return UV_ENOTSUP;
}

/* A stream socket has no message boundaries: message framing is the length prefix. */
int np_platform_message_pipe(uv_pipe_t *pipe) {
  (void)pipe;
  return 0;
}

long np_platform_message_left(uv_pipe_t *pipe) {
  (void)pipe;
  return UV_ENOTSUP;
}
