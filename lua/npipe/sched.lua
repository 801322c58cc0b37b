-- The scheduler: runs every handler and spawned function in a pooled coroutine,
-- and turns "wait for an event" into a coroutine yield (inside npipe's coroutines)
-- or into driving the loop (from a plain script's main chunk). It owns each connection's
-- job queue (its handlers run one at a time, in order), the engine events' settling
-- (sched.event), timers, and whether npipe runs on a host's loop.
local core = require("npipe.core")

local coroutine_create, coroutine_resume = coroutine.create, coroutine.resume
local coroutine_running, coroutine_yield = coroutine.running, coroutine.yield
local coroutine_status = coroutine.status
local traceback = debug.traceback
local unpack = table.unpack or _G.unpack -- Lua 5.1 and LuaJIT
local select = select

local sched = {}

-- What a worker yields: its job ended (a light userdata, so that the C fast path can
-- recognise it without a lookup), or it waits.
local DONE, WAIT = core.DONE, {}
local is_worker = setmetatable({}, { __mode = "k" })
local owner_of = setmetatable({}, { __mode = "k" }) -- waiting worker -> the owner of its job
local parked = setmetatable({}, { __mode = "k" })   -- waiting worker -> the waiter it waits on
-- Idle workers kept at most (as many as src/lnpipe_fast.c keeps plain coroutines): a
-- burst of waiting jobs needs one each, and beyond this the collector takes them back.
local POOL_MAX = 256
local pool, npool = {}, 0
-- The C fast path (src/lnpipe_fast.c) runs a handler in a plain coroutine of its own
-- instead: the handler is its body, so the job ends when the coroutine does ("dead",
-- where a worker yields DONE). One that waited comes back here, and its end goes back
-- to C's pool (core.plain_give).
local plain_give = core.plain_give
-- State that the C fast path reads and writes too, so it lives in a table of integer
-- slots rather than in locals. The slot numbers are S_* there.
local S = {}
local CURRENT, RUNNABLE = 1, 2 -- and 5 .. 8 at the end: REGISTER, AFTER, ENDED, PUMP
S[RUNNABLE] = false
-- Waiters whose coroutine can go on, and owners with jobs that could not start
-- where they were queued. Two buffers each, swapped by pump, so pumping allocates nothing.
local ready, nready, ready_spare = {}, 0, {}
local pending, npending, pending_spare = {}, 0, {}
local spawned, nspawned = {}, 0 -- npipe.spawn from inside a job: {fn, a, b, c}, started by pump
local in_loop = 0
-- S[CURRENT]: the worker being resumed now, nil at top level. Cheaper than
-- coroutine.running() on every event; wait() still asks coroutine.running() to know
-- whom to suspend. S[RUNNABLE]: something may have become runnable since the last pump.

local function pack(...)
  return { n = select("#", ...), ... }
end

-- A worker runs one job after another. A job that raises kills its worker (the error
-- and traceback are taken from the dead coroutine), because Lua 5.1 cannot yield
-- across pcall and handlers must be able to wait.
local function worker(fn, a, b, c)
  while true do
    fn(a, b, c)
    fn, a, b, c = coroutine_yield(DONE)
  end
end

local function new_worker()
  local co = coroutine_create(worker)
  is_worker[co] = true
  return co
end

-- An error value as text, whatever it is: tostring runs a __tostring metamethod, which may
-- itself raise or return something else than a string.
local function describe(err)
  if type(err) == "string" then return err end
  local ok, s = pcall(tostring, err)
  if ok and type(s) == "string" then return s end
  return ("(a %s error value that cannot be turned into text: %s)"):format(
    type(err), ok and ("__tostring returned a " .. type(s)) or describe(s))
end
sched.describe = describe

local function report(what, err)
  io.stderr:write("npipe: ", what, ": ", describe(err), "\n")
end
sched.report = report

---- job queues ----

-- Each owner (a connection) runs its jobs one at a time, in the order they came. While
-- a job runs to its end without waiting, S[CURRENT] already makes every submit queue, so
-- a queue record is needed only while a job waits or jobs wait behind one: then sched
-- keeps it in owner._jobs (the one field of an owner that sched uses), and drops it
-- when the owner is idle again, so an idle connection costs nothing here. The record:
-- {busy = the waiting worker, n, head, tail, held}, with the jobs at [head .. tail].
-- Hooks, set once by the owners' module (sched.job_hooks):
--   pause, resume    the queue lengths at which the owner's input is held and released
--   hold(owner, on)  holds (true) or releases (false) the owner's input
--   on_failed(owner, err)  a job raised; may sched.clear the queue and sched.enqueue
local hooks

function sched.job_hooks(h) hooks = h end

local function record(owner)
  local q = owner._jobs
  if not q then
    q = { busy = false, n = 0, head = 1, tail = 0, held = false }
    owner._jobs = q
  end
  return q
end

-- The owner is idle (no job waits, none queued, input not held): forget its record.
local function forget_if_idle(owner, q)
  if q.n == 0 and not q.busy and not q.held then owner._jobs = nil end
end

-- While the queue is long the owner's input is held (nothing read, no frame delivered),
-- so it grows by at most one frame past the mark.
local function enqueue(owner, job)
  local q = record(owner)
  local tail = q.tail + 1
  q.tail = tail
  q[tail] = job
  local n = q.n + 1
  q.n = n
  if n >= hooks.pause and not q.held then
    q.held = true
    hooks.hold(owner, true)
  end
end

local function dequeue(owner)
  local q = owner._jobs
  if not q or q.n == 0 then return nil end
  local head = q.head
  local job = q[head]
  q[head] = nil
  q.head = head + 1
  q.n = q.n - 1
  if q.n <= hooks.resume and q.held then
    q.held = false
    -- Releasing may deliver kept frames at once: marked busy, they queue behind this job.
    local busy = q.busy
    q.busy = true
    hooks.hold(owner, false)
    q.busy = busy
  end
  if q.n == 0 then q.head, q.tail = 1, 0 end
  forget_if_idle(owner, q)
  return job
end

--- Makes the owner's queued jobs (not the one running) that would call from call to
-- instead: a server's handlers were swapped, and calls that have not started yet run the
-- new code (server:set_handlers).
function sched.retarget(owner, from, to)
  local q = owner._jobs
  if not q then return end
  for i = q.head, q.tail do
    local job = q[i]
    if job[1] == from then job[1] = to end
  end
end

--- Drops the owner's queued jobs (not the one running). The input stays as it is.
function sched.clear(owner)
  local q = owner._jobs
  if not q then return end
  for i = q.head, q.tail do q[i] = nil end
  q.n, q.head, q.tail = 0, 1, 0
  forget_if_idle(owner, q)
end

--- Whether one of the owner's jobs waits now (a job that runs to its end without
-- waiting is over before anything else can ask).
function sched.running(owner)
  local q = owner._jobs
  return q ~= nil and q.busy ~= false
end

local function has_jobs(owner)
  local q = owner._jobs
  return q ~= nil and q.n > 0
end

local function add_pending(owner)
  npending = npending + 1
  pending[npending] = owner
  S[RUNNABLE] = true
end

--- Queues a job behind the others without starting it now, even where sched.submit would.
function sched.enqueue(owner, fn, a, b, c)
  enqueue(owner, { fn, a, b, c })
  if not owner._jobs.busy then add_pending(owner) end
end

-- An owner's job ended: the next one may start.
local function job_over(owner)
  local q = owner._jobs
  if not q then return end
  q.busy = false
  if q.n > 0 then add_pending(owner) else forget_if_idle(owner, q) end
end

-- After a resume: the job ended, failed, or waits. owner: whose job it is (nil for a
-- spawned function).
local function finish(co, owner, ok, tag)
  if ok and tag == DONE then
    if npool < POOL_MAX then
      npool = npool + 1
      pool[npool] = co
    end
    if owner then job_over(owner) end
  elseif ok and coroutine_status(co) == "dead" then -- a plain coroutine's job ended
    plain_give(co)
    if owner then job_over(owner) end
  elseif not ok then
    is_worker[co] = nil
    local err = traceback(co, tag)
    if owner then
      job_over(owner)
      hooks.on_failed(owner, err)
      if has_jobs(owner) then add_pending(owner) end
    else
      sched.report("error in a spawned function", err)
    end
  else
    owner_of[co] = owner or false
    if owner then record(owner).busy = co end
  end
end

local function step(co, owner, ...)
  local prev = S[CURRENT]
  S[CURRENT] = co
  local ok, tag = coroutine_resume(co, ...)
  S[CURRENT] = prev
  finish(co, owner, ok, tag)
end

-- Starts fn(a, b, c) in a pooled worker for owner (nil: a spawned function). Top level only.
local function start(owner, fn, a, b, c)
  local co = pool[npool]
  if co then
    pool[npool] = nil
    npool = npool - 1
  else
    co = new_worker()
  end
  local prev = S[CURRENT]
  S[CURRENT] = co
  local ok, tag = coroutine_resume(co, fn, a, b, c)
  S[CURRENT] = prev
  finish(co, owner, ok, tag)
end

-- Runs an owner's jobs one after another until one waits or none is left.
local function run_queue(owner)
  while not sched.running(owner) do
    local job = dequeue(owner)
    if not job then break end
    start(owner, job[1], job[2], job[3], job[4])
  end
end

--- Queues a job for owner; starts it now when that is safe.
function sched.submit(owner, fn, a, b, c)
  if owner._jobs or S[CURRENT] then
    enqueue(owner, { fn, a, b, c })
    if not owner._jobs.busy then add_pending(owner) end
  else
    start(owner, fn, a, b, c)
  end
end

-- Lets everything that became runnable go on. Never from inside a worker.
local pumping = false
local function pump()
  if pumping then return end
  pumping = true
  while nready > 0 or npending > 0 or nspawned > 0 do
    S[RUNNABLE] = false
    local r, nr = ready, nready
    ready, nready, ready_spare = ready_spare, 0, r
    local p, np = pending, npending
    pending, npending, pending_spare = pending_spare, 0, p
    for i = 1, nr do
      local w = r[i]
      r[i] = nil
      local co = w.co
      -- only the wait the coroutine is parked on now (on Lua 5.1 a yield can fail,
      -- e.g. inside pcall, and leave a stale waiter behind)
      if parked[co] == w and coroutine_status(co) == "suspended" then
        parked[co] = nil
        local owner = owner_of[co]
        owner_of[co] = nil
        step(co, owner or nil, unpack(w.result, 1, w.result.n))
      end
    end
    for i = 1, np do
      local o = p[i]
      p[i] = nil
      run_queue(o)
    end
    local sp, ns = spawned, nspawned
    spawned, nspawned = {}, 0 -- rare: not worth a spare buffer
    for i = 1, ns do start(nil, sp[i][1], sp[i][2], sp[i][3], sp[i][4]) end
  end
  S[RUNNABLE] = false
  pumping = false
end
sched.pump = pump

-- Lets what became runnable go on, unless a job runs (it is let go on when that ends).
local function settle()
  if S[CURRENT] == nil and S[RUNNABLE] then pump() end
end

--- What the engine calls for an event (core.init): fn(...), then settle(). The engine
-- passes at most five arguments.
function sched.event(fn)
  return function(a, b, c, d, e)
    fn(a, b, c, d, e)
    if S[CURRENT] == nil and S[RUNNABLE] then pump() end
  end
end

-- For the C fast path (core.init's second argument), which starts jobs in plain
-- coroutines of its own:
S[5] = function(co) is_worker[co] = true end -- a new one
S[6] = function(co, owner, ok, tag) -- its job waits or raised
  finish(co, owner, ok, tag)
  settle()
end
S[7] = function(owner) -- its job ended, and something became runnable meanwhile
  job_over(owner)
  settle()
end
S[8] = pump
sched.shared = S

---- waiting ----

function sched.waiter()
  return { done = false }
end

function sched.wake(w, ...)
  if w.done then return end
  w.done = true
  w.result = pack(...)
  if w.co then
    nready = nready + 1
    ready[nready] = w
    S[RUNNABLE] = true
  end
end
local wake = sched.wake

-- True once npipe's handles live on a host's luv loop (npipe.attach with share): the
-- host runs that loop, and libuv forbids running a loop from inside its callbacks,
-- which is where anything but the host's main code runs.
local on_host_loop = false
--- npipe.attach (npipe.host) sets it when it moves npipe onto the host's loop.
function sched.set_host_loop(on) on_host_loop = on and true or false end
function sched.host_loop() return on_host_loop end
local HOST_LOOP_WAIT = "npipe: cannot wait here: npipe runs on the host's luv loop, which only the host may run;"
  .. " wait inside a handler or npipe.spawn"

local function drive(w)
  if on_host_loop then error(HOST_LOOP_WAIT, 3) end
  if in_loop > 0 then
    error("npipe: cannot wait here while the loop runs; wait inside a handler or npipe.spawn", 3)
  end
  in_loop = in_loop + 1
  local ok, err = pcall(function()
    while not w.done do
      pump()
      if w.done then break end
      local alive = core.run("once")
      if not alive and not w.done and nready == 0 and npending == 0 and nspawned == 0 then
        error("npipe: deadlock: waiting for an event with nothing left that could deliver it", 0)
      end
    end
  end)
  in_loop = in_loop - 1
  if not ok then error(err, 0) end
end

-- Waits until wake(w, ...) and returns what it was woken with.
function sched.wait(w)
  if not w.done then
    local co = coroutine_running()
    if co and is_worker[co] then
      w.co = co
      parked[co] = w
      coroutine_yield(WAIT)
    else
      drive(w)
    end
  end
  settle()
  return unpack(w.result, 1, w.result.n)
end
local wait = sched.wait

---- timers ----

local timer_fn = {}

-- The timer event (registered through sched.event).
function sched.on_timer(t)
  local fn = timer_fn[t]
  if fn then fn() end
end

-- Calls fn after seconds, once or (again) every seconds from then on; returns a cancel function.
local function timer(seconds, fn, again)
  local t = core.timer()
  local function cancel()
    if timer_fn[t] then
      timer_fn[t] = nil
      t:close()
    end
  end
  if again then
    timer_fn[t] = fn
    t:start(seconds * 1000, seconds * 1000)
  else
    timer_fn[t] = function() cancel(); fn() end
    t:start(seconds * 1000)
  end
  return cancel
end

-- Calls fn once after seconds; returns a cancel function.
function sched.after(seconds, fn) return timer(seconds, fn, false) end

-- wait(w), woken with (nil, "timeout", "ETIMEDOUT") when seconds pass first.
function sched.wait_for(w, seconds)
  if seconds == nil then return wait(w) end
  local cancel = sched.after(seconds, function() wake(w, nil, "timeout", "ETIMEDOUT") end)
  local r = pack(wait(w))
  cancel()
  return unpack(r, 1, r.n)
end

-- Calls fn every seconds (not in a coroutine: fn must not wait); returns a cancel function.
function sched.every(seconds, fn) return timer(seconds, fn, true) end

function sched.sleep(seconds)
  local w = sched.waiter()
  sched.after(seconds, function() wake(w) end)
  wait(w)
end

function sched.spawn(fn, ...)
  if select("#", ...) > 3 then
    local args = pack(...)
    return sched.spawn(function() fn(unpack(args, 1, args.n)) end)
  end
  local a, b, c = ...
  if S[CURRENT] then
    nspawned = nspawned + 1
    spawned[nspawned] = { fn, a, b, c }
    S[RUNNABLE] = true
  else
    start(nil, fn, a, b, c)
  end
end

function sched.run(mode)
  if on_host_loop then error("npipe.run: npipe runs on the host's luv loop; the host runs it", 2) end
  if S[CURRENT] then error("npipe.run: cannot run the loop from inside a handler", 2) end
  if in_loop > 0 then error("npipe.run: the loop is already running", 2) end
  in_loop = in_loop + 1
  pump()
  local ok, alive = pcall(core.run, mode or "default")
  pump()
  in_loop = in_loop - 1
  if not ok then error(alive, 0) end
  return alive
end

--- npipe.stop: ends npipe.run (or the wait that runs the loop) after this turn.
function sched.stop()
  if on_host_loop then error("npipe.stop: npipe runs on the host's luv loop; the host stops it", 2) end
  core.stop()
end

-- Whether npipe's own loop is being run now (npipe.run, a wait) or a job is running.
function sched.busy() return in_loop > 0 or S[CURRENT] ~= nil end

return sched
