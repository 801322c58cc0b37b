-- A plain Win32 program against an npipe server (Windows only; under Wine in CI):
-- tests/win32_client.c, built by scripts/wine.sh, uses nothing but Win32 calls
-- (CallNamedPipeW, TransactNamedPipe, ReadFile/WriteFile in PIPE_READMODE_MESSAGE,
-- WaitNamedPipeW, GetSecurityInfo). It runs once, while this process serves two pipes;
-- each check it prints is one test here.
local npipe = require("npipe")
local helpers = require("helpers")

if not helpers.windows then
  describe("a plain Win32 client", function()
    pending("runs on Windows only (scripts/wine.sh)")
  end)
  return
end

local CLIENT = os.getenv("NPIPE_WIN32_CLIENT") -- the .exe, set by scripts/wine.sh

describe("a plain Win32 client", function()
  local results, output = {}, ""

  lazy_setup(function()
    assert(CLIENT, "NPIPE_WIN32_CLIENT names tests/win32_client.c's build")
    local msg_pipe, limit_pipe = helpers.name("win32msg"), helpers.name("win32limit")
    local finished = false
    local request = function(_, msg)
      if msg == "done" then finished = true end -- the client's last call
      return "re:" .. msg
    end
    local s1 = assert(npipe.listen(msg_pipe, { framing = "message" }, { request = request }))
    local s2 = assert(npipe.listen(limit_pipe, { framing = "message", max_instances = 4 }, { request = request }))
    -- Reading the child's output blocks this process, whose loop must serve the child
    -- meanwhile: wait for its last call first, then read.
    local child = assert(io.popen(('"%s" %s %s'):format(CLIENT, msg_pipe, limit_pipe)))
    helpers.wait_until(function() return finished end, 30)
    output = child:read("*a")
    child:close()
    s1:close()
    s2:close()
    for name, why in output:gmatch("fail ([^:\n]+): ([^\n]*)") do results[name] = why end
    for name in output:gmatch("ok ([^\n]+)") do results[name] = true end
  end)

  local function check(name)
    local r = results[name]
    assert(r ~= nil, "no result for " .. name .. "; the client said:\n" .. output)
    assert(r == true, name .. ": " .. tostring(r))
  end

  it("CallNamedPipeW gets the reply to its one message", function() check("CallNamedPipeW") end)
  it("TransactNamedPipe in message read mode gets one reply", function() check("TransactNamedPipe") end)
  it("three WriteFile calls are three messages, read back as three", function() check("three messages") end)
  it("with max_instances = 4 the 5th CreateFileW gets ERROR_PIPE_BUSY", function()
    check("ERROR_PIPE_BUSY at max_instances")
  end)
  it("WaitNamedPipeW succeeds once a client has left", function() check("WaitNamedPipeW after a client left") end)
  it("the pipe's DACL allows neither Everyone, Anonymous nor Network", function() check("DACL") end)
end)
