-- Ending connections: DisconnectNamedPipe from the server, the client going away,
-- server:close() (at once and with a drain), <close> variables and collected objects.
local npipe = require("npipe")
local helpers = require("helpers")

-- A Windows pipe has no file (its name lives while the server holds an instance):
-- there these checks are left out, and connecting tells instead.
local function assert_file(path, want)
  if not helpers.windows then assert.are.equal(want, helpers.exists(path)) end
end

-- table.pack, also on Lua 5.1 and LuaJIT
local function pack(...) return { n = select("#", ...), ... } end

-- with_close(value, body): body(v) inside `do local v <close> = value ... end`, where
-- the Lua version has to-be-closed variables (compiled from a string, so that this
-- file still loads on older Luas); nil elsewhere.
local with_close = (function()
  local src = "return function(value, body) do local v <close> = value; body(v) end end"
  local f = (rawget(_G, "loadstring") or load)(src)
  return f and f()
end)()

local track, close_leftovers = helpers.track_server, helpers.close_tracked_servers

-- A server that records its connections and its disconnect handler calls:
-- rec.conns (accept order), rec.calls[conn] = n, rec.list = { {conn, reason, code} ... }.
local function recording_server(opts, handlers)
  local rec = { calls = {}, list = {}, conns = {} }
  local name = helpers.name("disc")
  handlers = handlers or {}
  local user_connect, user_disconnect = handlers.connect, handlers.disconnect
  handlers.connect = function(conn)
    rec.conns[#rec.conns + 1] = conn
    if user_connect then user_connect(conn) end
  end
  handlers.disconnect = function(conn, reason, code)
    rec.calls[conn] = (rec.calls[conn] or 0) + 1
    rec.list[#rec.list + 1] = { conn = conn, reason = reason, code = code }
    if user_disconnect then user_disconnect(conn, reason, code) end
  end
  local server = track(assert(npipe.listen(name, opts or { framing = "message" }, handlers)))
  return server, name, rec
end

-- Every recorded connection saw exactly one disconnect call.
local function assert_once_each(rec)
  for _, conn in ipairs(rec.conns) do
    assert.are.equal(1, rec.calls[conn], "disconnect handler calls for " .. tostring(conn))
  end
end

-- Lets the loop run a little, so that a second (wrong) disconnect call would show up.
local function settle() npipe.sleep(0.1) end

local function assert_closed(conn, seconds)
  local m, err = conn:read(seconds or 2)
  assert.is_nil(m)
  assert.are.equal("closed", err)
end

describe("conn:disconnect() from the server", function()
  after_each(close_leftovers)

  it("the client reads what was sent before (Windows drops what it did not read), then nil, 'closed'", function()
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn, msg)
        assert(conn:write("last words for " .. msg))
        conn:disconnect()
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message" }))
    assert(c:write("you"))
    if not helpers.windows then -- DisconnectNamedPipe drops the bytes a client has not read
      assert.are.equal("last words for you", c:read(2))
    end
    assert_closed(c)
    assert_closed(c, 0.5) -- and keeps saying so
    assert.are.equal(1, #rec.conns)
    local s = rec.conns[1]
    assert.is_false(s:is_open())
    local reason, code = s:closed_reason()
    assert.are.equal("disconnected by the server", reason)
    assert.are.equal("DISCONNECTED", code)
    -- the disconnect handler, queued behind the data handler that disconnected, runs once
    assert.truthy(helpers.wait_until(function() return #rec.list > 0 end, 2))
    settle()
    assert.are.equal(1, #rec.list)
    assert_once_each(rec)
    assert.are.equal("disconnected by the server", rec.list[1].reason)
    assert.are.equal("DISCONNECTED", rec.list[1].code)
    server:close()
  end)

  it("the client's writes then fail with nil, message (not an error)", function()
    local server, name, rec = recording_server({ framing = "bytes" }, {
      connect = function(conn) conn:disconnect() end,
    })
    local c = assert(npipe.connect(name))
    assert.truthy(helpers.wait_until(function() return rec.conns[1] and not rec.conns[1]:is_open() end, 2))
    local ok, err
    local tries = 0
    for _ = 1, 200 do -- a write to a closed pipe may need a moment to see EPIPE
      tries = tries + 1
      ok, err = c:write("x")
      if not ok then break end
      npipe.sleep(0.01)
    end
    assert.is_nil(ok, "writes kept succeeding " .. tries .. " times")
    assert.is_string(err)
    assert.is_false(c:is_open())
    local ok2, err2, code2 = c:write("y") -- and keep failing
    assert.is_nil(ok2)
    assert.is_string(err2)
    assert.is_string(code2)
    assert.truthy(helpers.wait_until(function() return #rec.list > 0 end, 2))
    settle()
    assert.are.equal(1, #rec.list)
    assert.are.equal("DISCONNECTED", rec.list[1].code)
    server:close()
  end)

  it("with a reason: the connection is closed with that reason", function()
    local server, name, rec = recording_server({ framing = "lines" }, {
      data = function(conn, msg) conn:disconnect("custom: " .. msg) end,
    })
    local c = assert(npipe.connect(name, { framing = "lines" }))
    assert(c:write("go away"))
    assert_closed(c)
    local reason, code = rec.conns[1]:closed_reason()
    assert.are.equal("custom: go away", reason)
    assert.are.equal("DISCONNECTED", code)
    server:close()
  end)

  it("runs the disconnect handler once, with the default or the given reason", function()
    local server, name, rec = recording_server({ framing = "lines" }, {
      data = function(conn, msg)
        if msg == "default" then conn:disconnect() else conn:disconnect("custom: " .. msg) end
      end,
    })
    local a = assert(npipe.connect(name, { framing = "lines" }))
    assert(a:write("default"))
    assert_closed(a)
    local b = assert(npipe.connect(name, { framing = "lines" }))
    assert(b:write("go away"))
    assert_closed(b)
    assert.truthy(helpers.wait_until(function() return #rec.list >= 2 end, 2))
    settle()
    assert.are.equal(2, #rec.list)
    assert_once_each(rec)
    assert.are.equal("disconnected by the server", rec.list[1].reason)
    assert.are.equal("DISCONNECTED", rec.list[1].code)
    assert.are.equal("custom: go away", rec.list[2].reason)
    assert.are.equal("DISCONNECTED", rec.list[2].code)
    server:close()
  end)

  it("discards the messages the server had not read yet", function()
    local calls, seen = 0, {}
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn, msg)
        calls = calls + 1
        seen[#seen + 1] = msg
        npipe.sleep(0.1) -- slow: the other messages arrive and queue meanwhile
        if calls == 1 then conn:disconnect() end
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message" }))
    for i = 1, 100 do assert(c:write("m" .. i)) end
    assert_closed(c, 3)
    npipe.sleep(0.3) -- longer than a few more handler calls would take
    -- the test means something only if more than one message had reached the server
    local arrived = server:stats().messages_in
    assert.is_true(arrived > 1, "only " .. arrived .. " message(s) arrived")
    assert.are.equal(1, calls, "the data handler ran for: " .. table.concat(seen, ","))
    assert.are.equal("m1", seen[1])
    assert.are.equal(1, #rec.list)
    assert.are.equal("DISCONNECTED", rec.list[1].code)
    server:close()
  end)

  it("is idempotent; write and flush afterwards return nil, message, code", function()
    local results
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn)
        local r = {}
        r.first = pack(conn:disconnect())
        r.second = pack(conn:disconnect())
        r.third = pack(conn:disconnect("another reason"))
        r.write = pack(pcall(conn.write, conn, "after"))
        r.flush = pack(pcall(conn.flush, conn))
        r.open = conn:is_open()
        results = r
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message" }))
    assert(c:write("x"))
    assert.truthy(helpers.wait_until(function() return results ~= nil end, 2))
    assert.is_true(results.first[1])
    assert.is_true(results.second[1])
    assert.is_true(results.third[1])
    for _, what in ipairs({ "write", "flush" }) do
      local r = results[what]
      assert.is_true(r[1], what .. " raised: " .. tostring(r[2]))
      assert.is_nil(r[2], what .. " after disconnect succeeded")
      assert.is_string(r[3], what .. " gave no message")
      assert.is_string(r[4], what .. " gave no code")
    end
    assert.is_false(results.open)
    -- the later calls did not change how it ended
    assert.are.equal("disconnected by the server", (rec.conns[1]:closed_reason()))
    assert_closed(c)
    assert.truthy(helpers.wait_until(function() return #rec.list > 0 end, 2))
    settle()
    assert.are.equal(1, #rec.list)
    assert.are.equal("disconnected by the server", rec.list[1].reason)

    -- the same on the client side
    local c2 = assert(npipe.connect(name, { framing = "message" }))
    assert.is_true(c2:disconnect())
    assert.is_true(c2:disconnect())
    assert.is_false(c2:is_open())
    local ok, err, code = c2:write("late")
    assert.is_nil(ok)
    assert.is_string(err)
    assert.is_string(code)
    ok, err, code = c2:flush(1)
    assert.is_nil(ok)
    assert.is_string(err)
    assert.is_string(code)
    assert_closed(c2, 1)
    server:close()
  end)
end)

describe("the disconnect handler", function()
  after_each(close_leftovers)

  it("runs once when the client goes away (EOF)", function()
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    })
    local c = assert(npipe.connect(name, { framing = "message" }))
    assert(c:write("ping"))
    assert.are.equal("ping", c:read(2))
    assert.is_true(c:disconnect())
    assert.is_false(c:is_open())
    assert.truthy(helpers.wait_until(function() return #rec.list > 0 end, 2))
    settle()
    assert.are.equal(1, #rec.list)
    assert_once_each(rec)
    assert.are.equal("EOF", rec.list[1].code)
    assert.are.equal(0, #server:connections())
    server:close()
    settle()
    assert.are.equal(1, #rec.list) -- closing the server does not end it a second time
  end)

  it("runs once per connection when server:close() ends them", function()
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    })
    local clients = {}
    for i = 1, 3 do
      clients[i] = assert(npipe.connect(name, { framing = "message" }))
      assert(clients[i]:write("hi " .. i))
      assert.are.equal("hi " .. i, clients[i]:read(2))
    end
    assert.are.equal(3, #server:connections())
    assert.is_true(server:close())
    for i = 1, 3 do assert_closed(clients[i]) end
    assert.truthy(helpers.wait_until(function() return #rec.list >= 3 end, 2))
    settle()
    assert.are.equal(3, #rec.list)
    assert.are.equal(3, #rec.conns)
    assert_once_each(rec)
    for _, r in ipairs(rec.list) do assert.are.equal("SERVER_CLOSED", r.code) end
    assert.is_true(server:close()) -- a second close is harmless
    settle()
    assert.are.equal(3, #rec.list)
  end)
end)

describe("server:close()", function()
  after_each(close_leftovers)

  it("removes the socket file, and the name can be listened on again", function()
    local server, name = recording_server({ framing = "message" }, {
      data = function(conn, msg) conn:write("first " .. msg) end,
    })
    local path = server:path()
    assert.are.equal(npipe.path(name), path)
    assert_file(path, true)
    assert.is_true(server:is_open())
    server:close()
    assert.is_false(server:is_open())
    assert_file(path, false)
    local c, err = npipe.connect(name)
    assert.is_nil(c)
    assert.is_string(err)

    local again = track(assert(npipe.listen(name, { framing = "message" }, {
      data = function(conn, msg) conn:write("second " .. msg) end,
    })))
    assert_file(path, true)
    local c2 = assert(npipe.connect(name, { framing = "message" }))
    assert(c2:write("hello"))
    assert.are.equal("second hello", c2:read(2))
    c2:disconnect()
    again:close()
    assert_file(path, false)
  end)

  it("with a drain lets a finishing connection finish before returning", function()
    local started, finished, file_during
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn)
        started = true
        npipe.sleep(0.2)
        file_during = not helpers.windows and helpers.exists(conn:server():path())
        finished = true
        conn:disconnect("finished")
      end,
    })
    local c = assert(npipe.connect(name, { framing = "message" }))
    assert(c:write("work"))
    assert.truthy(helpers.wait_until(function() return started end, 2))
    local t0 = npipe.now()
    assert.is_true(server:close({ drain = 5 }))
    local took = npipe.now() - t0
    assert.is_true(finished, "close returned before the handler finished")
    assert.is_false(file_during) -- the socket file goes at once: no new clients while draining
    local reason, code = rec.conns[1]:closed_reason()
    assert.are.equal("finished", reason)
    assert.are.equal("DISCONNECTED", code)
    -- it returned when the last connection ended, not at the end of the drain time
    assert.is_true(took < 4, ("close took %.2f s"):format(took))
    assert_closed(c, 1)
    assert.truthy(helpers.wait_until(function() return #rec.list > 0 end, 2))
    settle()
    assert.are.equal(1, #rec.list)
    assert.are.equal("finished", rec.list[1].reason)
  end)

  it("with a drain disconnects the connections still open after the drain time", function()
    local finished, busy_conn
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn, msg)
        if msg == "work" then
          busy_conn = conn
          npipe.sleep(0.2)
          finished = true
          conn:disconnect("finished")
        end
      end,
    })
    local busy = assert(npipe.connect(name, { framing = "message" }))
    local idle = assert(npipe.connect(name, { framing = "message" }))
    assert.truthy(helpers.wait_until(function() return #rec.conns == 2 end, 2))
    assert(busy:write("work"))
    npipe.sleep(0.05)
    local t0 = npipe.now()
    assert.is_true(server:close({ drain = 1 }))
    local took = npipe.now() - t0
    assert.is_true(finished)
    assert.is_true(took >= 0.9, ("close returned after %.2f s, before the drain time"):format(took))
    local idle_conn = rec.conns[1] == busy_conn and rec.conns[2] or rec.conns[1]
    assert.are_not.equal(busy_conn, idle_conn)
    local r1, c1 = busy_conn:closed_reason()
    local r2, c2 = idle_conn:closed_reason()
    assert.are.equal("finished", r1)
    assert.are.equal("DISCONNECTED", c1)
    assert.is_string(r2)
    assert.are.equal("SERVER_CLOSED", c2)
    assert_closed(idle, 1)
    assert_closed(busy, 1)
    assert.truthy(helpers.wait_until(function() return #rec.list == 2 end, 2))
    settle()
    assert.are.equal(2, #rec.list)
    assert_once_each(rec)
    assert.are.equal(busy_conn, rec.list[1].conn)
    assert.are.equal("finished", rec.list[1].reason)
    assert.are.equal(idle_conn, rec.list[2].conn)
    assert.are.equal("SERVER_CLOSED", rec.list[2].code)
  end)
end)

describe("object lifetime", function()
  after_each(close_leftovers)

  it("a <close> server is closed at the end of its block", function()
    if not with_close then pending("needs Lua 5.4 to-be-closed variables") end
    local name = helpers.name("tbc")
    local path, ref
    with_close(track(assert(npipe.listen(name, { framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    }))), function(s)
      ref, path = s, s:path()
      assert_file(path, true)
      local c = assert(npipe.connect(name, { framing = "message" }))
      assert(c:write("inside"))
      assert.are.equal("inside", c:read(2))
      c:disconnect()
      assert.is_true(s:is_open())
    end)
    assert.is_false(ref:is_open())
    assert_file(path, false)
    local c, err = npipe.connect(name)
    assert.is_nil(c)
    assert.is_string(err)
  end)

  it("a <close> connection is disconnected at the end of its block", function()
    if not with_close then pending("needs Lua 5.4 to-be-closed variables") end
    local server, name, rec = recording_server({ framing = "message" })
    local ref
    with_close(assert(npipe.connect(name, { framing = "message" })), function(c)
      ref = c
      assert.truthy(helpers.wait_until(function() return #rec.conns == 1 end, 2))
      assert.is_true(c:is_open())
    end)
    assert.is_false(ref:is_open())
    assert.truthy(helpers.wait_until(function() return #rec.list == 1 end, 2))
    assert.are.equal("EOF", rec.list[1].code)
    server:close()
  end)

  it("a client connection dropped and collected is closed: the server sees it go", function()
    local server, name, rec = recording_server({ framing = "message" }, {
      data = function(conn, msg) conn:write(msg) end,
    })
    local probe = setmetatable({}, { __mode = "k" })
    -- in a function of its own, so that no stack slot keeps the connection alive
    local function use_and_drop()
      local c = assert(npipe.connect(name, { framing = "message" }))
      probe[c] = true
      assert(c:write("hello"))
      assert.are.equal("hello", c:read(2))
    end
    collectgarbage("stop") -- so that the connection goes when this test says
    finally(function() collectgarbage("restart") end)
    use_and_drop()
    assert.truthy(helpers.wait_until(function() return #rec.conns == 1 end, 2))
    settle()
    assert.are.equal(0, #rec.list) -- not before it is collected
    collectgarbage("restart")
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(probe), "the connection object was not collected")
    assert.truthy(helpers.wait_until(function() return #rec.list == 1 end, 2))
    settle()
    assert.are.equal(1, #rec.list)
    assert.are.equal("EOF", rec.list[1].code)
    assert.are.equal(0, #server:connections())
    server:close()
  end)
end)
