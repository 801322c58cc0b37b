-- Sessions on Linux #unix: session_id() is the login session (the audit session id that a
-- login gives, /proc/PID/sessionid; 0 outside any login, as Windows reports services in
-- session 0), and the POSIX session (getsid) has its own name, posix_session_id(). The
-- clients are real processes; one gets a login session of its own as a login would give
-- it (helpers.login_prefix: root writes /proc/self/loginuid), others run under setsid,
-- which changes the POSIX session only. same_session is in security_spec.lua.
local npipe = require("npipe")
local helpers = require("helpers")

local q = helpers.quote
-- it(), or where no child can get a login session of its own a pending spec that says
-- why (not a silent pass).
local function it_login(title, fn)
  if helpers.login_skip then return pending(title .. " (skipped: " .. helpers.login_skip .. ")") end
  return it(title, fn)
end
local ENV = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(package.path), q(package.cpath))
local CLIENT = "spec/fixtures/session_client.lua"

local function output(out) return helpers.read_file(out) or "" end

local function wait_output(out, pattern, seconds)
  helpers.wait_until(function() return output(out):match(pattern) end, seconds or 10)
  return output(out):match(pattern)
end

-- A server that records what each client's connection reports, by the pid it says hello
-- with (unless quiet: then it keeps only the connection, and asks it nothing).
local function session_server(name, quiet)
  local seen = {}
  local server = assert(npipe.listen(name, { framing = "lines" }, {
    data = function(conn, line)
      local pid = tonumber(line:match("^hello (%d+)$"))
      if pid and quiet then
        seen[pid] = { conn = conn }
      elseif pid then
        seen[pid] = { conn = conn, sid = helpers.pack(conn:session_id()),
                      psid = helpers.pack(conn:posix_session_id()) }
      end
    end,
  }))
  return server, seen
end

-- Starts session_client.lua (prefix: before the command, e.g. setsid); waits for its
-- report. Returns its pid and a table of what it printed.
local function start_client(name, prefix)
  local wrapper, out = helpers.spawn(("exec %s%s %s %s %s"):format(prefix or "", ENV, helpers.lua, CLIENT, q(name)))
  local pid = tonumber(wait_output(out, "pid (%d+)\n"))
  assert(pid, "the client did not start: " .. output(out))
  local own, ssid = wait_output(out, "ids own_sid=(%S+) server_sid=(%S+)")
  local own_psid, server_psid = wait_output(out, "posix own_psid=(%S+) server_psid=(%S+)\n")
  assert(own_psid, "the client did not report its sessions: " .. output(out))
  return pid, { own_sid = tonumber(own), server_sid = tonumber(ssid), own_psid = tonumber(own_psid),
                server_psid = tonumber(server_psid), out = out, wrapper = wrapper }
end

local function finish(seen, pid, rep)
  if seen[pid] then seen[pid].conn:write("exit") end
  helpers.wait_exit(pid, 5)
  helpers.kill(rep.wrapper, "KILL")
end

describe("sessions #unix", function()
  local server
  after_each(function()
    if server and server:is_open() then server:close() end
    server = nil
  end)

  it("session_id() is /proc/self/sessionid (0 when unset) and posix_session_id() is getsid", function()
    assert.are.equal(helpers.login_session_of("self"), npipe.session_id())
    assert.are.equal(helpers.login_session_of("self"), npipe.Server.session_id())
    assert.are.equal(helpers.posix_session_of("self"), npipe.posix_session_id())
    assert.are.equal(helpers.posix_session_of("self"), npipe.Server.posix_session_id())
    -- outside any login the kernel says 4294967295: npipe says 0, like a Windows service
    local raw = (helpers.read_file("/proc/self/sessionid") or ""):match("%d+")
    if raw == "4294967295" or raw == nil then assert.are.equal(0, npipe.session_id()) end
  end)

  it_login("a client given a login session of its own reports it, and the server sees it", function()
    local code = "print(require('npipe').session_id()); print(io.open('/proc/self/sessionid'):read('*a'))"
    local got = helpers.capture(("%s%s %s -e %s"):format(helpers.login_prefix, ENV, helpers.lua, q(code)))
    local npipe_sid, raw = got:match("^(%d+)\n(%d+)$")
    assert.is_truthy(npipe_sid, got)
    assert.are.equal(raw, npipe_sid)
    assert.are_not.equal("0", npipe_sid)
    assert.are_not.equal(tostring(npipe.session_id()), npipe_sid)
  end)

  it_login("puts a client with a login session of its own in another session than the server and a plain client",
    function()
      local name = helpers.name("login")
      local seen
      server, seen = session_server(name)
      local lpid, lrep = start_client(name, helpers.login_prefix)
      local ppid, prep = start_client(name)
      finally(function()
        finish(seen, lpid, lrep)
        finish(seen, ppid, prep)
      end)
      assert(helpers.wait_until(function() return seen[lpid] and seen[ppid] end), "no hello from the clients")
      local own = npipe.session_id()
      local login = helpers.login_session_of(lpid)
      -- the kernel gave the one client a session of its own (else nothing below would mean much)
      assert.are_not.equal(0, login)
      assert.are_not.equal(own, login)
      -- the server's end: GetNamedPipeClientSessionId
      assert.are.equal(login, seen[lpid].sid[1])
      assert.are.equal(own, seen[ppid].sid[1])
      assert.are_not.equal(seen[ppid].sid[1], seen[lpid].sid[1])
      -- the clients' ends: their own session, and the server's (GetNamedPipeServerSessionId)
      assert.are.equal(login, lrep.own_sid)
      assert.are.equal(own, prep.own_sid)
      assert.are.equal(own, lrep.server_sid)
      assert.are.equal(own, prep.server_sid)
      -- the POSIX session is another thing: the login did not change it
      assert.are.equal(helpers.posix_session_of(lpid), seen[lpid].psid[1])
      assert.are.equal(npipe.posix_session_id(), lrep.server_psid)
    end)

  it("setsid gives a client another POSIX session but leaves its login session", function()
    local name = helpers.name("setsid")
    local seen
    server, seen = session_server(name)
    local pid, rep = start_client(name, "setsid ")
    finally(function() finish(seen, pid, rep) end)
    assert(helpers.wait_until(function() return seen[pid] end), "no hello from the client")
    -- setsid worked: the client leads a POSIX session of its own
    assert.are.equal(pid, helpers.posix_session_of(pid))
    assert.are.equal(pid, seen[pid].psid[1])
    assert.are.equal(pid, rep.own_psid)
    assert.are_not.equal(npipe.posix_session_id(), seen[pid].psid[1])
    -- and is still in this login session, on both ends
    assert.are.equal(npipe.session_id(), seen[pid].sid[1])
    assert.are.equal(npipe.session_id(), rep.own_sid)
    assert.are.equal(npipe.session_id(), rep.server_sid)
  end)

  it_login("setsid leaves a client's own login session as it was", function()
    local name = helpers.name("login-setsid")
    local seen
    server, seen = session_server(name)
    local pid, rep = start_client(name, helpers.login_prefix .. "setsid ")
    finally(function() finish(seen, pid, rep) end)
    assert(helpers.wait_until(function() return seen[pid] end), "no hello from the client")
    local login = helpers.login_session_of(pid)
    assert.are_not.equal(0, login)
    assert.are.equal(pid, seen[pid].psid[1]) -- a POSIX session of its own
    assert.are.equal(login, seen[pid].sid[1]) -- in the login session it was given before
    assert.are.equal(login, rep.own_sid)
  end)

  it_login("keeps both sessions as taken at accept readable after the client has gone", function()
    local name = helpers.name("login-gone")
    local seen
    server, seen = session_server(name, true)
    local pid, rep = start_client(name, helpers.login_prefix .. "setsid ")
    assert(helpers.wait_until(function() return seen[pid] end), "no hello from the client")
    local conn = seen[pid].conn
    -- nothing has asked the connection for the session yet: the values are the accept's
    conn:write("exit")
    assert(helpers.wait_exit(pid, 5), "the client did not exit")
    assert(helpers.wait_until(function() return conn:closed_reason() end), "the connection did not close")
    npipe.sleep(0.05) -- a few more turns of the loop: the closed connection's handle is gone
    helpers.kill(rep.wrapper, "KILL")
    assert.are_not.equal(0, rep.own_sid)
    assert.are.equal(rep.own_sid, conn:session_id())
    assert.are.equal(pid, conn:posix_session_id())
    assert.are.equal(pid, conn:process_id())
  end)
end)
