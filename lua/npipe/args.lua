-- Argument checks of npipe's public functions (programming errors raise, pointing at
-- the caller of the public function) and the options that listen, connect and open_fd share.
local args = {}

args.DEFAULTS = {
  framing = "bytes",
  max_message = 1024 * 1024,
  high_water = 1024 * 1024,
  mode = "0600",
  backlog = 511,
  linger = 5,
}

function args.check_type(fname, n, value, want, optional)
  if (optional and value == nil) or type(value) == want then return end
  error(("bad argument #%d to '%s' (%s expected, got %s)"):format(n, fname, want, type(value)), 3)
end
local check_type = args.check_type

function args.check_timeout(fname, n, t)
  if t == nil then return end
  if type(t) ~= "number" or t < 0 then
    error(("bad argument #%d to '%s' (timeout must be a non-negative number of seconds)"):format(n, fname), 3)
  end
end

-- opts over the defaults; known: the option names fname takes.
function args.options(fname, opts, known)
  check_type(fname, 2, opts, "table", true)
  local o = {}
  for k, v in pairs(args.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if not known[k] then error(("%s: unknown option '%s'"):format(fname, tostring(k)), 3) end
    o[k] = v
  end
  if type(o.mode) == "string" then
    local m = o.mode:match("^[0-7]+$") and tonumber(o.mode, 8)
    if not m or m > 511 then error(fname .. ": mode must be an octal string such as '0660'", 3) end
    o.mode = m
  elseif type(o.mode) ~= "number" or o.mode < 0 or o.mode > 511 or o.mode % 1 ~= 0 then
    -- 0666 in Lua source is decimal 666: insist on a string for anything that is not plainly bits
    error(fname .. ": mode must be an octal string such as '0660' (or a number 0..511)", 3)
  end
  if type(o.linger) ~= "number" or o.linger < 0 then
    error(fname .. ": linger must be a non-negative number of seconds", 3)
  end
  return o
end

return args
