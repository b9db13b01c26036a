// The layers a GPT is made of: Linear, Embedding, LayerNorm, RMSNorm, Dropout,
// CausalSelfAttention (fused qkv projection), MLP, Block, and ModuleList.
#pragma once

#include "barbell/core/random.hpp"
#include "barbell/nn/module.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell::nn {

// y = x W^T + b, W [out, in] (the libtorch layout; Hugging Face's GPT-2 Conv1D
// stores the transpose). Weights N(0, init_std), or U(-1/sqrt(in), 1/sqrt(in)) when
// init_std < 0; bias zero.
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true, double init_std = -1.0, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, double init_std = 1.0, Generator* gen = nullptr);
  Tensor forward(const Tensor& ids) const;
  Tensor weight;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5, bool bias = true);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
  double eps;
};

class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-6);
  Tensor forward(const Tensor& x) const;
  Tensor weight;
  double eps;
};

class Dropout : public Module {
 public:
  explicit Dropout(double prob = 0.0, Generator* gen = nullptr) : p(prob), gen_(gen) {}
  Tensor forward(const Tensor& x) const;
  double p;

 private:
  Generator* gen_;
};

class ModuleList : public Module {
 public:
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    items_.push_back(m);
    return register_module(std::to_string(items_.size() - 1), m);
  }
  size_t size() const { return items_.size(); }
  std::shared_ptr<Module> operator[](size_t i) const {
    BB_CHECK(i < items_.size(), IndexError, "ModuleList: index {} out of range for {} modules", i, items_.size());
    return items_[i];
  }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

struct AttentionConfig {
  int64_t n_embd = 64, n_head = 4;
  double dropout = 0.0;
  bool bias = true;
  double init_std = 0.02, proj_init_std = 0.02;
  // Auto: barbell's flash kernels on a GPU where they apply, the plain path otherwise.
  AttentionBackend backend = AttentionBackend::Auto;
};

// x [B, T, C] -> c_attn -> [B, T, 3, H, D]; q, k, v are strided views of it (no
// copy) -> causal scaled_dot_product_attention -> [B, T, C] -> c_proj.
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const AttentionConfig& cfg, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> c_attn, c_proj;
  std::shared_ptr<Dropout> resid_dropout;
  int64_t n_head, n_embd;
  AttentionBackend backend;
};

// c_fc (C -> 4C), GELU (tanh), c_proj (4C -> C).
class MLP : public Module {
 public:
  MLP(int64_t n_embd, bool bias, double init_std, double proj_init_std, double dropout, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> c_fc, c_proj;
  std::shared_ptr<Dropout> dropout;
};

// Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
class Block : public Module {
 public:
  Block(const AttentionConfig& cfg, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<MLP> mlp;
};

}  // namespace barbell::nn
