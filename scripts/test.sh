#!/usr/bin/env bash
# The README's second command, and what CI runs: build, then the whole test suite.
# Tests that need a GPU report "skipped" on a machine without one; with clang and the
# CUDA headers (nvcc not needed) the CUDA backend then runs on the emulated device too
# (scripts/test-emulated.sh; BARBELL_TEST_EMULATED=0 skips that part).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/build.sh
ctest --test-dir "${BARBELL_BUILD_DIR:-build}" --output-on-failure -j"${BARBELL_JOBS:-$(nproc)}"
if [[ ${BARBELL_TEST_EMULATED:-1} != 0 ]]; then
  if command -v clang++ >/dev/null && [[ -f /usr/local/cuda/include/cuda_runtime.h || -n ${CUDA_HOME:-} ]]; then
    bash scripts/test-emulated.sh
  else
    echo "test: the emulated-device tests need clang++ and the CUDA headers: not run"
  fi
fi
