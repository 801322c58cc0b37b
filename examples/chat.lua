-- A chat room over lines framing. Every line a client sends goes to every other client
-- as "<id>: line"; joins and leaves are announced as "* <id> joined" / "* <id> left".
-- A new client first gets "welcome <id>" so it knows its own id.
-- Run: lua5.4 examples/chat.lua [NAME]       Talk: npipe connect NAME  (several terminals)
local npipe = require("npipe")

local name = arg and arg[1] or "chat"
-- the handlers live in examples/handlers/chat.lua, so specs can serve them (docs/TESTING.md)
local here = (arg and arg[0] or ""):match("^(.*[/\\])") or "./"
local handlers = dofile(here .. "handlers/chat.lua")

local server, err = npipe.listen(name, { framing = "lines" }, handlers)
if not server then
  io.stderr:write("chat: ", tostring(err), "\n")
  os.exit(1)
end

print(("chat: serving %s on %s"):format(name, server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
