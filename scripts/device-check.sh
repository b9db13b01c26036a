#!/usr/bin/env bash
# The GPU check: one call on a lent H100/H200 machine that returns evidence for every
# CUDA kernel, cuBLASLt call and cuDNN graph barbell has. NOTHING HERE HAS RUN ON A GPU
# YET: it was written and dry-run (tests/device_check/dryrun.sh) on a machine without one.
#
# The procedure (docs/benchmarks.md, "The device check"):
#   1. here, on the build machine:   bash scripts/bundle-device.sh build
#      (the CUDA programs for sm_90a without MPI/NCCL, packed with the libraries the GPU
#      machine lacks into device-bundle/, ~10 MiB; git-ignored, so it travels only when
#      the call names it)
#   2. the device call, with the bundle carried beside the checkout:
#        run(command="bash scripts/device-check.sh $OUT", carry=["device-bundle"], timeout_s=480)
#      $OUT is the folder whose files come back (at most 8 files, none in subfolders here).
#      The script's own budget is 420 s (DEVICE_CHECK_BUDGET); timeout_s=480 leaves it a
#      minute of margin. With the machine's 1-2 minutes of start-up and the copies, the call
#      costs about 10 of the session's 15 device minutes; the rest allows one short second
#      call made at once, on the still-warm machine (30 s), e.g. with DEVICE_CHECK_ONLY and
#      DEVICE_CHECK_BUDGET=150 to redo what broke. Call give_back otherwise.
#   3. commit what comes back under benchmarks/results/ and summarise it in docs/benchmarks.md.
#
# It REFUSES, loudly (exit 3, summary.txt says why), when device-bundle/ is missing (the
# call did not carry it) or stale (built from other sources than the working tree's:
# rerun step 1), or when the bundle's programs cannot find their libraries.
#
# Phases, each with a deadline (seconds from the start; DEVICE_CHECK_PHASES sets the five
# lengths, default "20 120 150 110 20" = 420 s). Jobs in a phase run concurrently; a job
# still running at its phase's deadline is killed (its process group) and recorded as
# TIMEOUT; time a phase leaves unused goes to the next.
#   P0  preflight (20 s)     GPU, driver and toolchain (env.txt); the bundle: present,
#                            matching the sources, unpacked, its libraries found in the CUDA
#                            toolkit's and PyTorch's site-packages/nvidia/*/lib folders
#   P1  tests (120 s)        every CUDA test program at full size, concurrently, each with
#                            OMP_NUM_THREADS = cores / jobs (rounded up) for its CPU reference:
#                            runtime, ops, nn, gpt, and the attention test split into
#                            flash (tile configuration 0), flash-t1 (BARBELL_FLASH_FWD_TILES=1,
#                            the forward's second configuration, checked like the first),
#                            cudnn (BARBELL_TEST_REQUIRE_CUDNN=1), gpt and errors; and
#                            train: barbell-train --device cuda in bf16 (flash attention,
#                            head dim 64) against the same run on the CPU, step by step
#   P2  sanitizers (150 s)   first, a memcheck rerun (same sizes) of every test program that
#                            stopped at a sticky CUDA error; then compute-sanitizer memcheck
#                            on the quick sizes (BARBELL_TEST_QUICK=1) of ops, nn, flash and
#                            flash-t1, and racecheck on flash, concurrently
#   P3  benchmarks (110 s)   on an idle GPU, one at a time, quick mode: bench_kernels (every
#                            kernel, with its ratio to the measured copy and cuBLASLt
#                            ceilings), bench_attention (flash and cuDNN), bench_attention
#                            --flash-tiles 1 (forward), benchmarks/torch_sdpa.py (PyTorch's
#                            SDPA kernels), each stopped from starting cases in time
#   P4  wrap-up (20 s)       the attention table (attention_table.py), the file check, the
#                            summary
#
# What comes back in OUTDIR (8 files, flat):
#   summary.txt   one line per step: PASS / FAIL / TIMEOUT / SKIP, seconds, a note; then
#                 OVERALL. Rewritten as each step ends, so it holds every finished step even
#                 if the call is cut off; printed last on stdout.
#   env.txt       GPU, driver, toolchain, bundle, library folders, ldd of the programs
#   tests.log     the test programs' output (P1), train.log the training comparison,
#   sanitizers.log  compute-sanitizer's (P2), bench.log the benchmarks' (P3),
#   bench_kernels.json, attention.json (bench_attention, both tile configurations,
#                 torch_sdpa and the markdown table merged)
#
# LD_LIBRARY_PATH (the bundle's lib/, then the library folders found) is set only for
# barbell's programs (BB_ENV), never for Python: torch_sdpa.py runs on PyTorch's own.
#
# Exit status: 0 every step passed; 1 a step failed or timed out; 2 nothing failed but some
# step was skipped; 3 refused (no bundle, stale bundle, libraries missing).
#
# Environment: DEVICE_CHECK_BUDGET (total seconds, default 420; the phases scale with it),
# DEVICE_CHECK_PHASES (the five phase lengths, instead), DEVICE_CHECK_ONLY (an extended
# regex: run only the steps whose names match, e.g. '^attention|^bench_attention'),
# DEVICE_CHECK_KEEP=1 (keep the work folder), DEVICE_CHECK_SITE_PACKAGES (more folders to
# look in for nvidia/*/lib); for the dry run's short phases DEVICE_CHECK_RERUN_MIN (20 s)
# and DEVICE_CHECK_MIN_SLOT (8 s), the least time a memcheck rerun or a benchmark starts
# with. `scripts/device-check.sh --source-hash` prints the hash of the sources
# (bundle-device.sh records it in the bundle).
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

OUTDIR=${1:?usage: bash scripts/device-check.sh OUTDIR (on the GPU machine; see the header)}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
T0=$(date +%s)
now() { echo $(($(date +%s) - T0)); }
say() { printf '[device-check %4ss] %s\n' "$(now)" "$*"; }

# ---- phases -----------------------------------------------------------------------------
BUDGET=${DEVICE_CHECK_BUDGET:-420}
if [[ -n ${DEVICE_CHECK_PHASES:-} ]]; then
  read -r -a PH <<<"$DEVICE_CHECK_PHASES"
else
  PH=()
  for p in 20 120 150 110 20; do PH+=($((p * BUDGET / 420))); done
fi
((${#PH[@]} == 5)) || { echo "device-check: DEVICE_CHECK_PHASES needs five lengths" >&2; exit 3; }
DL=()  # each phase's deadline
acc=0
for p in "${PH[@]}"; do
  acc=$((acc + p))
  DL+=("$acc")
done
BUDGET=$acc
RERUN_MIN=${DEVICE_CHECK_RERUN_MIN:-20}  # seconds a memcheck rerun needs at least
MIN_SLOT=${DEVICE_CHECK_MIN_SLOT:-8}     # seconds a benchmark needs at least

WORK=$(mktemp -d /tmp/barbell-device-check.XXXXXX)
mkdir -p "$WORK/jobs" "$WORK/run"
SUMMARY=$OUTDIR/summary.txt
ENV_TXT=$OUTDIR/env.txt
NPROC=$(nproc 2>/dev/null || echo 8)
export PATH="$PATH:/usr/local/cuda/bin"

# ---- the summary: one writer (this process), rewritten after every step ----------------
HEADER="device-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), budget ${BUDGET}s (phases ${PH[*]})"
GPU_LINE="gpu: (not yet read)"
STEP_LINES=()
NFAIL=0
NSKIP=0
NPASS=0
write_summary() {  # [OVERALL line]
  local overall=${1:-"OVERALL: RUNNING at $(now)s (if this is the last line, the call was cut off here)"}
  {
    echo "$HEADER"
    echo "$GPU_LINE"
    printf '%-30s %-8s %6s  %s\n' STEP STATUS TIME NOTE
    local l
    for l in "${STEP_LINES[@]}"; do echo "$l"; done
    echo "$overall"
  } >"$SUMMARY.tmp"
  mv -f "$SUMMARY.tmp" "$SUMMARY"
}
record() {  # STEP STATUS SECONDS NOTE
  local line
  line=$(printf '%-30s %-8s %5ss  %s' "$1" "$2" "$3" "${4//$'\n'/ }")
  STEP_LINES+=("${line:0:600}")
  case $2 in
    PASS) NPASS=$((NPASS + 1)) ;;
    SKIP) NSKIP=$((NSKIP + 1)) ;;
    *) NFAIL=$((NFAIL + 1)) ;;
  esac
  say "$1: $2 ($3 s) ${4:0:200}"
  write_summary
}

# Logs that come back (OUTDIR keeps to 8 files).
TESTS_LOG=$OUTDIR/tests.log
TRAIN_LOG=$OUTDIR/train.log
SAN_LOG=$OUTDIR/sanitizers.log
BENCH_LOG=$OUTDIR/bench.log
BENCH_JSON=$OUTDIR/bench_kernels.json
ATTN_JSON=$OUTDIR/attention.json

# ---- jobs: each in its own process group (setsid), killed as a group at its deadline ------
declare -A J_PID J_START J_DEADLINE J_LOG J_KIND J_OUT
RUNNING=()
HAVE_SETSID=0
command -v setsid >/dev/null && HAVE_SETSID=1
cleanup() {
  local n
  for n in "${RUNNING[@]}"; do kill_job "$n"; done
  [[ ${DEVICE_CHECK_KEEP:-0} == 1 ]] || rm -rf "$WORK"
}
kill_job() {
  local pid=${J_PID[$1]:-}
  [[ -n $pid ]] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  local i
  for i in 1 2 3 4 5 6; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
on_signal() {
  record "(interrupted)" FAIL "$(now)" "the check got a signal at $(now)s; the steps above finished"
  write_summary "OVERALL: FAIL (interrupted at $(now)s)"
  cleanup
  exit 1
}
trap on_signal TERM INT HUP

# job_start NAME KIND OUTLOG DEADLINE cmd...: runs cmd in $WORK/run, output to its own log.
# DEVICE_CHECK_ONLY (an extended regex on step names) runs only the matching steps, for a
# second, shorter call; memcheck reruns of sticky errors always run.
wanted() { [[ -z ${DEVICE_CHECK_ONLY:-} || $1 == "memcheck rerun: "* ]] || grep -q -E -- "$DEVICE_CHECK_ONLY" <<<"$1"; }
job_start() {
  local name=$1 kind=$2 out=$3 deadline=$4
  shift 4
  wanted "$name" || return 0
  local log=$WORK/jobs/${name// /_}.log rc=$WORK/jobs/${name// /_}.rc
  rm -f "$rc"
  {
    echo "===== $name: started at $(now)s, deadline ${deadline}s"
    printf '%q ' "$@"
    echo
  } >"$log"
  if ((HAVE_SETSID)); then
    (cd "$WORK/run" && exec setsid -w bash -c '"$@"; echo $? >"$0"' "$rc" "$@") >>"$log" 2>&1 </dev/null &
  else
    (cd "$WORK/run" && exec bash -c '"$@"; echo $? >"$0"' "$rc" "$@") >>"$log" 2>&1 </dev/null &
  fi
  J_PID[$name]=$!
  J_START[$name]=$(now)
  J_DEADLINE[$name]=$deadline
  J_LOG[$name]=$log
  J_KIND[$name]=$kind
  J_OUT[$name]=$out
  RUNNING+=("$name")
  say "$name: started (deadline ${deadline}s)"
}

# Waits until every running job has ended or been killed at its deadline; judges each
# as it ends (judge_KIND NAME RC LOG SECONDS), appends its log to its OUTDIR log.
jobs_wait() {
  while ((${#RUNNING[@]} > 0)); do
    local still=() n rcf rc secs
    for n in "${RUNNING[@]}"; do
      rcf=$WORK/jobs/${n// /_}.rc
      if [[ -s $rcf ]]; then
        rc=$(cat "$rcf")
        wait "${J_PID[$n]}" 2>/dev/null
      elif ! kill -0 "${J_PID[$n]}" 2>/dev/null; then
        rc=137  # gone without a status: killed
      elif (($(now) >= J_DEADLINE[$n])); then
        kill_job "$n"
        rc=124
      else
        still+=("$n")
        continue
      fi
      secs=$(($(now) - J_START[$n]))
      echo "===== $n: exit $rc after ${secs}s$( ((rc == 124)) && echo " (killed at its deadline)")" >>"${J_LOG[$n]}"
      "judge_${J_KIND[$n]}" "$n" "$rc" "${J_LOG[$n]}" "$secs"
      {
        cat "${J_LOG[$n]}"
        echo
      } >>"${J_OUT[$n]}"
    done
    RUNNING=("${still[@]}")
    ((${#RUNNING[@]} > 0)) && sleep 1
  done
  return 0
}

# ---- P0: env --------------------------------------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)
BUNDLE=$ROOT/device-bundle
BUNDLE_COMMIT=$(cat "$BUNDLE/COMMIT" 2>/dev/null || true)
[[ -z $COMMIT ]] && COMMIT="${BUNDLE_COMMIT:-unknown} (the bundle's)"
HERE_HASH=$(source_hash)
GPU_NAME=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
  head -1)
GPU_VISIBLE=0
[[ -n $GPU_NAME ]] && GPU_VISIBLE=1
GPU_LINE="gpu: ${GPU_NAME:-none visible}   commit: $COMMIT   source hash: $HERE_HASH"
write_summary
{
  echo "$HEADER"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  kernel: $(uname -r)  nproc: $NPROC"
  echo "commit: $COMMIT   source hash: $HERE_HASH"
  echo "bundle: commit ${BUNDLE_COMMIT:-none}, source hash $(cat "$BUNDLE/SOURCE_HASH" 2>/dev/null || echo none)"
  echo
  echo "== nvidia-smi"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,clocks.sm,power.limit,temperature.gpu,persistence_mode,compute_mode,mig.mode.current --format=csv 2>&1
  timeout 20 nvidia-smi 2>&1 | head -20
  echo
  echo "== toolchain"
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer && timeout 20 compute-sanitizer --version 2>&1 | head -2
  command -v python3 && python3 --version
  (. /etc/os-release 2>/dev/null && echo "os: $PRETTY_NAME")
  ldd --version 2>&1 | head -1
} >"$ENV_TXT" 2>&1
if ((GPU_VISIBLE)); then
  record env PASS "$(now)" "$GPU_NAME"
else
  record env FAIL "$(now)" "nvidia-smi shows no GPU"
fi

refuse() {  # WHY...: the loud stop
  local why="$*"
  {
    echo
    echo "################################################################################"
    echo "device-check: REFUSED: $why"
    echo "################################################################################"
  } | tee -a "$ENV_TXT"
  record bundle REFUSED "$(now)" "$why"
  write_summary "OVERALL: REFUSED after $(now)s: $why"
  cleanup
  echo
  cat "$SUMMARY"
  exit 3
}

# ---- P0: the bundle ---------------------------------------------------------------------------
if [[ ! -f $BUNDLE/payload.tar.xz ]]; then
  refuse "no device-bundle/payload.tar.xz beside the checkout. device-bundle/ is git-ignored: run" \
    "'bash scripts/bundle-device.sh build' on the build machine, then name it in the call:" \
    "run(command=\"bash scripts/device-check.sh \$OUT\", carry=[\"device-bundle\"], timeout_s=480)"
fi
BUNDLE_HASH=$(cat "$BUNDLE/SOURCE_HASH" 2>/dev/null || true)
if [[ $BUNDLE_HASH != "$HERE_HASH" ]]; then
  refuse "device-bundle/ is STALE: built from sources with hash ${BUNDLE_HASH:-none} (commit" \
    "${BUNDLE_COMMIT:-?}), the working tree here hashes to $HERE_HASH. Rebuild it:" \
    "'bash scripts/bundle-device.sh build', and carry it again"
fi
BB=$WORK/bundle
mkdir -p "$BB"
if ! tar -C "$BB" -xJf "$BUNDLE/payload.tar.xz" 2>>"$ENV_TXT"; then
  # no xz binary: Python's tarfile reads xz itself
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE/payload.tar.xz" \
    "$BB" 2>>"$ENV_TXT" || refuse "cannot unpack device-bundle/payload.tar.xz (see env.txt)"
fi

# Library folders of the machine, looked up directly (no search of the file system): the
# CUDA toolkit's, the driver's, and PyTorch's wheels' (site-packages/nvidia/*/lib; CUDA 13
# wheels keep cuBLAS, the runtime and NVRTC in nvidia/cu13/lib, cuDNN in nvidia/cudnn/lib).
SITES=$(timeout 15 python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true)
LIBDIRS=()
add_dir() { [[ -d $1 ]] && [[ " ${LIBDIRS[*]} " != *" $1 "* ]] && LIBDIRS+=("$1"); return 0; }
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib /usr/local/nvidia/lib64 \
  /usr/local/nvidia/lib; do
  add_dir "$d"
done
for s in ${DEVICE_CHECK_SITE_PACKAGES:-} $SITES /opt/torch/.venv/lib/python3*/site-packages \
  /usr/local/lib/python3*/dist-packages; do
  for d in "$s"/nvidia/cu13/lib "$s"/nvidia/*/lib; do add_dir "$d"; done
done
BB_LD=$BB/lib
for d in "${LIBDIRS[@]}"; do BB_LD="$BB_LD:$d"; done
# cuDNN: PyTorch's wheel first (the one known to work with this driver), else any other.
CUDNN_LIB=""
for d in "${LIBDIRS[@]}"; do
  [[ $d == */nvidia/cudnn/lib && -f $d/libcudnn.so.9 ]] && { CUDNN_LIB=$d/libcudnn.so.9; break; }
done
if [[ -z $CUDNN_LIB ]]; then
  for d in "${LIBDIRS[@]}"; do
    [[ -f $d/libcudnn.so.9 ]] && { CUDNN_LIB=$d/libcudnn.so.9; break; }
  done
fi
[[ -z $CUDNN_LIB ]] && CUDNN_LIB=$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libcudnn\.so\.9$' | head -1)
missing_libs() {
  local b
  for b in "$BB"/bin/*; do
    ldd "$b" >/dev/null 2>&1 || continue  # not a dynamic executable
    LD_LIBRARY_PATH=$BB_LD ldd "$b" 2>&1 | grep 'not found'
  done | sort -u
}
MISSING=$(missing_libs)
if grep -q 'GLIBCXX\|GCC_\|CXXABI' <<<"$MISSING"; then  # the machine's libstdc++ is older
  BB_LD=$BB/lib/fallback:$BB_LD
  MISSING=$(missing_libs)
fi
{
  echo
  echo "== library folders (LD_LIBRARY_PATH of barbell's programs only)"
  echo "$BB_LD" | tr ':' '\n'
  echo "cudnn: ${CUDNN_LIB:-not found}"
  echo "the bundle needs from the machine: $(tr '\n' ' ' <"$BUNDLE/NEEDS.txt" 2>/dev/null)"
  for b in "$BB"/bin/*; do
    echo "-- ldd ${b##*/}"
    LD_LIBRARY_PATH=$BB_LD ldd "$b" 2>&1
  done
} >>"$ENV_TXT"
[[ -z $MISSING ]] || refuse "the bundle's programs cannot load: $(tr '\n' ' ' <<<"$MISSING" | head -c 400)" \
  "(library folders in env.txt)"
record bundle PASS "$(now)" "commit ${BUNDLE_COMMIT:-?}, sources match ($HERE_HASH); cuDNN ${CUDNN_LIB:-not found}"
if ((!GPU_VISIBLE)); then
  write_summary "OVERALL: FAIL after $(now)s: no GPU visible, nothing to check"
  cleanup
  echo
  cat "$SUMMARY"
  exit 1
fi

# barbell's programs run with the bundle's libraries; nothing else does.
BB_ENV=(env "LD_LIBRARY_PATH=$BB_LD" "BARBELL_CUDNN_LIBRARY=${CUDNN_LIB:-}" OMP_WAIT_POLICY=passive)
prog() { echo "$BB/bin/$1"; }
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)

# ---- judges ---------------------------------------------------------------------------------
STICKY=()  # the test jobs that stopped at a sticky error (memcheck reruns them in P2)
declare -A J_ENV J_PROG
last_line() { grep -v '^=====' "$1" | tail -1 | head -c 200; }
judge_test() {  # NAME RC LOG SECONDS
  local n=$1 rc=$2 log=$3 s=$4 sum st note
  sum=$(grep '^SUMMARY' "$log" | tail -1)
  case $rc in
    0) st=PASS note=$sum ;;
    1) st=FAIL note="$sum; first: $(grep -m3 '^FAIL' "$log" | cut -c1-120 | tr '\n' ';')" ;;
    3) st=FAIL note="sticky CUDA error: $(grep -m1 '^STICKY' "$log" | cut -c8-300)"
       STICKY+=("$n") ;;
    77) st=FAIL note="exit 77: the program saw no GPU ($(grep -m1 skipped "$log"))" ;;
    124 | 137) st=TIMEOUT note="killed at ${s}s; $(grep -c '^PASS' "$log") passed, $(grep -c '^FAIL' "$log") failed so far; last: $(last_line "$log")" ;;
    127) st=FAIL note="cannot run: $(last_line "$log")" ;;
    *) st=FAIL note="exit $rc$( ((rc > 128)) && echo " (signal $((rc - 128)))"); last: $(last_line "$log")" ;;
  esac
  # Evidence the step must show, beyond its exit status.
  if [[ $st == PASS && $n == "attention cudnn" ]] && ! grep -q -E '^PASS cudnn (bf16|f16) ' "$log"; then
    st=FAIL note="no cuDNN case passed: $sum"
  fi
  if [[ $st == PASS && $n == "attention flash-t1" ]] &&
    ! grep -q '^INFO flash forward tile configuration  1' "$log"; then
    st=FAIL note="the program did not run the second tile configuration"
  fi
  record "$n" "$st" "$s" "$note"
}
judge_sanitizer() {
  local n=$1 rc=$2 log=$3 s=$4 es rs st note
  es=$(grep -m1 'ERROR SUMMARY' "$log" | sed 's/^=* *//')
  rs=$(grep -m1 'RACECHECK SUMMARY' "$log" | sed 's/^=* *//')
  local first
  first=$(grep -m3 -E '^=+ +(Invalid|Uninitialized|Program hit|Out-of-range|Misaligned|Race|Error|Warning)' "$log" |
    sed 's/^=* *//' | tr '\n' ';')
  local where
  where=$(grep -m1 -E '^=+ +at ' "$log" | sed 's/^=* *//')
  if grep -q -E 'Device not supported|not supported on this (platform|device)' "$log"; then
    st=SKIP note="compute-sanitizer cannot instrument this GPU here: $(grep -m1 -E 'not supported' "$log" | head -c 150)"
  else
    case $rc in
      0) st=PASS note="$es $rs; $(grep '^SUMMARY' "$log" | tail -1)" ;;
      86) st=FAIL note="$es $rs: $first $where" ;;
      124 | 137) st=TIMEOUT note="killed at ${s}s; errors so far: ${first:-none}; $(grep -c '^PASS' "$log") checks passed" ;;
      *) st=FAIL note="exit $rc (1: a check failed, 3: sticky error): $es $rs $first $(grep -m1 '^STICKY' "$log")" ;;
    esac
  fi
  record "$n" "$st" "$s" "$note"
}
judge_bench() {  # the benchmarks: their exit status, and how many cases they wrote
  local n=$1 rc=$2 log=$3 s=$4 json=${J_JSON[$1]:-} cases=0
  [[ -s $json ]] && cases=$(grep -c '"backend"\|"name"' "$json" 2>/dev/null)
  case $rc in
    0) if grep -q 'skipped: no CUDA device' "$log"; then record "$n" FAIL "$s" "the program saw no GPU"
       else record "$n" PASS "$s" "$(grep -E '^(bench_kernels|bench_attention|torch_sdpa):' "$log" | tail -1 | head -c 250)"; fi ;;
    3) record "$n" FAIL "$s" "$(grep -m1 skipped "$log" | head -c 250)" ;;
    124 | 137) record "$n" TIMEOUT "$s" "killed at ${s}s with ${cases} entries in its JSON" ;;
    *) record "$n" FAIL "$s" "exit $rc; last: $(last_line "$log")" ;;
  esac
}
declare -A J_JSON

# ---- P1: the tests at full size, and the training run ----------------------------------------
# name | program | extra environment
TESTS=(
  "test runtime|cuda_test_cuda_runtime|"
  "test ops|cuda_test_cuda_ops|"
  "test nn|cuda_test_cuda_nn|"
  "test gpt|cuda_test_cuda_gpt|"
  "attention flash|cuda_test_cuda_attention|BARBELL_TEST_FILTER=flash|BARBELL_FLASH_FWD_TILES=0"
  "attention flash-t1|cuda_test_cuda_attention|BARBELL_TEST_FILTER=flash|BARBELL_FLASH_FWD_TILES=1"
  "attention cudnn|cuda_test_cuda_attention|BARBELL_TEST_FILTER=accuracy cudnn|BARBELL_TEST_REQUIRE_CUDNN=1"
  "attention gpt|cuda_test_cuda_attention|BARBELL_TEST_FILTER=gpt"
  "attention errors|cuda_test_cuda_attention|BARBELL_TEST_FILTER=errors"
)
NJOBS=$((${#TESTS[@]} + 2))
OMP=$(((NPROC + NJOBS - 1) / NJOBS))  # 2 on 16 cores: a little oversubscribed, waiting passively
((OMP < 1)) && OMP=1
env_args() {  # the extra environment of a TESTS entry ("name|program|VAR=value|..."), one per line
  local IFS='|'
  local parts=($1) i
  for ((i = 2; i < ${#parts[@]}; i++)); do [[ -n ${parts[$i]} ]] && echo "${parts[$i]}"; done
  return 0
}
start_test() {  # ENTRY KIND OUT DEADLINE [prefix...] : a TESTS entry as a job
  local entry=$1 kind=$2 out=$3 deadline=$4
  shift 4
  local name=${entry%%|*} rest=${entry#*|}
  local p=${rest%%|*}
  local extra=()
  mapfile -t extra < <(env_args "$entry")
  J_PROG[$name]=$p
  J_ENV[$name]=$(printf '%s\n' "${extra[@]}")
  job_start "$name" "$kind" "$out" "$deadline" "${BB_ENV[@]}" OMP_NUM_THREADS=$OMP "${extra[@]}" "$@" "$(prog "$p")"
}

say "P1: tests at full size and the training run (until ${DL[1]}s)"
for e in "${TESTS[@]}"; do start_test "$e" test "$TESTS_LOG" "${DL[1]}" BARBELL_TEST_QUICK=0; done

# The training run: barbell-train in bf16 on the GPU (flash attention: head dim 64) and the
# same run on the CPU, as two jobs; their losses are compared step by step afterwards.
TRAIN_ARGS=(--preset tiny --n-embd 128 --n-head 2 --steps 40 --batch 64 --warmup 5 --seed 1337 --dtype bf16
  --eval-every 0 --eval-problems 100 --samples 0 --save-every 0 --log-every 10)
declare -A TRAIN_RC
judge_trainpart() { TRAIN_RC[$1]=$2; }  # recorded with the comparison
job_start "train cuda" trainpart "$TRAIN_LOG" "${DL[1]}" "${BB_ENV[@]}" "$(prog barbell-train)" "${TRAIN_ARGS[@]}" \
  --device cuda --attention flash --threads "$OMP" --out "$WORK/train-cuda"
job_start "train cpu" trainpart "$TRAIN_LOG" "${DL[1]}" "${BB_ENV[@]}" "$(prog barbell-train)" "${TRAIN_ARGS[@]}" \
  --device cpu --threads "$OMP" --out "$WORK/train-cpu"
T_TRAIN=$(now)
jobs_wait
rc_g=${TRAIN_RC[train cuda]:-?} rc_c=${TRAIN_RC[train cpu]:-?}
if ! wanted "train cuda" && ! wanted "train cpu"; then
  :  # not asked for
elif [[ $rc_g != 0 || $rc_c != 0 ]]; then
  st=FAIL
  [[ $rc_g == 124 || $rc_c == 124 ]] && st=TIMEOUT
  record "train bf16 cuda vs cpu" "$st" $(($(now) - T_TRAIN)) "barbell-train exit $rc_g (cuda), $rc_c (cpu); see train.log"
else
  python3 "$ROOT/scripts/compare_train.py" "$WORK/train-cuda/metrics.jsonl" "$WORK/train-cpu/metrics.jsonl" \
    >"$WORK/compare.txt" 2>&1
  rc=$?
  cat "$WORK/compare.txt" >>"$TRAIN_LOG"
  note=$(grep '^train-compare:' "$WORK/compare.txt" | tail -1 | cut -c16-)
  if ((rc == 0)); then st=PASS; else st=FAIL; fi
  record "train bf16 cuda vs cpu" "$st" $(($(now) - T_TRAIN)) "${note:-$(tail -1 "$WORK/compare.txt")}"
fi

# ---- P2: sanitizers ----------------------------------------------------------------------------
say "P2: memcheck reruns of sticky errors, memcheck and racecheck (until ${DL[2]}s)"
SAN_ARGS=(--error-exitcode 86 --report-api-errors no --print-limit 20)
for n in "${STICKY[@]}"; do
  if [[ -z $SAN ]]; then
    record "memcheck rerun: $n" SKIP 0 "no compute-sanitizer"
  elif ((DL[2] - $(now) < RERUN_MIN)); then
    record "memcheck rerun: $n" SKIP 0 "not run: $((DL[2] - $(now)))s left in the phase"
  else
    extra=()
    [[ -n ${J_ENV[$n]} ]] && mapfile -t extra <<<"${J_ENV[$n]}"
    job_start "memcheck rerun: $n" sanitizer "$SAN_LOG" "${DL[2]}" "${BB_ENV[@]}" OMP_NUM_THREADS=$OMP "${extra[@]}" \
      BARBELL_TEST_QUICK=0 "$SAN" --tool memcheck "${SAN_ARGS[@]}" "$(prog "${J_PROG[$n]}")"
  fi
done
SANS=(
  "memcheck ops|cuda_test_cuda_ops|"
  "memcheck nn|cuda_test_cuda_nn|"
  "memcheck flash|cuda_test_cuda_attention|BARBELL_TEST_FILTER=flash|BARBELL_FLASH_FWD_TILES=0"
  "memcheck flash-t1|cuda_test_cuda_attention|BARBELL_TEST_FILTER=accuracy flash|BARBELL_FLASH_FWD_TILES=1"
  "racecheck flash|cuda_test_cuda_attention|BARBELL_TEST_FILTER=flash|BARBELL_FLASH_FWD_TILES=0"
)
if [[ -z $SAN ]]; then
  record sanitizers FAIL 0 "compute-sanitizer not found"
else
  for e in "${SANS[@]}"; do
    tool=${e%% *}
    extra_tool=()
    [[ $tool == racecheck ]] && extra_tool=(--racecheck-report all)
    start_test "$e" sanitizer "$SAN_LOG" "${DL[2]}" BARBELL_TEST_QUICK=1 "$SAN" --tool "$tool" "${extra_tool[@]}" \
      "${SAN_ARGS[@]}"
  done
fi
jobs_wait

# ---- P3: benchmarks, one at a time on an idle GPU -------------------------------------------------
say "P3: benchmarks (until ${DL[3]}s)"
# Each gets its weight's share of what the phase has left when it starts.
BENCHES=(bench_kernels:40 bench_attention:30 bench_attention_t1:10 torch_sdpa:20)
share() {  # INDEX: seconds for BENCHES[INDEX]
  local i=$1 w=0 k left=$((DL[3] - $(now)))
  for ((k = i; k < ${#BENCHES[@]}; k++)); do w=$((w + ${BENCHES[$k]#*:})); done
  echo $((left * ${BENCHES[$i]#*:} / (w > 0 ? w : 1)))
}
ATTN0=$WORK/attention0.json ATTN1=$WORK/attention1.json TORCH_JSON=$WORK/torch_sdpa.json
for i in "${!BENCHES[@]}"; do
  b=${BENCHES[$i]%%:*}
  wanted "$b" || continue
  lim=$(share "$i")
  if ((lim < MIN_SLOT)); then
    record "$b" SKIP 0 "not run: ${lim}s left in the phase"
    continue
  fi
  tb=$((lim * 3 / 4))  # stop starting cases with a quarter of the slot left
  case $b in
    bench_kernels)
      J_JSON[$b]=$BENCH_JSON
      job_start "$b" bench "$BENCH_LOG" $(($(now) + lim)) "${BB_ENV[@]}" "$(prog bench_kernels)" --quick \
        --json "$BENCH_JSON" --commit "$COMMIT" ;;
    bench_attention)
      J_JSON[$b]=$ATTN0
      job_start "$b" bench "$BENCH_LOG" $(($(now) + lim)) "${BB_ENV[@]}" BARBELL_FLASH_FWD_TILES=0 \
        "$(prog bench_attention)" --quick --backends flash,cudnn --json "$ATTN0" --commit "$COMMIT" --time-budget "$tb" ;;
    bench_attention_t1)
      J_JSON[$b]=$ATTN1
      job_start "$b" bench "$BENCH_LOG" $(($(now) + lim)) "${BB_ENV[@]}" "$(prog bench_attention)" --quick \
        --backends flash --only ' fwd ' --flash-tiles 1 --json "$ATTN1" --commit "$COMMIT" --time-budget "$tb" ;;
    torch_sdpa)  # PyTorch's own libraries: no LD_LIBRARY_PATH of ours
      J_JSON[$b]=$TORCH_JSON
      job_start "$b" bench "$BENCH_LOG" $(($(now) + lim)) env PYTHONUNBUFFERED=1 python3 \
        "$ROOT/benchmarks/torch_sdpa.py" --quick --json "$TORCH_JSON" --commit "$COMMIT" --time-budget "$tb" ;;
  esac
  jobs_wait
done

# ---- P4: the attention table, the files, the summary -------------------------------------------
inputs=()
for f in "$ATTN0" "$ATTN1" "$TORCH_JSON"; do [[ -s $f ]] && inputs+=("$f"); done
if ((${#inputs[@]} == 0)); then
  [[ -z ${DEVICE_CHECK_ONLY:-} ]] && record "attention table" SKIP 0 "no attention results to tabulate"
else
  t=$(now)
  if timeout 20 python3 "$ROOT/benchmarks/attention_table.py" "${inputs[@]}" --merge-out "$ATTN_JSON" \
    >"$WORK/table.md" 2>&1; then
    record "attention table" PASS $(($(now) - t)) "$(grep -c '^| [0-9]' "$WORK/table.md") rows from ${#inputs[@]} file(s) (markdown in bench.log and attention.json)"
  else
    record "attention table" FAIL $(($(now) - t)) "$(tail -1 "$WORK/table.md" | head -c 200)"
  fi
  {
    echo "===== attention table"
    cat "$WORK/table.md"
  } >>"$BENCH_LOG"
  [[ -s $ATTN_JSON ]] || cp "${inputs[0]}" "$ATTN_JSON"
fi

nfiles=$(find "$OUTDIR" -type f | wc -l)
ndirs=$(find "$OUTDIR" -mindepth 1 -type d | wc -l)
if ((nfiles <= 8 && ndirs == 0)); then
  record files PASS 0 "$nfiles files back: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
else
  record files FAIL 0 "$nfiles files and $ndirs folders in OUTDIR (a call returns 8 files): $(cd "$OUTDIR" && ls | tr '\n' ' ')"
fi
if ((NFAIL)); then
  OVERALL="OVERALL: FAIL ($NFAIL of $((NPASS + NFAIL + NSKIP)) steps failed or timed out, $NSKIP skipped) after $(now)s"
  code=1
elif ((NSKIP)); then
  OVERALL="OVERALL: INCOMPLETE ($NSKIP of $((NPASS + NSKIP)) steps skipped, none failed) after $(now)s"
  code=2
else
  OVERALL="OVERALL: PASS ($NPASS steps) after $(now)s"
  code=0
fi
write_summary "$OVERALL"
cleanup
echo
cat "$SUMMARY"
exit $code
