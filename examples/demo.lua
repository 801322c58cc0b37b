-- The demo server: a line-oriented echo with a few commands.
-- Run: lua5.4 examples/demo.lua [NAME]      Talk: socat - UNIX-CONNECT:<printed path>
local npipe = require("npipe")

local name = arg and arg[1] or "demo"

local commands = {}

function commands.help()
  return "commands: whoami, stats, time, help, quit; anything else is echoed"
end

function commands.whoami(conn)
  local c = conn:credentials()
  return ("pid=%d uid=%d gid=%d session=%s"):format(c.pid, c.uid, c.gid, tostring(conn:session_id()))
end

function commands.stats(conn)
  local s = conn:server():stats()
  return ("accepted=%d active=%d bytes_in=%d bytes_out=%d"):format(
    s.accepted, s.active, s.bytes_in, s.bytes_out)
end

function commands.time()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

function commands.quit(conn)
  conn:write("bye")
  conn:flush(2)
  conn:disconnect("client said quit")
end

local server, err = npipe.listen(name, { framing = "lines" }, {
  connect = function(conn)
    conn:write("npipe demo: type 'help'")
  end,
  data = function(conn, line)
    local command = commands[line]
    if command then
      local reply = command(conn)
      if reply then conn:write(reply) end
    else
      conn:write(line)
    end
  end,
})
if not server then
  io.stderr:write("demo: ", err, "\n")
  os.exit(1)
end

print(("npipe demo serving on %s"):format(server:path()))
print(("talk to it: socat - UNIX-CONNECT:%s"):format(server:path()))
io.stdout:flush()
npipe.run()
