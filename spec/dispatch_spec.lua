-- How a message reaches its handler. Most messages take the C fast path
-- (src/lnpipe_fast.c: the data handler started straight from C, conn:write in C); the
-- rest take npipe.sched's Lua path. These specs hold the two to the same promises where
-- they meet: order on a connection, work started inside a handler, errors, waits.
local npipe = require("npipe")
local helpers = require("helpers")

local function listen(opts, handlers)
  return helpers.track_server(assert(npipe.listen(helpers.name("dsp"), opts, handlers)))
end

-- A Python client (socket module only): sends n messages "000001" .. (message framing)
-- in one go, reads n replies and prints "ok N", or where the first reply differs.
local PY_ORDER = [[
import socket, struct, sys
path, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(path)
msgs = [b"%06d" % i for i in range(1, n + 1)]
s.sendall(b"".join(struct.pack(">I", len(m)) + m for m in msgs))
buf = b""
def take(k):
    global buf
    while len(buf) < k:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("EOF after %d bytes" % len(buf))
        buf += chunk
    out, buf = buf[:k], buf[k:]
    return out
for i, m in enumerate(msgs, 1):
    (k,) = struct.unpack(">I", take(4))
    got = take(k)
    if got != m:
        print("reply %d is %r, expected %r" % (i, got, m))
        sys.exit(1)
print("ok %d" % n)
]]

local function python_order(path, n)
  local pid, out = helpers.spawn(("exec python3 -c %s %s %d"):format(helpers.quote(PY_ORDER), helpers.quote(path), n))
  assert.truthy(helpers.wait_exit(pid, 30), "the python client did not finish")
  return helpers.read_file(out)
end

describe("dispatch #unix", function()
  after_each(helpers.close_tracked_servers)

  it("keeps a connection's order when some messages wait and the rest are handled at once (Python client)", function()
    local active, overlap = 0, false
    local server = listen({ framing = "message" }, {
      data = function(conn, msg)
        active = active + 1
        if active > 1 then overlap = true end
        if tonumber(msg) % 7 == 0 then npipe.sleep(0) end -- a wait: the following messages queue
        active = active - 1
        conn:write(msg)
      end,
    })
    assert.are.equal("ok 3000\n", python_order(server:path(), 3000))
    assert.is_false(overlap, "two handler calls of one connection ran at once")
  end)

  it("starts what a handler spawns after the handler returns, not inside it", function()
    local log = {}
    local server = listen({ framing = "message" }, {
      data = function(conn, msg)
        log[#log + 1] = "handler " .. msg
        npipe.spawn(function()
          log[#log + 1] = "spawned " .. msg
          conn:write("from spawn " .. msg)
        end)
        log[#log + 1] = "handler " .. msg .. " returns"
      end,
    })
    local c = assert(npipe.connect(server:path(), { framing = "message", timeout = 2 }))
    assert(c:write("a"))
    assert.are.equal("from spawn a", c:read(2))
    assert.are.same({ "handler a", "handler a returns", "spawned a" }, log)
    c:disconnect()
  end)

  it("starts what a handler spawns before the loop waits again (server under npipe.run, Python client)", function()
    local path = helpers.tmp .. "/spawn-" .. helpers.name("s"):gsub("%W", "")
    local pid, out = helpers.spawn_lua("spec/fixtures/spawn_server.lua", path)
    finally(function() helpers.kill(pid) end)
    assert.is_truthy(helpers.wait_until(function() return (helpers.read_file(out) or ""):find("ready") end, 10),
      "the server did not start: " .. tostring(helpers.read_file(out)))
    -- Nothing but this one message happens on the server's loop.
    local reply = helpers.capture(("python3 -c %s %s"):format(helpers.quote([[
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(struct.pack(">I", 1) + b"a")
try:
    head = s.recv(4)
    print(s.recv(struct.unpack(">I", head)[0]).decode())
except socket.timeout:
    print("no reply within 3 s")
]]), helpers.quote(path)))
    assert.are.equal("from spawn a", reply)
  end)

  it("runs a disconnect handler after the data handler in which the connection closed", function()
    local log = {}
    local server = listen({ framing = "message" }, {
      data = function(conn, msg)
        log[#log + 1] = "data " .. msg
        conn:disconnect()
        local ok, err, code = conn:write("late")
        log[#log + 1] = ("write %s %s %s"):format(tostring(ok), tostring(err):match("^pipe is %a+"), tostring(code))
      end,
      disconnect = function(_, reason) log[#log + 1] = "disconnect: " .. reason end,
    })
    local c = assert(npipe.connect(server:path(), { framing = "message", timeout = 2 }))
    assert(c:write("x"))
    assert.is_truthy(helpers.wait_until(function() return #log >= 3 end, 5), "the disconnect handler never ran")
    assert.are.same({ "data x", "write nil pipe is closed EPIPE", "disconnect: disconnected by the server" }, log)
    c:disconnect()
  end)

  it("reports a handler's error with its traceback and goes on serving the next message of others", function()
    local errors = {}
    local server = listen({ framing = "message" }, {
      data = function(conn, msg)
        if msg == "boom" then error("boom in the data handler") end
        conn:write("echo " .. msg)
      end,
      error = function(_, err) errors[#errors + 1] = err end,
    })
    local bad = assert(npipe.connect(server:path(), { framing = "message", timeout = 2 }))
    local good = assert(npipe.connect(server:path(), { framing = "message", timeout = 2 }))
    assert(bad:write("boom"))
    assert.is_truthy(helpers.wait_until(function() return #errors == 1 end, 5), "the error handler never ran")
    assert.matches("boom in the data handler", errors[1])
    assert.matches("dispatch_spec.lua:%d+", errors[1]) -- the traceback names the handler
    local m, err = bad:read(2)
    assert.are.same({ nil, "closed" }, { m, err })
    for i = 1, 3 do
      assert(good:write("m" .. i))
      assert.are.equal("echo m" .. i, good:read(2))
    end
    good:disconnect()
  end)

  it("gives a handler that waited, and the ones after it, only their own arguments", function()
    local seen = {}
    local server = listen({ framing = "message" }, {
      data = function(conn, msg, extra)
        seen[#seen + 1] = extra == nil
        if msg == "wait" then
          npipe.sleep(0.01)
          return "left", "behind" -- a body's results must not become the next handler's arguments
        end
        conn:write(msg)
        return "more", "results"
      end,
    })
    local c = assert(npipe.connect(server:path(), { framing = "message", timeout = 2 }))
    for round = 1, 20 do
      assert(c:write("wait"))
      assert(c:write("r" .. round))
      assert.are.equal("r" .. round, c:read(2))
    end
    for _, clean in ipairs(seen) do assert.is_true(clean) end
    assert.are.equal(40, #seen)
    c:disconnect()
  end)
end)

-- A Python client that opens n connections, sends a line on each, then reads the reply
-- on each and prints "ok N". A full listen backlog (EAGAIN) is waited out.
local PY_BURST = [[
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
def connect():
    for _ in range(1000):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            time.sleep(0.01)
    raise SystemExit("the backlog stayed full")
socks = []
for i in range(n):
    s = connect()
    s.sendall(b"x\n")
    socks.append(s)
for s in socks:
    if s.recv(16) != b"x\n":
        raise SystemExit("bad reply")
    s.close()
print("ok %d" % n)
]]

local function heap_kib()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count")
end

describe("coroutines after a burst #unix", function()
  after_each(helpers.close_tracked_servers)

  -- Each waiting handler or spawned function holds a coroutine; they go back to a pool
  -- when they end. Measured for 1,000 on Lua 5.4: the Lua heap grew by 1,191 KiB
  -- (handlers, C's pool) and 1,778 KiB (spawned, sched.lua's) when the pools kept them
  -- all, by 461 and 501 KiB with both bounded at 256; for 2,000: 572 and 501 bounded (Lua
  -- 5.1's Lua path: 1,122 bounded, 2,715 for 1,000 unbounded).
  it("are not all kept: 2,000 handlers that waited at once leave the Lua heap under 1,500 KiB larger", function()
    local server = listen({ framing = "lines" }, {
      data = function(conn, msg)
        npipe.sleep(0.3)
        conn:write(msg)
      end,
    })
    local before = heap_kib()
    local pid, out = helpers.spawn(("exec python3 -c %s %s 2000"):format(helpers.quote(PY_BURST),
                                                                       helpers.quote(server:path())))
    assert.truthy(helpers.wait_until(function() return not helpers.alive(pid) end, 30))
    assert.are.equal("ok 2000", helpers.read_file(out):match("[^\n]*"))
    assert.truthy(helpers.wait_until(function() return #server:connections() == 0 end, 10))
    local grown = heap_kib() - before
    assert.is_true(grown < 1500, ("the Lua heap grew by %.0f KiB"):format(grown))
  end)

  it("are not all kept: 2,000 spawned functions that waited at once grow the Lua heap by under 1,500 KiB", function()
    local before = heap_kib()
    local done = 0
    for _ = 1, 2000 do
      npipe.spawn(function()
        npipe.sleep(0.1)
        done = done + 1
      end)
    end
    assert.truthy(helpers.wait_until(function() return done == 2000 end, 10))
    local grown = heap_kib() - before
    assert.is_true(grown < 1500, ("the Lua heap grew by %.0f KiB"):format(grown))
  end)
end)
