/* Windows side of the platform layer: a pipe is a real named pipe (\\.\pipe\NAME),
 * whose instances npipe creates and opens itself (np_platform_win_inst.c); identity and
 * sessions come from the pipe calls and the peer's token. */
#include "np_platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>
#include <sddl.h>

#define PREFIX "\\\\.\\pipe\\"
#define NAME_MAX_LEN 256 /* a pipe name is at most 256 characters */

void np_platform_init(void) {} /* no SIGPIPE on Windows */

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *arg) {
  snprintf(err, errlen, fmt, arg);
  return code;
}

int np_platform_resolve(const char *name, int dir_policy, char *out, size_t outlen, char *err,
                        size_t errlen) {
  (void)dir_policy; /* the pipe namespace has no directory */
  if (strncmp(name, PREFIX, strlen(PREFIX)) == 0) name += strlen(PREFIX);
  if (name[0] == '\0' || strchr(name, '\\') != NULL)
    return fail(err, errlen, UV_EINVAL, "invalid pipe name '%s'", name);
  if (strlen(PREFIX) + strlen(name) > NAME_MAX_LEN || strlen(PREFIX) + strlen(name) >= outlen)
    return fail(err, errlen, UV_ENAMETOOLONG, "pipe name too long: '%s'", name);
  snprintf(out, outlen, "%s%s", PREFIX, name);
  return 0;
}

static HANDLE pipe_handle(uv_pipe_t *pipe) {
  uv_os_fd_t h;
  return uv_fileno((uv_handle_t *)pipe, &h) == 0 ? (HANDLE)h : INVALID_HANDLE_VALUE;
}

static int is_server_end(HANDLE h) {
  DWORD flags = 0;
  return GetNamedPipeInfo(h, &flags, NULL, NULL, NULL) && (flags & PIPE_SERVER_END);
}

int np_platform_probe(const char *path, np_cred *out, char *err, size_t errlen) {
  out->pid = out->uid = out->gid = -1;
  /* identification only: a probed server must not act as us */
  HANDLE h = CreateFileA(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                         SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, NULL);
  if (h == INVALID_HANDLE_VALUE) {
    DWORD e = GetLastError();
    if (e == ERROR_PIPE_BUSY) return 1; /* live, every instance taken */
    if (e == ERROR_FILE_NOT_FOUND) return fail(err, errlen, UV_ENOENT, "no pipe %s", path);
    return fail(err, errlen, uv_translate_sys_error((int)e), "cannot probe %s", path);
  }
  ULONG pid = 0;
  if (GetNamedPipeServerProcessId(h, &pid)) out->pid = (long)pid;
  CloseHandle(h);
  return 1;
}

/* A named pipe disappears with its last server handle: a taken name is always live. */
int np_platform_reclaim(const char *path, char *err, size_t errlen) {
  (void)path;
  (void)err;
  (void)errlen;
  return 1;
}

/* ---- identity: pid and the user's SID ---- */

static int sys_error(void) { return uv_translate_sys_error((int)GetLastError()); }

static int token_sid(HANDLE token, char *out, size_t len) {
  union {
    TOKEN_USER user;
    char room[sizeof(TOKEN_USER) + SECURITY_MAX_SID_SIZE];
  } t;
  DWORD n = 0;
  char *text = NULL;
  if (!GetTokenInformation(token, TokenUser, &t, sizeof t, &n)) return sys_error();
  if (!ConvertSidToStringSidA(t.user.User.Sid, &text)) return sys_error();
  snprintf(out, len, "%s", text);
  LocalFree(text);
  return 0;
}

int np__win_self_sid(char *out, size_t len);
int np__win_self_sid(char *out, size_t len) {
  HANDLE tok;
  if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &tok)) return sys_error();
  int rc = token_sid(tok, out, len);
  CloseHandle(tok);
  return rc;
}

static int process_sid(DWORD pid, char *out, size_t len) {
  HANDLE p = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid), tok = NULL;
  if (p == NULL) return sys_error();
  int rc = OpenProcessToken(p, TOKEN_QUERY, &tok) ? token_sid(tok, out, len) : sys_error();
  if (tok) CloseHandle(tok);
  CloseHandle(p);
  return rc;
}

/* The client's own token, as its CreateFile presented it (identification level is
 * enough to read it); its process's token where impersonation is refused. */
static int client_sid(HANDLE pipe, DWORD pid, char *out, size_t len) {
  if (ImpersonateNamedPipeClient(pipe)) {
    HANDLE tok;
    BOOL ok = OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, TRUE, &tok);
    RevertToSelf();
    if (ok) {
      int rc = token_sid(tok, out, len);
      CloseHandle(tok);
      if (rc == 0) return 0;
    }
  }
  return process_sid(pid, out, len);
}

int np_platform_peer_cred(uv_pipe_t *pipe, np_cred *out) {
  HANDLE h = pipe_handle(pipe);
  ULONG pid = 0;
  int server_end = is_server_end(h);
  BOOL ok = server_end ? GetNamedPipeClientProcessId(h, &pid) : GetNamedPipeServerProcessId(h, &pid);
  out->pid = ok ? (long)pid : -1;
  out->uid = out->gid = -1; /* Windows identities are SIDs, not numbers */
  out->sid[0] = '\0';
  if (!ok) return sys_error();
  if ((server_end ? client_sid(h, pid, out->sid, sizeof out->sid)
                  : process_sid(pid, out->sid, sizeof out->sid)) < 0)
    out->sid[0] = '\0'; /* unknown: an allow.sids or expect.sid check fails closed */
  return 0;
}

long np_platform_session_id(void) {
  DWORD sid = 0;
  if (!ProcessIdToSessionId(GetCurrentProcessId(), &sid)) return uv_translate_sys_error((int)GetLastError());
  return (long)sid;
}

/* Windows has no POSIX session (its session is the login one). */
void np_platform_peer_sessions(uv_pipe_t *pipe, const np_cred *cred, long *login, long *posix) {
  (void)cred;
  HANDLE h = pipe_handle(pipe);
  ULONG sid = 0;
  BOOL ok = is_server_end(h) ? GetNamedPipeClientSessionId(h, &sid) : GetNamedPipeServerSessionId(h, &sid);
  *login = ok ? (long)sid : uv_translate_sys_error((int)GetLastError());
  *posix = UV_ENOTSUP;
}

long np_platform_posix_session_id(void) { return UV_ENOTSUP; }

long np_platform_pid(void) { return (long)GetCurrentProcessId(); }

/* No count of unread bytes on a named pipe: np_platform_flush_start waits instead. */
long np_platform_read_now(uv_pipe_t *pipe, char *buf, size_t len) {
  (void)pipe, (void)buf, (void)len;
  return UV_ENOTSUP;
}

long np_platform_unread(uv_pipe_t *pipe) {
  (void)pipe;
  return UV_ENOTSUP;
}

/* ---- flush: FlushFileBuffers on a threadpool thread ---- */

enum { FLUSH_QUEUED, FLUSH_RUNNING, FLUSH_DONE };

struct np_flush {
  uv_work_t work;
  uv_mutex_t lock; /* guards state and thread between the pool thread and the loop */
  int state;
  int cancelled;
  HANDLE pipe;   /* a duplicate: the loop may close its own handle while we wait */
  HANDLE thread; /* the pool thread, while it is inside FlushFileBuffers */
  DWORD error;
  np_flush_cb cb;
  void *arg;
};

static void flush_work(uv_work_t *w) {
  np_flush *f = w->data;
  HANDLE self = NULL;
  DuplicateHandle(GetCurrentProcess(), GetCurrentThread(), GetCurrentProcess(), &self, 0, FALSE,
                  DUPLICATE_SAME_ACCESS);
  uv_mutex_lock(&f->lock);
  int go = !f->cancelled && self != NULL;
  f->state = go ? FLUSH_RUNNING : FLUSH_DONE;
  f->thread = self;
  uv_mutex_unlock(&f->lock);
  /* Blocks until the client has read every byte, disconnects, or CancelSynchronousIo. */
  if (go) f->error = FlushFileBuffers(f->pipe) ? 0 : GetLastError();
  else f->error = f->cancelled ? ERROR_OPERATION_ABORTED : GetLastError();
  uv_mutex_lock(&f->lock);
  f->state = FLUSH_DONE;
  f->thread = NULL;
  uv_mutex_unlock(&f->lock);
  if (self) CloseHandle(self);
}

static void flush_after(uv_work_t *w, int status) {
  np_flush *f = w->data;
  int cancelled = f->cancelled;
  if (status == 0 && f->error) status = uv_translate_sys_error((int)f->error);
  CloseHandle(f->pipe);
  uv_mutex_destroy(&f->lock);
  np_flush_cb cb = f->cb;
  void *arg = f->arg;
  free(f);
  if (!cancelled) cb(arg, status);
}

int np_platform_flush_start(uv_loop_t *loop, uv_pipe_t *pipe, np_flush_cb cb, void *arg, np_flush **out) {
  HANDLE h = pipe_handle(pipe), dup = NULL;
  *out = NULL;
  if (h == INVALID_HANDLE_VALUE) return UV_EBADF;
  if (!DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(), &dup, 0, FALSE, DUPLICATE_SAME_ACCESS))
    return uv_translate_sys_error((int)GetLastError());
  np_flush *f = calloc(1, sizeof *f);
  if (f == NULL || uv_mutex_init(&f->lock) != 0) {
    free(f);
    CloseHandle(dup);
    return UV_ENOMEM;
  }
  f->pipe = dup;
  f->cb = cb;
  f->arg = arg;
  f->work.data = f;
  int rc = uv_queue_work(loop, &f->work, flush_work, flush_after);
  if (rc < 0) {
    uv_mutex_destroy(&f->lock);
    CloseHandle(dup);
    free(f);
    return rc;
  }
  *out = f;
  return 0;
}

/* CancelSynchronousIo finds nothing if the pool thread has marked itself running but
 * not yet entered the call: try again for a few milliseconds in that narrow case. */
#define CANCEL_TRIES 20

void np_platform_flush_cancel(np_flush *f) {
  if (f == NULL) return;
  uv_mutex_lock(&f->lock);
  f->cancelled = 1;
  uv_mutex_unlock(&f->lock);
  if (uv_cancel((uv_req_t *)&f->work) == 0) return; /* still queued: flush_after gets UV_ECANCELED */
  for (int i = 0; i < CANCEL_TRIES; i++) {
    uv_mutex_lock(&f->lock);
    int done = f->state != FLUSH_RUNNING || CancelSynchronousIo(f->thread);
    uv_mutex_unlock(&f->lock);
    if (done) return;
    Sleep(1);
  }
}

/* A server end drops the client's unread bytes; a client end has nothing to do. */
void np_platform_disconnect(uv_pipe_t *pipe) {
  HANDLE h = pipe_handle(pipe);
  if (h != INVALID_HANDLE_VALUE && is_server_end(h)) DisconnectNamedPipe(h);
}

/* There is no socket file to keep track of. */
int np_platform_file_id(const char *path, np_file_id *out) {
  (void)path;
  (void)out;
  return UV_ENOTSUP;
}

void np_platform_unlink_if_same(const char *path, const np_file_id *id) {
  (void)path;
  (void)id;
}

/* Not used: npipe creates the instances (np_platform_instances_start). */
int np_platform_bind(uv_pipe_t *pipe, const char *path, int mode) {
  (void)pipe;
  (void)path;
  (void)mode;
  return UV_ENOTSUP;
}

/* Not used: the instances wait for their clients themselves. */
int np_platform_listener_fd(uv_pipe_t *listener) {
  (void)listener;
  return UV_ENOTSUP;
}

int np_platform_listen(uv_pipe_t *listener, int backlog) {
  (void)listener;
  (void)backlog;
  return UV_ENOTSUP;
}

int np_platform_accept(uv_pipe_t *listener, uv_pipe_t *client) {
  (void)listener;
  (void)client;
  return UV_ENOTSUP;
}
