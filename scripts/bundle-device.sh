#!/usr/bin/env bash
# Builds, here, the programs scripts/device-check.sh runs on the lent GPU machine, and packs
# them with the libraries that machine lacks into device-bundle/ (git-ignored):
#
#   bash scripts/bundle-device.sh build [BUILD_DIR]   configure and build (default build-device/),
#                                                    then pack
#   bash scripts/bundle-device.sh pack BUILD_DIR [DEST]   pack an existing build (DEST: device-bundle)
#   bash scripts/bundle-device.sh status              does device-bundle/ match the sources here?
#
# The GPU machine (see docs/benchmarks.md, "The device check") has the NVIDIA driver, nvcc,
# compute-sanitizer and PyTorch with its CUDA wheels (cuBLAS, cuDNN, NCCL, NVRTC under
# site-packages/nvidia/*/lib), but none of our Debian packages and no network. So the build
# is the CUDA backend for sm_90a WITHOUT MPI and NCCL (libbarbell then needs, beyond the C
# library family, only cuBLAS/cuBLASLt from the machine), and DEST gets:
#   payload.tar.xz  bin/  the CUDA test programs, bench_kernels, bench_attention, barbell-train
#                   lib/  libbarbell.so.0 and every library the programs load that the
#                         machine does not provide (fmt, OpenBLAS, libgomp, libgfortran, ...);
#                         lib/fallback/: this machine's libstdc++ and libgcc_s, used there only
#                         when its own are too old
#   SOURCE_HASH     the hash of the sources built (scripts/device-check.sh --source-hash);
#                   device-check.sh recomputes it over the working tree there and REFUSES to
#                   run a bundle built from other sources
#   COMMIT          the commit ("-dirty" when the tree differed from it)
#   NEEDS.txt       the libraries the machine must provide (device-check.sh looks for them in
#                   PyTorch's nvidia/*/lib folders and the CUDA toolkit's)
#   MANIFEST.txt    toolchain versions, the GPU code in libbarbell, ldd of every program
#
# device-bundle/ is git-ignored, so a device call takes it along only when it names it:
#   run(command="bash scripts/device-check.sh $OUT", carry=["device-bundle"], timeout_s=480)
# It must stay well under the 64 MiB a call carries (working tree included); pack says its size.
set -euo pipefail
STAGE=""
trap 'rm -rf "${STAGE:-/nonexistent}"' EXIT
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() {
  echo "bundle-device: $*" >&2
  exit 1
}

# Libraries that must come from the device machine: the C library family and the loader,
# the driver, and the CUDA libraries (they must match its driver; cuBLAS alone is ~700 MB).
SKIP_RE='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libutil\.so|libresolv\.so|libcuda\.so|libnvidia|libcudart\.so|libcublas|libcublasLt|libcudnn|libnccl|libnvrtc|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver|libcupti|libnvToolsExt)'
DEVICE_RE='^(libcudart\.so|libcublas|libcublasLt|libcudnn|libnccl|libnvrtc|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver|libcupti)'
FALLBACK_RE='^(libstdc\+\+\.so|libgcc_s\.so)'
TARGETS=(cuda_test_cuda_runtime cuda_test_cuda_ops cuda_test_cuda_nn cuda_test_cuda_gpt cuda_test_cuda_attention
  bench_kernels bench_attention barbell-train)

build() {
  local b=${1:-$ROOT/build-device}
  local nvcc=/usr/local/cuda/bin/nvcc
  [[ -x $nvcc ]] || nvcc=$(command -v nvcc) || die "no nvcc: the bundle needs the CUDA toolkit here"
  local launch=()
  if command -v ccache >/dev/null; then
    launch=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT}
  fi
  cmake -S "$ROOT" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBARBELL_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DBARBELL_MPI=OFF -DBARBELL_NCCL=OFF -DBARBELL_TESTS=ON -DBARBELL_BENCHMARKS=ON \
    -DBARBELL_EXAMPLES=ON "${launch[@]}" >/dev/null
  grep -q '^BARBELL_MPI:STRING=OFF' "$b/CMakeCache.txt" && grep -q '^BARBELL_NCCL:STRING=OFF' "$b/CMakeCache.txt" ||
    die "$b is not configured without MPI and NCCL"
  cmake --build "$b" -j"${BARBELL_JOBS:-2}" --target "${TARGETS[@]}"
  pack "$b" "$ROOT/device-bundle"
}

pack() {
  local build=${1:?usage: bundle-device.sh pack BUILD_DIR [DEST]} dest=${2:-$ROOT/device-bundle}
  [[ -d $build ]] || die "no build directory $build"
  build=$(cd "$build" && pwd)
  local bins=() f
  for f in "$build"/tests/cuda/cuda_test_* "$build"/benchmarks/bench_kernels "$build"/benchmarks/bench_attention \
    "$build"/examples/barbell-train; do
    [[ -f $f && -x $f ]] && bins+=("$f")
  done
  ((${#bins[@]} > 0)) || die "no CUDA test programs in $build (bundle-device.sh build makes them)"
  for f in cuda_test_cuda_runtime cuda_test_cuda_ops cuda_test_cuda_nn cuda_test_cuda_gpt cuda_test_cuda_attention \
    bench_kernels bench_attention barbell-train; do
    printf '%s\n' "${bins[@]##*/}" | grep -qx "$f" || echo "bundle-device: warning: no $f in $build" >&2
  done

  STAGE=$(mktemp -d)
  local stage=$STAGE
  mkdir -p "$stage/bin" "$stage/lib/fallback"
  declare -A seen=()
  local needs=() elf=0 line name path
  for f in "${bins[@]}"; do
    strip --strip-unneeded -o "$stage/bin/${f##*/}" "$f" 2>/dev/null || cp "$f" "$stage/bin/"
    ldd "$f" >/dev/null 2>&1 || continue  # a script (the dry run's fakes): no libraries
    elf=1
    while read -r line; do
      name=$(awk '{print $1}' <<<"$line")
      path=$(awk '$2 == "=>" {print $3}' <<<"$line")
      [[ -z $name || -n ${seen[$name]:-} ]] && continue
      seen[$name]=1
      [[ $line == *"not found"* ]] && die "${f##*/} needs $name, which is not found here"
      [[ $name =~ ^lib(mpi|open-pal|open-rte|pmix|event|hwloc|nccl) ]] &&
        die "${f##*/} loads $name: build without MPI and NCCL (bundle-device.sh build does)"
      if [[ $name =~ $DEVICE_RE ]]; then
        needs+=("$name")
        continue
      fi
      [[ $name =~ $SKIP_RE || -z $path || ! -f $path ]] && continue
      if [[ $name =~ $FALLBACK_RE ]]; then
        cp -L "$path" "$stage/lib/fallback/$name"
      else
        strip --strip-unneeded -o "$stage/lib/$name" "$path" 2>/dev/null || cp -L "$path" "$stage/lib/$name"
      fi
    done < <(ldd "$f")
  done
  ((elf == 0)) || [[ -n ${seen[libbarbell.so.0]:-} ]] || die "the programs do not load libbarbell.so.0?"

  mkdir -p "$dest"
  rm -f "$dest/payload.tar.xz" "$dest/COMMIT" "$dest/SOURCE_HASH" "$dest/MANIFEST.txt" "$dest/NEEDS.txt"
  local commit
  commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || commit="$commit-dirty"
  echo "$commit" >"$dest/COMMIT"
  bash "$ROOT/scripts/device-check.sh" --source-hash >"$dest/SOURCE_HASH"
  printf '%s\n' "${needs[@]}" | sort -u | sed '/^$/d' >"$dest/NEEDS.txt"
  {
    echo "bundle made $(date -u +%Y-%m-%dT%H:%M:%SZ) from $build, commit $commit, source hash $(cat "$dest/SOURCE_HASH")"
    echo "host: $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null), $(ldd --version 2>/dev/null | head -1)"
    (command -v nvcc >/dev/null && nvcc --version | tail -2) || /usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -2 || true
    grep -E '^(CMAKE_CUDA_ARCHITECTURES|CMAKE_BUILD_TYPE|BARBELL_CUDA|BARBELL_MPI|BARBELL_NCCL):' "$build/CMakeCache.txt" \
      2>/dev/null || true
    echo "the device must provide: $(tr '\n' ' ' <"$dest/NEEDS.txt")"
    echo
    echo "== GPU code in libbarbell"
    local cuobjdump
    cuobjdump=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
    if [[ -f $stage/lib/libbarbell.so.0 && -x $cuobjdump ]]; then
      "$cuobjdump" --list-elf "$stage/lib/libbarbell.so.0" 2>&1 | sed 's/.*\.\(sm_[0-9a]*\)\..*/\1/' | sort | uniq -c
    elif [[ -f $stage/lib/libbarbell.so.0 ]]; then  # no cuobjdump: the targets named in the fatbins
      echo "(no cuobjdump here) targets named in libbarbell: $(strings -n 5 "$stage/lib/libbarbell.so.0" |
        grep -o 'sm_[0-9][0-9]*a\?' | sort | uniq -c | tr '\n' ' ')"
    fi
    for f in "$stage"/bin/*; do
      echo
      echo "== ldd ${f##*/} (here)"
      ldd "$f" 2>&1 || true
    done
    echo
    echo "== files"
    (cd "$stage" && find . -type f | sort | xargs ls -l)
  } >"$dest/MANIFEST.txt" 2>&1
  if ((elf)) && ! grep -q 'sm_90' "$dest/MANIFEST.txt"; then
    echo "bundle-device: warning: libbarbell has no sm_90/sm_90a GPU code (CMAKE_CUDA_ARCHITECTURES?)" >&2
  fi
  tar -C "$stage" -cf - bin lib | xz -T0 -6 >"$dest/payload.tar.xz"
  local raw packed
  raw=$(du -sk "$stage" | cut -f1)
  packed=$(du -k "$dest/payload.tar.xz" | cut -f1)
  echo "bundle-device: $dest: ${#bins[@]} programs, $(find "$stage/lib" -name '*.so*' | wc -l) libraries," \
    "$((raw / 1024)) MiB unpacked, $((packed / 1024)).$(((packed % 1024) * 10 / 1024)) MiB packed, commit $commit"
  echo "bundle-device: the device must provide: $(tr '\n' ' ' <"$dest/NEEDS.txt")"
  ((packed < 40 * 1024)) || echo "bundle-device: warning: over 40 MiB; a device call carries 64 MiB in all" >&2
  echo "bundle-device: next, the device call: run(command=\"bash scripts/device-check.sh \$OUT\"," \
    "carry=[\"device-bundle\"], timeout_s=480)"
}

status() {
  local dest=$ROOT/device-bundle here
  here=$(bash "$ROOT/scripts/device-check.sh" --source-hash)
  if [[ ! -f $dest/payload.tar.xz || ! -f $dest/SOURCE_HASH ]]; then
    echo "bundle-device: no bundle in $dest (bash scripts/bundle-device.sh build)"
    return 1
  fi
  if [[ $(cat "$dest/SOURCE_HASH") != "$here" ]]; then
    echo "bundle-device: $dest is STALE (built from source hash $(cat "$dest/SOURCE_HASH"), the tree is $here)"
    return 1
  fi
  echo "bundle-device: $dest matches the sources ($here), commit $(cat "$dest/COMMIT"), $(du -h "$dest/payload.tar.xz" | cut -f1)"
}

case ${1:-} in
  build) build "${2:-}" ;;
  pack) pack "${2:-}" "${3:-}" ;;
  status) status ;;
  *) die "usage: bundle-device.sh build [BUILD_DIR] | pack BUILD_DIR [DEST] | status" ;;
esac
