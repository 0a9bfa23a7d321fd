#!/usr/bin/env bash
# Installs what flashgpt needs, builds it, and runs the whole test suite with ctest.
#   scripts/test.sh              (build directory: build/)
#   BUILD_DIR=... scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" --parallel
cd "$build_dir"
ctest --output-on-failure --parallel "$(nproc)"
