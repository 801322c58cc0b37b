-- npipe between real processes over real sockets: session and process ids, flush,
-- load, a Python client, a client killed mid-write, and stale, live and foreign paths.
-- Fixtures are in spec/fixtures/. Children are started with this process's package
-- paths, so they find npipe however busted was started.
-- Servers in the per-user directory may be probed by other programs meanwhile (npipe
-- list connects to every live socket there), so the servers below act on what a client
-- says, not on its connecting, and count only the connections that spoke.
local npipe = require("npipe")
local core = require("npipe.core")
local helpers = require("helpers")
local P = require("fixtures.load_proto")

local q = helpers.quote
local pack = helpers.pack
local FIX = "spec/fixtures/"
local ENV = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(package.path), q(package.cpath))

-- A shell command that runs a fixture script with lua.
local function lua_cmd(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[#args + 1] = q(select(i, ...)) end
  return ("%s %s %s %s"):format(ENV, helpers.lua, q(FIX .. script), table.concat(args, " "))
end

local function output(out) return helpers.read_file(out) or "" end

-- Waits (driving the loop) until the child's output matches pattern; returns the captures.
local function wait_output(out, pattern, seconds)
  helpers.wait_until(function() return output(out):match(pattern) end, seconds or 5)
  return output(out):match(pattern)
end

-- Starts a command in the background; its output ends with "exit status N".
-- Returns the pid of the wrapping shell and the output file.
local function start(cmd)
  return helpers.spawn("{ " .. cmd .. "; echo \"exit status $?\"; }")
end

local function exit_status(out, seconds)
  return tonumber(wait_output(out, "exit status (%d+)", seconds))
end

-- Running, not a zombie: orphans here may stay unreaped for a while, and kill -0 succeeds on them.
local function running(pid)
  local stat = helpers.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function kill_all(pids)
  for i = #pids, 1, -1 do
    if running(pids[i]) then helpers.kill(pids[i], "KILL") end
  end
end

-- The fixture server (spec/fixtures/proc_server.lua) in a child process: pid, output, path.
local function start_server(name)
  local pid, out = helpers.spawn("exec " .. lua_cmd("proc_server.lua", name))
  local path = wait_output(out, "ready (%S+)\n")
  assert(path, "the child server did not start: " .. output(out))
  assert.are.equal(pid, tonumber(output(out):match("^pid (%d+)")))
  return pid, out, path
end

local function sid_of(pid)
  -- without the sanitizer runtime that the ASan run preloads: procps deadlocks under it
  return tonumber(helpers.capture("env -u LD_PRELOAD ps -o sid= -p " .. pid))
end

local count = helpers.count

-- Reads n bytes from a bytes-framing connection.
local function read_n(conn, n, timeout)
  local parts, got = {}, 0
  while got < n do
    local chunk, err = conn:read(timeout or 5)
    if not chunk then return nil, err, table.concat(parts) end
    parts[#parts + 1] = chunk
    got = got + #chunk
  end
  return table.concat(parts)
end

describe("processes", function()
  it("reports the session and process ids of a client in its own session, and of the server", function()
    local pids, server = {}, nil
    finally(function()
      kill_all(pids)
      if server then server:close() end
    end)
    local name = helpers.name("sid")
    local seen = {}
    server = assert(npipe.listen(name, { framing = "lines" }, {
      data = function(conn, msg)
        seen.sid = pack(conn:session_id())
        seen.psid = pack(conn:posix_session_id())
        seen.pid = pack(conn:process_id())
        seen.conn = conn
        seen.hello = msg
      end,
    }))
    -- a login session of its own where this process may give one (helpers.login_prefix;
    -- session_spec.lua says when it cannot), and a POSIX session of its own
    local login = helpers.login_skip and "" or helpers.login_prefix
    local w, out = start(login .. "setsid " .. lua_cmd("session_client.lua", name))
    pids[#pids + 1] = w
    local cpid = tonumber(wait_output(out, "^pid (%d+)\n"))
    assert(cpid, "the client did not start: " .. output(out))
    pids[#pids + 1] = cpid
    assert(helpers.wait_until(function() return seen.hello end), "no hello from the client")
    local own, ssid, spid = wait_output(out, "ids own_sid=(%S+) server_sid=(%S+) server_pid=(%S+)\n")
    assert(own, output(out))
    local own_psid, said_server_psid = wait_output(out, "posix own_psid=(%S+) server_psid=(%S+)\n")
    assert(own_psid, output(out))

    -- the client waits for our word, so ps sees it alive
    assert.is_true(running(cpid))
    local client_psid = sid_of(cpid)
    local server_pid = core.pid()
    local server_psid = sid_of(server_pid)
    assert.is_number(client_psid)
    assert.is_number(server_psid)
    local client_sid = helpers.login_session_of(cpid)
    local server_sid = helpers.login_session_of(server_pid)

    -- the server side: the client's pid, login session and POSIX session
    assert.are.equal("hello " .. cpid, seen.hello)
    assert.are.equal(cpid, seen.pid[1])
    assert.are.equal(client_sid, seen.sid[1])
    assert.are.equal(server_sid, npipe.session_id())
    if login ~= "" then assert.are_not.equal(server_sid, seen.sid[1]) end
    assert.are.equal(client_psid, seen.psid[1])
    assert.are.equal(cpid, client_psid) -- setsid made the client a session leader
    assert.are_not.equal(server_psid, seen.psid[1])
    assert.are.equal(server_psid, npipe.posix_session_id())

    -- the client side: its own sessions, and the server's pid and sessions
    assert.are.equal(client_sid, tonumber(own))
    assert.are.equal(server_sid, tonumber(ssid))
    assert.are.equal(client_psid, tonumber(own_psid))
    assert.are.equal(server_psid, tonumber(said_server_psid))
    assert.are.equal(server_pid, tonumber(spid))

    assert(seen.conn:write("exit"))
    assert.are.equal(0, exit_status(out), output(out))
  end)

  it("flush waits until the client process has read everything", function()
    local pids, server = {}, nil
    finally(function()
      kill_all(pids)
      if server then server:close() end
    end)
    local name = helpers.name("flush")
    local marker = ("%s/flush-marker-%s"):format(helpers.tmp, name)
    os.remove(marker)
    local SIZE = 300 * 1024
    local blocks = {}
    for i = 1, math.floor(SIZE / 1024) do blocks[i] = ("%07d"):format(i) .. ("*"):rep(1016) .. "\n" end
    local big = table.concat(blocks)
    assert.are.equal(SIZE, #big)

    local r = {}
    server = assert(npipe.listen(name, nil, {
      data = function(conn, msg)
        conn.state.said = (conn.state.said or "") .. msg
        if conn.state.said ~= "ready" or r.pid then return end
        local t0 = npipe.now()
        r.pid = conn:process_id()
        -- 64 KiB first: the kernel takes it all at once, so only the socket's own
        -- queue shows that the client has not read it
        r.write1 = pack(conn:write(big:sub(1, 64 * 1024)))
        r.short = pack(conn:flush(0.2))
        r.write2 = pack(conn:write(big:sub(64 * 1024 + 1)))
        r.short_elapsed = npipe.now() - t0
        r.marker_after_short = helpers.exists(marker)
        r.long = pack(conn:flush(5))
        r.elapsed = npipe.now() - t0
        r.marker_after_long = helpers.exists(marker)
        r.bye = pack(conn:write("bye"))
        r.done = true
      end,
    }))
    local w, out = start(lua_cmd("flush_client.lua", name, marker, SIZE))
    pids[#pids + 1] = w
    local cpid = tonumber(wait_output(out, "^pid (%d+)\n"))
    assert(cpid, "the client did not start: " .. output(out))
    pids[#pids + 1] = cpid

    assert(helpers.wait_until(function() return r.done end, 10), "the flush did not finish")
    assert.are.equal(cpid, r.pid)
    assert.is_true(r.write1[1])
    assert.is_true(r.write2[1])
    -- while the client sleeps, a short flush times out
    assert.is_nil(r.short[1])
    assert.are.equal("timeout", r.short[2])
    assert.is_true(r.short_elapsed >= 0.19 and r.short_elapsed < 0.9, "short flush took " .. r.short_elapsed)
    assert.is_false(r.marker_after_short)
    -- the long one returns true, and only after the client started reading
    assert.is_true(r.long[1], tostring(r.long[2]))
    assert.is_true(r.marker_after_long)
    assert.is_true(r.elapsed >= 0.9, "flush returned after " .. r.elapsed .. " s")
    assert.is_true(r.elapsed < 5)
    assert.is_true(r.bye[1])

    assert.are.equal(0, exit_status(out), output(out))
    assert.matches("received " .. SIZE, output(out), 1, true)
    os.remove(marker)
  end)

  it("carries 200 concurrent connections from 4 processes, 100 checksummed messages each", function()
    local NPROC, NCONN, NMSG = 4, 50, 100
    local TOTAL = NPROC * NCONN
    local pids, server = {}, nil
    finally(function()
      kill_all(pids)
      if server then server:close() end
    end)
    local name = helpers.name("load")
    local t0 = npipe.now()
    local conns, counts, failures = {}, {}, {}
    local st = { total = 0, disconnects = 0, gone_before_go = 0 }
    local function fail(why)
      if #failures < 20 then failures[#failures + 1] = why end
    end
    server = assert(npipe.listen(name, { framing = "message" }, {
      data = function(conn, msg)
        local s = conn.state
        if msg == "hello" and not s.hello then -- every client connection starts so
          s.hello = true
          conns[#conns + 1] = conn
          if #conns == TOTAL then
            for _, c in ipairs(conns) do
              if not c:is_open() then st.gone_before_go = st.gone_before_go + 1 end
              if not c:write("go") then fail("cannot write go") end
            end
          end
          return
        end
        local cid, conn_no, seq = P.decode(msg)
        if not cid then
          fail(conn_no)
          return
        end
        local key = cid .. ":" .. conn_no
        if not s.key then
          if counts[key] then fail("two connections claim to be " .. key) end
          s.key, s.next, counts[key] = key, 1, 0
        elseif s.key ~= key then
          fail(("connection %s sent a message of %s"):format(s.key, key))
        end
        if seq ~= s.next then fail(("%s: message %d where %d was due"):format(key, seq, s.next)) end
        s.next = seq + 1
        counts[key] = counts[key] + 1
        st.total = st.total + 1
        local ok, err = conn:write(msg)
        if not ok then fail("echo: " .. tostring(err)) end
      end,
      disconnect = function(conn)
        if conn.state.hello then st.disconnects = st.disconnects + 1 end
      end,
    }))

    local outs = {}
    for cid = 1, NPROC do
      local w, out = start(lua_cmd("load_client.lua", name, NCONN, NMSG, cid))
      pids[#pids + 1] = w
      outs[cid] = out
    end
    for cid = 1, NPROC do
      local cpid = tonumber(wait_output(outs[cid], "^pid (%d+)\n"))
      if cpid then pids[#pids + 1] = cpid end
    end

    local bytes = 0
    for cid = 1, NPROC do
      assert.are.equal(0, exit_status(outs[cid], 20), output(outs[cid]))
      local conns_done, msgs, b = output(outs[cid]):match("ok conns=(%d+) messages=(%d+) bytes=(%d+)")
      assert.are.equal(NCONN, tonumber(conns_done))
      assert.are.equal(NCONN * NMSG, tonumber(msgs))
      bytes = bytes + tonumber(b)
    end
    assert(helpers.wait_until(function() return st.disconnects == TOTAL end, 5),
      "disconnects seen: " .. st.disconnects)

    assert.are.same({}, failures)
    assert.are.equal(TOTAL, #conns)
    assert.are.equal(0, st.gone_before_go) -- all 200 were connected at once
    assert.are.equal(TOTAL * NMSG, st.total)
    local keys = 0
    for key, n in pairs(counts) do
      keys = keys + 1
      assert.are.equal(NMSG, n, key)
    end
    assert.are.equal(TOTAL, keys)
    local stats = server:stats()
    assert.is_true(stats.accepted >= TOTAL)
    assert.are.equal(0, stats.active)
    assert.are.equal(TOTAL * NMSG + TOTAL, stats.messages_in) -- the messages and the hellos
    assert.are.equal(TOTAL * NMSG + TOTAL, stats.messages_out) -- the echoes and the go's
    assert.are.equal(bytes + TOTAL * (4 + 5), stats.bytes_in) -- every byte the clients wrote arrived
    assert.are.equal(bytes + TOTAL * (4 + 2), stats.bytes_out)
    assert.is_true(npipe.now() - t0 < 20, "took " .. (npipe.now() - t0) .. " s")
  end)

  it("serves a Python client in bytes and in message framing", function()
    local pids, servers = {}, {}
    finally(function()
      kill_all(pids)
      for _, s in ipairs(servers) do s:close() end
    end)
    local echo = assert(npipe.listen(helpers.name("py-bytes"), nil, {
      data = function(conn, msg) conn:write(msg) end,
    }))
    servers[1] = echo
    local lengths = {}
    local msgs = assert(npipe.listen(helpers.name("py-msg"), { framing = "message" }, {
      data = function(conn, msg)
        lengths[#lengths + 1] = #msg
        conn:write(#msg .. ":" .. msg:reverse())
      end,
    }))
    servers[2] = msgs

    local w, out = start(("python3 %s %s %s"):format(q(FIX .. "py_client.py"), q(echo:path()), q(msgs:path())))
    pids[#pids + 1] = w
    local cpid = tonumber(wait_output(out, "^pid (%d+)\n"))
    if cpid then pids[#pids + 1] = cpid end
    assert.are.equal(0, exit_status(out, 15), output(out))
    local text = output(out)
    assert.matches("bytes ok 16402", text, 1, true)
    assert.matches("message ok 4", text, 1, true)
    assert.matches("PASS", text, 1, true)
    assert.are.same({ 5, 0, 100 * 1024, 4 }, lengths)
  end)

  it("survives a client killed mid-write and still serves others", function()
    local pids = {}
    finally(function() kill_all(pids) end)
    local name = helpers.name("kill")
    local spid, sout = start_server(name)
    pids[#pids + 1] = spid

    local w, out = start(lua_cmd("flood_client.lua", name))
    pids[#pids + 1] = w
    local cpid = tonumber(wait_output(out, "^pid (%d+)\n"))
    assert(cpid, "the client did not start: " .. output(out))
    pids[#pids + 1] = cpid
    local id = wait_output(sout, "\nconnect (%d+) " .. cpid .. "\n")
    assert(id, output(sout))
    -- both directions are busy: the server floods the client, the client floods the server
    assert(wait_output(sout, "\nflooding " .. id .. "\n"), output(sout))
    assert(wait_output(sout, "\nreceived " .. id .. " "), output(sout))
    assert(wait_output(out, "\nwrote %d+"), output(out))
    assert.is_nil(output(sout):match("\nwrite_error"))
    assert.is_nil(output(sout):match("\ndisconnect " .. id .. " "))

    helpers.kill(cpid, "KILL")
    local code, reason = wait_output(sout, "\ndisconnect " .. id .. " (%S+) ([^\n]+)\n")
    assert(code, "no disconnect for the killed client: " .. output(sout))
    assert.is_true(#reason > 0)
    assert.are.equal(137, exit_status(out)) -- 128 + SIGKILL: it really died mid-stream
    -- the flooding coroutine's write to the vanished peer returned nil and a message
    local wcode, wmsg = wait_output(sout, "\nwrite_error " .. id .. " (%S+) ([^\n]+)\n")
    assert(wcode, "the flood write did not fail: " .. output(sout))
    assert.is_true(#wmsg > 0)
    -- so did a write from the disconnect handler
    local after = wait_output(sout, "\n(write_after_close " .. id .. " [^\n]+)\n")
    assert.matches("^write_after_close %d+ nil %S+ %S", after)

    -- another client is still served
    local c = assert(npipe.connect(name, { timeout = 2 }))
    assert(c:write("hello again"))
    assert.are.equal("hello again", read_n(c, #"hello again"))
    c:disconnect()
    local id2 = wait_output(sout, "\nconnect (%d+) " .. core.pid() .. "\n")
    assert(id2)
    assert(wait_output(sout, "\ndisconnect " .. id2 .. " "), output(sout))

    assert.is_true(running(spid), "the server died: " .. output(sout))
    local text = output(sout)
    assert.are.equal(1, count(text, "\ndisconnect " .. id .. " "))
    assert.are.equal(1, count(text, "\nwrite_error " .. id .. " "))
    assert.is_nil(text:match("\nflood_finished"))
  end)

  it("runs the disconnect handler of a client killed while its data handler waits", function()
    local pids, server = {}, nil
    finally(function()
      kill_all(pids)
      if server then server:close() end
    end)
    local name = helpers.name("slow")
    local st = { disconnects = 0 }
    server = assert(npipe.listen(name, { framing = "lines" }, {
      data = function(conn, msg)
        st.hello, st.conn = msg, conn
        npipe.sleep(0.3) -- a slow handler: the client dies meanwhile
        st.handled = true
      end,
      disconnect = function(conn, reason)
        if conn == st.conn then st.disconnects, st.reason = st.disconnects + 1, reason end
      end,
    }))
    local w, out = start(lua_cmd("session_client.lua", name))
    pids[#pids + 1] = w
    local cpid = tonumber(wait_output(out, "^pid (%d+)\n"))
    assert(cpid, "the client did not start: " .. output(out))
    pids[#pids + 1] = cpid
    assert(helpers.wait_until(function() return st.hello end), "no hello")
    helpers.kill(cpid, "KILL")
    assert.are.equal(137, exit_status(out))
    assert(helpers.wait_until(function() return st.handled end, 2), "the data handler did not end")
    assert(helpers.wait_until(function() return st.disconnects > 0 end, 2),
      "the disconnect handler did not run after the data handler ended")
    npipe.sleep(0.1)
    assert.are.equal(1, st.disconnects)
    assert.is_string(st.reason)
  end)

  it("reclaims the socket of a server that was killed", function()
    local pids, server = {}, nil
    finally(function()
      kill_all(pids)
      if server then server:close() end
    end)
    local name = helpers.name("stale")
    local spid, _, path = start_server(name)
    pids[#pids + 1] = spid
    assert.are.equal(npipe.path(name), path)
    helpers.kill(spid, "KILL")
    assert(helpers.wait_until(function() return not running(spid) end), "the child server did not die")
    assert.is_true(helpers.exists(path)) -- the socket file stays behind
    local nc, cerr = npipe.connect(name)
    assert.is_nil(nc, "connected to a dead server")
    assert.is_string(cerr)

    local got = {}
    server = assert(npipe.listen(name, nil, {
      data = function(conn, msg)
        got[#got + 1] = msg
        conn:write(msg)
      end,
    }))
    local c = assert(npipe.connect(name, { timeout = 2 }))
    assert(c:write("fresh"))
    assert.are.equal("fresh", read_n(c, 5))
    c:disconnect()
    assert.are.equal("fresh", table.concat(got)) -- the client reached this server
  end)

  it("refuses the name of a live server in another process, which goes on serving", function()
    local pids = {}
    finally(function() kill_all(pids) end)
    local name = helpers.name("live")
    local spid, _, path = start_server(name)
    pids[#pids + 1] = spid

    local s, err = npipe.listen(name, nil, { data = function() end })
    if s then s:close() end
    assert.is_nil(s)
    assert.matches("already in use", err, 1, true)
    assert.is_true(helpers.exists(path))

    local c = assert(npipe.connect(name, { timeout = 2 }))
    assert(c:write("still there?"))
    assert.are.equal("still there?", read_n(c, #"still there?"))
    c:disconnect()
    assert.is_true(running(spid))
  end)

  it("refuses a path that is not a socket and leaves it alone", function()
    local made = {}
    finally(function()
      for _, p in ipairs(made) do os.remove(p) end
    end)
    -- a path name
    local file = ("%s/plain-%s"):format(helpers.tmp, helpers.name("file"))
    made[#made + 1] = file
    helpers.write_file(file, "precious")
    local s, err = npipe.listen(file, nil, { data = function() end })
    if s then s:close() end
    assert.is_nil(s)
    assert.matches("not a socket", err, 1, true)
    assert.are.equal("precious", helpers.read_file(file))

    -- a bare name whose file in the pipe directory is a regular file
    local name = helpers.name("file")
    local dir = assert(npipe.dir())
    local in_dir = dir .. "/" .. name
    made[#made + 1] = in_dir
    helpers.write_file(in_dir, "mine too")
    s, err = npipe.listen(name, nil, { data = function() end })
    if s then s:close() end
    assert.is_nil(s)
    assert.matches("not a socket", err, 1, true)
    assert.are.equal("mine too", helpers.read_file(in_dir))
  end)
end)
