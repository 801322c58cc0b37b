-- The handlers of examples/session_gate.lua (an echo over lines framing for clients of
-- the server's own login session only: a service serves services, a login its own
-- programs), as a handlers script:
-- `npipe serve examples/handlers/session_gate.lua`, or nt.serve(...) in a spec (docs/TESTING.md).
return {
  connect = function(conn)
    -- the client's login session, taken at connect (nil when it had already gone)
    local client_sid = conn:session_id()
    if client_sid == nil or client_sid ~= conn:server_session_id() then -- unknown: refused
      conn.state.refused = true
      conn:write("refused: other session")
      conn:flush(2)
      conn:disconnect("refused: other session")
    end
  end,
  data = function(conn, line)
    if not conn.state.refused then conn:write(line) end
  end,
}
