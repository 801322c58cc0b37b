-- A spec of a user's own handlers script with npipe.test (docs/TESTING.md). It needs only
-- the installed rock and busted: `cd examples/spec && busted greeter_spec.lua`.
local nt = require("npipe.test")
local npipe = require("npipe")

-- the script next to this spec, as `npipe serve` would be given it
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local SCRIPT = here .. "greeter.lua"
local OPTS = { framing = "message" }

describe("greeter.lua", function()
  it("greets by name and counts per connection", nt.wrap(function()
    local server, client = nt.serve(SCRIPT, OPTS)
    assert.equal("hello, ann (#1)", client:transact("ann", 1))
    assert.equal("hello, bob (#2)", client:transact("bob", 1))
    local other = nt.client(server)
    assert.equal("hello, cy (#1)", other:transact("cy", 1))
  end))

  it("can wait and write like a handler", nt.wrap(function()
    local _, client = nt.serve(SCRIPT, OPTS)
    client:write("ann")
    assert.truthy(client:flush(1))
    npipe.sleep(0.01)
    assert.equal("hello, ann (#1)", client:read(1))
  end))

  it("fails the test when a handler raises", function()
    local ok, err = pcall(nt.wrap(function()
      local _, client = nt.serve(SCRIPT, OPTS)
      client:transact("", 1)
    end))
    assert.is_false(ok)
    assert.matches("no name given", err)
  end)

  it("keeps production's behaviour with handler_errors = \"close\"", nt.wrap(function()
    local _, client = nt.serve(SCRIPT, { framing = "message", handler_errors = "close" })
    local reply, err = client:transact("", 1)
    assert.is_nil(reply)
    assert.equal("closed", err)
  end))
end)
