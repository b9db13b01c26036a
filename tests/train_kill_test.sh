#!/usr/bin/env bash
# The kill test: SIGKILLs barbell-train at random moments while it saves a checkpoint every step,
# resuming after each kill. After every kill the last checkpoint must load (checksums verified) at a
# step no earlier than the one before, and at most one temp checkpoint (the killed save's) may be
# left; at the end the killed-and-resumed run must have logged exactly one line per step, with the
# uninterrupted run's loss, lr and gradient norm bit for bit, and no temp file.
# Usage: train_kill_test.sh BARBELL_TRAIN TRAIN_KILL_CHECK WORKDIR KILLS
set -euo pipefail

train=$1
check=$2
work=$3
kills_wanted=$4
rm -rf "$work"
mkdir -p "$work"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

steps=$((10 * kills_wanted))
# The small preset: a 9.6 MB checkpoint each step, so that about half the time goes to saving.
common=(--preset small --batch 4 --save-every 1 --eval-every 0 --eval-problems 0 --samples 0
        --threads 1 --log-every 1000000 --seed 11)

# "step loss lr grad_norm" for each training step of a metrics.jsonl (evaluation lines have no loss).
steps_of() {
  awk '/"loss":/ {
    out = ""
    n = split("step loss lr grad_norm", keys, " ")
    for (i = 1; i <= n; ++i) {
      if (!match($0, "\"" keys[i] "\":[^,}]+")) { print "missing " keys[i] ": " $0; exit 1 }
      out = out (i > 1 ? " " : "") substr($0, RSTART + length(keys[i]) + 3, RLENGTH - length(keys[i]) - 3)
    }
    print out
  }' "$1"
}
ms() { date +%s%3N; }

echo "== uninterrupted: $steps steps, a checkpoint each"
t0=$(ms)
"$train" "${common[@]}" --steps "$steps" --out "$work/ref" >"$work/ref.log" 2>&1 || { cat "$work/ref.log"; fail "the uninterrupted run failed"; }
ref_ms=$(($(ms) - t0))
t0=$(ms)
"$train" "${common[@]}" --steps 1 --out "$work/startup" >"$work/startup.log" 2>&1 || fail "a 1-step run failed"
startup_ms=$(($(ms) - t0))
step_ms=$(((ref_ms - startup_ms) / steps + 1))
echo "run ${ref_ms} ms: about ${startup_ms} ms to start, ${step_ms} ms per step (training and saving)"

echo "== killed at random moments ($kills_wanted kills), resumed after each"
out=$work/killed
ckpt=$out/checkpoint.safetensors
mkdir -p "$out"
kills=0 in_save=0 resumes=0 prev_step=0 segments=0
while ((kills < kills_wanted)); do
  resume=()
  if [[ -f $ckpt ]]; then
    resume=(--resume)
    resumes=$((resumes + 1))
  fi
  segments=$((segments + 1))
  "$train" "${common[@]}" --steps "$steps" --out "$out" "${resume[@]}" >"$work/segment.log" 2>&1 &
  pid=$!
  # Anywhere from the start (a kill while it resumes) to about 8 steps in: some 5 steps of
  # progress per kill on average, well within the 10 per kill the run has.
  delay_ms=$((RANDOM % (startup_ms + 1) + RANDOM % (8 * step_ms + 1)))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if kill -KILL "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
  else
    rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || { cat "$work/segment.log"; fail "a segment failed by itself (exit $rc)"; }
    fail "the run finished after $kills kills; more steps are needed for $kills_wanted"
  fi
  temps=$(find "$out" -name 'checkpoint.safetensors.tmp.*' | wc -l)
  ((temps <= 1)) || fail "after kill $kills: $temps temp checkpoints (stale ones were not removed)"
  ((temps == 0)) || in_save=$((in_save + 1))
  if [[ -f $ckpt ]]; then
    step=$("$check" "$ckpt") || fail "after kill $kills the checkpoint does not load: $step"
    ((step >= prev_step)) || fail "after kill $kills the checkpoint went back from step $prev_step to $step"
    prev_step=$step
  fi
done
echo "== the last resume, to the end"
"$train" "${common[@]}" --steps "$steps" --out "$out" --resume >"$work/last.log" 2>&1 || { cat "$work/last.log"; fail "the last resume failed"; }
resumes=$((resumes + 1))
temps=$(find "$out" -name '*.tmp*' | wc -l)
((temps == 0)) || fail "$temps temp files left at the end"

steps_of "$work/ref/metrics.jsonl" >"$work/ref.steps"
steps_of "$out/metrics.jsonl" >"$work/killed.steps"
[[ $(awk '{print $1}' "$work/killed.steps" | tr '\n' ' ') == "$(seq -s ' ' 1 "$steps") " ]] ||
  fail "the killed run's log does not hold exactly one line per step 1..$steps"
diff "$work/ref.steps" "$work/killed.steps" >/dev/null ||
  fail "the killed-and-resumed run's losses differ from the uninterrupted run's: diff $work/ref.steps $work/killed.steps"
echo "train.kill: OK: $kills kills ($in_save during a save, $((kills - in_save)) elsewhere), every checkpoint intact," \
  "$resumes resumes, all $steps steps bit-exact against the uninterrupted run"
