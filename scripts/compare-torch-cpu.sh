#!/usr/bin/env bash
# The same-run CPU comparison with PyTorch eager (bench_train --compare-torch), written to
# benchmarks/results/DATE-cpu-compare_torch-COMMIT.{json,log}.
#
#   scripts/compare-torch-cpu.sh [BUILD_DIR] [VENV] [-- extra bench_train flags]
#
# BUILD_DIR (default build) holds benchmarks/bench_train; VENV (default .venv-torch) is a
# venv made by scripts/setup-torch-cpu.sh. Waits (up to WAIT_QUIET seconds, default 0) for
# the 1-minute load average to drop under 0.5 first, since timings of a busy machine are
# noise; the load before and after is in the JSON either way.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-build}"
venv="${2:-.venv-torch}"
shift $(($# >= 2 ? 2 : $#))
[[ "${1:-}" == "--" ]] && shift
eval "$("$root/scripts/setup-torch-cpu.sh" --env "$venv")"
deadline=$((SECONDS + ${WAIT_QUIET:-0}))
while (($(awk '{print ($1 < 0.5)}' /proc/loadavg) == 0 && SECONDS < deadline)); do sleep 10; done
commit="$(git -C "$root" rev-parse --short HEAD)"
out="$root/benchmarks/results/$(date -u +%Y-%m-%d)-cpu-compare_torch-$commit"
"$build/benchmarks/bench_train" --compare-torch --presets tiny,small,medium,user --json "$out.json" "$@" 2>&1 |
  tee "$out.log"
echo "wrote $out.json and $out.log"
