-- A key-value service over message framing; each request message gets one reply.
--   SET key value  -> OK               (the value is the rest of the message)
--   GET key        -> VALUE value | NOTFOUND
--   DEL key        -> OK
--   KEYS           -> the keys, sorted, separated by spaces
--   anything else  -> ERR <why>
-- Run: lua5.4 examples/kv.lua [NAME]
-- Talk: lua5.4 examples/kv_client.lua NAME "SET a 1" "GET a"
--       python3 examples/clients/client.py PATH "KEYS"   (PATH: printed on start)
local npipe = require("npipe")

local name = arg and arg[1] or "kv"
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

local server, err = npipe.listen(name, { framing = "message" }, { request = request })
if not server then
  io.stderr:write("kv: ", tostring(err), "\n")
  os.exit(1)
end

print(("kv: serving %s on %s"):format(name, server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
