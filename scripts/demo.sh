#!/usr/bin/env bash
# The main job: builds npipe and serves the demo (echo, whoami, ...) on the pipe "demo"
# (`npipe serve`; pass --name NAME or a SCRIPT to serve something else).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
source scripts/env.sh
exec lua5.4 bin/npipe serve "$@"
