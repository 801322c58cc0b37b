-- A handlers script (serve it: npipe serve greeter.lua --framing message), tested by
-- greeter_spec.lua next to it with npipe.test (docs/TESTING.md).
return {
  connect = function(conn) conn.state.greeted = 0 end,
  request = function(conn, name)
    if name == "" then error("no name given") end
    conn.state.greeted = conn.state.greeted + 1
    return ("hello, %s (#%d)"):format(name, conn.state.greeted)
  end,
}
