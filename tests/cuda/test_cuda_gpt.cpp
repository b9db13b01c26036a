// A tiny GPT (vocab 67, block 33, 2 layers, 2 heads, width 48: odd sizes) on the GPU
// against the same weights on the CPU in f64:
//   1. f32: logits, loss and every parameter's gradient;
//   2. bf16 on the GPU: loss and gradients within bf16 tolerance;
//   3. f32 with dropout 0.1: the same masks on both devices (same default-generator seed);
//   4. 10 AdamW steps (fixed batches, clip_grad_norm_) in f32 with optim::AdamW: the
//      losses of every step;
//   5. 10 steps in bf16 with optim::AdamW's master weights, and with f32 masters (from
//      the f32 weights) through adamw_multi_step_ directly: the losses, loosely; the bf16
//      params stay the rounding of their masters.
// Exit 77 without a GPU.
#include <functional>

#include "cuda_check.hpp"

using namespace ct;
namespace nn = barbell::nn;

namespace {

nn::GPTConfig config(double dropout = 0.0) {
  nn::GPTConfig c;
  c.vocab_size = 67;
  c.block_size = 33;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 48;
  c.dropout = dropout;
  c.seed = 4321;
  return c;
}

struct Batch {
  Tensor idx, targets;  // on the CPU, I64
};
Batch batch(int64_t B, int64_t T, int n_ignored) {
  Batch b;
  b.idx = randint(0, 67, {B, T});
  auto t = randint(0, 67, {B, T}).to_vector<int64_t>();
  for (int k = 0; k < n_ignored; ++k) t[static_cast<size_t>(k * 7) % t.size()] = -100;
  b.targets = bb::from_vector(t, {B, T}, {DType::I64});
  return b;
}

// A model with `base`'s weights on `dev` in `dt`.
std::unique_ptr<nn::GPT> copy_of(const nn::GPT& base, bb::Device dev, DType dt, double dropout = 0.0) {
  auto m = std::make_unique<nn::GPT>(config(dropout));
  m->to(dev);
  m->load_state_dict(base.state_dict());  // copies across devices
  m->to(dt);
  return m;
}

double grad_rms(const nn::GPT& m) {
  double ss = 0, n = 0;
  for (auto& [name, p] : m.named_parameters()) {
    if (!p.grad().defined()) continue;
    for (double v : p.grad().to(host()).to_vector<double>()) ss += v * v, n += 1;
  }
  return n > 0 ? std::sqrt(ss / n) : 0.0;
}

// Loss and gradients of the GPU model against the reference.
void compare_step(const std::string& what, const nn::GPT& g, const nn::GPT& r, const Batch& b, double loss_tol,
                  double grad_tol, double grad_l2_tol) {
  Tensor lr = r.loss(b.idx, b.targets);
  lr.backward();
  Tensor lg = g.loss(b.idx.to(gpu()), b.targets.to(gpu()));
  expect(on_dev(lg), what + " loss is on the GPU");
  check(what + " loss", lg, lr, loss_tol);
  lg.backward();
  double floor = grad_tol * 1e-2 * grad_rms(r);
  auto pg = g.named_parameters(), pr = r.named_parameters();
  if (pg.size() != pr.size()) {
    fail(what + " parameter lists", std::to_string(pg.size()) + " vs " + std::to_string(pr.size()));
    return;
  }
  for (size_t i = 0; i < pg.size(); ++i)
    check(what + " grad " + pg[i].first, pg[i].second.grad(), pr[i].second.grad(), grad_tol, 1.0, grad_l2_tol, floor);
}

void forward_and_gradients() {
  nn::GPT base(config());
  Batch b = batch(3, 33, 5);
  guarded("gpt f32 logits", [&] {
    auto r = copy_of(base, host(), DType::F64);
    auto g = copy_of(base, gpu(), DType::F32);
    for (auto& [n, p] : g->named_parameters())
      if (!on_dev(p) || p.dtype() != DType::F32) fail("gpt f32 placement " + n, p.device().str());
    bb::NoGradGuard ng;
    check("gpt f32 logits [3,33,67]", g->forward(b.idx.to(gpu())), r->forward(b.idx), 5e-5);
  });
  guarded("gpt f32 loss and gradients", [&] {
    auto r = copy_of(base, host(), DType::F64);
    auto g = copy_of(base, gpu(), DType::F32);
    compare_step("gpt f32", *g, *r, b, 2e-5, 5e-5, 0.0);
  });
  guarded("gpt bf16 loss and gradients", [&] {
    auto r = copy_of(base, host(), DType::F64);
    auto g = copy_of(base, gpu(), DType::BF16);
    compare_step("gpt bf16", *g, *r, b, 2e-2, 0.25, 5e-2);
  });
  guarded("gpt f32 dropout 0.1", [&] {
    auto r = copy_of(base, host(), DType::F64, 0.1);
    auto g = copy_of(base, gpu(), DType::F32, 0.1);
    r->train();
    g->train();
    // The same default-generator state before each forward: the same masks.
    bb::manual_seed(2024);
    Tensor lr = r->loss(b.idx, b.targets);
    bb::manual_seed(2024);
    Tensor lg = g->loss(b.idx.to(gpu()), b.targets.to(gpu()));
    check("gpt f32 dropout 0.1 loss", lg, lr, 2e-5);
    lr.backward();
    lg.backward();
    double floor = 5e-7 * grad_rms(*r);
    auto pg = g->named_parameters(), pr = r->named_parameters();
    for (size_t i = 0; i < pg.size() && i < pr.size(); ++i)
      check("gpt f32 dropout 0.1 grad " + pg[i].first, pg[i].second.grad(), pr[i].second.grad(), 5e-5, 1.0, 0.0, floor);
  });
}

constexpr int kSteps = 10;
constexpr double kLr = 3e-3, kWd = 0.1, kB1 = 0.9, kB2 = 0.95, kEps = 1e-8;

bb::optim::AdamWOptions adamw_options() {
  bb::optim::AdamWOptions o;
  o.lr = kLr;
  o.weight_decay = kWd;
  o.beta1 = kB1;
  o.beta2 = kB2;
  o.eps = kEps;
  return o;
}

// kSteps training steps of `model` on `dev`: loss, backward, clip, then step(s), s 0-based.
std::vector<double> train_losses(nn::GPT& model, const std::vector<Batch>& batches, bb::Device dev,
                                 const std::function<void(int)>& step) {
  std::vector<double> losses;
  for (int s = 0; s < kSteps; ++s) {
    const Batch& b = batches[static_cast<size_t>(s) % batches.size()];
    model.zero_grad();
    Tensor l = model.loss(b.idx.to(dev), b.targets.to(dev));
    losses.push_back(l.item());
    l.backward();
    bb::optim::clip_grad_norm_(model.parameters(), 1.0);
    step(s);
  }
  return losses;
}

std::vector<double> train_reference(const nn::GPT& base, const std::vector<Batch>& batches) {
  auto r = copy_of(base, host(), DType::F64);
  bb::optim::AdamW opt(r->named_parameters(), adamw_options());
  return train_losses(*r, batches, host(), [&](int) { opt.step(); });
}

void report_losses(const std::string& what, const std::vector<double>& got, const std::vector<double>& ref,
                   double rel_tol) {
  for (size_t s = 0; s < got.size() && s < ref.size(); ++s) {
    double err = std::abs(got[s] - ref[s]) / std::abs(ref[s]);
    char buf[160];
    std::snprintf(buf, sizeof buf, "gpu %.7f ref %.7f rel err %.2e (tol %.0e)", got[s], ref[s], err, rel_tol);
    expect(std::isfinite(got[s]) && err <= rel_tol, what + " step " + std::to_string(s) + " loss", buf);
  }
  expect(got.size() == ref.size(), what + " ran every step");
  if (!got.empty()) expect(got.back() < got.front(), what + " loss decreases", std::to_string(got.front()) + " -> " + std::to_string(got.back()));
}

void training() {
  nn::GPT base(config());
  std::vector<Batch> batches = {batch(4, 33, 3), batch(4, 33, 0)};
  std::vector<double> ref;
  try {
    ref = train_reference(base, batches);
  } catch (const std::exception& e) {
    fail("gpt training reference (CPU)", e.what());
    return;
  }
  guarded("gpt train f32 optim::AdamW", [&] {
    auto g = copy_of(base, gpu(), DType::F32);
    bb::optim::AdamWOptions o = adamw_options();
    bb::optim::AdamW opt(g->named_parameters(), o);
    auto losses = train_losses(*g, batches, gpu(), [&](int) { opt.step(); });
    report_losses("gpt train f32", losses, ref, 1e-4);
  });
  guarded("gpt train bf16 optim::AdamW (master_weights)", [&] {
    auto g = copy_of(base, gpu(), DType::BF16);
    bb::optim::AdamWOptions o = adamw_options();
    o.master_weights = true;  // its masters start from the bf16 weights
    bb::optim::AdamW opt(g->named_parameters(), o);
    auto losses = train_losses(*g, batches, gpu(), [&](int) { opt.step(); });
    report_losses("gpt train bf16 AdamW(master)", losses, ref, 2e-2);
  });
  guarded("gpt train bf16 + f32 master (adamw_multi_step_)", [&] {
    auto g = copy_of(base, gpu(), DType::BF16);
    auto params = g->named_parameters();
    auto base_params = base.named_parameters();
    std::vector<Tensor> master, m, v;
    for (size_t i = 0; i < params.size(); ++i) {
      master.push_back(base_params[i].second.detach().to(gpu(), DType::F32).clone());  // from the f32 weights
      m.push_back(bb::zeros(params[i].second.shape(), {DType::F32, gpu()}));
      v.push_back(bb::zeros(params[i].second.shape(), {DType::F32, gpu()}));
    }
    auto losses = train_losses(*g, batches, gpu(), [&](int s) {
      std::vector<bb::AdamWTensors> items;
      for (size_t i = 0; i < params.size(); ++i) {
        Tensor p = params[i].second;
        if (!p.grad().defined()) continue;
        // AdamW's default: no decay on 1-D parameters (biases, norms)
        items.push_back({p, p.grad().contiguous(), m[i], v[i], master[i], s + 1, p.dim() >= 2 ? kWd : 0.0});
      }
      bb::adamw_multi_step_(items, kLr, kB1, kB2, kEps);
    });
    report_losses("gpt train bf16+master", losses, ref, 2e-2);
    for (size_t i = 0; i < params.size(); ++i)
      check_exact("gpt train bf16+master param == round(master) " + params[i].first, params[i].second,
                  master[i].to(DType::BF16));
  });
}

}  // namespace

int main() {
  return program("cuda_test_cuda_gpt", [] {
    if (selected("forward")) forward_and_gradients();
    if (selected("train")) training();
  });
}
