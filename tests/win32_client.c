/* A plain Win32 client of an npipe server, written with nothing but Win32 calls, as
 * programs that know nothing of npipe talk to a named pipe. spec/win32_spec.lua starts
 * it (under Wine in CI) against an npipe server whose request handler answers "re:"
 * followed by the request:
 *   win32_client.exe MSG_PIPE LIMIT_PIPE
 * MSG_PIPE: a server with framing = "message"; LIMIT_PIPE: one with max_instances = 4,
 * whose connections stay open until the client closes them.
 * Prints one line per check, "ok NAME" or "fail NAME: why", and exits 0 when all passed. */
#include <stdio.h>
#include <string.h>
#include <windows.h>
#include <aclapi.h>

static int failures;

static void report(const char *name, int ok, const char *fmt, ...) {
  if (ok) {
    printf("ok %s\n", name);
  } else {
    va_list ap;
    va_start(ap, fmt);
    printf("fail %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failures++;
  }
  fflush(stdout);
}

static HANDLE open_pipe(const WCHAR *name, DWORD access) {
  return CreateFileW(name, access, 0, NULL, OPEN_EXISTING, 0, NULL);
}

/* CallNamedPipe: connect, one message each way, disconnect. */
static void check_call(const WCHAR *name) {
  char reply[64] = {0};
  DWORD n = 0;
  BOOL ok = CallNamedPipeW(name, "ping", 4, reply, sizeof reply - 1, &n, 5000);
  report("CallNamedPipeW", ok && n == 7 && memcmp(reply, "re:ping", 7) == 0,
         "ok=%d error=%lu reply '%.*s'", ok, ok ? 0UL : GetLastError(), (int)n, reply);
}

/* TransactNamedPipe needs the client in message read mode. */
static void check_transact(const WCHAR *name) {
  HANDLE h = open_pipe(name, GENERIC_READ | GENERIC_WRITE);
  if (h == INVALID_HANDLE_VALUE) {
    report("TransactNamedPipe", 0, "CreateFileW: error %lu", GetLastError());
    return;
  }
  DWORD mode = PIPE_READMODE_MESSAGE;
  char reply[64] = {0};
  DWORD n = 0;
  BOOL set = SetNamedPipeHandleState(h, &mode, NULL, NULL);
  BOOL ok = set && TransactNamedPipe(h, "t1", 2, reply, sizeof reply - 1, &n, NULL);
  report("TransactNamedPipe", ok && n == 5 && memcmp(reply, "re:t1", 5) == 0,
         "SetNamedPipeHandleState=%d ok=%d error=%lu reply '%.*s'", set, ok, ok ? 0UL : GetLastError(),
         (int)n, reply);
  CloseHandle(h);
}

/* Three WriteFile calls are three messages for the server (three requests, three
 * replies), and each ReadFile in message read mode reads exactly one reply. */
static void check_three_messages(const WCHAR *name) {
  static const char *const msgs[] = {"a", "bb", "ccc"};
  HANDLE h = open_pipe(name, GENERIC_READ | GENERIC_WRITE);
  if (h == INVALID_HANDLE_VALUE) {
    report("three messages", 0, "CreateFileW: error %lu", GetLastError());
    return;
  }
  DWORD mode = PIPE_READMODE_MESSAGE, n;
  BOOL ok = SetNamedPipeHandleState(h, &mode, NULL, NULL);
  for (int i = 0; ok && i < 3; i++) ok = WriteFile(h, msgs[i], (DWORD)strlen(msgs[i]), &n, NULL);
  Sleep(300); /* all three replies wait in the pipe: only the message bounds separate them */
  char got[3][64];
  DWORD len[3] = {0, 0, 0};
  for (int i = 0; ok && i < 3; i++) {
    ok = ReadFile(h, got[i], sizeof got[i], &len[i], NULL);
    char want[16];
    snprintf(want, sizeof want, "re:%s", msgs[i]);
    if (ok && (len[i] != strlen(want) || memcmp(got[i], want, len[i]) != 0)) {
      report("three messages", 0, "read %d: '%.*s', expected '%s'", i + 1, (int)len[i], got[i], want);
      CloseHandle(h);
      return;
    }
  }
  report("three messages", ok, "error %lu", GetLastError());
  CloseHandle(h);
}

/* nMaxInstances = 4: the 5th client is told the pipe is busy, and WaitNamedPipe
 * returns once a connection has ended and the server made a new instance. */
static void check_busy(const WCHAR *name) {
  HANDLE h[5];
  int opened = 0;
  for (; opened < 4; opened++) {
    h[opened] = open_pipe(name, GENERIC_READ | GENERIC_WRITE);
    if (h[opened] == INVALID_HANDLE_VALUE) break;
  }
  if (opened < 4) {
    report("ERROR_PIPE_BUSY at max_instances", 0, "client %d of 4: error %lu", opened + 1, GetLastError());
  } else {
    Sleep(300); /* time for the server to make new instances, if the limit allowed them */
    h[4] = open_pipe(name, GENERIC_READ | GENERIC_WRITE);
    DWORD e = h[4] == INVALID_HANDLE_VALUE ? GetLastError() : 0;
    if (h[4] != INVALID_HANDLE_VALUE) CloseHandle(h[4]);
    report("ERROR_PIPE_BUSY at max_instances", e == ERROR_PIPE_BUSY, "5th CreateFileW: error %lu", e);
    CloseHandle(h[0]); /* one client leaves */
    opened--;
    memmove(h, h + 1, sizeof h[0] * 3);
    BOOL waited = WaitNamedPipeW(name, 5000);
    DWORD we = waited ? 0 : GetLastError();
    HANDLE again = waited ? open_pipe(name, GENERIC_READ | GENERIC_WRITE) : INVALID_HANDLE_VALUE;
    report("WaitNamedPipeW after a client left", waited && again != INVALID_HANDLE_VALUE,
           "WaitNamedPipeW=%d error %lu", waited, waited ? GetLastError() : we);
    if (again != INVALID_HANDLE_VALUE) CloseHandle(again);
  }
  for (int i = 0; i < opened; i++) CloseHandle(h[i]);
}

/* The pipe's DACL, as GetSecurityInfo reads it back: present, and with no ACE for
 * Everyone, Anonymous or Network. */
static void check_dacl(const WCHAR *name) {
  static const struct {
    WELL_KNOWN_SID_TYPE type;
    const char *name;
  } banned[] = {{WinWorldSid, "Everyone"}, {WinAnonymousSid, "Anonymous"}, {WinNetworkSid, "Network"}};
  HANDLE h = open_pipe(name, GENERIC_READ | GENERIC_WRITE | READ_CONTROL);
  if (h == INVALID_HANDLE_VALUE) {
    report("DACL", 0, "CreateFileW: error %lu", GetLastError());
    return;
  }
  PACL dacl = NULL;
  PSECURITY_DESCRIPTOR sd = NULL;
  DWORD rc = GetSecurityInfo(h, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL, &dacl, NULL, &sd);
  CloseHandle(h);
  if (rc != ERROR_SUCCESS || dacl == NULL) { /* no DACL at all: anyone may open the pipe */
    report("DACL", 0, "GetSecurityInfo: error %lu, DACL %s", rc, dacl ? "present" : "absent (NULL: access for everyone)");
    if (sd) LocalFree(sd);
    return;
  }
  char why[256] = "";
  for (DWORD i = 0; i < dacl->AceCount && !why[0]; i++) {
    ACE_HEADER *ace;
    if (!GetAce(dacl, i, (void **)&ace)) continue;
    if (ace->AceType != ACCESS_ALLOWED_ACE_TYPE) continue;
    PSID sid = &((ACCESS_ALLOWED_ACE *)ace)->SidStart;
    for (size_t k = 0; k < sizeof banned / sizeof banned[0]; k++) {
      BYTE buf[SECURITY_MAX_SID_SIZE];
      DWORD size = sizeof buf;
      if (CreateWellKnownSid(banned[k].type, NULL, buf, &size) && EqualSid(sid, buf))
        snprintf(why, sizeof why, "ACE %lu allows %s", (unsigned long)i, banned[k].name);
    }
  }
  report("DACL", why[0] == '\0' && dacl->AceCount > 0, "%s", why[0] ? why : "no ACE at all");
  LocalFree(sd);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: win32_client MSG_PIPE LIMIT_PIPE\n");
    return 2;
  }
  WCHAR msg[300], limit[300];
  swprintf(msg, 300, L"\\\\.\\pipe\\%hs", argv[1]);
  swprintf(limit, 300, L"\\\\.\\pipe\\%hs", argv[2]);
  check_call(msg);
  check_transact(msg);
  check_three_messages(msg);
  check_busy(limit);
  check_dacl(msg);
  char reply[16];
  DWORD n;
  CallNamedPipeW(msg, "done", 4, reply, sizeof reply, &n, 5000); /* tells the spec we are done */
  printf("done %d failed\n", failures);
  return failures ? 1 : 0;
}
