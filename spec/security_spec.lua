-- Security: secure defaults, pipe squatting, the allow policy, expect, max_instances,
-- idle_timeout, backpressure measured with RSS, and a draining close. Some clients run
-- as another user (nobody) or in another session; they connect to path names in a
-- directory of their own under /tmp that they can reach.
local npipe = require("npipe")
local core = require("npipe.core")
local helpers = require("helpers")

local q = helpers.quote
local CLIENT = "spec/fixtures/sec_client.lua"
local SERVER = "spec/fixtures/sec_server.lua"
local LISTEN = "spec/fixtures/sec_listen.lua"
local AS_NOBODY = "setpriv --reuid=nobody --regid=nogroup --clear-groups "

local function output(path) return helpers.read_file(path) or "" end

-- it(), or where no child can get a login session of its own a pending spec that says
-- why (not a silent pass).
local function it_login(title, fn)
  if helpers.login_skip then return pending(title .. " (skipped: " .. helpers.login_skip .. ")") end
  return it(title, fn)
end

-- Waits (driving the loop) until the output file holds text; returns the output.
local function wait_output(path, text, seconds)
  local found = helpers.wait_until(function() return output(path):find(text, 1, true) ~= nil end, seconds or 5)
  return found and output(path) or nil, output(path)
end

-- Runs a command to its end outside the loop.
local function run_sync(cmd)
  return helpers.capture(cmd)
end

local function stat_mode(path) return run_sync("stat -c %a " .. q(path)) end

local function rss_kb(pid)
  local s = helpers.read_file(("/proc/%d/status"):format(pid)) or ""
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- A sec_client.lua child: prefix is prepended to the command (e.g. setpriv, setsid).
local function spawn_client(name, mode, param, prefix)
  return helpers.spawn(("exec %s%s %s %s %s %s"):format(prefix or "", helpers.lua, CLIENT, q(name), mode,
    q(param or "")))
end

local function spawn_server(name, mode, prefix)
  return helpers.spawn(("exec %s%s %s %s %s"):format(prefix or "", helpers.lua, SERVER, q(name), mode))
end

-- Kills a child (if still there) and reaps nothing: the shell that started it does.
local function killer(pids)
  return function()
    for _, pid in pairs(pids) do
      if pid then helpers.kill(pid, "KILL") end
    end
  end
end

-- A directory under /tmp that other users can enter (0755), for path-name pipes.
local shared
local function shared_dir()
  if not shared then
    shared = run_sync("mktemp -d /tmp/npipe-sec.XXXXXX")
    run_sync("chmod 0755 " .. q(shared))
  end
  return shared
end

local function echo_server(name, opts, extra)
  local rec = { connects = {}, data = {}, rejects = {}, disconnects = {} }
  local h = {
    connect = function(conn)
      rec.connects[#rec.connects + 1] = conn:credentials()
    end,
    data = function(conn, msg)
      rec.data[#rec.data + 1] = msg
      conn:write(msg)
    end,
    reject = function(peer, why)
      rec.rejects[#rec.rejects + 1] = { peer = peer, why = why }
    end,
    disconnect = function(conn, reason, code)
      rec.disconnects[conn:id()] = { reason = reason, code = code }
    end,
  }
  for k, v in pairs(extra or {}) do h[k] = v end
  opts.framing = opts.framing or "message"
  local server = assert(npipe.listen(name, opts, h))
  return server, rec
end

-- One echo round trip as an in-process client.
local function round_trip(name, msg, opts)
  opts = opts or {}
  opts.framing = "message"
  local c, err, code = npipe.connect(name, opts)
  if not c then return nil, err, code end
  assert(c:write(msg))
  local reply, rerr = c:read(2)
  c:disconnect()
  return reply, rerr
end

teardown(function()
  if shared then os.execute("rm -rf " .. q(shared)) end
end)

describe("security", function()
  describe("secure defaults and pipe squatting", function()
    it("puts a bare name in a 0700 per-user directory with a 0600 socket; opts.mode applies", function()
      local name = helpers.name("sec")
      local server = echo_server(name, {})
      finally(function() server:close() end)
      local dir = npipe.dir()
      assert.are.equal(dir .. "/" .. name, server:path())
      assert.are.equal("700", stat_mode(dir))
      assert.are.equal("600", stat_mode(server:path()))
      assert.are.equal("0", run_sync("stat -c %u " .. q(dir)))
      local name2 = helpers.name("sec")
      local s2 = echo_server(name2, { mode = "0660" })
      finally(function() s2:close() end)
      assert.are.equal("660", stat_mode(s2:path()))
      assert.are.equal("hi", round_trip(name2, "hi"))
    end)

    it("creates a fresh per-user directory 0700 and the socket with opts.mode whatever the umask", function()
      local xdg = run_sync("mktemp -d /tmp/npipe-sec-xdg.XXXXXX")
      finally(function() os.execute("rm -rf " .. q(xdg)) end)
      -- umask 000 would make everything world-writable if npipe relied on it
      local out = run_sync(("umask 000; XDG_RUNTIME_DIR=%s %s %s x 2>&1"):format(q(xdg), helpers.lua, LISTEN))
      assert.matches("ok " .. xdg .. "/npipe/x", out, 1, true)
      assert.matches("dir_mode 700", out, 1, true)
      assert.matches("sock_mode 600", out, 1, true)
      out = run_sync(("umask 077; XDG_RUNTIME_DIR=%s %s %s y 0666 2>&1"):format(q(xdg), helpers.lua, LISTEN))
      assert.matches("sock_mode 666", out, 1, true)
      out = run_sync(("umask 000; %s %s %s 0640 2>&1"):format(helpers.lua, LISTEN, q(xdg .. "/z.sock")))
      assert.matches("sock_mode 640", out, 1, true)
    end)

    it("refuses a per-user directory that others could tamper with", function()
      local xdg = run_sync("mktemp -d /tmp/npipe-sec-xdg.XXXXXX")
      finally(function() os.execute("rm -rf " .. q(xdg)) end)
      local function try()
        return run_sync(("XDG_RUNTIME_DIR=%s %s %s x 2>&1"):format(q(xdg), helpers.lua, LISTEN))
      end
      run_sync(("mkdir -m 0777 %s/npipe"):format(q(xdg)))
      assert.matches("error EPERM .*writable by other users", try())
      run_sync(("chmod 0700 %s/npipe && chown nobody %s/npipe"):format(q(xdg), q(xdg)))
      assert.matches("error EPERM .*owned by another user", try())
      -- a symlink planted in its place is not followed
      run_sync(("rm -rf %s/npipe && mkdir -m 0700 %s/real && ln -s real %s/npipe"):format(q(xdg), q(xdg), q(xdg)))
      assert.matches("error ENOTDIR .*not a directory", try())
      assert.is_false(helpers.exists(xdg .. "/real/x"))
      -- and a proper one is used
      run_sync(("rm -f %s/npipe && mkdir -m 0700 %s/npipe"):format(q(xdg), q(xdg)))
      assert.matches("ok " .. xdg .. "/npipe/x", try(), 1, true)
    end)

    it("never deletes a file that is not a socket, nor a live server's socket", function()
      local dir = shared_dir()
      local path = dir .. "/not-a-socket"
      helpers.write_file(path, "precious")
      local s, err, code = npipe.listen(path, {}, function() end)
      assert.is_nil(s)
      assert.are.equal("EEXIST", code)
      assert.matches("exists and is not a socket", err, 1, true)
      assert.are.equal("precious", helpers.read_file(path))

      local live = dir .. "/live"
      local server = echo_server(live, {})
      finally(function() server:close() end)
      local s2, err2, code2 = npipe.listen(live, {}, function() end)
      assert.is_nil(s2)
      assert.are.equal("EADDRINUSE", code2)
      assert.matches("already in use by a live server", err2)
      assert.are.equal("still here", round_trip(live, "still here"))
    end)

    it("reclaims the socket a dead server left behind", function()
      local path = shared_dir() .. "/stale"
      local pid, out = spawn_server(path, "echo")
      finally(killer({ pid }))
      assert(wait_output(out, "ready"), output(out))
      helpers.kill(pid, "KILL")
      assert.is_true(helpers.wait_exit(pid, 5))
      assert.are.equal("socket", run_sync("stat -c %F " .. q(path)))
      local server = echo_server(path, {})
      finally(function() server:close() end)
      assert.are.equal("new owner", round_trip(path, "new owner"))
    end)
  end)

  describe("allow", function()
    it("uids: refuses a client of another user before any handler, serves root", function()
      local path = shared_dir() .. "/allow-uids"
      local server, rec = echo_server(path, { mode = "0666", allow = { uids = { 0 } } })
      finally(function() server:close() end)
      local pid, out = spawn_client(path, "echo", "from nobody", AS_NOBODY)
      finally(killer({ pid }))
      local text = wait_output(out, "done")
      assert(text, "the nobody client did not finish: " .. output(out))
      assert.matches("connected", text, 1, true) -- it reached the socket: the refusal is npipe's
      assert.matches("read_nil closed", text, 1, true)
      assert.is_nil(text:find("read from nobody", 1, true))
      assert.is_true(helpers.wait_until(function() return #rec.rejects > 0 end, 2))
      assert.are.equal(1, #rec.rejects)
      local r = rec.rejects[1]
      assert.are.equal(65534, r.peer.uid)
      assert.are.equal(65534, r.peer.gid)
      assert.are.equal(pid, r.peer.pid)
      assert.matches("uid 65534 not allowed", r.why, 1, true)
      assert.are.same({}, rec.connects) -- no connect handler ran for it
      assert.are.same({}, rec.data)
      assert.is_nil(next(rec.disconnects))
      assert.are.equal(1, server:stats().rejected)
      -- root is served
      assert.are.equal("from root", round_trip(path, "from root"))
      assert.are.equal(1, #rec.connects)
      assert.are.equal(0, rec.connects[1].uid)
      assert.are.equal(1, server:stats().rejected)
    end)

    it("gids: refuses a client whose group is not listed", function()
      local path = shared_dir() .. "/allow-gids"
      local server, rec = echo_server(path, { mode = "0666", allow = { gids = { 0 } } })
      finally(function() server:close() end)
      local pid, out = spawn_client(path, "echo", "x", AS_NOBODY)
      finally(killer({ pid }))
      local text = wait_output(out, "done")
      assert(text, output(out))
      assert.matches("read_nil closed", text, 1, true)
      assert.is_true(helpers.wait_until(function() return #rec.rejects > 0 end, 2))
      assert.matches("gid 65534 not allowed", rec.rejects[1].why, 1, true)
      assert.are.equal("root group", round_trip(path, "root group"))
    end)

    it_login("same_session: refuses a client of another login session, serves this login's even after setsid",
      function()
        local name = helpers.name("sess")
        local server, rec = echo_server(name, { allow = { same_session = true } })
        finally(function() server:close() end)
        local other_pid, other_out = spawn_client(name, "echo", "other login", helpers.login_prefix)
        local setsid_pid, setsid_out = spawn_client(name, "echo", "setsid", "setsid ")
        local same_pid, same_out = spawn_client(name, "echo", "same session")
        finally(killer({ other_pid, setsid_pid, same_pid }))
        local other = wait_output(other_out, "done")
        local setsid = wait_output(setsid_out, "done")
        local same = wait_output(same_out, "done")
        assert(other and setsid and same, output(other_out) .. output(setsid_out) .. output(same_out))
        local other_sid = tonumber(other:match("\nsid (%d+)"))
        -- the kernel gave the one client a login session of its own: the test means something
        assert.are_not.equal(npipe.session_id(), other_sid)
        assert.are.equal(npipe.session_id(), tonumber(same:match("\nsid (%d+)")))
        -- setsid left the login session as it was, and did change the POSIX session
        assert.are.equal(npipe.session_id(), tonumber(setsid:match("\nsid (%d+)")))
        assert.are_not.equal(npipe.posix_session_id(), tonumber(setsid:match("\npsid (%d+)")))
        assert.matches("read_nil closed", other, 1, true)
        assert.matches("read same session", same, 1, true)
        assert.matches("read setsid", setsid, 1, true)
        assert.is_true(helpers.wait_until(function() return #rec.rejects > 0 end, 2))
        assert.are.equal(1, #rec.rejects)
        -- the reject handler's peer carries both sessions
        assert.are.equal(other_sid, rec.rejects[1].peer.session_id)
        assert.are.equal(tonumber(other:match("\npsid (%d+)")), rec.rejects[1].peer.posix_session_id)
        assert.matches("another login session", rec.rejects[1].why, 1, true)
        table.sort(rec.data)
        assert.are.same({ "same session", "setsid" }, rec.data)
        assert.are.equal(1, server:stats().rejected)
      end)

    it("a function sees pid, uid, gid, session_id and posix_session_id, and its false (with why) refuses", function()
      local name = helpers.name("allowfn")
      local seen, refused_pid = {}, -2
      local server, rec = echo_server(name, {
        allow = function(peer)
          seen[#seen + 1] = peer
          if peer.pid == refused_pid then return false, "pid " .. peer.pid .. " is not welcome" end
          return true
        end,
      })
      finally(function() server:close() end)
      assert.are.equal("me", round_trip(name, "me"))
      assert.are.equal(1, #seen)
      assert.are.same({ pid = core.pid(), uid = 0, gid = 0, session_id = npipe.session_id(),
                        posix_session_id = npipe.posix_session_id() }, seen[1])
      local pid, out = spawn_client(name, "echo", "child")
      refused_pid = pid
      finally(killer({ pid }))
      local text = wait_output(out, "done")
      assert(text, output(out))
      assert.matches("read_nil closed", text, 1, true)
      assert.are.equal(2, #seen)
      assert.are.equal(pid, seen[2].pid) -- the connecting process itself
      assert.is_true(helpers.wait_until(function() return #rec.rejects > 0 end, 2))
      assert.are.equal("pid " .. pid .. " is not welcome", rec.rejects[1].why)
      assert.are.same({ "me" }, rec.data)
      assert.are.equal(1, #rec.connects)
    end)

    it("a function that raises refuses (fails closed)", function()
      local name = helpers.name("allowerr")
      local server, rec = echo_server(name, { allow = function() error("policy bug") end })
      finally(function() server:close() end)
      local c = assert(npipe.connect(name, { framing = "message" }))
      c:write("let me in") -- may fail if the refusal came first
      local m, err = c:read(2)
      assert.is_nil(m)
      assert.are.equal("closed", err)
      assert.is_true(helpers.wait_until(function() return #rec.rejects > 0 end, 2))
      assert.matches("allow function failed: .*policy bug", rec.rejects[1].why)
      assert.are.same({}, rec.connects)
      assert.are.same({}, rec.data)
      assert.are.equal(1, server:stats().rejected)
      assert.is_true(server:is_open())
    end)
  end)

  describe("expect (client side)", function()
    it("connects when the server is who it should be and fails closed otherwise", function()
      local name = helpers.name("expect")
      local server = echo_server(name, {})
      finally(function() server:close() end)
      local c = assert(npipe.connect(name, { framing = "message", expect = { uid = 0, gid = 0, pid = core.pid() } }))
      assert(c:write("trusted"))
      assert.are.equal("trusted", c:read(2))
      c:disconnect()
      local c2, err, code = npipe.connect(name, { expect = { uid = 12345 } })
      assert.is_nil(c2)
      assert.are.equal("EPERM", code)
      assert.matches("uid is 0, expected 12345", err, 1, true)
      local c3, err3, code3 = npipe.connect(name, { expect = { pid = core.pid() + 100000 } })
      assert.is_nil(c3)
      assert.are.equal("EPERM", code3)
      assert.matches("pid is " .. core.pid(), err3, 1, true)
      local c4, _, code4 = npipe.connect(name, { expect = { gid = 4242 } })
      assert.is_nil(c4)
      assert.are.equal("EPERM", code4)
    end)

    it("refuses a squatter: a server of another user on the expected path", function()
      local dir = shared_dir() .. "/squat"
      run_sync(("mkdir -m 0755 %s && chown nobody %s"):format(q(dir), q(dir)))
      local path = dir .. "/service"
      local pid, out = spawn_server(path, "echo", AS_NOBODY)
      finally(killer({ pid }))
      assert(wait_output(out, "ready"), output(out))
      local c, err, code = npipe.connect(path, { framing = "message", expect = { uid = 0 } })
      assert.is_nil(c)
      assert.are.equal("EPERM", code)
      assert.matches("uid is 65534, expected 0", err, 1, true)
      -- without expect the very same server answers: it was expect that refused it
      assert.are.equal("psst", round_trip(path, "psst"))
      assert.are.equal("ok", round_trip(path, "ok", { expect = { uid = 65534, pid = pid } }))
    end)
  end)

  describe("max_instances", function()
    it("serves two clients, refuses more as busy, and lets a waiting client in when one leaves", function()
      local name = helpers.name("maxinst")
      local max_active, connects = 0, 0
      local server, rec
      server, rec = echo_server(name, { max_instances = 2 }, {
        connect = function()
          connects = connects + 1
          max_active = math.max(max_active, server:stats().active)
        end,
      })
      finally(function() server:close() end)
      local c1 = assert(npipe.connect(name, { framing = "message" }))
      local c2 = assert(npipe.connect(name, { framing = "message" }))
      for i, c in ipairs({ c1, c2 }) do
        assert(c:write("served " .. i))
        assert.are.equal("served " .. i, c:read(2))
      end
      assert.are.equal(2, server:stats().active)
      -- more clients: at most one waits in the kernel's backlog, the rest are busy
      local extra, busy = {}, nil
      for _ = 1, 3 do
        local c, err, code = npipe.connect(name, { framing = "message" })
        if c then
          extra[#extra + 1] = c
        else
          busy = { err = err, code = code }
          break
        end
      end
      assert.is_true(#extra <= 1, #extra .. " more clients connected")
      assert.is_table(busy, "no client was refused")
      assert.are.equal("EAGAIN", busy.code)
      assert.matches("busy", busy.err, 1, true)
      npipe.sleep(0.1)
      assert.are.equal(2, connects) -- the one in the backlog was not accepted
      for _, c in ipairs(extra) do c:disconnect() end

      -- a client with a timeout waits (like WaitNamedPipe) and gets in when c1 leaves
      local got, connected_at, left_at
      npipe.spawn(function()
        local c, err = npipe.connect(name, { framing = "message", timeout = 2 })
        if not c then got = "connect failed: " .. tostring(err); return end
        connected_at = npipe.now()
        c:write("waited")
        got = c:read(2) or "no echo"
        c:disconnect()
      end)
      npipe.sleep(0.3)
      assert.is_nil(got) -- still waiting
      left_at = npipe.now()
      c1:disconnect()
      assert.is_truthy(helpers.wait_until(function() return got end, 3))
      assert.are.equal("waited", got)
      assert.is_true(connected_at >= left_at)
      assert.are.equal(2, max_active)
      assert.is_true(#rec.data >= 3)
      c2:disconnect()
    end)
  end)

  describe("idle_timeout", function()
    it("disconnects a silent client and keeps a talking one", function()
      local name = helpers.name("idle")
      local server, rec = echo_server(name, { idle_timeout = 0.3 })
      finally(function() server:close() end)
      local silent = assert(npipe.connect(name, { framing = "message" }))
      local talker = assert(npipe.connect(name, { framing = "message" }))
      local talk_ok, talk_err = true, nil
      local talking = true
      npipe.spawn(function()
        local deadline = npipe.now() + 1
        local i = 0
        while npipe.now() < deadline do
          i = i + 1
          local ok, err = talker:write("tick " .. i)
          local reply = ok and talker:read(1)
          if reply ~= "tick " .. i then
            talk_ok, talk_err = false, err or ("reply " .. tostring(reply))
            break
          end
          npipe.sleep(0.1)
        end
        talking = false
      end)
      local t0 = npipe.now()
      local m, err = silent:read(3)
      local waited = npipe.now() - t0
      assert.is_nil(m)
      assert.are.equal("closed", err)
      assert.is_true(waited < 2, "silent client closed after " .. waited .. " s")
      assert.is_true(waited >= 0.25, "silent client closed after only " .. waited .. " s")
      assert.is_true(helpers.wait_until(function() return not talking end, 3))
      assert.is_true(talk_ok, talk_err)
      assert.is_true(talker:is_open())
      assert.are.equal(1, #server:connections())
      local reasons = {}
      for _, r in pairs(rec.disconnects) do reasons[#reasons + 1] = r end
      assert.are.equal(1, #reasons)
      assert.are.equal("idle timeout", reasons[1].reason)
      assert.are.equal("ETIMEDOUT", reasons[1].code)
      talker:disconnect()
    end)
  end)

  describe("backpressure", function()
    -- A server child in server_mode, then a client child in client_mode for 10 s; the
    -- server's RSS (KiB) before the client came and 2 s after.
    local function under_pressure(tag, server_mode, client_mode)
      local name = helpers.name(tag)
      local spid, sout = spawn_server(name, server_mode)
      local pids = { spid }
      finally(killer(pids))
      assert(wait_output(sout, "ready"), output(sout))
      npipe.sleep(0.1)
      local before = rss_kb(spid)
      local cpid, cout = spawn_client(name, client_mode, "10")
      pids[2] = cpid
      assert(wait_output(cout, "connected"), output(cout))
      npipe.sleep(2)
      return name, spid, sout, cout, before, rss_kb(spid)
    end

    -- The largest N of the lines "WORD N" in text.
    local function largest(text, word)
      local m = 0
      for n in text:gmatch(word .. " (%d+)") do m = math.max(m, tonumber(n)) end
      return m
    end

    it("bounds a server's memory when a client never reads what it writes", function()
      local name, spid, sout, _, before, after = under_pressure("bp", "flood", "hold")
      local text = output(sout)
      local wrote = largest(text, "wrote")
      assert.is_true(wrote > 0, "the server wrote nothing: " .. text)
      assert.is_nil(text:find("flood_finished", 1, true), "the flood loop never waited")
      assert.is_true(wrote < 8 * 1024 * 1024, "the server queued " .. wrote .. " bytes")
      assert.is_true(after - before < 8 * 1024, ("server RSS grew from %d to %d KiB"):format(before, after))
      -- and the server still serves others promptly
      local c = assert(npipe.connect(name))
      local t0 = npipe.now()
      assert(c:write("hello"))
      local got = ""
      while #got < 5 do
        local chunk = c:read(1)
        if not chunk then break end
        got = got .. chunk
      end
      assert.are.equal("hello", got)
      assert.is_true(npipe.now() - t0 < 0.5)
      c:disconnect()
      assert.is_true(helpers.alive(spid))
    end)

    -- A slow handler holds back its own client (reading pauses while its calls queue),
    -- so a flood cannot grow the server's memory, and its messages are all handled.
    it("bounds a server's memory when a client floods a slow data handler", function()
      local name, _, sout, cout, before, after = under_pressure("bpslow", "slow", "spam")
      local received = largest(output(sout), "received")
      local sent = largest(output(cout), "wrote")
      -- the slow handler takes 10 ms a 16 KiB message: about 200 messages (3 MiB) in 2 s
      assert.is_true(received >= 1024 * 1024, "the server handled only " .. received .. " bytes")
      assert.is_true(received < 8 * 1024 * 1024, "the server received " .. received .. " bytes")
      assert.is_true(after - before < 8 * 1024, ("server RSS grew from %d to %d KiB"):format(before, after))
      -- the flooding client was held back, not the server flooded
      assert.is_true(sent < 32 * 1024 * 1024, "the client got " .. sent .. " bytes out")
      local c = assert(npipe.connect(name, { framing = "message" }))
      assert(c:write("PING"))
      assert.are.equal("PONG", c:read(1))
      c:disconnect()
    end)

    it("handles the messages that queued while a data handler waited", function()
      local name = helpers.name("queued")
      local server = echo_server(name, {}, {
        data = function(conn, msg)
          npipe.sleep(0.01)
          conn:write(msg)
        end,
      })
      finally(function() server:close() end)
      local c = assert(npipe.connect(name, { framing = "message" }))
      assert(c:write("a"))
      assert(c:write("b")) -- arrives while the handler of "a" sleeps
      assert.are.equal("a", c:read(1))
      assert.are.equal("b", c:read(1))
      c:disconnect()
    end)
  end)

  describe("close with drain", function()
    it("stops accepting at once, lets a busy handler finish, then disconnects the rest", function()
      local name = helpers.name("drain")
      local started = false
      local server, rec = echo_server(name, {}, {
        data = function(conn, msg)
          if msg == "slow" then
            started = true
            npipe.sleep(0.4)
            conn:write("finished")
          else
            conn:write(msg)
          end
        end,
      })
      finally(function() server:close() end)
      local busy = assert(npipe.connect(name, { framing = "message" }))
      local idle = assert(npipe.connect(name, { framing = "message" }))
      assert(idle:write("x"))
      assert.are.equal("x", idle:read(2))
      assert(busy:write("slow"))
      assert.is_true(helpers.wait_until(function() return started end, 2))
      local closed_after
      local t0 = npipe.now()
      npipe.spawn(function()
        server:close({ drain = 1 })
        closed_after = npipe.now() - t0
      end)
      -- at once: no new clients
      assert.is_false(helpers.exists(server:path()))
      local late, err, code = npipe.connect(name, { framing = "message" })
      assert.is_nil(late, "a client connected to a closing server")
      assert.is_string(err)
      assert.is_truthy(code == "ENOENT" or code == "ECONNREFUSED", code)
      -- the busy handler finishes and its reply arrives
      assert.are.equal("finished", busy:read(2))
      assert.is_nil(closed_after) -- still draining: idle is connected
      -- then the rest are disconnected
      local m, rerr = idle:read(2)
      assert.is_nil(m)
      assert.are.equal("closed", rerr)
      assert.is_truthy(helpers.wait_until(function() return closed_after end, 2))
      assert.is_true(closed_after >= 0.9 and closed_after < 1.6, "close took " .. closed_after .. " s")
      assert.is_true(helpers.wait_until(function()
        local n = 0
        for _ in pairs(rec.disconnects) do n = n + 1 end
        return n == 2
      end, 2))
      for _, r in pairs(rec.disconnects) do
        assert.are.equal("SERVER_CLOSED", r.code)
        assert.are.equal("server closed", r.reason)
      end
    end)

    it("returns early once every client has left", function()
      local name = helpers.name("drain2")
      local server = echo_server(name, {})
      finally(function() server:close() end)
      local c = assert(npipe.connect(name, { framing = "message" }))
      assert(c:write("x"))
      assert.are.equal("x", c:read(2))
      local closed_after
      local t0 = npipe.now()
      npipe.spawn(function()
        server:close({ drain = 5 })
        closed_after = npipe.now() - t0
      end)
      npipe.sleep(0.2)
      c:disconnect()
      assert.is_truthy(helpers.wait_until(function() return closed_after end, 2))
      assert.is_true(closed_after < 1, "close took " .. closed_after .. " s")
    end)
  end)

  describe("timeouts after the program blocked outside the loop", function()
    -- libuv's timers count from the loop's cached clock, which stops while the program
    -- blocks outside the loop (os.execute, io.popen, computing); npipe refreshes it.
    it("npipe.sleep and read timeouts last as long as asked (stale loop clock)", function()
      npipe.sleep(0.01)
      os.execute("sleep 1.5")
      local t = npipe.now()
      npipe.sleep(1)
      assert.is_true(npipe.now() - t >= 0.95, ("sleep(1) returned after %.3f s"):format(npipe.now() - t))
      local name = helpers.name("stale")
      local server = echo_server(name, {})
      finally(function() server:close() end)
      local c = assert(npipe.connect(name, { framing = "message" }))
      os.execute("sleep 1.5")
      t = npipe.now()
      local m, err = c:read(1)
      assert.is_nil(m)
      assert.are.equal("timeout", err)
      assert.is_true(npipe.now() - t >= 0.95, ("read(1) timed out after %.3f s"):format(npipe.now() - t))
      c:disconnect()
    end)
  end)
end)
