/* Windows side of the platform layer: a pipe is a real named pipe (\\.\pipe\NAME),
 * created and connected by libuv; identity and sessions come from the pipe calls. */
#include "np_platform.h"

#include <stdio.h>
#include <string.h>
#include <windows.h>

#define PREFIX "\\\\.\\pipe\\"
#define NAME_MAX_LEN 256 /* a pipe name is at most 256 characters */

void np_platform_init(void) {} /* no SIGPIPE on Windows */

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *arg) {
  snprintf(err, errlen, fmt, arg);
  return code;
}

int np_platform_resolve(const char *name, int create_dir, char *out, size_t outlen,
                        char *err, size_t errlen) {
  (void)create_dir; /* the pipe namespace needs no directory */
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
  HANDLE h = CreateFileA(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
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

int np_platform_peer_cred(uv_pipe_t *pipe, np_cred *out) {
  HANDLE h = pipe_handle(pipe);
  ULONG pid = 0;
  BOOL ok = is_server_end(h) ? GetNamedPipeClientProcessId(h, &pid) : GetNamedPipeServerProcessId(h, &pid);
  out->pid = ok ? (long)pid : -1;
  out->uid = out->gid = -1; /* Windows identities are SIDs, not numbers */
  return ok ? 0 : uv_translate_sys_error((int)GetLastError());
}

long np_platform_session_id(void) {
  DWORD sid = 0;
  if (!ProcessIdToSessionId(GetCurrentProcessId(), &sid)) return uv_translate_sys_error((int)GetLastError());
  return (long)sid;
}

long np_platform_peer_session(uv_pipe_t *pipe, const np_cred *cred) {
  (void)cred;
  HANDLE h = pipe_handle(pipe);
  ULONG sid = 0;
  BOOL ok = is_server_end(h) ? GetNamedPipeClientSessionId(h, &sid) : GetNamedPipeServerSessionId(h, &sid);
  return ok ? (long)sid : uv_translate_sys_error((int)GetLastError());
}

long np_platform_pid(void) { return (long)GetCurrentProcessId(); }

/* No count of unread bytes on a named pipe: a flush waits for libuv's queue only. */
long np_platform_unread(uv_pipe_t *pipe) {
  (void)pipe;
  return -1;
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

/* Access is the pipe's default security descriptor; mode bits do not apply. */
int np_platform_bind(uv_pipe_t *pipe, const char *path, int mode) {
  (void)mode;
  return uv_pipe_bind(pipe, path);
}

/* Windows limits instances natively; the engine falls back to refusing at accept. */
int np_platform_listener_detach(uv_pipe_t *listener, int *kept) {
  (void)listener;
  (void)kept;
  return UV_ENOTSUP;
}

int np_platform_listener_attach(uv_pipe_t *listener, int kept) {
  (void)listener;
  (void)kept;
  return UV_ENOTSUP;
}

void np_platform_listener_drop(int kept) { (void)kept; }
