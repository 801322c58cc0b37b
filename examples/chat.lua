-- A chat room over lines framing. Every line a client sends goes to every other client
-- as "<id>: line"; joins and leaves are announced as "* <id> joined" / "* <id> left".
-- A new client first gets "welcome <id>" so it knows its own id.
-- Run: lua5.4 examples/chat.lua [NAME]       Talk: npipe connect NAME  (several terminals)
local npipe = require("npipe")

local name = arg and arg[1] or "chat"
local server, err

-- Sends text to every open connection except `except`.
local function broadcast(text, except)
  for _, other in ipairs(server:connections()) do
    if other ~= except and other:is_open() then other:write(text) end
  end
end

server, err = npipe.listen(name, { framing = "lines" }, {
  connect = function(conn)
    conn:write(("welcome %d"):format(conn:id()))
    broadcast(("* %d joined"):format(conn:id()), conn)
  end,
  data = function(conn, line)
    broadcast(("%d: %s"):format(conn:id(), line), conn)
  end,
  disconnect = function(conn)
    broadcast(("* %d left"):format(conn:id()), conn)
  end,
})
if not server then
  io.stderr:write("chat: ", tostring(err), "\n")
  os.exit(1)
end

print(("chat: serving %s on %s"):format(name, server:path()))
io.stdout:flush()

-- until SIGINT/SIGTERM, then close (letting connections finish) and remove the socket
server:run()
