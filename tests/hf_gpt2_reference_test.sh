#!/usr/bin/env bash
# CTest hf_gpt2.reference: barbell reads a GPT-2 folder that the reference `safetensors` package wrote from
# numpy, matches numpy's forward pass on it, trains, and writes a folder that safetensors reads back with
# GPT-2's names, shapes and logits. Skipped (77) when python3 lacks safetensors or numpy
# (scripts/setup-python-deps.sh installs them; CI runs it).
# Usage: hf_gpt2_reference_test.sh HF_GPT2_TOOL WORKDIR
set -euo pipefail
tool=$1
work=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${PYTHON:-python3}

if ! "$py" -c 'import numpy, safetensors.numpy' 2>/dev/null; then
  echo "SKIPPED: $py cannot import numpy and safetensors (pip install safetensors numpy)"
  exit 77
fi
rm -rf "$work"
mkdir -p "$work"
"$py" "$here/hf_gpt2_reference.py" make "$work/reference"
"$tool" reference "$work/reference" "$work/barbell"
"$py" "$here/hf_gpt2_reference.py" check "$work/barbell"
echo "hf_gpt2.reference: OK"
