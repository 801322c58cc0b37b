-- luv echo server for the benchmark (Debian's lua-luv has a lua5.4 build).
--   lua5.4 bench/servers/luv_echo.lua SOCKET_PATH
-- The idiomatic luv echo: read_start, and write every chunk back from Lua.
local uv = require("luv")

local path = arg[1]
if not path then
  io.stderr:write("usage: luv_echo.lua SOCKET_PATH\n")
  os.exit(2)
end

-- luv leaves SIGPIPE at its default (the process would die when a client goes away
-- while a write is pending); watching it makes libuv install a handler instead.
local sigpipe = uv.new_signal()
sigpipe:start("sigpipe", function() end)

os.remove(path)
local server = uv.new_pipe(false)
assert(server:bind(path))

local HIGH_WATER = 1024 * 1024

assert(server:listen(511, function(err)
  if err then return end
  local client = uv.new_pipe(false)
  if not server:accept(client) then client:close() return end
  local reading
  local function on_read(rerr, data)
    if rerr or not data then
      if not client:is_closing() then client:close() end
      return
    end
    client:write(data, function(werr)
      if werr then
        if not client:is_closing() then client:close() end
      elseif not reading and client:get_write_queue_size() <= HIGH_WATER / 2 and not client:is_closing() then
        reading = true
        client:read_start(on_read)
      end
    end)
    if client:get_write_queue_size() > HIGH_WATER then
      reading = false
      client:read_stop()
    end
  end
  reading = true
  client:read_start(on_read)
end))

local function stop()
  server:close()
  os.remove(path)
  uv.stop()
end
local sigterm, sigint = uv.new_signal(), uv.new_signal()
sigterm:start("sigterm", stop)
sigint:start("sigint", stop)

uv.run()
