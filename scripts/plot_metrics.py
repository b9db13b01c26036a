#!/usr/bin/env python3
# Plots a trainer's JSONL metrics (one JSON object per line, with "step" and "loss") to a PNG:
# train loss, val loss when present, and accuracy on a second axis when present.
"""Usage: python3 scripts/plot_metrics.py runs/metrics.jsonl -o loss.png [--title T] [--log-y]"""

import argparse
import json
import math
import os
import sys


def _number(v):
    """v as a finite float, or None (missing, null, NaN, inf, or not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def read_metrics(path):
    """Series keyed by metric name, each a list of (step, value); lines without "step" are skipped."""
    series = {k: [] for k in ("loss", "val_loss", "accuracy", "lr", "tokens_per_s")}
    bad = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # e.g. a half-written last line while the trainer is still running
                continue
            if not isinstance(rec, dict):
                continue
            step = _number(rec.get("step"))
            if step is None:
                continue
            for key, points in series.items():
                v = _number(rec.get(key))
                if v is not None:
                    points.append((step, v))
    if bad:
        print(f"plot_metrics: skipped {bad} line(s) that are not JSON in {path}", file=sys.stderr)
    for points in series.values():
        points.sort(key=lambda p: p[0])
    return series


def _import_pyplot(argv):
    """matplotlib.pyplot on the Agg backend. When this python lacks matplotlib (say a pyenv or
    venv python first on PATH) but the system one has Debian's python3-matplotlib, rerun there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        pass
    system = "/usr/bin/python3"
    if (os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system)
            and not os.environ.get("PLOT_METRICS_REEXEC")):
        os.environ["PLOT_METRICS_REEXEC"] = "1"
        print(f"plot_metrics: no matplotlib in {sys.executable}; trying {system}", file=sys.stderr)
        os.execv(system, [system, os.path.abspath(__file__), *argv])
    sys.exit("plot_metrics: matplotlib is not installed (apt-get install python3-matplotlib)")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot training metrics from a JSONL file to a PNG.")
    ap.add_argument("metrics", help="JSONL file written by the trainer (e.g. runs/metrics.jsonl)")
    ap.add_argument("-o", "--output", default="loss.png", help="PNG to write (default: loss.png)")
    ap.add_argument("--title", default=None, help="plot title (default: the metrics file name)")
    ap.add_argument("--log-y", action="store_true", help="log scale for the loss axis")
    args = ap.parse_args(argv)

    if not os.path.isfile(args.metrics):
        sys.exit(f"plot_metrics: no such file: {args.metrics}")
    plt = _import_pyplot(sys.argv[1:] if argv is None else argv)
    series = read_metrics(args.metrics)
    loss, val, acc = series["loss"], series["val_loss"], series["accuracy"]
    if not loss and not val:
        sys.exit(f"plot_metrics: no points in {args.metrics} (need lines with \"step\" and \"loss\")")


    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    handles = []
    if loss:
        xs, ys = zip(*loss)
        # Dense curves get thin lines; a handful of points get markers so each is visible.
        style = {"marker": "o", "markersize": 3} if len(loss) <= 50 else {}
        handles += ax.plot(xs, ys, color="tab:blue", linewidth=1.2, label="train loss", **style)
    if val:
        xs, ys = zip(*val)
        handles += ax.plot(xs, ys, color="tab:orange", linewidth=1.8, marker="o", markersize=4, label="val loss")
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss")
    if args.log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)

    if acc:
        ax2 = ax.twinx()
        xs, ys = zip(*acc)
        handles += ax2.plot(xs, ys, color="tab:green", linewidth=1.5, marker="s", markersize=3, label="accuracy")
        ax2.set_ylabel("accuracy")
        if all(0.0 <= y <= 1.0 for y in ys):
            ax2.set_ylim(0.0, 1.05)

    last = loss[-1] if loss else val[-1]
    notes = [f"last step {last[0]:g}: loss {last[1]:.4g}"]
    if val:
        notes.append(f"val {val[-1][1]:.4g}")
    if acc:
        notes.append(f"acc {acc[-1][1]:.4g}")
    tps = series["tokens_per_s"]
    if tps:
        notes.append(f"{sum(v for _, v in tps) / len(tps):,.0f} tok/s avg")
    ax.set_title(args.title or os.path.basename(args.metrics))
    ax.text(0.99, 0.98, ", ".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.legend(handles=handles, loc="upper left" if not acc else "center right", fontsize=9)
    fig.tight_layout()

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.output)
    plt.close(fig)
    print(f"plot_metrics: wrote {args.output} ({len(loss)} train, {len(val)} val, {len(acc)} accuracy points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
