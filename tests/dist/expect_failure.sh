#!/usr/bin/env bash
# Runs a command that must fail: passes if it exits non-zero within LIMIT seconds and its
# output matches REGEX (grep -E). Usage: expect_failure.sh LIMIT REGEX -- command [args...]
#
# The command is a launcher (mpirun) whose children are the ranks. Open MPI 4.1's mpirun can
# itself hang (or crash) in its own teardown, PMIx_server_finalize, when it aborts a job while
# a rank is inside MPI_Finalize; a plain C program that calls MPI_Finalize on one rank and
# exits 1 without it on the others does that too, so it is not barbell's. What is bounded
# here is the job's ranks: once they have all ended, the launcher gets 5 s to exit, and is
# killed (and said so) if it does not; a rank still running at LIMIT is a hang.
set -u
limit=$1 regex=$2
shift 3
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s%N)
"$@" >"$log" 2>&1 &
pid=$!
ms() { echo $((($(date +%s%N) - start) / 1000000)); }
live_children() { ps --ppid "$pid" -o stat= 2>/dev/null | grep -vc '^Z'; }
seen=0 ranks_done_ms="" stuck=0
while kill -0 "$pid" 2>/dev/null; do
  n=$(live_children)
  if ((n > 0)); then
    seen=1
  elif ((seen)) && [ -z "$ranks_done_ms" ]; then
    ranks_done_ms=$(ms)
  fi
  if [ -n "$ranks_done_ms" ] && (($(ms) - ranks_done_ms > 5000)); then
    stuck=1
    break
  fi
  if (($(ms) > limit * 1000)); then
    break
  fi
  sleep 0.05
done
if kill -0 "$pid" 2>/dev/null; then
  pkill -9 -P "$pid" 2>/dev/null  # the ranks still running, if any (they are the launcher's children)
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rc=137
else
  wait "$pid"
  rc=$?
fi
elapsed=$(ms)
out=$(cat "$log")
printf '%s\n' "$out"
echo "--- exit status $rc after ${elapsed} ms"
if ((stuck)); then
  echo "NOTE: every rank had ended after ${ranks_done_ms} ms, but the launcher did not exit within 5 s" \
    "(Open MPI's teardown race, see above): killed"
  rc=1
  elapsed=$ranks_done_ms
elif [ "$rc" -eq 137 ]; then
  echo "FAIL: still running after ${limit} s (a hang)"; exit 1
fi
if [ "$rc" -eq 0 ]; then
  echo "FAIL: exited 0, expected a failure"; exit 1
fi
if ! grep -Eq -- "$regex" <<<"$out"; then
  echo "FAIL: the output does not match /$regex/"; exit 1
fi
echo "PASS: failed as expected in ${elapsed} ms"
