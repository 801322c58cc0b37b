# Sourced by the scripts: lets lua5.4 find npipe in this tree without installing it.
NPIPE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LUA_PATH="$NPIPE_ROOT/lua/?.lua;$NPIPE_ROOT/lua/?/init.lua;;"
export LUA_CPATH="$NPIPE_ROOT/${NPIPE_BUILD:-build}/?.so;;"
