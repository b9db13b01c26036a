#!/usr/bin/env python3
"""The bug injector: proves that the emulated device's checks catch real bugs in real code.

Each entry of BUGS below is one bug, written as an exact edit of a kernel or launcher in
kernels/ (the old text must occur exactly once). For each, this script compiles the edited
file with the build's own command (compile_commands.json of a BARBELL_CUDA=EMULATE build),
links a copy of libbarbell with that object in place of the original, and runs
inject_driver's scenario against the copy (LD_LIBRARY_PATH). The bug is caught when the
scenario fails and its output contains the text the table expects, which names the check
that caught it. The scenarios are first run against the unmodified library, which must
pass them. Prints a table; exit 0 only when every bug was caught.

    inject.py --build BUILD_DIR --driver INJECT_DRIVER --work DIR [--only SUBSTRING] [--jobs N]
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

# (name, file, old, new, scenario, expected text in the output (or a tuple of alternatives), the check
# that catches it)
BUGS = [
    ("bounds off-by-one in the vector kernel's tail", "kernels/elementwise.cu",
     "for (int64_t i = nvec * VEC + tid; i < n; i += step)", "for (int64_t i = nvec * VEC + tid; i <= n; i += step)",
     "elementwise", "past the end of", "bounds (device allocation)"),
    ("an output element never written (the tail loop skips one)", "kernels/elementwise.cu",
     "for (int64_t i = nvec * VEC + tid; i < n; i += step)", "for (int64_t i = nvec * VEC + tid + 1; i < n; i += step)",
     "elementwise", "never written", "unwritten device memory"),
    ("the alignment guard of the 16-byte vector path dropped", "kernels/elementwise.cu",
     "else if (st != 1 || !is_aligned(p, VEC * sizeof(T))) ok = false;",
     "else if (st != 1 || !is_aligned(p, sizeof(T))) ok = false;",
     "elementwise", "misaligned", "vector alignment"),
    ("int32 offsets for a tensor whose offsets pass 2^31", "kernels/elementwise.cu",
     "  if (n > INT32_MAX) return false;  // then every size is below 2^31 too\n",
     "  if (n > INT32_MAX) return false;  // then every size is below 2^31 too\n  if (n > 0) return true;\n",
     "int32", "illegal memory access", "bounds (the wrapped offset leaves device memory)"),
    ("a missing __syncthreads between the warps' partial results and their reads", "kernels/softmax.cu",
     "  if (lane == 0) {\n    sm_m[warp] = m;\n    sm_s[warp] = s;\n  }\n  __syncthreads();",
     "  if (lane == 0) {\n    sm_m[warp] = m;\n    sm_s[warp] = s;\n  }", "softmax",
     ("data race", "never wrote these bytes"), "shared memory: a race, or a read before the write"),
    ("a wrong shuffle width in the online-softmax merge", "kernels/softmax.cu",
     "const A m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);",
     "const A m2 = __shfl_xor_sync(0xffffffffu, m, o, 16), s2 = __shfl_xor_sync(0xffffffffu, s, o, 16);",
     "softmax", "MISMATCH", "value against the CPU backend"),
    ("a wrong shuffle mask (half the warp left out)", "kernels/embedding.cu",
     "lo = ::min(lo, __shfl_xor_sync(0xffffffffu, lo, o));", "lo = ::min(lo, __shfl_xor_sync(0x0000ffffu, lo, o));",
     "embedding", ("not in the mask", "does not name the calling lane"), "warp-collective mask"),
    ("a reduction race between blocks (every block writes partial 0)", "kernels/norm.cu",
     "if (threadIdx.x == 0) part[b.part_offset + blk] = acc;", "if (threadIdx.x == 0) part[b.part_offset] = acc;",
     "gradnorm", "different blocks", "race between blocks"),
    ("the flash launcher's shared-memory opt-in dropped", "kernels/flash_attention.cu",
     "if (s.smem > 0) allow_smem(reinterpret_cast<const void*>(kernel), s.smem);",
     "if (s.smem > 0 && s.smem <= 48 * 1024) allow_smem(reinterpret_cast<const void*>(kernel), s.smem);",
     "flash128", "opt in", "launch limits (dynamic shared memory)"),
    ("a wrong leading dimension in a cuBLASLt layout", "kernels/matmul.cu",
     "*out = {CUBLAS_OP_N, c, r, r == 1 ? c1 : s0};", "*out = {CUBLAS_OP_N, c, r, c1};",
     "matmul", "MISMATCH", "value against the CPU backend"),
    ("a wrong epilogue (GELU applied with the bias)", "kernels/matmul.cu",
     "      g.epilogue = CUBLASLT_EPILOGUE_BIAS;", "      g.epilogue = CUBLASLT_EPILOGUE_GELU_BIAS;",
     "linear", "MISMATCH", "value against the CPU backend"),
    ("a wrong dtype dispatch (bf16 handed to cuBLASLt as f16)", "kernels/matmul.cu",
     "case DType::BF16: return {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F};",
     "case DType::BF16: return {CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F};",
     "matmul", "MISMATCH", "value against the CPU backend"),
    ("a stream-ordering mistake: the host reads the pinned staging before the copy's event", "kernels/runtime.cu",
     "    if (i + 1 < nchunks) issue(i + 1);\n    BB_CUDA_CHECK(cudaEventSynchronize(st.done[i & 1]));",
     "    if (i + 1 < nchunks) issue(i + 1);", "d2h", "MISMATCH", "value against the CPU backend"),
    ("a stream-ordering mistake: a copy between GPUs that does not wait for its source", "kernels/runtime.cu",
     "  BB_CUDA_CHECK(cudaStreamWaitEvent(s_dst, written, 0));\n", "", "peer", "not ordered",
     "stream ordering (vector clocks)"),
]


def run(cmd, cwd=None, env=None, timeout=1800):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, shell=isinstance(cmd, str))
    return p.returncode, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    with open(os.path.join(build, "compile_commands.json")) as f:
        cc = {os.path.realpath(e["file"]): e for e in json.load(f)}
    rc, cmds = run(["ninja", "-C", build, "-t", "commands", "barbell"])
    link = [c for c in cmds.splitlines() if " -shared " in c and "libbarbell.so" in c]
    if rc != 0 or not link:
        print("inject: cannot find libbarbell's link command")
        return 1
    link = link[-1]
    if link.startswith(": && "):
        link = link[len(": && "):]
    if link.endswith(" && :"):
        link = link[: -len(" && :")]
    link_args = shlex.split(link)
    out_at = link_args.index("-o") + 1
    real_lib = link_args[out_at]  # libbarbell.so.X.Y.Z
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    env = dict(os.environ, BARBELL_EMU_QUIET="0")

    bugs = [b for b in BUGS if a.only in b[0] or a.only in b[1]]
    print(f"inject: {len(bugs)} bugs, the library rebuilt from {build}")
    # Baselines: every scenario passes on the unmodified library.
    base_ok = True
    for sc in sorted({b[4] for b in bugs}):
        rc, out = run([a.driver, sc], env=env)
        print(f"baseline {sc}: {'pass' if rc == 0 else 'FAIL'}")
        if rc != 0:
            print(out[-3000:])
            base_ok = False
    if not base_ok:
        print("inject: FAIL: a scenario fails without any bug")
        return 1

    def one(i, bug):
        name, rel, old, new, scenario, expect, check = bug
        t0 = time.time()
        d = os.path.join(a.work, f"bug{i:02d}")
        os.makedirs(os.path.join(d, "lib"))
        path = os.path.join(src, rel)
        text = open(path).read()
        if text.count(old) != 1:
            return (name, check, "STALE", f"the text to change occurs {text.count(old)} times in {rel}", 0)
        mutated = os.path.join(d, os.path.basename(rel))
        with open(mutated, "w") as f:
            f.write(text.replace(old, new))
        e = cc[os.path.realpath(path)]
        args = shlex.split(e["command"]) if "command" in e else list(e["arguments"])
        obj = args[args.index("-o") + 1]
        new_obj = os.path.join(d, "bug.o")
        args = [new_obj if x == obj else (mutated if os.path.realpath(os.path.join(e["directory"], x)) ==
                                          os.path.realpath(path) else x) for x in args]
        # the edited copy's own includes ("common.cuh", "flash/...") come from kernels/
        args.insert(1, "-I" + os.path.dirname(path))
        clean, skip = [], False  # no dependency files
        for x in args:
            if skip:
                skip = False
                continue
            if x in ("-MT", "-MF"):
                skip = True
                continue
            if x == "-MD":
                continue
            clean.append(x)
        rc, out = run(clean, cwd=e["directory"])
        if rc != 0:
            return (name, check, "BUILD", out[-1500:], time.time() - t0)
        largs = list(link_args)
        largs[out_at] = os.path.join(d, "lib", os.path.basename(real_lib))
        objabs = os.path.normpath(os.path.join(e["directory"], obj))
        largs = [new_obj if os.path.normpath(os.path.join(build, x)) == objabs else x for x in largs]
        rc, out = run(largs, cwd=build)
        if rc != 0:
            return (name, check, "LINK", out[-1500:], time.time() - t0)
        for alias in ("libbarbell.so.0", "libbarbell.so"):
            os.symlink(os.path.basename(real_lib), os.path.join(d, "lib", alias))
        renv = dict(env, LD_LIBRARY_PATH=os.path.join(d, "lib") + ":" + env.get("LD_LIBRARY_PATH", ""))
        try:
            rc, out = run([a.driver, scenario], env=renv, timeout=900)
        except subprocess.TimeoutExpired:
            return (name, check, "TIMEOUT", "", time.time() - t0)
        with open(os.path.join(d, "output.txt"), "w") as f:
            f.write(out)
        expects = (expect,) if isinstance(expect, str) else expect
        caught = rc != 0 and any(x in out for x in expects)
        detail = next((l for l in out.splitlines() if any(x in l for x in expects)),
                      out.strip().splitlines()[-1] if out.strip() else "")
        return (name, check, "caught" if caught else "MISSED", detail[:300], time.time() - t0)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        results = list(ex.map(lambda p: one(*p), enumerate(bugs)))
    missed = 0
    print()
    print(f"{'bug':<78} {'outcome':<8} {'caught by':<46} {'s':>5}")
    for name, check, outcome, detail, secs in results:
        print(f"{name[:78]:<78} {outcome:<8} {check[:46]:<46} {secs:5.0f}")
        print(f"    {detail}")
        if outcome != "caught":
            missed += 1
    print(f"\ninject: {len(results) - missed} of {len(results)} bugs caught")
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
