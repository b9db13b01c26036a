#!/usr/bin/env python3
"""Merges attention benchmark JSON files into one markdown table (for docs/benchmarks.md).

    python3 benchmarks/attention_table.py bench_attention.json torch_sdpa.json \\
        [--out table.md] [--merge-out merged.json]

Inputs: the JSON of build/benchmarks/bench_attention and of benchmarks/torch_sdpa.py (one
schema: metadata plus "results", a list of {backend, pass: fwd|bwd, dtype, B, H, T, D,
causal, ms, tflops} or, for a case that did not run, "skipped"/"error" instead of ms).
Output: one table per (dtype, D), rows T x causal, columns TFLOP/s of each backend's
forward and backward, then Flash/cuDNN ratios when both barbell backends are there; each
table is headed by the GPUs, drivers and commits the numbers come from. A cell is "skip"
(the backend refused the shape), "err" (it failed) or blank (not measured).
--merge-out writes every input's metadata ("sources") and all results in one JSON file,
with the markdown under "table_markdown". Standard library only.
"""
import argparse
import json
import os
import sys

# Column order: barbell's backends first, then PyTorch's.
ORDER = ["flash", "cudnn", "math", "torch-flash", "torch-cudnn", "torch-efficient", "torch-math"]


def load(paths):
    sources, rows = [], {}
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"attention_table: cannot read {path}: {e}", file=sys.stderr)
            continue
        meta = {k: v for k, v in doc.items() if k != "results"}
        meta["file"] = path
        sources.append(meta)
        for r in doc.get("results", []):
            try:
                key = (r["backend"], r["pass"], r["dtype"], int(r["D"]), int(r["T"]), bool(r["causal"]))
            except (KeyError, TypeError, ValueError):
                continue
            if key in rows and "tflops" in rows[key] and "tflops" in r:
                print(f"attention_table: {key} measured twice; keeping the one from {path}", file=sys.stderr)
            if key not in rows or "tflops" in r or "tflops" not in rows[key]:
                rows[key] = {**r, "source": path}
    return sources, rows


def cell(r):
    if r is None:
        return ""
    if "tflops" in r:
        return f"{r['tflops']:.0f}" if r["tflops"] >= 100 else f"{r['tflops']:.1f}"
    if "skipped" in r:
        return "skip"
    if "error" in r:
        return "err"
    return ""


def table(sources, rows):
    out = []
    groups = sorted({(k[2], k[3]) for k in rows}, key=lambda g: (g[0] != "bf16", -g[1]))
    if not groups:
        return "(no attention results)\n"
    for dtype, D in groups:
        backends = sorted({k[0] for k in rows if k[2] == dtype and k[3] == D},
                          key=lambda b: (ORDER.index(b) if b in ORDER else len(ORDER), b))
        keys = sorted({(k[4], k[5]) for k in rows if k[2] == dtype and k[3] == D})
        srcs = sorted({r["source"] for k, r in rows.items() if k[2] == dtype and k[3] == D})
        out.append(f"#### {dtype}, D = {D}, H = {2048 // D if D else '?'}, B*T = 16384 (TFLOP/s)\n")
        for s in sources:
            if s["file"] in srcs:
                bits = [s.get("benchmark", "?"), s.get("gpu", "?")]
                if s.get("driver_version"):
                    bits.append(f"driver {s['driver_version']}")
                if s.get("cudnn_version"):
                    bits.append(f"cuDNN {s['cudnn_version']}")
                if s.get("torch_version"):
                    bits.append(f"torch {s['torch_version']}")
                if s.get("commit"):
                    bits.append(f"commit {s['commit']}")
                bits.append(s.get("date", ""))
                if s.get("complete") is False:
                    bits.append("INCOMPLETE RUN")
                out.append(f"- {', '.join(b for b in bits if b)}")
        out.append("")
        ratio = "flash" in backends and "cudnn" in backends
        head = ["T", "mask"] + [f"{b} {p}" for b in backends for p in ("fwd", "bwd")]
        if ratio:
            head += ["flash/cudnn fwd", "flash/cudnn bwd"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---:" if i != 1 else "---" for i in range(len(head))) + "|")
        for T, causal in keys:
            line = [str(T), "causal" if causal else "full"]
            for b in backends:
                for p in ("fwd", "bwd"):
                    line.append(cell(rows.get((b, p, dtype, D, T, causal))))
            if ratio:
                for p in ("fwd", "bwd"):
                    f, c = rows.get(("flash", p, dtype, D, T, causal)), rows.get(("cudnn", p, dtype, D, T, causal))
                    ok = f and c and "tflops" in f and "tflops" in c and c["tflops"] > 0
                    line.append(f"{f['tflops'] / c['tflops']:.2f}" if ok else "")
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    out.append("FLOPs: forward 4·B·H·T²·D (halved when causal), backward 2.5× forward.")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="bench_attention / torch_sdpa.py JSON files")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    ap.add_argument("--merge-out", help="write all inputs merged into one JSON file")
    args = ap.parse_args()
    sources, rows = load(args.files)
    if not sources:
        print("attention_table: no readable input", file=sys.stderr)
        return 1
    md = table(sources, rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    else:
        sys.stdout.write(md)
    if args.merge_out:
        merged = {"benchmark": "attention (merged)", "sources": sources,
                  "results": [{k: v for k, v in r.items()} for r in rows.values()], "table_markdown": md}
        tmp = args.merge_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(merged, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.merge_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
