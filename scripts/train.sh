#!/usr/bin/env bash
# The README's first command: build, then run the main job (barbell-train). Arguments
# go to barbell-train; with none it trains the demo GPT on 3-digit additions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/build.sh
exec "${BARBELL_BUILD_DIR:-build}/examples/barbell-train" "$@"
