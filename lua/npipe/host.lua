-- Running npipe from a host's luv loop (luv, Neovim's vim.loop, Luvit): npipe.attach
-- and npipe.loop_mode.
local core = require("npipe.core")
local sched = require("npipe.sched")
local check_type = require("npipe.args").check_type

local M = {}

local polls = 0 -- luv loops polling npipe's (at most one: luv polls a descriptor once)

-- A luv loop drives npipe's: npipe's loop is a file descriptor that the host polls, a
-- host timer wakes it for npipe's own timers, and a prepare handle gives it a turn
-- before the host blocks. That turn is what registers with npipe's loop the servers
-- and connections made since its last turn: until then their sockets are not in
-- the file descriptor's set and could not wake the host.
local function attach_polled(uv)
  if polls > 0 then return nil, "npipe's loop is already attached by polling", "EBUSY" end
  local poll = assert(uv.new_poll(core.backend_fd()))
  local timer, prepare = uv.new_timer(), uv.new_prepare()
  local step
  -- Wakes npipe when its next timer is due. Only while npipe's loop has something
  -- alive: an empty loop reports a timeout of 0, and a 0 ms host timer that re-arms
  -- itself would run again at once, for ever. At least 1 ms for the same reason.
  local function arm(alive)
    timer:stop()
    local ms = core.backend_timeout()
    if alive and ms >= 0 then timer:start(math.max(ms, 1), 0, step) end
  end
  step = function()
    -- a host loop run from inside an npipe handler (Neovim can) must not run npipe's again
    if not sched.busy() then arm(sched.run("nowait")) end
  end
  poll:start("r", step)
  prepare:start(step)
  polls = polls + 1
  local attached = true
  return function()
    if not attached then return end
    attached = false
    polls = polls - 1
    for _, h in ipairs({ poll, timer, prepare }) do
      h:stop()
      h:close()
    end
  end
end

-- npipe's handles move onto luv's own loop. nil and why when that cannot be.
local function share(uv)
  if sched.busy() then return nil, "npipe's own loop is running (attach from top-level code)" end
  if polls > 0 then return nil, "npipe's loop is already attached by polling (detach it first)" end
  local ok, why = core.share(uv.backend_fd(), uv.version())
  if not ok then return nil, why end
  sched.set_host_loop(true)
  return true
end

local function nothing() end

--- npipe.attach: lets a luv loop run npipe. Returns detach, mode, why.
-- With opts.share, npipe's servers, connections and timers go onto luv's own loop
-- (mode "shared"; detach then does nothing). Otherwise, or when sharing is refused (why
-- says why), luv polls npipe's loop (mode "polled") until detach() is called.
function M.attach(uv, opts)
  check_type("attach", 1, uv, "table")
  check_type("attach", 2, opts, "table", true)
  for k in pairs(opts or {}) do
    if k ~= "share" then error(("attach: unknown option '%s'"):format(tostring(k)), 2) end
  end
  if sched.host_loop() then
    -- polling a loop from inside itself would spin: a second attach gets the first one
    if uv.backend_fd() == core.backend_fd() then return nothing, "shared" end
    return nil, "npipe already runs on another luv loop", "EBUSY"
  end
  local why
  if opts and opts.share then
    local ok
    ok, why = share(uv)
    if ok then return nothing, "shared" end
  end
  local detach, err, code = attach_polled(uv)
  if not detach then return nil, err, code end
  return detach, "polled", why
end

--- npipe.loop_mode: how npipe's loop runs now: "shared" (on luv's loop), "polled" (a
-- luv loop polls npipe's own) or "own".
function M.loop_mode()
  if sched.host_loop() then return "shared" end
  return polls > 0 and "polled" or "own"
end

return M
