-- Sends each command-line request to the kv service (examples/kv.lua) with npipe.call
-- and prints each reply on a line. Exits 1 if a call fails.
-- Run: lua5.4 examples/kv_client.lua NAME "SET a 1" "GET a" "KEYS"
local npipe = require("npipe")

local name = arg[1]
if not name or #arg < 2 then
  io.stderr:write("usage: kv_client.lua NAME REQUEST...\n")
  os.exit(2)
end

for i = 2, #arg do
  local reply, err = npipe.call(name, arg[i], { timeout = 2 })
  if reply == nil then
    io.stderr:write(("kv_client: %s: %s\n"):format(arg[i], tostring(err)))
    os.exit(1)
  end
  print(reply)
end
io.stdout:flush()
