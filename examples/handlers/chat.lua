-- The handlers of examples/chat.lua (a chat room over lines framing), as a handlers
-- script: `npipe serve examples/handlers/chat.lua`, or nt.serve("examples/handlers/chat.lua")
-- in a spec (docs/TESTING.md).

-- Sends text to every open connection of conn's server except conn itself.
local function broadcast(conn, text)
  for _, other in ipairs(conn:server():connections()) do
    if other ~= conn and other:is_open() then other:write(text) end
  end
end

return {
  connect = function(conn)
    conn:write(("welcome %d"):format(conn:id()))
    broadcast(conn, ("* %d joined"):format(conn:id()))
  end,
  data = function(conn, line)
    broadcast(conn, ("%d: %s"):format(conn:id(), line))
  end,
  disconnect = function(conn)
    broadcast(conn, ("* %d left"):format(conn:id()))
  end,
}
