-- npipe echo server for the benchmark.
--   lua5.4 bench/servers/npipe_echo.lua SOCKET_PATH [bytes|lines|message]
-- A path with a '/' is used as the socket path as is. The data handler is plain Lua:
-- every chunk (bytes), line or message received is written back with conn:write.
local npipe = require("npipe")

local path, framing = arg[1], arg[2] or "bytes"
if not path then
  io.stderr:write("usage: npipe_echo.lua SOCKET_PATH [bytes|lines|message]\n")
  os.exit(2)
end

os.remove(path)
local server = assert(npipe.listen(path, { framing = framing, backlog = 511 }, {
  data = function(conn, msg)
    conn:write(msg)
  end,
}))

local function stop()
  server:close()
  npipe.stop()
end
npipe.on_signal("SIGTERM", stop)
npipe.on_signal("SIGINT", stop)
npipe.run()
