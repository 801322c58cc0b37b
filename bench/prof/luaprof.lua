-- Lua-level profile: which Lua functions execute the VM instructions (callgrind sees only
-- luaV_execute). A count hook fires every EVERY VM instructions and charges the function that
-- runs. debug.sethook's Lua hooks are per thread, so coroutine.create/wrap are wrapped (before
-- npipe is loaded) to hook every coroutine too: npipe's handler workers are counted.
--   lua5.4 bench/prof/luaprof.lua OUTFILE SCRIPT [ARGS...]
local out, script = arg[1], arg[2]
local EVERY = 97
local counts, getinfo = {}, debug.getinfo
local function hook()
  local info = getinfo(2, "S")
  if info then
    local k = info.short_src .. ":" .. info.linedefined
    counts[k] = (counts[k] or 0) + 1
  end
end
local function report()
  debug.sethook()
  local names = {}
  for k in pairs(counts) do names[#names + 1] = k end
  table.sort(names, function(a, b) return counts[a] > counts[b] end)
  local total = 0
  for _, k in ipairs(names) do total = total + counts[k] end
  local f = assert(io.open(out, "w"))
  f:write(("%d samples, one every %d VM instructions\n"):format(total, EVERY))
  for i = 1, math.min(20, #names) do
    local k = names[i]
    -- the first source line of the function, to name it
    local file, line = k:match("^(.*):(%d+)$")
    local text = ""
    local fh = io.open(file)
    if fh then
      local n = 0
      for l in fh:lines() do n = n + 1; if n == tonumber(line) then text = l:gsub("^%s+", ""); break end end
      fh:close()
    end
    f:write(("%5.1f%%  %-40s %s\n"):format(100 * counts[k] / total, k:gsub("^.*/lua/", "lua/"), text:sub(1, 70)))
  end
  f:close()
end
local args = {}
for i = 3, #arg do args[#args + 1] = arg[i] end
_G.arg = { [0] = script, table.unpack(args) }
local create = coroutine.create
coroutine.create = function(f)
  local co = create(f)
  debug.sethook(co, hook, "", EVERY)
  return co
end
coroutine.wrap = function(f)
  local co = coroutine.create(f)
  return function(...)
    local r = table.pack(coroutine.resume(co, ...))
    if not r[1] then error(r[2], 2) end
    return table.unpack(r, 2, r.n)
  end
end
-- The fast path's plain coroutines are made in C (lua_newthread) and registered through
-- sched.shared[5]: hook them there.
local shared = require("npipe.sched").shared
local register = shared[5]
shared[5] = function(co)
  debug.sethook(co, hook, "", EVERY)
  return register(co)
end
debug.sethook(hook, "", EVERY)
local ok, err = pcall(dofile, script)
report()
if not ok then io.stderr:write(tostring(err), "\n") os.exit(1) end
