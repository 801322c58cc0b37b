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
-- the handlers live in examples/handlers/kv.lua, so specs can serve them (docs/TESTING.md)
local here = (arg and arg[0] or ""):match("^(.*[/\\])") or "./"
local handlers = dofile(here .. "handlers/kv.lua")

local server, err = npipe.listen(name, { framing = "message" }, handlers)
if not server then
  io.stderr:write("kv: ", tostring(err), "\n")
  os.exit(1)
end

print(("kv: serving %s on %s"):format(name, server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
