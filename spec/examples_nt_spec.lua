-- The examples' handlers (examples/handlers/*.lua, which examples/kv.lua, chat.lua and
-- session_gate.lua serve), tested with npipe.test as a user would test their own.
local nt = require("npipe.test")
local helpers = require("helpers")

local function handlers(name) return helpers.root .. "/examples/handlers/" .. name .. ".lua" end

-- it(), or where no child can get a login session of its own a pending spec that says
-- why (not a silent pass).
local function it_login(title, fn)
  if helpers.login_skip then return pending(title .. " (skipped: " .. helpers.login_skip .. ")") end
  return it(title, fn)
end

describe("examples/handlers/kv.lua", function()
  local KV = { framing = "message" }

  it("sets, gets, deletes and lists keys", nt.wrap(function()
    local _, client = nt.serve(handlers("kv"), KV)
    assert.equal("NOTFOUND", client:transact("GET a", 1))
    assert.equal("OK", client:transact("SET a hello world", 1))
    assert.equal("OK", client:transact("SET b 2", 1))
    assert.equal("VALUE hello world", client:transact("GET a", 1))
    assert.equal("a b", client:transact("KEYS", 1))
    assert.equal("OK", client:transact("DEL a", 1))
    assert.equal("NOTFOUND", client:transact("GET a", 1))
  end))

  it("answers bad requests with ERR", nt.wrap(function()
    local _, client = nt.serve(handlers("kv"), KV)
    assert.equal("ERR unknown command 'NOPE'", client:transact("NOPE x", 1))
    assert.equal("ERR usage: SET key value", client:transact("SET a", 1))
    assert.equal("ERR empty request", client:transact("", 1))
  end))

  it("shares the store between clients, and each server starts empty", nt.wrap(function()
    local server, client = nt.serve(handlers("kv"), KV)
    assert.equal("OK", client:transact("SET k v", 1))
    assert.equal("VALUE v", nt.client(server):transact("GET k", 1))
    local _, fresh = nt.serve(handlers("kv"), KV)
    assert.equal("NOTFOUND", fresh:transact("GET k", 1))
  end))
end)

describe("examples/handlers/chat.lua", function()
  it("welcomes, relays lines to the others and announces joins and leaves", nt.wrap(function()
    local server, alice = nt.serve(handlers("chat"))
    local a_id = alice:read(1):match("^welcome (%d+)$")
    assert.truthy(a_id)
    local bob = nt.client(server)
    local b_id = bob:read(1):match("^welcome (%d+)$")
    assert.truthy(b_id)
    assert.equal("* " .. b_id .. " joined", alice:read(1))
    alice:write("hi bob")
    assert.equal(a_id .. ": hi bob", bob:read(1))
    bob:disconnect()
    assert.equal("* " .. b_id .. " left", alice:read(1))
    local msg, err = alice:read(0.1) -- nothing else: a sender does not get its own lines
    assert.is_nil(msg)
    assert.equal("timeout", err)
  end))
end)

describe("examples/handlers/session_gate.lua", function()
  -- as examples/session_gate.lua serves them: over bytes framing, the refusal would reach
  -- `npipe call` (lines) as an unterminated line, which a reset (the server drops the
  -- connection with the request unread) loses: the spec failed one run in three
  local GATE = { framing = "lines" }

  it("echoes lines for a client of its own session", nt.wrap(function()
    local _, client = nt.serve(handlers("session_gate"), GATE)
    assert.equal("hello", client:transact("hello", 1))
    assert.equal("again", client:transact("again", 1))
  end))

  if not helpers.windows then
    it_login("refuses a client from another login session", nt.wrap(function()
      local server = nt.serve(handlers("session_gate"), GATE)
      local pid, out = helpers.spawn(("%s%s %s/bin/npipe call %s hello --timeout 3"):format(
        helpers.login_prefix, helpers.lua, helpers.root, helpers.quote(server:path())))
      assert.truthy(helpers.wait_exit(pid, 4))
      assert.equal("refused: other session\n", helpers.read_file(out))
    end, 8))

    it("serves a client of its login session that setsid put in a POSIX session of its own", nt.wrap(function()
      local server = nt.serve(handlers("session_gate"), GATE)
      local pid, out = helpers.spawn(("setsid %s %s/bin/npipe call %s hello --timeout 3"):format(
        helpers.lua, helpers.root, helpers.quote(server:path())))
      assert.truthy(helpers.wait_exit(pid, 4))
      assert.equal("hello\n", helpers.read_file(out))
    end, 8))
  end
end)
