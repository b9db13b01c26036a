// scaled_dot_product_attention's Flash path end to end on the CPU: the op layer (the
// [B, T, H, D] output storage, autograd, gradients flowing back through the q, k, v
// views of a [B, T, 3, H, D] qkv tensor, the deterministic switch) and a bf16 GPT
// trained with it, with barbell's flash kernels running under the warp emulator through
// the op layer's CPU test hooks (src/ops/attention_hooks.hpp) and the same kernel
// schedule and parameter code as the CUDA launchers (kernels/flash/schedule.hpp,
// tensor_params.hpp). References: the Math backend in float64 on the same values.
//
// A plain program: one PASS/FAIL line per check, exit status 1 on any failure.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "barbell/barbell.hpp"
#include "flash/schedule.hpp"
#include "flash/tensor_params.hpp"
#include "ops/attention_hooks.hpp"
#include "warp_sim.hpp"

namespace bb = barbell;
namespace fa = barbell::gpu::fa;
using bb::AttentionBackend;
using bb::Tensor;

namespace {

int g_failures = 0;

void check(bool ok, const std::string& what, const std::string& detail = "") {
  std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  if (!ok) ++g_failures;
}

template <typename P>
auto sim_launcher(const P& p) {
  return [&p](auto kernel, const fa::LaunchShape& s) {
    fa::sim::launch(s.grid_x, s.grid_y, s.grid_z, s.threads, s.smem, [&] { kernel(p); });
  };
}

void sim_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                 double scale) {
  const fa::FwdParams p = fa::fwd_params(o, lse, q, k, v, causal, scale);
  if (p.B == 0 || p.H == 0 || p.Tq == 0) return;
  fa::dispatch(q.dtype(), q.size(3), "sim_forward", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    fa::run_forward<T, decltype(dim)::value>(p, sim_launcher(p));
  });
}

void sim_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                  const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, bool causal, double scale,
                  bool deterministic) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  Tensor delta = bb::full({B, H, Tq}, NAN, {bb::kF32});
  Tensor accum = deterministic ? Tensor() : bb::full({B, H, Tq, D}, NAN, {bb::kF32});
  fa::BwdParams p = fa::bwd_params(dq, dk, dv, dout, q, k, v, o, lse, static_cast<float*>(delta.data_ptr()),
                                   deterministic ? nullptr : static_cast<float*>(accum.data_ptr()), causal, scale);
  fa::dispatch(q.dtype(), D, "sim_backward", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    fa::run_backward<T, decltype(dim)::value>(p, deterministic, sim_launcher(p));
  });
}

double max_abs(const Tensor& a) {
  double m = 0;
  for (double x : a.to(bb::kF64).contiguous().to_vector<double>()) m = std::max(m, std::abs(x));
  return m;
}

// max |a - b| / max(1, max |b|); NaN gives infinity.
double rel_err(const Tensor& a, const Tensor& b) {
  auto va = a.to(bb::kF64).contiguous().to_vector<double>(), vb = b.to(bb::kF64).contiguous().to_vector<double>();
  double m = 0, r = 1;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return INFINITY;
    m = std::max(m, std::abs(va[i] - vb[i]));
    r = std::max(r, std::abs(vb[i]));
  }
  return m / r;
}

std::string fmt_err(double e, double tol) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "max error %.3e (tolerance %.1e)", e, tol);
  return buf;
}

// The GPT's layout: q, k, v views of qkv [B, T, 3, H, D]; gradients reach qkv.grad.
void op_case(bb::DType dt, int64_t B, int64_t T, int64_t H, int64_t D, bool causal) {
  const std::string name = std::string(bb::dtype_name(dt)) + " B=" + std::to_string(B) + " T=" + std::to_string(T) +
                           " H=" + std::to_string(H) + " D=" + std::to_string(D) + (causal ? " causal" : "");
  const double u = dt == bb::kBF16 ? 1.0 / 256 : 1.0 / 2048;
  Tensor qkv = bb::randn({B, T, 3, H, D}).to(dt).detach();
  Tensor dout = bb::randn({B, H, T, D}).to(dt);
  auto run = [&](const Tensor& base, AttentionBackend backend, Tensor* grad) {
    Tensor x = base.detach();
    x.requires_grad_(true);
    Tensor q = x.select(2, 0).transpose(1, 2), k = x.select(2, 1).transpose(1, 2), v = x.select(2, 2).transpose(1, 2);
    Tensor y = bb::scaled_dot_product_attention(q, k, v, causal, std::nullopt, backend);
    bb::sum(bb::mul(y, dout.to(base.dtype()))).backward();
    *grad = x.grad();
    return y;
  };
  Tensor g_flash, g_math;
  Tensor y_flash = run(qkv, AttentionBackend::Flash, &g_flash);
  Tensor y_math = run(qkv.to(bb::kF64), AttentionBackend::Math, &g_math);
  // The output is stored [B, T, H, D]: the GPT's transpose + reshape to [B, T, C] is a view.
  Tensor merged = y_flash.transpose(1, 2).reshape({B, T, H * D});
  check(merged.data_ptr() == y_flash.data_ptr(), name + ": out is stored [B, T, H, D] (no copy to [B, T, C])");
  const double e_out = rel_err(y_flash, y_math), e_grad = rel_err(g_flash, g_math);
  check(e_out <= 5 * u, name + ": out vs float64 Math", fmt_err(e_out, 5 * u));
  check(e_grad <= 10 * u, name + ": d(qkv) vs float64 Math", fmt_err(e_grad, 10 * u));
  check(max_abs(g_flash) > 0, name + ": d(qkv) is not all zero");

  // Deterministic mode: bit-identical gradients across runs, close to atomic mode.
  bb::set_deterministic_attention(true);
  Tensor g1, g2;
  run(qkv, AttentionBackend::Flash, &g1);
  run(qkv, AttentionBackend::Flash, &g2);
  bb::set_deterministic_attention(false);
  auto v1 = g1.to(bb::kF32).to_vector<float>(), v2 = g2.to(bb::kF32).to_vector<float>();
  check(v1 == v2, name + ": deterministic d(qkv) is bit-identical across runs");
  const double e_det = rel_err(g1, g_flash);
  check(e_det <= 4 * u, name + ": deterministic vs atomic d(qkv)", fmt_err(e_det, 4 * u));
}

// A bf16 GPT (head dim 64) trained with Flash and with Math from the same weights on the
// same batches: the losses agree step by step within bf16 tolerance.
void gpt_case() {
  auto train = [](AttentionBackend backend) {
    bb::nn::GPTConfig cfg;
    cfg.vocab_size = 37;
    cfg.block_size = 33;
    cfg.n_layer = 2;
    cfg.n_head = 2;
    cfg.n_embd = 128;
    cfg.seed = 7;
    cfg.attn_backend = backend;
    bb::nn::GPT model(cfg);
    model.to(bb::kBF16);
    bb::optim::AdamWOptions opts;
    opts.lr = 3e-3;
    bb::optim::AdamW opt(model.named_parameters(), opts);
    bb::Generator gen(11);
    // One batch, seen every step: the loss must fall as the model fits it.
    Tensor idx = bb::randint(0, 37, {2, 33}, {bb::kI64}, &gen), tgt = bb::randint(0, 37, {2, 33}, {bb::kI64}, &gen);
    std::vector<double> losses;
    for (int step = 0; step < 6; ++step) {
      opt.zero_grad();
      Tensor loss = model.loss(idx, tgt);
      loss.backward();
      opt.step();
      losses.push_back(loss.item<double>());
    }
    return losses;
  };
  auto flash = train(AttentionBackend::Flash), math = train(AttentionBackend::Math);
  for (size_t s = 0; s < flash.size(); ++s) {
    const double rel = std::abs(flash[s] - math[s]) / std::abs(math[s]);
    char buf[128];
    std::snprintf(buf, sizeof buf, "flash %.5f, math %.5f, relative difference %.2e (tolerance 1e-2)", flash[s],
                  math[s], rel);
    check(std::isfinite(flash[s]) && rel <= 1e-2, "gpt bf16 step " + std::to_string(s) + " loss", buf);
  }
  check(flash.back() < flash.front(), "gpt bf16 flash: the loss decreases");
}

}  // namespace

int main() {
  bb::detail::CpuFlashHooks hooks;
  hooks.forward = &sim_forward;
  hooks.backward = &sim_backward;
  bb::detail::set_cpu_flash_hooks(hooks);
  bb::manual_seed(2024);
  try {
    check(bb::resolve_attention_backend(bb::randn({1, 1, 4, 64}).to(bb::kBF16), bb::randn({1, 1, 4, 64}).to(bb::kBF16),
                                        bb::randn({1, 1, 4, 64}).to(bb::kBF16),
                                        AttentionBackend::Flash) == AttentionBackend::Flash,
          "the hooks make Flash available for CPU bf16 tensors");
    op_case(bb::kBF16, 2, 70, 2, 64, true);
    op_case(bb::kBF16, 1, 33, 2, 128, false);
    op_case(bb::kF16, 2, 40, 1, 64, false);
    op_case(bb::kF16, 1, 65, 2, 128, true);
    gpt_case();
  } catch (const std::exception& e) {
    check(false, "no exception", e.what());
  }
  bb::detail::set_cpu_flash_hooks({});
  std::printf("%s: %d failure(s)\n", g_failures ? "FAIL" : "PASS", g_failures);
  return g_failures ? 1 : 0;
}
