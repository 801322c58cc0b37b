local npipe = require("npipe")
local helpers = require("helpers")

local has_luv = helpers.succeeded(os.execute(helpers.lua .. " -e 'require(\"luv\")' 2>/dev/null"))
local NO_LUV = "luv is not installed for " .. helpers.lua .. " (Debian package lua-luv)"

-- Runs a Lua script in the background and appends "exit=N" to its output when it ends,
-- so that a crash or a sanitizer report (exit 86) fails the spec.
local function spawn_checked(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[#args + 1] = helpers.quote(select(i, ...)) end
  return helpers.spawn(("{ %s %s %s; echo exit=$?; }"):format(helpers.lua, helpers.quote(script),
    table.concat(args, " ")))
end

local function finished(pid, out)
  assert.is_truthy(helpers.wait_exit(pid, 10), "the host did not exit")
  local text = helpers.read_file(out)
  assert.matches("exit=0", text, 1, true)
  return text
end

describe("a host event loop running npipe", function()
  for _, mode in ipairs({ "share", "poll" }) do
    it("serves clients from luv's loop while a luv timer runs (" .. mode .. ")", function()
      if not has_luv then return pending(NO_LUV) end
      local name = helpers.name("luv")
      local pid, out = spawn_checked("examples/luv_host.lua", name, "2", mode)
      finally(function() helpers.kill_tree(pid) end)
      local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
      for i = 1, 5 do
        assert(c:write("ping " .. i))
        assert.are.equal("echo: ping " .. i, c:read(5))
      end
      c:disconnect()
      local text = finished(pid, out)
      assert.matches("npipe on luv: " .. (mode == "share" and "shared" or "polled") .. "\n", text, 1, true)
      assert.matches("luv tick 10", text, 1, true)
      local ticks = tonumber(text:match("done after (%d+) luv ticks"))
      assert.is_truthy(ticks and ticks >= 10, text)
    end)
  end

  it("puts npipe's handles on luv's own loop when it shares it", function()
    if not has_luv then return pending(NO_LUV) end
    local name = helpers.name("share")
    local pid, out = spawn_checked("spec/fixtures/luv_share.lua", name)
    finally(function() helpers.kill_tree(pid) end)
    local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
    assert(c:write("hello"))
    assert.are.equal("luv: hello", c:read(5))
    assert(c:write("wait"))
    assert.matches("npipe: cannot wait here: npipe runs on the host's luv loop", c:read(5), 1, true)
    assert(c:write("run"))
    assert.matches("npipe.run: npipe runs on the host's luv loop", c:read(5), 1, true)
    npipe.sleep(0.2)
    assert(c:write("ticks"))
    local ticks = tonumber((c:read(5) or ""):match("^ticks (%d+)$"))
    assert.is_truthy(ticks and ticks >= 3, "luv's timer did not run alongside the server")
    assert(c:write("quit"))
    assert.are.equal("bye", c:read(5))
    local text = finished(pid, out)
    assert.matches("mode shared\n", text, 1, true)
    for _, what in ipairs({ "same-fd", "no-poll-handle", "second-attach", "listener-on-luv-loop" }) do
      assert.matches("check " .. what .. " true", text, 1, true)
    end
    assert.matches("done after %d+ luv ticks, mode shared", text)
  end)

  describe("refuses to share and polls instead", function()
    local uv = has_luv and require("luv")
    -- luv 1.44 crashes at exit if a closed handle's close callback never ran: run
    -- luv's loop once after a detach, as a host would
    local function detaching(detach)
      return function()
        detach()
        uv.run("nowait")
      end
    end
    -- luv as it is, except for what lie() says
    local function lie(fields)
      return setmetatable(fields, { __index = uv })
    end
    local function refused(fake, reason)
      local detach, mode, why = npipe.attach(fake, { share = true })
      finally(detaching(detach))
      assert.are.equal("polled", mode)
      assert.are.equal("polled", npipe.loop_mode())
      assert.matches(reason, why, 1, true)
    end

    it("when luv reports another libuv version", function()
      if not uv then return pending(NO_LUV) end
      refused(lie({ version = function() return uv.version() + 1 end }), "another libuv version")
    end)

    it("when luv's loop is not the one its context points to", function()
      if not uv then return pending(NO_LUV) end
      refused(lie({ backend_fd = function() return -1 end }), "does not describe the loop luv runs")
    end)

    it("when npipe already has a server", function()
      if not uv then return pending(NO_LUV) end
      local server = assert(npipe.listen(helpers.name("busy"), function() end))
      finally(function() server:close() end)
      refused(uv, "already has servers")
    end)

    it("when npipe's loop is already polled, and then it does not poll twice", function()
      if not uv then return pending(NO_LUV) end
      local detach = npipe.attach(uv)
      finally(detaching(detach))
      local again, err, code = npipe.attach(uv, { share = true })
      assert.is_nil(again)
      assert.matches("already attached by polling", err, 1, true)
      assert.are.equal("EBUSY", code)
    end)
  end)
end)

describe("Neovim hosting an npipe server on its own loop", function()
  local cpath = os.getenv("NPIPE_LUAJIT_CPATH")
  local function skip_reason()
    if not helpers.succeeded(os.execute("command -v nvim >/dev/null 2>&1")) then
      return "nvim is not installed (Debian package neovim)"
    end
    if not cpath then return "no LuaJIT build of npipe: set NPIPE_LUAJIT_CPATH (scripts/test.sh does)" end
  end

  -- Debian 12's Neovim 0.7.2 has no `nvim -l script` (0.9 added it; in 0.7 -l is Lisp
  -- mode), so the script runs with -c luafile.
  local function start_nvim(name, attach)
    -- timeout -k: Neovim handles SIGTERM in its own loop, which a stuck loop never reaches
    local cmd = "exec env NPIPE_NAME=%s NPIPE_ATTACH=%s LUA_CPATH=%s timeout -k 2 20 nvim --headless -u NONE -c %s"
    local pid = helpers.spawn(cmd:format(helpers.quote(name), attach, helpers.quote(cpath),
      helpers.quote("luafile spec/fixtures/nvim_host.lua")))
    finally(function() helpers.kill_tree(pid) end)
    return pid, assert(npipe.connect(name, { framing = "lines", timeout = 10 }))
  end

  local function ask(c, line)
    assert(c:write(line))
    return c:read(5)
  end

  it("serves a separate client from Neovim's own loop (shared) while Neovim's timers run", function()
    local skip = skip_reason()
    if skip then return pending(skip) end
    local pid, c = start_nvim(helpers.name("nvim"), "share")
    assert.are.equal("shared", ask(c, "mode"))
    local fd, nvim_fd = (ask(c, "fds") or ""):match("^(%d+) (%d+)$")
    assert.is_truthy(fd and fd == nvim_fd, "npipe does not run on Neovim's loop")
    assert.are.equal("true", ask(c, "fast"))
    assert.are.equal("nvim: hello", ask(c, "hello"))
    assert.are.equal("lines 1", ask(c, "api"))
    assert.matches("npipe: cannot wait here: npipe runs on the host's luv loop", ask(c, "wait"), 1, true)
    npipe.sleep(0.3)
    local ticks = tonumber((ask(c, "ticks") or ""):match("^ticks (%d+)$"))
    assert.is_truthy(ticks and ticks >= 2, "Neovim's timer did not run alongside the server")
    assert.are.equal("bye", ask(c, "quit"))
    assert.is_truthy(helpers.wait_exit(pid, 10))
  end)

  it("serves a separate client with Neovim's loop polling npipe's", function()
    local skip = skip_reason()
    if skip then return pending(skip) end
    local pid, c = start_nvim(helpers.name("nvim"), "poll")
    assert.are.equal("polled", ask(c, "mode"))
    assert.are.equal("true", ask(c, "fast"))
    assert.are.equal("nvim: hello", ask(c, "hello"))
    assert.are.equal("waited", ask(c, "wait"))
    assert.are.equal("bye", ask(c, "quit"))
    assert.is_truthy(helpers.wait_exit(pid, 10))
  end)
end)
