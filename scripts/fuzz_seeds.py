#!/usr/bin/env python3
"""Seed files made by the reference writers for barbell's fuzzers: safetensors files written by
the `safetensors` package (pip install safetensors numpy), token shards in llm.c's layout written
with numpy, and a barbell-train checkpoint rewritten by the reference writer.
  fuzz_seeds.py CORPUS_DIR [BARBELL_CHECKPOINT]
writes CORPUS_DIR/{safetensors,token_shard,resume}/ref_*."""
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def main():
    corpus = sys.argv[1]
    st, shards, resume = (os.path.join(corpus, d) for d in ("safetensors", "token_shard", "resume"))
    for d in (st, shards, resume):
        os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(11)
    tensors = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal((2, 2)),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "i64": np.array([2**62, -1], dtype=np.int64),
        "bool": np.array([[True, False], [False, True]]),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "u8": np.arange(4, dtype=np.uint8),  # a dtype barbell does not read: an error path
    }
    save_file(tensors, os.path.join(st, "ref_every_dtype.safetensors"), metadata={"format": "np"})
    save_file({"w": np.ones((2, 3), dtype=np.float32)}, os.path.join(st, "ref_one.safetensors"))
    save_file({}, os.path.join(st, "ref_empty.safetensors"))

    def shard(name, tokens, magic=20240520, version=1):
        header = np.zeros(256, dtype="<i4")
        header[:3] = [magic, version, len(tokens)]
        with open(os.path.join(shards, name), "wb") as f:
            f.write(header.tobytes())
            f.write(np.asarray(tokens, dtype="<u2").tobytes())

    shard("ref_small.bin", [0, 1, 2, 50256, 65535])
    shard("ref_empty.bin", [])
    shard("ref_wrong_version.bin", [1, 2], version=2)

    if len(sys.argv) > 2:  # the barbell-train checkpoint, as the reference writer lays it out
        path = sys.argv[2]
        from safetensors import safe_open

        with safe_open(path, "np") as f:
            meta = f.metadata()
        save_file(load_file(path), os.path.join(resume, "ref_checkpoint.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
