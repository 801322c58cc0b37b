-- bin/npipe as a child process: serve, call, connect, list, help and exit statuses.
local npipe = require("npipe")
local helpers = require("helpers")

local quote = helpers.quote
local NPIPE = ("%s %s"):format(helpers.lua, quote(helpers.root .. "/bin/npipe"))

-- helpers.alive counts a zombie as ended (children here are reparented to a PID 1
-- that does not reap them).
local function gone(pid) return not helpers.alive(pid) end
local wait_gone = helpers.wait_exit

local children, files

local function cleanup()
  for _, pid in ipairs(children or {}) do helpers.kill(pid, "TERM") end
  for _, pid in ipairs(children or {}) do
    if not wait_gone(pid, 3) then helpers.kill(pid, "KILL") end
  end
  for _, f in ipairs(files or {}) do os.remove(f) end
  children, files = {}, {}
end

local function args_of(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = quote(select(i, ...)) end
  return table.concat(t, " ")
end

-- The command line `npipe ARGS...`, bounded to 10 s.
local function npipe_cmd(...)
  return ("timeout 10 %s %s"):format(NPIPE, args_of(...))
end

-- Runs a shell command to the end; returns its exit code, output (stdout and stderr) and run time.
local run_count = 0
local function run(cmd)
  run_count = run_count + 1
  local out = ("%s/cli-run-%d.out"):format(helpers.tmp, run_count)
  local t0 = npipe.now()
  local code = helpers.exit_code(os.execute(("%s > %s 2>&1"):format(cmd, out)))
  local elapsed = npipe.now() - t0
  local output = helpers.read_file(out) or ""
  os.remove(out)
  return code, output, elapsed
end

local function npipe_run(...)
  return run(npipe_cmd(...) .. " < /dev/null")
end

-- `npipe serve ARGS...` in the background. A shell waits for it and writes its exit status to
-- a file; returns the pid of the npipe process, its output file, the status file and the
-- path it serves.
local serve_count = 0
local function serve(...)
  serve_count = serve_count + 1
  local pidfile = ("%s/cli-serve-%d.pid"):format(helpers.tmp, serve_count)
  local rcfile = pidfile:gsub("%.pid$", ".rc")
  os.remove(pidfile)
  os.remove(rcfile)
  local script = ("%s serve %s & echo $! > %s; wait $!; echo $? > %s"):format(
    NPIPE, args_of(...), quote(pidfile), quote(rcfile))
  local shell, out = helpers.spawn("sh -c " .. quote(script))
  children[#children + 1] = shell
  local pid = helpers.wait_until(function() return tonumber(helpers.read_file(pidfile) or "") end, 5)
  assert(pid, "npipe serve did not start")
  table.insert(children, 1, pid)
  files[#files + 1] = pidfile
  files[#files + 1] = rcfile
  local path = helpers.wait_until(function()
    return (helpers.read_file(out) or ""):match("serving %S+ on (/%S+)")
  end, 5)
  assert(path, "npipe serve printed no path; its output:\n" .. (helpers.read_file(out) or ""))
  return pid, out, rcfile, path
end

local function script(source)
  run_count = run_count + 1
  local path = ("%s/cli-script-%d.lua"):format(helpers.tmp, run_count)
  helpers.write_file(path, source)
  files[#files + 1] = path
  return path
end

describe("npipe command", function()
  before_each(function() children, files = {}, {} end)

  it("serves the demo: prints the path, answers whoami and echoes", function()
    finally(cleanup)
    local name = helpers.name("cli-demo")
    local pid, out, _, path = serve("--name", name)
    assert.are.equal(npipe.path(name), path)
    assert.matches("npipe connect " .. name, helpers.read_file(out), 1, true)
    local code, output = npipe_run("call", name, "whoami")
    assert.are.equal(0, code, output)
    local caller, uid, gid, session = output:match("^pid=(%d+) uid=(%d+) gid=(%d+) session=(%d+)\n$")
    assert.is_truthy(caller, "whoami said: " .. output)
    assert.are_not.equal(tostring(pid), caller) -- the caller, not the server
    assert.are.equal(helpers.capture("id -u"), uid)
    assert.are.equal(helpers.capture("id -g"), gid)
    assert.are.equal(tostring(npipe.session_id()), session) -- the call ran in our session
    code, output = npipe_run("call", name, "hello there")
    assert.are.equal(0, code, output)
    assert.are.equal("hello there\n", output)
    -- and an npipe client in this process
    local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
    assert(c:write("one"))
    assert.are.equal("one", c:read(5))
    assert(c:write("help"))
    assert.matches("^commands:", c:read(5))
    c:disconnect()
  end)

  it("serves a SCRIPT that returns a handlers table", function()
    finally(cleanup)
    local name = helpers.name("cli-table")
    local file = script([[
      return {
        connect = function(conn) conn.state.n = 0 end,
        request = function(conn, msg)
          conn.state.n = conn.state.n + 1
          return ("table %d: %s"):format(conn.state.n, msg)
        end,
      }
    ]])
    serve(file, "--name", name, "--framing", "message")
    local code, output = npipe_run("call", name, "ping", "--framing", "message")
    assert.are.equal(0, code, output)
    assert.are.equal("table 1: ping\n", output)
    local c = assert(npipe.connect(name, { framing = "message", timeout = 5 }))
    for i = 1, 3 do assert.are.equal(("table %d: m%d"):format(i, i), c:transact("m" .. i, 5)) end
    c:disconnect()
  end)

  it("serves a SCRIPT that returns a function (one coroutine per connection, conn:read loop)", function()
    finally(cleanup)
    local name = helpers.name("cli-fn")
    local file = script([[
      return function(conn)
        local n = 0
        while true do
          local line = conn:read()
          if not line then return end
          n = n + 1
          conn:write(("fn %d: %s"):format(n, line))
        end
      end
    ]])
    serve(file, "--name", name)
    local code, output = npipe_run("call", name, "ping")
    assert.are.equal(0, code, output)
    assert.are.equal("fn 1: ping\n", output)
    local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
    for i = 1, 3 do
      assert(c:write("l" .. i))
      assert.are.equal(("fn %d: l%d"):format(i, i), c:read(5))
    end
    c:disconnect()
  end)

  it("refuses a second server on a live name with status 1", function()
    finally(cleanup)
    local name = helpers.name("cli-twice")
    local pid = serve("--name", name)
    local code, output = npipe_run("serve", "--name", name)
    assert.are.equal(1, code, output)
    assert.matches("already in use", output, 1, true)
    assert.is_false(gone(pid)) -- the first one still serves
    code, output = npipe_run("call", name, "still here")
    assert.are.equal(0, code, output)
    assert.are.equal("still here\n", output)
  end)

  it("exits 0 on SIGTERM and removes its socket file", function()
    finally(cleanup)
    local name = helpers.name("cli-term")
    local pid, out, rcfile, path = serve("--name", name)
    assert.is_true(helpers.exists(path))
    helpers.kill(pid, "TERM")
    -- (the shell creates the file, then writes the status: wait for the whole line)
    local rc = helpers.wait_until(function() return (helpers.read_file(rcfile) or ""):match("^%d+\n$") end, 5)
    assert.is_truthy(rc, "npipe serve did not exit on SIGTERM")
    assert.are.equal("0\n", rc)
    assert.is_false(helpers.exists(path), "the socket file is still there")
    assert.matches("SIGTERM: closed", helpers.read_file(out), 1, true)
  end)

  it("fails a call to a missing name with status 1 and a message, within the timeout", function()
    finally(cleanup)
    local name = helpers.name("cli-missing")
    local code, output, elapsed = npipe_run("call", name, "hi", "--timeout", "0.3")
    assert.are.equal(1, code, output)
    assert.matches("call to " .. name .. " failed", output, 1, true)
    assert.matches("no server answered within 0.3 s", output, 1, true)
    assert.is_true(elapsed < 3, ("the call took %.2f s"):format(elapsed))
  end)

  it("connect copies stdin lines to the pipe and prints the echoes", function()
    finally(cleanup)
    local name = helpers.name("cli-connect")
    serve("--name", name)
    local code, output = run("printf 'a\\nb\\n' | " .. npipe_cmd("connect", name))
    assert.are.equal(0, code, output)
    assert.are.equal("a\nb\n", output)
  end)

  it("list shows a live pipe with its server's pid and a stale socket as stale", function()
    finally(cleanup)
    local live, stale = helpers.name("cli-live"), helpers.name("cli-stale")
    local pid = serve("--name", live)
    local dead, _, _, stale_path = serve("--name", stale)
    files[#files + 1] = stale_path
    helpers.kill(dead, "KILL") -- dies without removing its socket file
    assert.is_truthy(wait_gone(dead, 5))
    assert.is_true(helpers.exists(stale_path))
    local code, output = npipe_run("list")
    assert.are.equal(0, code, output)
    assert.matches("^NAME%s+STATE%s+PID%s+UID%s+PATH\n", output)
    local rows = {}
    for line in output:gmatch("[^\n]+") do
      local f = {}
      for field in line:gmatch("%S+") do f[#f + 1] = field end
      rows[f[1]] = f
    end
    assert.is_truthy(rows[live], "the live pipe is not listed:\n" .. output)
    assert.are.same({ live, "live", tostring(pid), helpers.capture("id -u"), npipe.path(live) }, rows[live])
    assert.is_truthy(rows[stale], "the stale socket is not listed:\n" .. output)
    assert.are.same({ stale, "stale", "-", "-", stale_path }, rows[stale])
  end)

  it("prints usage for --help, --version and serve --help with status 0", function()
    local code, output = npipe_run("--help")
    assert.are.equal(0, code, output)
    assert.matches("^usage: npipe COMMAND", output)
    for _, command in ipairs({ "serve", "connect", "call", "list" }) do
      assert.matches("\n  " .. command .. " ", output, 1, true)
    end
    code, output = npipe_run("--version")
    assert.are.equal(0, code, output)
    assert.are.equal(npipe._VERSION .. "\n", output)
    assert.matches("^npipe %S+\n$", output)
    code, output = npipe_run("serve", "--help")
    assert.are.equal(0, code, output)
    assert.matches("^usage: npipe serve", output)
    assert.matches("SIGTERM", output, 1, true)
  end)

  it("exits 2 on an unknown command or none", function()
    local code, output = npipe_run("frobnicate")
    assert.are.equal(2, code, output)
    assert.matches("unknown command 'frobnicate'", output, 1, true)
    code, output = npipe_run()
    assert.are.equal(2, code, output)
    assert.matches("usage: npipe", output, 1, true)
  end)

  describe("serve reloads its SCRIPT", function()
    -- Version v of a script: replies "v loads msg", where loads counts the loads that
    -- the state table (kept across reloads) has seen.
    local function version_source(v)
      return ([[
        local state = ...
        state.loads = (state.loads or 0) + 1
        local loads = state.loads
        return { request = function(conn, msg) return ("%d %%d %%s"):format(loads, msg) end }
      ]]):format(v)
    end

    -- Replaces the file by rename, as many editors do (the reader never sees half of it).
    local function replace(path, source)
      helpers.write_file(path .. ".new", source)
      assert(os.rename(path .. ".new", path))
    end

    local count = helpers.count

    local function output_of(out) return helpers.read_file(out) or "" end

    it("on SIGHUP, 100 times, under load: one connection, nothing lost, each reply from the version then in force",
      function()
        finally(cleanup)
        local name = helpers.name("cli-hup")
        local file = script(version_source(1))
        local pid, out = serve(file, "--name", name)
        local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
        local load = helpers.version_load(c, 16) -- replies "v loads seq"
        local problems = load.problems
        for k = 1, 101 do
          if k > 1 then
            replace(file, version_source(k))
            helpers.kill(pid, "HUP")
          end
          assert(helpers.wait_until(function() return load.last_v >= k or #problems > 0 end, 10),
            "no reply from version " .. k .. "; the server said:\n" .. output_of(out))
          assert.are.same({}, problems)
        end
        load.stop()
        assert(helpers.wait_until(function() return load.got == load.sent or #problems > 0 end, 10),
          "replies are missing")
        assert.are.same({}, problems)
        local seen, prev = {}, 0
        for i, r in ipairs(load.replies) do
          assert.are.equal(i, r.seq, "reply " .. i .. " is for another message: " .. r.text) -- none lost, in order
          assert.is_true(r.v >= prev, "reply " .. i .. " comes from an older version than the one before")
          -- each load ran once, in order, and kept its count in the state table
          assert.are.equal(r.v, r.n, "reply " .. i .. ": " .. r.text)
          if r.v ~= prev then seen[#seen + 1] = r.v end
          prev = r.v
        end
        local all = {}
        for k = 1, 101 do all[k] = k end
        assert.are.same(all, seen) -- the reload sequence, no version skipped
        assert.is_true(c:is_open())
        c:disconnect()
        assert.are.equal(100, count(output_of(out), "reloaded " .. file .. " (SIGHUP)"))
        assert.is_false(gone(pid))
      end)

    it("keeps the old handlers serving when the new script fails to load, raises or returns the wrong type",
      function()
        finally(cleanup)
        local name = helpers.name("cli-broken")
        local file = script(version_source(1))
        local pid, out = serve(file, "--name", name)
        local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
        assert.are.equal("1 1 a", c:transact("a", 5))
        local broken = {
          { "return { request = ", "cannot load" },                          -- a syntax error
          { "error('broken on purpose')", "broken on purpose" },             -- raises
          { "return 42", "must return a handlers table or a function, not number" },
        }
        for i, case in ipairs(broken) do
          replace(file, case[1])
          helpers.kill(pid, "HUP")
          local function reported() return count(output_of(out), "failed, the old handlers keep serving") >= i end
          assert(helpers.wait_until(reported, 5),
            "no report of the failed reload; the server said:\n" .. output_of(out))
          assert.matches(case[2], output_of(out), 1, true)
          -- the same connection, the same handlers
          assert.are.equal("1 1 b" .. i, c:transact("b" .. i, 5))
        end
        assert.is_false(gone(pid))
        assert.are.equal(0, count(output_of(out), "reloaded "))
        -- and a good script after them is taken (its state saw only the loads that ran)
        replace(file, version_source(2))
        helpers.kill(pid, "HUP")
        assert(helpers.wait_until(function() return output_of(out):find("reloaded", 1, true) end, 5))
        local reply = c:transact("c", 5)
        assert.is_truthy(reply)
        assert.matches("^2 %d+ c$", reply)
        c:disconnect()
      end)

    it("with --watch, within a second of an edit, in place or by rename", function()
      finally(cleanup)
      local name = helpers.name("cli-watch")
      local file = script(version_source(1))
      local _, out = serve(file, "--name", name, "--watch")
      local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
      assert.are.equal("1 1 a", c:transact("a", 5))
      -- waits (at most 5 s) for replies from version v; returns how long that took
      local function time_to(v)
        local t0 = npipe.now()
        for _ = 1, 500 do
          local reply = assert(c:transact("x", 5))
          if reply:match("^(%d+)") == tostring(v) then return npipe.now() - t0 end
          if npipe.now() - t0 > 5 then break end
          npipe.sleep(0.01)
        end
        error("version " .. v .. " was not loaded within 5 s; the server said:\n" .. output_of(out))
      end
      helpers.write_file(file, version_source(2)) -- in place
      local in_place = time_to(2)
      replace(file, version_source(3)) -- a new file under the name
      local renamed = time_to(3)
      assert.is_true(in_place < 1, ("an edit in place took %.2f s to load"):format(in_place))
      assert.is_true(renamed < 1, ("a replaced file took %.2f s to load"):format(renamed))
      assert.are.equal(2, count(output_of(out), "reloaded " .. file .. " (changed)"))
      assert.is_true(c:is_open())
      c:disconnect()
    end)

    it("refuses --watch without a SCRIPT (usage error)", function()
      local code, output = npipe_run("serve", "--name", helpers.name("cli-watch-demo"), "--watch")
      assert.are.equal(2, code, output)
      assert.matches("--watch needs a SCRIPT", output, 1, true)
    end)
  end)
end)
