-- Loading a handlers script: what `npipe serve SCRIPT` serves (and reloads) and what
-- npipe.test's nt.serve(path) loads, the same way, so a script is tested exactly as it is run.
local M = {}

--- Runs the Lua file at path; returns what it returned (a handlers table or a function),
-- or nil and why. The chunk gets state as its argument (`local state = ...`): a table that
-- the caller keeps across reloads of the script (a new one when state is nil), so that a
-- reloaded script finds what the previous version stored there. What a script that then
-- fails stored there stays.
function M.load(path, state)
  local chunk, err = loadfile(path)
  if not chunk then return nil, "cannot load " .. tostring(err) end
  local ok, handlers = pcall(chunk, state or {})
  if not ok then return nil, "error running " .. path .. ": " .. tostring(handlers) end
  if type(handlers) ~= "table" and type(handlers) ~= "function" then
    return nil, path .. " must return a handlers table or a function, not " .. type(handlers)
  end
  return handlers
end

return M
