#!/usr/bin/env bash
# Builds npipe/core.so and the C tests into build/ (or $NPIPE_BUILD).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${NPIPE_BUILD:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=${NPIPE_BUILD_TYPE:-RelWithDebInfo} -DBUILD_TESTING=ON ${NPIPE_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j"$(nproc)" >/dev/null
