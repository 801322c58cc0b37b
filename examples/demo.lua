-- The demo server: a line-oriented echo with a few commands (whoami, stats, time, quit).
-- Run: lua5.4 examples/demo.lua [NAME]      Talk: socat - UNIX-CONNECT:<printed path>
local npipe = require("npipe")
local demo = require("npipe.demo")

local name = arg and arg[1] or "demo"

local server, err = npipe.listen(name, { framing = "lines" }, { data = demo.data })
if not server then
  io.stderr:write("demo: ", err, "\n")
  os.exit(1)
end

print(("npipe demo serving on %s"):format(server:path()))
print(("talk to it: socat - UNIX-CONNECT:%s   (type help)"):format(server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run({ drain = 1 })
