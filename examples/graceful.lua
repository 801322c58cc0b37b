-- Flush, then disconnect: each message gets the reply "reply: <message>", then the server
-- waits until the client has read all of it (conn:flush, FlushFileBuffers) and only then
-- disconnects. A disconnect without the flush may drop a reply still queued for sending.
-- Run: lua5.4 examples/graceful.lua [NAME] [bytes|lines|message]   (defaults: graceful, lines)
local npipe = require("npipe")

local name = arg and arg[1] or "graceful"
local framing = arg and arg[2] or "lines"

local server, err = npipe.listen(name, { framing = framing }, {
  data = function(conn, msg)
    if not conn:is_open() then return end
    conn:write("reply: " .. msg)
    local ok, ferr = conn:flush(5)
    if not ok then io.stderr:write("graceful: flush failed: ", tostring(ferr), "\n") end
    conn:disconnect("done")
  end,
})
if not server then
  io.stderr:write("graceful: ", tostring(err), "\n")
  os.exit(1)
end

print(("graceful: serving %s (%s framing) on %s"):format(name, framing, server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
