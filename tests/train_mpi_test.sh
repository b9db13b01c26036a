#!/usr/bin/env bash
# barbell-train under mpirun: N ranks train data-parallel with no other change, with
# DataParallel and with ZeRO-1; rank 0 alone prints and writes the checkpoint; a run
# resumes from it. Usage: train_mpi_test.sh MPIRUN NP BARBELL_TRAIN WORKDIR
set -euo pipefail
mpirun=$1 np=$2 exe=$3 dir=$4
rm -rf "$dir" && mkdir -p "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }
common=(--preset tiny --batch 12 --warmup 2 --eval-every 0 --save-every 0 --eval-problems 24 --samples 1)
for mode in ddp zero; do
  extra=()
  [[ $mode == zero ]] && extra=(--zero)
  out="$dir/$mode"
  log="$dir/$mode.log"
  "$mpirun" -np "$np" --oversubscribe "$exe" "${common[@]}" "${extra[@]}" --steps 6 --out "$out" > "$log" 2>&1 \
    || { cat "$log"; fail "$mode: barbell-train exited non-zero under mpirun -np $np"; }
  grep -q "done in" "$log" || { cat "$log"; fail "$mode: no 'done in' line"; }
  n=$(grep -c "^model:" "$log" || true)
  [[ $n == 1 ]] || { cat "$log"; fail "$mode: expected rank 0 alone to print the model line, saw it $n times"; }
  [[ -f $out/checkpoint.safetensors ]] || fail "$mode: no checkpoint written"
  # metrics.jsonl: one line per step from rank 0 only (plus evaluation lines).
  steps=$(grep -c '"loss"' "$out/metrics.jsonl" || true)
  (( steps >= 6 )) || fail "$mode: metrics has $steps loss lines, expected at least 6"
  # Extend the run from its checkpoint.
  "$mpirun" -np "$np" --oversubscribe "$exe" "${common[@]}" "${extra[@]}" --out "$out" --resume \
    --steps 8 > "$log.resume" 2>&1 || { cat "$log.resume"; fail "$mode: --resume failed under mpirun"; }
  grep -q "done in" "$log.resume" || { cat "$log.resume"; fail "$mode: resumed run did not finish"; }
  echo "ok: $mode, $np ranks"
done
