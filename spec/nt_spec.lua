-- npipe.test's own promises (docs/TESTING.md).
local npipe = require("npipe")
local nt = require("npipe.test")
local helpers = require("helpers")

describe("npipe.test", function()
  it("runs the body as a job: write, read, transact, flush and sleep top to bottom", nt.wrap(function()
    local server, client = nt.serve({ request = function(_, msg) return "re: " .. msg end }, { framing = "message" })
    assert.equal("message", client:framing())
    assert.equal("re: a", client:transact("a"))
    assert.truthy(client:write("b"))
    assert.truthy(client:flush(1))
    assert.equal("re: b", client:read(1))
    npipe.sleep(0.01)
    local other = nt.client(server)
    assert.equal("re: c", other:transact("c", 1))
  end))

  it("loads a handlers script the way `npipe serve SCRIPT` does", nt.wrap(function()
    local _, client = nt.serve(helpers.root .. "/examples/handlers/kv.lua", { framing = "message" })
    assert.equal("OK", client:transact("SET a 1", 1))
    assert.equal("VALUE 1", client:transact("GET a", 1))
  end))

  it("passes the wrapped function's arguments on", function()
    local got
    nt.wrap(function(a, b) got = a .. b end)("x", "y")
    assert.equal("xy", got)
  end)

  it("fails the test with the body's error and its traceback", function()
    local ok, err = pcall(nt.wrap(function() error("body broke") end))
    assert.is_false(ok)
    assert.matches("body broke", err)
    assert.matches("traceback", err)
  end)

  it("fails the test with a broken handler's message, and closes everything after", function()
    local server, client, dir
    local ok, err = pcall(nt.wrap(function()
      server, client = nt.serve({ data = function() error("handler broke") end })
      dir = server:path():match("^(.*)/[^/]*$")
      if not helpers.windows then assert.truthy(helpers.exists(server:path())) end
      client:write("x")
      client:read(3) -- the failure ends the test before this times out
      error("not reached")
    end))
    assert.is_false(ok)
    assert.matches("handler error on connection #%d+: .*handler broke", err)
    assert.not_matches("not reached", err)
    assert.is_false(server:is_open())
    assert.is_false(client:is_open())
    if not helpers.windows then assert.is_false(helpers.exists(dir)) end
  end)

  it("also fails the test when the script has an error handler of its own, which still runs", function()
    local seen
    local ok, err = pcall(nt.wrap(function()
      local _, client = nt.serve({ data = function() error("handler broke") end,
                                   error = function(_, e) seen = e end })
      client:write("x")
      client:read(3)
    end))
    assert.is_false(ok)
    assert.matches("handler broke", err)
    assert.matches("handler broke", seen)
  end)

  it("with handler_errors = \"close\" only that connection ends, as in production", nt.wrap(function()
    local server, client = nt.serve({ data = function(conn, msg)
      if msg == "boom" then error("handler broke") end
      conn:write(msg)
    end }, { handler_errors = "close" })
    client:write("boom")
    local msg, err = client:read(2)
    assert.is_nil(msg)
    assert.equal("closed", err)
    assert.equal("fine", nt.client(server):transact("fine", 1))
  end))

  it("fails a hanging body by timeout within the stated time, and closes everything", function()
    local server, client, dir
    local t0 = npipe.now()
    local ok, err = pcall(nt.wrap(function()
      server, client = nt.serve({ data = function() end })
      dir = server:path():match("^(.*)/[^/]*$")
      client:read() -- nothing ever comes
    end, 0.3))
    local took = npipe.now() - t0
    assert.is_false(ok)
    assert.equal("timed out after 0.3 s", err)
    assert.is_true(took >= 0.3 and took < 1.5, "took " .. took .. " s")
    assert.is_false(server:is_open())
    assert.is_false(client:is_open())
    if not helpers.windows then assert.is_false(helpers.exists(dir)) end
  end)

  it("leaves nothing in the temporary directory and closes everything after a passing body", function()
    local server, client, other, dir
    nt.wrap(function()
      server, client = nt.serve({ request = function(_, m) return m end })
      other = nt.client(server)
      dir = server:path():match("^(.*)/[^/]*$")
      if not helpers.windows then assert.equal("700", helpers.capture("stat -c %a " .. helpers.quote(dir))) end
      assert.equal("x", client:transact("x", 1))
    end)()
    assert.is_false(server:is_open())
    assert.equal(0, #server:connections())
    assert.truthy(client:closed_reason())
    assert.truthy(other:closed_reason())
    if not helpers.windows then assert.is_false(helpers.exists(dir)) end
    assert.is_false(require("npipe.sched").busy())
  end)

  it("refuses nt.serve outside a wrapped body", function()
    assert.has_error(function() nt.serve({ data = function() end }) end)
  end)
end)
