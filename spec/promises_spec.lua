-- Promises of docs/API.md that a fault once broke without any spec failing, each
-- checked from what a user sees (scripts/mutations.txt names the fault each one catches).
local npipe = require("npipe")
local core = require("npipe.core")
local helpers = require("helpers")

local q = helpers.quote
local wait_until, exists = helpers.wait_until, helpers.exists
-- Children get this process's package paths, so they find npipe however busted was started.
local LUA_ENV = ("LUA_PATH=%s LUA_CPATH=%s"):format(q(package.path), q(package.cpath))

local function listen(name, opts, handlers)
  return helpers.track_server(assert(npipe.listen(name, opts, handlers)))
end

-- `lua -e code` with this process's package paths (and NAME in code replaced by name,
-- quoted: lua -e sets no arg table).
local function lua_command(code, name)
  code = code:gsub("NAME", function() return ("%q"):format(name) end)
  return ("env %s %s -e %s"):format(LUA_ENV, helpers.lua, q(code))
end

describe("promises", function()
  after_each(helpers.close_tracked_servers)

  it("conn:disconnect() on a client drops the frames it has not read", function()
    local name = helpers.name("drop")
    local flushed
    listen(name, { framing = "message" }, {
      connect = function(conn)
        for _, m in ipairs({ "one", "two", "three" }) do assert(conn:write(m)) end
        flushed = conn:flush(5) -- the client's engine has taken all three off the pipe
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message", timeout = 2 }))
    assert.is_truthy(wait_until(function() return flushed ~= nil end), "the server's flush never returned")
    assert.is_true(flushed)
    assert.are.equal("one", c:read(1)) -- they did arrive
    c:disconnect()
    local m, err, code = c:read(0.5)
    assert.is_nil(m, "read after disconnect returned a frame received before it")
    assert.are.equal("closed", err)
    assert.are.equal("DISCONNECTED", code)
  end)

  it("frames kept for read() stop a client reading at its high_water, until it reads them", function()
    local name = helpers.name("inbox")
    local N, SIZE = 200, 1000 -- 200 KB: more than one read of the engine (64 KiB) takes
    local first, second
    listen(name, { framing = "message" }, {
      connect = function(conn)
        for i = 1, N do assert(conn:write(("%04d"):format(i) .. ("x"):rep(SIZE - 4))) end
        first = helpers.pack(conn:flush(0.3)) -- the client leaves most of it in the pipe
        second = helpers.pack(conn:flush(5))  -- until it reads
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message", high_water = 4096, timeout = 2 }))
    assert.is_truthy(wait_until(function() return first end), "the server's first flush never returned")
    assert.are.same({ n = 3, nil, "timeout", "ETIMEDOUT" }, first)
    for i = 1, N do
      local m, err = c:read(2)
      assert.are.equal(("%04d"):format(i), m and m:sub(1, 4), err)
    end
    assert.is_truthy(wait_until(function() return second end), "the server's second flush never returned")
    assert.is_true(second[1], second[2])
    c:disconnect()
  end)

  it("handler calls queued behind a waiting handler stop the server reading, until they run", function()
    local name = helpers.name("queue")
    local N, SIZE = 200, 1000 -- 200 KB: more than one read of the engine (64 KiB) takes
    local release, got = false, {}
    listen(name, { framing = "message" }, {
      data = function(_, msg)
        if #got == 0 then wait_until(function() return release end, 10) end
        got[#got + 1] = msg:sub(1, 4)
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message", timeout = 2 }))
    for i = 1, N do assert(c:write(("%04d"):format(i) .. ("x"):rep(SIZE - 4))) end
    local ok, err, code = c:flush(0.3)
    assert.is_nil(ok, "the server took everything off the pipe while its handler calls waited")
    assert.are.equal("timeout", err)
    assert.are.equal("ETIMEDOUT", code)
    release = true
    assert.is_true(c:flush(5))
    assert.is_truthy(wait_until(function() return #got == N end))
    for i = 1, N do assert.are.equal(("%04d"):format(i), got[i]) end
    c:disconnect()
  end)

  it("idle_timeout spares a connection whose handler is still running, then ends it once idle", function()
    local name = helpers.name("idle")
    local why
    listen(name, { framing = "message", idle_timeout = 0.2 }, {
      request = function(_, msg)
        npipe.sleep(1) -- five idle periods, with no frame received meanwhile
        return "late " .. msg
      end,
      disconnect = function(_, _, code) why = code end,
    })
    local c = assert(npipe.connect(name, { framing = "message", timeout = 2 }))
    assert(c:write("reply"))
    local reply, err, code = c:read(3)
    assert.are.equal("late reply", reply, ("no reply: %s %s"):format(tostring(err), tostring(code)))
    -- once the handler is done the connection is idle, and goes
    local m, err2 = c:read(3)
    assert.is_nil(m)
    assert.are.equal("closed", err2)
    assert.is_truthy(wait_until(function() return why end))
    assert.are.equal("ETIMEDOUT", why)
  end)

  it("connect{timeout} waits out a stale socket until a server starts on it #unix", function()
    local path = ("%s/stale-%d"):format(helpers.tmp, core.pid())
    os.remove(path)
    finally(function() os.remove(path) end)
    -- a socket file that is bound but never listened on: what a server that died leaves
    local made = helpers.capture(("python3 -c %s %s 2>&1"):format(
      q("import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])"), q(path)))
    assert.are.equal("", made)
    assert.is_true(exists(path))
    local none, _, none_code = npipe.connect(path)
    assert.is_nil(none)
    assert.are.equal("ECONNREFUSED", none_code) -- the test means what it says
    npipe.spawn(function()
      npipe.sleep(0.3)
      listen(path, { framing = "message" }, { request = function(_, msg) return "up:" .. msg end })
    end)
    local t0 = npipe.now()
    local c, err = npipe.connect(path, { framing = "message", timeout = 2 })
    local took = npipe.now() - t0
    assert.is_truthy(c, err)
    assert.is_true(took >= 0.2, ("connected after %.3f s, before the server was there?"):format(took))
    assert(c:write("hi"))
    assert.are.equal("up:hi", c:read(2))
    c:disconnect()
  end)

  it("closing a server leaves alone a socket file that another server now owns #unix", function()
    local name = helpers.name("owner")
    local a = listen(name, { framing = "message" }, { request = function() return "A" end })
    local path = a:path()
    assert.is_true(os.remove(path)) -- e.g. an admin cleaning up; A still runs
    local b = listen(name, { framing = "message" }, { request = function() return "B" end })
    assert.are.equal(path, b:path())
    a:close()
    assert.is_true(exists(path), "closing A removed B's socket file")
    local c, err = npipe.connect(name, { framing = "message" })
    assert.is_truthy(c, err)
    assert.are.equal("B", c:transact("who?", 2))
    c:disconnect()
    b:close()
    assert.is_false(exists(path)) -- B's own close does remove it
  end)

  it("the client's credentials stay readable on the server after the connection closed #unix", function()
    local name = helpers.name("kept")
    local after
    listen(name, { framing = "lines" }, {
      -- nothing asks for the client's identity while it is connected
      disconnect = function(conn)
        npipe.sleep(0.2) -- long after the connection's resources are gone
        local cred, err = conn:credentials()
        after = { cred = cred, err = err, pid = conn:process_id(), sid = conn:session_id() }
      end,
    })
    local code = [[
local n = require("npipe")
local c = assert(n.connect(NAME, { framing = "lines", timeout = 5 }))
assert(c:write("pid " .. require("npipe.core").pid()))
assert(c:flush(5))
c:disconnect()
]]
    local pid, out = helpers.spawn("exec " .. lua_command(code, name))
    finally(function() helpers.kill(pid, "KILL") end)
    assert.is_truthy(wait_until(function() return after end, 10),
      "the client did not come and go: " .. tostring(helpers.read_file(out)))
    assert.is_truthy(after.cred, after.err)
    assert.are.equal(pid, after.cred.pid)
    assert.are.equal(pid, after.pid)
    assert.are_not.equal(core.pid(), after.pid)
    assert.are.equal(helpers.capture("id -u"), tostring(after.cred.uid))
    assert.are.equal(npipe.session_id(), after.sid) -- the child shares this session
  end)

  it("a write to a client that vanished returns nil, message, code and does not kill the server #unix", function()
    -- In a child: this busted process must survive even if the promise is broken.
    local code = [[
local n = require("npipe")
local server_side
local s = assert(n.listen(NAME, { framing = "message" }, { connect = function(c) server_side = c end }))
local c = assert(n.connect(NAME, { framing = "message", timeout = 2 }))
for _ = 1, 500 do
  if server_side then break end
  n.sleep(0.01)
end
assert(server_side, "not accepted")
c:disconnect() -- closes the client's socket now; the server has not seen it yet
local ok, err, code = server_side:write("into the void")
print("write:", tostring(ok), tostring(err), tostring(code), tostring(server_side:is_open()))
s:close()
print("alive")
]]
    local out = helpers.capture(("timeout 10 %s 2>&1; echo \"status $?\""):format(
      lua_command(code, helpers.name("sigpipe"))))
    assert.matches("status 0$", out)
    assert.matches("alive", out, 1, true)
    local ok, err, ecode, open = out:match("write:\t(%S+)\t([^\t]*)\t(%S+)\t(%S+)")
    assert.are.equal("nil", ok, out)
    assert.are_not.equal("", err)
    assert.is_truthy(ecode == "EPIPE" or ecode == "ECONNRESET", ecode)
    assert.are.equal("false", open) -- an OS write error also closes the connection
  end)
end)
