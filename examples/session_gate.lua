-- An echo server (lines framing) for the clients of its own login session only
-- (GetNamedPipeClientSessionId vs GetNamedPipeServerSessionId). On Linux the login
-- session is the audit session id that a login gets (pam_loginuid; what systemd-logind
-- names sessions by), and a process outside any login is in session 0, like a Windows
-- service. So this is the service-and-desktop case of Windows:
--   * started from a desktop or ssh login, it serves every program of that login (any
--     terminal, also one that left its POSIX session with setsid) and refuses services
--     and the programs of other logins;
--   * started as a system service (outside any login), it serves other services and
--     refuses the programs that users run in their logins.
-- A refused client is told "refused: other session" and dropped. To see it refuse, give a
-- client a login session of its own (as root, what a login does):
--   sh -c 'echo 1000 > /proc/self/loginuid && exec npipe call NAME hello'
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

local sid = npipe.session_id()
print(("session_gate: serving %s on %s for login session %d%s"):format(name, server:path(), sid,
  sid == 0 and " (outside any login, as a service: other services only)" or ""))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
