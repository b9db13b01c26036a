#!/usr/bin/env bash
# CTest cpu.isa_symbols: the files built with AVX2/AVX-512 flags (src/cpu/isa/vec_*.cpp) define no
# symbol but their table function. An inline function or template they emitted (weak, or global)
# could be the copy the linker keeps for every caller, and run AVX-512 code on a CPU without it.
# Usage: cpu_isa_symbols.sh OBJECT...   (the library's object files; the ISA ones are picked out)
set -euo pipefail
found=0
for o in "$@"; do
  case "$o" in */cpu/isa/vec_*.o | */cpu/isa/vec_*.obj) ;; *) continue ;; esac
  found=$((found + 1))
  level=$(basename "$o" | sed -E 's/^vec_([a-z0-9]+)\..*/\1/')
  # Defined symbols that are not local: T/D/B/R (global), W/V/u (weak, unique).
  bad=$(nm -C --defined-only "$o" | awk '$2 ~ /^[TDBRWVuVvw]$/' | grep -v "barbell::cpu::vec_kernels_${level}()" || true)
  if [[ -n "$bad" ]]; then
    echo "FAIL: $o defines symbols other than barbell::cpu::vec_kernels_${level}():" >&2
    echo "$bad" >&2
    exit 1
  fi
done
((found == 3)) || { echo "FAIL: expected 3 ISA object files, found $found" >&2; exit 1; }
echo "ok: $found ISA object files define only their table"
