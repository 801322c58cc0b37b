-- Starts Debian's busted inside the Windows build of Lua (scripts/wine.sh runs it with
-- lua.exe under Wine). Busted needs three C modules: lfs and term.core are built for
-- Windows from Debian's source packages, but lua-system's source package cannot be
-- fetched here (its tarballs answer 404 on the mirror), so system.core is replaced by
-- the three clock functions busted takes from it, for timing its report only.
package.preload["system.core"] = function()
  local start = os.clock() -- the Windows C runtime's clock() counts wall time since start
  local function monotime() return os.clock() - start end
  return {
    gettime = os.time,
    monotime = monotime,
    sleep = function(seconds)
      local deadline = monotime() + seconds
      while monotime() < deadline do end -- bounded by the deadline; specs do not call it
    end,
  }
end

require("busted.runner")({ standalone = false })
