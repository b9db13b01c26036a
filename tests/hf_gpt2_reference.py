#!/usr/bin/env python3
# The Python side of CTest hf_gpt2.reference: a Hugging Face GPT-2 folder written by the reference
# `safetensors` package from numpy (Conv1D [in, out] weights, GPT2LMHeadModel's names), and GPT-2's forward
# pass in numpy float64 (Hugging Face's formulas), to check barbell's loader and writer against.
#
#   hf_gpt2_reference.py make DIR    writes DIR/config.json, DIR/model.safetensors and DIR/reference.safetensors
#                                    (input_ids and the float64 logits of this forward pass)
#   hf_gpt2_reference.py check DIR   reads the folder barbell wrote: names, shapes, dtypes and config.json as
#                                    transformers expects them, and the logits in DIR/barbell_logits.safetensors
#                                    against this forward pass on DIR's weights
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

CONFIG = {"vocab_size": 61, "n_positions": 24, "n_embd": 32, "n_layer": 2, "n_head": 4}


def names_and_shapes(cfg):
    C, V, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    out = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        out.update({h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "attn.c_attn.weight": (C, 3 * C),
                    h + "attn.c_attn.bias": (3 * C,), h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                    h + "ln_2.weight": (C,), h + "ln_2.bias": (C,), h + "mlp.c_fc.weight": (C, 4 * C),
                    h + "mlp.c_fc.bias": (4 * C,), h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)})
    out.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return out


def forward(w, cfg, ids):
    """GPT2LMHeadModel's logits in float64: Conv1D is x @ W + b with W [in, out]; lm_head is tied to wte."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    C, H = cfg["n_embd"], cfg["n_head"]
    D = C // H
    B, T = ids.shape

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][np.arange(T)]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        a = ln(x, h + "ln_1") @ w[h + "attn.c_attn.weight"] + w[h + "attn.c_attn.bias"]  # [B, T, 3C]
        q, k, v = (a[..., j * C:(j + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for j in range(3))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)  # [B, H, T, T]
        s = np.where(mask, -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        y = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ w[h + "attn.c_proj.weight"] + w[h + "attn.c_proj.bias"]
        m = gelu_new(ln(x, h + "ln_2") @ w[h + "mlp.c_fc.weight"] + w[h + "mlp.c_fc.bias"])
        x = x + m @ w[h + "mlp.c_proj.weight"] + w[h + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f") @ w["transformer.wte.weight"].T


def make(d):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    cfg = dict(CONFIG, model_type="gpt2", activation_function="gelu_new", layer_norm_epsilon=1e-5, n_inner=None,
               architectures=["GPT2LMHeadModel"], attn_pdrop=0.1, embd_pdrop=0.1, resid_pdrop=0.1,
               scale_attn_weights=True, tie_word_embeddings=True, torch_dtype="float32")
    w = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in names_and_shapes(cfg).items()}
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    ids = rng.integers(0, cfg["vocab_size"], size=(3, cfg["n_positions"]), dtype=np.int64)
    save_file({"input_ids": ids, "logits": forward(w, cfg, ids)}, str(d / "reference.safetensors"))
    print(f"hf_gpt2_reference: wrote {d} ({len(w)} tensors, float32, Conv1D layout)")


def check(d):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in CONFIG.items():
        assert cfg[k] == v, f"config.json: {k} is {cfg[k]}, expected {v}"
    for k, v in {"model_type": "gpt2", "activation_function": "gelu_new", "tie_word_embeddings": True,
                 "scale_attn_weights": True, "architectures": ["GPT2LMHeadModel"]}.items():
        assert cfg.get(k) == v, f"config.json: {k} is {cfg.get(k)!r}, expected {v!r}"
    w = load_file(str(d / "model.safetensors"))
    want = names_and_shapes(cfg)
    assert set(w) == set(want), f"tensor names differ: extra {set(w) - set(want)}, missing {set(want) - set(w)}"
    dtype = {"float32": np.float32, "float64": np.float64}[cfg["torch_dtype"]]
    for n, s in want.items():
        assert w[n].shape == s, f"{n}: shape {w[n].shape}, expected {s} (Conv1D weights are [in, out])"
        assert w[n].dtype == dtype, f"{n}: dtype {w[n].dtype}, config.json says {cfg['torch_dtype']}"
    b = load_file(str(d / "barbell_logits.safetensors"))
    ref = forward(w, cfg, b["input_ids"])
    diff = float(np.abs(ref - b["logits"]).max())
    scale = float(np.abs(ref).max())
    print(f"hf_gpt2_reference: {d}: barbell's logits vs numpy's float64 forward pass on the saved weights: "
          f"max |diff| {diff:.3e} (logits up to {scale:.2f})")
    assert diff <= 1e-9 * max(1.0, scale), "logits differ"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "check"):
        sys.exit(__doc__ or "usage: hf_gpt2_reference.py make|check DIR")
    (make if sys.argv[1] == "make" else check)(Path(sys.argv[2]))
