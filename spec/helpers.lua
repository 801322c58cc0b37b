-- Shared by the specs: unique pipe names, child processes, and small waits.
local npipe = require("npipe")

local helpers = {}

helpers.lua = os.getenv("NPIPE_LUA") or "lua5.4"
helpers.root = os.getenv("NPIPE_ROOT") or "."
helpers.tmp = os.getenv("NPIPE_SPEC_TMP") or ("/tmp/npipe-spec-" .. require("npipe.core").pid())
-- Windows (specs run under Wine by scripts/wine.sh): no shell there, and no socket files.
helpers.windows = package.config:sub(1, 1) == "\\"
if not helpers.windows then os.execute("mkdir -p " .. helpers.tmp) end

local counter = 0
function helpers.name(tag)
  counter = counter + 1
  return ("spec-%s-%d-%d"):format(tag or "t", require("npipe.core").pid(), counter)
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helpers.quote = shell_quote

-- Starts a shell command in the background; returns its pid and its output file.
function helpers.spawn(cmd)
  counter = counter + 1
  local out = ("%s/child-%d.out"):format(helpers.tmp, counter)
  local p = assert(io.popen(("%s > %s 2>&1 & echo $!"):format(cmd, out)))
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid, out
end

-- Runs a Lua script file (path relative to the root) with arguments, in the background.
function helpers.spawn_lua(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[#args + 1] = shell_quote(select(i, ...)) end
  return helpers.spawn(("exec %s %s %s"):format(helpers.lua, shell_quote(script), table.concat(args, " ")))
end

function helpers.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function helpers.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- A child that has exited but was not reaped (here they are re-parented to a PID 1
-- that does not reap) is a zombie: it counts as gone.
function helpers.alive(pid)
  local stat = helpers.read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- A login session of its own for a child, as a login gives one: root writes a uid to
-- /proc/self/loginuid and the kernel assigns the process a new audit session id, which its
-- children inherit and which setsid does not change. helpers.login_prefix goes before a
-- command (it execs the rest); helpers.login_skip is nil where that works, else why not
-- (not root, a kernel without audit, a loginuid made immutable).
helpers.login_prefix = "sh -c 'echo 1000 > /proc/self/loginuid && exec \"$@\"' login "
do
  local why
  if helpers.windows then
    why = "Windows has no /proc/self/loginuid"
  else
    local own = (helpers.read_file("/proc/self/sessionid") or ""):gsub("%s+$", "")
    local p = io.popen(helpers.login_prefix .. "cat /proc/self/sessionid 2>&1")
    local child = p and p:read("*a"):gsub("%s+$", "") or ""
    if p then p:close() end
    if own == "" then
      why = "this kernel keeps no /proc/self/sessionid"
    elseif not child:match("^%d+$") or child == "4294967295" or child == own then
      why = "cannot give a child a login session of its own by writing /proc/self/loginuid ("
        .. (child ~= "" and child or "no output") .. "; it needs root and an audit kernel)"
    end
  end
  helpers.login_skip = why
end

-- The login session id of a process as npipe reports it: /proc/PID/sessionid, 0 when
-- unset (4294967295) or missing.
function helpers.login_session_of(pid)
  local s = helpers.read_file("/proc/" .. tostring(pid) .. "/sessionid")
  local n = s and tonumber(s:match("%d+"))
  if not n or n == 4294967295 then return 0 end
  return n
end

-- The POSIX session of a process: field 6 of /proc/PID/stat.
function helpers.posix_session_of(pid)
  local stat = helpers.read_file("/proc/" .. tostring(pid) .. "/stat")
  return stat and tonumber(stat:match("^%d+ %b() %a %d+ %d+ (%d+)"))
end

-- Kills pid and its children (a wrapper such as timeout or sh -c and what it started).
function helpers.kill_tree(pid)
  -- procps (pkill, ps) deadlocks under the ASan runtime that the sanitizer run preloads
  os.execute(("env -u LD_PRELOAD pkill -KILL -P %d 2>/dev/null; kill -KILL %d 2>/dev/null"):format(pid, pid))
end

function helpers.kill(pid, sig)
  sig = tostring(sig or "TERM"):gsub("^SIG", "")
  os.execute(("kill -%s %d 2>/dev/null"):format(sig, pid))
end

-- Servers a test started; an after_each calling close_tracked_servers closes those a
-- failed test left open.
local open_servers = {}
function helpers.track_server(server)
  open_servers[#open_servers + 1] = server
  return server
end

function helpers.close_tracked_servers()
  for _, s in ipairs(open_servers) do if s:is_open() then s:close() end end
  open_servers = {}
end

-- A pipelined load on the lines connection c, for the specs that swap a server's code
-- under it: keeps window messages "1", "2", ... in flight, and keeps each reply "V N SEQ"
-- (V: the version that answered, N: a number of the spec's, SEQ: the message) in order as
-- {v, n, seq, text} in load.replies. A failed write or read goes to load.problems (a
-- failed read also ends the reading). load.stop() sends no more.
function helpers.version_load(c, window)
  local load = { sent = 0, got = 0, last_v = 0, replies = {}, problems = {} }
  local sending = true
  local function send()
    load.sent = load.sent + 1
    local ok, err = c:write(tostring(load.sent))
    if not ok then load.problems[#load.problems + 1] = "write failed: " .. tostring(err) end
  end
  for _ = 1, window do send() end
  npipe.spawn(function()
    while load.got < load.sent do
      local msg, err = c:read(10)
      if not msg then
        load.problems[#load.problems + 1] = "read failed: " .. tostring(err)
        return
      end
      local v, n, seq = msg:match("^(%d+) (%d+) (%d+)$")
      v = tonumber(v)
      load.got = load.got + 1
      load.replies[load.got] = { v = v, n = tonumber(n), seq = tonumber(seq), text = msg }
      load.last_v = math.max(load.last_v, v or 0)
      if sending then send() end
    end
  end)
  function load.stop() sending = false end
  return load
end

-- Polls cond (driving npipe's loop in between) until it is true or seconds pass.
function helpers.wait_until(cond, seconds)
  local deadline = npipe.now() + (seconds or 5)
  while npipe.now() < deadline do
    local v = cond()
    if v then return v end
    npipe.sleep(0.01)
  end
  return cond()
end

function helpers.wait_exit(pid, seconds)
  return helpers.wait_until(function() return not helpers.alive(pid) end, seconds)
end

-- Output of a shell command, without the trailing newline.
function helpers.capture(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("*a")
  p:close()
  return (s:gsub("%s+$", ""))
end

-- os.execute gives true on Lua 5.2+ and 0 on Lua 5.1/LuaJIT for success.
local function succeeded(r) return r == true or r == 0 end
helpers.succeeded = succeeded

-- The exit code of a command from what os.execute returned: Lua 5.2+ gives
-- (ok, "exit" or "signal", n), Lua 5.1 and LuaJIT the raw wait status. Death by a
-- signal counts as 128 + the signal number, as a shell reports it.
function helpers.exit_code(r, how, code)
  if type(r) == "number" then
    local sig = r % 128
    if sig ~= 0 then return 128 + sig end
    return math.floor(r / 256) % 256
  end
  if how == "exit" then return code end
  return 128 + code
end

-- How many times the plain text occurs in s.
function helpers.count(s, plain)
  local n, at = 0, 1
  while true do
    local i, j = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

-- table.pack, also on Lua 5.1 and LuaJIT.
function helpers.pack(...) return { n = select("#", ...), ... } end

function helpers.exists(path)
  return succeeded(os.execute("test -e " .. shell_quote(path)))
end

-- A 4-byte big-endian length prefix: the wire form of message framing.
function helpers.frame(msg)
  local n = #msg
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256) .. msg
end

-- Runs fn in an npipe coroutine and drives the loop until it returns; its error is
-- raised here. (Not pcall inside the coroutine: Lua 5.1 cannot yield across it.)
function helpers.run(fn, seconds)
  local sched = require("npipe.sched")
  local done, failure = false, nil
  local report = sched.report
  sched.report = function(what, err) failure = what .. ": " .. tostring(err) end
  npipe.spawn(function()
    fn()
    done = true
  end)
  helpers.wait_until(function() return done or failure end, seconds or 30)
  sched.report = report
  if failure then error(failure, 0) end
  assert(done, "spec body did not finish in time")
end

return helpers
