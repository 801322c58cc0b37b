--- npipe.test: busted specs for your own handlers (docs/TESTING.md).
--   local nt = require("npipe.test")
--   it("echoes", nt.wrap(function()
--     local _, client = nt.serve("handlers.lua", { framing = "message" })
--     assert.equal("hi", client:transact("hi"))
--   end))
-- nt.wrap runs the body as an npipe job with the loop driven until it returns; what nt
-- opened (servers on private temporary names, their clients) is closed when it ends,
-- passed or failed. A handler that raises fails the test, unless
-- nt.serve's opts say handler_errors = "close" (production: only that connection ends).
-- On Unix a server's name is a socket path in a fresh 0700 directory; on Windows, where
-- pipe names need no directory, a name of this process's own.
local npipe = require("npipe")
local sched = require("npipe.sched")
local script = require("npipe.script")

local unpack = table.unpack or _G.unpack -- Lua 5.1 and LuaJIT
local describe = sched.describe

local nt = { default_timeout = 5 }
local WINDOWS = package.config:sub(1, 1) == "\\"
local served = 0 -- names made so far (Windows)

-- The wrapped body running now: {servers, clients, dirs, failure, w}, or nil.
local active = nil

local function pack(...) return { n = select("#", ...), ... } end

local function fail(st, text)
  if st.failure then return end
  st.failure = text
  sched.wake(st.w, "failed")
end

local function current(what)
  if not active then error("npipe.test: " .. what .. " outside a body wrapped by nt.wrap", 3) end
  return active
end

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- A fresh private directory (mode 0700, made by mktemp -d) under $TMPDIR or /tmp.
local function temp_dir()
  local base = os.getenv("TMPDIR")
  if not base or base == "" then base = "/tmp" end
  local p = io.popen("mktemp -d " .. quote(base .. "/npipe-test.XXXXXX") .. " 2>/dev/null")
  local dir = p and p:read("*l")
  if p then p:close() end
  if not dir or dir == "" then error("npipe.test: cannot make a temporary directory under " .. base, 3) end
  return dir
end

--- Connects another client to server (one nt.serve made, or any server: its path), with
-- the server's framing unless opts say otherwise. Closed when the body ends.
function nt.client(server, opts)
  local st = current("nt.client")
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  if type(server) == "table" then
    o.framing = o.framing or server._framing
    if o.max_message == nil then o.max_message = st.max_message[server] end
  end
  if o.timeout == nil then o.timeout = 1 end
  local path = type(server) == "table" and server:path() or server
  local conn, err = npipe.connect(path, o)
  if not conn then error("npipe.test: cannot connect to " .. tostring(path) .. ": " .. tostring(err), 2) end
  st.clients[#st.clients + 1] = conn
  return conn
end

--- Serves handlers (a table or function, or the path of a handlers script, loaded as
-- `npipe serve SCRIPT` loads it) on a private temporary name; returns server, client.
-- opts: listen's options, and handler_errors = "fail" (default) or "close".
function nt.serve(handlers, opts)
  local st = current("nt.serve")
  if type(handlers) == "string" then
    local h, err = script.load(handlers)
    if not h then error("npipe.test: " .. err, 2) end
    handlers = h
  end
  local o, mode = {}, "fail"
  for k, v in pairs(opts or {}) do
    if k == "handler_errors" then mode = v else o[k] = v end
  end
  if mode ~= "fail" and mode ~= "close" then
    error("npipe.test: handler_errors must be \"fail\" or \"close\"", 2)
  end
  local name
  if WINDOWS then
    served = served + 1
    name = ("npipe-test-%d-%d"):format(require("npipe.core").pid(), served)
  else
    local dir = temp_dir()
    st.dirs[#st.dirs + 1] = dir
    name = dir .. "/pipe"
  end
  local server, err = npipe.listen(name, o, handlers)
  if not server then error("npipe.test: cannot listen: " .. tostring(err), 2) end
  st.servers[#st.servers + 1] = server
  st.max_message[server] = o.max_message
  -- A handler's error goes to the server's error handler (conn.lua's job_failed): wrap
  -- it. "fail" fails the test (and still calls the script's own error handler); "close"
  -- keeps what production does: the script's handler, or the report on stderr.
  local h = server._handlers
  local own = h.error
  h.error = function(conn, e)
    local text = ("handler error on connection #%d: %s"):format(conn:id(), describe(e))
    if mode == "fail" then fail(st, text) end
    if own then
      own(conn, e)
    elseif mode == "close" then
      st.report(("handler error on connection #%d"):format(conn:id()), e)
    end
  end
  return server, nt.client(server, { framing = o.framing })
end

-- Closes what st opened and waits (up to a second) for the connections to be closed,
-- so their disconnect handlers run inside the test; removes the temporary directories.
local function clean_up(st)
  for _, conn in ipairs(st.clients) do conn:disconnect("test ended") end
  for _, server in ipairs(st.servers) do
    for _, conn in ipairs(server:connections()) do conn:disconnect("test ended") end
    server:close()
  end
  local function all_closed()
    for _, conn in ipairs(st.clients) do if not conn:closed_reason() then return false end end
    for _, server in ipairs(st.servers) do if #server:connections() > 0 then return false end end
    return true
  end
  local deadline = npipe.now() + 1
  while not all_closed() and npipe.now() < deadline do npipe.sleep(0.005) end
  for _, dir in ipairs(st.dirs) do
    os.remove(dir .. "/pipe")
    os.remove(dir)
  end
end

--- A function for busted's `it`: runs fn(...) as an npipe job and drives the loop until
-- it returns. Its error, a handler's error, or `timeout` seconds (default 5) passing
-- fails the test; what nt opened is closed in any case.
function nt.wrap(fn, timeout)
  if type(fn) ~= "function" then error("npipe.test: nt.wrap wants a function", 2) end
  timeout = timeout or nt.default_timeout
  return function(...)
    if active then error("npipe.test: a wrapped body cannot run inside another", 2) end
    if sched.busy() then error("npipe.test: a wrapped body cannot run inside npipe's loop or a handler", 2) end
    local st = { servers = {}, clients = {}, dirs = {}, max_message = {}, w = sched.waiter(),
                 report = sched.report }
    active = st
    -- errors of spawned functions (the body is one) and of error handlers come here
    sched.report = function(what, err) fail(st, what .. ": " .. describe(err)) end
    local args = pack(...)
    local body_co
    sched.spawn(function()
      body_co = coroutine.running()
      fn(unpack(args, 1, args.n))
      sched.wake(st.w, "done")
    end)
    local ok, how = pcall(sched.wait_for, st.w, timeout)
    if not ok then
      fail(st, "npipe.test: " .. describe(how))
    elseif how == nil and not st.failure then
      fail(st, ("timed out after %g s"):format(timeout))
    end
    -- a body that did not end is abandoned: on Lua 5.4 its coroutine is closed, so it
    -- never resumes (elsewhere, its waits on what nt opened end with the closing below)
    if how ~= "done" and body_co and coroutine.close and coroutine.status(body_co) == "suspended" then
      coroutine.close(body_co)
    end
    local cleaned, cerr = pcall(clean_up, st)
    sched.report = st.report
    active = nil
    if not cleaned then fail(st, "npipe.test: closing after the test: " .. describe(cerr)) end
    if st.failure then error(st.failure, 0) end
  end
end

return nt
