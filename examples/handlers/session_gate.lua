-- The handlers of examples/session_gate.lua (an echo over lines framing for clients of
-- the server's own POSIX session only), as a handlers script:
-- `npipe serve examples/handlers/session_gate.lua`, or nt.serve(...) in a spec (docs/TESTING.md).
return {
  connect = function(conn)
    local client_sid = conn:session_id() -- nil when the client already exited
    if client_sid ~= conn:server_session_id() then
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
