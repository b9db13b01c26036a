#!/usr/bin/env bash
# The same-run CPU comparisons into benchmarks/results/: barbell against PyTorch eager
# (bench_train --compare-torch), or with MODE=bf16 barbell's bf16 against its f32
# (--compare-bf16), for the configs tiny, small, medium and user at 1 and 2 threads.
#
#   scripts/compare-torch-cpu.sh [BUILD_DIR] [VENV] [-- extra bench_train flags]
#
# BUILD_DIR (default build) holds benchmarks/bench_train; VENV (default .venv-torch) is a
# venv made by scripts/setup-torch-cpu.sh. Files: DATE-cpu-compare_torch-COMMIT.{json,log}
# (compare_bf16 with MODE=bf16; "-openblas" added with BARBELL_CPU_GEMM=openblas, which keeps
# barbell off oneDNN). Waits (up to WAIT_QUIET seconds, default 0) for the 1-minute load
# average to drop under 0.5 first, since timings of a busy machine are noise; the load before
# and after, and the CPUs other programs used during each config, are in the JSON either way.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-build}"
venv="${2:-.venv-torch}"
shift $(($# >= 2 ? 2 : $#))
[[ "${1:-}" == "--" ]] && shift
mode=torch
flags=(--compare-torch)
if [[ "${MODE:-torch}" == bf16 ]]; then
  mode=bf16
  flags=(--compare-bf16)
else
  eval "$("$root/scripts/setup-torch-cpu.sh" --env "$venv")"
fi
deadline=$((SECONDS + ${WAIT_QUIET:-0}))
while (($(awk '{print ($1 < 0.5)}' /proc/loadavg) == 0 && SECONDS < deadline)); do sleep 10; done
commit="$(git -C "$root" rev-parse --short HEAD)"
suffix=""
[[ "${BARBELL_CPU_GEMM:-}" == openblas ]] && suffix="-openblas"
out="$root/benchmarks/results/$(date -u +%Y-%m-%d)-cpu-compare_${mode}${suffix}-$commit"
"$build/benchmarks/bench_train" "${flags[@]}" --presets tiny,small,medium,user --json "$out.json" "$@" 2>&1 |
  tee "$out.log"
echo "wrote $out.json and $out.log"
