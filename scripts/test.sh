#!/usr/bin/env bash
# The README's second command, and what CI runs: build, then the whole test suite.
# Tests that need a GPU report "skipped" on a machine without one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/build.sh
ctest --test-dir "${BARBELL_BUILD_DIR:-build}" --output-on-failure -j"${BARBELL_JOBS:-$(nproc)}"
