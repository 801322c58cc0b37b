-- npipe inside another event loop: an npipe server on luv's own loop, next to a luv
-- timer, with no thread and no second loop. npipe.attach(uv, {share = true}) moves
-- npipe onto luv's loop; call it before creating servers. Where that cannot be (say,
-- luv uses another copy of libuv), npipe falls back to having luv poll npipe's loop,
-- a file descriptor (npipe.backend_fd()); MODE "poll" asks for that directly.
-- Run: lua5.4 examples/luv_host.lua [NAME] [SECONDS] [share|poll]
local uv = require("luv")
local npipe = require("npipe")

local name = arg[1] or "luv-host"
local seconds = tonumber(arg[2]) or 10

local detach, mode, why = npipe.attach(uv, { share = arg[3] ~= "poll" })
print("npipe on luv: " .. mode .. (why and (" (" .. why .. ")") or ""))

local server = assert(npipe.listen(name, { framing = "lines" }, {
  data = function(conn, line)
    npipe.sleep(0.01) -- npipe's timers work under the host loop too
    conn:write("echo: " .. line)
  end,
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

local stopper = uv.new_timer()
stopper:start(seconds * 1000, 0, function()
  server:close()
  detach()
  ticker:close()
  stopper:close()
end)
uv.run()
print("done after " .. ticks .. " luv ticks")
