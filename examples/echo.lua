-- An echo server: every chunk, line or message a client sends comes straight back.
-- Run: lua5.4 examples/echo.lua [NAME] [bytes|lines|message]    (defaults: echo, lines)
-- Talk: npipe connect NAME   (or socat - UNIX-CONNECT:<printed path> for lines)
-- Stops cleanly on SIGINT or SIGTERM: the socket file is removed.
local npipe = require("npipe")

local name = arg and arg[1] or "echo"
local framing = arg and arg[2] or "lines"

local server, err = npipe.listen(name, { framing = framing }, {
  data = function(conn, msg) conn:write(msg) end,
})
if not server then
  io.stderr:write("echo: ", tostring(err), "\n")
  os.exit(1)
end

print(("echo: serving %s (%s framing) on %s"):format(name, framing, server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
local sig = server:run({ drain = 0 })
io.stderr:write("echo: ", tostring(sig), ": stopped\n")
