-- Failures: handler errors stay with their connection, waiting handlers do not block
-- others, argument errors raise while runtime failures return nil, message, code, and
-- how names become socket paths (the per-user directory, its checks and modes).
local npipe = require("npipe")
local helpers = require("helpers")
local sched = require("npipe.sched")

local q = helpers.quote
-- Children get this process's package paths, so they find npipe however busted was started.
local LUA_ENV = ("LUA_PATH=%s LUA_CPATH=%s"):format(q(package.path), q(package.cpath))

local exists = helpers.exists

-- Runs `lua -e code` to the end in a child with the given environment prefix
-- (e.g. "-u XDG_RUNTIME_DIR" or "XDG_RUNTIME_DIR=/some/dir"); returns its output.
local function child_output(env, code)
  return helpers.capture(("timeout 10 env %s %s %s -e %s 2>&1"):format(env, LUA_ENV, helpers.lua, q(code)))
end

-- A fresh private directory (mode 0700) under the spec's temporary directory.
local function private_dir()
  local dir = helpers.capture("mktemp -d " .. q(helpers.tmp .. "/errors.XXXXXX"))
  assert(dir:match("^/"), "mktemp failed: " .. dir)
  assert.are.equal("700", helpers.capture("stat -c %a " .. q(dir)))
  return dir
end

local function mode_of(path) return helpers.capture("stat -c %a " .. q(path) .. " 2>&1") end

-- Names in a directory (ls -A), as one string; "" when it is empty.
local function listing(dir) return helpers.capture("ls -A " .. q(dir)) end

local track, close_leftovers = helpers.track_server, helpers.close_tracked_servers

-- An echo server ("echo:" .. msg) in message framing with extra handlers.
local function echo_server(handlers)
  local name = helpers.name("err")
  handlers = handlers or {}
  local user_data = handlers.data
  handlers.data = function(conn, msg)
    if user_data then user_data(conn, msg) end
    conn:write("echo:" .. msg)
  end
  return track(assert(npipe.listen(name, { framing = "message" }, handlers))), name
end

local function client(name)
  return assert(npipe.connect(name, { framing = "message" }))
end

local function assert_echo(c, msg)
  assert(c:write(msg))
  assert.are.equal("echo:" .. msg, c:read(2))
end

local function assert_closed(c)
  local m, err = c:read(2)
  assert.is_nil(m)
  assert.are.equal("closed", err)
end

describe("handler errors", function()
  after_each(close_leftovers)

  it("go to the error handler and end only that connection", function()
    local errors, reasons = {}, {}
    local server, name = echo_server({
      data = function(_, msg) if msg == "boom" then error("boom") end end,
      error = function(conn, err) errors[#errors + 1] = { conn = conn, err = err } end,
      disconnect = function(conn, reason, code) reasons[conn] = { reason = reason, code = code } end,
    })
    local good, bad = client(name), client(name)
    assert_echo(good, "before")
    assert_echo(bad, "fine so far")
    assert(bad:write("boom"))
    assert_closed(bad)
    assert.truthy(helpers.wait_until(function() return #errors > 0 end, 2))
    assert_echo(good, "after")
    npipe.sleep(0.05)
    assert.are.equal(1, #errors)
    local e = errors[1]
    assert.is_string(e.err)
    assert.matches("boom", e.err, 1, true)
    assert.matches("stack traceback", e.err, 1, true)
    assert.is_false(e.conn:is_open())
    assert.truthy(helpers.wait_until(function() return reasons[e.conn] end, 2))
    assert.matches("^handler error", reasons[e.conn].reason)
    assert.matches("^handler error", (e.conn:closed_reason()))
    -- the good connection is still open on the server
    assert.are.equal(1, #server:connections())
    assert.are_not.equal(e.conn, server:connections()[1])
    assert_echo(good, "still")
    assert_echo(client(name), "newcomer")
    server:close()
  end)

  it("without an error handler end only that connection; the server keeps serving", function()
    -- npipe reports such errors on stderr; keep the spec output clean
    local report = sched.report
    sched.report = function() end
    finally(function() sched.report = report end)
    local server, name = echo_server({
      data = function(_, msg) if msg == "boom" then error("boom") end end,
    })
    local good, bad = client(name), client(name)
    assert_echo(good, "before")
    assert(bad:write("boom"))
    assert_closed(bad)
    assert_echo(good, "after")
    local other = client(name)
    assert_echo(other, "newcomer")
    assert.is_true(server:is_open())
    assert.are.equal(2, #server:connections())
    sched.report = report
    server:close()
  end)

  it("in the connect and disconnect handlers are caught too", function()
    local errors = {}
    local connects = 0
    local server, name = echo_server({
      connect = function()
        connects = connects + 1
        if connects == 1 then error("connect boom") end
      end,
      disconnect = function(_, _, code)
        if code == "EOF" then error("disconnect boom") end
      end,
      error = function(conn, err) errors[#errors + 1] = { conn = conn, err = err } end,
    })
    local first = client(name)
    assert_closed(first) -- its connect handler failed
    assert.truthy(helpers.wait_until(function() return #errors == 1 end, 2))
    assert.matches("connect boom", errors[1].err, 1, true)
    assert.matches("stack traceback", errors[1].err, 1, true)
    assert.matches("^handler error", (errors[1].conn:closed_reason()))

    local second = client(name)
    assert_echo(second, "hello")
    second:disconnect() -- EOF on the server: its disconnect handler raises
    assert.truthy(helpers.wait_until(function() return #errors == 2 end, 2))
    assert.matches("disconnect boom", errors[2].err, 1, true)
    assert.matches("stack traceback", errors[2].err, 1, true)

    local third = client(name)
    assert_echo(third, "still serving")
    npipe.sleep(0.05)
    assert.are.equal(2, #errors)
    third:disconnect()
    server:close()
  end)
end)

describe("waiting handlers", function()
  after_each(close_leftovers)

  it("a handler that waits does not block another connection's handler", function()
    local sleeping, slept = false, false
    local server, name = echo_server({
      data = function(_, msg)
        if msg == "slow" then
          sleeping = true
          npipe.sleep(0.5)
          sleeping, slept = false, true
        end
      end,
    })
    local slow, fast = client(name), client(name)
    assert(slow:write("slow"))
    assert.truthy(helpers.wait_until(function() return sleeping end, 2))
    assert_echo(fast, "fast")
    -- the other reply came back while the first handler was still asleep
    assert.is_true(sleeping, "the fast reply waited for the slow handler")
    assert.is_false(slept)
    assert.are.equal("echo:slow", slow:read(3))
    assert.is_true(slept)
    server:close()
  end)

  it("messages on one connection are handled in order even when the handler waits", function()
    local active, overlap, handled = 0, false, {}
    local server, name = echo_server({
      data = function(_, msg)
        active = active + 1
        if active > 1 then overlap = true end
        handled[#handled + 1] = msg
        npipe.sleep(math.random(1, 5) / 1000)
        active = active - 1
      end,
    })
    local c = client(name)
    local n = 30
    for i = 1, n do assert(c:write("m" .. i)) end
    for i = 1, n do assert.are.equal("echo:m" .. i, c:read(3)) end
    assert.is_false(overlap, "two handler calls for one connection ran at once")
    assert.are.equal(n, #handled)
    for i = 1, n do assert.are.equal("m" .. i, handled[i]) end
    c:disconnect()
    server:close()
  end)
end)

describe("argument errors raise", function()
  after_each(close_leftovers)

  it("in listen, connect and on connections", function()
    assert.has_error(function() npipe.listen(123, {}, {}) end)
    assert.has_error(function() npipe.listen(helpers.name("bogus"), { framing = "bogus" }, {}) end)
    assert.has_error(function() npipe.listen(helpers.name("opt"), { no_such_option = 1 }, {}) end)
    assert.has_error(function() npipe.connect(nil) end)
    assert.has_error(function() npipe.connect(helpers.name("opt"), { no_such_option = 1 }) end)
    local server, name = echo_server()
    local c = client(name)
    assert.has_error(function() c:write({}) end)
    assert.has_error(function() c:read("x") end)
    -- the connection is unharmed by the bad calls
    assert_echo(c, "fine")
    c:disconnect()
    server:close()
  end)
end)

describe("runtime failures return nil, message, code", function()
  after_each(close_leftovers)

  it("connect to a name nobody serves", function()
    local name = helpers.name("missing")
    local c, err, code = npipe.connect(name)
    assert.is_nil(c)
    assert.matches("cannot connect", err, 1, true)
    assert.are.equal("ENOENT", code)
  end)

  it("connect with a timeout to a name nobody serves gives up after the timeout", function()
    local name = helpers.name("missing")
    local t0 = npipe.now()
    local c, err, code = npipe.connect(name, { timeout = 0.3 })
    local took = npipe.now() - t0
    assert.is_nil(c)
    assert.is_string(err)
    assert.is_string(code)
    assert.is_true(took >= 0.28, ("gave up after %.3f s"):format(took))
    assert.is_true(took < 2, ("gave up only after %.3f s"):format(took))
  end)

  it("read with a timeout and nothing to read", function()
    local server, name = echo_server()
    finally(function() server:close() end)
    local c = client(name)
    local m, err
    helpers.run(function() m, err = c:read(0.1) end, 3) -- fails, not hangs, if the timeout is ignored
    assert.is_nil(m)
    assert.are.equal("timeout", err)
    assert.is_true(c:is_open())
    assert_echo(c, "later") -- a timeout does not end the connection
    c:disconnect()
  end)
end)

describe("names", function()
  after_each(close_leftovers)

  local dirs = {}
  local function temp_dir()
    local d = private_dir()
    dirs[#dirs + 1] = d
    return d
  end
  teardown(function()
    for _, d in ipairs(dirs) do os.execute("chmod -R u+rwx " .. q(d) .. "; rm -rf " .. q(d)) end
  end)

  local SHOW = [[
local n = require("npipe")
print(n.path("demo"))
print(n.path("\\\\.\\pipe\\demo"))
]]

  it("a bare name lives in $XDG_RUNTIME_DIR/npipe when that is set #unix", function()
    local xdg = temp_dir()
    local out = child_output("XDG_RUNTIME_DIR=" .. q(xdg), SHOW)
    local a, b = out:match("^([^\n]*)\n([^\n]*)$")
    assert.are.equal(xdg .. "/npipe/demo", a, out)
    assert.are.equal(a, b)
  end)

  it("a bare name lives in /tmp/npipe-<uid> when XDG_RUNTIME_DIR is not set #unix", function()
    local uid = helpers.capture("id -u")
    local out = child_output("-u XDG_RUNTIME_DIR", SHOW)
    local a, b = out:match("^([^\n]*)\n([^\n]*)$")
    assert.are.equal("/tmp/npipe-" .. uid .. "/demo", a, out)
    assert.are.equal(a, b)
  end)

  it("\\\\.\\pipe\\name resolves like name; in this process too #unix", function()
    local p = npipe.path("demo")
    assert.matches("/demo$", p)
    assert.are.equal(p, npipe.path("\\\\.\\pipe\\demo"))
    assert.are.equal(npipe.dir() .. "/demo", p)
    -- and a server listening under the Windows form is found under the bare one
    local name = helpers.name("win")
    local server = track(assert(npipe.listen("\\\\.\\pipe\\" .. name, { framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    })))
    assert.are.equal(npipe.path(name), server:path())
    local c = client(name)
    assert(c:write("hi"))
    assert.are.equal("hi", c:read(2))
    c:disconnect()
    server:close()
  end)

  it("a name with a slash is used as the path #unix", function()
    local dir = temp_dir()
    local path = dir .. "/" .. helpers.name("path")
    assert.are.equal(path, npipe.path(path))
    local server = track(assert(npipe.listen(path, { framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    })))
    assert.are.equal(path, server:path())
    assert.is_true(exists(path))
    assert.are.equal("600", mode_of(path))
    local c = client(path)
    assert(c:write("by path"))
    assert.are.equal("by path", c:read(2))
    c:disconnect()
    server:close()
    assert.is_false(exists(path))
  end)

  it("a path longer than 107 bytes is refused, never truncated #unix", function()
    local dir = temp_dir()
    local function path_of(len) return dir .. "/" .. ("a"):rep(len - #dir - 1) end
    local long = path_of(108)
    assert.are.equal(108, #long)
    local s, err, code = npipe.listen(long, {}, {})
    assert.is_nil(s)
    assert.matches("too long", err, 1, true)
    assert.is_string(code)
    assert.are.equal("", listing(dir)) -- no socket at the truncated path either
    local c
    c, err = npipe.connect(long)
    assert.is_nil(c)
    assert.matches("too long", err, 1, true)
    s, err = npipe.listen(path_of(300), {}, {})
    assert.is_nil(s)
    assert.matches("too long", err, 1, true)
    assert.are.equal("", listing(dir))

    -- 107 bytes is the most that fits, and is used whole
    local fits = path_of(107)
    local server = track(assert(npipe.listen(fits, { framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    })))
    assert.are.equal(fits, server:path())
    assert.is_true(exists(fits))
    assert.are.equal(fits:match("[^/]*$"), listing(dir))
    c = client(fits)
    assert(c:write("ok"))
    assert.are.equal("ok", c:read(2))
    c:disconnect()
    server:close()
  end)

  it("a bare name too long for the per-user directory is refused #unix", function()
    local name = helpers.name("long") .. ("b"):rep(120)
    local s, err = npipe.listen(name, {}, {})
    assert.is_nil(s)
    assert.matches("too long", err, 1, true)
    local prefix = name:sub(1, 20)
    assert.is_nil(listing(npipe.dir()):find(prefix, 1, true), "a socket file was created")
    local c
    c, err = npipe.connect(name)
    assert.is_nil(c)
    assert.matches("too long", err, 1, true)
  end)

  it("a per-user directory writable by others makes listen fail, naming it #unix", function()
    local xdg = temp_dir()
    local dir = xdg .. "/npipe"
    os.execute("mkdir " .. q(dir) .. " && chmod 0777 " .. q(dir))
    assert.are.equal("777", mode_of(dir))
    local out = child_output("XDG_RUNTIME_DIR=" .. q(xdg), [[
local n = require("npipe")
local s, err, code = n.listen("demo", function() end)
print(tostring(s) .. "|" .. tostring(err) .. "|" .. tostring(code))
]])
    local s, err, code = out:match("^([^|]*)|([^|]*)|([^|]*)$")
    assert.are.equal("nil", s, out)
    assert.matches(dir, err, 1, true)
    assert.are_not.equal("nil", code)
    assert.are.equal("", listing(dir)) -- nothing was created there
  end)

  it("connect refuses a per-user directory that others can write to or that another user owns #unix", function()
    local xdg = temp_dir()
    local dir = xdg .. "/npipe"
    -- a live server's socket in it, so only the directory check can refuse
    os.execute("mkdir -m 0700 " .. q(dir))
    local server = track(assert(npipe.listen(dir .. "/demo", {}, function() end)))
    local function try()
      local out = child_output("XDG_RUNTIME_DIR=" .. q(xdg), [[
local c, err, code = require("npipe").connect("demo", { timeout = 0.5 })
print(tostring(c) .. "|" .. tostring(err) .. "|" .. tostring(code))
]])
      return out:match("^([^|]*)|([^|]*)|([^|]*)$")
    end
    local c, err = try()
    assert.matches("^npipe.conn", c, nil, false, err) -- a 0700 directory of ours is fine
    os.execute("chmod 0777 " .. q(dir))
    local code
    c, err, code = try()
    assert.are.equal("nil", c)
    assert.matches(dir .. " is writable by other users", err, 1, true)
    assert.are.equal("EPERM", code)
    os.execute("chmod 0700 " .. q(dir))
    if helpers.capture("id -u") == "0" then -- only root can give a directory away
      os.execute("chown nobody " .. q(dir))
      c, err, code = try()
      assert.are.equal("nil", c)
      assert.matches(dir .. " is owned by another user", err, 1, true)
      assert.are.equal("EPERM", code)
    end
    server:close()
  end)

  it("the per-user directory is created with mode 0700 and the socket with 0600 #unix", function()
    local xdg = temp_dir()
    local out = child_output("XDG_RUNTIME_DIR=" .. q(xdg), [[
local n = require("npipe")
local s = assert(n.listen("demo", function() end))
local function mode(p) local f = io.popen("stat -c %a '" .. p .. "'"); local m = f:read("*l"); f:close(); return m end
print(s:path() .. "|" .. mode(n.dir()) .. "|" .. mode(s:path()))
s:close()
]])
    local path, dmode, smode = out:match("^([^|]*)|([^|]*)|([^|]*)$")
    assert.are.equal(xdg .. "/npipe/demo", path, out)
    assert.are.equal("700", dmode)
    assert.are.equal("600", smode)
    assert.are.equal("700", mode_of(xdg .. "/npipe"))
    assert.is_false(exists(path)) -- closed by the child
  end)
end)

describe("connect with a timeout (WaitNamedPipe)", function()
  after_each(close_leftovers)

  it("waits for a server that appears later #unix", function()
    local name = helpers.name("late")
    -- the child listens after 0.3 s, serves until its first client leaves (at most
    -- 8 s), then closes its server, which removes the socket file, and exits
    local code = ([[
local n = require("npipe")
n.spawn(function()
  n.sleep(0.3)
  local done = false
  local s = assert(n.listen(%q, { framing = "message" }, {
    data = function(c, m) c:write("child:" .. m) end,
    disconnect = function() done = true end,
  }))
  for _ = 1, 800 do
    if done then break end
    n.sleep(0.01)
  end
  s:close()
end)
n.run()
]]):format(name)
    local path = npipe.path(name)
    local pid, out = helpers.spawn(("exec env %s %s -e %s"):format(LUA_ENV, helpers.lua, q(code)))
    finally(function()
      helpers.kill(pid, "KILL")
      os.remove(path) -- only if it was killed before it could close
    end)
    assert.is_false(exists(path))
    local t0 = npipe.now()
    local c, err = npipe.connect(name, { timeout = 2, framing = "message" })
    local took = npipe.now() - t0
    assert.is_truthy(c, tostring(err) .. "; the child said: " .. tostring(helpers.read_file(out)))
    assert.is_true(took >= 0.1, ("connected after %.3f s, before the server was there?"):format(took))
    assert(c:write("hi"))
    assert.are.equal("child:hi", c:read(2))
    c:disconnect()
    assert.truthy(helpers.wait_until(function() return not exists(path) end, 5),
      "the child did not close its server; it said: " .. tostring(helpers.read_file(out)))
  end)
end)
