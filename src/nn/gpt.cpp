// GPT-2: presets, the module tree under Hugging Face's names, forward, loss and
// sampling.
#include "barbell/nn/gpt.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell::nn {

GPTConfig GPTConfig::tiny() {
  GPTConfig c;
  c.n_layer = 2; c.n_head = 4; c.n_embd = 64; c.block_size = 64;
  return c;
}
GPTConfig GPTConfig::small() {
  GPTConfig c;
  c.n_layer = 4; c.n_head = 4; c.n_embd = 128; c.block_size = 128;
  return c;
}
GPTConfig GPTConfig::medium() {
  GPTConfig c;
  c.n_layer = 6; c.n_head = 6; c.n_embd = 384; c.block_size = 256;
  return c;
}
GPTConfig GPTConfig::gpt2_124m() {
  GPTConfig c;
  c.n_layer = 12; c.n_head = 12; c.n_embd = 768; c.block_size = 1024; c.vocab_size = 50257;
  return c;
}
GPTConfig GPTConfig::preset(const std::string& name) {
  if (name == "tiny") return tiny();
  if (name == "small") return small();
  if (name == "medium") return medium();
  if (name == "gpt2" || name == "gpt2-124m" || name == "gpt2_124m") return gpt2_124m();
  throw ValueError(fmt::format("GPTConfig::preset: unknown preset '{}' (tiny, small, medium, gpt2)", name));
}

void GPTConfig::validate() const {
  BB_CHECK(vocab_size > 0 && block_size > 0 && n_layer > 0 && n_head > 0 && n_embd > 0, ValueError,
           "GPTConfig: sizes must be positive (vocab {}, block {}, layers {}, heads {}, width {})", vocab_size,
           block_size, n_layer, n_head, n_embd);
  BB_CHECK(n_embd % n_head == 0, ValueError, "GPTConfig: n_embd {} is not a multiple of n_head {}", n_embd, n_head);
  BB_CHECK(dropout >= 0 && dropout < 1, ValueError, "GPTConfig: dropout {} not in [0, 1)", dropout);
}

Transformer::Transformer(const GPTConfig& cfg, Generator* gen) {
  wte = register_module("wte", std::make_shared<Embedding>(cfg.vocab_size, cfg.n_embd, 0.02, gen));
  wpe = register_module("wpe", std::make_shared<Embedding>(cfg.block_size, cfg.n_embd, 0.02, gen));
  drop = register_module("drop", std::make_shared<Dropout>(cfg.dropout));
  h = register_module("h", std::make_shared<ModuleList>());
  AttentionConfig ac;
  ac.n_embd = cfg.n_embd;
  ac.n_head = cfg.n_head;
  ac.dropout = cfg.dropout;
  ac.bias = cfg.bias;
  ac.backend = cfg.attn_backend;
  ac.init_std = 0.02;
  // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer).
  ac.proj_init_std = 0.02 / std::sqrt(2.0 * static_cast<double>(cfg.n_layer));
  for (int64_t i = 0; i < cfg.n_layer; ++i) h->push_back(std::make_shared<Block>(ac, gen));
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(cfg.n_embd, 1e-5, cfg.bias));
}

GPT::GPT(const GPTConfig& cfg) : cfg_(cfg) {
  cfg.validate();
  Generator gen(cfg.seed);
  transformer = register_module("transformer", std::make_shared<Transformer>(cfg, &gen));
}

Tensor GPT::forward(const Tensor& idx) const {
  BB_CHECK(idx.dim() == 2, ShapeError, "GPT::forward: idx must be [B, T], got {}", shape_str(idx.shape()));
  const int64_t T = idx.size(1);
  BB_CHECK(T >= 1 && T <= cfg_.block_size, ShapeError, "GPT::forward: sequence length {} not in [1, {}] (idx {})", T,
           cfg_.block_size, shape_str(idx.shape()));
  const auto& tr = *transformer;
  Tensor pos = arange(T, {DType::I64, idx.device()});
  Tensor x = add(tr.wte->forward(idx), tr.wpe->forward(pos));  // [B, T, C] + [T, C]
  x = tr.drop->forward(x);
  for (size_t i = 0; i < tr.h->size(); ++i) x = std::static_pointer_cast<Block>((*tr.h)[i])->forward(x);
  x = tr.ln_f->forward(x);
  return linear(x, tr.wte->weight);  // tied output embedding: [B, T, V]
}

Tensor GPT::loss(const Tensor& idx, const Tensor& targets, int64_t ignore_index) const {
  BB_CHECK(targets.shape() == idx.shape(), ShapeError, "GPT::loss: targets {} must match idx {}",
           shape_str(targets.shape()), shape_str(idx.shape()));
  return cross_entropy(forward(idx), targets, ignore_index);
}

std::vector<int32_t> GPT::generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens, double temperature,
                                   int64_t top_k, int32_t stop_token, Generator* gen) const {
  BB_CHECK(!prompt.empty(), ValueError, "GPT::generate: empty prompt");
  NoGradGuard ng;
  Generator& g = gen ? *gen : default_generator();
  std::vector<int32_t> seq = prompt;
  Device dev = transformer->wte->weight.device();
  for (int64_t s = 0; s < max_new_tokens; ++s) {
    int64_t start = std::max<int64_t>(0, static_cast<int64_t>(seq.size()) - cfg_.block_size);
    std::vector<int32_t> window(seq.begin() + start, seq.end());
    Tensor idx = from_vector(window, {1, static_cast<int64_t>(window.size())}, {DType::I32, dev});
    Tensor logits = forward(idx).select(1, -1).select(0, 0);  // [V]
    std::vector<double> l = logits.to_vector<double>();
    for (double v : l)
      BB_CHECK(std::isfinite(v), ValueError, "GPT::generate: the model produced a non-finite logit ({})", v);
    int32_t next;
    if (temperature <= 0) {
      next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    } else {
      std::vector<int32_t> order(l.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
      if (top_k > 0 && static_cast<size_t>(top_k) < order.size()) order.resize(static_cast<size_t>(top_k));
      double m = l[order[0]], z = 0;
      std::vector<double> p(order.size());
      for (size_t i = 0; i < order.size(); ++i) z += p[i] = std::exp((l[order[i]] - m) / temperature);
      double u = g.next_double() * z;
      size_t i = 0;
      while (i + 1 < p.size() && u >= p[i]) u -= p[i++];
      next = order[i];
    }
    seq.push_back(next);
    if (next == stop_token) break;
  }
  return seq;
}

}  // namespace barbell::nn
