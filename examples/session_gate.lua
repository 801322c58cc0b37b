-- An echo server (lines framing) that only serves clients from its own POSIX session
-- (GetNamedPipeClientSessionId vs GetNamedPipeServerSessionId). A client from another
-- session (try `setsid npipe connect NAME`) is told "refused: other session" and dropped.
-- Run: lua5.4 examples/session_gate.lua [NAME]
local npipe = require("npipe")

local name = arg and arg[1] or "gate"

local server, err = npipe.listen(name, { framing = "lines" }, {
  connect = function(conn)
    local client_sid = conn:session_id() -- nil when the client already exited
    if client_sid ~= conn:server_session_id() then
      conn.state.refused = true
      conn:write("refused: other session")
      conn:flush(2)
      conn:disconnect("refused: other session")
    end
  end,
  data = function(conn, line)
    if not conn.state.refused then conn:write(line) end
  end,
})
if not server then
  io.stderr:write("session_gate: ", tostring(err), "\n")
  os.exit(1)
end

print(("session_gate: serving %s on %s (session %d)"):format(name, server:path(), npipe.session_id()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
