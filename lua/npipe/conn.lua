-- Connections: the Conn class (npipe.Conn), the messages each one keeps for conn:read(),
-- the hooks of its job queue (the queue itself is npipe.sched's), and the peer's identity.
-- The engine's events reach a connection through the functions at the end, which
-- npipe.server's event handlers call.
local core = require("npipe.core")
local sched = require("npipe.sched")
local args = require("npipe.args")

local wait, wait_for, waiter, wake = sched.wait, sched.wait_for, sched.waiter, sched.wake
local C = core.conn -- the C functions of a connection (src/lnpipe_objects.c)
local check_timeout = args.check_timeout

local INBOX_PAUSE = 32  -- unread messages (or queued handler jobs) at which reading stops
local INBOX_RESUME = 8

local M = {} -- for npipe's other modules

-- The methods of connections. A connection is a userdata of npipe.core's, whose
-- metatable finds these methods, keeps its fields (conn.state, conn._closed...) and
-- knows conn._server (core.conn_class).
local Conn = {}
M.Conn = Conn

-- A handler of this connection raised: report it (through the error handler when there
-- is one), drop what was queued, and end this connection only.
local function job_failed(conn, err)
  if conn._failed then
    sched.report("error in an error handler", err)
    return
  end
  conn._failed = true
  sched.clear(conn)
  local on_error = conn._server and conn._server:_handler("error")
  if on_error then
    sched.enqueue(conn, on_error, conn, err)
  else
    sched.report(("handler error on connection #%d"):format(conn:id()), err)
  end
  local first = sched.describe(err):match("^[^\n]*")
  conn:_end_now("handler error: " .. first, "EHANDLER") -- its disconnect handler queues after
end

-- The job queues' hooks (connections are sched's only owners of jobs): while a queue is
-- long the engine holds that connection's input.
sched.job_hooks({
  pause = INBOX_PAUSE,
  resume = INBOX_RESUME,
  hold = function(conn, on) C.hold(conn, "jobs", on) end,
  on_failed = job_failed,
})

-- The connection c (from npipe.core): accepted by server, or this process's own end
-- (a client) when server is nil. npipe.server submits the handlers of its events for
-- it to npipe.sched, which runs a connection's jobs one at a time, in order.
-- An idle connection costs its fields: a server's connection sets none (it finds its
-- options on its server), so it has no field table at all.
function M.new(c, server, high_water, framing)
  if not server then
    c._client, c._high_water, c._framing = true, high_water, framing
  end
  return c
end

local function high_water(conn) return conn._high_water or conn._server._high_water end

function Conn:__tostring()
  return ("npipe.conn(#%d%s)"):format(self:id(), self._closed and ", closed" or "")
end

Conn.__close = function(self) self:disconnect() end

--- Whether no handler job of this connection runs now and it is not ending.
function M.quiet(conn)
  return not sched.running(conn) and not conn._ending
end

-- drop: DisconnectNamedPipe, which on Windows also takes back what the client has not
-- read; only conn:disconnect() asks for it. Other ends are graceful: what was written is
-- delivered (for up to the linger time) before the connection closes.
function Conn:_end_now(reason, code, drop)
  if self._closed or (self._ending and not drop) then return end
  self._ending = self._ending or reason
  C.disconnect(self, reason, code, drop)
end

-- Messages kept for conn:read() when no data handler takes them; the engine holds
-- input while too many (or too many bytes) wait, so a slow reader bounds its own memory.
function M.keep(conn, msg)
  local r = conn._readers
  if r and #r > 0 then
    wake(table.remove(r, 1), msg)
    return
  end
  local box = conn._inbox
  if not box then box = { head = 1, tail = 0, bytes = 0 }; conn._inbox = box end
  box.tail = box.tail + 1
  box[box.tail] = msg
  box.bytes = box.bytes + #msg
  if (box.tail - box.head + 1 >= INBOX_PAUSE or box.bytes >= high_water(conn)) and not conn._inbox_held then
    conn._inbox_held = true
    C.hold(conn, "inbox", true)
  end
end

local function inbox_pop(conn)
  local box = conn._inbox
  if not box or box.head > box.tail then return nil end
  local msg = box[box.head]
  box[box.head] = nil
  box.head = box.head + 1
  box.bytes = box.bytes - #msg
  if conn._inbox_held and box.tail - box.head + 1 <= INBOX_RESUME and box.bytes < high_water(conn) / 2 then
    conn._inbox_held = false
    C.hold(conn, "inbox", false) -- kept frames may arrive at once, behind msg
  end
  return msg
end

local function closed_error(conn)
  if not conn._closed then return nil, "pipe is closing (" .. tostring(conn._ending) .. ")", "EPIPE" end
  return nil, "pipe is closed (" .. tostring(conn._closed) .. ")", "EPIPE"
end

-- Removes waiter w from list (it gave up).
local function forget(list, w)
  for i = #list, 1, -1 do if list[i] == w then table.remove(list, i) end end
end

-- A write went over high_water: wait until the peer has read enough (backpressure,
-- instead of queueing without bound). The data is queued already: if the connection
-- ends meanwhile, the close accounts for it (delivered, or counted in undelivered()),
-- so the write still succeeded.
local function drain(conn)
  local w = waiter()
  local d = conn._drainers
  if not d then d = {}; conn._drainers = d end
  d[#d + 1] = w
  wait(w)
  return true
end

--- Queues data to the peer (framed as one line or message in those framings).
function Conn:write(data)
  if self._closed or self._ending then return closed_error(self) end
  local over, err, code = C.write(self, data) -- raises for a non-string, as Lua's own write does
  if over == nil then return nil, err, code end
  if over then return drain(self) end
  return true
end
-- The same in C on Lua 5.3+ (src/lnpipe_fast.c), which calls the function above for
-- anything but an open connection, a string and room under high_water.
Conn.write = core.fast_write(Conn.write, drain) or Conn.write

--- Reads one chunk, line or message; nil, "EOF" once the peer ended its input (server
-- side), nil, "closed" at the end; nil, "timeout".
function Conn:read(timeout)
  check_timeout("read", 1, timeout)
  local msg = inbox_pop(self)
  if msg then return msg end
  if self._closed then return nil, "closed", self._code end
  if self._eof then return nil, "EOF", "EOF" end
  local w = waiter()
  local r = self._readers
  if not r then r = {}; self._readers = r end
  r[#r + 1] = w
  local m, err, code = wait_for(w, timeout)
  if m == nil then forget(r, w) end
  return m, err, code
end

--- FlushFileBuffers: waits until the peer has read everything written so far.
function Conn:flush(timeout)
  check_timeout("flush", 1, timeout)
  if self._closed then return closed_error(self) end
  local done, err, code = C.flush(self)
  if done == nil then return nil, err, code end
  if done then return true end
  local w = waiter()
  local f = self._flushers
  if not f then f = {}; self._flushers = f end
  f[#f + 1] = w
  local ok, err2, code2 = wait_for(w, timeout)
  if ok == nil and err2 == "timeout" then
    forget(f, w)
    -- Nobody waits any more: on Windows this frees the thread blocked in FlushFileBuffers.
    if #f == 0 and self._flushers == f then C.flush_cancel(self) end
  end
  return ok, err2, code2
end

--- TransactNamedPipe: writes one message and reads the reply. Requests from several
-- coroutines may be in flight on one connection; replies are matched in order. On a
-- timeout the connection is disconnected, since a late reply would answer the next request.
function Conn:transact(msg, timeout)
  check_timeout("transact", 2, timeout)
  local ok, err, code = self:write(msg)
  if not ok then return nil, err, code end
  local reply
  reply, err, code = self:read(timeout)
  if reply == nil and err == "timeout" then
    self:disconnect("transact timed out")
  end
  return reply, err, code
end

--- DisconnectNamedPipe: ends the connection at once; unsent and unread data is dropped.
function Conn:disconnect(reason)
  if self._closed then return true end
  sched.clear(self)
  self._inbox = nil
  self:_end_now(reason or (self._client and "disconnected by the client" or "disconnected by the server"),
                "DISCONNECTED", true)
  return true
end
Conn.close = Conn.disconnect

function Conn:is_open() return not self._closed and not self._ending end
--- True once the peer has ended its input (it may still read what this side writes).
function Conn:input_ended() return self._eof == true end
--- What npipe's write queue for this connection costs now, in bytes (bookkeeping
-- included); high_water bounds it.
Conn.queued = C.queued
--- What npipe could not deliver when the connection closed: bytes, messages.
function Conn:undelivered() return self._lost_bytes or 0, self._lost_msgs or 0 end
function Conn:closed_reason() return self._closed, self._code end
Conn.id = C.id
function Conn:server() return self._server end
function Conn:framing() return self._framing or self._server._framing end

---- identity ----

-- The peer's identity, read once at connect time (SO_PEERCRED is fixed then, and the
-- values stay readable after the connection has closed).
local function capture(conn)
  local pid, uid, gid, sid, sid_err, sid_code = C.peer(conn)
  if not pid then
    conn._cred = false
    return
  end
  conn._cred = { pid = pid, uid = uid, gid = gid, sid = C.peer_sid(conn) }
  conn._sid, conn._sid_err, conn._sid_code = sid, sid_err, sid_code
  conn._psid, conn._psid_err, conn._psid_code = C.posix_session(conn)
end

local function peer(self)
  if self._cred == nil then capture(self) end
  return self._cred
end

local function copy(t) return { pid = t.pid, uid = t.uid, gid = t.gid, sid = t.sid } end

local function peer_session(self)
  if not peer(self) then return nil, "peer credentials are not available", "ENOTSUP" end
  if self._sid == nil then return nil, self._sid_err, self._sid_code end
  return self._sid
end

local function peer_posix_session(self)
  if not peer(self) then return nil, "peer credentials are not available", "ENOTSUP" end
  if self._psid == nil then return nil, self._psid_err, self._psid_code end
  return self._psid
end

--- GetNamedPipeClientSessionId (server side) / the login session of this process (client side).
function Conn:session_id()
  if self._client then return core.session_id() end
  return peer_session(self)
end

--- GetNamedPipeServerSessionId.
function Conn:server_session_id()
  if self._client then return peer_session(self) end
  return core.session_id()
end

--- The client's POSIX session (getsid), on Unix; nil, message, "ENOTSUP" on Windows.
function Conn:posix_session_id()
  if self._client then return core.posix_session_id() end
  return peer_posix_session(self)
end

--- The server's POSIX session.
function Conn:server_posix_session_id()
  if self._client then return peer_posix_session(self) end
  return core.posix_session_id()
end

-- One end's credentials: this process's ({pid}) when own, else the peer's (who: what
-- the peer is, for the error).
local function credentials(self, own, who)
  if own then return { pid = core.pid() } end
  local c = peer(self)
  if not c then return nil, who .. " credentials are not available", "ENOTSUP" end
  return copy(c)
end

local function pid_of(c, err, code)
  if not c then return nil, err, code end
  return c.pid
end

--- GetNamedPipeClientProcessId and the client's uid and gid (server side).
function Conn:credentials() return credentials(self, self._client, "peer") end
function Conn:process_id() return pid_of(self:credentials()) end

--- The server's identity, for a client that checks whom it talks to.
function Conn:server_credentials() return credentials(self, not self._client, "server") end
function Conn:server_process_id() return pid_of(self:server_credentials()) end

--- The peer as an allow policy sees it: {pid, uid, gid, sid, session_id, posix_session_id},
-- fields nil where unknown.
function M.peer_info(conn)
  local cred = peer(conn)
  local p = cred and copy(cred) or {}
  p.session_id = peer_session(conn)
  p.posix_session_id = peer_posix_session(conn)
  return p
end

---- a client's connection attempt ----

--- A client connection on c (from core.connect) whose attempt is under way.
function M.dial(c, o)
  local conn = M.new(c, nil, o.high_water, o.framing)
  conn._connw = waiter()
  return conn
end

--- Waits up to seconds for the server to answer a dial: true, or nil, why, code after
-- ending the attempt.
function M.await_answer(conn, seconds)
  local ok, err, code = wait_for(conn._connw, seconds)
  conn._connw = nil
  if ok then
    capture(conn)
    return true
  end
  conn:_end_now("connect abandoned", "ECANCELED")
  return nil, err, code
end

-- A client that insists on whom it talks to (against pipe squatting): expect =
-- {uid = ..., gid = ..., pid = ..., sid = ...}; any mismatch fails closed.
function M.check_identity(conn, path, expect)
  if not expect then return conn end
  local cred = peer(conn)
  for _, k in ipairs({ "uid", "gid", "pid", "sid" }) do
    if expect[k] ~= nil and (not cred or cred[k] ~= expect[k]) then
      conn:_end_now("server identity mismatch", "EPERM")
      return nil, ("refusing %s: the server's %s is %s, expected %s"):format(
        path, k, cred and cred[k] ~= nil and tostring(cred[k]) or "unknown", tostring(expect[k])), "EPERM"
    end
  end
  return conn
end

---- the engine's events: the connection's part ----

local function wake_all(list, ...)
  if not list then return end
  for i = 1, #list do wake(list[i], ...) end
end

--- The connection closed: whoever waits on it learns why.
function M.closed(conn, reason, code, lost_bytes, lost_msgs)
  conn._closed, conn._code = reason, code
  conn._lost_bytes, conn._lost_msgs = lost_bytes, lost_msgs
  wake_all(conn._readers, nil, "closed", code)
  wake_all(conn._flushers, nil, "pipe closed before the peer read everything (" .. reason .. ")", code)
  conn._readers, conn._flushers = nil, nil
  wake_all(conn._drainers) -- a waiting write's data was queued: it returns true all the same
  conn._drainers = nil
end

--- The peer ended its input: later reads answer EOF once the kept messages are read.
-- wake_readers: readers waiting now get EOF (otherwise they learn of the close).
function M.input_ended(conn, wake_readers)
  conn._eof = true
  if wake_readers then
    wake_all(conn._readers, nil, "EOF", "EOF")
    conn._readers = nil
  end
end

function M.connected(conn, err, code)
  local w = conn._connw
  if not w then return end -- given up already
  if err then wake(w, nil, err, code) else wake(w, true) end
end

function M.flushed(conn)
  wake_all(conn._flushers, true)
  conn._flushers = nil
end

function M.drained(conn)
  wake_all(conn._drainers, true)
  conn._drainers = nil
end

core.conn_class(Conn)

return M
