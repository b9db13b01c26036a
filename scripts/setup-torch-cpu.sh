#!/usr/bin/env bash
# Installs PyTorch into a Python venv for the CPU comparison benchmark (benchmarks/torch_train_step.py)
# without CUDA's heavy wheels, and prints the environment that makes `import torch` work.
#
#   scripts/setup-torch-cpu.sh [VENV]          # create/complete VENV (default: .venv-torch), print the env
#   eval "$(scripts/setup-torch-cpu.sh --env [VENV])"   # only print the exports (no pip), for a shell
#
# PyPI's torch wheel for Linux is the CUDA build: its dependencies pull ~3 GB of CUDA
# libraries. For CPU work only a few of them are loaded when libtorch_cuda.so is (it is
# always loaded): cuFile, cuSPARSELt, NVSHMEM and NCCL come from their small wheels, the
# rest (cudart, cuBLAS, ...) from the CUDA toolkit already on the machine (lib64). So torch
# is installed with --no-deps, then its pure-Python dependencies and those four wheels at
# the versions torch pins. Not used by CI.
set -euo pipefail

TORCH_VERSION=2.15.0
# The versions torch 2.15.0 pins (its METADATA; nvidia-cufile through cuda-toolkit 13.2.2).
NVIDIA_WHEELS=(nvidia-cufile==1.20.0.107 nvidia-cusparselt-cu13==0.8.1 nvidia-nvshmem-cu13==3.7.2
  nvidia-nccl-cu13==2.30.7)
PY_DEPS=(numpy sympy filelock jinja2 networkx fsspec typing-extensions safetensors)

env_only=0
if [[ "${1:-}" == "--env" ]]; then
  env_only=1
  shift
fi
venv="${1:-.venv-torch}"
cuda_lib64="${CUDA_HOME:-/usr/local/cuda}/lib64"

if ((env_only == 0)); then
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1 ||
    [[ "$("$venv/bin/python" -m pip show torch 2>/dev/null | sed -n 's/^Version: //p')" != "$TORCH_VERSION"* ]]; then
    "$venv/bin/python" -m pip install --no-deps "torch==$TORCH_VERSION" >&2
  fi
  "$venv/bin/python" -m pip install "${PY_DEPS[@]}" >&2
  "$venv/bin/python" -m pip install --no-deps "${NVIDIA_WHEELS[@]}" >&2
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
libs=""
for d in "$site"/nvidia/*/lib; do
  [[ -d "$d" ]] && libs="$libs${libs:+:}$d"
done
libs="$libs:$cuda_lib64"
echo "export LD_LIBRARY_PATH=$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
echo "export BARBELL_TORCH_PYTHON=$(cd "$venv" && pwd)/bin/python"
if ((env_only == 0)); then
  # A check that the result imports, with the env it printed.
  LD_LIBRARY_PATH="$libs" "$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "cpu capability",
      torch.backends.cpu.get_cpu_capability(), file=__import__("sys").stderr)'
fi
