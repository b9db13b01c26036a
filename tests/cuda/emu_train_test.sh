#!/usr/bin/env bash
# barbell-train on the emulated device (BARBELL_CUDA=EMULATE): a tiny GPT with head dim 64
# (so the flash kernels train it) for a few steps in f32 and in bf16 with fp32 master
# weights, each against the same run on the CPU, compared step by step with the check
# scripts/device-check.sh uses on a GPU (scripts/compare_train.py: within 2% for 10 steps,
# 5% after, both losses down by 10% or more).
#   emu_train_test.sh BARBELL_TRAIN OUT_DIR
set -euo pipefail
train=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rm -rf "$out"
mkdir -p "$out"
args=(--preset tiny --n-embd 128 --n-head 2 --steps 14 --batch 16 --warmup 2 --lr 3e-3 --seed 7 --eval-every 0
  --eval-problems 10 --samples 0 --save-every 0 --log-every 1 --threads 1)
rc=0
for dt in f32 bf16; do
  for dev in cuda cpu; do
    echo "== barbell-train --device $dev --dtype $dt"
    "$train" "${args[@]}" --device "$dev" --dtype "$dt" --out "$out/$dt-$dev" > "$out/$dt-$dev.log" 2>&1 || {
      echo "barbell-train --device $dev --dtype $dt failed:"
      tail -20 "$out/$dt-$dev.log"
      exit 1
    }
    grep -m1 "emulator\|attention" "$out/$dt-$dev.log" || true
  done
  echo "== $dt: emulated cuda vs cpu"
  python3 "$here/../../scripts/compare_train.py" "$out/$dt-cuda/metrics.jsonl" "$out/$dt-cpu/metrics.jsonl" || rc=1
done
exit $rc
