#!/usr/bin/env bash
# CTest train.resume: barbell-train continues a run from its checkpoint with exactly the losses of an
# uninterrupted run, refuses a checkpoint of another model or with damaged bytes, drops a torn metrics
# line, removes dead writers' temp files, and lists its flags in --help.
# Usage: train_resume_test.sh BARBELL_TRAIN WORKDIR
set -euo pipefail

train=$1
work=$2
rm -rf "$work"
mkdir -p "$work"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# The cosine schedule depends on --steps, so the learning rate is made constant after a 5-step warm-up
# (--min-lr equal to --lr): a 15-step run then trains exactly like the first half of a 30-step one, and
# its final checkpoint at step 15 is the interrupted run.
common=(--preset tiny --batch 16 --eval-problems 50 --samples 2 --eval-every 0 --log-every 10
        --lr 2e-3 --min-lr 2e-3 --warmup 5 --seed 7)

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

# Runs barbell-train with the common flags plus "$@", output to $work/$log; fails with the log on a
# non-zero exit.
run_ok() {
  local log=$1
  shift
  "$train" "${common[@]}" "$@" > "$work/$log" 2>&1 || { cat "$work/$log"; fail "barbell-train $* failed"; }
}
# The same, but the run must fail; the log is left for inspection.
run_fails() {
  local log=$1
  shift
  if "$train" "${common[@]}" "$@" > "$work/$log" 2>&1; then
    cat "$work/$log"
    fail "barbell-train $* exited 0"
  fi
}
# Fails with the log unless it matches the extended regular expression.
expect_log() {
  grep -Eq -- "$2" "$work/$1" || { cat "$work/$1"; fail "$1 does not match '$2'"; }
}
field() { awk -v c="$1" '{print $c}' "$2" | tr '\n' ' '; }

echo "== uninterrupted: 30 steps"
run_ok full.log --steps 30 --save-every 15 --out "$work/full"

echo "== interrupted at step 15, then resumed to step 30"
run_ok part1.log --steps 15 --save-every 0 --out "$work/resumed"
run_ok part2.log --steps 30 --save-every 15 --out "$work/resumed" --resume
expect_log part2.log "resumed from .* at step 15"

full=$work/full.steps
resumed=$work/resumed.steps
steps_of "$work/full/metrics.jsonl" > "$full"
steps_of "$work/resumed/metrics.jsonl" > "$resumed"
all_steps="$(seq -s ' ' 1 30) "
[ "$(field 1 "$full")" = "$all_steps" ] || fail "the full run logged steps $(field 1 "$full")"
[ "$(field 1 "$resumed")" = "$all_steps" ] || fail "the resumed run logged steps $(field 1 "$resumed")"
# Steps 16..30 come from the resumed process: loss, lr and gradient norm must match to the last digit.
if ! diff <(sed -n '16,30p' "$full") <(sed -n '16,30p' "$resumed"); then
  fail "steps 16..30 differ between the uninterrupted and the resumed run (step loss lr grad_norm above)"
fi
if ! diff <(sed -n '1,15p' "$full") <(sed -n '1,15p' "$resumed"); then
  fail "steps 1..15 differ: the two runs did not start alike"
fi
# The comparison is not vacuous: the loss changed during training.
first_loss=$(sed -n '1p' "$full" | awk '{print $2}')
last_loss=$(sed -n '30p' "$full" | awk '{print $2}')
[ "$first_loss" != "$last_loss" ] || fail "the loss did not change over 30 steps"
echo "steps 16..30 identical; loss at step 1 $first_loss, at step 30 $last_loss"

echo "== --resume with another --n-embd is refused"
cp "$work/resumed/checkpoint.safetensors" "$work/checkpoint.before"
cp "$work/resumed/metrics.jsonl" "$work/metrics.before"
run_fails mismatch.log --steps 30 --n-embd 32 --out "$work/resumed" --resume
expect_log mismatch.log "error:.*$work/resumed/checkpoint.safetensors"
expect_log mismatch.log '"n_embd":64'
expect_log mismatch.log '"n_embd":32'
cmp -s "$work/checkpoint.before" "$work/resumed/checkpoint.safetensors" ||
  fail "the refused resume changed the checkpoint"
cmp -s "$work/metrics.before" "$work/resumed/metrics.jsonl" || fail "the refused resume changed metrics.jsonl"
grep "error:" "$work/mismatch.log"

echo "== a damaged checkpoint byte is detected by its checksum; the previous files stay as they were"
cp "$work/checkpoint.before" "$work/damaged.safetensors"
mkdir -p "$work/damaged"
cp "$work/metrics.before" "$work/damaged/metrics.jsonl"
# Flip one bit 1000 bytes before the end: inside the last tensor's bytes.
size=$(stat -c %s "$work/damaged.safetensors")
python3 - "$work/damaged.safetensors" "$((size - 1000))" <<'PY'
import sys
path, pos = sys.argv[1], int(sys.argv[2])
b = bytearray(open(path, "rb").read())
b[pos] ^= 1
open(path, "wb").write(bytes(b))
PY
cp "$work/damaged.safetensors" "$work/damaged/checkpoint.safetensors"
run_fails damaged.log --steps 30 --out "$work/damaged" --resume
expect_log damaged.log "error: load_safetensors: .*damaged/checkpoint.safetensors: tensor '.*': its bytes are damaged"
cmp -s "$work/damaged.safetensors" "$work/damaged/checkpoint.safetensors" || fail "the refused resume changed the checkpoint"

echo "== a line cut short by a kill is dropped on resume; temp files of dead writers are removed"
rm -rf "$work/torn"
run_ok torn1.log --steps 15 --save-every 0 --out "$work/torn"
printf '{"step":16,"lo' >> "$work/torn/metrics.jsonl"
# A pid that is no process: a subshell that has exited.
dead_pid=$(bash -c 'echo $$')
touch "$work/torn/checkpoint.safetensors.tmp.$dead_pid"
run_ok torn.log --steps 30 --save-every 15 --out "$work/torn" --resume
expect_log torn.log "note: .*metrics.jsonl: dropped line 17, cut short"
[ ! -e "$work/torn/checkpoint.safetensors.tmp.$dead_pid" ] || fail "a dead writer's temp file was left"
steps_of "$work/torn/metrics.jsonl" > "$work/torn.steps"
diff "$full" "$work/torn.steps" || fail "after the torn line the log differs from the uninterrupted run's"

echo "== --resume without a checkpoint is refused"
run_fails empty.log --steps 30 --out "$work/empty" --resume
expect_log empty.log "error:.*$work/empty/checkpoint.safetensors"

echo "== the attention backend: printed, and an impossible request is refused before training"
expect_log full.log '^attention: math \(head dim [0-9]+\)'
run_fails flash.log --steps 1 --device cpu --attention flash --out "$work/flash"
expect_log flash.log 'error: barbell-train: --attention flash with head dim [0-9]+ .*CUDA'

echo "== --help"
"$train" --help > "$work/help.log" 2>&1 || { cat "$work/help.log"; fail "--help exited non-zero"; }
for flag in --data --resume --steps --attention; do
  grep -q -- "$flag" "$work/help.log" || { cat "$work/help.log"; fail "--help does not list $flag"; }
done

echo "train.resume: OK"
