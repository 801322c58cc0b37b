-- Limits: what a server does with clients it cannot take now. At the descriptor limit
-- (EMFILE) they wait in the kernel's backlog and are served once descriptors are free;
-- at max_instances at most one waits in the backlog and the rest are told busy.
local npipe = require("npipe")
local helpers = require("helpers")

local q = helpers.quote
local FIX = "spec/fixtures/"
local ENV = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(package.path), q(package.cpath))

local function output(out) return helpers.read_file(out) or "" end

local function wait_output(out, pattern, seconds)
  helpers.wait_until(function() return output(out):match(pattern) end, seconds or 5)
  return output(out):match(pattern)
end

describe("limits #unix", function()
  describe("at the descriptor limit", function()
    local pids = {}
    after_each(function()
      for _, pid in ipairs(pids) do helpers.kill_tree(pid) end
      pids = {}
    end)

    -- A server child with 64 descriptors; returns the path it serves.
    local function limited_server(tag)
      local spid, sout = helpers.spawn(("exec prlimit --nofile=64 %s %s %s %s"):format(
        ENV, helpers.lua, q(FIX .. "limit_server.lua"), q(helpers.name(tag))))
      pids[#pids + 1] = spid
      local path = wait_output(sout, "ready (%S+)\n")
      assert(path, "the server did not start: " .. output(sout))
      return path
    end

    it("leaves waiting clients in the backlog and serves them once descriptors are free", function()
      -- a server with 64 descriptors, 200 real (Python) clients at once
      local path = limited_server("emfile")
      local cpid, cout = helpers.spawn(("exec timeout 30 python3 %s %s 200"):format(
        q(FIX .. "wave_clients.py"), q(path)))
      pids[#pids + 1] = cpid
      assert(wait_output(cout, "done\n", 25), "the clients did not finish: " .. output(cout))
      local text = output(cout)
      assert.are.equal("200", text:match("connected (%d+)"), text)
      local served1, reset1, waiting1 = text:match("first served (%d+) reset (%d+) waiting (%d+)")
      -- none reset: the server did not accept and drop anyone (libuv's EMFILE trick)
      assert.are.equal("0", reset1, text)
      -- the first wave took the descriptors there were; the rest waited
      assert.is_true(tonumber(served1) > 0 and tonumber(waiting1) > 0, text)
      -- once the first wave left, every waiting client was served
      local served, reset, waiting = text:match("final served (%d+) reset (%d+) waiting (%d+)")
      assert.are.same({ "200", "0", "0" }, { served, reset, waiting }, text)
      -- stats counts each of them once, and no refusal (the stats request is the 201st)
      local reply = assert(npipe.call(path, "stats", { framing = "lines", timeout = 5 }))
      assert.are.equal("stats accepted=201 active=1 rejected=0", reply)
    end)

    it("serves a waiting client once descriptors free elsewhere in the process", function()
      local path = limited_server("emfile2")
      local a = assert(npipe.connect(path, { framing = "lines", timeout = 5 }))
      assert.matches("^hogging %d+$", a:transact("hog", 5))
      -- no descriptor left for b: it waits in the backlog (its connect succeeds)
      local b = assert(npipe.connect(path, { framing = "lines", timeout = 5 }))
      assert(b:write("b waits"))
      local early, why = b:read(0.5)
      assert.is_nil(early)
      assert.are.equal("timeout", why) -- not "closed": it was not accepted and dropped
      -- files (no connection) close: the server finds out by trying again on its own
      assert.matches("^released %d+$", a:transact("release", 5))
      local t0 = npipe.now()
      assert.are.equal("b waits", b:read(3))
      assert.is_true(npipe.now() - t0 < 1)
      a:disconnect()
      b:disconnect()
      local reply = assert(npipe.call(path, "stats", { framing = "lines", timeout = 5 }))
      assert.are.equal("stats accepted=3 active=1 rejected=0", reply)
    end)
  end)

  describe("max_instances", function()
    it("lets at most one client wait beyond the limit, even when many connect before it is reached", function()
      local name = helpers.name("burst")
      local server
      server = assert(npipe.listen(name, { framing = "message", max_instances = 2 }, {
        data = function(conn, msg) conn:write(msg) end,
      }))
      finally(function() server:close() end)
      local N = 8
      local results, connected_open, worst = {}, 0, 0
      -- all N connect() calls are made here, before the loop runs and the server accepts
      for i = 1, N do
        npipe.spawn(function()
          local t0 = npipe.now()
          local c, err, code = npipe.connect(name, { framing = "message", timeout = 4 })
          if not c then
            results[i] = { err = err, code = code, after = npipe.now() - t0 }
            return
          end
          connected_open = connected_open + 1
          c:write("client " .. i)
          local reply, rerr = c:read(6)
          results[i] = { reply = reply, err = rerr, after = npipe.now() - t0 }
          npipe.sleep(0.2) -- holds its instance a while, then leaves
          connected_open = connected_open - 1
          c:disconnect()
        end)
      end
      -- clients whose connect succeeded but whom no instance serves (connected on the
      -- client side, not active on the server side), sampled through the run
      local stop = false
      npipe.spawn(function()
        while not stop do
          worst = math.max(worst, connected_open - server:stats().active)
          npipe.sleep(0.005)
        end
      end)
      helpers.wait_until(function()
        for i = 1, N do if not results[i] then return false end end
        return true
      end, 10)
      stop = true
      for i = 1, N do
        local r = results[i]
        assert.is_table(r, "client " .. i .. " has no result")
        -- each is served, or told busy/timeout within its own connect timeout
        if r.reply then
          assert.are.equal("client " .. i, r.reply)
        else
          assert.are.equal("ETIMEDOUT", r.code, tostring(r.err))
          assert.is_true(r.after < 4.5, r.after)
        end
      end
      assert.is_true(worst <= 1, worst .. " clients waited unseen beyond max_instances")
      assert.are.equal(N, server:stats().accepted)
    end)
  end)
end)
