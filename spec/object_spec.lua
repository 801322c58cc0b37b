-- A connection as an object: one userdata whose metatable finds npipe.Conn's methods
-- and keeps the connection's own fields in a table made at the first field set
-- (src/lnpipe_objects.c). These specs hold it to what a Lua table did: fields and
-- conn.state last as long as the connection, conn:server() as long as it lives, and an
-- idle connection costs little of the Lua heap (issue 13's idle-memory target).
local npipe = require("npipe")
local helpers = require("helpers")

-- A Python client (socket module only): connects, and for each argument sends it as a
-- line and prints the reply line.
local PY_LINES = [[
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rb")
for line in sys.argv[2:]:
    s.sendall(line.encode() + b"\n")
    print(f.readline().decode().rstrip("\n"))
]]

-- A Python client that opens n connections, does one round trip on each, prints
-- "ready" and holds them for 20 s (or until killed).
local PY_HOLD = [[
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"x\n")
    if s.recv(16) != b"x\n":
        raise SystemExit("bad reply")
    socks.append(s)
print("ready", flush=True)
time.sleep(20)
]]

-- Two connections, one after the other: the first does a round trip and stays open,
-- the second (which the server refuses) reads until its end. Prints both outcomes.
local PY_TWO = [[
import socket, sys
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    return s
a = conn()
a.sendall(b"x\n")
print("a", a.recv(16))
b = conn()
print("b", b.recv(16))
a.close()
]]

local function lines_of(path)
  local out = {}
  for line in (helpers.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

describe("a connection object", function()
  after_each(helpers.close_tracked_servers)

  it("keeps conn.state and the fields a handler sets across its messages (Python client)", function()
    local server = helpers.track_server(assert(npipe.listen(helpers.name("obj"), { framing = "lines" }, {
      data = function(conn, msg)
        conn.state.n = (conn.state.n or 0) + 1
        conn.first = conn.first or msg
        conn:write(("%d %s %s"):format(conn.state.n, conn.first, type(conn.state)))
      end,
    })))
    local pid, out = helpers.spawn(("exec python3 -c %s %s a b c"):format(helpers.quote(PY_LINES),
                                                                          helpers.quote(server:path())))
    helpers.wait_until(function() return not helpers.alive(pid) end, 15)
    assert.are.same({ "1 a table", "2 a table", "3 a table" }, lines_of(out))
  end)

  it("takes a field of the script's own, and refuses one named as a method", function()
    local server = helpers.track_server(assert(npipe.listen(helpers.name("obj"), { framing = "lines" }, {
      data = function(conn, msg)
        conn.label = msg
        local ok, err = pcall(function() conn.id = 5 end)
        conn:write(("%s %s %s %s"):format(conn.label, tostring(ok), type(conn:id()), err:match("method") or err))
      end,
    })))
    local pid, out = helpers.spawn(("exec python3 -c %s %s z"):format(helpers.quote(PY_LINES),
                                                                    helpers.quote(server:path())))
    helpers.wait_until(function() return not helpers.alive(pid) end, 15)
    assert.are.same({ "z false number method" }, lines_of(out))
  end)

  it("keeps its server: conn:server() answers after the script dropped the closed server", function()
    local started, got = false, nil
    local server = assert(npipe.listen(helpers.name("obj"), { framing = "lines" }, {
      data = function(conn)
        started = true
        npipe.sleep(0.2)
        local s = conn:server()
        got = s and s:path() or "no server"
        conn:write("done")
      end,
    }))
    local path = server:path()
    local pid = helpers.spawn(("exec python3 -c %s %s hi"):format(helpers.quote(PY_LINES), helpers.quote(path)))
    assert.truthy(helpers.wait_until(function() return started end, 10))
    server:close()
    server = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    assert.truthy(helpers.wait_until(function() return got end, 10))
    helpers.wait_exit(pid, 10)
    assert.are.equal(path, got)
  end)

  it("is among server:connections() once admitted: not while allow judges it, nor once refused", function()
    local seen, server = {}, nil
    server = helpers.track_server(assert(npipe.listen(helpers.name("obj"), {
      framing = "lines",
      allow = function()
        seen[#seen + 1] = #server:connections()
        return #seen == 1, "only the first"
      end,
    }, { data = function(conn, msg) conn:write(msg) end })))
    local pid, out = helpers.spawn(("exec python3 -c %s %s"):format(helpers.quote(PY_TWO),
                                                                   helpers.quote(server:path())))
    helpers.wait_until(function() return not helpers.alive(pid) end, 15)
    assert.are.same({ "a b'x\\n'", "b b''" }, lines_of(out))
    assert.are.same({ 0, 1 }, seen) -- the first not yet, then the first only
  end)

  it("costs an idle server connection less than 160 bytes of the Lua heap (300 connections, Python)", function()
    local server = helpers.track_server(assert(npipe.listen(helpers.name("obj"), { framing = "lines" }, {
      data = function(conn, msg) conn:write(msg) end,
    })))
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    local pid, out = helpers.spawn(("exec python3 -c %s %s 300"):format(helpers.quote(PY_HOLD),
                                                                             helpers.quote(server:path())))
    assert.truthy(helpers.wait_until(function() return (helpers.read_file(out) or ""):find("ready") end, 20),
                  helpers.read_file(out))
    assert.truthy(helpers.wait_until(function() return #server:connections() == 300 end, 10))
    collectgarbage()
    collectgarbage()
    local per = (collectgarbage("count") - before) * 1024 / 300
    helpers.kill(pid)
    -- measured alone: 138 on Lua 5.4 (the userdata, its registry slot), 119-147 on 5.1,
    -- 5.3 and LuaJIT; 174 when the connection had an entry of the weak objects table as
    -- well; 444 when a connection was a table with state and a userdata beside it, and a
    -- node of its server's _conns
    assert.is_true(per < 160, ("an idle connection costs %.0f bytes of the Lua heap"):format(per))
  end)
end)
