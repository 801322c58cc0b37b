-- The behaviour that must hold on Linux and on Windows alike. This file also runs as a
-- Windows program under Wine (scripts/wine.sh), so it needs no shell: one child process
-- started with io.popen at most, and of spec/helpers.lua only what runs no shell command.
-- Where the platforms legitimately differ, the test branches on WINDOWS and says why.
local npipe = require("npipe")
local core = require("npipe.core")
local helpers = require("helpers")

local WINDOWS = helpers.windows

local name, wait_until, run = helpers.name, helpers.wait_until, helpers.run

local function listen(pipe, opts, handlers)
  return helpers.track_server(assert(npipe.listen(pipe, opts, handlers)))
end

-- Reads bytes-framed chunks until n bytes came (chunk boundaries are arbitrary).
local function read_bytes(c, n)
  local got = ""
  for _ = 1, n do -- at least one byte per chunk, so n reads are always enough
    if #got >= n then break end
    got = got .. assert(c:read(2))
  end
  return got
end

local function assert_closed(c)
  local m, err, code = c:read(2)
  assert.is_nil(m)
  assert.are.equal("closed", err)
  assert.is_string(code)
  assert.is_false(c:is_open())
  return code
end

local function echo_server(framing, opts, handlers)
  local pipe = name(framing)
  opts = opts or {}
  opts.framing = framing
  handlers = handlers or {}
  handlers.data = handlers.data or function(conn, msg) assert(conn:write(msg)) end
  return listen(pipe, opts, handlers), pipe
end

describe("portable", function()
  after_each(function()
    helpers.close_tracked_servers()
  end)

  describe("echo", function()
    it("echoes in message framing, including empty and 64 KiB messages", function()
      local _, pipe = echo_server("message")
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      -- Windows: a message-type pipe, read through libuv 1.44, whose zero-byte read
      -- (its wait for input) may take an empty message: npipe cannot promise to read one
      -- there (docs/API.md, message framing).
      local msgs = { "one", "", ("x"):rep(65536), "two\nlines" }
      if WINDOWS then table.remove(msgs, 2) end
      for _, msg in ipairs(msgs) do
        assert(c:write(msg))
        assert.are.equal(msg, c:read(5))
      end
      c:disconnect()
    end)

    it("echoes in lines framing, one line per frame", function()
      local _, pipe = echo_server("lines")
      local c = assert(npipe.connect(pipe, { framing = "lines" }))
      assert(c:write("first"))
      assert.are.equal("first", c:read(2))
      -- a written "\n" splits the frame: the server sees (and echoes) two lines
      assert(c:write("a\nb"))
      assert.are.equal("a", c:read(2))
      assert.are.equal("b", c:read(2))
      c:disconnect()
    end)

    it("echoes raw bytes in bytes framing", function()
      local _, pipe = echo_server("bytes")
      local c = assert(npipe.connect(pipe))
      local msg = ("0123456789"):rep(1000)
      assert(c:write(msg))
      assert.are.equal(msg, read_bytes(c, #msg))
      c:disconnect()
    end)

    it("sees a line-framed server from a bytes client as text with newlines", function()
      local _, pipe = echo_server("lines")
      local raw = assert(npipe.connect(pipe))
      assert(raw:write("x\r\ny\n"))
      assert.are.equal("x\ny\n", read_bytes(raw, 4))
      raw:disconnect()
    end)

    it("serves several clients at once, each getting its own replies", function()
      local server, pipe = echo_server("message")
      local clients = {}
      for i = 1, 5 do clients[i] = assert(npipe.connect(pipe, { framing = "message" })) end
      for i, c in ipairs(clients) do assert(c:write("from " .. i)) end
      for i = 5, 1, -1 do assert.are.equal("from " .. i, clients[i]:read(2)) end
      assert.are.equal(5, server:stats().active)
      assert.are.equal(5, #server:connections())
      for _, c in ipairs(clients) do c:disconnect() end
      assert.is_truthy(wait_until(function() return server:stats().active == 0 end))
    end)
  end)

  describe("request and transact", function()
    it("answers request handlers through transact and npipe.call", function()
      local pipe = name("req")
      listen(pipe, { framing = "message" }, {
        request = function(_, msg) return "re:" .. msg end,
      })
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      for i = 1, 10 do assert.are.equal("re:" .. i, c:transact(tostring(i), 2)) end
      c:disconnect()
      assert.are.equal("re:call", npipe.call(pipe, "call", { timeout = 2 }))
    end)

    it("matches replies to concurrent transacts in order", function()
      local pipe = name("req")
      listen(pipe, { framing = "lines" }, { request = function(_, msg) return msg:upper() end })
      local c = assert(npipe.connect(pipe, { framing = "lines" }))
      local replies, finished = {}, 0
      for i = 1, 3 do
        npipe.spawn(function()
          replies[i] = c:transact("word" .. i, 2)
          finished = finished + 1
        end)
      end
      assert.is_truthy(wait_until(function() return finished == 3 end))
      assert.are.same({ "WORD1", "WORD2", "WORD3" }, replies)
      c:disconnect()
    end)

    it("times out a transact that gets no reply, and disconnects", function()
      local pipe = name("req")
      listen(pipe, { framing = "message" }, { data = function() end })
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      local t0 = npipe.now()
      local reply, err, code = c:transact("nobody answers", 0.2)
      assert.is_nil(reply)
      assert.are.equal("timeout", err)
      assert.are.equal("ETIMEDOUT", code)
      assert.is_true(npipe.now() - t0 >= 0.15)
      assert.are.equal("transact timed out", (c:closed_reason()))
    end)
  end)

  describe("identity", function()
    it("reports this process's pid and session on both ends", function()
      local pipe = name("id")
      local seen
      local accepted = {} -- the server's ends, in order
      local server = listen(pipe, { framing = "message" }, {
        connect = function(conn)
          accepted[#accepted + 1] = conn
          if seen then return end -- the second client is not asked anything while connected
          seen = {
            pid = conn:process_id(), sid = conn:session_id(), server_sid = conn:server_session_id(),
            server_pid = conn:server_process_id(), cred = conn:credentials(),
          }
        end,
      })
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      assert.is_truthy(wait_until(function() return seen end))
      local pid, sid = core.pid(), npipe.session_id()
      assert.is_number(pid)
      assert.is_number(sid)
      assert.is_true(pid > 0)
      -- client and server are this one process
      assert.are.equal(pid, seen.pid)
      assert.are.equal(pid, seen.server_pid)
      assert.are.equal(pid, seen.cred.pid)
      assert.are.equal(sid, seen.sid)
      assert.are.equal(sid, seen.server_sid)
      assert.are.equal(sid, server:session_id())
      assert.are.equal(pid, c:process_id())
      assert.are.equal(pid, c:server_process_id())
      assert.are.equal(sid, c:session_id())
      assert.are.equal(sid, c:server_session_id())
      assert.are.equal(pid, c:server_credentials().pid)
      if WINDOWS then
        -- Windows identities are SIDs, not numbers: the platform layer reports -1
        assert.are.equal(-1, seen.cred.uid)
        assert.are.equal(-1, seen.cred.gid)
      else
        -- SO_PEERCRED gives real numbers; the peer is this process, so they are ours
        assert.is_true(seen.cred.uid >= 0)
        assert.is_true(seen.cred.gid >= 0)
        assert.are.equal(seen.cred.uid, c:server_credentials().uid)
      end
      -- a second client, whose identity nobody asks for before it has gone
      local c2 = assert(npipe.connect(pipe, { framing = "message" }))
      assert.is_truthy(wait_until(function() return #accepted == 2 end))
      c:disconnect()
      c2:disconnect()
      -- taken at connect time: still readable after the connection closed, on both ends
      assert.is_truthy(wait_until(function() return #server:connections() == 0 end))
      npipe.sleep(0.05) -- a few more turns of the loop: the closed connections' handles are gone
      assert.are.equal(pid, c:server_process_id())
      assert.are.equal(sid, c:server_session_id())
      for i, sc in ipairs(accepted) do
        assert.is_false(sc:is_open())
        assert.are.equal(pid, sc:process_id(), "server end " .. i)
        assert.are.equal(pid, (assert(sc:credentials()).pid), "server end " .. i)
        assert.are.equal(sid, sc:session_id(), "server end " .. i)
        assert.are.equal(sid, sc:server_session_id(), "server end " .. i)
      end
    end)

    -- Windows: the user's SID, from the client's token (server side) and the server
    -- process's token (client side). Unix has none: sid is nil there, and a check on it
    -- fails closed.
    local function sid_of_server(pipe)
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      local sid = c:server_credentials().sid
      c:disconnect()
      return sid
    end

    it("carries the peer's user SID on Windows (nil on Unix) and allow.sids admits only those listed", function()
      local open_pipe, only_system = name("sid-any"), name("sid-sys")
      local seen, refused = nil, {}
      listen(open_pipe, { framing = "message" }, {
        connect = function(conn) seen = { sid = conn:credentials().sid } end,
      })
      local sid = sid_of_server(open_pipe)
      assert.is_truthy(wait_until(function() return seen end))
      if WINDOWS then
        assert.matches("^S%-1%-%d+%-", sid)
        assert.are.equal(sid, seen.sid) -- one user on both ends: this process
      else
        assert.is_nil(sid)
        assert.is_nil(seen.sid)
      end
      local function serve(pipe, sids)
        listen(pipe, { framing = "message", allow = { sids = sids } }, {
          request = function(_, msg) return "re:" .. msg end,
          reject = function(peer, why) refused[#refused + 1] = { peer = peer, why = why } end,
        })
      end
      serve(only_system, { "S-1-5-18" }) -- LocalSystem: not the user these tests run as
      local c = assert(npipe.connect(only_system, { framing = "message" }))
      assert_closed(c)
      assert.is_truthy(wait_until(function() return #refused == 1 end))
      assert.are.equal(sid, refused[1].peer.sid)
      assert.are.equal(("user SID %s not allowed"):format(sid or "unknown"), refused[1].why)
      if WINDOWS then
        local mine = name("sid-mine")
        serve(mine, { "S-1-5-18", sid })
        local ok = assert(npipe.connect(mine, { framing = "message" }))
        assert.are.equal("re:hi", ok:transact("hi", 2))
        ok:disconnect()
        assert.are.equal(1, #refused)
      end
    end)

    it("connect{expect} checks the server's pid and user SID", function()
      local pipe = name("sid-expect")
      listen(pipe, { framing = "message" }, { request = function(_, msg) return msg end })
      local sid = sid_of_server(pipe)
      if WINDOWS then
        local c = assert(npipe.connect(pipe, { framing = "message", expect = { pid = core.pid(), sid = sid } }))
        assert.are.equal("x", c:transact("x", 2))
        c:disconnect()
      end
      local c2, err, code = npipe.connect(pipe, { framing = "message", expect = { sid = "S-1-5-18" } })
      assert.is_nil(c2)
      assert.are.equal("EPERM", code)
      assert.matches(("the server's sid is %s, expected S-1-5-18"):format(sid or "unknown"), err, 1, true)
      local c3, err3, code3 = npipe.connect(pipe, { expect = { pid = core.pid() + 100000 } })
      assert.is_nil(c3)
      assert.are.equal("EPERM", code3)
      assert.matches("the server's pid is " .. core.pid(), err3, 1, true)
    end)

    it("listen{security} takes an SDDL descriptor on Windows (ignored on Unix) and refuses a bad one", function()
      local pipe = name("sddl")
      -- a service that admits every local user: Everyone may open the pipe
      listen(pipe, { framing = "message", security = "D:P(A;;GA;;;WD)(A;;GA;;;SY)" }, {
        request = function(_, msg) return "re:" .. msg end,
      })
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      assert.are.equal("re:1", c:transact("1", 2))
      c:disconnect()
      local s, err, code = npipe.listen(name("sddl-bad"), { security = "not a descriptor" }, function() end)
      if WINDOWS then
        assert.is_nil(s)
        assert.are.equal("EINVAL", code)
        assert.matches("invalid security descriptor (SDDL) 'not a descriptor'", err, 1, true)
      else
        assert.is_truthy(s) -- mode governs access on Unix
        s:close()
      end
      assert.has_error(function() npipe.listen(name("sddl-type"), { security = 5 }, function() end) end)
    end)

    it("reports the other process's pid and session on each end", function()
      local pipe = name("peer")
      local seen, gone
      listen(pipe, { framing = "lines" }, {
        data = function(conn, line)
          seen = { said = tonumber(line:match("^hello (%d+)$")), pid = conn:process_id(), sid = conn:session_id() }
          conn:write("exit")
        end,
        disconnect = function() gone = true end,
      })
      -- On Linux the child gets a login session of its own (helpers.login_prefix, where this
      -- process may give it one), so that a server that reported its own session instead of
      -- the client's would fail here. Under Wine every process is in Terminal Services session 1.
      local prefix = ""
      if not WINDOWS and not helpers.login_skip then prefix = helpers.login_prefix end
      -- a shell on Linux, cmd.exe under Windows: one command line either way
      local child = assert(io.popen(("%s%s spec/fixtures/session_client.lua %s"):format(prefix, helpers.lua, pipe)))
      local ended = wait_until(function() return gone end, 20)
      local out = child:read("*a")
      child:close()
      assert.is_truthy(ended, "the client process did not come and go: " .. out)
      local child_pid = tonumber(out:match("pid (%d+)"))
      local own_sid, server_sid, server_pid = out:match("ids own_sid=(%S+) server_sid=(%S+) server_pid=(%S+)")
      assert.is_number(child_pid, out)
      assert.are_not.equal(core.pid(), child_pid)
      -- GetNamedPipeClientProcessId / SO_PEERCRED name the process that connected
      assert.are.equal(child_pid, seen.said)
      assert.are.equal(child_pid, seen.pid)
      -- and the client's side names this process as the server
      assert.are.equal(tostring(core.pid()), server_pid)
      -- GetNamedPipeClientSessionId names the client's session, GetNamedPipeServerSessionId this one's
      assert.are.equal(tostring(npipe.session_id()), server_sid)
      assert.are.equal(tonumber(own_sid), seen.sid)
      if prefix ~= "" then
        -- the child's login session is its own: the check above means something
        assert.are_not.equal(tostring(npipe.session_id()), own_sid)
      else
        assert.are.equal(tostring(npipe.session_id()), own_sid) -- one session for both
      end
      assert.matches("got exit", out, 1, true)
    end)

    it("resolves names to the platform's kind of pipe", function()
      local path = assert(npipe.path("some-name"))
      if WINDOWS then
        -- a real named pipe in the \\.\pipe\ namespace, no directory involved
        assert.are.equal("\\\\.\\pipe\\some-name", path)
      else
        -- a socket file in the per-user directory
        assert.are.equal(npipe.dir() .. "/some-name", path)
      end
      -- the Windows prefix names the same pipe on both
      assert.are.equal(path, npipe.path("\\\\.\\pipe\\some-name"))
    end)
  end)

  describe("flush and disconnect", function()
    it("returns true from flush once the client has read what was written", function()
      local pipe = name("flush")
      local big = ("b"):rep(200000)
      local flushed, flush_err
      listen(pipe, { framing = "message" }, {
        connect = function(conn)
          assert(conn:write(("a"):rep(100)))
          assert(conn:write(big))
          flushed, flush_err = conn:flush(5)
        end,
      })
      -- A client stops taking bytes off the pipe while its unread frames reach
      -- high_water: the first frame alone does, so the second stays in the pipe.
      local c = assert(npipe.connect(pipe, { framing = "message", high_water = 64 }))
      -- SIOCOUTQ still counts the unread bytes (Linux), FlushFileBuffers still blocks
      -- (Windows): the flush must still be waiting.
      npipe.sleep(0.1)
      assert.is_nil(flushed)
      assert.are.equal(100, #c:read(5))
      assert.is_truthy(wait_until(function() return flushed ~= nil end))
      assert.is_true(flushed, flush_err)
      assert.are.equal(big, c:read(5))
      c:disconnect()
    end)

    it("lets the client see a server-side disconnect as closed", function()
      local pipe = name("disc")
      local reasons = {}
      listen(pipe, { framing = "lines" }, {
        data = function(conn, msg)
          if msg == "bye" then conn:disconnect("told to go") else conn:write(msg) end
        end,
        disconnect = function(_, reason, code) reasons[#reasons + 1] = { reason, code } end,
      })
      local c = assert(npipe.connect(pipe, { framing = "lines" }))
      assert(c:write("still here"))
      assert.are.equal("still here", c:read(2))
      assert(c:write("bye"))
      local code = assert_closed(c)
      assert.are.equal("EOF", code)
      assert.are.same({ { "told to go", "DISCONNECTED" } }, reasons)
      -- writing to a closed connection fails without raising
      local ok, err, wcode = c:write("too late")
      assert.is_nil(ok)
      assert.matches("closed", err)
      assert.are.equal("EPIPE", wcode)
    end)

    it("drops what the client has not read on Windows (DisconnectNamedPipe), not on Linux", function()
      local pipe = name("drop")
      listen(pipe, { framing = "lines" }, {
        data = function(conn)
          assert(conn:write("last words"))
          conn:disconnect()
        end,
      })
      local c = assert(npipe.connect(pipe, { framing = "lines" }))
      assert(c:write("go"))
      local first = c:read(2)
      if WINDOWS then
        -- the bytes were still in the pipe when the server disconnected it
        assert.is_nil(first)
      else
        -- a Unix socket cannot recall bytes already sent
        assert.are.equal("last words", first)
        assert.is_nil(c:read(2))
      end
      assert.are.equal("EOF", select(2, c:closed_reason()))
    end)

    it("tells the server when the client disconnects", function()
      local pipe = name("disc")
      local got
      listen(pipe, { framing = "message" }, {
        disconnect = function(_, reason, code) got = { reason, code } end,
      })
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      npipe.sleep(0.05)
      c:disconnect()
      assert.are.same({ "disconnected by the client", "DISCONNECTED" }, { c:closed_reason() })
      assert.is_truthy(wait_until(function() return got end))
      assert.are.same({ "the peer closed the pipe", "EOF" }, got)
    end)

    it("ends every connection with SERVER_CLOSED on server:close()", function()
      local server, pipe = echo_server("message")
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      assert(c:write("ping"))
      assert.are.equal("ping", c:read(2))
      assert.is_true(server:close())
      assert.is_false(server:is_open())
      assert_closed(c)
      local again, err, code = npipe.connect(pipe, { framing = "message" })
      assert.is_nil(again)
      assert.is_string(err)
      assert.are.equal("ENOENT", code)
    end)
  end)

  describe("max_instances", function()
    it("serves one client and does not serve a second while the first is connected", function()
      local connects = 0
      local server, pipe = echo_server("message", { max_instances = 1 }, {
        connect = function() connects = connects + 1 end,
        -- on Linux the waiting client is accepted once the first leaves, after it
        -- has gone itself: its echo may fail, and that is no error here
        data = function(conn, msg) conn:write(msg) end,
      })
      local c1 = assert(npipe.connect(pipe, { framing = "message" }))
      assert(c1:write("first"))
      assert.are.equal("first", c1:read(2))
      local c2, err, code = npipe.connect(pipe, { framing = "message" })
      if c2 then
        -- Linux: c2 waits in the kernel's backlog (connect succeeds, nobody serves it).
        -- Windows: the engine cannot refuse with ERROR_PIPE_BUSY yet, so it accepts and
        -- closes at once. Either way no echo comes back.
        c2:write("second")
        local reply, rerr = c2:read(0.3)
        assert.is_nil(reply)
        if WINDOWS then
          assert.are.equal("closed", rerr)
          assert.is_true(server:stats().rejected >= 1)
        else
          assert.are.equal("timeout", rerr)
        end
        c2:disconnect()
      else
        assert.are.equal("EAGAIN", code)
        assert.matches("busy", err)
      end
      assert.are.equal(1, connects)
      assert.are.equal(1, server:stats().active)
      -- the first client is still served
      assert(c1:write("again"))
      assert.are.equal("again", c1:read(2))
      c1:disconnect()
      -- its slot is free again for a newcomer
      local c3 = assert(npipe.connect(pipe, { framing = "message", timeout = 2 }))
      assert(c3:write("third"))
      assert.are.equal("third", c3:read(2))
      c3:disconnect()
    end)
  end)

  describe("errors", function()
    it("returns nil, message, code when no server has the name", function()
      local pipe = name("missing")
      local c, err, code = npipe.connect(pipe)
      assert.is_nil(c)
      assert.is_string(err)
      assert.matches(pipe, err, 1, true)
      assert.are.equal("ENOENT", code)
      local reply, cerr, ccode = npipe.call(pipe, "hello")
      assert.is_nil(reply)
      assert.is_string(cerr)
      assert.are.equal("ENOENT", ccode)
    end)

    it("lets a connect with a timeout (WaitNamedPipe) wait for a server that comes later", function()
      local pipe = name("later")
      local c, err
      npipe.spawn(function() c, err = npipe.connect(pipe, { framing = "lines", timeout = 5 }) end)
      npipe.sleep(0.3) -- the connect is retrying meanwhile: no such pipe yet
      assert.is_nil(c)
      assert.is_nil(err)
      listen(pipe, { framing = "lines" }, { data = function(conn, line) conn:write("late " .. line) end })
      assert.is_truthy(wait_until(function() return c or err end))
      assert.is_truthy(c, err)
      assert(c:write("hi"))
      assert.are.equal("late hi", c:read(2))
      c:disconnect()
    end)

    it("times out a connect that waits for a server that never comes", function()
      local t0 = npipe.now()
      local c, err, code = npipe.connect(name("never"), { timeout = 0.2 })
      assert.is_nil(c)
      assert.matches("no server answered", err)
      assert.are.equal("ETIMEDOUT", code)
      assert.is_true(npipe.now() - t0 >= 0.15)
    end)

    it("raises for wrong argument types and bad options", function()
      local function handlers() return { data = function() end } end
      assert.has_error(function() npipe.listen(42, handlers()) end)
      assert.has_error(function() npipe.listen(name("bad"), { framing = "bogus" }, handlers()) end)
      assert.has_error(function() npipe.listen(name("bad"), { no_such_option = 1 }, handlers()) end)
      assert.has_error(function() npipe.listen(name("bad"), { max_message = 0 }, handlers()) end)
      assert.has_error(function() npipe.listen(name("bad"), { framing = "lines" }) end)
      assert.has_error(function() npipe.connect({}) end)
      assert.has_error(function() npipe.connect("x", { timeout = -1 }) end)
      assert.has_error(function() npipe.call("x", 42) end)
      assert.has_error(function() npipe.sleep("soon") end)
      assert.has_error(function() npipe.run("sometimes") end)
      local _, pipe = echo_server("message")
      local c = assert(npipe.connect(pipe, { framing = "message" }))
      assert.has_error(function() c:write({}) end)
      assert.has_error(function() c:read(-1) end)
      -- the connection is unharmed by the calls that raised
      assert(c:write(7))
      assert.are.equal("7", c:read(2))
      c:disconnect()
    end)

    it("keeps serving other clients after a handler raises", function()
      local pipe = name("raise")
      local errors, reasons = {}, {}
      listen(pipe, { framing = "message" }, {
        request = function(_, msg)
          if msg == "boom" then error("handler blew up") end
          return "ok:" .. msg
        end,
        error = function(_, err) errors[#errors + 1] = err end,
        disconnect = function(_, reason, code) reasons[#reasons + 1] = { reason = reason, code = code } end,
      })
      local good = assert(npipe.connect(pipe, { framing = "message" }))
      local bad = assert(npipe.connect(pipe, { framing = "message" }))
      assert.are.equal("ok:1", good:transact("1", 2))
      assert(bad:write("boom"))
      assert_closed(bad)
      assert.is_truthy(wait_until(function() return #errors == 1 and #reasons == 1 end))
      assert.matches("handler blew up", errors[1])
      assert.are.equal("EHANDLER", reasons[1].code)
      assert.matches("^handler error: .*handler blew up", reasons[1].reason)
      for i = 2, 4 do assert.are.equal("ok:" .. i, good:transact(tostring(i), 2)) end
      local late = assert(npipe.connect(pipe, { framing = "message" }))
      assert.are.equal("ok:late", late:transact("late", 2))
      good:disconnect()
      late:disconnect()
    end)

    it("refuses an oversized message with EMSGSIZE and keeps serving others", function()
      local pipe = name("big")
      local reasons = {}
      listen(pipe, { framing = "message", max_message = 16 }, {
        request = function(_, msg) return "ok:" .. msg end,
        disconnect = function(_, reason, code) reasons[#reasons + 1] = { reason = reason, code = code } end,
      })
      local good = assert(npipe.connect(pipe, { framing = "message" }))
      local big = assert(npipe.connect(pipe, { framing = "message" }))
      assert.are.equal("ok:small", good:transact("small", 2))
      assert(big:write(("z"):rep(17)))
      assert_closed(big)
      assert.is_truthy(wait_until(function() return #reasons == 1 end))
      assert.are.equal("EMSGSIZE", reasons[1].code)
      assert.matches("message too large: 17 bytes, the limit is 16", reasons[1].reason, 1, true)
      assert.are.equal("ok:" .. ("s"):rep(16), good:transact(("s"):rep(16), 2))
      good:disconnect()
    end)

    it("refuses an oversized line with EMSGSIZE before its newline arrives", function()
      local pipe = name("longline")
      local got
      listen(pipe, { framing = "lines", max_message = 8 }, {
        disconnect = function(_, reason, code) got = { reason = reason, code = code } end,
      })
      local raw = assert(npipe.connect(pipe))
      assert(raw:write("123456789"))
      assert.is_truthy(wait_until(function() return got end))
      assert.are.equal("EMSGSIZE", got.code)
      assert.matches("line too large", got.reason, 1, true)
      assert_closed(raw)
    end)
  end)

  describe("handlers that wait", function()
    it("lets one connection's slow handler leave the others served", function()
      local pipe = name("slow")
      listen(pipe, { framing = "message" }, {
        request = function(_, msg)
          if msg == "slow" then npipe.sleep(0.5) end
          return msg
        end,
      })
      local slow = assert(npipe.connect(pipe, { framing = "message" }))
      local fast = assert(npipe.connect(pipe, { framing = "message" }))
      local slow_reply
      npipe.spawn(function() slow_reply = slow:transact("slow", 5) end)
      local t0 = npipe.now()
      assert.are.equal("fast", fast:transact("fast", 2))
      assert.is_true(npipe.now() - t0 < 0.4, "the fast client waited for the slow one")
      assert.is_nil(slow_reply)
      assert.are.equal("slow", wait_until(function() return slow_reply end))
      slow:disconnect()
      fast:disconnect()
    end)

    it("runs a per-connection function handler in its own coroutine", function()
      local pipe = name("fn")
      listen(pipe, { framing = "lines" }, function(conn)
        local total = 0
        for _ = 1, 100 do -- bounded: the client sends a few numbers, then "end"
          local line = conn:read(2)
          if line == nil or line == "end" then break end
          total = total + tonumber(line)
        end
        conn:write("sum " .. total)
      end)
      run(function()
        local c = assert(npipe.connect(pipe, { framing = "lines" }))
        for i = 1, 10 do assert(c:write(i)) end
        assert(c:write("end"))
        assert.are.equal("sum 55", c:read(2))
        -- the handler returned: the server flushed and disconnected
        local m, err = c:read(2)
        assert.is_nil(m)
        assert.are.equal("closed", err)
      end)
    end)
  end)
end)
