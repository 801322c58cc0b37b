-- Summarizes a callgrind profile for the report: top functions by inclusive and by self
-- instructions, with the process's start-up trunk (everything that encloses uv_run) folded away.
--   lua5.4 bench/prof/summarize.lua CALLGRIND_OUT [OPS]
-- Recursion levels ("f'2") stay apart for inclusive (each level's cost is then exact) and are
-- summed for self. "???:f" and "file.c:f" rows (instructions with and without line info) are merged.
local file, ops = arg[1], tonumber(arg[2])

local function annotate(inclusive)
  local cmd = ("callgrind_annotate --auto=no --inclusive=%s --threshold=100 '%s' 2>/dev/null"):format(
    inclusive and "yes" or "no", file)
  local rows, total = {}, nil
  local p = assert(io.popen(cmd))
  for line in p:lines() do
    local n, rest = line:match("^%s*([%d,]+)%s+%(%s*[%d.]+%%%)%s+(.*)$")
    if n then
      n = tonumber((n:gsub(",", "")))
      if rest:match("PROGRAM TOTALS") then
        total = n
      else
        local lib = rest:match("%[(.-)%]%s*$")
        rest = rest:gsub("%s*%[.-%]%s*$", "")
        local fn = rest:match("^.*:([^:]+)$") or rest
        local src = rest:match("^(.*):[^:]+$") or "???"
        if not fn:match("^<") then
          rows[#rows + 1] = { n = n, fn = fn, src = src, lib = lib and lib:match("([^/]+)$") }
        end
      end
    end
  end
  p:close()
  return rows, total
end

local function where(r)
  return ((r.lib or "?"):gsub("%.so[.%d]*$", ".so"))
end

local inc, total = annotate(true)
local self = annotate(false)

-- inclusive: merge ??? and file rows of the same function (and level) by max
local byname, order = {}, {}
for _, r in ipairs(inc) do
  local k = r.fn
  if not byname[k] then byname[k] = r; order[#order + 1] = k
  elseif r.n > byname[k].n then byname[k].n = r.n end
  byname[k].lib = byname[k].lib or r.lib
end
local uv_run = byname["uv_run"] and byname["uv_run"].n or total
local list = {}
for _, k in ipairs(order) do
  local r = byname[k]
  if r.n <= uv_run and not k:match("^0x") then list[#list + 1] = r end
end
table.sort(list, function(a, b) return a.n > b.n end)

local function pct(n) return ("%5.1f%%"):format(100 * n / total) end
local function per(n) return ops and ops > 0 and ("%8.0f"):format(n / ops) or "" end

print(("total: %s instructions%s"):format(total,
  ops and ops > 0 and (" for %d round trips = %.0f instructions per round trip (user space only)"):format(ops, total / ops) or ""))
print(("start-up and the enclosing call chain down to uv_run (main, npipe.run, pcall, ...): %s of the total is under uv_run"):format(pct(uv_run)))
-- What the issue's target is about: the cost of a round trip once running, which does not
-- depend on how many round trips a loaded machine let the run make (start-up does).
if ops and ops > 0 then
  print(("under uv_run (start-up excluded): %.0f instructions per round trip"):format(uv_run / ops))
end
local function print_top(title, rows)
  print("")
  print(title)
  print(("  %-44s %-16s %14s %7s %9s"):format("function", "in", "Ir", "share", ops and "per rt" or ""))
  for i = 1, math.min(15, #rows) do
    local r = rows[i]
    print(("  %-44s %-16s %14d %7s %9s"):format(r.fn, where(r), r.n, pct(r.n), per(r.n)))
  end
end
print_top("top 15 by inclusive instructions (under uv_run)", list)

-- self: sum recursion levels and ??? / file rows
local sums, sorder = {}, {}
for _, r in ipairs(self) do
  local k = r.fn:gsub("'%d+$", "")
  if not sums[k] then sums[k] = { n = 0, fn = k, lib = r.lib }; sorder[#sorder + 1] = k end
  sums[k].n = sums[k].n + r.n
  sums[k].lib = sums[k].lib or r.lib
end
local slist = {}
for _, k in ipairs(sorder) do slist[#slist + 1] = sums[k] end
table.sort(slist, function(a, b) return a.n > b.n end)
print_top("top 15 by self instructions (recursion levels summed)", slist)
