-- The built-in demo served by `npipe serve` with no script and by examples/demo.lua:
-- a line echo with a few commands. Returns a handlers table.
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

return {
  commands = commands,
  data = function(conn, line)
    local command = commands[line]
    if not command then
      conn:write(line)
      return
    end
    local reply = command(conn)
    if reply then conn:write(reply) end
  end,
}
