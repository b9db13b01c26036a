#!/usr/bin/env bash
# Runs a command that must fail: passes if it exits non-zero within LIMIT seconds and its
# output matches REGEX (grep -E). Usage: expect_failure.sh LIMIT REGEX -- command [args...]
set -u
limit=$1 regex=$2
shift 3
start=$(date +%s%N)
out=$(timeout -k 5 "$limit" "$@" 2>&1)
rc=$?
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
printf '%s\n' "$out"
echo "--- exit status $rc after ${elapsed} ms"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "FAIL: still running after ${limit} s (a hang)"; exit 1
fi
if [ "$rc" -eq 0 ]; then
  echo "FAIL: exited 0, expected a failure"; exit 1
fi
if ! grep -Eq -- "$regex" <<<"$out"; then
  echo "FAIL: the output does not match /$regex/"; exit 1
fi
echo "PASS: failed as expected in ${elapsed} ms"
