-- An echo server (lines framing) that only serves clients from its own POSIX session
-- (GetNamedPipeClientSessionId vs GetNamedPipeServerSessionId). A client from another
-- session (try `setsid npipe connect NAME`) is told "refused: other session" and dropped.
-- Run: lua5.4 examples/session_gate.lua [NAME]
local npipe = require("npipe")

local name = arg and arg[1] or "gate"

-- the handlers live in examples/handlers/session_gate.lua, so specs can serve them (docs/TESTING.md)
local here = (arg and arg[0] or ""):match("^(.*[/\\])") or "./"
local handlers = dofile(here .. "handlers/session_gate.lua")

local server, err = npipe.listen(name, { framing = "lines" }, handlers)
if not server then
  io.stderr:write("session_gate: ", tostring(err), "\n")
  os.exit(1)
end

print(("session_gate: serving %s on %s (session %d)"):format(name, server:path(), npipe.session_id()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
