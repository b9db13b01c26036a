#!/usr/bin/env bash
# The CUDA backend on barbell's host emulator of the GPU (emu/README.md): configures
# build-emu/ (or $BARBELL_EMU_BUILD_DIR) with clang and -DBARBELL_CUDA=EMULATE, builds what
# runs there (libbarbell, tests/cuda, tests/sim, barbell-train, bench_kernels) and runs
# ctest -L 'cuda-emu|sim' on it: every kernel and every tests/cuda program, without a GPU.
# Called by scripts/test.sh; needs clang++ and the CUDA headers (not nvcc, not a GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build_dir=${BARBELL_EMU_BUILD_DIR:-build-emu}
jobs=${BARBELL_JOBS:-$(nproc)}
cxx=${BARBELL_EMU_CXX:-$(command -v clang++ || true)}
if [[ -z $cxx ]]; then
  echo "test-emulated: no clang++: the emulated device needs clang's instrumentation (apt install clang)" >&2
  exit 1
fi
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  CXX=$cxx CC=${cxx%++} cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBARBELL_CUDA=EMULATE \
    -DBARBELL_MPI=OFF -DBARBELL_TESTS=ON -DBARBELL_EXAMPLES=ON -DBARBELL_BENCHMARKS=ON
fi
cmake --build "$build_dir" -j"$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j"$jobs" -L 'cuda-emu|sim'
