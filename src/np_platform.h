/* The OS-specific parts of npipe: everything that differs between Unix domain
 * sockets and Windows named pipes lives behind these calls. */
#ifndef NP_PLATFORM_H
#define NP_PLATFORM_H

#include <stddef.h>
#include <uv.h>

/* A SID string is at most 184 characters (S-1-, 15 sub-authorities of 10 digits). Unix
 * has no SIDs: there the field is one byte, always "", rather than 191 bytes more in every
 * connection and every connection's userdata. */
#ifdef _WIN32
#define NP_SID_LEN 192
#else
#define NP_SID_LEN 1
#endif

typedef struct np_cred {
  long pid;  /* -1 when unknown */
  long uid;
  long gid;
  char sid[NP_SID_LEN]; /* Windows: the user's SID ("S-1-5-21-..."); "" when unknown, and on Unix */
} np_cred;

/* Once per process: make a write to a vanished peer fail with EPIPE instead of
 * killing the process with SIGPIPE (Unix; nothing to do on Windows). */
void np_platform_init(void);

/* What np_platform_resolve does with the per-user directory of a bare name. */
enum {
  NP_DIR_TRUST = 0,  /* nothing (npipe.path, list) */
  NP_DIR_CREATE = 1, /* create it 0700 if missing, then check it (listen) */
  NP_DIR_CHECK = 2   /* check it if it exists (connect: a missing one just means no server) */
};

/* Resolves a pipe name to what the OS binds: a bare name goes in the per-user
 * directory (handled as dir says), a name with '/' is a path as is. Checking refuses a
 * directory another user owns or can write to: whoever controls it controls which
 * socket answers. Returns 0, or a negative uv error code with a message in err. */
int np_platform_resolve(const char *name, int dir, char *out, size_t outlen, char *err, size_t errlen);

/* Probes a socket path without changing it: 1 if a server answers (its identity in
 * out, where the OS tells), 0 if nothing listens (stale), <0 on error (message in err). */
int np_platform_probe(const char *path, np_cred *out, char *err, size_t errlen);

/* Called by a server whose bind found the name taken: 1 if a live server answers,
 * 0 if the file was a stale socket and has been removed, <0 on error (message in err). */
int np_platform_reclaim(const char *path, char *err, size_t errlen);

/* Identity of the process at the other end of a connected pipe. */
int np_platform_peer_cred(uv_pipe_t *pipe, np_cred *out);

/* Login session id of this process: on Windows the Terminal Services session
 * (ProcessIdToSessionId; services run in session 0); on Linux its counterpart, the
 * audit session id that pam_loginuid gives a login (/proc/self/sessionid), 0 for a
 * process outside any login (unset, 4294967295) and where the kernel does not track
 * login sessions (no such file). <0: uv error code. */
long np_platform_session_id(void);

/* The POSIX session (getsid, a terminal's job-control group) of this process; UV_ENOTSUP
 * where there is none (Windows). */
long np_platform_posix_session_id(void);

/* The sessions of the process at the other end of a connected pipe (whose identity,
 * taken at connect time, is cred), each an id or a uv error code. login: the login
 * session, /proc/<pid>/sessionid on Linux, 0 as above; on Windows
 * GetNamedPipeClientSessionId on a server end, GetNamedPipeServerSessionId on a client
 * end. posix: getsid(pid); UV_ENOTSUP on Windows. */
void np_platform_peer_sessions(uv_pipe_t *pipe, const np_cred *cred, long *login, long *posix);
long np_platform_pid(void);

/* Reads what has already arrived on the pipe, without waiting: the bytes read, 0 at the
 * end of stream, UV_EAGAIN when nothing is there now, another negative uv error, or
 * UV_ENOTSUP where the OS offers no such read (Windows: libuv owns the handle's reads). */
long np_platform_read_now(uv_pipe_t *pipe, char *buf, size_t len);

/* Bytes written on this pipe that the peer has not read yet (SIOCOUTQ on Linux);
 * UV_ECONNRESET when the peer closed without reading them all; UV_ENOTSUP when the
 * OS cannot tell, in which case np_platform_flush_start waits instead. */
long np_platform_unread(uv_pipe_t *pipe);

/* A flush that waits off the loop thread (Windows: FlushFileBuffers, which blocks until
 * the client has read everything, on a libuv threadpool thread). start returns
 * UV_ENOTSUP where np_platform_unread answers instead (Unix). cb runs on the loop
 * thread with 0 or a negative uv error code, unless np_platform_flush_cancel came first:
 * cancel interrupts the blocked call and guarantees cb is never called. */
typedef struct np_flush np_flush;
typedef void (*np_flush_cb)(void *arg, int status);
int np_platform_flush_start(uv_loop_t *loop, uv_pipe_t *pipe, np_flush_cb cb, void *arg, np_flush **out);
void np_platform_flush_cancel(np_flush *f);

/* DisconnectNamedPipe before the handle closes: on Windows the server end drops what
 * the client has not read yet, so disconnect is flush-less there. Nothing on Unix,
 * where a closed socket's unread bytes stay readable by the peer. */
void np_platform_disconnect(uv_pipe_t *pipe);

/* Socket file bookkeeping so that a server removes only the file it created. */
typedef struct np_file_id {
  unsigned long long dev, ino;
} np_file_id;
int np_platform_file_id(const char *path, np_file_id *out);
void np_platform_unlink_if_same(const char *path, const np_file_id *id);

/* Binds pipe (initialised, not yet open) to path with the socket file created no
 * wider than mode: there is no window with wider access, and the process umask is
 * neither used nor changed. UV_EADDRINUSE when something exists at path already. The
 * handle does not own the file, so closing it never removes it
 * (np_platform_unlink_if_same does). */
int np_platform_bind(uv_pipe_t *pipe, const char *path, int mode);

/* Accepting without uv_listen. libuv 1.44's uv_listen accepts in uv__server_io, which on
 * EMFILE/ENFILE closes the loop's spare descriptor and then accepts and closes every client
 * waiting in the backlog (uv__emfile_trick in src/unix/stream.c): they are reset, unseen
 * and uncounted. Where the platform can, the engine watches the listening socket itself
 * and accepts with these, so that out of descriptors it just stops watching.
 * listener_fd: the descriptor to watch for waiting clients, or UV_ENOTSUP where the
 * platform creates the instances itself (Windows: np_platform_instances_start).
 * listen: listen(2) with this backlog; called again, it changes the backlog.
 * accept: opens client (initialised, not open) on one waiting client: 0, UV_EAGAIN when
 * none waits, or another negative uv error code (UV_EMFILE, UV_ENFILE: no descriptor for
 * it; the client stays waiting). */
int np_platform_listener_fd(uv_pipe_t *listener);
int np_platform_listen(uv_pipe_t *listener, int backlog);
int np_platform_accept(uv_pipe_t *listener, uv_pipe_t *client);

/* Pipe instances that the platform creates itself (Windows). libuv 1.44 creates every
 * instance with the default security descriptor, in byte mode and unlimited; npipe
 * creates them with CreateNamedPipeW, waits for each client off the loop, and hands the
 * connected handle to libuv. start creates the first instance (a name already served
 * is refused: UV_EADDRINUSE) and calls cb on the loop thread with a C runtime
 * descriptor for each connected client, to be opened with np_platform_instance_open.
 * max_instances 0 is unlimited; message asks for a message-type pipe; sddl (NULL: only
 * this user and SYSTEM) is the security descriptor. UV_ENOTSUP where the engine
 * accepts on a socket instead (Unix). room says that a connection has closed: an
 * instance is free again. close cancels the wait for a client, closes the pending
 * instance and calls closed from the loop once its handles are gone; cb is not called
 * after close. */
typedef struct np_instances np_instances;
typedef void (*np_instance_cb)(void *arg, int fd);
int np_platform_instances_start(uv_loop_t *loop, const char *path, int max_instances, int message,
                                const char *sddl, np_instance_cb cb, void *arg, np_instances **out,
                                char *err, size_t errlen);
void np_platform_instances_room(np_instances *in);
void np_platform_instances_close(np_instances *in, void (*closed)(void *arg), void *arg);
/* Opens client (initialised, not open) on a descriptor from np_instance_cb, which it
 * takes over whether it succeeds or not. */
int np_platform_instance_open(uv_pipe_t *client, int fd);

/* Opens a client's end of path into pipe (initialised, not open) at once, where the
 * platform opens it itself (Windows: CreateFileW, whose ERROR_PIPE_BUSY is UV_EAGAIN
 * at once instead of libuv's 30 s of uncancellable retries): 0 or a negative uv error
 * code; UV_ENOTSUP where the engine connects through uv_pipe_connect (Unix). */
int np_platform_connect(uv_pipe_t *pipe, const char *path);

/* Message-type pipes (Windows PIPE_TYPE_MESSAGE), read in byte read mode: 1 when pipe
 * is one (0 on Unix), and the bytes left of the message at the head of the pipe. */
int np_platform_message_pipe(uv_pipe_t *pipe);
long np_platform_message_left(uv_pipe_t *pipe);

#endif
