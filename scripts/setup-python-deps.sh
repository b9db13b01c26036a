#!/usr/bin/env bash
# Installs the Python packages that tests which check against a reference implementation need (numpy,
# safetensors: CTest hf_gpt2.reference), only those missing, with python3's pip. Never fails: where pip or
# PyPI is not there it warns, and those tests report "skipped" rather than pass.
set -uo pipefail
py=${PYTHON:-python3}
packages=(numpy safetensors)

if ! command -v "$py" >/dev/null; then
  echo "setup-python-deps: warning: no $py; the reference tests will be skipped" >&2
  exit 0
fi
missing=()
for p in "${packages[@]}"; do
  "$py" -c "import $p" 2>/dev/null || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup-python-deps: ${packages[*]} already installed for $py"
  exit 0
fi
echo "setup-python-deps: installing ${missing[*]} for $py ($("$py" --version 2>&1))"
if ! "$py" -m pip install --disable-pip-version-check --no-input -q "${missing[@]}"; then
  echo "setup-python-deps: warning: pip could not install ${missing[*]}; the reference tests will be skipped" >&2
fi
exit 0
