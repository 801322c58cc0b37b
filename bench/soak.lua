-- Bounded soak test: a server child process, client child processes, checksums and the
-- server's RSS sampled over time.
--
--   lua5.4 bench/soak.lua [--short]
--
-- Full run: (a) 100,000 connect/send/receive/disconnect cycles and (b) 1,000,000 messages
-- across 100 concurrent connections (message framing). --short: 2,000 cycles and 50,000
-- messages. The work runs in two equal rounds; the server's RSS is sampled after a
-- warm-up ("start"), after round 1 ("middle") and after round 2 ("end"). Every message
-- carries its connection, sequence number and a payload checksum; the server checks
-- order and content of what it receives, the clients check that each echo is exactly
-- the message sent at that position. Exits non-zero on any loss, duplicate, reordering,
-- corrupted message, or when the end RSS exceeds the middle one by more than a generous
-- margin (8 MiB plus half the growth from start to middle; not judged under
-- AddressSanitizer, whose quarantine keeps freed memory). Prints one summary line:
--   soak: OK cycles=N messages=N clients=100 connections=N lost=0 dup=0 reorder=0 bad=0
--   rss_kb start=N middle=N end=N time=Ns
-- (the counts include a small warm-up round before the start sample).
--
-- Then three end phases, each against a server of its own that runs
-- server:run{drain = D} and prints its counts when it returns, with plain-socket Python
-- clients (bench/soak_client.py), not npipe's:
--   halfclose: clients send 0 to a few thousand messages, shutdown(SHUT_WR) and read
--              until EOF; every message must come back.
--   slowread:  clients send quickly and read slowly, replies 2 KiB larger than the
--              messages, high_water 8 KiB: the server's writes wait; every message must
--              come back.
--   sigterm:   the same, until SIGTERM reaches the server while most clients still read
--              (drain and linger 0.5 s, 1 s in the full run). Per client, what the server
--              acknowledged (conn:write returned true) and the client did not receive must
--              be what npipe reports as undelivered (conn:undelivered(), summed:
--              stats().dropped_messages).
-- Each prints, per client summed (SOAK_VERBOSE=1 prints every client):
--   soak: TAG OK clients=N sent=N handled=N acked=N received=N dropped=N late=N waited=N
--   [stop=Ns] time=Ns
-- late: writes that queued their data, waited over high_water, and then answered nil,
-- "pipe closed", as the connection ended; waited: writes that took over a millisecond.
-- The main line above says FAIL when an end phase failed.
--
-- Internal modes (used by the script itself):
--   soak.lua --server NAME
--   soak.lua --cycles NAME WORKER COUNT SECONDS
--   soak.lua --stream NAME PROC CONNS MSGS SECONDS
--   soak.lua --end-server NAME HIGH_WATER LINGER DRAIN PAD

-- the wire helpers it shares with the load spec, found from this script's place in the tree
package.path = (arg[0]:match("^(.*)[/\\][^/\\]*$") or ".") .. "/../spec/?.lua;" .. package.path
local npipe = require("npipe")
local core = require("npipe.core")
local be32 = require("fixtures.be32")

local LUA = arg[-1] or "lua5.4"
-- Under AddressSanitizer (scripts/sanitize.sh preloads it) freed memory is quarantined,
-- so RSS grows with the work done and says nothing about leaks.
local ASAN = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil
local SELF = arg[0]

---- portability: runs on Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT (no string.pack, no //) ----

-- math.floor(a / b) is a // b for the non-negative whole numbers used here.
local function idiv(a, b) return math.floor(a / b) end

-- string.pack(">I4", n) and string.unpack(">I4", s, pos), raising as they do.
local u32, read_u32 = be32.u32, be32.read_u32

---- the wire content, shared by every mode ----

local function adler32(s)
  local a, b = 1, 0
  for i = 1, #s do
    a = (a + s:byte(i)) % 65521
    b = (b + a) % 65521
  end
  return b * 65536 + a
end

-- 64 payloads of pseudo-random bytes (fixed seed), 8 to 260 bytes, with their checksums.
local PAYLOAD, SUM = {}, {}
do
  local seed = 20240601
  for k = 0, 63 do
    local t = {}
    for i = 1, 8 + k * 4 do
      -- seed * 1103515245 + 12345 mod 2^31, with 1103515245 = 16838 * 65536 + 20077
      -- taken apart so that no intermediate reaches 2^53 (where Lua 5.1's doubles round)
      seed = ((seed * 16838 % 32768) * 65536 + seed * 20077 + 12345) % 2147483648
      t[i] = string.char(idiv(seed, 65536) % 256)
    end
    PAYLOAD[k] = table.concat(t)
    SUM[k] = adler32(PAYLOAD[k])
  end
end

-- "M" stream message: connection gid, sequence number, payload index and checksum, payload.
local function stream_msg(gid, seq)
  local k = (seq * 7 + gid) % 64
  return "M" .. u32(gid) .. u32(seq) .. u32(k) .. u32(SUM[k]) .. PAYLOAD[k], SUM[k] + seq
end

-- "C" cycle message: worker, cycle number, payload index and checksum, payload.
local function cycle_msg(worker, i)
  local k = (i * 13 + worker) % 64
  return "C" .. u32(worker) .. u32(i) .. u32(k) .. u32(SUM[k]) .. PAYLOAD[k], SUM[k] + i
end

local function rss_kb(pid)
  local f = io.open(("/proc/%d/status"):format(pid))
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local function say(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

---- server ----

local function run_server(name)
  local t = { msgs = 0, sum = 0, cycles = 0, csum = 0, order = 0, bad = 0, conns = 0 }
  local first_bad
  local function bad(what)
    t.bad = t.bad + 1
    first_bad = first_bad or what
  end
  local server = assert(npipe.listen(name, { framing = "message" }, {
    connect = function() t.conns = t.conns + 1 end,
    data = function(conn, msg)
      local tag = msg:sub(1, 1)
      if tag == "M" or tag == "C" then
        local id, seq, k, sum = read_u32(msg, 2), read_u32(msg, 6), read_u32(msg, 10), read_u32(msg, 14)
        local want, value
        if tag == "M" then want, value = stream_msg(id, seq) else want, value = cycle_msg(id, seq) end
        if msg ~= want or sum ~= SUM[k] then
          bad(("corrupt %s message %d/%d"):format(tag, id, seq))
        elseif tag == "M" then
          local st = conn.state
          local expect = st.next or 1
          if seq ~= expect then
            t.order = t.order + 1
            first_bad = first_bad or ("connection %d: got %d, expected %d"):format(id, seq, expect)
          end
          st.next = seq + 1
          t.msgs, t.sum = t.msgs + 1, t.sum + value
        else
          t.cycles, t.csum = t.cycles + 1, t.csum + value
        end
        conn:write(msg)
      elseif msg == "REPORT" then
        conn:write(("msgs=%d sum=%d cycles=%d csum=%d order=%d bad=%d conns=%d first=%s"):format(
          t.msgs, t.sum, t.cycles, t.csum, t.order, t.bad, t.conns, first_bad or "-"))
      else
        bad("unknown message")
        conn:disconnect("unknown message")
      end
    end,
  }))
  say("pid %d", core.pid())
  say("ready %s", server:path())
  npipe.on_signal("SIGTERM", function() server:close(); npipe.stop() end)
  npipe.spawn(function() -- never outlive a lost parent by much
    npipe.sleep(900)
    say("lifetime over")
    os.exit(3)
  end)
  npipe.run()
end

-- The server of the end phases (half-closing clients, slow readers, SIGTERM): echoes each
-- message with PAD bytes "p" appended, runs server:run{drain = DRAIN} and, once that
-- returns, prints what it counted per client (by the id in the messages) and in total.
-- acked: writes that returned true; late: writes that queued their data, waited for the
-- queue to drain and got "pipe closed" instead (the data was queued all the same);
-- failed: writes refused because the connection was already ending; waited: writes that
-- took over a millisecond (they waited for the queue to drain below high_water).
local function run_end_server(name, high_water, linger, drain, pad)
  local PAD = string.rep("p", pad)
  local per, gids = {}, {}
  local t = { conns = 0, eofs = 0, order = 0, bad = 0, waited = 0 }
  local first
  local function bad(what)
    t.bad = t.bad + 1
    first = first or what
  end
  local function client(gid)
    local c = per[gid]
    if not c then
      c = { handled = 0, acked = 0, late = 0, failed = 0, dropped = 0, dropped_bytes = 0 }
      per[gid] = c
      gids[#gids + 1] = gid
    end
    return c
  end
  local server = assert(npipe.listen(name, { framing = "message", high_water = high_water, linger = linger }, {
    connect = function() t.conns = t.conns + 1 end,
    data = function(conn, msg)
      local tag = msg:sub(1, 1)
      local okp, gid, seq, sum = pcall(function() return read_u32(msg, 2), read_u32(msg, 6), read_u32(msg, 10) end)
      if not okp or (tag ~= "H" and tag ~= "S") or adler32(msg:sub(14)) ~= sum then
        bad("corrupt message")
        return
      end
      local st = conn.state
      if st.gid == nil then st.gid = gid
      elseif st.gid ~= gid then bad(("connection of %d sent a message of %d"):format(st.gid, gid)) end
      if seq ~= (st.next or 1) then
        t.order = t.order + 1
        first = first or ("client %d: got %d, expected %d"):format(gid, seq, st.next or 1)
      end
      st.next = seq + 1
      local c = client(gid)
      c.handled = c.handled + 1
      local t0 = npipe.now()
      local ok, err = conn:write(msg .. PAD)
      if npipe.now() - t0 > 0.001 then t.waited = t.waited + 1 end
      if ok then c.acked = c.acked + 1
      elseif tostring(err):find("pipe closed (", 1, true) == 1 then
        c.late = c.late + 1
        t.late_error = t.late_error or tostring(err)
      else c.failed = c.failed + 1 end
    end,
    eof = function() t.eofs = t.eofs + 1 end,
    disconnect = function(conn)
      local bytes, msgs = conn:undelivered()
      if conn.state.gid then
        local c = client(conn.state.gid)
        c.dropped, c.dropped_bytes = c.dropped + msgs, c.dropped_bytes + bytes
      end
    end,
  }))
  say("pid %d", core.pid())
  say("ready %s", server:path())
  npipe.spawn(function() -- never outlive a lost parent by much
    npipe.sleep(300)
    say("lifetime over")
    os.exit(3)
  end)
  local sig = server:run({ drain = drain })
  local st = server:stats()
  table.sort(gids)
  for _, gid in ipairs(gids) do
    local c = per[gid]
    say("client gid=%d handled=%d acked=%d late=%d failed=%d dropped=%d dropped_bytes=%d", gid, c.handled,
        c.acked, c.late, c.failed, c.dropped, c.dropped_bytes)
  end
  say("result signal=%s conns=%d eofs=%d order=%d bad=%d waited=%d dropped_messages=%d dropped_bytes=%d first=%s",
      tostring(sig), t.conns, t.eofs, t.order, t.bad, t.waited, st.dropped_messages, st.dropped_bytes,
      ((first or "-"):gsub(" ", "_")))
  if t.late_error then say("late write error: %s", t.late_error) end
  os.exit(0)
end

---- clients ----

local function run_cycles(name, worker, count, seconds)
  local deadline = npipe.now() + seconds
  local sum, errors, first = 0, 0, nil
  for i = 1, count do
    if npipe.now() > deadline then
      errors, first = errors + 1, first or ("out of time after %d cycles"):format(i - 1)
      break
    end
    local conn, err = npipe.connect(name, { framing = "message", timeout = 5 })
    if not conn then
      errors, first = errors + 1, first or ("connect %d: %s"):format(i, err)
      break
    end
    local msg, value = cycle_msg(worker, i)
    local ok, werr = conn:write(msg)
    local reply, rerr = conn:read(10)
    if not ok or reply ~= msg then
      errors = errors + 1
      first = first or ("cycle %d: %s"):format(i, tostring(werr or rerr or "wrong echo"))
    else
      sum = sum + value
    end
    conn:disconnect()
  end
  say("result cycles=%d sum=%d errors=%d first=%s", count, sum, errors, first or "-")
  os.exit(errors == 0 and 0 or 1)
end

local WINDOW = 50 -- messages in flight per connection

local function run_stream(name, proc, nconns, nmsgs, seconds)
  local deadline = npipe.now() + seconds
  local st = { sum = 0, recv = 0, lost = 0, dup = 0, reorder = 0, bad = 0, done = 0 }
  local first
  local function client(j)
    local gid = proc * 1000 + j
    local conn, err = npipe.connect(name, { framing = "message", timeout = 10 })
    if not conn then
      st.lost = st.lost + nmsgs
      first = first or ("connect: " .. tostring(err))
      st.done = st.done + 1
      return
    end
    local seq = 0
    while seq < nmsgs do
      local n = math.min(WINDOW, nmsgs - seq)
      for s = seq + 1, seq + n do
        if not conn:write((stream_msg(gid, s))) then break end
      end
      for s = seq + 1, seq + n do
        local left = math.min(10, deadline - npipe.now())
        local reply, rerr = conn:read(left > 0 and left or 0)
        if reply == nil then
          st.lost = st.lost + (nmsgs - s + 1)
          first = first or ("connection %d: read %s at %d"):format(gid, tostring(rerr), s)
          seq = nmsgs
          break
        end
        local want, value = stream_msg(gid, s)
        if reply == want then
          st.recv, st.sum = st.recv + 1, st.sum + value
        else
          local okp, _, got = pcall(function() return read_u32(reply, 2), read_u32(reply, 6) end)
          if not okp or type(got) ~= "number" then st.bad = st.bad + 1
          elseif got < s then st.dup = st.dup + 1
          elseif got > s then st.reorder = st.reorder + 1
          else st.bad = st.bad + 1 end
          first = first or ("connection %d: wrong echo at %d (got %s)"):format(gid, s, tostring(got))
        end
      end
      seq = seq + n
    end
    conn:disconnect()
    st.done = st.done + 1
  end
  for j = 1, nconns do npipe.spawn(client, j) end
  while st.done < nconns and npipe.now() < deadline + 1 do npipe.sleep(0.02) end
  if st.done < nconns then first = first or "out of time" end
  local ok = st.done == nconns and st.recv == nconns * nmsgs and st.lost + st.dup + st.reorder + st.bad == 0
  say("result msgs=%d recv=%d sum=%d lost=%d dup=%d reorder=%d bad=%d first=%s", nconns * nmsgs, st.recv,
      st.sum, st.lost, st.dup, st.reorder, st.bad, first or "-")
  os.exit(ok and 0 or 1)
end

---- the driver ----

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- Runs child invocations of this script in parallel and waits for all of them;
-- returns their outputs (nil for a child that failed).
local function run_children(tmp, tag, list, seconds)
  local parts = {}
  for i, args in ipairs(list) do
    local out = ("%s/%s-%d.out"):format(tmp, tag, i)
    local a = {}
    for _, v in ipairs(args) do a[#a + 1] = q(v) end
    parts[#parts + 1] = ("(timeout -k 5 %d %s %s %s > %s 2>&1; echo $? > %s.rc) &"):format(
      seconds + 10, q(LUA), q(SELF), table.concat(a, " "), out, out)
  end
  os.execute(table.concat(parts, " ") .. " wait")
  local outs, failed = {}, nil
  for i = 1, #list do
    local out = ("%s/%s-%d.out"):format(tmp, tag, i)
    local rc = tonumber(read_file(out .. ".rc"))
    local text = read_file(out)
    if rc ~= 0 then failed = failed or ("%s child %d exited %s: %s"):format(tag, i, tostring(rc), text) end
    outs[i] = text
  end
  return outs, failed
end

local function wait_until(seconds, fn)
  local deadline = npipe.now() + seconds
  repeat
    if fn() then return true end
    npipe.sleep(0.05)
  until npipe.now() > deadline
  return fn() and true or false
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("*a")
  p:close()
  return s
end

-- One end phase: an --end-server child, one Python process of plain-socket clients
-- (bench/soak_client.py), and, with p.term_after, SIGTERM to the server that many seconds
-- after the clients started (else once they are done). Checks every client's
-- sent / handled / acknowledged / received and what npipe reports as dropped; prints
--   soak: TAG OK|FAIL clients=N sent=N handled=N acked=N received=N dropped=N late=N
--   waited=N [stop=Ns] time=Ns
-- and returns the failures.
local function end_phase(tmp, p)
  local started = npipe.now()
  local failures = {}
  local function fail(fmt, ...) failures[#failures + 1] = p.tag .. ": " .. fmt:format(...) end
  local name = ("%s/%s.sock"):format(tmp, p.tag)
  local sout, cout = ("%s/%s-server.out"):format(tmp, p.tag), ("%s/%s-clients.out"):format(tmp, p.tag)
  local spid = tonumber(sh(("exec %s %s --end-server %s %d %s %s %d > %s 2>&1 & echo $!"):format(
    q(LUA), q(SELF), q(name), p.high_water, tostring(p.linger), tostring(p.drain), p.pad, q(sout))))
  local stop_time
  local ok, err = pcall(function()
    assert(wait_until(5, function() return read_file(sout):find("ready ", 1, true) end),
           "the server did not start: " .. read_file(sout))
    local py = (SELF:match("^(.*)/[^/]*$") or ".") .. "/soak_client.py"
    -- the sanitizer runtimes the Lua children get preloaded are not for python3
    os.execute(("(timeout -k 5 %d env -u LD_PRELOAD python3 %s %s %s %d %d %d %s > %s 2>&1; echo $? > %s.rc) &"):format(
      p.seconds + 5, q(py), p.kind, q(name), p.gid0, p.seconds, p.pad, table.concat(p.specs, " "), q(cout), q(cout)))
    local function clients_done() return read_file(cout .. ".rc") ~= "" end
    local function server_done() return read_file(sout):find("\nresult ", 1, true) end
    if p.term_after then wait_until(p.term_after, clients_done) else wait_until(p.seconds + 10, clients_done) end
    local t0 = npipe.now()
    os.execute(("kill -TERM %d 2>/dev/null"):format(spid))
    if wait_until(p.drain + p.linger + 10, server_done) then stop_time = npipe.now() - t0 end
    wait_until(p.seconds + 10, clients_done)
  end)
  os.execute(("kill -KILL %d 2>/dev/null"):format(spid))
  if not ok then fail("%s", tostring(err)) end

  local sv, sclients = read_file(sout), {}
  for gid, rest in sv:gmatch("client gid=(%d+) ([^\n]*)") do
    local c = {}
    for k, v in rest:gmatch("(%w+)=(%d+)") do c[k] = tonumber(v) end
    sclients[tonumber(gid)] = c
  end
  local res = {}
  for k, v in (sv:match("\nresult ([^\n]*)") or ""):gmatch("([%w_]+)=(%S+)") do res[k] = tonumber(v) or v end
  if not res.signal then fail("the server reported nothing: %s", sv) end
  if res.signal and res.signal ~= "SIGTERM" then fail("server:run returned %s", tostring(res.signal)) end
  if (res.order or 0) + (res.bad or 0) > 0 then fail("server: order=%s bad=%s first=%s", res.order, res.bad, res.first) end
  if p.term_after and stop_time and stop_time > p.drain + p.linger + 2 then
    fail("the server took %.1fs to stop after SIGTERM (drain %s + linger %s)", stop_time, p.drain, p.linger)
  end
  if not stop_time then fail("the server did not stop after SIGTERM") end

  local cv = read_file(cout)
  local rc = tonumber(read_file(cout .. ".rc"))
  if rc ~= 0 then fail("the clients exited %s: %s", tostring(rc), cv) end
  local tot = { clients = 0, sent = 0, handled = 0, acked = 0, received = 0, dropped = 0, late = 0, partial = 0 }
  local rows = {}
  for line in cv:gmatch("client gid=[^\n]*") do
    local c = {}
    for k, v in line:gmatch("(%w+)=(%S+)") do c[k] = tonumber(v) or v end
    local s = sclients[c.gid] or { handled = 0, acked = 0, late = 0, failed = 0, dropped = 0 }
    local row = ("gid=%d sent=%d handled=%d acked=%d late=%d failed=%d received=%d dropped=%d partial=%d end=%s first=%s"):format(
      c.gid, c.sent, s.handled, s.acked, s.late, s.failed, c.received, s.dropped, c.partial, c["end"], c.first)
    rows[#rows + 1] = row
    local bad
    if c.bad > 0 then bad = "wrong replies" end
    if p.term_after then
      -- SIGTERM: handled <= sent; every write answered; what was acknowledged and did not
      -- arrive is exactly what npipe reports as dropped
      if s.handled > c.sent then bad = "handled more than sent" end
      if s.acked + s.late + s.failed ~= s.handled then bad = "writes unaccounted for" end
      if s.acked - c.received ~= s.dropped then
        bad = ("acknowledged - received = %d, npipe dropped %d"):format(s.acked - c.received, s.dropped)
        if s.late > 0 and s.acked + s.late - c.received == s.dropped then
          bad = bad .. (": %d write(s) answered nil, 'pipe closed', though their data was queued"
                        .. " (counting those, every queued message arrived or was reported dropped)"):format(s.late)
        end
      end
    else
      if c.sent ~= p.count_of[c.gid] or s.handled ~= c.sent or s.acked ~= s.handled or c.received ~= s.acked
         or s.dropped + s.late + s.failed + c.partial > 0 then
        bad = "sent, handled, acknowledged and received differ"
      end
    end
    if bad then fail("client %s: %s", row, bad) end
    tot.clients, tot.sent, tot.handled = tot.clients + 1, tot.sent + c.sent, tot.handled + s.handled
    tot.acked, tot.received, tot.dropped = tot.acked + s.acked, tot.received + c.received, tot.dropped + s.dropped
    tot.late, tot.partial = tot.late + s.late, tot.partial + c.partial
  end
  if tot.clients ~= #p.specs then fail("%d of %d clients reported", tot.clients, #p.specs) end
  if res.dropped_messages and res.dropped_messages ~= tot.dropped then
    fail("stats().dropped_messages=%s, the disconnect handlers saw %d", res.dropped_messages, tot.dropped)
  end
  if p.kind == "halfclose" and res.eofs and res.eofs ~= #p.specs then
    fail("the eof handler ran %s times for %d half-closing clients", res.eofs, #p.specs)
  end
  if p.kind == "slow" and res.waited == 0 then fail("no write waited: the slow readers did not fill the queue") end
  if os.getenv("SOAK_VERBOSE") then for _, r in ipairs(rows) do say("soak: %s %s", p.tag, r) end end
  say("soak: %s %s clients=%d sent=%d handled=%d acked=%d received=%d dropped=%d late=%d waited=%s%s time=%.1fs",
      p.tag, #failures == 0 and "OK" or "FAIL", tot.clients, tot.sent, tot.handled, tot.acked, tot.received,
      tot.dropped, tot.late, tostring(res.waited), p.term_after and (" stop=%.1fs"):format(stop_time or -1) or "",
      npipe.now() - started)
  return failures
end

-- The three end phases: clients that half-close, slow readers, and SIGTERM while slow
-- readers still read. specs: COUNT:DELAY_MS per client (see bench/soak_client.py).
local function end_phases(tmp, short)
  local all = {}
  local function run(p)
    p.count_of = {}
    for i, s in ipairs(p.specs) do p.count_of[p.gid0 + i - 1] = tonumber(s:match("^(%d+)")) end
    for _, f in ipairs(end_phase(tmp, p)) do all[#all + 1] = f end
  end
  -- half-close: 0, 1 and 2 messages, then growing batches (past the 32 queued jobs at
  -- which npipe holds a connection's input, so the EOF waits behind kept frames)
  local specs, n = {}, short and 20 or 100
  for j = 1, n do specs[j] = ("%d:0"):format(j <= 3 and j - 1 or (short and 50 or 40) * (j - 3)) end
  run({ tag = "halfclose", kind = "halfclose", high_water = 1048576, linger = 5, drain = 2, pad = 0,
        gid0 = 1, specs = specs, seconds = short and 20 or 60 })
  -- slow readers: 2 KiB more per reply and an 8 KiB high_water, so the replies outgrow
  -- the kernel's socket buffer and npipe's queue, and writes wait
  specs, n = {}, short and 6 or 20
  for j = 1, n do specs[j] = ("%d:%d"):format(short and 400 or 4000, 1 + j % 3) end
  run({ tag = "slowread", kind = "slow", high_water = 8192, linger = 5, drain = 2, pad = 2048,
        gid0 = 1001, specs = specs, seconds = short and 20 or 60 })
  -- SIGTERM while they read: one client done before it, the others read ever more
  -- slowly, so some finish within the linger time and some lose what npipe still queued
  specs = { "100:0" }
  local delays = short and { 2, 8, 32, 64, 128 } or { 1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160 }
  for j, d in ipairs(delays) do specs[j + 1] = ("%d:%d"):format(short and 5000 or 20000, d) end
  run({ tag = "sigterm", kind = "slow", high_water = 8192, linger = short and 0.5 or 1, drain = short and 0.5 or 1,
        pad = 2048, gid0 = 2001, specs = specs, seconds = short and 20 or 60, term_after = short and 1 or 3 })
  return all
end

local function driver(short)
  local started = npipe.now()
  local CYCLES = short and 2000 or 100000
  local MSGS = short and 50000 or 1000000
  local CONNS, PROCS, WORKERS, ROUNDS = 100, 4, 4, 2
  local budget_end = started + (short and 60 or 290) -- the whole run, children included
  local tmp = os.tmpname()
  os.remove(tmp)
  os.execute("mkdir -p " .. q(tmp))
  local name = tmp .. "/soak.sock" -- a directory of its own: npipe.list() probes elsewhere do not count

  local p = assert(io.popen(("exec %s %s --server %s > %s/server.out 2>&1 & echo $!"):format(
    q(LUA), q(SELF), q(name), q(tmp))))
  local spid = tonumber(p:read("*l"))
  p:close()

  local totals = { cycles = 0, csum = 0, msgs = 0, sum = 0, lost = 0, dup = 0, reorder = 0, bad = 0 }
  local failures = {}
  local rss = {}

  local function phase(tag, cycles, msgs)
    local LIMIT = math.max(5, math.floor(budget_end - npipe.now())) -- seconds this phase may take
    local list = {}
    for w = 1, WORKERS do list[w] = { "--cycles", name, w, idiv(cycles, WORKERS), LIMIT } end
    local outs, failed = run_children(tmp, tag .. "-cycles", list, LIMIT)
    if failed then failures[#failures + 1] = failed end
    for _, o in ipairs(outs) do
      local n, s = o:match("result cycles=(%d+) sum=(%d+) errors=0")
      if n then totals.cycles, totals.csum = totals.cycles + tonumber(n), totals.csum + tonumber(s) end
    end
    list = {}
    local per = idiv(CONNS, PROCS)
    for i = 1, PROCS do list[i] = { "--stream", name, i, per, idiv(msgs, CONNS), LIMIT } end
    outs, failed = run_children(tmp, tag .. "-stream", list, LIMIT)
    if failed then failures[#failures + 1] = failed end
    for _, o in ipairs(outs) do
      local recv, s, lost, dup, re, bad = o:match(
        "result msgs=%d+ recv=(%d+) sum=(%d+) lost=(%d+) dup=(%d+) reorder=(%d+) bad=(%d+)")
      if recv then
        totals.msgs, totals.sum = totals.msgs + tonumber(recv), totals.sum + tonumber(s)
        totals.lost, totals.dup = totals.lost + tonumber(lost), totals.dup + tonumber(dup)
        totals.reorder, totals.bad = totals.reorder + tonumber(re), totals.bad + tonumber(bad)
      else
        totals.lost = totals.lost + idiv(msgs, PROCS) -- a client that did not report lost its share
      end
    end
  end

  local ok, err = pcall(function()
    local ready = false
    for _ = 1, 500 do
      if read_file(tmp .. "/server.out"):find("ready ", 1, true) then ready = true; break end
      npipe.sleep(0.01)
    end
    assert(ready, "the soak server did not start: " .. read_file(tmp .. "/server.out"))
    phase("warmup", 2 * WORKERS * 10, CONNS * 10)
    rss.start = rss_kb(spid)
    local c0, m0 = totals.cycles, totals.msgs
    for r = 1, ROUNDS do
      phase("round" .. r, idiv(CYCLES, ROUNDS), idiv(MSGS, ROUNDS))
      rss[r == 1 and "middle" or "end"] = rss_kb(spid)
    end
    local report = assert(npipe.call(name, "REPORT", { timeout = 5 }))
    -- the server saw exactly what the clients got back
    local sm, ss, sc, scs, so, sb, sconns = report:match(
      "msgs=(%d+) sum=(%d+) cycles=(%d+) csum=(%d+) order=(%d+) bad=(%d+) conns=(%d+)")
    assert(sm, "bad report: " .. report)
    if tonumber(sm) ~= totals.msgs or tonumber(ss) ~= totals.sum then
      failures[#failures + 1] = ("server received %s messages (sum %s), clients got back %d (sum %d)"):format(
        sm, ss, totals.msgs, totals.sum)
    end
    if tonumber(sc) ~= totals.cycles or tonumber(scs) ~= totals.csum then
      failures[#failures + 1] = ("server saw %s cycles (sum %s), clients completed %d (sum %d)"):format(
        sc, scs, totals.cycles, totals.csum)
    end
    if tonumber(so) + tonumber(sb) > 0 then
      failures[#failures + 1] = "server: " .. report
    end
    totals.reorder, totals.bad = totals.reorder + tonumber(so), totals.bad + tonumber(sb)
    totals.conns = tonumber(sconns)
    -- every cycle, every stream connection of every round and the report call: once each
    local want_conns = totals.cycles + (ROUNDS + 1) * CONNS + 1
    if totals.conns ~= want_conns then
      failures[#failures + 1] = ("the server accepted %d connections, expected %d"):format(totals.conns, want_conns)
    end
    if totals.cycles - c0 ~= CYCLES then
      failures[#failures + 1] = ("%d of %d cycles completed"):format(totals.cycles - c0, CYCLES)
    end
    if totals.msgs - m0 ~= MSGS then
      failures[#failures + 1] = ("%d of %d messages came back"):format(totals.msgs - m0, MSGS)
    end
    assert(rss.start and rss.middle and rss["end"], "could not read the server's RSS")
    local margin = 8 * 1024 + idiv(math.max(0, rss.middle - rss.start), 2)
    if ASAN then
      rss.note = " (RSS not judged under AddressSanitizer: its quarantine keeps freed memory)"
    elseif rss["end"] > rss.middle + margin then
      failures[#failures + 1] = ("server RSS grew from %d KiB (middle) to %d KiB (end), more than %d KiB"):format(
        rss.middle, rss["end"], margin)
    end
  end)
  if not ok then failures[#failures + 1] = tostring(err) end
  os.execute(("kill -TERM %d 2>/dev/null; sleep 0.2; kill -KILL %d 2>/dev/null"):format(spid, spid))
  local eok, efail = pcall(end_phases, tmp, short)
  if not eok then efail = { tostring(efail) } end
  for _, f in ipairs(efail) do failures[#failures + 1] = f end
  os.execute("rm -rf " .. q(tmp))

  local bad = totals.lost + totals.dup + totals.reorder + totals.bad
  say("soak%s: %s cycles=%d messages=%d clients=%d connections=%s lost=%d dup=%d reorder=%d bad=%d "
      .. "rss_kb start=%s middle=%s end=%s time=%.1fs",
      short and " --short" or "", (#failures == 0 and bad == 0) and "OK" or "FAIL",
      totals.cycles, totals.msgs, CONNS, tostring(totals.conns), totals.lost, totals.dup, totals.reorder,
      totals.bad, tostring(rss.start), tostring(rss.middle), tostring(rss["end"]), npipe.now() - started)
  if rss.note then say("soak:%s", rss.note) end
  for _, f in ipairs(failures) do io.stderr:write("soak: ", f, "\n") end
  os.exit((#failures == 0 and bad == 0) and 0 or 1)
end

local mode = arg[1]
if mode == "--server" then
  run_server(arg[2])
elseif mode == "--cycles" then
  run_cycles(arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]))
elseif mode == "--stream" then
  run_stream(arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6]))
elseif mode == "--end-server" then
  run_end_server(arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6]))
elseif mode == nil or mode == "--short" then
  driver(mode == "--short")
else
  io.stderr:write("usage: lua5.4 bench/soak.lua [--short]\n")
  os.exit(2)
end
