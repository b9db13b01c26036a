#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on bench_attention's shapes, for comparison.

    python3 benchmarks/torch_sdpa.py [--json FILE] [--quick] [--f16] [--math] ...

The same shapes as build/benchmarks/bench_attention (hidden 2048: H = 16 at D = 128,
H = 32 at D = 64; B*T = 16384; T = 512 .. 16384; causal and not; bf16, f16 with --f16),
the same inputs layout (q, k, v strided [B, H, T, D] views of one [B, T, 3, H, D] tensor,
select then transpose, as barbell's GPT makes them), the same FLOP convention
(fwd = 4*B*H*T^2*D, halved when causal; bwd = 2.5 * fwd) and the same JSON schema, with
the backend named after the SDPA kernel torch.nn.attention.sdpa_kernel selects:
torch-flash (FLASH_ATTENTION), torch-cudnn (CUDNN_ATTENTION), torch-efficient
(EFFICIENT_ATTENTION), and torch-math (MATH, with --math, small T only).

Timing: CUDA events around each call, median of the repetitions after a warm-up; before
each timed call torch.cuda._sleep keeps the GPU busy while Python enqueues the call, so
host time is not counted. fwd: F.scaled_dot_product_attention under torch.no_grad().
bwd: torch.autograd.grad(out, (q, k, v), dO, retain_graph=True) on one saved forward: the
SDPA backward node alone (q, k, v are the views, so neither the view backward nor a leaf
accumulation is timed).

A kernel that refuses a shape (any RuntimeError from the call: "No available kernel", a cuDNN
frontend refusal, out of memory) is recorded with "skipped": PyTorch's reason. Results are written
after every case (a run cut short keeps them). Progress goes to stderr, the table to stdout.
Without PyTorch or a GPU it says so and exits with status 3.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time

TOKENS = 16384
HIDDEN = 2048


def nvidia_driver_version():
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(\d+\.\d+(?:\.\d+)?)", f.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def fwd_flops(B, H, T, D, causal):
    f = 4.0 * B * H * T * T * D
    return f / 2 if causal else f


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results as JSON to this file (rewritten after every case)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (D=128 T=8192/2048, D=64 T=8192) and repetitions")
    ap.add_argument("--f16", action="store_true", help="also f16, after all the bf16 cases")
    ap.add_argument("--math", action="store_true", help="also the MATH kernel, up to --math-max-t")
    ap.add_argument("--math-max-t", type=int, default=2048)
    ap.add_argument("--backends", default="flash,cudnn,efficient",
                    help="comma-separated: flash, cudnn, efficient, math (default flash,cudnn,efficient)")
    ap.add_argument("--only", default=".*", help='regex on "backend pass dtype T=.. D=.. causal|full"')
    ap.add_argument("--commit", default=os.environ.get("BARBELL_COMMIT", ""),
                    help="the barbell commit these numbers go with (default $BARBELL_COMMIT)")
    ap.add_argument("--time-budget", type=float, default=0, help="start no new case after this many seconds")
    ap.add_argument("--target-ms", type=float, default=None, help="timed GPU time aimed at per case")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # ImportError, or an old torch without torch.nn.attention
        print(f"torch_sdpa: skipped: PyTorch (>= 2.3, with torch.nn.attention.sdpa_kernel) is not usable here: {e}",
              file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print("torch_sdpa: skipped: torch.cuda.is_available() is False (no GPU, or a CPU-only PyTorch)",
              file=sys.stderr)
        return 3

    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH}
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        kernels["cudnn"] = SDPBackend.CUDNN_ATTENTION
    names = [b for b in args.backends.split(",") if b]
    if args.math and "math" not in names:
        names.append("math")
    for b in names:
        if b not in ("flash", "cudnn", "efficient", "math"):
            ap.error(f"unknown backend {b!r}")
    only = re.compile(args.only)

    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    meta = {
        "benchmark": "torch_sdpa",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": args.commit,
        "quick": args.quick,
        "complete": False,
        "gpu": props.name,
        "sm": f"{props.major}{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "driver_version": nvidia_driver_version(),
        "torch_version": torch.__version__,
        "cuda_runtime_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 0,
        "flops_formula": "fwd = 4*B*H*T^2*D (halved when causal); bwd = 2.5 * fwd",
        "method": "median of per-call GPU times (CUDA events) after warm-up, each call preceded by torch.cuda._sleep "
                  "covering the host's enqueue time; q, k, v strided views of a [B, T, 3, H, D] tensor; fwd under "
                  "no_grad; bwd = torch.autograd.grad(out, (q, k, v), dO, retain_graph=True)",
    }
    if "cudnn" in names and "cudnn" not in kernels:
        meta["note"] = "this PyTorch has no SDPBackend.CUDNN_ATTENTION"
    results = []

    def save():
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump({**meta, "results": results}, f, indent=2)
                f.write("\n")
            os.replace(tmp, args.json)

    target_ms = args.target_ms or (60.0 if args.quick else 300.0)
    warm, min_reps, max_reps = (2, 3, 10) if args.quick else (3, 5, 50)
    # about 0.1 ms of GPU spin at ~1.8 GHz: more than Python needs to enqueue one call
    sleep_cycles = 200_000

    def measure(fn):
        for _ in range(warm):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(sleep_cycles)
        s.record()
        fn()
        e.record()
        e.synchronize()
        est = max(1e-3, s.elapsed_time(e))
        reps = int(min(max(target_ms / est, min_reps), max_reps))
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev:
            torch.cuda._sleep(sleep_cycles)
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize()
        ms = [a.elapsed_time(b) for a, b in ev]
        return statistics.median(ms), min(ms), max(ms), reps

    if args.quick:
        shapes = [(128, 8192), (128, 2048), (64, 8192)]
    else:
        shapes = [(D, T) for D in (128, 64) for T in (8192, 16384, 4096, 2048, 1024, 512)]
    dtypes = [("bf16", torch.bfloat16)] + ([("f16", torch.float16)] if args.f16 else [])
    total = sum(4 for _ in dtypes for (D, T) in shapes for b in names if b != "math" or T <= args.math_max_t)
    index = 0
    t0 = time.monotonic()
    not_run = errors = skipped = 0
    gen = torch.Generator(device=dev)
    gen.manual_seed(20251201)
    print(f"torch_sdpa on {props.name} (sm_{props.major}{props.minor}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, cuDNN {meta['cudnn_version']}{', QUICK' if args.quick else ''}", file=sys.stderr)
    print(f"{'backend':<16} {'pass':<4} {'dtype':<5} {'B':>3} {'H':>3} {'T':>6} {'D':>4} {'mask':<6} "
          f"{'median_ms':>10} {'TFLOP/s':>9} {'reps':>5}")

    for dname, dt in dtypes:
        for D, T in shapes:
            H, B = HIDDEN // D, TOKENS // T
            if args.time_budget and time.monotonic() - t0 > args.time_budget:
                not_run += sum(4 for b in names if b != "math" or T <= args.math_max_t)
                continue
            qkv = torch.randn(B, T, 3, H, D, device=dev, dtype=dt, generator=gen)
            dout = torch.randn(B, H, T, D, device=dev, dtype=dt, generator=gen)
            q, k, v = (qkv.select(2, i).transpose(1, 2) for i in range(3))
            for causal in (False, True):
                mask = "causal" if causal else "full"
                for b in names:
                    if b == "math" and T > args.math_max_t:
                        continue
                    name = f"torch-{b}"
                    base = {"backend": name, "dtype": dname, "B": B, "H": H, "T": T, "D": D, "causal": causal}
                    if b not in kernels:
                        for p in ("fwd", "bwd"):
                            results.append({**base, "pass": p, "skipped": "this PyTorch has no such SDPA kernel"})
                        index += 2
                        continue
                    for p in ("fwd", "bwd"):
                        index += 1
                        ident = f"{name} {p} {dname} T={T} D={D} {mask}"
                        if not only.search(ident):
                            continue
                        if args.time_budget and time.monotonic() - t0 > args.time_budget:
                            not_run += 1
                            continue
                        print(f"[{index}/{total}] {ident} ...", file=sys.stderr, flush=True)
                        rec = {**base, "pass": p}
                        try:
                            with sdpa_kernel([kernels[b]]):
                                if p == "fwd":
                                    def fn():
                                        with torch.no_grad():
                                            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                                else:
                                    ql, kl, vl = (x.detach().requires_grad_(True) for x in (q, k, v))
                                    # views of the leaves, so that the timed grad stops at the SDPA node
                                    qv, kv, vv = (x.view_as(x) for x in (ql, kl, vl))
                                    out = F.scaled_dot_product_attention(qv, kv, vv, is_causal=causal)

                                    def fn():
                                        torch.autograd.grad(out, (qv, kv, vv), dout, retain_graph=True)
                                ms, mn, mx, reps = measure(fn)
                            flops = fwd_flops(B, H, T, D, causal) * (2.5 if p == "bwd" else 1.0)
                            tf = flops / (ms * 1e-3) / 1e12
                            rec.update({"ms": ms, "tflops": tf, "min_ms": mn, "max_ms": mx, "reps": reps, "flops": flops})
                            print(f"{name:<16} {p:<4} {dname:<5} {B:>3} {H:>3} {T:>6} {D:>4} {mask:<6} {ms:>10.3f} "
                                  f"{tf:>9.1f} {reps:>5}", flush=True)
                        except RuntimeError as e:
                            # the kernel does not take this shape ("No available kernel", a cuDNN
                            # frontend refusal, ...): recorded with PyTorch's reason, not an error
                            msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                            rec["skipped"] = msg[:500]
                            skipped += 1
                            print(f"{name:<16} {p:<4} {dname:<5} {B:>3} {H:>3} {T:>6} {D:>4} {mask:<6} SKIP: "
                                  f"{msg[:160]}", flush=True)
                            torch.cuda.synchronize()
                        except Exception as e:  # anything else is a failure of this script
                            rec["error"] = f"{type(e).__name__}: {e}"[:500]
                            errors += 1
                            print(f"{name:<16} {p:<4} {dname:<5} {B:>3} {H:>3} {T:>6} {D:>4} {mask:<6} ERROR: "
                                  f"{rec['error'][:160]}", flush=True)
                        results.append(rec)
                        save()
                    torch.cuda.empty_cache()
            del qkv, dout, q, k, v
            torch.cuda.empty_cache()

    secs = time.monotonic() - t0
    meta["complete"] = not_run == 0
    meta["wall_seconds"] = secs
    if not_run:
        meta["not_run"] = f"{not_run} cases: past --time-budget {args.time_budget} s"
    save()
    print(f"\ntorch_sdpa: {len(results)} results, {errors} errors, {skipped} refused by their kernel, "
          f"{not_run} not run (time budget), {secs:.0f} s")
    if args.json:
        print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
