#!/usr/bin/env bash
# A dry run of the GPU check on a machine without a GPU (CTest: device_check.dryrun).
# scripts/device-check.sh and scripts/bundle-device.sh run for real, in a scratch copy of
# the repository, on a bundle packed by bundle-device.sh from fake programs (fakes/program
# under each program's name), with fake nvidia-smi and compute-sanitizer on the PATH and
# short phases. Each scenario checks the exit status, summary.txt and the files returned:
#   missing    no device-bundle/: refused (exit 3), the summary says to carry it
#   stale      a source changed after packing: refused (exit 3), both hashes named
#   nogpu      no nvidia-smi: stops after the bundle step (exit 1)
#   nolib      a program needs a library the machine lacks: refused (exit 3), named
#   only       DEVICE_CHECK_ONLY runs the selected steps alone
#   full       every phase: a passing step, a failing one (nn), a hanging one (gpt, killed
#              at the phase deadline), a sticky error (attention errors) rerun under
#              memcheck, which names the kernel; cuDNN given its library and required;
#              the second tile configuration run; training compared; sanitizers;
#              benchmarks; the attention table; at most 8 flat files back, summary.txt
#              printed last; LD_LIBRARY_PATH set for barbell's programs only
#   cutoff     the check killed (SIGKILL) mid-run: summary.txt still holds the finished
#              steps and says it was cut off
# Takes about 30 s. Usage: dryrun.sh [REPO_ROOT]
set -uo pipefail
SRC=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)
FAKES=$SRC/tests/device_check/fakes
T=$(mktemp -d /tmp/barbell-dryrun.XXXXXX)
FAILS=0
cleanup() {
  local f
  for f in "$T"/state/hang.*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
ok() { echo "  ok: $*"; }
bad() {
  echo "  FAIL: $*"
  FAILS=$((FAILS + 1))
}
expect_line() {  # SUMMARY_FILE REGEX WHAT
  if grep -q -E "$2" "$1"; then ok "$3"; else bad "$3 (no line matching /$2/ in summary.txt)"; fi
}

# The scratch repository: the real scripts, fake sources for the hash, fake torch_sdpa.py.
R=$T/repo
mkdir -p "$R/scripts" "$R/benchmarks" "$R/src" "$T/bin" "$T/state" "$T/site/nvidia/cudnn/lib" \
  "$T/site/nvidia/cu13/lib"
cp "$SRC/scripts/device-check.sh" "$SRC/scripts/bundle-device.sh" "$SRC/scripts/compare_train.py" "$R/scripts/"
cp "$SRC/benchmarks/attention_table.py" "$R/benchmarks/"
cp "$FAKES/torch_sdpa.py" "$R/benchmarks/torch_sdpa.py"
echo "int fake() { return 1; }" >"$R/src/fake.cpp"
: >"$T/site/nvidia/cudnn/lib/libcudnn.so.9"
# The fake build: the bundle's programs, where a real build puts them.
B=$T/build
mkdir -p "$B/tests/cuda" "$B/benchmarks" "$B/examples"
for p in cuda_test_cuda_runtime cuda_test_cuda_ops cuda_test_cuda_nn cuda_test_cuda_gpt cuda_test_cuda_attention; do
  cp "$FAKES/program" "$B/tests/cuda/$p"
done
cp "$FAKES/program" "$B/benchmarks/bench_kernels"
cp "$FAKES/program" "$B/benchmarks/bench_attention"
cp "$FAKES/program" "$B/examples/barbell-train"
echo "== packing the fake build with bundle-device.sh pack"
if bash "$R/scripts/bundle-device.sh" pack "$B" "$R/device-bundle" >"$T/pack.log" 2>&1 &&
  [[ -s $R/device-bundle/payload.tar.xz && -s $R/device-bundle/SOURCE_HASH ]]; then
  ok "packed: $(grep -m1 'programs' "$T/pack.log")"
else
  bad "bundle-device.sh pack failed"
  cat "$T/pack.log"
  exit 1
fi
cp "$FAKES/compute-sanitizer" "$T/bin/"
mkdir -p "$T/gpu"
cp "$FAKES/nvidia-smi" "$T/gpu/"

# run_check NAME [env...]: the check with the fakes, into $T/out-NAME; sets RC, OUT, LOG.
run_check() {
  local name=$1
  shift
  OUT=$T/out-$name
  LOG=$T/log-$name
  env "$@" FAKE_STATE="$T/state" DEVICE_CHECK_SITE_PACKAGES="$T/site" DEVICE_CHECK_RERUN_MIN=2 \
    DEVICE_CHECK_MIN_SLOT=1 bash "$R/scripts/device-check.sh" "$OUT" >"$LOG" 2>&1
  RC=$?
}
WITH_GPU=(PATH="$T/gpu:$T/bin:$PATH")
PHASES=(DEVICE_CHECK_PHASES="3 10 8 10 4")  # generous: CI runs it beside other tests

echo "== missing: no device-bundle/"
mv "$R/device-bundle" "$T/bundle.away"
run_check missing "${WITH_GPU[@]}" "${PHASES[@]}"
mv "$T/bundle.away" "$R/device-bundle"
S=$OUT/summary.txt
((RC == 3)) && ok "exit 3" || bad "exit $RC, want 3"
expect_line "$S" '^OVERALL: REFUSED .*no device-bundle/payload.tar.xz' "OVERALL: REFUSED, naming the missing payload"
expect_line "$S" 'carry=\["device-bundle"\]' "the summary says how to carry it"
expect_line "$S" '^env +PASS' "the GPU was still recorded"
[[ $(ls "$OUT" | tr '\n' ' ') == "env.txt summary.txt " ]] && ok "only env.txt and summary.txt back" ||
  bad "files back: $(ls "$OUT")"
grep -q 'REFUSED' "$LOG" && ok "refused loudly on stdout" || bad "nothing on stdout says REFUSED"

echo "== stale: a source changed after packing"
cp "$R/src/fake.cpp" "$T/fake.cpp.orig"
echo "// changed" >>"$R/src/fake.cpp"
run_check stale "${WITH_GPU[@]}" "${PHASES[@]}"
cp "$T/fake.cpp.orig" "$R/src/fake.cpp"
S=$OUT/summary.txt
((RC == 3)) && ok "exit 3" || bad "exit $RC, want 3"
want=$(cat "$R/device-bundle/SOURCE_HASH")
expect_line "$S" "^OVERALL: REFUSED .*STALE.*$want" "OVERALL: REFUSED as STALE, with the bundle's hash"
expect_line "$S" 'bundle-device.sh build' "the summary says how to rebuild it"

echo "== nogpu: no nvidia-smi"
if PATH="$T/bin:$PATH" command -v nvidia-smi >/dev/null; then
  ok "skipped: this machine has a real nvidia-smi"
else
  run_check nogpu PATH="$T/bin:$PATH" "${PHASES[@]}"
  S=$OUT/summary.txt
  ((RC == 1)) && ok "exit 1" || bad "exit $RC, want 1"
  expect_line "$S" '^env +FAIL .*no GPU' "env FAIL: no GPU"
  expect_line "$S" '^OVERALL: FAIL .*no GPU visible' "OVERALL: FAIL, nothing to check"
fi

echo "== nolib: a program needs a library the machine lacks"
if command -v cc >/dev/null; then
  L=$T/nolib
  mkdir -p "$L/lib" "$L/build/tests/cuda"
  echo 'int dryrun_lib(void) { return 0; }' >"$L/lib.c"
  echo 'int dryrun_lib(void); int main(void) { return dryrun_lib(); }' >"$L/main.c"
  # named like a CUDA library, so the bundle expects it from the machine (NEEDS.txt)
  # and a stand-in libbarbell.so.0, which the bundle carries
  cc -shared -fPIC -Wl,-soname,libcufft_dryrun.so.1 -o "$L/lib/libcufft_dryrun.so.1" "$L/lib.c" &&
    cc -shared -fPIC -Wl,-soname,libbarbell.so.0 -o "$L/lib/libbarbell.so.0" "$L/lib.c" &&
    cc -o "$L/build/tests/cuda/cuda_test_cuda_ops" "$L/main.c" -L"$L/lib" -Wl,--no-as-needed -l:libcufft_dryrun.so.1 -l:libbarbell.so.0 &&
    LD_LIBRARY_PATH=$L/lib bash "$R/scripts/bundle-device.sh" pack "$L/build" "$L/bundle" >"$L/pack.log" 2>&1
  if [[ -s $L/bundle/payload.tar.xz ]] && grep -qx 'libcufft_dryrun.so.1' "$L/bundle/NEEDS.txt"; then
    ok "packed; NEEDS.txt names libcufft_dryrun.so.1"
    mv "$R/device-bundle" "$T/bundle.away"
    cp -r "$L/bundle" "$R/device-bundle"
    run_check nolib "${WITH_GPU[@]}" "${PHASES[@]}"
    rm -rf "$R/device-bundle"
    mv "$T/bundle.away" "$R/device-bundle"
    ((RC == 3)) && ok "exit 3" || bad "exit $RC, want 3"
    expect_line "$OUT/summary.txt" '^OVERALL: REFUSED .*cannot load: .*libcufft_dryrun.so.1 => not found' \
      "OVERALL: REFUSED, naming the missing library"
  else
    bad "could not pack the nolib bundle: $(cat "$L/pack.log")"
  fi
else
  ok "skipped: no C compiler"
fi

echo "== only: DEVICE_CHECK_ONLY selects steps"
run_check only "${WITH_GPU[@]}" DEVICE_CHECK_PHASES="2 4 4 4 2" DEVICE_CHECK_ONLY='^(test ops|memcheck ops|bench_kernels)$'
S=$OUT/summary.txt
((RC == 0)) && ok "exit 0" || bad "exit $RC, want 0"
steps=$(sed -n '/^STEP /,/^OVERALL/p' "$S" | sed '1d;$d' | awk '{print $1 " " $2}' | tr '\n' ',')
[[ $steps == "env PASS,bundle PASS,test ops,memcheck ops,bench_kernels PASS,files PASS," ]] &&
  ok "only the selected steps ran" || bad "steps: $steps"

echo "== full: every phase"
t0=$(date +%s)
run_check full "${WITH_GPU[@]}" "${PHASES[@]}"
secs=$(($(date +%s) - t0))
S=$OUT/summary.txt
((RC == 1)) && ok "exit 1 (steps failed) after ${secs}s" || bad "exit $RC, want 1"
expect_line "$S" '^bundle +PASS .*sources match' "bundle PASS"
expect_line "$S" "^bundle +PASS .*cuDNN $T/site/nvidia/cudnn/lib/libcudnn.so.9" "cuDNN found in site-packages/nvidia/cudnn/lib"
expect_line "$S" '^test runtime +PASS' "a passing program: PASS"
expect_line "$S" '^test ops +PASS' "test ops PASS"
expect_line "$S" '^test nn +FAIL .*linear_gelu \[64,768\]' "a failing program: FAIL, naming its first failed check"
expect_line "$S" '^test gpt +TIMEOUT .*killed at' "a hanging program: TIMEOUT at the phase deadline"
expect_line "$S" '^attention flash +PASS' "attention flash PASS"
expect_line "$S" '^attention flash-t1 +PASS' "the second tile configuration checked: PASS"
expect_line "$S" '^attention cudnn +PASS' "attention cudnn PASS (its library and BARBELL_TEST_REQUIRE_CUDNN=1 given)"
expect_line "$S" '^attention gpt +PASS' "attention gpt PASS"
expect_line "$S" '^attention errors +FAIL .*sticky CUDA error: Auto with D=80 falls back to Math' \
  "a sticky error: FAIL, naming the check that raised it"
expect_line "$S" '^memcheck rerun: attention errors +FAIL .*Invalid __global__ write.*at fake_kernel' \
  "the sticky program rerun under memcheck, which names the kernel"
[[ $(grep -c '^memcheck rerun' "$S") == 1 ]] && ok "only the sticky program was rerun" || bad "reruns: $(grep -c '^memcheck rerun' "$S")"
expect_line "$S" '^train bf16 cuda vs cpu +PASS .*40 steps' "the training runs compared: PASS"
for s in "memcheck ops" "memcheck nn" "memcheck flash" "memcheck flash-t1" "racecheck flash"; do
  expect_line "$S" "^$s +PASS" "$s PASS"
done
for s in bench_kernels bench_attention bench_attention_t1 torch_sdpa; do expect_line "$S" "^$s +PASS" "$s PASS"; done
expect_line "$S" '^attention table +PASS .*3 file' "the attention table merges 3 files"
expect_line "$S" '^files +PASS' "the files check passed"
expect_line "$S" '^OVERALL: FAIL \(4 of [0-9]+ steps failed or timed out, 0 skipped\)' "OVERALL: FAIL, 4 steps not passed"
want="attention.json bench.log bench_kernels.json env.txt sanitizers.log summary.txt tests.log train.log "
[[ $(ls "$OUT" | tr '\n' ' ') == "$want" ]] && ok "the 8 files back: $want" || bad "files back: $(ls "$OUT" | tr '\n' ' ')"
[[ -z $(find "$OUT" -mindepth 1 -type d) ]] && ok "no folders in OUTDIR" || bad "folders in OUTDIR"
for f in "$OUT"/*; do [[ -s $f ]] || bad "${f##*/} is empty"; done
[[ $(tail -1 "$LOG") == $(tail -1 "$S") && $(tail -1 "$S") == OVERALL:* ]] && ok "summary.txt is printed last" ||
  bad "stdout does not end with the summary: $(tail -1 "$LOG")"
grep -q 'LD_LIBRARY_PATH=/tmp/barbell-device-check\.[^ ]*/bundle/lib:' "$OUT/tests.log" &&
  ok "barbell's programs ran with the bundle's lib/ first" || bad "the programs' LD_LIBRARY_PATH lacks the bundle's lib/"
grep -q "$T/site/nvidia/cu13/lib" "$OUT/env.txt" && ok "nvidia/cu13/lib is among the library folders" ||
  bad "nvidia/cu13/lib not among the library folders"
if grep -q '"ld_library_path": ""' "$OUT/attention.json" || ! grep -q 'barbell-device-check' "$OUT/bench.log"; then
  ok "torch_sdpa.py ran without the bundle's LD_LIBRARY_PATH"
else
  bad "torch_sdpa.py saw the bundle's LD_LIBRARY_PATH"
fi
grep -q '^===== test gpt: exit 124' "$OUT/tests.log" && ok "the hanging program's log came back" || bad "no log of the hang"
((secs < 45)) && ok "took ${secs}s" || bad "took ${secs}s"

echo "== cutoff: the check killed mid-run"
OUT=$T/out-cutoff
env "${WITH_GPU[@]}" DEVICE_CHECK_PHASES="2 30 6 6 3" FAKE_STATE="$T/state" DEVICE_CHECK_SITE_PACKAGES="$T/site" \
  bash "$R/scripts/device-check.sh" "$OUT" >"$T/log-cutoff" 2>&1 &
pid=$!
for _ in $(seq 1 40); do  # until the quick programs have been recorded
  grep -q '^test ops' "$OUT/summary.txt" 2>/dev/null && break
  sleep 0.25
done
sleep 1
kill -KILL "$pid"
wait "$pid" 2>/dev/null
S=$OUT/summary.txt
expect_line "$S" '^test ops +PASS' "the steps finished before the kill are in summary.txt"
[[ $(tail -1 "$S") == "OVERALL: RUNNING"*"cut off"* ]] && ok "summary.txt says it was cut off" ||
  bad "last line: $(tail -1 "$S")"

echo
if ((FAILS)); then
  echo "dryrun: $FAILS check(s) failed; the full run's summary:"
  cat "$T/out-full/summary.txt" 2>/dev/null
  exit 1
fi
echo "dryrun: all scenarios passed"
