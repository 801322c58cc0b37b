-- Servers: the Server class (npipe.Server), listen and its options, admission (opts.allow),
-- and the engine's event handlers (registered with core.init when this module loads),
-- which dispatch each event to the connection (npipe.conn) and to the server's handlers.
local core = require("npipe.core")
local sched = require("npipe.sched")
local args = require("npipe.args")
local conns = require("npipe.conn")

local waiter, wait_for, wake, submit = sched.waiter, sched.wait_for, sched.wake, sched.submit
local check_type, check_timeout = args.check_type, args.check_timeout
local keep = conns.keep

local M = {}

local Server = {}
Server.__index = Server
M.Server = Server
-- A listening server runs even when the script drops its object.
local live_servers = {} -- luacheck: ignore 241

function Server:__tostring()
  return ("npipe.server(%s)"):format(self._path)
end

Server.__close = function(self) self:close() end

function Server:path() return self._path end
function Server.session_id() return core.session_id() end
function Server.posix_session_id() return core.posix_session_id() end
function Server:is_open() return self._c:is_open() end

-- The handler named name (connect, data, error, ...), or nil.
function Server:_handler(name) return self._handlers[name] end

function Server:stats()
  local st = self._c:is_open() and self._c:stats() or self._last_stats
  local out = {}
  for k, v in pairs(st) do out[k] = v end -- not the snapshot itself, which every call would grow
  out.rejected = st.rejected + self._rejected
  out.dropped_bytes, out.dropped_messages = self._dropped_bytes, self._dropped_msgs
  return out
end

function Server:_sweep_idle()
  local limit = core.loop_now() - self._idle
  for _, conn in ipairs(self._c:conns()) do
    if core.conn.last_active(conn) < limit and conns.quiet(conn) then
      conn:_end_now("idle timeout", "ETIMEDOUT")
    end
  end
end

--- The open connections, as a list.
function Server:connections()
  local list = self._c:conns()
  table.sort(list, function(a, b) return a:id() < b:id() end)
  return list
end

local function wait_drained(server, seconds)
  if server._nconns == 0 then return end
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
  for _, conn in ipairs(self._c:conns()) do conn:_end_now("server closed", "SERVER_CLOSED") end
  if drain then wait_drained(self, self._linger + 1) end -- the engine ends each within linger
  return true
end

---- signals ----

local signal_fn = {}

--- npipe.on_signal: runs fn (in a coroutine) each time the process gets the signal
-- ("SIGINT", "SIGTERM" or "SIGHUP") instead of dying of it. Returns a function that
-- stops watching.
function M.on_signal(name, fn)
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
    sched.stop()
  end
  local stops = { M.on_signal("SIGINT", stop), M.on_signal("SIGTERM", stop) }
  sched.run()
  for _, unwatch in ipairs(stops) do unwatch() end
  if self:is_open() then self:close() end
  return got
end

---- listen ----

local SERVER_OPTS = { framing = true, max_message = true, high_water = true, mode = true, backlog = true,
                      allow = true, idle_timeout = true, max_instances = true, linger = true,
                      security = true }

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

--- Swaps the server's handlers (a table or a function, as listen takes them) at once: a
-- handler call in progress finishes on the old code; every call that starts later, for
-- every connection (those open now too), runs the new code, also calls already queued.
function Server:set_handlers(handlers)
  if type(handlers) ~= "function" then check_type("set_handlers", 1, handlers, "table") end
  local h = handlers_of(handlers)
  local old_data = self._on_data
  self._handlers, self._on_data = h, h.data
  self._c:set_data(h.data) -- the C fast path's data handler (src/lnpipe_fast.c)
  -- the per-message path submits the data handler itself (the other handlers are looked
  -- up when their call starts): queued frames go to the new one, or to conn:read() now
  local to = h.data or keep
  if old_data and old_data ~= to then
    for _, conn in ipairs(self._c:conns()) do sched.retarget(conn, old_data, to) end
  end
  return true
end

--- npipe.listen: CreateNamedPipe + ConnectNamedPipe for every client: serves name with handlers.
function M.listen(name, opts, handlers)
  check_type("listen", 1, name, "string")
  if handlers == nil and (type(opts) == "function" or (type(opts) == "table" and is_handlers(opts))) then
    opts, handlers = nil, opts
  end
  if type(handlers) ~= "function" then check_type("listen", 3, handlers, "table") end
  local o = args.options("listen", opts, SERVER_OPTS)
  if o.allow ~= nil and type(o.allow) ~= "table" and type(o.allow) ~= "function" then
    error("listen: allow must be a table or a function", 2)
  end
  check_timeout("listen", 2, o.idle_timeout)
  check_type("listen", 2, o.security, "string", true)
  local path, err, code = core.resolve(name, "create")
  if not path then return nil, err, code end
  local c
  c, err, code = core.listen(path, o.framing, o.max_message, o.high_water, o.mode, o.backlog,
                             o.max_instances or 0, o.linger, o.security)
  if not c then return nil, err, code end
  local h = handlers_of(handlers)
  local server = setmetatable({ _c = c, _path = path, _nconns = 0, _handlers = h, _on_data = h.data,
                                _allow = o.allow, _idle = o.idle_timeout, _high_water = o.high_water,
                                _framing = o.framing, _linger = o.linger,
                                _dropped_bytes = 0, _dropped_msgs = 0,
                                _rejected = 0, name = name }, Server)
  core.bind(c, server)
  c:set_data(h.data)
  live_servers[server] = true
  if o.idle_timeout then
    server._stop_idle = sched.every(math.max(0.01, o.idle_timeout / 4), function()
      server:_sweep_idle()
    end)
  end
  return server
end

---- admission ----

-- The policy of opts.allow: nil (everyone the socket's mode lets in), a function
-- allow(peer) -> true | false[, why], or {uids = {...}, gids = {...}, sids = {...},
-- same_session = true}.
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
  if policy.sids and not (who.sid and member(policy.sids, who.sid)) then
    return false, "user SID " .. (who.sid or "unknown") .. " not allowed"
  end
  -- login sessions, as on Windows: a setsid child of the same login stays in it
  if policy.same_session then
    local own, err = core.session_id()
    if own == nil then return false, "same_session: " .. tostring(err) end -- fails closed
    if who.session_id ~= own then
      return false, "client is in another login session (" .. tostring(who.session_id) .. ")"
    end
  end
  return true
end

-- A refused connection ends at once and is never among the server's connections
-- (core.conn.admitted): its events then reach no handler of the server.
local function admit(server, conn)
  local policy = server._allow
  if not policy then return true end
  local p = conns.peer_info(conn)
  local ok, why = allowed(policy, p)
  if ok then return true end
  server._rejected = server._rejected + 1
  conn:_end_now("refused: " .. why, "EACCES")
  local on_reject = server._handlers.reject
  if on_reject then sched.spawn(on_reject, p, why) end
  return false
end

---- engine events (each registered through sched.event, which settles after it) ----

local events = {}

-- connect, eof and disconnect calls look their handler up when they start, not when the
-- event came: server:set_handlers may have swapped it while the call waited in the queue.
local function run_connect(conn)
  local fn = conn._server._handlers.connect
  if fn then fn(conn) end
end

local function run_eof(conn)
  local fn = conn._server._handlers.eof
  if fn then fn(conn) end
end

local function run_disconnect(conn, reason, code)
  local fn = conn._server._handlers.disconnect
  if fn then fn(conn, reason, code) end
end

function events.accept(server, c)
  local conn = conns.new(c, server, server._high_water, server._framing)
  if not admit(server, conn) then return end
  server._nconns = server._nconns + 1
  core.conn.direct(conn) -- admitted: its frames may take the C fast path (src/lnpipe_fast.c)
  submit(conn, run_connect, conn)
end

-- A frame the C fast path did not deliver itself (src/lnpipe_fast.c says when).
function events.frame(conn, msg)
  local server = conn._server
  local on_data = server and server._on_data
  if on_data then
    submit(conn, on_data, conn, msg)
  else
    keep(conn, msg)
  end
end

function events.closed(conn, reason, code, lost_bytes, lost_msgs)
  conns.closed(conn, reason, code, lost_bytes, lost_msgs)
  local server = conn._server
  if server then
    server._dropped_bytes = server._dropped_bytes + lost_bytes
    server._dropped_msgs = server._dropped_msgs + lost_msgs
  end
  if server and core.conn.admitted(conn) then
    server._nconns = server._nconns - 1
    submit(conn, run_disconnect, conn, reason, code)
    if server._drained and server._nconns == 0 then wake(server._drained, true) end
  end
end

local function end_at_eof(conn) conn:_end_now("the peer closed the pipe", "EOF") end

-- The peer ended its input. A server connection handles every frame already received,
-- then its eof handler, then ends (gracefully: what handlers wrote is delivered); the
-- engine ends it anyway after the linger time. A client ends at once.
function events.eof(conn)
  local server = conn._server
  local admitted = server and core.conn.admitted(conn)
  conns.input_ended(conn, admitted)
  if not admitted then
    end_at_eof(conn)
    return
  end
  submit(conn, run_eof, conn)
  submit(conn, end_at_eof, conn)
end

events.connected = conns.connected
events.flushed = conns.flushed
events.drained = conns.drained
events.timer = sched.on_timer

function events.signal(sig)
  local fn = signal_fn[sig]
  if fn then sched.spawn(fn) end
end

for name, fn in pairs(events) do events[name] = sched.event(fn) end
core.init(events, sched.shared)

return M
