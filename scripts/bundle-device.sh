#!/usr/bin/env bash
# Packs what the GPU machine lacks, after a normal CUDA build here, into device-bundle/
# (git-ignored) for scripts/device-check.sh:
#
#   scripts/bundle-device.sh [BUILD_DIR (default: build)] [DEST (default: device-bundle)]
#
# The device machine has the NVIDIA driver, the CUDA toolkit (nvcc, cuBLAS(Lt), cuDNN,
# NCCL), CMake, ninja and Python, but none of our Debian packages (fmt, OpenBLAS, Catch2,
# CLI11, nlohmann-json, MPI). So DEST gets:
#   payload.tar.xz  bin/  the CUDA test programs, bench_kernels, bench_attention (and
#                         barbell-train if built)
#                   py/   benchmarks/torch_sdpa.py and attention_table.py (device-check.sh
#                         runs the working tree's copies when it has them)
#                   lib/  libbarbell.so and every shared library they load that is neither the
#                         C library family, the driver, nor a CUDA toolkit library (those come
#                         from the device itself); lib/fallback/ holds this machine's libstdc++
#                         and libgcc_s, used only if the device's own are too old
#                   deps/ headers, CMake packages and libraries of fmt, nlohmann-json, CLI11,
#                         Catch2 and OpenBLAS, laid out like /usr, so that device-check.sh can
#                         build from source on the device when the binaries cannot run there
#   COMMIT          the commit (and "-dirty" when the tree differs from it)
#   SOURCE_HASH     a hash of the sources the binaries were built from (device-check.sh
#                   recomputes it there and warns when the bundle is stale)
#   MANIFEST.txt    toolchain versions, ldd of every program, the GPU code in libbarbell
#
# Binaries cannot carry a RUNPATH to the bundle, so they run with
# LD_LIBRARY_PATH=<bundle>/lib (device-check.sh sets it). Compressed (xz) to stay well under
# the 64 MiB a device call may carry.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
DEST=${2:-$ROOT/device-bundle}
[[ -d $BUILD ]] || { echo "bundle-device: no build directory $BUILD" >&2; exit 2; }
BUILD=$(cd "$BUILD" && pwd)
ARCH=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

die() { echo "bundle-device: $*" >&2; exit 1; }

# The programs.
bins=()
for f in "$BUILD"/tests/cuda/cuda_test_* "$BUILD"/benchmarks/bench_kernels "$BUILD"/benchmarks/bench_attention; do
  [[ -f $f && -x $f ]] && bins+=("$f")
done
train=$(find "$BUILD" -maxdepth 3 -type f -name barbell-train -perm -u+x 2>/dev/null | head -1 || true)
[[ -n $train ]] && bins+=("$train")
[[ ${#bins[@]} -gt 0 ]] || die "no CUDA test programs or bench_kernels in $BUILD (configure with -DBARBELL_CUDA=ON and build first)"
[[ -x $BUILD/benchmarks/bench_kernels ]] || echo "bundle-device: warning: no bench_kernels in $BUILD" >&2
[[ -x $BUILD/benchmarks/bench_attention ]] || echo "bundle-device: warning: no bench_attention in $BUILD" >&2

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib/fallback" "$STAGE/py"
# The Python side of the attention benchmark (PyTorch's SDPA on the same shapes, the table).
for py in torch_sdpa.py attention_table.py; do
  if [[ -f $ROOT/benchmarks/$py ]]; then cp "$ROOT/benchmarks/$py" "$STAGE/py/"; else echo "bundle-device: warning: no benchmarks/$py" >&2; fi
done

# Libraries that must come from the device: the C library family and the dynamic loader,
# the driver, and the CUDA toolkit's libraries (they must match the device's driver).
skip_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libutil\.so|libresolv\.so|libcuda\.so|libnvidia|libcudart\.so|libcublas|libcublasLt|libcudnn|libnccl|libnvrtc|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver|libcupti|libnvToolsExt)'
fallback_re='^(libstdc\+\+\.so|libgcc_s\.so)'

declare -A seen
missing=0
for b in "${bins[@]}"; do
  strip --strip-unneeded -o "$STAGE/bin/$(basename "$b")" "$b" 2>/dev/null || cp "$b" "$STAGE/bin/"
  while read -r line; do
    # "libfoo.so.1 => /path/libfoo.so.1 (0x...)" or "libfoo.so.1 => not found"
    name=$(awk '{print $1}' <<<"$line")
    path=$(awk '$2 == "=>" {print $3}' <<<"$line")
    [[ -z $name ]] && continue
    if [[ $line == *"not found"* ]]; then
      echo "bundle-device: $(basename "$b") needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    [[ $name =~ $skip_re ]] && continue
    [[ -z $path || ! -f $path ]] && continue
    [[ -n ${seen[$name]:-} ]] && continue
    seen[$name]=1
    if [[ $name =~ $fallback_re ]]; then
      cp -L "$path" "$STAGE/lib/fallback/$name"
    else
      strip --strip-unneeded -o "$STAGE/lib/$name" "$path" 2>/dev/null || cp -L "$path" "$STAGE/lib/$name"
    fi
  done < <(ldd "$b")
done
[[ $missing == 0 ]] || die "unresolved libraries (see above)"
[[ -n ${seen[libbarbell.so.0]:-}${seen[libbarbell.so]:-} ]] || die "the programs do not load libbarbell.so?"

# Headers and CMake packages for a source build on the device (laid out like /usr).
deps="$STAGE/deps"
mkdir -p "$deps/include" "$deps/lib/$ARCH/cmake" "$deps/lib/cmake" "$deps/share/cmake" "$deps/include/openblas"
copy_dir() { [[ -d $1 ]] && mkdir -p "$(dirname "$2")" && cp -a "$1" "$2"; }
copy_dir /usr/include/fmt "$deps/include/fmt" || true
copy_dir /usr/include/nlohmann "$deps/include/nlohmann" || true
copy_dir /usr/include/CLI "$deps/include/CLI" || true
copy_dir /usr/include/catch2 "$deps/include/catch2" || true
copy_dir "/usr/lib/$ARCH/cmake/fmt" "$deps/lib/$ARCH/cmake/fmt" || true
copy_dir /usr/lib/cmake/Catch2 "$deps/lib/cmake/Catch2" || true
copy_dir /usr/share/cmake/CLI11 "$deps/share/cmake/CLI11" || true
copy_dir /usr/share/cmake/nlohmann_json "$deps/share/cmake/nlohmann_json" || true
for h in cblas.h openblas_config.h f77blas.h; do
  p=$(find /usr/include -name "$h" -path '*openblas*' 2>/dev/null | head -1 || true)
  [[ -n $p ]] && cp -L "$p" "$deps/include/openblas/$h"
done
[[ -f /usr/lib/libCatch2WithMain.a ]] && cp /usr/lib/libCatch2WithMain.a "$deps/lib/"  # named by Catch2's CMake package
# The shared libraries themselves are the ones in lib/: relative links to them, under the
# sonames and the file names the CMake packages name (libfmt.so.9.1.0).
for lib in libfmt libopenblas; do
  so=$(cd "$STAGE/lib" && ls ${lib}.so.* 2>/dev/null | head -1 || true)
  [[ -n $so ]] || continue
  ln -sf "../../../lib/$so" "$deps/lib/$ARCH/$so"
  ln -sf "$so" "$deps/lib/$ARCH/${lib}.so"
  real=$(basename "$(readlink -f "/usr/lib/$ARCH/$so" 2>/dev/null || echo "$so")")
  [[ $real != "$so" ]] && ln -sf "$so" "$deps/lib/$ARCH/$real"
done

# Provenance.
commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then commit="$commit-dirty"; fi
mkdir -p "$DEST"
rm -f "$DEST/payload.tar.xz" "$DEST/COMMIT" "$DEST/SOURCE_HASH" "$DEST/MANIFEST.txt"
echo "$commit" >"$DEST/COMMIT"
bash "$ROOT/scripts/device-check.sh" --source-hash >"$DEST/SOURCE_HASH"
{
  echo "bundle made $(date -u +%Y-%m-%dT%H:%M:%SZ) from $BUILD, commit $commit"
  echo "source hash $(cat "$DEST/SOURCE_HASH")"
  echo "host: $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1), $(gcc --version | head -1)"
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  "$nvcc" --version 2>/dev/null | tail -2 || true
  grep -E '^(CMAKE_CUDA_ARCHITECTURES|CMAKE_BUILD_TYPE|BARBELL_CUDA):' "$BUILD/CMakeCache.txt" 2>/dev/null || true
  echo
  echo "== GPU code in libbarbell"
  cuobjdump=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
  if [[ -x $cuobjdump ]]; then
    "$cuobjdump" --list-elf "$STAGE"/lib/libbarbell.so* 2>&1 | sort -u
  else  # no cuobjdump here: the ptxas options nvcc embeds name the target
    echo "(no cuobjdump; targets named in the library:) $(strings -n 6 "$STAGE"/lib/libbarbell.so* | grep -o 'sm_[0-9]*a\?' | sort | uniq -c | tr '\n' ' ')"
  fi
  echo
  for b in "$STAGE"/bin/*; do
    echo "== ldd $(basename "$b") (here)"
    ldd "$b"
  done
  echo
  echo "== files"
  (cd "$STAGE" && find . -type f -o -type l | sort | xargs ls -la)
} >"$DEST/MANIFEST.txt" 2>&1
if ! grep -q 'sm_90' "$DEST/MANIFEST.txt"; then
  echo "bundle-device: warning: libbarbell has no sm_90/sm_90a GPU code (CMAKE_CUDA_ARCHITECTURES?)" >&2
fi

tar -C "$STAGE" -cf - bin lib deps py | xz -T0 -6 >"$DEST/payload.tar.xz"
raw=$(du -sm "$STAGE" | cut -f1)
packed=$(du -m "$DEST/payload.tar.xz" | cut -f1)
echo "bundle-device: $DEST: ${#bins[@]} programs, $(find "$STAGE/lib" -maxdepth 1 -name '*.so*' | wc -l) libraries, ${raw} MiB unpacked, ${packed} MiB packed (commit $commit)"
for b in "$STAGE"/bin/* "$STAGE"/py/*; do [[ -f $b ]] && echo "  ${b#"$STAGE"/}"; done
(cd "$STAGE/lib" && for l in *.so* fallback/*; do [[ -f $l ]] && echo "  lib/$l $(du -k "$l" | cut -f1) KiB"; done)
if ((packed > 60)); then
  echo "bundle-device: warning: the payload is over 60 MiB; a device call carries 64 MiB in all" >&2
fi
