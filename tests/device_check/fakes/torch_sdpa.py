#!/usr/bin/env python3
"""The dry run's benchmarks/torch_sdpa.py: writes one result and the LD_LIBRARY_PATH it saw."""
import json
import os
import sys

out = sys.argv[sys.argv.index("--json") + 1]
ld = os.environ.get("LD_LIBRARY_PATH", "")
with open(out, "w") as f:
    json.dump({"benchmark": "torch_sdpa", "gpu": "fake", "ld_library_path": ld, "complete": True,
               "results": [{"backend": "torch-flash", "pass": "fwd", "dtype": "bf16", "B": 2, "H": 16, "T": 8192,
                            "D": 128, "causal": False, "ms": 1.1, "tflops": 480.0}]}, f)
print(f"torch_sdpa: 1 case; LD_LIBRARY_PATH={ld!r}")
