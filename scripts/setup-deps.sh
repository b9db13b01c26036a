#!/usr/bin/env bash
# Installs the Debian packages barbell needs to build, test and plot, only those missing.
# Idempotent and non-interactive; a no-op (no apt-get at all) when everything is already there.
set -euo pipefail

required=(build-essential cmake ninja-build catch2 libfmt-dev libopenblas-dev libopenblas-openmp-dev nlohmann-json3-dev
  libcli11-dev libopenmpi-dev openmpi-bin python3
  mount  # mount: tests/cpu_only hides the vendor libraries with bind mounts
  clang libclang-rt-14-dev libomp-14-dev)  # clang: the emulated device's build (its instrumentation) and the fuzzers (libFuzzer, clang's OpenMP)
# A failure to install these is a warning: scripts/plot_metrics.py needs matplotlib; the CPU
# backend opens oneDNN (libdnnl2) at run time for its faster sgemm and bf16 gemm, and uses
# OpenBLAS alone without it.
optional=(python3-matplotlib libdnnl2)

is_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

missing_of() {
  local p
  for p in "$@"; do
    is_installed "$p" || printf '%s\n' "$p"
  done
}

mapfile -t missing_req < <(missing_of "${required[@]}")
mapfile -t missing_opt < <(missing_of "${optional[@]}")
missing_all=("${missing_req[@]}" "${missing_opt[@]}")

if ((${#missing_all[@]} == 0)); then
  echo "setup-deps: all packages already installed"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "setup-deps: missing ${missing_all[*]}, and not root (no sudo)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
apt_get=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)

echo "setup-deps: installing ${missing_all[*]}"
"${apt_get[@]}" update
if ((${#missing_req[@]} > 0)); then
  "${apt_get[@]}" install --no-install-recommends "${missing_req[@]}"
fi
if ((${#missing_opt[@]} > 0)); then
  if ! "${apt_get[@]}" install --no-install-recommends "${missing_opt[@]}"; then
    echo "setup-deps: warning: could not install ${missing_opt[*]} (only needed by scripts/plot_metrics.py)" >&2
  fi
fi

mapfile -t still < <(missing_of "${required[@]}")
if ((${#still[@]} > 0)); then
  echo "setup-deps: still missing: ${still[*]}" >&2
  exit 1
fi
echo "setup-deps: done"
