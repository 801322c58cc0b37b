-- The handlers of examples/kv.lua (a key-value service over message framing), as a
-- handlers script: `npipe serve examples/handlers/kv.lua --framing message`, or
-- nt.serve("examples/handlers/kv.lua", {framing = "message"}) in a spec (docs/TESTING.md).
-- Each load has a store of its own.
local store = {}

local commands = {}

function commands.SET(args)
  local key, value = args:match("^(%S+) (.*)$")
  if not key then return "ERR usage: SET key value" end
  store[key] = value
  return "OK"
end

function commands.GET(args)
  local key = args:match("^(%S+)$")
  if not key then return "ERR usage: GET key" end
  local value = store[key]
  if value == nil then return "NOTFOUND" end
  return "VALUE " .. value
end

function commands.DEL(args)
  local key = args:match("^(%S+)$")
  if not key then return "ERR usage: DEL key" end
  store[key] = nil
  return "OK"
end

function commands.KEYS(args)
  if args ~= "" then return "ERR usage: KEYS" end
  local keys = {}
  for k in pairs(store) do keys[#keys + 1] = k end
  table.sort(keys)
  return table.concat(keys, " ")
end

local function request(_, msg)
  local verb, args = msg:match("^(%S+) ?(.*)$")
  if not verb then return "ERR empty request" end
  local command = commands[verb]
  if not command then return ("ERR unknown command '%s'"):format(verb) end
  return command(args)
end

return { request = request }
