#!/usr/bin/env bash
# Builds barbell's libFuzzer harnesses (tests/fuzz: safetensors reader, token-shard reader,
# barbell-train's resume path) with clang, ASan and UBSan in their own build dir, and runs each
# for SECONDS from the seed corpora in tests/fuzz/corpus; prints executions, coverage and
# findings per fuzzer and fails on any finding.
#   scripts/fuzz.sh [SECONDS_PER_FUZZER] [FUZZER...]   (default 60 s, all three)
#   scripts/fuzz.sh --seeds                           (regenerate tests/fuzz/corpus: needs a built
#                                                      barbell-train, BARBELL_TRAIN, and python3 with
#                                                      safetensors and numpy)
# Env: BARBELL_FUZZ_BUILD_DIR (default build-fuzz), BARBELL_JOBS (2), BARBELL_FUZZ_ARGS (extra
# libFuzzer flags). New inputs go to BUILD_DIR/corpus/<fuzzer>, crashes to BUILD_DIR/artifacts/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
BUILD_DIR=${BARBELL_FUZZ_BUILD_DIR:-build-fuzz}
JOBS=${BARBELL_JOBS:-2}
all_fuzzers=(fuzz_safetensors fuzz_token_shard fuzz_resume)

cxx=""
for c in clang++-14 clang++; do
  if command -v "$c" >/dev/null; then
    cxx=$(command -v "$c")
    break
  fi
done
if [[ -z $cxx ]]; then
  echo "fuzz: no clang++ found (scripts/setup-deps.sh installs clang-14): the fuzzers need libFuzzer" >&2
  exit 1
fi
cc=${cxx/clang++/clang}

t0=$SECONDS
if [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
  # -O1: fast enough to fuzz, quick to build; -gline-tables-only: file and line in the reports
  # at less compile time than -g (tensor.cpp: 5.8 s against 6.8 s here). Warnings stay warnings
  # (the gcc build holds them to -Werror; clang's extra ones would stop the fuzzers, not make
  # them better).
  CC=$cc CXX=$cxx cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" -DBARBELL_FUZZ=ON -DBARBELL_WERROR=OFF \
    -DBARBELL_CUDA=OFF -DBARBELL_MPI=OFF -DBARBELL_TESTS=OFF -DBARBELL_BENCHMARKS=OFF -DBARBELL_EXAMPLES=OFF >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${all_fuzzers[@]}" fuzz_make_seeds
echo "fuzz: build $((SECONDS - t0))s"
bin=$BUILD_DIR/tests/fuzz
corpus=$root/tests/fuzz/corpus

# The harnesses' own sanitizer settings: a report is a finding, leaks included.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

if [[ ${1:-} == --seeds ]]; then
  train=${BARBELL_TRAIN:-build/examples/barbell-train}
  [[ -x $train ]] || { echo "fuzz: --seeds needs barbell-train (BARBELL_TRAIN, default $train)" >&2; exit 1; }
  rm -rf "$corpus"
  mkdir -p "$corpus"/{safetensors,token_shard,resume}
  "$bin/fuzz_make_seeds" "$corpus/safetensors" "$corpus/token_shard"
  # The resume seeds: the checkpoints of the run fuzz_resume.cpp expects, after steps 1 and 2.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for steps in 1 2; do
    "$train" --preset tiny --n-layer 1 --n-head 2 --n-embd 8 --digits 1 --steps "$steps" --batch 4 \
      --eval-problems 0 --samples 0 --seed 1 --threads 1 --out "$tmp/run$steps" >/dev/null
    cp "$tmp/run$steps/checkpoint.safetensors" "$corpus/resume/barbell_step$steps.safetensors"
  done
  python3 scripts/fuzz_seeds.py "$corpus" "$corpus/resume/barbell_step2.safetensors"
  # Every resume seed must get through the whole resume path (else the fuzzer starts shallow).
  BARBELL_FUZZ_EXPECT_OK=1 "$bin/fuzz_resume" -runs=0 "$corpus/resume" >/dev/null 2>&1 ||
    { echo "fuzz: a resume seed does not resume (fuzz_resume.cpp and barbell-train disagree)" >&2; exit 1; }
  ls -l "$corpus"/*
  exit 0
fi

seconds=${1:-60}
shift || true
fuzzers=("$@")
((${#fuzzers[@]} > 0)) || fuzzers=("${all_fuzzers[@]}")

declare -A corpus_of=([fuzz_safetensors]=safetensors [fuzz_token_shard]=token_shard [fuzz_resume]=resume)
mkdir -p "$BUILD_DIR/artifacts"
rc=0
summary=()
for f in "${fuzzers[@]}"; do
  seeds=$corpus/${corpus_of[$f]}
  work=$BUILD_DIR/corpus/${corpus_of[$f]}
  mkdir -p "$work"
  log=$BUILD_DIR/$f.log
  dict=()
  [[ $f == fuzz_token_shard ]] || dict=(-dict="$root/tests/fuzz/safetensors.dict")
  echo "=== $f: ${seconds}s from $(find "$seeds" -type f | wc -l) seeds (+$(find "$work" -type f | wc -l) found before)"
  frc=0
  # shellcheck disable=SC2086  # BARBELL_FUZZ_ARGS is a list of flags on purpose
  "$bin/$f" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$BUILD_DIR/artifacts/$f-" "${dict[@]}" ${BARBELL_FUZZ_ARGS:-} "$work" "$seeds" >"$log" 2>&1 || frc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  units=$(find "$work" -type f | wc -l)
  if ((frc != 0)); then
    rc=1
    echo "FINDING in $f (exit $frc): see $log and $BUILD_DIR/artifacts/"
    grep -E 'ERROR|runtime error|deadly|uncaught|property failed|Test unit written' "$log" | head -20 || true
  fi
  verdict=clean
  ((frc == 0)) || verdict=FINDING
  summary+=("$(printf '%-18s %3ss  %10s execs  cov %5s  ft %6s  corpus %5s  %s' "$f" "$seconds" "$execs" "$cov" "$ft" \
    "$units" "$verdict")")
done
echo
echo "=== fuzz summary (coverage: libFuzzer's edge count 'cov' and feature count 'ft') ==="
printf '%s\n' "${summary[@]}"
echo "fuzz: total $((SECONDS - t0))s"
exit "$rc"
