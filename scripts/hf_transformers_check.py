#!/usr/bin/env python3
# The check against transformers itself (not in CI: it needs torch): a model barbell trained and exported
# opens with GPT2LMHeadModel.from_pretrained and gives the same logits (f32 and f64) and the same greedy
# generation; a random GPT-2 that transformers saved (a small one and gpt2-124m's shape) loads in barbell
# with the same logits, trains with barbell-train --init-from, and its export opens in transformers again.
#
#   python3 scripts/hf_transformers_check.py [--build build] [--work DIR] [--no-124m]
#
# Needs torch, transformers, numpy and safetensors in the running Python (LD_LIBRARY_PATH set for a
# --no-deps torch: its nvidia/*/lib folders and the CUDA toolkit's lib64), and barbell built with its
# examples and tests (barbell-train, tests/hf_gpt2_tool). Prints one line per check and exits 1 on a failure.
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests/data/gpt2_bpe"
CORPUS = TOKENIZER / "corpus.txt"
failures = []


def report(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}")
    return r.stdout


def barbell_logits(tool, folder, ids, dtype, work):
    save_file({"input_ids": ids.astype(np.int64)}, str(work / "ids.safetensors"))
    run([tool, "logits", folder, work / "ids.safetensors", work / "logits.safetensors", dtype])
    return load_file(str(work / "logits.safetensors"))["logits"]


def compare_logits(name, tool, folder, ids, work):
    # use_kernels=False: transformers 5 would otherwise fetch kernels from the Hub.
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32, use_kernels=False).eval()
    with torch.no_grad():
        ref32 = model(torch.from_numpy(ids)).logits.numpy()
        ref64 = model.double()(torch.from_numpy(ids)).logits.numpy()
    got32 = barbell_logits(tool, folder, ids, "f32", work)
    got64 = barbell_logits(tool, folder, ids, "f64", work)
    d32 = float(np.abs(got32 - ref32).max())
    d64 = float(np.abs(got64 - ref64).max())
    scale = float(np.abs(ref64).max())
    # f32: the two libraries sum in different orders; a few ulps of the largest logit per layer is noise.
    report(f"{name}: logits f32", d32 <= 1e-4 * max(1.0, scale),
           f"max |barbell - transformers| = {d32:.2e} (logits up to {scale:.2f}, {ids.shape[0]}x{ids.shape[1]} tokens)")
    report(f"{name}: logits f64", d64 <= 1e-10 * max(1.0, scale), f"max |barbell - transformers| = {d64:.2e}")
    return model.float()


def compare_generation(name, tool, folder, model, prompt, n):
    model.generation_config.eos_token_id = None  # no early stop: n tokens on both sides
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0].tolist()
        seq = list(prompt)  # the plain greedy loop too, without generate()'s cache
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    got = [int(x) for x in run([tool, "generate", folder, n, "f32", *prompt]).split()]
    report(f"{name}: greedy generation", got == ref == seq,
           f"{n} tokens after a {len(prompt)}-token prompt: barbell {'==' if got == ref else '!='} generate() "
           f"{'==' if ref == seq else '!='} greedy loop" + ("" if got == ref else f"; barbell {got[len(prompt):][:20]}, "
                                                             f"transformers {ref[len(prompt):][:20]}"))


def losses(metrics):
    return [json.loads(l)["loss"] for l in Path(metrics).read_text().splitlines() if '"loss"' in l]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", type=Path, default=REPO / "build")
    ap.add_argument("--work", type=Path, default=Path("/tmp/barbell_hf_check"))
    ap.add_argument("--no-124m", action="store_true")
    args = ap.parse_args()
    train = args.build / "examples/barbell-train"
    tool = args.build / "tests/hf_gpt2_tool"
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    # 1. barbell -> transformers.
    exported = work / "barbell_exported"
    run([train, "--data", CORPUS, "--tokenizer", TOKENIZER, "--preset", "small", "--steps", 150, "--batch", 16,
         "--seq-len", 128, "--eval-every", 0, "--samples", 0, "--out", work / "run1", "--export-hf", exported])
    l1 = losses(work / "run1/metrics.jsonl")
    print(f"     barbell-train --preset small, 150 steps on the corpus (GPT-2 BPE, 1500 tokens): "
          f"loss {l1[0]:.3f} -> {l1[-1]:.3f}")
    ids = rng.integers(0, 1500, size=(4, 128))
    model = compare_logits("barbell export", tool, exported, ids, work)
    tok = AutoTokenizer.from_pretrained(str(exported))
    prompt = tok("The CUDA backend")["input_ids"]
    report("barbell export: tokenizer files", len(prompt) > 0 and tok.decode(prompt) == "The CUDA backend",
           f"AutoTokenizer.from_pretrained -> {type(tok).__name__}, prompt ids {prompt}")
    compare_generation("barbell export", tool, exported, model, prompt, 100)

    # 2. transformers -> barbell, and back.
    for name, cfg, T in [("transformers random small", GPT2Config(vocab_size=1500, n_positions=128, n_embd=96,
                                                                   n_layer=3, n_head=3), 128),
                         ("transformers random gpt2-124m", GPT2Config(), 64)]:
        if "124m" in name and args.no_124m:
            continue
        folder = work / name.replace(" ", "_")
        GPT2LMHeadModel(cfg).save_pretrained(folder)
        files = sorted(p.name for p in folder.iterdir())
        print(f"     {name}: save_pretrained wrote {files}")
        ids = rng.integers(0, cfg.vocab_size, size=(2, T))
        m = compare_logits(name, tool, folder, ids, work)
        compare_generation(name, tool, folder, m, [int(x) for x in ids[0, :8]], 40)
        if "small" in name:
            trained = work / "barbell_trained_from_transformers"
            run([train, "--init-from", folder, "--data", CORPUS, "--tokenizer", TOKENIZER, "--steps", 60, "--batch",
                 16, "--seq-len", 128, "--eval-every", 0, "--samples", 0, "--out", work / "run2", "--export-hf",
                 trained])
            l2 = losses(work / "run2/metrics.jsonl")
            report(f"{name}: barbell-train --init-from", l2[-1] < l2[0] - 1.0,
                   f"60 steps: loss {l2[0]:.3f} -> {l2[-1]:.3f} (ln 1500 = {np.log(1500):.3f})")
            mt = compare_logits(f"{name}, trained by barbell", tool, trained, ids, work)
            compare_generation(f"{name}, trained by barbell", tool, trained, mt, prompt, 60)

    print(f"{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
