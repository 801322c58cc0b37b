-- Runs every example under examples/ as a real child process, so none of them rots.
local npipe = require("npipe")
local helpers = require("helpers")

local quote = helpers.quote
local ROOT = helpers.root

local function example(file) return ROOT .. "/examples/" .. file end

-- it(), or where no child can get a login session of its own a pending spec that says
-- why (not a silent pass).
local function it_login(title, fn)
  if helpers.login_skip then return pending(title .. " (skipped: " .. helpers.login_skip .. ")") end
  return it(title, fn)
end

-- helpers.wait_exit counts a zombie as ended (children here are reparented to a PID 1
-- that does not reap them).
local wait_gone = helpers.wait_exit

-- Children started by the current test; killed in its finally().
local children

local function kill_children()
  for _, pid in ipairs(children or {}) do helpers.kill(pid, "TERM") end
  for _, pid in ipairs(children or {}) do
    if not wait_gone(pid, 2) then helpers.kill(pid, "KILL") end
  end
  children = {}
end

-- Starts an example server; returns its pid, output file and the socket path it printed.
local function start(file, ...)
  local pid, out = helpers.spawn_lua(example(file), ...)
  children[#children + 1] = pid
  local path = helpers.wait_until(function()
    return (helpers.read_file(out) or ""):match(" on (/%S+)")
  end, 5)
  assert(path, ("%s did not start; its output:\n%s"):format(file, helpers.read_file(out) or ""))
  return pid, out, path
end

-- Runs a shell command to the end (at most 10 s); returns its exit code and output.
local run_count = 0
local function run(cmd)
  run_count = run_count + 1
  local out = ("%s/examples-run-%d.out"):format(helpers.tmp, run_count)
  local code = helpers.exit_code(os.execute(("timeout 10 %s > %s 2>&1 < /dev/null"):format(cmd, out)))
  local output = helpers.read_file(out) or ""
  os.remove(out)
  return code, output
end

local function lines_of(s)
  local t = {}
  for line in s:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

describe("examples", function()
  before_each(function() children = {} end)

  describe("echo.lua", function()
    for _, case in ipairs({ { "lines", "SIGTERM" }, { "message", "SIGINT" } }) do
      local framing, sig = case[1], case[2]
      it(("echoes in %s framing and stops cleanly on %s"):format(framing, sig), function()
        finally(kill_children)
        local name = helpers.name("ex-echo")
        local pid, out, path = start("echo.lua", name, framing)
        assert.are.equal(npipe.path(name), path)
        local c = assert(npipe.connect(name, { framing = framing, timeout = 5 }))
        for i = 1, 10 do
          assert(c:write("message " .. i))
          assert.are.equal("message " .. i, c:read(5))
        end
        c:disconnect()
        helpers.kill(pid, sig:sub(4)) -- kill -TERM: sh's kill does not take -SIGTERM
        assert.is_truthy(wait_gone(pid, 5), "echo.lua did not exit on " .. sig)
        assert.is_false(helpers.exists(path), "echo.lua left its socket file behind")
        assert.matches(sig .. ": stopped", helpers.read_file(out), 1, true)
      end)
    end
  end)

  describe("chat.lua", function()
    it("broadcasts each line to the other clients, not the sender, and announces joins and leaves", function()
      finally(kill_children)
      local name = helpers.name("ex-chat")
      start("chat.lua", name)
      local clients, ids = {}, {}
      for i = 1, 3 do
        local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
        local welcome = assert(c:read(5))
        ids[i] = assert(welcome:match("^welcome (%d+)$"), "unexpected greeting: " .. welcome)
        for j = 1, i - 1 do -- the ones already there hear about it
          assert.are.equal(("* %s joined"):format(ids[i]), clients[j]:read(5))
        end
        clients[i] = c
      end
      for sender = 1, 3 do
        local line = ("hello from client %d"):format(sender)
        assert(clients[sender]:write(line))
        for j = 1, 3 do
          if j ~= sender then
            assert.are.equal(("%s: %s"):format(ids[sender], line), clients[j]:read(5))
          end
        end
        local m, err = clients[sender]:read(0.2)
        assert.is_nil(m, "the sender got its own line back")
        assert.are.equal("timeout", err)
      end
      clients[3]:disconnect()
      for j = 1, 2 do assert.are.equal(("* %s left"):format(ids[3]), clients[j]:read(5)) end
      clients[1]:disconnect()
      clients[2]:disconnect()
    end)
  end)

  describe("kv.lua", function()
    -- The same conversation through each client; replies listed per request.
    local conversation = {
      { "KEYS", "" },
      { "SET b two words", "OK" },
      { "SET zz 3", "OK" },
      { "SET a 1", "OK" },
      { "SET m 4", "OK" },
      { "SET c 5", "OK" },
      { "SET a one", "OK" },
      { "GET a", "VALUE one" },
      { "GET b", "VALUE two words" },
      { "GET d", "NOTFOUND" },
      { "KEYS", "a b c m zz" },
      { "DEL a", "OK" },
      { "GET a", "NOTFOUND" },
      { "DEL a", "OK" },
      { "DEL m", "OK" },
      { "KEYS", "b c zz" },
      { "FROB x", "ERR unknown command 'FROB'" },
      { "GET", "ERR usage: GET key" },
      -- a reply bigger than one read: the clients must reassemble it
      { "SET big " .. ("0123456789"):rep(6000), "OK" },
      { "GET big", "VALUE " .. ("0123456789"):rep(6000) },
    }

    local function check(cmd_prefix)
      local args, expect = {}, {}
      for i, step in ipairs(conversation) do
        args[i] = quote(step[1])
        expect[i] = step[2]
      end
      local code, output = run(cmd_prefix .. " " .. table.concat(args, " "))
      assert.are.equal(0, code, output)
      assert.are.same(expect, lines_of(output))
    end

    it("answers SET/GET/DEL/KEYS through kv_client.lua (npipe.call)", function()
      finally(kill_children)
      local name = helpers.name("ex-kv")
      start("kv.lua", name)
      check(("%s %s %s"):format(helpers.lua, quote(example("kv_client.lua")), quote(name)))
      -- a failed call: no such service
      local code, output = run(("%s %s %s GET"):format(helpers.lua, quote(example("kv_client.lua")),
                                                         quote(helpers.name("ex-kv-missing"))))
      assert.are.equal(1, code)
      assert.matches("kv_client: GET: cannot connect", output, 1, true)
    end)

    -- the same checks through the Python and the Node.js client of examples/clients/;
    -- python3 is always there (scripts/deps.sh), node may be missing
    for _, client in ipairs({ { file = "client.py", run = "python3", tag = "py" },
                              { file = "client.js", run = "node", tag = "js", optional = true } }) do
      local title = "answers SET/GET/DEL/KEYS through clients/" .. client.file
      local have = not client.optional or run(("sh -c 'command -v %s'"):format(client.run)) == 0
      local it_or_skip = have and it or pending
      it_or_skip(have and title or (title .. " (skipped: " .. client.run .. " is not installed)"), function()
        finally(kill_children)
        local name = helpers.name("ex-kv-" .. client.tag)
        local _, _, path = start("kv.lua", name)
        local cmd = client.run .. " " .. quote(example("clients/" .. client.file))
        check(("%s %s"):format(cmd, quote(path)))
        local code, output = run(("%s %s x"):format(cmd, quote(path .. "-missing")))
        assert.are.equal(1, code)
        assert.matches(client.file .. ": ", output, 1, true)
      end)
    end
  end)

  describe("session_gate.lua", function()
    it_login("serves its own login session, also after setsid, and refuses another login's client", function()
      finally(kill_children)
      local name = helpers.name("ex-gate")
      local _, out = start("session_gate.lua", name)
      -- the server says which login session it serves (0 here: outside any login, as a service)
      assert.matches(("login session %d"):format(npipe.session_id()), helpers.read_file(out), 1, true)
      -- this process is in the server's session
      local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
      for i = 1, 3 do
        assert(c:write("line " .. i))
        assert.are.equal("line " .. i, c:read(5))
      end
      c:disconnect()
      -- a login really gives another session (else the refusal below would prove nothing)
      local code, sid = run(("%s%s -e %s"):format(helpers.login_prefix, helpers.lua,
        quote("print(require('npipe').session_id())")))
      assert.are.equal(0, code, sid)
      assert.are_not.equal(tostring(npipe.session_id()), (sid:gsub("%s+$", "")))
      local call = ("%s %s call %s hello --timeout 5"):format(helpers.lua, quote(ROOT .. "/bin/npipe"), quote(name))
      for _ = 1, 3 do
        local code2, output = run(helpers.login_prefix .. call)
        assert.are.equal(0, code2, output)
        assert.are.equal("refused: other session\n", output)
        -- a client of this login in a POSIX session of its own is served, as is a plain one
        code2, output = run("setsid " .. call)
        assert.are.equal(0, code2, output)
        assert.are.equal("hello\n", output)
        code2, output = run(call)
        assert.are.equal(0, code2, output)
        assert.are.equal("hello\n", output)
      end
    end)
  end)

  describe("graceful.lua", function()
    it("delivers every reply before the end of the connection (20 connections, replies up to 400 KB)", function()
      finally(kill_children)
      local name = helpers.name("ex-graceful")
      local _, out = start("graceful.lua", name)
      for i = 1, 20 do
        -- big replies do not fit in the socket buffer: without the flush they would be cut
        local msg = ("%02d:"):format(i) .. ("x"):rep((i % 2 == 0) and i * 20000 or i)
        local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
        assert(c:write(msg))
        local reply, err = c:read(5)
        assert.is_truthy(reply, ("connection %d: no reply (%s)"):format(i, tostring(err)))
        assert.are.equal(#("reply: " .. msg), #reply)
        assert.is_true(reply == "reply: " .. msg, "connection " .. i .. ": the reply is wrong")
        local m, err2 = c:read(5)
        assert.is_nil(m)
        assert.are.equal("closed", err2)
        c:disconnect()
      end
      assert.are.equal(nil, (helpers.read_file(out) or ""):find("flush failed", 1, true))
    end)
  end)
end)
