--- npipe: named-pipe servers and clients for Lua on a libuv engine.
-- The reference is docs/API.md; this file is the Lua side of the module: objects,
-- handlers and waiting. The C engine (npipe.core) does the I/O and framing.
local core = require("npipe.core")
local sched = require("npipe.sched")

local wait, wait_for, waiter, wake = sched.wait, sched.wait_for, sched.waiter, sched.wake
local submit, settle = sched.submit, sched.settle

local npipe = { _VERSION = "npipe " .. core.version, version = core.version }

local DEFAULTS = {
  framing = "bytes",
  max_message = 1024 * 1024,
  high_water = 1024 * 1024,
  mode = "0600",
  backlog = 511,
  linger = 5,
}
local INBOX_PAUSE = 32  -- unread messages (or queued handler jobs) at which reading stops
local INBOX_RESUME = 8
local RETRY_SECONDS = 0.05 -- how often connect retries while it waits for a server

---- argument checks (programming errors raise) ----

local function check_type(fname, n, value, want, optional)
  if (optional and value == nil) or type(value) == want then return end
  error(("bad argument #%d to '%s' (%s expected, got %s)"):format(n, fname, want, type(value)), 3)
end

local function check_timeout(fname, n, t)
  if t == nil then return end
  if type(t) ~= "number" or t < 0 then
    error(("bad argument #%d to '%s' (timeout must be a non-negative number of seconds)"):format(n, fname), 3)
  end
end

local SERVER_OPTS = { framing = true, max_message = true, high_water = true, mode = true, backlog = true,
                      allow = true, idle_timeout = true, max_instances = true, linger = true }
local CLIENT_OPTS = { framing = true, max_message = true, high_water = true, timeout = true, expect = true,
                      linger = true }

local function options(fname, opts, known)
  check_type(fname, 2, opts, "table", true)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if not known[k] then error(("%s: unknown option '%s'"):format(fname, tostring(k)), 3) end
    o[k] = v
  end
  if type(o.mode) == "string" then
    local m = o.mode:match("^[0-7]+$") and tonumber(o.mode, 8)
    if not m or m > 511 then error(fname .. ": mode must be an octal string such as '0660'", 3) end
    o.mode = m
  elseif type(o.mode) ~= "number" or o.mode < 0 or o.mode > 511 or o.mode % 1 ~= 0 then
    -- 0666 in Lua source is decimal 666: insist on a string for anything that is not plainly bits
    error(fname .. ": mode must be an octal string such as '0660' (or a number 0..511)", 3)
  end
  if type(o.linger) ~= "number" or o.linger < 0 then
    error(fname .. ": linger must be a non-negative number of seconds", 3)
  end
  return o
end

---- connections ----

local Conn = {}
Conn.__index = Conn
npipe.Conn = Conn

local function new_conn(c, server, high_water, framing)
  local conn = setmetatable({ _c = c, _id = c:id(), _server = server, _qn = 0, state = {},
                              _high_water = high_water, _framing = framing }, Conn)
  core.bind(c, conn)
  return conn
end

function Conn:__tostring()
  return ("npipe.conn(#%d%s)"):format(self._id, self._closed and ", closed" or "")
end

Conn.__close = function(self) self:disconnect() end

-- job queue (see sched.submit). While it is long the engine holds this connection's
-- input (reads nothing, delivers no frame), so it grows by at most one frame past the mark.
function Conn:_enqueue(job)
  local q = self._q
  if not q then q = { head = 1, tail = 0 }; self._q = q end
  q.tail = q.tail + 1
  q[q.tail] = job
  self._qn = self._qn + 1
  if self._qn >= INBOX_PAUSE and not self._jobs_held then
    self._jobs_held = true
    self._c:hold("jobs", true)
  end
end

function Conn:_dequeue()
  local q = self._q
  if not q or self._qn == 0 then return nil end
  local job = q[q.head]
  q[q.head] = nil
  q.head = q.head + 1
  self._qn = self._qn - 1
  if self._qn <= INBOX_RESUME and self._jobs_held then
    self._jobs_held = false
    -- Releasing may deliver kept frames at once: marked busy, they queue behind this job.
    local busy = self._busy
    self._busy = true
    self._c:hold("jobs", false)
    self._busy = busy
  end
  return job
end

function Conn:_drop_queue()
  self._q, self._qn = nil, 0
end

-- A handler of this connection raised: report it (through the error handler when there
-- is one), drop what was queued, and end this connection only.
function Conn:_job_failed(err)
  if self._failed then
    sched.report("error in an error handler", err)
    return
  end
  self._failed = true
  self:_drop_queue()
  local h = self._server and self._server._handlers
  local on_error = h and h.error
  if on_error then
    self:_enqueue({ on_error, self, err })
  else
    sched.report(("handler error on connection #%d"):format(self._id), err)
  end
  local first = sched.describe(err):match("^[^\n]*")
  self:_end_now("handler error: " .. first, "EHANDLER") -- its disconnect handler queues after
end

-- drop: DisconnectNamedPipe, which on Windows also takes back what the client has not
-- read; only conn:disconnect() asks for it. Other ends are graceful: what was written is
-- delivered (for up to the linger time) before the connection closes.
function Conn:_end_now(reason, code, drop)
  if self._closed or (self._ending and not drop) then return end
  self._ending = self._ending or reason
  self._c:disconnect(reason, code, drop)
end

-- Messages kept for conn:read() when no data handler takes them; the engine holds
-- input while too many (or too many bytes) wait, so a slow reader bounds its own memory.
local function inbox_push(conn, msg)
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
  if (box.tail - box.head + 1 >= INBOX_PAUSE or box.bytes >= conn._high_water) and not conn._inbox_held then
    conn._inbox_held = true
    conn._c:hold("inbox", true)
  end
end

local function inbox_pop(conn)
  local box = conn._inbox
  if not box or box.head > box.tail then return nil end
  local msg = box[box.head]
  box[box.head] = nil
  box.head = box.head + 1
  box.bytes = box.bytes - #msg
  if conn._inbox_held and box.tail - box.head + 1 <= INBOX_RESUME and box.bytes < conn._high_water / 2 then
    conn._inbox_held = false
    conn._c:hold("inbox", false) -- kept frames may arrive at once, behind msg
  end
  return msg
end

local function closed_error(conn)
  if not conn._closed then return nil, "pipe is closing (" .. tostring(conn._ending) .. ")", "EPIPE" end
  return nil, "pipe is closed (" .. tostring(conn._closed) .. ")", "EPIPE"
end

--- Queues data to the peer (framed as one line or message in those framings).
function Conn:write(data)
  if self._closed or self._ending then return closed_error(self) end
  local over, err, code = self._c:write(data) -- raises for a non-string, as Lua's own write does
  if over == nil then return nil, err, code end
  if over and not self._closed then
    -- backpressure: wait until the peer has read enough, instead of queueing without bound
    local w = waiter()
    local d = self._drainers
    if not d then d = {}; self._drainers = d end
    d[#d + 1] = w
    -- Queued already: if the connection ends meanwhile, the close accounts for it
    -- (delivered, or counted in undelivered()), so the write still succeeded.
    wait(w)
  end
  return true
end

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
  if m == nil then
    for i = #r, 1, -1 do if r[i] == w then table.remove(r, i) end end
  end
  return m, err, code
end

--- FlushFileBuffers: waits until the peer has read everything written so far.
function Conn:flush(timeout)
  check_timeout("flush", 1, timeout)
  if self._closed then return closed_error(self) end
  local done, err, code = self._c:flush()
  if done == nil then return nil, err, code end
  if done then return true end
  local w = waiter()
  local f = self._flushers
  if not f then f = {}; self._flushers = f end
  f[#f + 1] = w
  local ok, err2, code2 = wait_for(w, timeout)
  if ok == nil and err2 == "timeout" then
    for i = #f, 1, -1 do if f[i] == w then table.remove(f, i) end end
    -- Nobody waits any more: on Windows this frees the thread blocked in FlushFileBuffers.
    if #f == 0 and self._flushers == f then self._c:flush_cancel() end
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
  self:_drop_queue()
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
function Conn:queued() return self._c:queued() end
--- What npipe could not deliver when the connection closed: bytes, messages.
function Conn:undelivered() return self._lost_bytes or 0, self._lost_msgs or 0 end
function Conn:closed_reason() return self._closed, self._code end
function Conn:id() return self._id end
function Conn:server() return self._server end
function Conn:framing() return self._framing end

-- The peer's identity, read once at connect time (SO_PEERCRED is fixed then, and the
-- values stay readable after the connection has closed).
local function capture(conn)
  local pid, uid, gid, sid, sid_err, sid_code = conn._c:peer()
  if not pid then
    conn._cred = false
    return
  end
  conn._cred = { pid = pid, uid = uid, gid = gid }
  conn._sid, conn._sid_err, conn._sid_code = sid, sid_err, sid_code
end

local function peer(self)
  if self._cred == nil then capture(self) end
  return self._cred
end

local function copy(t) return { pid = t.pid, uid = t.uid, gid = t.gid } end

local function peer_session(self)
  if not peer(self) then return nil, "peer credentials are not available", "ENOTSUP" end
  if self._sid == nil then return nil, self._sid_err, self._sid_code end
  return self._sid
end

--- GetNamedPipeClientSessionId (server side) / the session of this process (client side).
function Conn:session_id()
  if self._client then return core.session_id() end
  return peer_session(self)
end

--- GetNamedPipeServerSessionId.
function Conn:server_session_id()
  if self._client then return peer_session(self) end
  return core.session_id()
end

--- GetNamedPipeClientProcessId and the client's uid and gid (server side).
function Conn:credentials()
  if self._client then return { pid = core.pid() } end
  local c = peer(self)
  if not c then return nil, "peer credentials are not available", "ENOTSUP" end
  return copy(c)
end

function Conn:process_id()
  local c, err, code = self:credentials()
  if not c then return nil, err, code end
  return c.pid
end

--- The server's identity, for a client that checks whom it talks to.
function Conn:server_credentials()
  if not self._client then return { pid = core.pid() } end
  local c = peer(self)
  if not c then return nil, "server credentials are not available", "ENOTSUP" end
  return copy(c)
end

function Conn:server_process_id()
  local c, err, code = self:server_credentials()
  if not c then return nil, err, code end
  return c.pid
end

---- servers ----

local Server = {}
Server.__index = Server
npipe.Server = Server
-- A listening server runs even when the script drops its object.
local live_servers = {} -- luacheck: ignore 241

function Server:__tostring()
  return ("npipe.server(%s)"):format(self._path)
end

Server.__close = function(self) self:close() end

function Server:path() return self._path end
function Server.session_id() return core.session_id() end
function Server:is_open() return self._c:is_open() end

function Server:stats()
  local st = self._c:is_open() and self._c:stats() or self._last_stats
  local out = {}
  for k, v in pairs(st) do out[k] = v end -- not the snapshot itself, which every call would grow
  out.rejected = st.rejected + self._rejected
  out.dropped_bytes, out.dropped_messages = self._dropped_bytes, self._dropped_msgs
  return out
end

function Server:_sweep_idle()
  local limit = core.now() - self._idle
  for conn in pairs(self._conns) do
    if conn._last < limit and conn._busy == nil and not conn._ending then
      conn:_end_now("idle timeout", "ETIMEDOUT")
    end
  end
end

--- The open connections, as a list.
function Server:connections()
  local list = {}
  for conn in pairs(self._conns) do list[#list + 1] = conn end
  table.sort(list, function(a, b) return a:id() < b:id() end)
  return list
end

local function wait_drained(server, seconds)
  if not next(server._conns) then return end
  local w = waiter()
  server._drained = w
  wait_for(w, seconds)
end

--- Stops accepting, removes the socket file and ends the connections gracefully (what
-- they wrote is delivered for up to the linger time): at once, or after letting them
-- finish for up to opts.drain seconds. With drain it returns once every connection has
-- closed, at most drain + linger seconds later.
function Server:close(opts)
  check_type("close", 1, opts, "table", true)
  if self._c:is_open() then
    self._last_stats = self._c:stats()
    self._c:close()
    live_servers[self] = nil
    if self._stop_idle then self._stop_idle() end
  end
  local drain = opts and opts.drain
  if drain then wait_drained(self, drain) end
  for conn in pairs(self._conns) do conn:_end_now("server closed", "SERVER_CLOSED") end
  if drain then wait_drained(self, self._linger + 1) end -- the engine ends each within linger
  return true
end

--- Serves until SIGINT or SIGTERM (or npipe.stop()), then closes the server, letting
-- connections finish for up to opts.drain seconds (default 2). For scripts whose whole
-- job is this server. Returns the name of the signal, or nil when stopped otherwise.
function Server:run(opts)
  check_type("run", 1, opts, "table", true)
  local drain = opts and opts.drain or 2
  local got
  local function stop(sig)
    got = sig
    self:close({ drain = drain })
    npipe.stop()
  end
  local stops = { npipe.on_signal("SIGINT", stop), npipe.on_signal("SIGTERM", stop) }
  npipe.run()
  for _, unwatch in ipairs(stops) do unwatch() end
  if self:is_open() then self:close() end
  return got
end

-- The handler that data goes to: data(conn, msg), or request(conn, msg) -> reply.
local function data_handler(h)
  if h.data then return h.data end
  if h.request then
    local request = h.request
    return function(conn, msg)
      local reply = request(conn, msg)
      if reply ~= nil then conn:write(reply) end
    end
  end
  return nil
end

local HANDLER_NAMES = { connect = true, data = true, request = true, disconnect = true, error = true,
                        reject = true, eof = true }

local function is_handlers(t)
  for k in pairs(t) do if HANDLER_NAMES[k] then return true end end
  return false
end

-- A function handler is the whole life of one connection: when it returns, what it
-- wrote is delivered (for up to the linger time) and the connection ends.
local function per_connection(fn)
  return function(conn)
    fn(conn)
    conn:_end_now("handler returned", "DISCONNECTED")
  end
end

local function handlers_of(h)
  if type(h) == "function" then return { connect = per_connection(h) } end
  return {
    connect = h.connect, disconnect = h.disconnect, error = h.error, reject = h.reject, eof = h.eof,
    data = data_handler(h),
  }
end

--- CreateNamedPipe + ConnectNamedPipe for every client: serves name with handlers.
function npipe.listen(name, opts, handlers)
  check_type("listen", 1, name, "string")
  if handlers == nil and (type(opts) == "function" or (type(opts) == "table" and is_handlers(opts))) then
    opts, handlers = nil, opts
  end
  if type(handlers) ~= "function" then check_type("listen", 3, handlers, "table") end
  local o = options("listen", opts, SERVER_OPTS)
  if o.allow ~= nil and type(o.allow) ~= "table" and type(o.allow) ~= "function" then
    error("listen: allow must be a table or a function", 2)
  end
  check_timeout("listen", 2, o.idle_timeout)
  local path, err, code = core.resolve(name, "create")
  if not path then return nil, err, code end
  local c
  c, err, code = core.listen(path, o.framing, o.max_message, o.high_water, o.mode, o.backlog,
                             o.max_instances or 0, o.linger)
  if not c then return nil, err, code end
  local h = handlers_of(handlers)
  local server = setmetatable({ _c = c, _path = path, _conns = {}, _handlers = h, _on_data = h.data,
                                _allow = o.allow, _idle = o.idle_timeout, _high_water = o.high_water,
                                _framing = o.framing, _linger = o.linger,
                                _dropped_bytes = 0, _dropped_msgs = 0,
                                _rejected = 0, name = name }, Server)
  core.bind(c, server)
  live_servers[server] = true
  if o.idle_timeout then server._stop_idle = sched.every(math.max(0.01, o.idle_timeout / 4), function()
    server:_sweep_idle()
  end) end
  return server
end

---- clients ----

local function try_connect(path, o)
  local c, err, code = core.connect(path, o.framing, o.max_message, o.high_water, o.linger)
  if not c then return nil, err, code end
  local conn = new_conn(c, nil, o.high_water, o.framing)
  conn._client = true
  conn._connw = waiter()
  return conn
end

-- A client that insists on whom it talks to (against pipe squatting): opts.expect =
-- {uid = ..., gid = ..., pid = ...}; any mismatch fails closed.
local function check_identity(conn, path, expect)
  if not expect then return conn end
  local cred = peer(conn)
  for _, k in ipairs({ "uid", "gid", "pid" }) do
    if expect[k] ~= nil and (not cred or cred[k] ~= expect[k]) then
      conn:_end_now("server identity mismatch", "EPERM")
      return nil, ("refusing %s: the server's %s is %s, expected %s"):format(
        path, k, cred and tostring(cred[k]) or "unknown", tostring(expect[k])), "EPERM"
    end
  end
  return conn
end

-- Worth waiting for: no server yet, a server restarting, all instances busy.
local RETRY_CODES = { ENOENT = true, ECONNREFUSED = true, EAGAIN = true }

--- Connects to a server; with opts.timeout, waits for one to appear or to have
-- room (WaitNamedPipe) for up to that many seconds.
function npipe.connect(name, opts)
  check_type("connect", 1, name, "string")
  local o = options("connect", opts, CLIENT_OPTS)
  check_timeout("connect", 2, o.timeout)
  check_type("connect", 2, o.expect, "table", true)
  local deadline = o.timeout and core.now() + o.timeout
  local last_err
  while true do
    -- "check": a per-user directory that another user owns or can write to is refused,
    -- since its owner decides which socket answers; before every attempt, since a
    -- directory missing at first may be created meanwhile, by anyone.
    local path, err, code = core.resolve(name, "check")
    if not path then return nil, err, code end
    local conn
    conn, err, code = try_connect(path, o)
    if not conn then return nil, err, code end
    -- A local connect is answered at once but reported on the next loop turn: an
    -- attempt is never cut short, the deadline only bounds the retries.
    local left = deadline and math.max(1, deadline - core.now())
    local ok
    ok, err, code = wait_for(conn._connw, left)
    conn._connw = nil
    if ok then
      capture(conn)
      return check_identity(conn, path, o.expect)
    end
    conn:_end_now("connect abandoned", "ECANCELED")
    if code == "EAGAIN" then err = "all instances of the pipe are busy (EAGAIN)" end
    if code ~= "ETIMEDOUT" then last_err = err end -- the latest answer, also after a single try (timeout = 0)
    if code == "ETIMEDOUT" or (deadline and core.now() >= deadline and RETRY_CODES[code]) then
      return nil, ("cannot connect to %s: no server answered within %g s%s"):format(
        path, o.timeout, last_err and (" (" .. last_err .. ")") or ""), "ETIMEDOUT"
    end
    if not (deadline and RETRY_CODES[code]) then
      return nil, ("cannot connect to %s: %s"):format(path, err), code
    end
    sched.sleep(math.min(RETRY_SECONDS, math.max(0, deadline - core.now())))
  end
end

--- CallNamedPipe: connects (waiting up to opts.timeout for a server), sends one
-- message, returns the reply and disconnects. Message framing unless opts.framing says otherwise.
function npipe.call(name, msg, opts)
  check_type("call", 1, name, "string")
  if type(msg) ~= "string" then check_type("call", 2, msg, "string") end
  check_type("call", 3, opts, "table", true)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.framing = o.framing or "message"
  local deadline = o.timeout and core.now() + o.timeout
  local conn, err, code = npipe.connect(name, o)
  if not conn then return nil, err, code end
  local reply
  reply, err, code = conn:transact(msg, deadline and math.max(0, deadline - core.now()))
  conn:disconnect("call finished")
  if reply == nil and err == "closed" then
    -- a server of another framing cannot read the request and often closes at once
    return nil, ("the server closed the pipe without replying (this call used %s framing; if the"
      .. " server's framing differs, it could not read the request)"):format(o.framing), code
  end
  return reply, err, code
end

--- Reads an open file descriptor (stdin is 0) with npipe's framing, as a connection.
function npipe.open_fd(fd, opts)
  check_type("open_fd", 1, fd, "number")
  local o = options("open_fd", opts, CLIENT_OPTS)
  local c, err, code = core.open_fd(fd, o.framing, o.max_message, o.high_water, o.linger)
  if not c then return nil, err, code end
  local conn = new_conn(c, nil, o.high_water, o.framing)
  conn._client = true
  return conn
end

--- The per-user directory that bare names live in.
function npipe.dir()
  local path, err, code = core.resolve("x", "trust")
  if not path then return nil, err, code end
  return (path:gsub("/x$", ""))
end

--- The pipes in the per-user directory: {name, path, state = "live"|"stale"|..., pid, uid}.
-- Probing connects to each live server once (its accept counter sees it).
function npipe.list()
  local dir, err, code = npipe.dir()
  if not dir then return nil, err, code end
  local entries, serr, scode = core.scandir(dir)
  if not entries then
    if scode == "ENOENT" then return {} end -- no server has run yet
    return nil, serr, scode
  end
  local list = {}
  for _, e in ipairs(entries) do
    if e.type == "socket" then
      local path = dir .. "/" .. e.name
      local state, pid, uid = core.probe(path)
      if state then
        list[#list + 1] = { name = e.name, path = path, state = state, pid = pid, uid = uid }
      else
        list[#list + 1] = { name = e.name, path = path, state = "error", error = pid }
      end
    end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

---- engine events ----

local events = {}

-- The policy of opts.allow: nil (everyone the socket's mode lets in), a function
-- allow(peer) -> true | false[, why], or {uids = {...}, gids = {...}, same_session = true}.
local function allowed(policy, who)
  if type(policy) == "function" then
    local ok, yes, why = pcall(policy, who)
    if not ok then return false, "allow function failed: " .. sched.describe(yes) end
    return yes and true or false, why or "refused by the allow function"
  end
  local function member(list, v)
    for _, x in ipairs(list) do if x == v then return true end end
    return false
  end
  if policy.uids and not member(policy.uids, who.uid) then return false, "uid " .. who.uid .. " not allowed" end
  if policy.gids and not member(policy.gids, who.gid) then return false, "gid " .. who.gid .. " not allowed" end
  if policy.same_session and who.session_id ~= core.session_id() then
    return false, "client is in another session (" .. tostring(who.session_id) .. ")"
  end
  return true
end

local function admit(server, conn)
  local policy = server._allow
  if not policy then return true end
  local cred = peer(conn)
  local p = cred and copy(cred) or {}
  p.session_id = peer_session(conn)
  local ok, why = allowed(policy, p)
  if ok then return true end
  server._rejected = server._rejected + 1
  conn._rejected = true
  conn:_end_now("refused: " .. why, "EACCES")
  local on_reject = server._handlers.reject
  if on_reject then sched.spawn(on_reject, p, why) end
  return false
end

function events.accept(server, c)
  local conn = new_conn(c, server, server._high_water, server._framing)
  if not admit(server, conn) then return settle() end
  server._conns[conn] = true
  if server._idle then conn._last = core.now() end
  local on_connect = server._handlers.connect
  if on_connect then submit(conn, on_connect, conn) end
  settle()
end

function events.frame(conn, msg)
  local server = conn._server
  local on_data = server and server._on_data
  if server and server._idle then conn._last = core.now() end
  if on_data then
    submit(conn, on_data, conn, msg)
  else
    inbox_push(conn, msg)
  end
  settle()
end

local function wake_all(list, ...)
  if not list then return end
  for i = 1, #list do wake(list[i], ...) end
end

function events.closed(conn, reason, code, lost_bytes, lost_msgs)
  conn._closed, conn._code = reason, code
  conn._lost_bytes, conn._lost_msgs = lost_bytes, lost_msgs
  wake_all(conn._readers, nil, "closed", code)
  wake_all(conn._flushers, nil, "pipe closed before the peer read everything (" .. reason .. ")", code)
  conn._readers, conn._flushers = nil, nil
  wake_all(conn._drainers, nil, "pipe closed (" .. reason .. ")", code)
  conn._drainers = nil
  local server = conn._server
  if server then
    server._dropped_bytes = server._dropped_bytes + lost_bytes
    server._dropped_msgs = server._dropped_msgs + lost_msgs
  end
  if server and not conn._rejected then
    server._conns[conn] = nil
    local on_disconnect = server._handlers.disconnect
    if on_disconnect then submit(conn, on_disconnect, conn, reason, code) end
    if server._drained and next(server._conns) == nil then wake(server._drained, true) end
  end
  settle()
end

function events.connected(conn, err, code)
  local w = conn._connw
  if not w then return settle() end -- given up already
  if err then wake(w, nil, err, code) else wake(w, true) end
  settle()
end

local function end_at_eof(conn) conn:_end_now("the peer closed the pipe", "EOF") end

-- The peer ended its input. A server connection handles every frame already received,
-- then its eof handler, then ends (gracefully: what handlers wrote is delivered); the
-- engine ends it anyway after the linger time. A client ends at once.
function events.eof(conn)
  conn._eof = true
  local server = conn._server
  if not server or conn._rejected then
    end_at_eof(conn)
    return settle()
  end
  wake_all(conn._readers, nil, "EOF", "EOF")
  conn._readers = nil
  local on_eof = server._handlers.eof
  if on_eof then submit(conn, on_eof, conn) end
  submit(conn, end_at_eof, conn)
  settle()
end

function events.flushed(conn)
  wake_all(conn._flushers, true)
  conn._flushers = nil
  settle()
end

function events.drained(conn)
  wake_all(conn._drainers, true)
  conn._drainers = nil
  settle()
end

events.timer = sched.on_timer

local signal_fn = {}
function events.signal(sig)
  local fn = signal_fn[sig]
  if fn then sched.spawn(fn) end
  settle()
end

--- Runs fn (in a coroutine) each time the process gets the signal ("SIGINT",
-- "SIGTERM" or "SIGHUP") instead of dying of it. Returns a function that stops watching.
function npipe.on_signal(name, fn)
  check_type("on_signal", 1, name, "string")
  check_type("on_signal", 2, fn, "function")
  local sig = core.signal(name)
  signal_fn[sig] = function() fn(name) end
  return function()
    if signal_fn[sig] then
      signal_fn[sig] = nil
      sig:close()
    end
  end
end

core.init(events)

---- the loop ----

--- Runs the loop until nothing is left to do or npipe.stop() is called.
function npipe.run(mode) return sched.run(mode) end
function npipe.stop()
  if sched.on_host_loop then error("npipe.stop: npipe runs on the host's luv loop; the host stops it", 2) end
  core.stop()
end
npipe.spawn = sched.spawn
npipe.sleep = function(seconds)
  check_timeout("sleep", 1, seconds)
  sched.sleep(seconds or 0)
end
npipe.now = core.now
npipe.backend_fd = core.backend_fd
npipe.backend_timeout = core.backend_timeout

local polls = 0 -- luv loops polling npipe's (at most one: luv polls a descriptor once)

-- A luv loop drives npipe's: npipe's loop is a file descriptor that the host polls, a
-- host timer wakes it for npipe's own timers, and a prepare handle gives it a turn
-- before the host blocks. That turn is what registers with npipe's loop the servers
-- and connections made since its last turn: until then their sockets are not in
-- the file descriptor's set and could not wake the host.
local function attach_polled(uv)
  if polls > 0 then return nil, "npipe's loop is already attached by polling", "EBUSY" end
  local poll = assert(uv.new_poll(core.backend_fd()))
  local timer, prepare = uv.new_timer(), uv.new_prepare()
  local step
  -- Wakes npipe when its next timer is due. Only while npipe's loop has something
  -- alive: an empty loop reports a timeout of 0, and a 0 ms host timer that re-arms
  -- itself would run again at once, for ever. At least 1 ms for the same reason.
  local function arm(alive)
    timer:stop()
    local ms = core.backend_timeout()
    if alive and ms >= 0 then timer:start(math.max(ms, 1), 0, step) end
  end
  step = function()
    -- a host loop run from inside an npipe handler (Neovim can) must not run npipe's again
    if not sched.busy() then arm(sched.run("nowait")) end
  end
  poll:start("r", step)
  prepare:start(step)
  polls = polls + 1
  local attached = true
  return function()
    if not attached then return end
    attached = false
    polls = polls - 1
    for _, h in ipairs({ poll, timer, prepare }) do
      h:stop()
      h:close()
    end
  end
end

-- npipe's handles move onto luv's own loop. nil and why when that cannot be.
local function share(uv)
  if sched.busy() then return nil, "npipe's own loop is running (attach from top-level code)" end
  if polls > 0 then return nil, "npipe's loop is already attached by polling (detach it first)" end
  local ok, why = core.share(uv.backend_fd(), uv.version())
  if not ok then return nil, why end
  sched.on_host_loop = true
  return true
end

local function nothing() end

--- Lets a luv loop (luv, Neovim's vim.loop, Luvit) run npipe. Returns detach, mode, why.
-- With opts.share, npipe's servers, connections and timers go onto luv's own loop
-- (mode "shared"; detach then does nothing). Otherwise, or when sharing is refused (why
-- says why), luv polls npipe's loop (mode "polled") until detach() is called.
function npipe.attach(uv, opts)
  check_type("attach", 1, uv, "table")
  check_type("attach", 2, opts, "table", true)
  for k in pairs(opts or {}) do
    if k ~= "share" then error(("attach: unknown option '%s'"):format(tostring(k)), 2) end
  end
  if sched.on_host_loop then
    -- polling a loop from inside itself would spin: a second attach gets the first one
    if uv.backend_fd() == core.backend_fd() then return nothing, "shared" end
    return nil, "npipe already runs on another luv loop", "EBUSY"
  end
  local why
  if opts and opts.share then
    local ok
    ok, why = share(uv)
    if ok then return nothing, "shared" end
  end
  local detach, err, code = attach_polled(uv)
  if not detach then return nil, err, code end
  return detach, "polled", why
end

--- How npipe's loop runs now: "shared" (on luv's loop), "polled" (a luv loop polls
-- npipe's own) or "own".
function npipe.loop_mode()
  if sched.on_host_loop then return "shared" end
  return polls > 0 and "polled" or "own"
end

--- What a pipe name resolves to (a socket path on Unix).
function npipe.path(name)
  check_type("path", 1, name, "string")
  return core.resolve(name, "trust")
end

--- GetNamedPipeServerSessionId for servers of this process.
function npipe.session_id() return core.session_id() end

return npipe
