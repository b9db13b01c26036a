#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and the CUDA toolkit but none of our
# Debian packages (the lent H100/H200 machines):
#
#   scripts/device-check.sh OUTDIR
#
# Steps, each under its own `timeout`, the script going on after a failure:
#   env       GPU and driver (nvidia-smi), toolkit versions, the commit      -> env.txt
#   binaries  the programs to run: device-bundle/ if present and runnable, else a build
#             from source (below)                                            -> env.txt
#   tests     every CUDA test program (cuda_test_*), full sizes              -> tests.log
#   memcheck  compute-sanitizer --tool memcheck on the tests in quick mode
#             (BARBELL_TEST_QUICK=1: small sizes)                            -> memcheck.log
#   bench     bench_kernels --json                                           -> bench.log, bench_kernels.json
#   attention (after the steps above, in what the budget leaves them; see below)
#             test      cuda_test_cuda_attention, full sizes                  -> tests.log
#             memcheck  compute-sanitizer memcheck and racecheck on it in quick mode with
#             racecheck BARBELL_TEST_FILTER=flash (small shapes, Flash + Math) -> memcheck.log
#             bench     bench_attention --json, then benchmarks/torch_sdpa.py --json (PyTorch's
#             torch     SDPA kernels, same shapes) and benchmarks/attention_table.py, which
#             table     merges both                                           -> bench.log, attention.json
# and summary.txt: one line per step (PASS / FAIL / TIMEOUT / SKIP, seconds, a note).
# OUTDIR gets at most 7 files (a device call returns at most 8): the build log, if any, is
# appended to env.txt. Progress goes to stdout; the summary is printed last. Exit status 0
# when every step passed.
#
# Attention: with the other steps the attention steps share what those leave (at least
# 120 s together, kept from them), and the benchmarks run --quick; alone
# (DEVICE_CHECK_STEPS=attention) they get the whole budget and full sizes:
#   test 150 s, memcheck 100 s, racecheck 120 s, bench_attention 180 s, torch_sdpa.py 120 s
# at most, each bounded by the budget left after the minimum slices of the later ones;
# the benchmarks get --time-budget (they stop starting cases in time, keeping their JSON:
# the most telling shapes run first). attention.json holds bench_attention's results, or,
# once the table step ran, both programs' results merged, with the markdown table under
# "table_markdown" (also printed into bench.log).
#
# Where the programs come from:
#   1. device-bundle/payload.tar.xz, made here by scripts/bundle-device.sh after a normal
#      build (the tests, bench_kernels, libbarbell.so and the libraries the device lacks).
#      It is unpacked to a temporary directory and run with LD_LIBRARY_PATH=<it>/lib plus
#      the device's CUDA library directories. If ldd finds a library missing there (the
#      device's CUDA toolkit has another major version, say), it looks for it on the
#      machine; a too-old libstdc++ is replaced by the bundle's lib/fallback/. A bundle
#      built from other sources than these (SOURCE_HASH) is used, with a warning: STALE.
#   2. Otherwise (no bundle, binaries that cannot run, or DEVICE_CHECK_BUILD=1) a build
#      from source with the device's nvcc for sm_90a, using the headers and CMake packages
#      of fmt, nlohmann-json, CLI11, Catch2 and OpenBLAS from the bundle's deps/ (or from
#      $BARBELL_DEVICE_DEPS, a prefix laid out like /usr). Without them the build cannot
#      configure, and the summary says so.
#
# Environment: DEVICE_CHECK_BUDGET (seconds for the whole script, default 450),
# DEVICE_CHECK_STEPS (default "tests,memcheck,bench,attention"; "attention" is the five
# attention steps, also selectable one by one as attn-test, attn-memcheck,
# attn-racecheck, attn-bench, attn-torch; the table runs with either of the last two),
# DEVICE_CHECK_BENCH_ARGS (extra bench_kernels flags, e.g. "--quick" or "--only
# layer_norm"), DEVICE_CHECK_ATTN_BENCH_ARGS (extra flags for bench_attention and
# torch_sdpa.py, e.g. "--f16"; default "--quick" when other steps run too),
# DEVICE_CHECK_BUILD=1 (build from source even with a bundle), DEVICE_CHECK_TESTS (test
# names, default "runtime ops nn gpt"; the attention test runs in the attention steps).
#
# scripts/device-check.sh --source-hash prints the hash of the sources (bundle-device.sh
# records it in the bundle).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

source_hash() {
  (cd "$ROOT" && find CMakeLists.txt cmake include src kernels tests/cuda benchmarks examples -type f \
    \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name 'CMakeLists.txt' \
    -o -name '*.cmake' -o -name '*.in' \) 2>/dev/null | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}
if [[ ${1:-} == --source-hash ]]; then
  source_hash
  exit 0
fi

OUTDIR=${1:?usage: scripts/device-check.sh OUTDIR}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
BUDGET=${DEVICE_CHECK_BUDGET:-450}
STEPS=${DEVICE_CHECK_STEPS:-tests,memcheck,bench,attention}
BENCH_ARGS=${DEVICE_CHECK_BENCH_ARGS:-}
T0=$(date +%s)
WORK=$(mktemp -d /tmp/barbell-device-check.XXXXXX)
SUMMARY=$OUTDIR/summary.txt
ENV_TXT=$OUTDIR/env.txt
BUILD_LOG=$OUTDIR/build.log
TESTS_LOG=$OUTDIR/tests.log
MEMCHECK_LOG=$OUTDIR/memcheck.log
BENCH_LOG=$OUTDIR/bench.log
BENCH_JSON=$OUTDIR/bench_kernels.json
ATTN_JSON=$OUTDIR/attention.json
NPROC=$(nproc 2>/dev/null || echo 8)
export PATH="$PATH:/usr/local/cuda/bin"

elapsed() { echo $(($(date +%s) - T0)); }
say() { printf '[device-check %4ss] %s\n' "$(elapsed)" "$*"; }
FAILED=0
NSTEPS=0
# record STEP STATUS SECONDS NOTE: one summary line, written at once (survives a kill)
record() {
  NSTEPS=$((NSTEPS + 1))
  [[ $2 == PASS || $2 == SKIP ]] || FAILED=$((FAILED + 1))
  printf '%-34s %-8s %5ss  %s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
  say "$1: $2 ($3 s) $4"
}
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }
# an attention step: "attention" or its own name (attn-test, ...)
has_attn() { has_step attention || has_step "attn-$1"; }

# run_step NAME CAP RESERVE LOG cmd...: runs cmd under timeout min(CAP, what the budget
# leaves after RESERVE seconds for later steps), its output appended to LOG and kept in
# $WORK/step.log. Sets RC and SECS; RC 99 means it did not run (no time left).
run_step() {
  local name=$1 cap=$2 reserve=$3 log=$4
  shift 4
  local left=$((BUDGET - $(elapsed) - reserve))
  local lim=$((cap < left ? cap : left))
  SECS=0
  if ((lim < 15)); then
    RC=99
    echo "===== $name: not run, no time left in the ${BUDGET}s budget" >>"$log"
    return
  fi
  say "$name: running (timeout ${lim}s)"
  local t
  t=$(date +%s)
  timeout -k 10 "$lim" "$@" >"$WORK/step.log" 2>&1
  RC=$?
  SECS=$(($(date +%s) - t))
  {
    echo
    echo "===== $name ($(date -u +%H:%M:%S), timeout ${lim}s): $*"
    cat "$WORK/step.log"
    echo "===== $name: exit $RC after ${SECS}s"
  } >>"$log"
}

# status of a test-like program from its exit code
GPU_VISIBLE=0
status_of() {
  case $1 in
    0) echo PASS ;;
    77) if ((GPU_VISIBLE)); then echo FAIL; else echo SKIP; fi ;;
    99) echo SKIP ;;
    124 | 137) echo TIMEOUT ;;
    *) echo FAIL ;;
  esac
}

{
  echo "device-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), budget ${BUDGET}s, steps: $STEPS"
  printf '%-34s %-8s %6s  %s\n' STEP STATUS TIME NOTE
} >"$SUMMARY"

# ---- env ---------------------------------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)
[[ -z $COMMIT && -f $ROOT/COMMIT ]] && COMMIT=$(cat "$ROOT/COMMIT")
BUNDLE=$ROOT/device-bundle
BUNDLE_COMMIT=$(cat "$BUNDLE/COMMIT" 2>/dev/null || true)
HERE_HASH=$(source_hash)
BUNDLE_HASH=$(cat "$BUNDLE/SOURCE_HASH" 2>/dev/null || true)
[[ -z $COMMIT ]] && COMMIT="${BUNDLE_COMMIT:-unknown} (from the bundle)"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  kernel: $(uname -r)"
  echo "commit: $COMMIT   source hash: $HERE_HASH"
  echo "bundle: ${BUNDLE_COMMIT:-none}   bundle source hash: ${BUNDLE_HASH:-none}"
  echo
  echo "== nvidia-smi"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,clocks.sm,power.limit,temperature.gpu,persistence_mode,compute_mode,mig.mode.current --format=csv 2>&1
  timeout 20 nvidia-smi 2>&1 | head -20
  timeout 20 nvidia-smi -q 2>&1 | grep -E 'Product Name|Product Architecture|Driver Version|CUDA Version|VBIOS|Persistence Mode|MIG Mode|Current  *:|Pending|Compute Mode|Max Clocks|Clocks Event Reasons|Power Limit|Temp' | head -40
  echo
  echo "== toolchain"
  command -v nvcc && nvcc --version | tail -2
  command -v cmake && cmake --version | head -1
  command -v ninja && ninja --version
  command -v g++ && g++ --version | head -1
  command -v compute-sanitizer && compute-sanitizer --version 2>&1 | head -2
  (. /etc/os-release 2>/dev/null && echo "os: $PRETTY_NAME")
  ldd --version 2>&1 | head -1
  echo "nproc: $NPROC"
} >"$ENV_TXT" 2>&1
GPU_NAME=$(timeout 20 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
if [[ -n $GPU_NAME ]]; then
  GPU_VISIBLE=1
  record env PASS "$(elapsed)" "$GPU_NAME; commit $COMMIT"
else
  record env FAIL "$(elapsed)" "nvidia-smi shows no GPU; commit $COMMIT"
fi
sed -i "1a gpu: ${GPU_NAME:-none}   commit: $COMMIT" "$SUMMARY"

# ---- cuDNN (for the Cudnn attention backend, opened with dlopen) -----------------------
# The machine has no cuDNN package, but PyTorch's wheels bring libcudnn.so.9 (and the
# NVRTC its runtime-compiled engines need). Point barbell at them unless told otherwise.
if [[ -z ${BARBELL_CUDNN_LIBRARY:-} ]]; then
  cudnn_lib=$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libcudnn\.so\.9$' | head -1)
  if [[ -z $cudnn_lib ]]; then
    site=$(timeout 30 python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
    for d in $site /usr/local/cuda/lib64 /usr/local/cuda/lib; do
      for f in "$d"/nvidia/cudnn/lib/libcudnn.so.9 "$d"/torch/lib/libcudnn.so.9 "$d"/libcudnn.so.9; do
        [[ -f $f ]] && { cudnn_lib=$f; break 2; }
      done
    done
  fi
  if [[ -n $cudnn_lib ]]; then
    export BARBELL_CUDNN_LIBRARY=$cudnn_lib
    extra=$(dirname "$cudnn_lib")
    nvrtc=$(ls -d "$(dirname "$(dirname "$extra")")"/cuda_nvrtc/lib 2>/dev/null | head -1)
    [[ -n $nvrtc ]] && extra="$extra:$nvrtc"
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$extra"
  fi
fi
echo "cudnn: ${BARBELL_CUDNN_LIBRARY:-not found (the Cudnn backend will report itself unavailable)}" >>"$ENV_TXT"

# ---- binaries ------------------------------------------------------------------------
# CUDA's library directories and the driver's, ahead of anything else on the machine.
cuda_dirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [[ -d $d ]] && cuda_dirs="$cuda_dirs:$d"
done
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  d=$(timeout 30 find /usr /opt /lib -name 'libcuda.so.1' 2>/dev/null | head -1)
  [[ -n $d ]] && cuda_dirs="$cuda_dirs:$(dirname "$d")"
fi

missing_libs() {  # the "not found" lines of ldd over the given programs
  for b in "$@"; do ldd "$b" 2>&1 | grep 'not found'; done | sort -u
}

BIN=""
BIN_NOTE=""
use_bundle() {
  [[ -f $BUNDLE/payload.tar.xz ]] || { BIN_NOTE="no device-bundle/payload.tar.xz"; return 1; }
  local dir=$WORK/bundle
  mkdir -p "$dir"
  if ! tar -C "$dir" -xJf "$BUNDLE/payload.tar.xz" 2>>"$BUILD_LOG"; then
    # no xz binary: Python's tarfile reads xz itself
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE/payload.tar.xz" "$dir" \
      2>>"$BUILD_LOG" || { BIN_NOTE="cannot unpack the bundle"; return 1; }
  fi
  export LD_LIBRARY_PATH="$dir/lib$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local progs=("$dir"/bin/*)
  local miss
  miss=$(missing_libs "${progs[@]}")
  if grep -q 'GLIBCXX\|GCC_\|CXXABI' <<<"$miss"; then
    export LD_LIBRARY_PATH="$dir/lib/fallback:$LD_LIBRARY_PATH"
    echo "device-check: using the bundle's libstdc++ (the machine's is older)" >>"$BUILD_LOG"
    miss=$(missing_libs "${progs[@]}")
  fi
  # A library the machine has somewhere else (a CUDA library of a pip package, say).
  for lib in $(awk '/=> not found/ {print $1}' <<<"$miss" | sort -u); do
    local p
    p=$(timeout 60 find /usr /opt /lib -name "$lib" 2>/dev/null | head -1)
    if [[ -n $p ]]; then
      LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$p")"
      export LD_LIBRARY_PATH
      echo "device-check: found $lib at $p" >>"$BUILD_LOG"
    fi
  done
  miss=$(missing_libs "${progs[@]}")
  {
    echo "== ldd of the bundle's programs (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    for b in "${progs[@]}"; do
      echo "-- $(basename "$b")"
      ldd "$b"
    done
  } >>"$ENV_TXT" 2>&1
  if [[ -n $miss ]]; then
    echo "device-check: the bundle's programs cannot load:" >>"$BUILD_LOG"
    echo "$miss" >>"$BUILD_LOG"
    BIN_NOTE="bundle unusable: $(tr '\n' ' ' <<<"$miss" | head -c 300)"
    return 1
  fi
  BIN=$dir/bin
  BIN_NOTE="bundle (commit ${BUNDLE_COMMIT:-?})"
  return 0
}

build_from_source() {
  local deps=${BARBELL_DEVICE_DEPS:-$WORK/bundle/deps}
  if [[ ! -d $deps && -f $BUNDLE/payload.tar.xz ]]; then
    mkdir -p "$WORK/bundle" && tar -C "$WORK/bundle" -xJf "$BUNDLE/payload.tar.xz" 2>>"$BUILD_LOG"
  fi
  if [[ ! -d $deps ]]; then
    BIN_NOTE="$BIN_NOTE; cannot build here: no deps (fmt, OpenBLAS, Catch2, CLI11, nlohmann-json) - run scripts/bundle-device.sh and carry device-bundle"
    return 1
  fi
  # the bundle's lib/ holds the shared libraries deps/ links to
  [[ -d $WORK/bundle/lib ]] && export LD_LIBRARY_PATH="$WORK/bundle/lib$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local b=$WORK/build
  local targets=()
  for t in "$ROOT"/tests/cuda/test_*.cpp; do targets+=("cuda_$(basename "$t" .cpp)"); done
  targets+=(bench_kernels bench_attention)
  run_step "configure" 120 200 "$BUILD_LOG" cmake -S "$ROOT" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBARBELL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DBARBELL_EXAMPLES=OFF -DBARBELL_WERROR=OFF \
    -DCMAKE_PREFIX_PATH="$deps" -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  if ((RC != 0)); then
    BIN_NOTE="$BIN_NOTE; cmake configure failed (exit $RC, see the build log in env.txt)"
    return 1
  fi
  run_step "build" 360 150 "$BUILD_LOG" ninja -C "$b" -k 0 -j"$NPROC" "${targets[@]}"
  mkdir -p "$WORK/bin"
  for t in "${targets[@]}"; do
    f=$(find "$b" -maxdepth 3 -type f -name "$t" -perm -u+x | head -1)
    [[ -n $f ]] && ln -sf "$f" "$WORK/bin/$t"
  done
  if ! ls "$WORK/bin"/cuda_test_* >/dev/null 2>&1; then
    BIN_NOTE="$BIN_NOTE; the build made no test programs (exit $RC, see the build log in env.txt)"
    return 1
  fi
  BIN=$WORK/bin
  BIN_NOTE="$BIN_NOTE; built from source here in ${SECS}s$( ((RC != 0)) && echo " (some targets failed, see the build log in env.txt)")"
  return 0
}

t=$(date +%s)
: >"$BUILD_LOG"
if [[ ${DEVICE_CHECK_BUILD:-0} != 1 ]] && use_bundle; then
  if [[ -n $BUNDLE_HASH && $BUNDLE_HASH != "$HERE_HASH" ]]; then
    record binaries STALE $(($(date +%s) - t)) "$BIN_NOTE: built from other sources (hash $BUNDLE_HASH, here $HERE_HASH); rerun scripts/bundle-device.sh"
  else
    record binaries PASS $(($(date +%s) - t)) "$BIN_NOTE, sources match"
  fi
else
  say "binaries: ${BIN_NOTE:-DEVICE_CHECK_BUILD=1}; building from source"
  if build_from_source; then
    record binaries PASS $(($(date +%s) - t)) "$BIN_NOTE"
  else
    record binaries FAIL $(($(date +%s) - t)) "$BIN_NOTE"
  fi
fi
# The build log goes into env.txt (OUTDIR keeps to 7 files).
if [[ -s $BUILD_LOG ]]; then
  {
    echo
    echo "== build.log (the binaries step)"
    cat "$BUILD_LOG"
  } >>"$ENV_TXT"
fi
rm -f "$BUILD_LOG"

# ---- tests -----------------------------------------------------------------------------
# name:cap seconds (the full run); memcheck runs them in quick mode.
TESTS=${DEVICE_CHECK_TESTS:-runtime ops nn gpt}
declare -A CAP=([runtime]=90 [ops]=180 [nn]=180 [gpt]=120 [attention]=150)
# The attention steps come last. Minimum slices kept for each (seconds), when selected:
declare -A AMIN=([test]=0 [memcheck]=0 [racecheck]=0 [bench]=0 [torch]=0 [table]=0)
ATTN_ALONE=1
for st in tests memcheck bench; do has_step $st && ATTN_ALONE=0; done
if ((ATTN_ALONE)); then  # the attention steps alone: bigger slices
  has_attn test && AMIN[test]=60
  has_attn memcheck && AMIN[memcheck]=45
  has_attn racecheck && AMIN[racecheck]=45
  has_attn bench && AMIN[bench]=60
  has_attn torch && AMIN[torch]=45
else  # with the other steps: what they leave, at least ATTN_RESERVE in all
  has_attn test && AMIN[test]=30
  has_attn memcheck && AMIN[memcheck]=15
  has_attn racecheck && AMIN[racecheck]=15
  has_attn bench && AMIN[bench]=25
  has_attn torch && AMIN[torch]=20
fi
{ has_attn bench || has_attn torch; } && AMIN[table]=15
# attn_after STEP: the minimum slices of the attention steps after STEP
attn_after() {
  local order=(test memcheck racecheck bench torch table) sum=0 seen=0 x
  for x in "${order[@]}"; do
    ((seen)) && sum=$((sum + AMIN[$x]))
    [[ $x == "$1" ]] && seen=1
  done
  echo $sum
}
ATTN_RESERVE=0  # all of them: what the earlier steps leave
for x in test memcheck racecheck bench torch table; do ATTN_RESERVE=$((ATTN_RESERVE + AMIN[$x])); done
BENCH_RESERVE=0
if has_step bench; then
  BENCH_RESERVE=150
  ((ATTN_RESERVE > 0)) && BENCH_RESERVE=120
fi

if has_step tests; then
  for name in $TESTS; do
    prog=$BIN/cuda_test_cuda_$name
    if [[ -z $BIN || ! -x $prog ]]; then
      record "test $name" FAIL 0 "no program ${prog##*/}"
      continue
    fi
    run_step "test $name" "${CAP[$name]:-180}" $((BENCH_RESERVE + 60 + ATTN_RESERVE)) "$TESTS_LOG" env BARBELL_TEST_QUICK=0 "$prog"
    st=$(status_of $RC)
    note=$(grep '^SUMMARY' "$WORK/step.log" | tail -1)
    ((RC == 77)) && note="$note exit 77 (no device seen by the program) $(grep -m1 'skipped' "$WORK/step.log")"
    ((RC == 99)) && note="not run: out of time"
    [[ $st == TIMEOUT ]] && note="timed out; last line: $(tail -1 "$WORK/step.log" | head -c 200)"
    [[ -z $note ]] && note="exit $RC; last line: $(tail -1 "$WORK/step.log" | head -c 200)"
    record "test $name" "$st" "$SECS" "$note"
    if [[ $st != PASS ]]; then
      grep -E '^FAIL|threw' "$WORK/step.log" | head -25 | sed 's/^/    /'
    fi
  done
fi

# ---- memcheck ------------------------------------------------------------------------
if has_step memcheck; then
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [[ -z $SAN ]]; then
    record memcheck FAIL 0 "compute-sanitizer not found"
  else
    for name in $TESTS; do
      prog=$BIN/cuda_test_cuda_$name
      [[ -n $BIN && -x $prog ]] || continue
      run_step "memcheck $name" 150 $((BENCH_RESERVE + ATTN_RESERVE)) "$MEMCHECK_LOG" env BARBELL_TEST_QUICK=1 "$SAN" --tool memcheck \
        --error-exitcode 86 --report-api-errors no --print-limit 30 "$prog"
      es=$(grep -m1 'ERROR SUMMARY' "$WORK/step.log")
      ts=$(grep '^SUMMARY' "$WORK/step.log" | tail -1)
      case $RC in
        0) record "memcheck $name" PASS "$SECS" "${es:-no error summary}; $ts" ;;
        86) if [[ -n $es ]]; then
              record "memcheck $name" FAIL "$SECS" "$es"
              grep -m10 -E '^=+ (Invalid|Uninitialized|Program hit|Out-of-range|Misaligned)' "$WORK/step.log" | sed 's/^/    /'
            else
              record "memcheck $name" SKIP 0 "not run: out of time"
            fi ;;
        124 | 137) record "memcheck $name" TIMEOUT "$SECS" "$es $ts" ;;
        *) record "memcheck $name" FAIL "$SECS" "exit $RC: ${es} ${ts}" ;;
      esac
    done
  fi
fi

# ---- bench -----------------------------------------------------------------------------
if has_step bench; then
  prog=$BIN/bench_kernels
  if [[ -z $BIN || ! -x $prog ]]; then
    record bench_kernels FAIL 0 "no bench_kernels program"
  else
    # shellcheck disable=SC2086
    run_step bench_kernels 300 "$ATTN_RESERVE" "$BENCH_LOG" "$prog" --json "$BENCH_JSON" --commit "$COMMIT" $BENCH_ARGS
    last=$(grep '^bench_kernels:' "$WORK/step.log" | tail -1)
    st=$(status_of $RC)
    ((RC == 1)) && st=FAIL
    record bench_kernels "$st" "$SECS" "${last:-exit $RC; last line: $(tail -1 "$WORK/step.log" | head -c 200)}"
    grep -E '^ceiling:|ERROR' "$WORK/step.log" | head -20 | sed 's/^/    /'
  fi
fi

# ---- attention ---------------------------------------------------------------------------
# After everything else. Each step is bounded by what the budget leaves after the minimum
# slices of the attention steps after it (attn_after).
step_limit() {  # CAP RESERVE: the timeout run_step will use
  local left=$((BUDGET - $(elapsed) - $2))
  echo $(($1 < left ? $1 : left))
}
ATTN_PROG=${BIN:+$BIN/cuda_test_cuda_attention}
ATTN_BENCH_ARGS=${DEVICE_CHECK_ATTN_BENCH_ARGS-$( ((ATTN_ALONE)) || echo --quick)}
PY=$(command -v python3 || command -v python || true)
py_script() {  # the working tree's copy, else the bundle's
  if [[ -f $ROOT/benchmarks/$1 ]]; then echo "$ROOT/benchmarks/$1"; elif [[ -f $WORK/bundle/py/$1 ]]; then echo "$WORK/bundle/py/$1"; fi
}

if has_attn test; then
  if [[ -z $ATTN_PROG || ! -x $ATTN_PROG ]]; then
    record "attention test" FAIL 0 "no program cuda_test_cuda_attention"
  else
    run_step "attention test" 150 "$(attn_after test)" "$TESTS_LOG" env BARBELL_TEST_QUICK=0 "$ATTN_PROG"
    st=$(status_of $RC)
    note=$(grep '^SUMMARY' "$WORK/step.log" | tail -1)
    ((RC == 77)) && note="$note exit 77 (no device seen by the program) $(grep -m1 'skipped' "$WORK/step.log")"
    ((RC == 99)) && note="not run: out of time"
    [[ $st == TIMEOUT ]] && note="timed out; last line: $(tail -1 "$WORK/step.log" | head -c 200)"
    [[ -z $note ]] && note="exit $RC; last line: $(tail -1 "$WORK/step.log" | head -c 200)"
    record "attention test" "$st" "$SECS" "$note"
    grep -E '^INFO accuracy' "$WORK/step.log" | sed 's/^/    /'
    if [[ $st != PASS ]]; then
      grep -E '^FAIL|threw' "$WORK/step.log" | head -25 | sed 's/^/    /'
    fi
  fi
fi

# compute-sanitizer TOOL on the attention test in quick mode, Flash only (and its Math
# yardstick): small shapes, every Flash kernel (forward, backward, deterministic dQ).
attn_sanitize() {  # TOOL CAP
  local tool=$1 cap=$2 name="attention $1" es rs ts
  local san
  san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [[ -z $san ]]; then
    record "$name" FAIL 0 "compute-sanitizer not found"
    return
  fi
  if [[ -z $ATTN_PROG || ! -x $ATTN_PROG ]]; then
    record "$name" FAIL 0 "no program cuda_test_cuda_attention"
    return
  fi
  local extra=()
  [[ $tool == racecheck ]] && extra=(--racecheck-report all)
  run_step "$name" "$cap" "$(attn_after "$tool")" "$MEMCHECK_LOG" env BARBELL_TEST_QUICK=1 BARBELL_TEST_FILTER=flash \
    "$san" --tool "$tool" "${extra[@]}" --error-exitcode 86 --report-api-errors no --print-limit 30 "$ATTN_PROG"
  es=$(grep -m1 'ERROR SUMMARY' "$WORK/step.log")
  rs=$(grep -m1 'RACECHECK SUMMARY' "$WORK/step.log")
  ts=$(grep '^SUMMARY' "$WORK/step.log" | tail -1)
  case $RC in
    0) record "$name" PASS "$SECS" "${es:-no error summary} ${rs}; $ts" ;;
    86) record "$name" FAIL "$SECS" "$es $rs"
        grep -m10 -E '^=+ (Invalid|Uninitialized|Program hit|Out-of-range|Misaligned|Error|Warning).*' "$WORK/step.log" |
          sed 's/^/    /' ;;
    99) record "$name" SKIP 0 "not run: out of time" ;;
    124 | 137) record "$name" TIMEOUT "$SECS" "$es $rs $ts" ;;
    77) record "$name" "$(status_of 77)" "$SECS" "exit 77: the program saw no GPU" ;;
    *) record "$name" FAIL "$SECS" "exit $RC (1: a check failed under the sanitizer): ${es} ${rs} ${ts}"
       grep -E '^FAIL' "$WORK/step.log" | head -10 | sed 's/^/    /' ;;
  esac
}
has_attn memcheck && attn_sanitize memcheck 100
has_attn racecheck && attn_sanitize racecheck 120

if has_attn bench; then
  prog=${BIN:+$BIN/bench_attention}
  if [[ -z $prog || ! -x $prog ]]; then
    record bench_attention FAIL 0 "no bench_attention program"
  else
    lim=$(step_limit 180 "$(attn_after bench)")
    # stop starting cases ~25 s before the timeout (a case takes a few seconds)
    tb=$((lim > 50 ? lim - 25 : lim / 2))
    # shellcheck disable=SC2086
    run_step bench_attention 180 "$(attn_after bench)" "$BENCH_LOG" "$prog" --json "$ATTN_JSON" --commit "$COMMIT" \
      --time-budget "$((tb > 1 ? tb : 1))" $ATTN_BENCH_ARGS
    last=$(grep '^bench_attention:' "$WORK/step.log" | tail -1)
    st=$(status_of $RC)
    ((RC == 1)) && st=FAIL
    if grep -q 'skipped: no CUDA device' "$WORK/step.log"; then
      if ((GPU_VISIBLE)); then st=FAIL; else st=SKIP; fi
    fi
    ((RC == 99)) && last="not run: out of time"
    record bench_attention "$st" "$SECS" "${last:-exit $RC; last line: $(tail -1 "$WORK/step.log" | head -c 200)}"
    # the issue's target shape first: D = 128, T = 8192, non-causal
    grep -E '^(flash|cudnn) +(fwd|bwd) +bf16 +[0-9]+ +[0-9]+ +8192 +128 +full|flash/cudnn (fwd|bwd) bf16 T=8192 D=128 full|ERROR' \
      "$WORK/step.log" | head -12 | sed 's/^/    /'
    # The flash forward's second tile configuration (FwdCfg<D, 1>), forward only, quick
    # shapes: reported as backend flash-t1 and merged into the table below.
    run_step bench_attention_t1 45 "$(attn_after bench)" "$BENCH_LOG" "$prog" --json "$WORK/attn_t1.json" \
      --commit "$COMMIT" --quick --backends flash --only ' fwd ' --flash-tiles 1 --time-budget 30
    if ((RC != 99)); then
      record bench_attention_t1 "$(status_of $RC)" "$SECS" \
        "$(grep -E '^flash-t1 +fwd +bf16 .* 8192 +128 +full' "$WORK/step.log" | head -1)"
    fi
  fi
fi

TORCH_JSON=$WORK/torch_sdpa.json
if has_attn torch; then
  script=$(py_script torch_sdpa.py)
  if [[ -z $PY ]]; then
    record torch_sdpa SKIP 0 "no python3 on this machine"
  elif [[ -z $script ]]; then
    record torch_sdpa FAIL 0 "no benchmarks/torch_sdpa.py"
  else
    lim=$(step_limit 120 "$(attn_after torch)")
    tb=$((lim > 50 ? lim - 25 : lim / 2))
    # shellcheck disable=SC2086
    run_step torch_sdpa 120 "$(attn_after torch)" "$BENCH_LOG" "$PY" "$script" --json "$TORCH_JSON" \
      --commit "$COMMIT" --time-budget "$((tb > 1 ? tb : 1))" $ATTN_BENCH_ARGS
    last=$(grep -E '^torch_sdpa:' "$WORK/step.log" | tail -1)
    case $RC in
      0) record torch_sdpa PASS "$SECS" "$last" ;;
      3) record torch_sdpa SKIP "$SECS" "$(grep -m1 'skipped' "$WORK/step.log" | head -c 250)" ;;
      99) record torch_sdpa SKIP 0 "not run: out of time" ;;
      124 | 137) record torch_sdpa TIMEOUT "$SECS" "$last" ;;
      *) record torch_sdpa FAIL "$SECS" "exit $RC: ${last:-$(tail -1 "$WORK/step.log" | head -c 200)}" ;;
    esac
    grep -E '^torch-(flash|cudnn|efficient) +(fwd|bwd) +bf16 +[0-9]+ +[0-9]+ +8192 +128 +full' "$WORK/step.log" |
      head -6 | sed 's/^/    /'
  fi
fi

if has_attn bench || has_attn torch; then
  script=$(py_script attention_table.py)
  inputs=()
  [[ -s $ATTN_JSON ]] && inputs+=("$ATTN_JSON")
  [[ -s $TORCH_JSON ]] && inputs+=("$TORCH_JSON")
  [[ -s $WORK/attn_t1.json ]] && inputs+=("$WORK/attn_t1.json")
  if ((${#inputs[@]} == 0)); then
    record "attention table" SKIP 0 "no attention results to tabulate"
  elif [[ -z $PY || -z $script ]]; then
    record "attention table" FAIL 0 "no python3 or no benchmarks/attention_table.py"
  else
    run_step "attention table" 20 0 "$BENCH_LOG" "$PY" "$script" "${inputs[@]}" --merge-out "$ATTN_JSON"
    if ((RC == 0)); then
      record "attention table" PASS "$SECS" "$(grep -c '^| [0-9]' "$WORK/step.log") rows from ${#inputs[@]} file(s); the markdown is in bench.log and in attention.json (table_markdown)"
    else
      st=$(status_of $RC)
      ((RC == 99)) && st=SKIP
      record "attention table" "$st" "$SECS" "exit $RC: $(tail -1 "$WORK/step.log" | head -c 200)"
    fi
  fi
  # PyTorch's raw results, unless they made it into attention.json
  if [[ -s $TORCH_JSON ]] && ! grep -q '"torch_sdpa"' "$ATTN_JSON" 2>/dev/null; then
    {
      echo "===== torch_sdpa.json (not merged into attention.json)"
      cat "$TORCH_JSON"
    } >>"$BENCH_LOG"
  fi
fi

# ---- summary -------------------------------------------------------------------------
if ((FAILED)); then
  echo "OVERALL: FAIL ($FAILED of $NSTEPS steps not passed) after $(elapsed)s" >>"$SUMMARY"
else
  echo "OVERALL: PASS ($NSTEPS steps) after $(elapsed)s" >>"$SUMMARY"
fi
rm -rf "$WORK"
echo
cat "$SUMMARY"
echo "files in $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
((FAILED == 0))
