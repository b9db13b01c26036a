#!/usr/bin/env bash
# The harness's sticky-error path without a GPU: a self-test program with
# BARBELL_TEST_SIMULATE_STICKY must stop at the check that "raised" the error, name it in
# a STICKY line and exit with 3 (cuda_check.hpp's kExitSticky), running no check after it.
#   sticky_selftest.sh PROGRAM (a cuda_selftest_* program)
set -uo pipefail
prog=${1:?usage: sticky_selftest.sh PROGRAM}
out=$(BARBELL_TEST_QUICK=1 BARBELL_TEST_FILTER=copies BARBELL_TEST_SIMULATE_STICKY="[f32] n=7 clone is a new" "$prog" 2>&1)
rc=$?
fail() {
  echo "sticky_selftest: $*"
  echo "----- output"
  echo "$out"
  exit 1
}
((rc == 3)) || fail "exit status $rc, want 3"
grep -q '^STICKY copy roundtrip+clone \[f32\] n=7  simulated sticky error' <<<"$out" ||
  fail "no STICKY line naming 'copy roundtrip+clone [f32] n=7'"
grep -q 'stopped at a sticky CUDA error' <<<"$out" || fail "the SUMMARY does not say it stopped"
# nothing ran after the block that raised it
after=$(sed -n '/sticky CUDA error: the device no longer works/,$p' <<<"$out" | grep -c '^PASS\|^SKIP')
((after == 0)) || fail "$after checks ran after the sticky error"
grep -q '^PASS copy roundtrip+clone \[f32\] n=1 clone' <<<"$out" || fail "the checks before it did not run"
echo "sticky_selftest: ok (exit 3, STICKY names the block, nothing ran after it)"
