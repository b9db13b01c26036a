#!/usr/bin/env bash
# Builds barbell (CPU only) with AddressSanitizer + UndefinedBehaviorSanitizer in its own
# build dir, runs every CTest test there, and prints a summary of what the sanitizers reported.
#   scripts/sanitize.sh [BUILD_DIR]   (default build-asan; extra ctest args via CTEST_ARGS;
#   CLEAN=1 rebuilds from scratch: objects compiled while headers were being edited mismatch)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
BUILD_DIR=${1:-build-asan}
JOBS=${BARBELL_JOBS:-2}
SANITIZERS=${BARBELL_SANITIZERS:-address,undefined}

# Leaks are errors. The only suppressions are for libgomp/libopenblas internals
# (scripts/lsan.supp); a leak in barbell's own code is always reported.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:detect_odr_violation=2:print_summary=1"
export LSAN_OPTIONS="suppressions=${root}/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:print_summary=1"
# OpenBLAS's own threads on top of OpenMP's make ASan runs slow and noisy on 2 cores.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

t0=$SECONDS
echo "=== sanitize: configure ${BUILD_DIR} (${SANITIZERS}, CUDA off, RelWithDebInfo) ==="
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBARBELL_CUDA=OFF \
  -DBARBELL_SANITIZE="$SANITIZERS" -DBARBELL_TESTS=ON -DBARBELL_EXAMPLES=ON -DBARBELL_BENCHMARKS=OFF \
  -DBARBELL_MPI=OFF  # Open MPI's own allocations at exit would drown LSan; the dist code runs one-rank here
echo "=== sanitize: build (-j${JOBS}) ==="
# Catch2 test discovery runs each test binary at build time, so the options above matter here too.
clean=()
[[ ${CLEAN:-0} == 1 ]] && clean=(--clean-first)
cmake --build "$BUILD_DIR" -j "$JOBS" "${clean[@]}"
t_build=$((SECONDS - t0))

echo "=== sanitize: ctest ==="
rc=0
# shellcheck disable=SC2086  # CTEST_ARGS is a list of words on purpose
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" ${CTEST_ARGS:-} || rc=$?
t_total=$((SECONDS - t0))

log=${BUILD_DIR}/Testing/Temporary/LastTest.log
failed_log=${BUILD_DIR}/Testing/Temporary/LastTestsFailed.log
echo
echo "=== sanitize: summary ==="
echo "build ${t_build}s, total ${t_total}s, ctest exit ${rc}"
if [[ -f $log ]]; then
  count() { grep -c -E "$1" "$log" || true; }
  echo "  AddressSanitizer errors : $(count 'ERROR: AddressSanitizer')"
  echo "  LeakSanitizer reports   : $(count 'ERROR: LeakSanitizer')"
  echo "  UB (runtime error:)     : $(count 'runtime error:')"
  # The first line of each distinct report, with where it was found, most frequent first.
  grep -E 'ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)' "$log" \
    | sed -E 's/==[0-9]+==//; s/0x[0-9a-f]+/0x.../g' | sort | uniq -c | sort -rn | head -30 || true
fi
if [[ -f $failed_log && $rc -ne 0 ]]; then
  echo "  failed tests:"
  sed 's/^/    /' "$failed_log"
fi
if ((rc == 0)); then echo "sanitize: CLEAN"; else echo "sanitize: FAILURES (see above and ${log})"; fi
exit "$rc"
