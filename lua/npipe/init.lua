--- npipe: named-pipe servers and clients for Lua on a libuv engine.
-- The reference is docs/API.md. This file is the module's face: the public functions,
-- and the client side (connect, call, open_fd) and the per-user directory. The rest:
--   npipe.conn    connections (npipe.Conn): read, write, flush, transact, identity
--   npipe.server  servers (npipe.Server), listen, admission, the engine's event handlers
--   npipe.sched   coroutines, waiting, timers, each connection's job queue, the loop
--   npipe.host    running on a host's luv loop (attach, loop_mode)
--   npipe.args    argument checks and shared options
-- The C engine (npipe.core) does the I/O and framing.
local core = require("npipe.core")
local sched = require("npipe.sched")
local args = require("npipe.args")
local conns = require("npipe.conn")
local server = require("npipe.server")
local host = require("npipe.host")

local check_type, check_timeout = args.check_type, args.check_timeout

local npipe = { _VERSION = "npipe " .. core.version, version = core.version }

npipe.Conn = conns.Conn
npipe.Server = server.Server

-- (assigned, not wrapped: their argument errors point at the caller)
npipe.listen = server.listen
npipe.on_signal = server.on_signal
npipe.attach = host.attach
npipe.loop_mode = host.loop_mode

---- clients ----

local CLIENT_OPTS = { framing = true, max_message = true, high_water = true, timeout = true, expect = true,
                      linger = true }
local RETRY_SECONDS = 0.05 -- how often connect retries while it waits for a server

-- Worth waiting for: no server yet, a server restarting, all instances busy.
local RETRY_CODES = { ENOENT = true, ECONNREFUSED = true, EAGAIN = true }

--- Connects to a server; with opts.timeout, waits for one to appear or to have
-- room (WaitNamedPipe) for up to that many seconds.
function npipe.connect(name, opts)
  check_type("connect", 1, name, "string")
  local o = args.options("connect", opts, CLIENT_OPTS)
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
    local c
    c, err, code = core.connect(path, o.framing, o.max_message, o.high_water, o.linger)
    if not c then return nil, err, code end
    local conn = conns.dial(c, o)
    -- A local connect is answered at once but reported on the next loop turn: an
    -- attempt is never cut short, the deadline only bounds the retries.
    local left = deadline and math.max(1, deadline - core.now())
    local ok
    ok, err, code = conns.await_answer(conn, left)
    if ok then return conns.check_identity(conn, path, o.expect) end
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
  local o = args.options("open_fd", opts, CLIENT_OPTS)
  local c, err, code = core.open_fd(fd, o.framing, o.max_message, o.high_water, o.linger)
  if not c then return nil, err, code end
  return conns.new(c, nil, o.high_water, o.framing)
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

--- What a pipe name resolves to (a socket path on Unix).
function npipe.path(name)
  check_type("path", 1, name, "string")
  return core.resolve(name, "trust")
end

--- GetNamedPipeServerSessionId for servers of this process: the login session (Linux:
-- the audit session id, 0 outside any login).
function npipe.session_id() return core.session_id() end
--- This process's POSIX session (getsid); nil, message, "ENOTSUP" on Windows.
function npipe.posix_session_id() return core.posix_session_id() end

---- the loop ----

--- Runs the loop until nothing is left to do or npipe.stop() is called.
function npipe.run(mode) return sched.run(mode) end
npipe.stop = sched.stop
npipe.spawn = sched.spawn
npipe.sleep = function(seconds)
  check_timeout("sleep", 1, seconds)
  sched.sleep(seconds or 0)
end
npipe.now = core.now
npipe.backend_fd = core.backend_fd
npipe.backend_timeout = core.backend_timeout

return npipe
