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
