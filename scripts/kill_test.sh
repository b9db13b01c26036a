#!/usr/bin/env bash
# The long kill test (CI runs 30 kills as the CTest train.kill): SIGKILLs barbell-train KILLS times
# at random moments while it saves a checkpoint every step, and checks every checkpoint and the
# bit-exact resumes (tests/train_kill_test.sh says what exactly).
#   scripts/kill_test.sh [KILLS] [BUILD_DIR]   (default 120 kills, build/; builds what it needs)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
KILLS=${1:-120}
BUILD_DIR=${2:-build}
[[ -f $BUILD_DIR/CMakeCache.txt ]] || { echo "kill_test: configure $BUILD_DIR first (see README)" >&2; exit 1; }
cmake --build "$BUILD_DIR" -j "${BARBELL_JOBS:-2}" --target barbell-train train_kill_check
exec bash tests/train_kill_test.sh "$BUILD_DIR/examples/barbell-train" "$BUILD_DIR/tests/train_kill_check" \
  "$BUILD_DIR/tests/tmp/train_kill_long" "$KILLS"
