-- server:set_handlers: a server's handlers swapped while it serves (what `npipe serve`'s
-- reload does; cli_spec.lua tests that). A call in progress finishes on the old code;
-- every call that starts later, for every connection, runs the new code.
local npipe = require("npipe")
local helpers = require("helpers")

local wait_until = helpers.wait_until

local function listen(name, opts, handlers)
  return helpers.track_server(assert(npipe.listen(name, opts, handlers)))
end

local function connect(name)
  return assert(npipe.connect(name, { framing = "lines", timeout = 5 }))
end

describe("server:set_handlers", function()
  after_each(helpers.close_tracked_servers)

  it("raises for a wrong argument type, as listen does", function()
    local server = listen(helpers.name("sh-arg"), { framing = "lines" }, { data = function() end })
    for _, bad in ipairs({ 42, "data", true, false }) do
      local ok, err = pcall(server.set_handlers, server, bad)
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'set_handlers' (table expected, got " .. type(bad) .. ")", err, 1, true)
    end
    local ok, err = pcall(server.set_handlers, server)
    assert.is_false(ok)
    assert.matches("(table expected, got nil)", err, 1, true)
    assert.is_true(server:set_handlers(function() end)) -- a function is fine, as for listen
  end)

  it("lets a call in progress finish on the old code; queued and later calls of open connections run the new",
    function()
      local release = false
      local function version(v)
        return {
          data = function(conn, msg)
            if msg == "slow" then wait_until(function() return release end, 10) end
            conn:write(v .. " " .. msg)
          end,
        }
      end
      local name = helpers.name("sh-swap")
      local server = listen(name, { framing = "lines" }, version("v1"))
      local c, idle = connect(name), connect(name)
      assert(c:write("a"))
      assert.are.equal("v1 a", c:read(5))
      assert(idle:write("b"))
      assert.are.equal("v1 b", idle:read(5))
      assert(c:write("slow"))
      assert(c:write("queued1"))
      assert(c:write("queued2"))
      -- the server has all three; the two behind the slow call wait in the connection's queue
      assert(wait_until(function() return server:stats().messages_in >= 5 end), "the frames did not arrive")
      server:set_handlers(version("v2"))
      release = true
      assert.are.equal("v1 slow", c:read(5))
      assert.are.equal("v2 queued1", c:read(5))
      assert.are.equal("v2 queued2", c:read(5))
      assert(c:write("later"))
      assert.are.equal("v2 later", c:read(5))
      -- a connection that was open and idle during the swap
      assert(idle:write("c"))
      assert.are.equal("v2 c", idle:read(5))
      c:disconnect()
      idle:disconnect()
    end)

  it("gives open connections the new connect, eof and disconnect handlers, and new ones the new code", function()
    local rec = {}
    local function version(v)
      return {
        connect = function(conn) conn:write("hello " .. v) end,
        data = function(conn, msg) conn:write(v .. " " .. msg) end,
        eof = function() rec.eof = v end,
        disconnect = function() rec.disconnect = v end,
      }
    end
    local name = helpers.name("sh-events")
    local server = listen(name, { framing = "lines" }, version("v1"))
    local c = connect(name)
    assert.are.equal("hello v1", c:read(5))
    server:set_handlers(version("v2"))
    assert(c:write("x"))
    assert.are.equal("v2 x", c:read(5))
    c:disconnect()
    assert(wait_until(function() return rec.disconnect end), "no disconnect handler ran")
    assert.are.equal("v2", rec.eof)
    assert.are.equal("v2", rec.disconnect)
    local c2 = connect(name)
    assert.are.equal("hello v2", c2:read(5))
    c2:disconnect()
    -- a function: a coroutine per new connection, as listen takes it
    server:set_handlers(function(conn) conn:write("function") end)
    local c3 = connect(name)
    assert.are.equal("function", c3:read(5))
    local msg, err = c3:read(5)
    assert.is_nil(msg)
    assert.are.equal("closed", err) -- the function returned: the connection ended
  end)

  it("runs the new eof handler for an EOF that came while a call of the old code waited", function()
    local release, rec, server_end = false, {}, nil
    local function version(v)
      return {
        data = function(conn)
          server_end = conn
          wait_until(function() return release end, 10)
        end,
        eof = function() rec.eof = v end,
      }
    end
    local name = helpers.name("sh-queued-eof")
    local server = listen(name, { framing = "lines" }, version("v1"))
    local c = connect(name)
    assert(c:write("slow"))
    assert(wait_until(function() return server_end end), "the data handler did not start")
    c:disconnect()
    -- the EOF has come; its eof call waits behind the slow one
    assert(wait_until(function() return server_end:input_ended() end), "the server did not see the EOF")
    assert.is_nil(rec.eof)
    server:set_handlers(version("v2"))
    release = true
    assert(wait_until(function() return rec.eof end), "no eof handler ran")
    assert.are.equal("v2", rec.eof)
  end)

  it("keeps every message of one connection through 100 swaps under load, each run by the handlers then in force",
    function()
      local current = 1 -- the version set_handlers last installed
      local waiting = 0 -- calls that wait now
      local function version(v)
        return {
          data = function(conn, msg)
            local at = current -- in force when this call started
            -- every third call waits a little: the messages behind it queue, and the swaps
            -- below land while they do
            if tonumber(msg) % 3 == 0 then
              waiting = waiting + 1
              npipe.sleep(0.002)
              waiting = waiting - 1
            end
            conn:write(("%d %d %s"):format(v, at, msg))
          end,
        }
      end
      local name = helpers.name("sh-load")
      local server = listen(name, { framing = "lines" }, version(1))
      local c = connect(name)
      local WINDOW = 16 -- messages in flight
      local load = helpers.version_load(c, WINDOW) -- replies "v at seq"
      local problems = load.problems
      for k = 1, 101 do
        if k > 1 then
          -- while a call waits (and those behind it are queued), where the test can tell
          wait_until(function() return waiting > 0 end, 2)
          current = k
          server:set_handlers(version(k))
        end
        assert(wait_until(function() return load.last_v >= k or #problems > 0 end, 10), "no reply of version " .. k)
        assert.are.same({}, problems)
      end
      load.stop()
      assert(wait_until(function() return load.got == load.sent or #problems > 0 end, 10), "replies are missing")
      assert.are.same({}, problems)
      assert.is_true(load.sent >= 100 + WINDOW)
      local seen, prev = {}, 0
      for i, r in ipairs(load.replies) do
        assert.are.equal(i, r.seq, "reply " .. i .. " is for another message") -- none lost, in order
        assert.are.equal(r.n, r.v, "message " .. i .. " ran on version " .. tostring(r.v)
          .. " while " .. tostring(r.n) .. " was in force")
        assert.is_true(r.v >= prev, "message " .. i .. " ran on an older version than the one before")
        if r.v ~= prev then seen[#seen + 1] = r.v end
        prev = r.v
      end
      local all = {}
      for k = 1, 101 do all[k] = k end
      assert.are.same(all, seen) -- each version in turn, none skipped
      assert.is_true(c:is_open())
      assert.are.equal(1, server:stats().accepted)
      c:disconnect()
    end)
end)
