// Linear, Embedding, LayerNorm, RMSNorm, Dropout, CausalSelfAttention, MLP, Block.
#include "barbell/nn/layers.hpp"

#include <cmath>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell::nn {

namespace {
Tensor init_normal(const Shape& s, double std, Generator* gen) {
  NoGradGuard g;
  return mul(randn(s, {DType::F32}, gen), std);
}
}  // namespace

Linear::Linear(int64_t in, int64_t out, bool has_bias, double init_std, Generator* gen) {
  BB_CHECK(in > 0 && out > 0, ValueError, "Linear: sizes must be positive, got in={} out={}", in, out);
  Tensor w;
  if (init_std >= 0) {
    w = init_normal({out, in}, init_std, gen);
  } else {
    NoGradGuard g;
    double bound = 1.0 / std::sqrt(static_cast<double>(in));
    w = add(mul(rand({out, in}, {DType::F32}, gen), 2 * bound), -bound);
  }
  weight = register_parameter("weight", w);
  if (has_bias) bias = register_parameter("bias", zeros({out}));
}

Tensor Linear::forward(const Tensor& x) const { return linear(x, weight, bias); }

Embedding::Embedding(int64_t num, int64_t dim, double init_std, Generator* gen) {
  BB_CHECK(num > 0 && dim > 0, ValueError, "Embedding: sizes must be positive, got num={} dim={}", num, dim);
  weight = register_parameter("weight", init_normal({num, dim}, init_std, gen));
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(ids, weight); }

LayerNorm::LayerNorm(int64_t dim, double eps_in, bool has_bias) : eps(eps_in) {
  weight = register_parameter("weight", ones({dim}));
  if (has_bias) bias = register_parameter("bias", zeros({dim}));
}

Tensor LayerNorm::forward(const Tensor& x) const { return layer_norm(x, weight, bias, eps); }

RMSNorm::RMSNorm(int64_t dim, double eps_in) : eps(eps_in) { weight = register_parameter("weight", ones({dim})); }

Tensor RMSNorm::forward(const Tensor& x) const { return rms_norm(x, weight, eps); }

Tensor Dropout::forward(const Tensor& x) const { return dropout(x, p, is_training(), gen_); }

CausalSelfAttention::CausalSelfAttention(const AttentionConfig& cfg, Generator* gen)
    : n_head(cfg.n_head), n_embd(cfg.n_embd), backend(cfg.backend) {
  BB_CHECK(cfg.n_head > 0 && cfg.n_embd % cfg.n_head == 0, ValueError,
           "CausalSelfAttention: n_embd {} is not a multiple of n_head {}", cfg.n_embd, cfg.n_head);
  c_attn = register_module("c_attn", std::make_shared<Linear>(cfg.n_embd, 3 * cfg.n_embd, cfg.bias, cfg.init_std, gen));
  c_proj = register_module("c_proj", std::make_shared<Linear>(cfg.n_embd, cfg.n_embd, cfg.bias, cfg.proj_init_std, gen));
  resid_dropout = register_module("resid_dropout", std::make_shared<Dropout>(cfg.dropout));
}

Tensor CausalSelfAttention::forward(const Tensor& x) const {
  BB_CHECK(x.dim() == 3 && x.size(2) == n_embd, ShapeError, "CausalSelfAttention: expected [B, T, {}], got {}", n_embd,
           shape_str(x.shape()));
  const int64_t B = x.size(0), T = x.size(1), D = n_embd / n_head;
  Tensor qkv = c_attn->forward(x).view({B, T, 3, n_head, D});  // [B, T, 3, H, D]
  Tensor q = qkv.select(2, 0).transpose(1, 2);                  // [B, H, T, D], strided
  Tensor k = qkv.select(2, 1).transpose(1, 2);
  Tensor v = qkv.select(2, 2).transpose(1, 2);
  Tensor y = scaled_dot_product_attention(q, k, v, /*causal=*/true, std::nullopt, backend);  // [B, H, T, D]
  y = y.transpose(1, 2).reshape({B, T, n_embd});
  return resid_dropout->forward(c_proj->forward(y));
}

MLP::MLP(int64_t n_embd, bool bias, double init_std, double proj_init_std, double p, Generator* gen) {
  c_fc = register_module("c_fc", std::make_shared<Linear>(n_embd, 4 * n_embd, bias, init_std, gen));
  c_proj = register_module("c_proj", std::make_shared<Linear>(4 * n_embd, n_embd, bias, proj_init_std, gen));
  dropout = register_module("dropout", std::make_shared<Dropout>(p));
}

Tensor MLP::forward(const Tensor& x) const {
  // One cuBLASLt call with bias and GELU fused on a GPU; linear then gelu on the CPU.
  Tensor h = c_fc->bias.defined() ? linear_gelu(x, c_fc->weight, c_fc->bias) : gelu(c_fc->forward(x), GeluApprox::Tanh);
  return dropout->forward(c_proj->forward(h));
}

Block::Block(const AttentionConfig& cfg, Generator* gen) {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(cfg.n_embd, 1e-5, cfg.bias));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(cfg, gen));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(cfg.n_embd, 1e-5, cfg.bias));
  mlp = register_module("mlp", std::make_shared<MLP>(cfg.n_embd, cfg.bias, cfg.init_std, cfg.proj_init_std,
                                                     cfg.dropout, gen));
}

Tensor Block::forward(const Tensor& x) const {
  Tensor h = add(x, attn->forward(ln_1->forward(x)));
  return add(h, mlp->forward(ln_2->forward(h)));
}

}  // namespace barbell::nn
