#!/usr/bin/env bash
# Runs barbell-ddp-scaling on 1, 2 and 4 CPU ranks under mpirun (one OpenMP thread per
# rank) and combines the runs with scripts/plot_scaling.py into one JSON and an SVG plot.
#
#   scripts/ddp_scaling.sh [BUILD_DIR] [OUT_JSON] [-- extra barbell-ddp-scaling flags]
#
# BUILD_DIR defaults to build-dist (configured with -DBARBELL_MPI=ON); OUT_JSON to
# benchmarks/results/<date>-cpu-ddp_scaling.json. NPS="1 2 4" chooses the rank counts,
# REPEATS=3 how often each runs (the combined record keeps the median run per rank
# count: the machine may be shared). Without extra flags the runs use --steps 40.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-dist}
out=${2:-benchmarks/results/$(date -u +%F)-cpu-ddp_scaling.json}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
bin=$build/examples/barbell-ddp-scaling
[ -x "$bin" ] || { echo "no $bin: build it first (ninja -C $build barbell-ddp-scaling)" >&2; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ $# -eq 0 ] && set -- --steps 40
runs=()
for rep in $(seq "${REPEATS:-3}"); do
  for np in ${NPS:-1 2 4}; do
    echo "=== $np rank(s), run $rep (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    mpirun -np "$np" --oversubscribe --bind-to none "$bin" --json "$tmp/np${np}_$rep.json" "$@"
    runs+=("$tmp/np${np}_$rep.json")
  done
done

head=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if git diff --quiet HEAD -- src include examples 2>/dev/null; then commit=$head; else commit="uncommitted (on $head)"; fi
mkdir -p "$(dirname "$out")"
python3 scripts/plot_scaling.py --runs "${runs[@]}" --out "$out" --plot "${out%.json}.svg" --commit "$commit"
