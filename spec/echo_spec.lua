local npipe = require("npipe")
local helpers = require("helpers")

local function echo_server(framing, opts)
  opts = opts or {}
  opts.framing = framing
  local name = helpers.name("echo")
  local server = assert(npipe.listen(name, opts, {
    data = function(conn, msg) assert(conn:write(msg)) end,
  }))
  return server, name
end

describe("echo", function()
  for _, framing in ipairs({ "bytes", "lines", "message" }) do
    it("echoes in " .. framing .. " framing", function()
      local server, name = echo_server(framing)
      local c = assert(npipe.connect(name, { framing = framing }))
      if framing == "bytes" then
        assert(c:write("hello"))
        local got = ""
        while #got < 5 do got = got .. assert(c:read(2)) end
        assert.are.equal("hello", got)
      else
        for i = 1, 20 do
          assert(c:write("message " .. i))
          assert.are.equal("message " .. i, c:read(2))
        end
      end
      c:disconnect()
      server:close()
    end)
  end

  it("reassembles lines split across reads and splits many lines in one read", function()
    local server, name = echo_server("lines")
    local raw = assert(npipe.connect(name)) -- bytes framing: we write the wire form ourselves
    assert(raw:write("par"))
    npipe.sleep(0.02)
    assert(raw:write("tial\r\none\ntwo\nthree\n"))
    local got = ""
    while #got < #"partial\none\ntwo\nthree\n" do got = got .. assert(raw:read(2)) end
    assert.are.equal("partial\none\ntwo\nthree\n", got)
    raw:disconnect()
    server:close()
  end)

  it("reassembles messages split at every byte and splits many messages in one read", function()
    local server, name = echo_server("message")
    local raw = assert(npipe.connect(name))
    local wire = helpers.frame("first") .. helpers.frame("") .. helpers.frame(("x"):rep(300))
    for i = 1, #wire do
      assert(raw:write(wire:sub(i, i)))
      if i % 7 == 0 then npipe.sleep(0.001) end
    end
    local batch = {}
    for i = 1, 50 do batch[#batch + 1] = helpers.frame("m" .. i) end
    assert(raw:write(table.concat(batch)))
    local expect = wire .. table.concat(batch)
    local got = ""
    while #got < #expect do got = got .. assert(raw:read(2)) end
    assert.are.equal(expect, got)
    raw:disconnect()
    server:close()
  end)

  it("carries a 1 MiB message in message mode", function()
    local server, name = echo_server("message")
    local c = assert(npipe.connect(name, { framing = "message" }))
    local parts = {}
    for i = 1, 1024 do parts[i] = string.format("%08d", i) .. ("."):rep(1015) .. "\n" end
    local big = table.concat(parts)
    assert.are.equal(1024 * 1024, #big)
    helpers.run(function()
      assert(c:write(big))
      local echoed = assert(c:read(10))
      assert.are.equal(#big, #echoed)
      assert.is_true(echoed == big)
    end)
    c:disconnect()
    server:close()
  end)

  it("rejects an oversized message without harming other clients", function()
    local reasons = {}
    local name = helpers.name("big")
    local server = assert(npipe.listen(name, { framing = "message", max_message = 1000 }, {
      data = function(conn, msg) conn:write(msg) end,
      disconnect = function(conn, reason, code) reasons[conn:id()] = { reason, code } end,
    }))
    local good = assert(npipe.connect(name, { framing = "message" }))
    local bad = assert(npipe.connect(name, { framing = "message" }))
    assert(good:write("before"))
    assert.are.equal("before", good:read(2))
    assert(bad:write(("z"):rep(1001)))
    local m, err = bad:read(2)
    assert.is_nil(m)
    assert.are.equal("closed", err)
    assert(good:write("after"))
    assert.are.equal("after", good:read(2))
    helpers.wait_until(function() return next(reasons) end)
    local _, r = next(reasons)
    assert.are.equal("EMSGSIZE", r[2])
    assert.matches("message too large: 1001 bytes, the limit is 1000", r[1], 1, true)
    good:disconnect()
    server:close()
  end)

  it("rejects an oversized line", function()
    local reason
    local name = helpers.name("bigline")
    local server = assert(npipe.listen(name, { framing = "lines", max_message = 10 }, {
      data = function(conn, msg) conn:write(msg) end,
      disconnect = function(_, r) reason = r end,
    }))
    local c = assert(npipe.connect(name, { framing = "lines" }))
    assert(c:write("0123456789"))
    assert.are.equal("0123456789", c:read(2))
    assert(c:write("0123456789A"))
    local m, err = c:read(2)
    assert.is_nil(m)
    assert.are.equal("closed", err)
    helpers.wait_until(function() return reason end)
    assert.matches("line too large", reason)
    server:close()
  end)
end)
