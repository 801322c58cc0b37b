-- Request/reply: handlers.request, conn:transact (TransactNamedPipe) and npipe.call
-- (CallNamedPipe), from a plain script and from coroutines, with pipelining.
local npipe = require("npipe")
local helpers = require("helpers")

local function upper_server(opts)
  local name = helpers.name("req")
  local server = assert(npipe.listen(name, opts or { framing = "message" }, {
    request = function(_, msg)
      local delay = tonumber(msg:match("^sleep (%d+)"))
      if delay then npipe.sleep(delay / 1000) end
      if msg == "nothing" then return nil end
      return msg:upper()
    end,
  }))
  return server, name
end

describe("request/reply", function()
  it("answers transact from a plain script", function()
    local server, name = upper_server()
    local c = assert(npipe.connect(name, { framing = "message" }))
    for i = 1, 5 do assert.are.equal("HELLO " .. i, c:transact("hello " .. i, 2)) end
    c:disconnect()
    server:close()
  end)

  it("matches pipelined replies to their requests in order", function()
    local server, name = upper_server()
    local c = assert(npipe.connect(name, { framing = "message" }))
    local got, done = {}, 0
    -- the first request is the slowest: later ones are in flight behind it
    local requests = { "sleep 80 a", "sleep 10 b", "c", "sleep 30 d", "e" }
    for i, r in ipairs(requests) do
      npipe.spawn(function()
        got[i] = c:transact(r, 5)
        done = done + 1
      end)
    end
    assert.is_truthy(helpers.wait_until(function() return done == #requests end, 5))
    for i, r in ipairs(requests) do assert.are.equal(r:upper(), got[i]) end
    c:disconnect()
    server:close()
  end)

  it("disconnects after a transact timeout, so a late reply cannot answer the next request", function()
    local server, name = upper_server()
    local c = assert(npipe.connect(name, { framing = "message" }))
    local reply, err, code = c:transact("nothing", 0.2)
    assert.is_nil(reply)
    assert.are.equal("timeout", err)
    assert.are.equal("ETIMEDOUT", code)
    assert.is_false(c:is_open())
    server:close()
  end)

  it("npipe.call sends one message and returns one reply, in a coroutine too", function()
    local server, name = upper_server()
    assert.are.equal("PING", npipe.call(name, "ping", { timeout = 2 }))
    helpers.run(function()
      assert.are.equal("PONG", npipe.call(name, "pong", { timeout = 2 }))
    end)
    local reply, err, code = npipe.call(name, "nothing", { timeout = 0.3 })
    assert.is_nil(reply)
    assert.are.equal("timeout", err)
    assert.are.equal("ETIMEDOUT", code)
    server:close()
    reply, err = npipe.call(name, "x", { timeout = 0.2 })
    assert.is_nil(reply)
    assert.matches("cannot connect", err)
  end)

  it("works in lines framing too", function()
    local server, name = upper_server({ framing = "lines" })
    assert.are.equal("ABC", npipe.call(name, "abc", { framing = "lines", timeout = 2 }))
    server:close()
  end)
end)
