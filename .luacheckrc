std = "lua54"
max_line_length = 120
files["spec"] = { std = "+busted" }
files["examples/spec"] = { std = "+busted" }
files["bench"] = { globals = { "arg" }, max_line_length = 150 }
-- the profiler hooks every coroutine by wrapping coroutine.create/wrap on purpose
files["bench/prof/luaprof.lua"] = { ignore = { "122" } }
exclude_files = { "build", "build-*", "build.luarocks", "bench/build" }
files["spec/fixtures/nvim_host.lua"] = { globals = { "vim" } }
