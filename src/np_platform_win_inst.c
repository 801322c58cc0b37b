/* Windows: npipe creates each pipe instance itself and hands the connected handle to
 * libuv, because libuv 1.44 creates instances with the default security descriptor
 * (Everyone and Anonymous may open them), without PIPE_REJECT_REMOTE_CLIENTS, in byte
 * mode and with PIPE_UNLIMITED_INSTANCES. Also a client's open (CreateFileW), and what
 * a message-type pipe tells about its next message.
 *
 * The life of an instance: CreateNamedPipeW (overlapped), an overlapped
 * ConnectNamedPipe whose event a thread-pool wait (RegisterWaitForSingleObject)
 * watches; the wait wakes the loop (uv_async_send), which takes the result and gives
 * the handle, as a C runtime descriptor, to the engine for uv_pipe_open. The handle is
 * not associated with libuv's completion port before that: the port would get the
 * ConnectNamedPipe completion, which libuv cannot place. After the handover, an
 * overlapped call npipe made on the handle would have to set hEvent | 1 for the same
 * reason; npipe makes none. A fresh instance follows every connection and every close
 * (a handle libuv owned is never reused). */
#include "np_platform.h"

#include <io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>
#include <sddl.h>

/* In np_platform_win.c: the SID string of the user this process runs as. */
int np__win_self_sid(char *out, size_t len);

#define PIPE_BUFFER 65536
#define RETRY_MS 100 /* after a failure to create an instance other than "all taken" */

/* Instances waiting for a client at once, as libuv keeps them: a client that comes
 * while the loop hands over the last one finds another instead of ERROR_PIPE_BUSY. */
#define PENDING 4

typedef struct slot {
  HANDLE pipe;  /* the instance waiting for a client, or INVALID_HANDLE_VALUE */
  HANDLE event; /* its OVERLAPPED event */
  HANDLE wait;  /* the registered wait on event, or NULL */
  OVERLAPPED ov;
} slot;

struct np_instances {
  uv_async_t async; /* the loop's side of the waits: a client connected */
  uv_timer_t retry;
  WCHAR *name;
  PSECURITY_DESCRIPTOR sd; /* LocalAlloc'ed by ConvertStringSecurityDescriptor... */
  DWORD type;              /* PIPE_TYPE_BYTE or PIPE_TYPE_MESSAGE */
  DWORD max;               /* nMaxInstances */
  int first;               /* the next instance is the first: FILE_FLAG_FIRST_PIPE_INSTANCE */
  slot slots[PENDING];
  int full;    /* CreateNamedPipeW said ERROR_PIPE_BUSY: every instance is taken */
  int closing;
  int handles; /* async and retry, until their close callbacks */
  np_instance_cb cb;
  void *arg;
  void (*closed)(void *);
  void *closed_arg;
};

static WCHAR *widen(const char *s) {
  int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
  WCHAR *w = n > 0 ? malloc((size_t)n * sizeof *w) : NULL;
  if (w && MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) != n) {
    free(w);
    w = NULL;
  }
  return w;
}

/* By default only this user and SYSTEM: the owner needs FILE_CREATE_PIPE_INSTANCE too
 * (GA includes it), or every instance after the first fails with access denied. The
 * protected DACL (P) inherits nothing. */
static int make_sd(np_instances *in, const char *sddl, char *err, size_t errlen) {
  char text[3 * NP_SID_LEN + 64];
  if (sddl == NULL) {
    char self[NP_SID_LEN];
    int rc = np__win_self_sid(self, sizeof self);
    if (rc < 0) {
      snprintf(err, errlen, "cannot read this process's user SID: %s", uv_strerror(rc));
      return rc;
    }
    snprintf(text, sizeof text, "O:%sD:P(A;;GA;;;SY)(A;;GA;;;%s)", self, self);
    sddl = text;
  }
  if (!ConvertStringSecurityDescriptorToSecurityDescriptorA(sddl, SDDL_REVISION_1, &in->sd, NULL)) {
    DWORD e = GetLastError();
    snprintf(err, errlen, "invalid security descriptor (SDDL) '%.200s': error %lu", sddl, (unsigned long)e);
    return UV_EINVAL;
  }
  return 0;
}

static VOID CALLBACK on_wait(PVOID arg, BOOLEAN timed_out) {
  (void)timed_out;
  uv_async_send(&((np_instances *)arg)->async);
}

/* Creates an instance in sl and starts waiting for its client: 0 or a Win32 error. */
static DWORD create_instance(np_instances *in, slot *sl) {
  SECURITY_ATTRIBUTES sa = {sizeof sa, in->sd, FALSE};
  DWORD open = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | (in->first ? FILE_FLAG_FIRST_PIPE_INSTANCE : 0);
  /* Byte read mode: uv_pipe_open sets it anyway, and libuv's zero-byte read fails with
   * ERROR_MORE_DATA in message read mode. Message boundaries come from PeekNamedPipe. */
  DWORD mode = in->type | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;
  HANDLE h = CreateNamedPipeW(in->name, open, mode, in->max, PIPE_BUFFER, PIPE_BUFFER, 0, &sa);
  if (h == INVALID_HANDLE_VALUE) return GetLastError();
  in->first = 0;
  memset(&sl->ov, 0, sizeof sl->ov);
  ResetEvent(sl->event);
  sl->ov.hEvent = sl->event;
  if (!ConnectNamedPipe(h, &sl->ov)) {
    DWORD e = GetLastError();
    if (e == ERROR_PIPE_CONNECTED) SetEvent(sl->event); /* a client came before the call */
    else if (e != ERROR_IO_PENDING) {
      CloseHandle(h);
      return e;
    }
  }
  if (!RegisterWaitForSingleObject(&sl->wait, sl->event, on_wait, in, INFINITE, WT_EXECUTEONLYONCE)) {
    DWORD e = GetLastError();
    CancelIoEx(h, &sl->ov);
    CloseHandle(h);
    sl->wait = NULL;
    return e;
  }
  sl->pipe = h;
  return 0;
}

static void on_retry(uv_timer_t *t);

/* Keeps PENDING instances waiting for clients while there is room for them. */
static void next_instances(np_instances *in) {
  for (int i = 0; i < PENDING && !in->closing; i++) {
    slot *sl = &in->slots[i];
    if (sl->pipe != INVALID_HANDLE_VALUE) continue;
    DWORD e = create_instance(in, sl);
    if (e == 0) continue;
    if (e == ERROR_PIPE_BUSY) in->full = 1; /* nMaxInstances reached: np_platform_instances_room */
    else uv_timer_start(&in->retry, on_retry, RETRY_MS, 0);
    return;
  }
}

static void on_retry(uv_timer_t *t) { next_instances(t->data); }

static void stop_waiting(slot *sl) {
  if (sl->wait) UnregisterWaitEx(sl->wait, INVALID_HANDLE_VALUE); /* returns once on_wait has run */
  sl->wait = NULL;
}

/* The instance in sl has a client, or failed: a descriptor for it, or -1. */
static int take_client(slot *sl) {
  DWORD n;
  DWORD e = GetOverlappedResult(sl->pipe, &sl->ov, &n, FALSE) ? 0 : GetLastError();
  stop_waiting(sl);
  HANDLE h = sl->pipe;
  sl->pipe = INVALID_HANDLE_VALUE;
  int fd = -1;
  if (e == 0 || e == ERROR_PIPE_CONNECTED) fd = _open_osfhandle((intptr_t)h, 0);
  if (fd < 0) CloseHandle(h); /* the client left before we got to it */
  return fd;
}

static void on_client(uv_async_t *a) {
  np_instances *in = a->data;
  int fds[PENDING], n = 0;
  for (int i = 0; i < PENDING && !in->closing; i++) {
    slot *sl = &in->slots[i];
    if (sl->pipe == INVALID_HANDLE_VALUE || WaitForSingleObject(sl->event, 0) != WAIT_OBJECT_0) continue;
    int fd = take_client(sl);
    if (fd >= 0) fds[n++] = fd;
  }
  next_instances(in); /* before the engine's accept events, which may close the server */
  for (int i = 0; i < n; i++) {
    if (in->closing) np_platform_instance_open(NULL, fds[i]); /* closes it */
    else in->cb(in->arg, fds[i]);
  }
}

int np_platform_instances_start(uv_loop_t *loop, const char *path, int max_instances, int message,
                                const char *sddl, np_instance_cb cb, void *arg, np_instances **out,
                                char *err, size_t errlen) {
  *out = NULL;
  np_instances *in = calloc(1, sizeof *in);
  if (in == NULL || (in->name = widen(path)) == NULL) {
    free(in);
    return UV_ENOMEM;
  }
  in->type = message ? PIPE_TYPE_MESSAGE : PIPE_TYPE_BYTE;
  in->max = max_instances > 0 && max_instances < PIPE_UNLIMITED_INSTANCES ? (DWORD)max_instances
                                                                          : PIPE_UNLIMITED_INSTANCES;
  in->first = 1;
  in->cb = cb;
  in->arg = arg;
  int rc = make_sd(in, sddl, err, errlen);
  for (int i = 0; i < PENDING; i++) {
    in->slots[i].pipe = INVALID_HANDLE_VALUE;
    if (rc == 0 && (in->slots[i].event = CreateEventW(NULL, TRUE, FALSE, NULL)) == NULL)
      rc = uv_translate_sys_error((int)GetLastError());
  }
  DWORD e = rc == 0 ? create_instance(in, &in->slots[0]) : 0; /* the first alone reports */
  if (e == ERROR_ACCESS_DENIED || e == ERROR_PIPE_BUSY) { /* FILE_FLAG_FIRST_PIPE_INSTANCE: served */
    snprintf(err, errlen, "pipe %s is already in use by a live server", path);
    rc = UV_EADDRINUSE;
  } else if (e != 0) {
    rc = uv_translate_sys_error((int)e);
  }
  if (rc < 0) {
    for (int i = 0; i < PENDING; i++)
      if (in->slots[i].event) CloseHandle(in->slots[i].event);
    if (in->sd) LocalFree(in->sd);
    free(in->name);
    free(in);
    return rc;
  }
  uv_async_init(loop, &in->async, on_client);
  uv_timer_init(loop, &in->retry);
  in->async.data = in->retry.data = in;
  in->handles = 2;
  next_instances(in);
  *out = in;
  return 0;
}

void np_platform_instances_room(np_instances *in) {
  if (in == NULL || !in->full) return;
  in->full = 0;
  next_instances(in);
}

static void on_instances_handle_closed(uv_handle_t *h) {
  np_instances *in = h->data;
  if (--in->handles > 0) return;
  void (*closed)(void *) = in->closed;
  void *arg = in->closed_arg;
  LocalFree(in->sd);
  free(in->name);
  free(in);
  if (closed) closed(arg);
}

/* The order matters: cancel the ConnectNamedPipe, wait for the thread-pool wait to be
 * gone, then close the handles it used. */
void np_platform_instances_close(np_instances *in, void (*closed)(void *arg), void *arg) {
  in->closing = 1;
  in->closed = closed;
  in->closed_arg = arg;
  for (int i = 0; i < PENDING; i++) {
    slot *sl = &in->slots[i];
    if (sl->pipe != INVALID_HANDLE_VALUE) CancelIoEx(sl->pipe, &sl->ov);
    stop_waiting(sl);
    if (sl->pipe != INVALID_HANDLE_VALUE) CloseHandle(sl->pipe);
    sl->pipe = INVALID_HANDLE_VALUE;
    CloseHandle(sl->event);
  }
  uv_close((uv_handle_t *)&in->async, on_instances_handle_closed);
  uv_close((uv_handle_t *)&in->retry, on_instances_handle_closed);
}

int np_platform_instance_open(uv_pipe_t *client, int fd) {
  int rc = client ? uv_pipe_open(client, fd) : UV_ECANCELED;
  /* libuv takes a duplicate of descriptors 0-2 and leaves them to us; the original
   * would hold the instance (and the client's connection) open. */
  if (rc < 0 || fd <= 2) _close(fd);
  return rc;
}

/* ---- a client's end ---- */

int np_platform_connect(uv_pipe_t *pipe, const char *path) {
  WCHAR *w = widen(path);
  if (w == NULL) return UV_ENOMEM;
  /* SECURITY_IDENTIFICATION: the server may learn who the client is, and may not act as it. */
  HANDLE h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                         FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, NULL);
  DWORD e = h == INVALID_HANDLE_VALUE ? GetLastError() : 0;
  free(w);
  if (e == ERROR_PIPE_BUSY) return UV_EAGAIN; /* the caller waits within its own timeout */
  if (e == ERROR_FILE_NOT_FOUND) return UV_ENOENT;
  if (e != 0) return uv_translate_sys_error((int)e);
  int fd = _open_osfhandle((intptr_t)h, 0);
  if (fd < 0) {
    CloseHandle(h);
    return UV_EMFILE;
  }
  return np_platform_instance_open(pipe, fd);
}

/* ---- message-type pipes ---- */

int np_platform_message_pipe(uv_pipe_t *pipe) {
  uv_os_fd_t h;
  DWORD flags = 0;
  if (uv_fileno((uv_handle_t *)pipe, &h) != 0) return 0;
  return GetNamedPipeInfo((HANDLE)h, &flags, NULL, NULL, NULL) && (flags & PIPE_TYPE_MESSAGE) ? 1 : 0;
}

long np_platform_message_left(uv_pipe_t *pipe) {
  uv_os_fd_t h;
  DWORD avail = 0, left = 0;
  if (uv_fileno((uv_handle_t *)pipe, &h) != 0) return UV_EBADF;
  if (!PeekNamedPipe((HANDLE)h, NULL, 0, NULL, &avail, &left)) return uv_translate_sys_error((int)GetLastError());
  return (long)left;
}
