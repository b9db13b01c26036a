#!/usr/bin/env bash
# CTest cpu_only.no_vendor_libraries: libbarbell, built with CUDA, NCCL and MPI, loads and runs
# CPU work on a machine where none of the CUDA, NCCL or MPI libraries can be loaded.
#
#   1. libbarbell.so's NEEDED entries name no CUDA, NCCL or MPI library.
#   2. Here, the vendor libraries (given as files the build used) open with dlopen, and
#      barbell's backends load them: so the hiding below is what makes them unreachable.
#   3. In a private mount namespace (unshare -m; a user namespace when not root), every file
#      of those libraries that the loader could find is covered by /dev/null (bind mounts: the
#      loader then reads an empty file, whatever path, symlink, RUNPATH or ld.so.cache entry
#      led it there), and the CUDA toolkit and Open MPI trees by empty tmpfs mounts. The files
#      are looked for in the ld.so.cache's directories, the system and multiarch directories,
#      LD_LIBRARY_PATH, the RUNPATH/RPATH of libbarbell and of every program run, and the
#      directories the build found the libraries in.
#   4. There: the same sonames and paths must no longer open (else the test fails: the hiding
#      did not work), each backend's first use must throw barbell's error naming its library
#      and the fix, and then each command of COMMANDS_FILE must exit as it says.
#
# Usage: cpu_only_test.sh LIBBARBELL PROBE COMMANDS_FILE WORKDIR [VENDOR_LIBRARY...]
#   COMMANDS_FILE: one command per line, "EXIT_CODE PROGRAM ARGS..." (no quoting).
set -euo pipefail

if [[ ${1:-} == --inside ]]; then
  shift
  inside=1
else
  inside=0
fi
lib=$(readlink -f "$1") probe=$(readlink -f "$2") commands=$(readlink -f "$3") work=$(readlink -m "$4")
shift 4
vendor=("$@")

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

needed_of() {  # the NEEDED sonames of an ELF file, one per line
  if command -v readelf >/dev/null; then
    readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
  else
    objdump -p "$1" | awk '$1 == "NEEDED" { print $2 }'
  fi
}
soname_of() {
  if command -v readelf >/dev/null; then
    readelf -d "$1" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'
  else
    objdump -p "$1" 2>/dev/null | awk '$1 == "SONAME" { print $2 }'
  fi
}
runpath_of() {  # RUNPATH and RPATH entries of an ELF file, $ORIGIN expanded, one per line
  local dir
  dir=$(dirname "$(readlink -f "$1")")
  { readelf -d "$1" 2>/dev/null || true; } | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]/\2/p' | tr ':' '\n' |
    sed -e "s|\$ORIGIN|$dir|g" -e "s|\${ORIGIN}|$dir|g" | grep -v '^$' || true
}

# What must be unreachable: each vendor library file the build used, its real path and soname.
names=()
for v in "${vendor[@]}"; do
  [[ -e $v ]] || fail "vendor library $v (from the build) does not exist"
  names+=("$v")
  real=$(readlink -f "$v")
  [[ $real != "$v" ]] && names+=("$real")
  so=$(soname_of "$real")
  [[ -n $so ]] && names+=("$so")
done
programs=()
while read -r code prog _; do
  [[ -z ${code:-} || $code == \#* ]] && continue
  programs+=("$prog")
done <"$commands"

# Sonames of the vendor libraries and of what they bring (a file matching one of these is
# hidden wherever it is found).
patterns='^lib(cublas|cublasLt|nccl|cudart|cudnn[a-z_]*|cuda|nvrtc[a-z-]*|nvJitLink|mpi|mpi_[a-z_0-9-]*|mpich[a-z]*|open-pal|open-rte|open-orted|oshmem)\.so(\..*)?$'

if ((inside == 0)); then
  echo "== 1. NEEDED of $lib"
  needed=$(needed_of "$lib")
  echo "$needed" | sed 's/^/   /'
  bad=$(echo "$needed" | grep -E 'cublas|nccl|mpi|cudart|cudnn|open-pal|open-rte|^libcuda\.' || true)
  [[ -z $bad ]] || fail "libbarbell.so needs vendor libraries: $(echo $bad)"
  modules=("$(dirname "$lib")"/libbarbell_mpi.so)
  if [[ -e ${modules[0]} ]]; then
    echo "   (the MPI backend module $(basename "${modules[0]}") needs: $(needed_of "${modules[0]}" | tr '\n' ' '))"
  fi

  echo "== 2. reachable here: ${names[*]}"
  "$probe" reachable "${names[@]}" || fail "the vendor libraries cannot be loaded even here, so hiding them proves nothing"

  echo "== 3. a private mount namespace"
  if unshare --mount --propagation private true 2>/dev/null; then
    ns=(unshare --mount --propagation private)
  elif unshare --user --map-root-user --mount --propagation private true 2>/dev/null; then
    ns=(unshare --user --map-root-user --mount --propagation private)
  elif [[ $(id -u) != 0 ]]; then
    echo "SKIP: no mount namespace can be made here as $(id -un) (unshare -m and -rm refused); run as root, as CI does"
    exit 77
  else
    fail "unshare --mount is refused even to root: $(unshare --mount true 2>&1 || true)"
  fi
  echo "   ${ns[*]}"
  exec "${ns[@]}" -- bash "${BASH_SOURCE[0]}" --inside "$lib" "$probe" "$commands" "$work" "${vendor[@]}"
fi

# ---- inside the namespace ----------------------------------------------------------------------
arch=$(uname -m)-linux-gnu
dirs=(/lib /lib64 /usr/lib /usr/lib64 "/lib/$arch" "/usr/lib/$arch" /usr/local/lib /usr/local/lib64
      "/usr/local/lib/$arch")
while read -r path; do dirs+=("${path%/*}"); done < <(ldconfig -p 2>/dev/null | sed -n 's/.*=> //p')
IFS=: read -r -a ldp <<<"${LD_LIBRARY_PATH:-}"
dirs+=("${ldp[@]}")
for f in "$lib" "${programs[@]}"; do
  while read -r d; do dirs+=("$d"); done < <(runpath_of "$f")
done
for v in "${vendor[@]}"; do dirs+=("$(dirname "$v")" "$(dirname "$(readlink -f "$v")")"); done
mapfile -t dirs < <(printf '%s\n' "${dirs[@]}" | grep -v '^$' | sort -u)

# Whole trees: the CUDA toolkit(s) and Open MPI's private directory (its plugins).
trees=()
for t in /usr/local/cuda /usr/local/cuda-* /opt/cuda "/usr/lib/$arch/openmpi" /usr/lib64/openmpi /opt/openmpi; do
  [[ -d $t ]] && trees+=("$(readlink -f "$t")")
done
mapfile -t trees < <(printf '%s\n' "${trees[@]}" | sort -u)

declare -A hidden=()
for d in "${dirs[@]}"; do
  [[ -d $d ]] || continue
  for f in "$d"/*; do
    [[ -e $f ]] || continue
    base=${f##*/}
    [[ $base =~ $patterns ]] || continue
    real=$(readlink -f "$f")
    [[ -f $real && -z ${hidden[$real]:-} ]] || continue
    mount --bind /dev/null "$real" || fail "cannot cover $real"
    hidden[$real]=1
  done
done
for t in "${trees[@]}"; do
  mount -t tmpfs -o size=1m,mode=755 barbell-cpu-only "$t" || fail "cannot cover $t"
done
echo "   covered ${#hidden[@]} library files with /dev/null and ${#trees[@]} trees with tmpfs (${trees[*]})"

# Every cached path of a vendor soname must now be unreachable too.
while read -r so path; do
  [[ $so =~ $patterns ]] && names+=("$path")
done < <(ldconfig -p 2>/dev/null | sed -n 's/^[[:space:]]*\([^ ]*\) .*=> \(.*\)$/\1 \2/p')
mapfile -t names < <(printf '%s\n' "${names[@]}" | sort -u)

echo "== 4. unreachable in the namespace: ${#names[@]} sonames and paths"
"$probe" unreachable "${names[@]}" || fail "a vendor library is still reachable, or a backend's error is not barbell's"

mkdir -p "$work"
cd "$work"
failed=0
while read -r code prog args; do
  [[ -z ${code:-} || $code == \#* ]] && continue
  t0=$SECONDS
  rc=0
  log="$work/$(basename "$prog").log"
  # shellcheck disable=SC2086
  "$prog" $args >"$log" 2>&1 || rc=$?
  if [[ $rc == "$code" ]]; then
    echo "   ok    $(basename "$prog") $args: exit $rc ($((SECONDS - t0)) s)"
  else
    echo "   FAIL  $(basename "$prog") $args: exit $rc, expected $code ($((SECONDS - t0)) s); last lines:"
    tail -n 30 "$log" | sed 's/^/      /'
    failed=1
  fi
done <"$commands"
((failed == 0)) || fail "a program failed with the CUDA, NCCL and MPI libraries unreachable"
echo "PASSED: libbarbell needs none of them and runs CPU work without them"
