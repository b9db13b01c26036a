#!/usr/bin/env bash
# Installs missing packages, configures (CUDA backend when nvcc is found) and builds
# barbell into build/ (or $BARBELL_BUILD_DIR). Used by train.sh, test.sh and CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build_dir=${BARBELL_BUILD_DIR:-build}
jobs=${BARBELL_JOBS:-$(nproc)}
bash scripts/setup-deps.sh
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build_dir" -j"$jobs"
