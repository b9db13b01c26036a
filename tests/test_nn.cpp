// Tests of barbell::nn: Module traversal, tied weights, train/eval, to(dtype), GPT-2's Hugging Face names
// and shapes, forward, loss, causality, float64 finite differences, overfitting, sampling and state dicts.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "testing.hpp"

namespace bb = barbell;
namespace nn = barbell::nn;
using Catch::Contains;

namespace {

nn::GPTConfig small_cfg(int64_t vocab, int64_t block, int64_t layers, int64_t heads, int64_t width,
                        uint64_t seed) {
  nn::GPTConfig c;
  c.vocab_size = vocab;
  c.block_size = block;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_embd = width;
  c.seed = seed;
  return c;
}

// Parameters of a GPT-2 from its config: embeddings, 12C^2 + 13C per block, the final LayerNorm.
int64_t gpt_param_formula(const nn::GPTConfig& c) {
  const int64_t C = c.n_embd;
  return c.vocab_size * C + c.block_size * C + c.n_layer * (12 * C * C + 13 * C) + 2 * C;
}

bb::Tensor random_ids(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  bb::Generator g(seed);
  return bb::randint(0, V, {B, T}, {bb::DType::I64}, &g);
}

std::vector<std::string> names_of(const bb::NamedTensors& nt) {
  std::vector<std::string> r;
  for (auto& p : nt) r.push_back(p.first);
  return r;
}

// Every module of the tree, the root included.
void walk(const nn::Module& m, const std::function<void(const std::string&, const nn::Module&)>& f,
          const std::string& prefix = "") {
  f(prefix, m);
  for (auto& [n, c] : m.named_children()) walk(*c, f, prefix + n + ".");
}

// Deep copies of every state tensor, to check later that nothing changed.
bb::NamedTensors snapshot(const nn::Module& m) {
  bb::NamedTensors s;
  for (auto& [n, t] : m.state_dict()) s.emplace_back(n, t.detach().clone());
  return s;
}

void require_state_equal(const nn::Module& m, const bb::NamedTensors& snap) {
  auto now = m.state_dict();
  REQUIRE(now.size() == snap.size());
  for (size_t i = 0; i < now.size(); ++i) {
    INFO(now[i].first);
    REQUIRE(now[i].first == snap[i].first);
    REQUIRE(bbtest::max_abs_diff(now[i].second, snap[i].second) == 0.0);
  }
}

// A module that registers the Embedding's weight a second time, as a tied output head would.
class Holder : public nn::Module {
 public:
  explicit Holder(bb::Tensor t) { weight = register_parameter("weight", t); }
  bb::Tensor weight;
};

class TiedModel : public nn::Module {
 public:
  explicit TiedModel(bb::Generator* gen) {
    emb = register_module("emb", std::make_shared<nn::Embedding>(5, 3, 1.0, gen));
    head = register_module("head", std::make_shared<Holder>(emb->weight));
    proj = register_module("proj", std::make_shared<nn::Linear>(3, 4, true, 0.5, gen));
  }
  std::shared_ptr<nn::Embedding> emb;
  std::shared_ptr<Holder> head;
  std::shared_ptr<nn::Linear> proj;
};

}  // namespace

TEST_CASE("Module: named_parameters lists names in registration order", "[nn][module]") {
  bb::Generator gen(1);
  nn::AttentionConfig ac;
  ac.n_embd = 8;
  ac.n_head = 2;
  nn::Block block(ac, &gen);
  std::vector<std::string> expected = {"ln_1.weight",      "ln_1.bias",          "attn.c_attn.weight",
                                       "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                                       "ln_2.weight",      "ln_2.bias",          "mlp.c_fc.weight",
                                       "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
  auto named = block.named_parameters();
  REQUIRE(names_of(named) == expected);
  // parameters() is the same tensors, in the same order.
  auto params = block.parameters();
  REQUIRE(params.size() == named.size());
  for (size_t i = 0; i < params.size(); ++i) REQUIRE(params[i].same(named[i].second));
  REQUIRE(named[2].second.same(block.attn->c_attn->weight));
  for (auto& p : params) REQUIRE(p.requires_grad());
  // Non-recursive: the block itself owns no tensors; a Linear owns weight and bias.
  REQUIRE(block.named_parameters(false).empty());
  REQUIRE(names_of(block.attn->c_proj->named_parameters(false)) ==
          std::vector<std::string>{"weight", "bias"});
  nn::Linear nobias(4, 3, false);
  REQUIRE(names_of(nobias.named_parameters()) == std::vector<std::string>{"weight"});
  REQUIRE(nobias.num_parameters() == 12);
  REQUIRE(block.num_parameters() == 12 * 8 * 8 + 13 * 8);
}

TEST_CASE("Module: a tied weight is listed once and accumulates both gradients", "[nn][module]") {
  bb::Generator gen(2);
  TiedModel m(&gen);
  REQUIRE(names_of(m.named_parameters()) ==
          std::vector<std::string>{"emb.weight", "proj.weight", "proj.bias"});
  REQUIRE(m.num_parameters() == 5 * 3 + 4 * 3 + 4);
  REQUIRE(names_of(m.state_dict()) == std::vector<std::string>{"emb.weight", "proj.weight", "proj.bias"});
  REQUIRE(m.parameters()[0].same(m.head->weight));

  // The gradient of the tied tensor is the sum of its two uses.
  bb::Tensor ids = bb::from_vector<int64_t>({0, 3, 3}, {3});
  bb::Tensor x = m.emb->forward(ids);                                 // [3, 3]
  bb::Tensor out = bb::linear(x, m.head->weight);                     // [3, 5], weight as a head
  bb::Tensor loss = bb::add(bb::sum(bb::mul(out, out)), bb::sum(x));  // uses both paths
  loss.backward();
  bb::Tensor g = m.emb->weight.grad();
  REQUIRE(g.defined());
  // Reference: the same computation with two separate leaves holding the same values.
  bb::Tensor w1 = m.emb->weight.detach().clone().requires_grad_(true);
  bb::Tensor w2 = m.emb->weight.detach().clone().requires_grad_(true);
  bb::Tensor x2 = bb::embedding(ids, w1);
  bb::Tensor out2 = bb::linear(x2, w2);
  bb::add(bb::sum(bb::mul(out2, out2)), bb::sum(x2)).backward();
  bbtest::require_close(g, bb::add(w1.grad(), w2.grad()), 1e-5, 1e-5);
}

TEST_CASE("Module: train() and eval() reach every submodule", "[nn][module]") {
  nn::GPT model(small_cfg(11, 6, 2, 2, 8, 3));
  int count = 0;
  walk(model, [&](const std::string&, const nn::Module& m) {
    REQUIRE(m.is_training());
    ++count;
  });
  REQUIRE(count > 10);
  model.eval();
  walk(model, [&](const std::string& n, const nn::Module& m) {
    INFO(n);
    REQUIRE_FALSE(m.is_training());
  });
  model.train();
  walk(model, [&](const std::string& n, const nn::Module& m) {
    INFO(n);
    REQUIRE(m.is_training());
  });
}

TEST_CASE("Module: dropout is active in train mode only", "[nn][module]") {
  auto cfg = small_cfg(11, 6, 1, 2, 8, 4);
  nn::GPT plain(cfg);
  cfg.dropout = 0.5;
  nn::GPT drop(cfg);
  bb::Tensor ids = random_ids(2, 6, 11, 5);
  bb::NoGradGuard ng;
  drop.eval();
  // The dropout probability does not change the initialisation; in eval mode it does nothing.
  REQUIRE(bbtest::max_abs_diff(drop.forward(ids), plain.forward(ids)) == 0.0);
  drop.train();
  REQUIRE(bbtest::max_abs_diff(drop.forward(ids), plain.forward(ids)) > 1e-3);
}

TEST_CASE("Module: to(F64) keeps tensor identity and converts values", "[nn][module]") {
  nn::GPT model(small_cfg(9, 5, 1, 2, 8, 6));
  bb::optim::AdamW opt(model.named_parameters(), {});
  auto before = model.named_parameters();
  std::vector<std::vector<double>> values;
  for (auto& [n, p] : before) values.push_back(p.to_vector<double>());

  // A gradient is dropped by the move (it would have the old dtype).
  model.loss(random_ids(2, 5, 9, 7), random_ids(2, 5, 9, 8)).backward();
  REQUIRE(before[0].second.grad().defined());
  model.to(bb::kF64);

  auto after = model.named_parameters();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].first);
    REQUIRE(after[i].second.same(before[i].second));
    REQUIRE(after[i].second.same(opt.named_params()[i].second));
    REQUIRE(after[i].second.dtype() == bb::kF64);
    REQUIRE(after[i].second.requires_grad());
    REQUIRE_FALSE(after[i].second.grad().defined());
    REQUIRE(after[i].second.to_vector<double>() == values[i]);  // f32 -> f64 is exact
  }
  // The optimizer built before the move trains the float64 model.
  bb::Tensor x = random_ids(2, 5, 9, 7), y = random_ids(2, 5, 9, 8);
  bb::Tensor l0 = model.loss(x, y);
  REQUIRE(l0.dtype() == bb::kF64);
  l0.backward();
  REQUIRE(before[0].second.grad().dtype() == bb::kF64);
  opt.step();
  REQUIRE(before[0].second.to_vector<double>() != values[0]);
  REQUIRE_THROWS_AS(model.to(bb::DType::I32), bb::DTypeError);
}

TEST_CASE("Module: zero_grad drops every gradient", "[nn][module]") {
  nn::GPT model(small_cfg(9, 5, 1, 2, 8, 9));
  model.loss(random_ids(2, 5, 9, 1), random_ids(2, 5, 9, 2)).backward();
  for (auto& [n, p] : model.named_parameters()) {
    INFO(n);
    REQUIRE(p.grad().defined());
  }
  model.zero_grad();
  for (auto& [n, p] : model.named_parameters()) {
    INFO(n);
    REQUIRE_FALSE(p.grad().defined());
  }
}

TEST_CASE("GPT: parameter names are Hugging Face GPT-2's, with [out, in] Linear weights", "[nn][gpt]") {
  const int64_t V = 11, Tb = 7, C = 8;
  nn::GPT model(small_cfg(V, Tb, 2, 2, C, 10));
  std::vector<std::string> expected = {"transformer.wte.weight", "transformer.wpe.weight"};
  for (int l = 0; l < 2; ++l) {
    std::string p = "transformer.h." + std::to_string(l) + ".";
    for (const char* s : {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                          "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                          "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"})
      expected.push_back(p + s);
  }
  expected.push_back("transformer.ln_f.weight");
  expected.push_back("transformer.ln_f.bias");
  auto named = model.named_parameters();
  REQUIRE(names_of(named) == expected);
  // No lm_head: the output projection is tied to wte. No buffers.
  REQUIRE(names_of(model.state_dict()) == expected);
  REQUIRE(model.named_buffers().empty());

  // Hugging Face's Conv1D stores [in, out]; ours are [out, in] (the transpose).
  auto shape = [&](const std::string& suffix) {
    for (auto& [n, t] : named)
      if (n == "transformer." + suffix) return t.shape();
    FAIL("no parameter " << suffix);
    return bb::Shape{};
  };
  REQUIRE(shape("wte.weight") == bb::Shape{V, C});
  REQUIRE(shape("wpe.weight") == bb::Shape{Tb, C});
  REQUIRE(shape("h.1.ln_1.weight") == bb::Shape{C});
  REQUIRE(shape("h.1.ln_1.bias") == bb::Shape{C});
  REQUIRE(shape("h.1.attn.c_attn.weight") == bb::Shape{3 * C, C});  // HF [C, 3C]
  REQUIRE(shape("h.1.attn.c_attn.bias") == bb::Shape{3 * C});
  REQUIRE(shape("h.1.attn.c_proj.weight") == bb::Shape{C, C});
  REQUIRE(shape("h.1.mlp.c_fc.weight") == bb::Shape{4 * C, C});  // HF [C, 4C]
  REQUIRE(shape("h.1.mlp.c_fc.bias") == bb::Shape{4 * C});
  REQUIRE(shape("h.1.mlp.c_proj.weight") == bb::Shape{C, 4 * C});  // HF [4C, C]
  REQUIRE(shape("h.1.mlp.c_proj.bias") == bb::Shape{C});
  REQUIRE(shape("ln_f.weight") == bb::Shape{C});
  REQUIRE(model.num_parameters() == gpt_param_formula(model.config()));
}

TEST_CASE("Linear: y = x W^T + b with W stored [out, in]", "[nn][layers]") {
  nn::Linear lin(3, 2);
  REQUIRE(lin.weight.shape() == bb::Shape{2, 3});
  {
    bb::NoGradGuard ng;
    lin.weight.copy_(bb::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}));
    lin.bias.copy_(bb::from_vector<float>({0.5f, -1}, {2}));
  }
  bb::Tensor x = bb::from_vector<float>({1, 0, -1, 2, 1, 0}, {2, 3});
  // Row 0: [1+0-3, 4+0-6] + b; row 1: [2+2+0, 8+5+0] + b.
  bbtest::require_close(lin.forward(x), bb::from_vector<float>({-1.5f, -3, 4.5f, 12}, {2, 2}), 1e-6, 0);
}

// Building gpt2-124m takes about 10 s on a loaded 2-core machine (124M normal samples), so the default test
// builds one 768-wide block with a 1-token vocabulary and context and scales it analytically; the hidden test
// below ("[.gpt2-full]") builds the whole model.
TEST_CASE("GPT: the gpt2 preset has GPT-2 124M's parameter count", "[nn][gpt]") {
  auto cfg = nn::GPTConfig::gpt2_124m();
  REQUIRE(cfg.vocab_size == 50257);
  REQUIRE(cfg.block_size == 1024);
  REQUIRE(cfg.n_layer == 12);
  REQUIRE(cfg.n_head == 12);
  REQUIRE(cfg.n_embd == 768);
  REQUIRE(gpt_param_formula(cfg) == 124439808);
  REQUIRE(nn::GPTConfig::preset("gpt2").n_embd == 768);

  auto one = cfg;
  one.n_layer = 1;
  one.vocab_size = 1;
  one.block_size = 1;
  nn::GPT model(one);
  int64_t per_block = 0, outside = 0;
  for (auto& [n, p] : model.named_parameters())
    (n.rfind("transformer.h.0.", 0) == 0 ? per_block : outside) += p.numel();
  REQUIRE(per_block == 7087872);
  REQUIRE(model.transformer->wte->weight.shape() == bb::Shape{1, 768});
  REQUIRE(model.transformer->wpe->weight.shape() == bb::Shape{1, 768});
  // Embeddings grow to [50257, 768] and [1024, 768]; the block is repeated 12 times.
  int64_t scaled = outside + (50257 - 1) * 768 + (1024 - 1) * 768 + 12 * per_block;
  REQUIRE(scaled == 124439808);

  for (const char* name : {"tiny", "small", "medium"}) {
    auto c = nn::GPTConfig::preset(name);
    c.validate();
    nn::GPT m(c);
    REQUIRE(m.num_parameters() == gpt_param_formula(c));
  }
  REQUIRE_THROWS_AS(nn::GPTConfig::preset("huge"), bb::ValueError);
  auto bad = small_cfg(10, 8, 1, 3, 8, 1);
  REQUIRE_THROWS_AS(bad.validate(), bb::ValueError);
  REQUIRE_THROWS_AS(nn::GPT(bad), bb::ValueError);
}

TEST_CASE("GPT: the full gpt2-124m model has 124,439,808 parameters", "[.gpt2-full]") {
  auto t0 = std::chrono::steady_clock::now();
  nn::GPT model(nn::GPTConfig::gpt2_124m());
  WARN("building gpt2-124m took "
       << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
  REQUIRE(model.num_parameters() == 124439808);
  REQUIRE(model.named_parameters().size() == 2 + 12 * 12 + 2);
}

TEST_CASE("GPT: forward gives [B, T, V] logits for any T up to block_size", "[nn][gpt]") {
  nn::GPT model(small_cfg(13, 8, 2, 2, 16, 11));
  bb::NoGradGuard ng;
  for (int64_t T : {1, 5, 8}) {
    bb::Tensor logits = model.forward(random_ids(3, T, 13, static_cast<uint64_t>(T)));
    REQUIRE(logits.shape() == bb::Shape{3, T, 13});
    REQUIRE(logits.dtype() == bb::kF32);
    for (double v : logits.to_vector<double>()) REQUIRE(std::isfinite(v));
  }
  // I32 ids give the same logits as I64 ids.
  bb::Tensor ids = random_ids(2, 8, 13, 12);
  REQUIRE(bbtest::max_abs_diff(model.forward(ids), model.forward(ids.to(bb::DType::I32))) == 0.0);
}

TEST_CASE("GPT: a future token does not change earlier logits", "[nn][gpt]") {
  const int64_t V = 13, T = 8, t = 4;
  nn::GPT model(small_cfg(V, T, 2, 2, 16, 13));
  bb::NoGradGuard ng;
  bb::Tensor a = random_ids(2, T, V, 14);
  std::vector<int64_t> ids = a.to_vector<int64_t>();
  for (int64_t b = 0; b < 2; ++b)
    ids[static_cast<size_t>(b * T + t)] = (ids[static_cast<size_t>(b * T + t)] + 5) % V;
  bb::Tensor c = bb::from_vector(ids, {2, T});
  bb::Tensor la = model.forward(a), lc = model.forward(c);
  bbtest::require_close(la.slice(1, 0, t), lc.slice(1, 0, t), 1e-6, 1e-6);
  // The changed position and every later one see the change.
  for (int64_t s = t; s < T; ++s) {
    INFO("position " << s);
    REQUIRE(bbtest::max_abs_diff(la.select(1, s), lc.select(1, s)) > 1e-4);
  }
}

TEST_CASE("GPT: loss is the cross-entropy of forward's logits", "[nn][gpt]") {
  const int64_t V = 13;
  nn::GPT model(small_cfg(V, 8, 2, 2, 16, 15));
  bb::Tensor x = random_ids(3, 8, V, 16);
  std::vector<int64_t> yv = random_ids(3, 8, V, 17).to_vector<int64_t>();
  yv[0] = yv[5] = yv[20] = -100;
  bb::Tensor y = bb::from_vector(yv, {3, 8});
  bb::Tensor l = model.loss(x, y);
  REQUIRE(l.numel() == 1);
  REQUIRE(l.item<double>() == bb::cross_entropy(model.forward(x), y).item<double>());
  // Reference: mean of -log softmax over the counted targets, in double.
  auto logits = model.forward(x).to_vector<double>();
  double total = 0;
  int counted = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    if (yv[i] == -100) continue;
    double m = -INFINITY, z = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, logits[i * V + static_cast<size_t>(v)]);
    for (int64_t v = 0; v < V; ++v) z += std::exp(logits[i * V + static_cast<size_t>(v)] - m);
    total += -(logits[i * V + static_cast<size_t>(yv[i])] - m - std::log(z));
    ++counted;
  }
  REQUIRE(std::abs(l.item<double>() - total / counted) < 1e-5);
  // At initialisation the model is close to uniform.
  REQUIRE(std::abs(l.item<double>() - std::log(static_cast<double>(V))) < 0.2);
  REQUIRE_THROWS_AS(model.loss(x, bb::from_vector<int64_t>({1, 2, 3}, {1, 3})), bb::ShapeError);
}

TEST_CASE("GPT: float64 gradients of the loss match finite differences", "[nn][gpt][gradcheck]") {
  nn::GPT model(small_cfg(7, 5, 1, 2, 8, 18));
  model.to(bb::kF64);
  {
    // Move LayerNorm weights off 1 and biases off 0 so that every term is exercised.
    bb::NoGradGuard ng;
    bb::Generator g(19);
    for (auto& [n, p] : model.named_parameters())
      bb::Tensor(p).add_(bb::randn(p.shape(), {bb::kF64}, &g), 0.2);
  }
  bb::Tensor x = random_ids(2, 5, 7, 20), y = random_ids(2, 5, 7, 21);
  model.loss(x, y).backward();
  auto loss_at = [&]() {
    bb::NoGradGuard ng;
    return model.loss(x, y).item<double>();
  };
  int checked = 0;
  for (auto& [name, param] : model.named_parameters()) {
    bb::Tensor p = param;
    REQUIRE(p.is_contiguous());
    double* data = p.data<double>();
    std::vector<double> grad = p.grad().to_vector<double>();
    const int64_t n = p.numel();
    for (int64_t k : {int64_t{0}, n / 2, n - 1}) {
      const double h = 1e-6, orig = data[k];
      data[k] = orig + h;
      double lp = loss_at();
      data[k] = orig - h;
      double lm = loss_at();
      data[k] = orig;
      double numeric = (lp - lm) / (2 * h);
      INFO(name << "[" << k << "]: analytic " << grad[static_cast<size_t>(k)] << ", numeric " << numeric);
      REQUIRE(std::abs(numeric - grad[static_cast<size_t>(k)]) <= 1e-7 + 1e-5 * std::abs(numeric));
      ++checked;
    }
  }
  REQUIRE(checked == 3 * 16);
}

TEST_CASE("GPT: a tiny model overfits one batch", "[nn][gpt][train]") {
  nn::GPT model(small_cfg(16, 8, 2, 2, 32, 22));
  bb::optim::AdamWOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.0;
  bb::optim::AdamW opt(model.named_parameters(), o);
  bb::Tensor x = random_ids(4, 8, 16, 23), y = random_ids(4, 8, 16, 24);
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    bb::Tensor l = model.loss(x, y);
    if (step == 0) first = l.item<double>();
    last = l.item<double>();
    l.backward();
    opt.step();
    opt.zero_grad();
  }
  INFO("loss " << first << " -> " << last);
  REQUIRE(first > 2.0);
  REQUIRE(last < 0.05);
}

TEST_CASE("GPT: generate is greedy and deterministic at temperature 0 and crops to block_size", "[nn][gpt]") {
  const int64_t V = 10, Tb = 6;
  nn::GPT model(small_cfg(V, Tb, 2, 2, 16, 25));
  std::vector<int32_t> prompt = {1, 2, 3};
  auto a = model.generate(prompt, 8);
  auto b = model.generate(prompt, 8);
  REQUIRE(a == b);
  REQUIRE(a.size() == prompt.size() + 8);  // longer than block_size: the context is cropped
  REQUIRE(std::vector<int32_t>(a.begin(), a.begin() + 3) == prompt);
  // Each new token is the argmax of the logits over the last block_size tokens.
  bb::NoGradGuard ng;
  for (size_t i = prompt.size(); i < a.size(); ++i) {
    size_t start = i > static_cast<size_t>(Tb) ? i - static_cast<size_t>(Tb) : 0;
    std::vector<int64_t> window(a.begin() + static_cast<std::ptrdiff_t>(start),
                                a.begin() + static_cast<std::ptrdiff_t>(i));
    bb::Tensor idx = bb::from_vector(window, {1, static_cast<int64_t>(window.size())});
    auto last = model.forward(idx).select(1, -1).select(0, 0).to_vector<double>();
    int32_t best = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    INFO("token " << i);
    REQUIRE(a[i] == best);
  }
  // A prompt longer than block_size works (only the last block_size tokens are seen).
  std::vector<int32_t> long_prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto c = model.generate(long_prompt, 2);
  std::vector<int32_t> cropped(long_prompt.end() - Tb, long_prompt.end());
  auto d = model.generate(cropped, 1);
  REQUIRE(c.size() == long_prompt.size() + 2);
  REQUIRE(c[long_prompt.size()] == d.back());
  // stop_token ends generation right after it.
  auto e = model.generate(prompt, 8, 0.0, 0, a[3]);
  REQUIRE(e.size() == 4);
  // Sampling: reproducible with a seeded generator; top_k = 1 is greedy.
  bb::Generator g1(26), g2(26), g3(27);
  auto s1 = model.generate(prompt, 8, 1.0, 0, -1, &g1);
  auto s2 = model.generate(prompt, 8, 1.0, 0, -1, &g2);
  REQUIRE(s1 == s2);
  REQUIRE(model.generate(prompt, 8, 1.0, 1, -1, &g3) == a);
  REQUIRE_THROWS_AS(model.generate({}, 3), bb::ValueError);
}

TEST_CASE("GPT: state_dict through safetensors restores identical logits", "[nn][gpt][io]") {
  auto cfg = small_cfg(11, 6, 2, 2, 8, 28);
  nn::GPT a(cfg);
  cfg.seed = 29;
  nn::GPT b(cfg);
  bb::Tensor x = random_ids(2, 6, 11, 30);
  bb::NoGradGuard ng;
  REQUIRE(bbtest::max_abs_diff(a.forward(x), b.forward(x)) > 1e-3);
  const std::string path = bbtest::tmp_path("nn_state.safetensors");
  bb::io::save_safetensors(path, a.state_dict());
  auto f = bb::io::load_safetensors(path);
  REQUIRE(names_of(f.tensors) == names_of(a.state_dict()));
  b.load_state_dict(f.tensors);
  REQUIRE(bbtest::max_abs_diff(a.forward(x), b.forward(x)) == 0.0);
  // Loading copies values: the model keeps its own tensors.
  REQUIRE_FALSE(b.transformer->wte->weight.same(f.at("transformer.wte.weight")));
}

TEST_CASE("GPT: a checkpoint of another shape throws ShapeError and changes nothing", "[nn][gpt][io]") {
  auto cfg = small_cfg(7, 6, 1, 2, 8, 31);
  nn::GPT model(cfg);
  auto before = snapshot(model);

  SECTION("another width") {
    auto wide = cfg;
    wide.n_embd = 16;
    nn::GPT other(wide);
    REQUIRE_THROWS_AS(model.load_state_dict(other.state_dict()), bb::ShapeError);
    REQUIRE_THROWS_WITH(model.load_state_dict(other.state_dict()),
                        Contains("transformer.wte.weight") && Contains("[7, 16]") && Contains("[7, 8]"));
  }
  SECTION("only the last tensor differs") {
    nn::GPT other(small_cfg(7, 6, 1, 2, 8, 32));
    auto state = other.state_dict();
    REQUIRE(state.back().first == "transformer.ln_f.bias");
    state.back().second = bb::zeros({9});
    REQUIRE_THROWS_WITH(model.load_state_dict(state),
                        Contains("transformer.ln_f.bias") && Contains("[9]") && Contains("[8]"));
    REQUIRE_THROWS_AS(model.load_state_dict(state, false), bb::ShapeError);
  }
  require_state_equal(model, before);
}

TEST_CASE("GPT: strict loading rejects missing or unexpected names, non-strict loads the overlap",
          "[nn][gpt][io]") {
  auto cfg = small_cfg(7, 6, 1, 2, 8, 33);
  nn::GPT model(cfg);
  cfg.seed = 34;
  nn::GPT other(cfg);
  auto before = snapshot(model);
  auto state = other.state_dict();

  auto missing = state;
  missing.erase(missing.begin() + 3);
  const std::string dropped = state[3].first;
  REQUIRE_THROWS_AS(model.load_state_dict(missing), bb::ValueError);
  REQUIRE_THROWS_WITH(model.load_state_dict(missing), Contains("missing") && Contains(dropped));
  auto extra = state;
  extra.emplace_back("lm_head.weight", bb::zeros({7, 8}));
  REQUIRE_THROWS_WITH(model.load_state_dict(extra), Contains("unexpected") && Contains("lm_head.weight"));
  require_state_equal(model, before);

  // Non-strict: the overlap is loaded, the rest keeps its values, unknown names are ignored.
  bb::NamedTensors partial = {state[0], {"lm_head.weight", bb::zeros({7, 8})}};
  model.load_state_dict(partial, false);
  auto now = model.state_dict();
  REQUIRE(bbtest::max_abs_diff(now[0].second, state[0].second) == 0.0);
  for (size_t i = 1; i < now.size(); ++i) {
    INFO(now[i].first);
    REQUIRE(bbtest::max_abs_diff(now[i].second, before[i].second) == 0.0);
  }
}

TEST_CASE("GPT and Linear: bad input throws errors that name the problem", "[nn][errors]") {
  nn::GPT model(small_cfg(7, 6, 1, 2, 8, 35));
  REQUIRE_THROWS_AS(model.forward(random_ids(1, 7, 7, 36)), bb::ShapeError);
  REQUIRE_THROWS_WITH(model.forward(random_ids(1, 7, 7, 36)), Contains("GPT::forward") && Contains("7"));
  REQUIRE_THROWS_AS(model.forward(bb::from_vector<int64_t>({1, 2, 3}, {3})), bb::ShapeError);
  REQUIRE_THROWS_WITH(model.forward(bb::from_vector<int64_t>({1, 2, 3}, {3})), Contains("[3]"));
  REQUIRE_THROWS_AS(model.forward(bb::zeros({1, 2, 3}, {bb::DType::I64})), bb::ShapeError);
  REQUIRE_THROWS_AS(model.forward(bb::from_vector<int64_t>({1, 7}, {1, 2})), bb::IndexError);
  REQUIRE_THROWS_WITH(model.forward(bb::from_vector<int64_t>({1, 7}, {1, 2})), Contains("7"));
  REQUIRE_THROWS_AS(model.forward(bb::from_vector<int64_t>({-1, 2}, {1, 2})), bb::IndexError);
  REQUIRE_THROWS_AS(
      model.loss(bb::from_vector<int64_t>({1, 9}, {1, 2}), bb::from_vector<int64_t>({1, 2}, {1, 2})),
      bb::IndexError);

  nn::Linear lin(4, 3);
  REQUIRE_THROWS_AS(lin.forward(bb::zeros({2, 5})), bb::ShapeError);
  REQUIRE_THROWS_WITH(lin.forward(bb::zeros({2, 5})),
                      Contains("linear") && Contains("[2, 5]") && Contains("[3, 4]"));
  REQUIRE(lin.forward(bb::zeros({2, 4})).shape() == bb::Shape{2, 3});
}
