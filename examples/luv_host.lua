-- npipe inside another event loop: luv's loop drives an npipe server next to a luv
-- timer, with no thread. npipe's loop is a file descriptor (npipe.backend_fd()) that
-- becomes readable when npipe has work; each time, npipe.run("nowait") does it.
-- Run: lua5.4 examples/luv_host.lua [NAME] [SECONDS]
local uv = require("luv")
local npipe = require("npipe")

local name = arg[1] or "luv-host"
local seconds = tonumber(arg[2]) or 10

local server = assert(npipe.listen(name, { framing = "lines" }, {
  data = function(conn, line) conn:write("echo: " .. line) end,
}))
print("serving " .. server:path())
io.stdout:flush()

local ticks = 0
local ticker = uv.new_timer()
ticker:start(100, 100, function()
  ticks = ticks + 1
  if ticks % 10 == 0 then
    print("luv tick " .. ticks)
    io.stdout:flush()
  end
end)

-- npipe's timers (sleeps, timeouts) have no fd: a luv timer wakes npipe for them.
local wake = uv.new_timer()
local function step()
  npipe.run("nowait")
  local ms = npipe.backend_timeout()
  if ms >= 0 then wake:start(ms, 0, step) end
end
local poll = uv.new_poll(npipe.backend_fd())
poll:start("r", step)
step()

local stopper = uv.new_timer()
stopper:start(seconds * 1000, 0, function()
  server:close()
  poll:stop()
  for _, h in ipairs({ poll, wake, ticker, stopper }) do h:close() end
end)
uv.run()
print("done after " .. ticks .. " luv ticks")
