#!/usr/bin/env bash
# The main job: builds npipe and serves the demo (echo, whoami, ...) on the pipe "demo".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
source scripts/env.sh
exec lua5.4 examples/demo.lua "$@"
