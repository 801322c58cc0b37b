-- Edge cases from review (issue 10): names with a NUL byte, error values that cannot
-- be turned into text, stats after close, the single try of connect{timeout = 0}, and
-- the npipe command with stdin closed or a framing other than the server's.
local npipe = require("npipe")
local helpers = require("helpers")

local q = helpers.quote
local NPIPE = ("%s %s"):format(helpers.lua, q(helpers.root .. "/bin/npipe"))
local ENV = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(package.path), q(package.cpath))

-- A value whose __tostring raises.
local function untextable()
  return setmetatable({}, { __tostring = function() error("__tostring raised") end })
end

-- Runs fn with io.stderr replaced by a recorder; returns what was written to it.
local function capture_stderr(fn)
  local real, written = io.stderr, {}
  io.stderr = { write = function(self, ...) -- luacheck: ignore 122
    for i = 1, select("#", ...) do written[#written + 1] = tostring((select(i, ...))) end
    return self
  end }
  local ok, err = pcall(fn)
  io.stderr = real -- luacheck: ignore 122
  if not ok then error(err, 0) end
  return table.concat(written)
end

describe("names with a NUL byte", function()
  it("are refused by listen, connect, call and path instead of being cut at the NUL #unix", function()
    local base = helpers.name("nul")
    local bad = base .. "\0tail"
    local s, err, code = npipe.listen(bad, { framing = "message" }, { data = function() end })
    if s then s:close() end
    assert.is_nil(s)
    assert.are.equal("EINVAL", code)
    assert.matches("invalid pipe name: it contains a NUL byte (at byte " .. (#base + 1) .. ")", err, 1, true)
    assert.is_false(helpers.exists(npipe.path(base))) -- nothing was served under the cut name
    for _, try in ipairs({
      function() return npipe.connect(bad, { timeout = 0.1 }) end,
      function() return npipe.call(bad, "hi", { timeout = 0.1 }) end,
      function() return npipe.path(bad) end,
      function() return npipe.path("/tmp/x\0y") end,
    }) do
      local v, e, c = try()
      assert.is_nil(v)
      assert.are.equal("EINVAL", c)
      assert.matches("NUL byte", e, 1, true)
    end
  end)
end)

describe("an error value whose __tostring raises", function()
  for _, with_error_handler in ipairs({ false, true }) do
    it("still ends its connection" .. (with_error_handler and " (error handler)" or ""), function()
      local name = helpers.name("tostr")
      local ends, handled = {}, {}
      local handlers = {
        data = function(_, msg)
          if msg == "bad" then error(untextable()) end
          error("plain " .. msg)
        end,
        disconnect = function(conn, reason, code) ends[conn:id()] = { reason = reason, code = code } end,
      }
      if with_error_handler then handlers.error = function(_, err) handled[#handled + 1] = err end end
      local server = assert(npipe.listen(name, { framing = "message" }, handlers))
      finally(function() server:close() end)
      local stderr = capture_stderr(function()
        local c = assert(npipe.connect(name, { framing = "message" }))
        assert(c:write("bad"))
        local reply, why, code = c:read(2)
        assert.is_nil(reply)
        assert.are.equal("closed", why, "the connection stayed open") -- not "timeout"
        assert.are.equal("EOF", code)
        -- the server goes on serving, and a second failing connection also ends
        local c2 = assert(npipe.connect(name, { framing = "message" }))
        assert(c2:write("again"))
        assert.are.equal("closed", select(2, c2:read(2)))
      end)
      assert.is_true(helpers.wait_until(function()
        local n = 0
        for _ in pairs(ends) do n = n + 1 end
        return n == 2
      end, 2))
      local first
      for _, e in pairs(ends) do
        assert.are.equal("EHANDLER", e.code)
        if not e.reason:match("plain again") then first = e end
      end
      assert.is_table(first)
      assert.matches("handler error: (a table error value that cannot be turned into text", first.reason, 1, true)
      if with_error_handler then
        assert.are.equal(2, #handled)
      else
        assert.matches("npipe: handler error on connection #%d+: %(a table error value", stderr)
      end
      assert.is_nil(stderr:match("internal error"), stderr)
    end)
  end

  it("is reported by npipe.spawn as text", function()
    local stderr = capture_stderr(function()
      npipe.spawn(function() error(untextable()) end)
      npipe.sleep(0)
    end)
    assert.matches("npipe: error in a spawned function: (a table error value that cannot be turned into text: ",
                   stderr, 1, true)
  end)
end)

describe("server:stats() after close", function()
  it("gives the same figures at every call", function()
    local name = helpers.name("stats")
    local server = assert(npipe.listen(name, { framing = "message", allow = function() return false, "no" end },
                                       { data = function() end }))
    local c = npipe.connect(name, { framing = "message" })
    assert.is_true(helpers.wait_until(function() return server:stats().rejected == 1 end, 2))
    if c then c:disconnect() end
    server:close()
    local first = server:stats()
    assert.are.equal(1, first.rejected)
    for _ = 1, 3 do
      local again = server:stats()
      assert.are.equal(1, again.rejected)
      assert.are.same(first, again)
    end
  end)
end)

describe("connect{timeout = 0}", function()
  it("makes one try and says what that try answered", function()
    local name = helpers.name("t0")
    local c, err, code = npipe.connect(name, { timeout = 0 })
    assert.is_nil(c)
    assert.are.equal("ETIMEDOUT", code)
    assert.matches("no server answered within 0 s (", err, 1, true)
    assert.matches("ENOENT", err, 1, true)
  end)
end)

describe("the npipe command #unix", function()
  local pids = {}
  after_each(function()
    for _, pid in ipairs(pids) do helpers.kill_tree(pid) end
    pids = {}
  end)

  local function exit_status(out)
    return helpers.wait_until(function() return (helpers.read_file(out) or ""):match("exit status (%d+)") end, 8)
  end

  local function serve(framing)
    local name = helpers.name("cli10")
    local pid, out = helpers.spawn(("exec %s %s serve --name %s --framing %s"):format(ENV, NPIPE, q(name), framing))
    pids[#pids + 1] = pid
    assert(helpers.wait_until(function() return (helpers.read_file(out) or ""):match("serving") end, 5),
           "the server did not start: " .. tostring(helpers.read_file(out)))
    return name
  end

  it("connect with stdin closed ends at once instead of waiting for ever", function()
    local name = serve("lines")
    local pid, out = helpers.spawn(("{ %s timeout 10 %s connect %s --linger 0.1 <&-; echo \"exit status $?\"; }")
      :format(ENV, NPIPE, q(name)))
    pids[#pids + 1] = pid
    local status = exit_status(out)
    assert.are.equal("0", status, helpers.read_file(out))
  end)

  it("call with a framing other than the server's says which framing it used", function()
    local name = serve("message")
    local pid, out = helpers.spawn(("{ %s %s call %s whoami --timeout 3; echo \"exit status $?\"; }")
      :format(ENV, NPIPE, q(name)))
    pids[#pids + 1] = pid
    local status = exit_status(out)
    local text = helpers.read_file(out) or ""
    assert.are.equal("1", status, text)
    assert.matches("closed the pipe without replying", text, 1, true)
    assert.matches("this call used lines framing; if the server's framing differs", text, 1, true)
  end)
end)
