local npipe = require("npipe")
local helpers = require("helpers")

local has_luv = helpers.succeeded(os.execute(helpers.lua .. " -e 'require(\"luv\")' 2>/dev/null"))

describe("a host event loop driving npipe", function()
  it("serves clients from luv's loop while a luv timer runs", function()
    if not has_luv then
      pending("luv is not installed for " .. helpers.lua .. " (Debian package lua-luv)")
      return
    end
    local name = helpers.name("luv")
    local pid, out = helpers.spawn_lua("examples/luv_host.lua", name, "2")
    finally(function() helpers.kill(pid, "KILL") end)
    local c = assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
    for i = 1, 5 do
      assert(c:write("ping " .. i))
      assert.are.equal("echo: ping " .. i, c:read(5))
    end
    c:disconnect()
    assert.is_truthy(helpers.wait_exit(pid, 10))
    local text = helpers.read_file(out)
    assert.matches("luv tick 10", text, 1, true)
    local ticks = tonumber(text:match("done after (%d+) luv ticks"))
    assert.is_truthy(ticks and ticks >= 10, text)
  end)
end)

describe("Neovim hosting an npipe server on its own loop", function()
  it("serves a separate client while Neovim's timers run", function()
    local cpath = os.getenv("NPIPE_LUAJIT_CPATH")
    if not helpers.succeeded(os.execute("command -v nvim >/dev/null 2>&1")) then
      pending("nvim is not installed (Debian package neovim)")
      return
    end
    if not cpath then
      pending("no LuaJIT build of npipe: set NPIPE_LUAJIT_CPATH (scripts/test.sh does)")
      return
    end
    local name = helpers.name("nvim")
    -- timeout -k: Neovim handles SIGTERM in its own loop, which a stuck loop never reaches
    local pid = helpers.spawn(("exec env NPIPE_NAME=%s LUA_CPATH=%s timeout -k 2 20 nvim --headless -u NONE -c %s")
      :format(helpers.quote(name), helpers.quote(cpath), helpers.quote("luafile spec/fixtures/nvim_host.lua")))
    finally(function() helpers.kill_tree(pid) end)
    local c = assert(npipe.connect(name, { framing = "lines", timeout = 10 }))
    assert(c:write("hello"))
    assert.are.equal("nvim: hello", c:read(5))
    npipe.sleep(0.3)
    assert(c:write("ticks"))
    local ticks = tonumber((c:read(5) or ""):match("^ticks (%d+)$"))
    assert.is_truthy(ticks and ticks >= 2, "Neovim's timer did not run alongside the server")
    assert(c:write("quit"))
    assert.are.equal("bye", c:read(5))
    assert.is_truthy(helpers.wait_exit(pid, 10))
  end)
end)
