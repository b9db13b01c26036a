#!/usr/bin/env python3
"""PyTorch eager training steps of the models bench_train times, for a same-run comparison.

    python3 benchmarks/torch_train_step.py --serve                  # driven by bench_train --compare-torch
    python3 benchmarks/torch_train_step.py FILE [--threads N] [--steps K]   # standalone

FILE is a safetensors file that `bench_train --compare-torch` writes per config: the model's
initial weights under barbell's names (nn::GPT's are Hugging Face GPT-2's, Linear weights
[out, in] as torch.nn.Linear's), the batches ("batch.N.x", "batch.N.y", int64 [B, T]), for the
user-style model the rotary tables ("rope.cos", "rope.sin", [T, D], built on the host by barbell),
and in the header's metadata ("config", JSON) the model kind, its sizes and the optimizer settings. So both programs
start from the same weights, see the same batches in the same order and compute the same thing:
the losses they report agree to f32 noise.

One step: loss = model(x, y); loss.backward(); clip_grad_norm_(1.0); AdamW step; zero_grad (to
None), then loss.item(); timed with perf_counter around all of it, as bench_train times barbell's.
The models are written as a PyTorch user writes them (nn.Linear, nn.LayerNorm, nn.RMSNorm,
F.scaled_dot_product_attention with is_causal, F.gelu tanh, F.silu), with PyTorch's defaults
(AdamW's for-loop implementation on the CPU, which is its default there).

--serve reads one JSON request per line on stdin and answers one JSON line on stdout:
  {"cmd": "load", "file": F, "threads": N}  -> {"ok": true, "parameters": P, "torch": version}
  {"cmd": "steps", "n": K}                  -> {"ok": true, "ms": [...], "loss": [...]}
  {"cmd": "quit"}
An error answers {"ok": false, "error": text}. Without PyTorch it exits with status 3.
"""
import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from safetensors import safe_open
except ImportError as e:  # the caller says how to install it (scripts/setup-torch-cpu.sh)
    print(f"torch_train_step: PyTorch or safetensors is not importable: {e}", file=sys.stderr)
    sys.exit(3)


class GPTBlock(nn.Module):
    def __init__(self, C, H, bias):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C, eps=1e-5, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C, bias=bias)
        self.attn.c_proj = nn.Linear(C, C, bias=bias)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * C, C, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        h = self.ln_1(x)
        # [B, T, 3, H, D] -> q, k, v [B, H, T, D] views, as barbell's CausalSelfAttention makes them.
        qkv = self.attn.c_attn(h).view(B, T, 3, self.H, C // self.H)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """barbell's nn::GPT: learned positions, pre-LN blocks, tied output embedding."""

    def __init__(self, V, block, L, H, C, bias):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(V, C)
        self.transformer.wpe = nn.Embedding(block, C)
        self.transformer.h = nn.ModuleList(GPTBlock(C, H, bias) for _ in range(L))
        self.transformer.ln_f = nn.LayerNorm(C, eps=1e-5, bias=bias)

    def forward(self, idx, targets):
        t = self.transformer
        pos = torch.arange(idx.shape[1])
        x = t.wte(idx) + t.wpe(pos)
        for blk in t.h:
            x = blk(x)
        logits = F.linear(t.ln_f(x), t.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class UserBlock(nn.Module):
    def __init__(self, C, H, hidden, eps):
        super().__init__()
        self.H = H
        self.attn_norm = nn.RMSNorm(C, eps=eps)
        self.attn = nn.Module()
        for n in ("wq", "wk", "wv", "wo"):
            setattr(self.attn, n, nn.Linear(C, C, bias=False))
        self.mlp_norm = nn.RMSNorm(C, eps=eps)
        self.mlp = nn.Module()
        self.mlp.w1 = nn.Linear(C, hidden, bias=False)
        self.mlp.w3 = nn.Linear(C, hidden, bias=False)
        self.mlp.w2 = nn.Linear(hidden, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        D = C // self.H
        h = self.attn_norm(x)
        a = self.attn
        q, k, v = (w(h).view(B, T, self.H, D).transpose(1, 2) for w in (a.wq, a.wk, a.wv))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.wo(y.transpose(1, 2).reshape(B, T, C))
        h = self.mlp_norm(x)
        m = self.mlp
        return x + m.w2(F.silu(m.w1(h)) * m.w3(h))


class UserModel(nn.Module):
    """A char-level transformer as a user writes one: RMSNorm, RoPE, SwiGLU, no biases, untied head."""

    def __init__(self, V, L, H, C, hidden, eps):
        super().__init__()
        self.tok_emb = nn.Embedding(V, C)
        self.layers = nn.ModuleList(UserBlock(C, H, hidden, eps) for _ in range(L))
        self.norm = nn.RMSNorm(C, eps=eps)
        self.head = nn.Linear(C, V, bias=False)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def forward(self, idx, targets):
        T = idx.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.tok_emb(idx)
        for blk in self.layers:
            x = blk(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


class Trainer:
    def __init__(self, path, threads):
        if threads > 0:
            torch.set_num_threads(threads)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(path)
        m = json.loads(meta["config"])
        if m["model"] == "gpt":
            model = GPT(m["vocab_size"], m["block_size"], m["n_layer"], m["n_head"], m["n_embd"], bool(m["bias"]))
        elif m["model"] == "user":
            model = UserModel(m["vocab_size"], m["n_layer"], m["n_head"], m["n_embd"], m["hidden"], m["eps"])
            model.rope_cos = tensors["rope.cos"]
            model.rope_sin = tensors["rope.sin"]
        else:
            raise ValueError(f"unknown model kind {m['model']!r}")
        state = {k: v for k, v in tensors.items() if not k.startswith(("batch.", "rope."))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
        self.model = model
        self.params = [p for p in model.parameters()]
        # barbell's AdamW: decoupled decay on parameters of 2 or more dims only.
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": m["weight_decay"]},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=m["lr"], betas=(m["beta1"], m["beta2"]), eps=m["eps_adam"])
        self.clip = m["clip"]
        nb = m["batches"]
        self.batches = [(tensors[f"batch.{i}.x"], tensors[f"batch.{i}.y"]) for i in range(nb)]
        self.step_i = 0

    def parameters(self):
        return sum(p.numel() for p in self.params)

    def steps(self, n):
        ms, losses = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            x, y = self.batches[self.step_i % len(self.batches)]
            self.step_i += 1
            loss = self.model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self.opt.zero_grad()
            lv = loss.item()
            ms.append(1e3 * (time.perf_counter() - t0))
            losses.append(lv)
        return ms, losses


def serve():
    trainer = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "quit":
                break
            if cmd == "load":
                trainer = None
                trainer = Trainer(req["file"], int(req.get("threads", 0)))
                resp = {"ok": True, "parameters": trainer.parameters(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()}
            elif cmd == "steps":
                if trainer is None:
                    raise ValueError("steps before load")
                ms, losses = trainer.steps(int(req["n"]))
                resp = {"ok": True, "ms": ms, "loss": losses}
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as e:  # answered, so the driver can say what went wrong
            resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", help="a config file written by bench_train --compare-torch")
    ap.add_argument("--serve", action="store_true", help="JSON-lines requests on stdin (see above)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    if a.serve:
        return serve()
    if not a.file:
        ap.error("give a FILE or --serve")
    t = Trainer(a.file, a.threads)
    ms, losses = t.steps(a.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {t.parameters()} parameters")
    for i, (m_, l_) in enumerate(zip(ms, losses)):
        print(f"step {i}: {m_:.1f} ms, loss {l_:.7f}")


if __name__ == "__main__":
    main()
