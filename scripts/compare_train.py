#!/usr/bin/env python3
"""Compares two barbell-train runs step by step (scripts/device-check.sh's training step).

    python3 scripts/compare_train.py GPU/metrics.jsonl CPU/metrics.jsonl

Both runs are bf16 with the same seed, data and schedule, one on the GPU (flash attention)
and one on the CPU (math attention), so their losses differ only by rounding: the check
wants them within 2% at each of the first 10 steps and 5% after (rounding differences feed
back through the updates, so runs drift apart; on the CPU the same run in f32 and in bf16
differ by at most 0.33% over these 40 steps), and both losses down by 10% or more. Prints a few steps and one "train-compare: PASS|FAIL: ..." line; exit 0 on PASS.
Standard library only.
"""
import json
import sys


def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if "loss" in d and "step" in d:
                out[int(d["step"])] = float(d["loss"])
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    try:
        g, c = losses(sys.argv[1]), losses(sys.argv[2])
    except (OSError, ValueError) as e:
        print(f"train-compare: FAIL: cannot read the metrics: {e}")
        return 1
    steps = sorted(set(g) & set(c))
    if not steps:
        print("train-compare: FAIL: no step in common")
        return 1
    worst, bad = 0.0, []
    for s in steps:
        r = abs(g[s] - c[s]) / max(abs(c[s]), 1e-12)
        worst = max(worst, r)
        if not r <= (0.02 if s <= 10 else 0.05):  # NaN fails too
            bad.append(s)
        if s in (1, 5, 10, 20, 30) or s == steps[-1]:
            print(f"step {s:3d}: gpu {g[s]:.5f}  cpu {c[s]:.5f}  rel diff {r:.2e}")
    first, last = steps[0], steps[-1]
    learned = g[last] < 0.9 * g[first] and c[last] < 0.9 * c[first]
    ok = not bad and learned
    msg = (f"{len(steps)} steps, worst rel diff {worst:.2e}, loss {g[first]:.3f} -> {g[last]:.3f} (gpu), "
           f"{c[first]:.3f} -> {c[last]:.3f} (cpu)")
    if bad:
        msg += f"; out of tolerance at steps {bad[:8]}"
    if not learned:
        msg += "; a run did not learn"
    print(f"train-compare: {'PASS' if ok else 'FAIL'}: {msg}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
