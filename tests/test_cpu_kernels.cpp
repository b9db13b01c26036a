// The CPU backend's vectorised kernels (src/cpu/vec.hpp) at every x86-64 level this CPU
// runs, against float64 references; the fused CPU attention against the composition of
// ops in float64, and by finite-difference gradient checks; tiled matmuls.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cpu/gemm.hpp"
#include "cpu/host_alloc.hpp"
#include "cpu/vec.hpp"
#include "ops/attention_hooks.hpp"
#include "testing.hpp"

namespace bb = barbell;
using bb::Tensor;

namespace {

std::vector<const bb::cpu::VecKernels*> tables() {
  std::vector<const bb::cpu::VecKernels*> r;
  for (const char* isa : {"sse2", "avx2", "avx512"})
    if (auto* k = bb::cpu::vec_for(isa)) r.push_back(k);
  return r;
}

std::vector<float> randf(size_t n, uint64_t seed, double scale = 1.0) {
  bb::Generator g(seed);
  bb::NoGradGuard ng;
  std::vector<float> v = bb::mul(bb::randn({static_cast<int64_t>(n)}, {}, &g), scale).to_vector<float>();
  return v;
}

void require_near(double got, double want, double atol, double rtol) {
  INFO("got " << got << " want " << want);
  REQUIRE(std::abs(got - want) <= atol + rtol * std::abs(want));
}

// Lengths around the lane count and the tails.
const std::vector<int64_t> kLengths = {1, 5, 15, 16, 17, 33, 100, 1000};

// Runs the op with the Math backend's composition (true) or the fused CPU kernel.
struct CompositeGuard {
  explicit CompositeGuard(bool on) { bb::detail::set_cpu_math_composite(on); }
  ~CompositeGuard() { bb::detail::set_cpu_math_composite(false); }
};

}  // namespace

TEST_CASE("vec kernels: every level this CPU runs is there, the default is the best", "[cpu][vec]") {
  auto t = tables();
  REQUIRE_FALSE(t.empty());
  if (std::getenv("BARBELL_CPU_ISA") == nullptr) REQUIRE(std::string(bb::cpu::vec().isa) == t.back()->isa);
  REQUIRE(bb::cpu::vec_for("avx7") == nullptr);
}

TEST_CASE("vec kernels: activations against float64", "[cpu][vec]") {
  for (auto* k : tables()) {
    INFO(k->isa);
    for (int64_t n : kLengths) {
      auto x = randf(static_cast<size_t>(n), 1, 3.0), dy = randf(static_cast<size_t>(n), 2);
      std::vector<float> y(x.size()), dx(x.size());
      k->gelu_tanh(y.data(), x.data(), n);
      for (size_t i = 0; i < x.size(); ++i) {
        double v = x[i], u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
        require_near(y[i], 0.5 * v * (1 + std::tanh(u)), 1e-5, 1e-5);
      }
      k->gelu_tanh_grad(dx.data(), dy.data(), x.data(), n);
      for (size_t i = 0; i < x.size(); ++i) {
        double v = x[i], u = 0.7978845608028654 * (v + 0.044715 * v * v * v), th = std::tanh(u);
        double d = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * 0.7978845608028654 * (1 + 3 * 0.044715 * v * v);
        require_near(dx[i], dy[i] * d, 1e-5, 1e-5);  // 1 + tanh cancels for x << 0
      }
      k->silu(y.data(), x.data(), n);
      k->silu_grad(dx.data(), dy.data(), x.data(), n);
      for (size_t i = 0; i < x.size(); ++i) {
        double v = x[i], s = 1 / (1 + std::exp(-v));
        require_near(y[i], v * s, 1e-6, 1e-5);
        require_near(dx[i], dy[i] * s * (1 + v * (1 - s)), 1e-6, 1e-5);
      }
    }
    // NaN stays NaN; large inputs saturate as they should.
    float x[4] = {std::numeric_limits<float>::quiet_NaN(), 200.0f, -200.0f, 0.0f}, y[4];
    k->gelu_tanh(y, x, 4);
    REQUIRE(std::isnan(y[0]));
    REQUIRE(y[1] == 200.0f);
    REQUIRE(y[2] == 0.0f);
    REQUIRE(y[3] == 0.0f);
    k->silu(y, x, 4);
    REQUIRE(std::isnan(y[0]));
    REQUIRE(y[1] == 200.0f);
  }
}

TEST_CASE("vec kernels: binary ops, bias, sums against float64", "[cpu][vec]") {
  for (auto* k : tables()) {
    INFO(k->isa);
    for (int64_t n : kLengths) {
      auto a = randf(static_cast<size_t>(n), 3), b = randf(static_cast<size_t>(n), 4);
      std::vector<float> o(a.size());
      for (int op = 0; op < 4; ++op)
        for (bool scalar : {false, true}) {
          k->binary(op, o.data(), a.data(), b.data(), n, scalar);
          for (size_t i = 0; i < a.size(); ++i) {
            double x = a[i], y = scalar ? b[0] : b[i];
            double want = op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : x / y;
            require_near(o[i], want, 0, 1e-7);
          }
        }
      double ss = 0;
      for (float v : a) ss += double(v) * double(v);
      require_near(k->sum_squares(a.data(), n), ss, 0, 1e-12);
      // col_sum and add_bias on [3, n].
      auto m = randf(static_cast<size_t>(3 * n), 5);
      std::vector<double> acc(static_cast<size_t>(n), 1.0);
      k->col_sum(acc.data(), m.data(), 3, n);
      for (int64_t c = 0; c < n; ++c)
        require_near(acc[static_cast<size_t>(c)],
                     1.0 + double(m[static_cast<size_t>(c)]) + m[static_cast<size_t>(n + c)] +
                         m[static_cast<size_t>(2 * n + c)],
                     0, 1e-12);
      auto m2 = m;
      k->add_bias(m2.data(), a.data(), 3, n);
      for (int64_t r = 0; r < 3; ++r)
        for (int64_t c = 0; c < n; ++c)
          REQUIRE(m2[static_cast<size_t>(r * n + c)] ==
                  m[static_cast<size_t>(r * n + c)] + a[static_cast<size_t>(c)]);
    }
  }
}

TEST_CASE("vec kernels: softmax, log_softmax, logsumexp and their gradients against float64", "[cpu][vec]") {
  for (auto* k : tables()) {
    INFO(k->isa);
    for (int64_t n : kLengths) {
      const int64_t rows = 3;
      auto x = randf(static_cast<size_t>(rows * n), 6, 4.0), g = randf(static_cast<size_t>(rows * n), 7);
      std::vector<float> y(x.size()), ly(x.size()), d(x.size());
      k->softmax(y.data(), x.data(), rows, n, false);
      k->softmax(ly.data(), x.data(), rows, n, true);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * n;
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < n; ++i) m = std::max(m, double(xr[i]));
        for (int64_t i = 0; i < n; ++i) s += std::exp(double(xr[i]) - m);
        const double lse = m + std::log(s);
        require_near(k->logsumexp(xr, n), lse, 1e-6, 1e-6);
        std::vector<float> sc(static_cast<size_t>(n));
        k->softmax_scaled(sc.data(), xr, n, float(lse), 0.5f);
        double sg = 0, sgp = 0;
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i);
          const double p = std::exp(double(xr[i]) - lse);
          require_near(y[at], p, 1e-7, 1e-5);
          require_near(ly[at], double(xr[i]) - lse, 1e-5, 1e-6);
          require_near(sc[static_cast<size_t>(i)], 0.5 * p, 1e-7, 1e-5);
          sg += g[at];
          sgp += double(g[at]) * p;
        }
        k->softmax_grad(d.data() + r * n, g.data() + r * n, y.data() + r * n, 1, n, false);
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i);
          require_near(d[at], std::exp(double(xr[i]) - lse) * (g[at] - sgp), 1e-6, 1e-4);
        }
        k->softmax_grad(d.data() + r * n, g.data() + r * n, ly.data() + r * n, 1, n, true);
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i);
          require_near(d[at], g[at] - std::exp(double(xr[i]) - lse) * sg, 1e-5, 1e-4);
        }
      }
    }
    // A row of -inf (fully masked): softmax stays NaN-free in exp, logsumexp is -inf.
    float ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    REQUIRE(k->logsumexp(ninf, 3) == -INFINITY);
  }
}

TEST_CASE("vec kernels: layer_norm, rms_norm and their gradients against float64", "[cpu][vec]") {
  for (auto* k : tables()) {
    INFO(k->isa);
    for (int64_t n : kLengths) {
      const int64_t rows = 4;
      auto x = randf(static_cast<size_t>(rows * n), 8, 2.0), g = randf(static_cast<size_t>(rows * n), 9),
           w = randf(static_cast<size_t>(n), 10), b = randf(static_cast<size_t>(n), 11);
      for (int64_t i = 0; i < rows * n; ++i) x[static_cast<size_t>(i)] += 0.5f;  // a mean to remove
      std::vector<float> y(x.size()), dx(x.size()), mean(rows), rstd(rows);
      std::vector<double> dw(static_cast<size_t>(n), 0.0), db(static_cast<size_t>(n), 0.0);
      std::vector<double> dw_want(static_cast<size_t>(n), 0.0), db_want(static_cast<size_t>(n), 0.0);
      k->layer_norm(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, n, 1e-5f);
      k->layer_norm_grad(dx.data(), dw.data(), db.data(), g.data(), x.data(), mean.data(), rstd.data(),
                         w.data(), rows, n);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * n;
        double mu = 0, var = 0;
        for (int64_t i = 0; i < n; ++i) mu += xr[i];
        mu /= double(n);
        for (int64_t i = 0; i < n; ++i) var += (xr[i] - mu) * (xr[i] - mu);
        const double rs = 1 / std::sqrt(var / double(n) + 1e-5);
        require_near(mean[static_cast<size_t>(r)], mu, 1e-6, 1e-6);
        require_near(rstd[static_cast<size_t>(r)], rs, 0, 1e-5);
        double s1 = 0, s2 = 0;
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i), c = static_cast<size_t>(i);
          const double xh = (xr[i] - mu) * rs;
          require_near(y[at], xh * w[c] + b[c], 1e-5, 1e-5);
          s1 += double(g[at]) * w[c];
          s2 += double(g[at]) * w[c] * xh;
          dw_want[c] += double(g[at]) * xh;
          db_want[c] += g[at];
        }
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i), c = static_cast<size_t>(i);
          const double xh = (xr[i] - mu) * rs;
          require_near(dx[at], rs * (double(g[at]) * w[c] - (s1 + xh * s2) / double(n)), 1e-5, 1e-4);
        }
      }
      for (size_t c = 0; c < dw.size(); ++c) {
        require_near(dw[c], dw_want[c], 1e-5, 1e-5);
        require_near(db[c], db_want[c], 1e-6, 1e-6);
      }
      // rms_norm
      std::fill(dw.begin(), dw.end(), 0.0);
      std::fill(dw_want.begin(), dw_want.end(), 0.0);
      k->rms_norm(y.data(), rstd.data(), x.data(), w.data(), rows, n, 1e-6f);
      k->rms_norm_grad(dx.data(), dw.data(), g.data(), x.data(), rstd.data(), w.data(), rows, n);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * n;
        double ss = 0;
        for (int64_t i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
        const double rs = 1 / std::sqrt(ss / double(n) + 1e-6);
        require_near(rstd[static_cast<size_t>(r)], rs, 0, 1e-5);
        double s = 0;
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i), c = static_cast<size_t>(i);
          require_near(y[at], xr[i] * rs * w[c], 1e-5, 1e-5);
          s += double(g[at]) * w[c] * xr[i] * rs;
          dw_want[c] += double(g[at]) * xr[i] * rs;
        }
        for (int64_t i = 0; i < n; ++i) {
          const size_t at = static_cast<size_t>(r * n + i), c = static_cast<size_t>(i);
          require_near(dx[at], rs * (double(g[at]) * w[c] - xr[i] * rs * s / double(n)), 1e-5, 1e-4);
        }
      }
      for (size_t c = 0; c < dw.size(); ++c) require_near(dw[c], dw_want[c], 1e-5, 1e-5);
    }
  }
}

TEST_CASE("vec kernels: AdamW against float64", "[cpu][vec]") {
  for (auto* k : tables()) {
    INFO(k->isa);
    const int64_t n = 37;
    auto p = randf(n, 12), g = randf(n, 13), m = randf(n, 14, 0.1), v = randf(n, 15, 0.1);
    for (auto& x : v) x = x * x;
    auto p2 = p, m2 = m, v2 = v;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8, lr = 1e-2, wd = 0.1, bc1 = 1 - std::pow(b1, 3),
                 bc2 = 1 - std::pow(b2, 3);
    k->adamw(p2.data(), g.data(), m2.data(), v2.data(), n, float(b1), float(b2), float(1 - b1), float(1 - b2),
             float(eps), float(1 - lr * wd), float(lr / bc1), float(1 / std::sqrt(bc2)));
    for (size_t i = 0; i < p.size(); ++i) {
      double mi = b1 * m[i] + (1 - b1) * g[i], vi = b2 * v[i] + (1 - b2) * double(g[i]) * g[i];
      double want = p[i] * (1 - lr * wd) - lr / bc1 * mi / (std::sqrt(vi / bc2) + eps);
      require_near(m2[i], mi, 1e-7, 1e-6);
      require_near(v2[i], vi, 1e-9, 1e-6);
      require_near(p2[i], want, 1e-6, 1e-5);
    }
  }
}

namespace {

// q, k, v: strided [B, H, T, D] views of a [B, T, 3, H, D] tensor (as the GPT makes them)
// when Tq == Tk, else separate tensors.
struct Qkv {
  Tensor base, q, k, v;
};
Qkv make_qkv(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bb::DType dt, uint64_t seed) {
  bb::Generator g(seed);
  Qkv r;
  if (Tq == Tk) {
    r.base = bb::randn({B, Tq, 3, H, D}, {dt}, &g);
    r.q = r.base.select(2, 0).transpose(1, 2);
    r.k = r.base.select(2, 1).transpose(1, 2);
    r.v = r.base.select(2, 2).transpose(1, 2);
  } else {
    r.q = bb::randn({B, H, Tq, D}, {dt}, &g);
    r.k = bb::randn({B, H, Tk, D}, {dt}, &g);
    r.v = bb::randn({B, H, Tk, D}, {dt}, &g);
  }
  return r;
}

// out, lse and the gradients of sum(out * w) with respect to q, k, v.
struct AttnResult {
  Tensor out, lse, dq, dk, dv;
};
AttnResult run_attention(const Qkv& x, bool causal, double scale, const Tensor& w, bool composite) {
  CompositeGuard cg(composite);
  Tensor q = x.q.detach().requires_grad_(true), k = x.k.detach().requires_grad_(true),
         v = x.v.detach().requires_grad_(true);
  auto r = bb::scaled_dot_product_attention_lse(q, k, v, causal, scale, bb::AttentionBackend::Math);
  bb::sum(bb::mul(r.out, w.to(r.out.dtype()))).backward();
  return {r.out.detach(), r.lse, q.grad(), k.grad(), v.grad()};
}

}  // namespace

TEST_CASE("cpu attention: the fused kernel equals the composition of ops in float64", "[cpu][attention]") {
  struct Case {
    int64_t B, H, Tq, Tk, D;
  };
  // Head dims with a specialised loop and without; one and several tiles (64); Tq != Tk.
  const std::vector<Case> cases = {{2, 3, 7, 7, 16},  {1, 2, 64, 64, 32}, {2, 1, 130, 130, 64},
                                   {1, 2, 70, 70, 8}, {1, 1, 3, 150, 80}, {1, 2, 129, 77, 128},
                                   {1, 1, 1, 1, 16}};
  for (const auto& c : cases)
    for (bool causal : {false, true}) {
      INFO("B " << c.B << " H " << c.H << " Tq " << c.Tq << " Tk " << c.Tk << " D " << c.D << " causal "
                << causal);
      if (causal && c.Tq > c.Tk) continue;  // rows that see no key: NaN in both
      Qkv x = make_qkv(c.B, c.H, c.Tq, c.Tk, c.D, bb::kF64, 21);
      bb::Generator g(22);
      Tensor w = bb::randn({c.B, c.H, c.Tq, c.D}, {bb::kF64}, &g);
      const double scale = 1.0 / std::sqrt(double(c.D)) * 1.3;
      AttnResult want = run_attention(x, causal, scale, w, true);
      AttnResult got = run_attention(x, causal, scale, w, false);
      bbtest::require_close(got.out, want.out, 1e-12, 1e-10);
      bbtest::require_close(got.lse, want.lse, 1e-12, 1e-12);
      bbtest::require_close(got.dq, want.dq, 1e-12, 1e-10);
      bbtest::require_close(got.dk, want.dk, 1e-12, 1e-10);
      bbtest::require_close(got.dv, want.dv, 1e-12, 1e-10);
      // f32 (and bf16 through f32) against the float64 composition.
      Qkv x32{Tensor(), x.q.to(bb::kF32), x.k.to(bb::kF32), x.v.to(bb::kF32)};
      AttnResult f = run_attention(x32, causal, scale, w, false);
      REQUIRE(f.out.dtype() == bb::kF32);
      REQUIRE(f.lse.dtype() == bb::kF32);
      bbtest::require_close(f.out, want.out, 2e-5, 1e-4);
      bbtest::require_close(f.lse, want.lse, 2e-5, 1e-5);
      bbtest::require_close(f.dq, want.dq, 1e-4, 1e-3);
      bbtest::require_close(f.dk, want.dk, 1e-4, 1e-3);
      bbtest::require_close(f.dv, want.dv, 1e-4, 1e-3);
    }
}

TEST_CASE("cpu attention: every x86-64 level's kernel gives the float64 composition's result",
          "[cpu][attention]") {
  const int64_t Tq = 100, Tk = 100, D = 32;
  Qkv x0 = make_qkv(1, 1, Tq, Tk, D, bb::kF32, 31);  // f32 values, so f32 and f64 runs see the same inputs
  Qkv x{Tensor(), x0.q.to(bb::kF64), x0.k.to(bb::kF64), x0.v.to(bb::kF64)};
  bb::Generator g(32);
  Tensor w = bb::randn({1, 1, Tq, D}, {}, &g).to(bb::kF64);
  const double scale = 0.2;
  AttnResult want = run_attention(x, true, scale, w, true);
  Tensor q = x.q.contiguous().to(bb::kF32), k = x.k.contiguous().to(bb::kF32),
         v = x.v.contiguous().to(bb::kF32);
  Tensor dout = w.to(bb::kF32).contiguous();
  for (auto* kt : tables()) {
    INFO(kt->isa);
    for (bool f64 : {false, true}) {
      Tensor qq = f64 ? q.to(bb::kF64) : q, kk = f64 ? k.to(bb::kF64) : k, vv = f64 ? v.to(bb::kF64) : v,
             gg = f64 ? dout.to(bb::kF64) : dout;
      bb::DType dt = qq.dtype();
      Tensor o = bb::empty({Tq, D}, {dt}), lse = bb::empty({Tq}, {dt}), dq = bb::empty({Tq, D}, {dt}),
             dk = bb::empty({Tk, D}, {dt}), dv = bb::empty({Tk, D}, {dt});
      auto run = [&](auto tag) {
        using T = decltype(tag);
        bb::cpu::AttnHead<T> h{};
        h.q = static_cast<const T*>(qq.data_ptr());
        h.k = static_cast<const T*>(kk.data_ptr());
        h.v = static_cast<const T*>(vv.data_ptr());
        h.q_rs = h.k_rs = h.v_rs = h.o_rs = h.dout_rs = h.dq_rs = h.dk_rs = h.dv_rs = D;
        h.Tq = Tq;
        h.Tk = Tk;
        h.D = D;
        h.causal = true;
        h.scale = T(scale);
        h.o = static_cast<T*>(o.data_ptr());
        h.lse = static_cast<T*>(lse.data_ptr());
        h.dout = static_cast<const T*>(gg.data_ptr());
        h.dq = static_cast<T*>(dq.data_ptr());
        h.dk = static_cast<T*>(dk.data_ptr());
        h.dv = static_cast<T*>(dv.data_ptr());
        std::vector<T> scratch(static_cast<size_t>(bb::cpu::attention_scratch(Tq, Tk, D)));
        if constexpr (std::is_same_v<T, float>) {
          kt->attention_forward_f32(h, scratch.data());
          kt->attention_backward_f32(h, scratch.data());
        } else {
          kt->attention_forward_f64(h, scratch.data());
          kt->attention_backward_f64(h, scratch.data());
        }
      };
      if (f64)
        run(double{});
      else
        run(float{});
      const double atol = f64 ? 1e-12 : 2e-5, rtol = f64 ? 1e-10 : 1e-3;
      bbtest::require_close(o, want.out.reshape({Tq, D}), atol, rtol);
      bbtest::require_close(lse, want.lse.reshape({Tq}), atol, rtol);
      bbtest::require_close(dq, want.dq.reshape({Tq, D}), atol * 5, rtol);
      bbtest::require_close(dk, want.dk.reshape({Tk, D}), atol * 5, rtol);
      bbtest::require_close(dv, want.dv.reshape({Tk, D}), atol * 5, rtol);
    }
  }
}

TEST_CASE("cpu attention: float64 gradients match finite differences", "[cpu][attention][gradcheck]") {
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    // 70 queries and keys: two tiles, so the online softmax rescales.
    bb::Generator g(41);
    Tensor q = bb::mul(bb::randn({1, 1, 70, 4}, {bb::kF64}, &g), 0.7);
    Tensor k = bb::randn({1, 1, 70, 4}, {bb::kF64}, &g), v = bb::randn({1, 1, 70, 4}, {bb::kF64}, &g);
    Tensor w = bb::randn({1, 1, 70, 4}, {bb::kF64}, &g);
    q.requires_grad_(true);
    k.requires_grad_(true);
    v.requires_grad_(true);
    bbtest::require_gradcheck(
        [&](const std::vector<Tensor>& in) {
          return bb::sum(bb::mul(bb::scaled_dot_product_attention(in[0], in[1], in[2], causal), w));
        },
        {q, k, v});
  }
}

TEST_CASE("cpu attention: 16-bit inputs run in f32 and give 16-bit outputs and gradients",
          "[cpu][attention]") {
  Qkv x = make_qkv(1, 2, 20, 20, 16, bb::kF32, 51);
  Qkv xb{Tensor(), x.q.to(bb::kBF16), x.k.to(bb::kBF16), x.v.to(bb::kBF16)};
  bb::Generator g(52);
  Tensor w = bb::randn({1, 2, 20, 16}, {}, &g);
  AttnResult b = run_attention(xb, true, 0.25, w, false);
  REQUIRE(b.out.dtype() == bb::kBF16);
  REQUIRE(b.dq.dtype() == bb::kBF16);
  Qkv x64{Tensor(), xb.q.to(bb::kF64), xb.k.to(bb::kF64), xb.v.to(bb::kF64)};
  AttnResult want = run_attention(x64, true, 0.25, w.to(bb::kBF16), true);
  bbtest::require_close(b.out, want.out, 2e-2, 2e-2);
  bbtest::require_close(b.dv, want.dv, 5e-2, 5e-2);
}

TEST_CASE("matmul: products split between threads equal the float64 product", "[cpu][matmul]") {
  // Big enough to be split (over 2^22 multiply-adds): along M, along N, along K (partial
  // products summed afterwards), odd sizes, transposed operands, a batch; with OpenBLAS
  // and with oneDNN when it is installed.
  const std::string saved = bb::cpu::gemm_backend();
  std::vector<std::string> backends = {"openblas"};
  if (saved == "onednn") backends.push_back("onednn");
  for (const auto& be : backends) {
    INFO("GEMM " << be);
    bb::cpu::set_gemm_backend(be.c_str());
    bb::Generator g(61);
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{300, 200, 150},
                           {1000, 70, 130},
                           {33, 777, 300},
                           {100, 90, 4100},
                           {7, 5, 200000}}) {
      INFO(M << " x " << N << " x " << K);
      Tensor a = bb::randn({M, K}, {}, &g), b = bb::randn({K, N}, {}, &g);
      Tensor want = bb::matmul(a.to(bb::kF64), b.to(bb::kF64));
      bbtest::require_close(bb::matmul(a, b), want, 1e-3, 1e-4);
      Tensor at = a.t().contiguous().t(), bt = b.t().contiguous().t();  // column-major storage
      bbtest::require_close(bb::matmul(at, bt), want, 1e-3, 1e-4);
    }
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{600, 120, 60}, {50, 60, 3000}}) {
      Tensor a = bb::randn({3, M, K}, {}, &g), b = bb::randn({3, K, N}, {}, &g);
      bbtest::require_close(bb::matmul(a, b), bb::matmul(a.to(bb::kF64), b.to(bb::kF64)), 1e-3, 1e-4);
      bbtest::require_close(
          bb::matmul(a.to(bb::kF64), b.to(bb::kF64).transpose(1, 2).contiguous().transpose(1, 2)),
          bb::matmul(a.to(bb::kF64), b.to(bb::kF64)), 1e-10, 1e-10);
    }
    if (be == "onednn" && bb::cpu::bf16_gemm_available()) {
      // bf16 operands through the bf16 GEMM: the f32 product of the same (rounded) values.
      Tensor a = bb::randn({300, 500}, {}, &g).to(bb::kBF16), b = bb::randn({500, 200}, {}, &g).to(bb::kBF16);
      Tensor want = bb::matmul(a.to(bb::kF64), b.to(bb::kF64));
      Tensor got = bb::matmul(a, b);
      REQUIRE(got.dtype() == bb::kBF16);
      bbtest::require_close(got, want, 0.05, 1e-2);  // the bf16 rounding of the result
      bbtest::require_close(bb::matmul(a.t().contiguous().t(), b), want, 0.05, 1e-2);
    }
  }
  bb::cpu::set_gemm_backend(saved.c_str());
}

TEST_CASE("vec kernels: bf16 conversions are BFloat16's, bit for bit", "[cpu][vec][bf16]") {
  std::vector<float> x = randf(1000, 71, 100.0);
  const float specials[] = {0.0f,
                            -0.0f,
                            INFINITY,
                            -INFINITY,
                            std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(),
                            3.0e38f,
                            -3.4e38f,
                            1e-40f,
                            1.00390625f,
                            1.01171875f,
                            1.0f + 1.0f / 256 + 1.0f / 512};  // ties round to even
  x.insert(x.end(), std::begin(specials), std::end(specials));
  uint32_t snan_bits = 0x7f800001u;
  float snan;
  std::memcpy(&snan, &snan_bits, 4);
  x.push_back(snan);
  const int64_t n = static_cast<int64_t>(x.size());
  for (auto* k : tables()) {
    INFO(k->isa);
    std::vector<uint16_t> h(x.size());
    std::vector<float> back(x.size());
    k->f32_to_bf16(h.data(), x.data(), n);
    k->bf16_to_f32(back.data(), h.data(), n);
    for (size_t i = 0; i < x.size(); ++i) {
      INFO("value " << x[i]);
      bb::BFloat16 want(x[i]);
      REQUIRE(h[i] == want.bits);
      const float wf = static_cast<float>(want);
      REQUIRE(std::memcmp(&back[i], &wf, 4) == 0);
    }
  }
}

TEST_CASE("bf16 ops run in f32 and match the float64 result of the same values", "[cpu][bf16]") {
  bb::Generator g(81);
  auto rounded = [&](const bb::Shape& s, double scale) {
    bb::NoGradGuard ng;
    return bb::mul(bb::randn(s, {}, &g), scale).to(bb::kBF16);
  };
  Tensor x = rounded({40, 70}, 1.5), y = rounded({40, 70}, 1.0), w = rounded({70}, 1.0),
         b = rounded({70}, 0.3);
  Tensor gout = rounded({40, 70}, 1.0);
  Tensor t = bb::randint(0, 70, {40}, {bb::DType::I64}, &g);
  using F = std::function<Tensor(const std::vector<Tensor>&)>;
  const std::vector<std::pair<const char*, F>> fns = {
      {"gelu", [&](const std::vector<Tensor>& v) { return bb::gelu(v[0]); }},
      {"silu * y", [&](const std::vector<Tensor>& v) { return bb::mul(bb::silu(v[0]), v[1]); }},
      {"x + y, x - y, x / (y*y + 1)",
       [&](const std::vector<Tensor>& v) {
         return bb::add(bb::sub(bb::add(v[0], v[1]), v[1]), bb::div(v[0], bb::add(bb::mul(v[1], v[1]), 1.0)));
       }},
      {"layer_norm", [&](const std::vector<Tensor>& v) { return bb::layer_norm(v[0], v[2], v[3]); }},
      {"rms_norm", [&](const std::vector<Tensor>& v) { return bb::rms_norm(v[0], v[2]); }},
      {"softmax", [&](const std::vector<Tensor>& v) { return bb::softmax(v[0], -1); }},
      {"log_softmax", [&](const std::vector<Tensor>& v) { return bb::log_softmax(v[0], -1); }},
      {"sum over rows + bias",
       [&](const std::vector<Tensor>& v) { return bb::add(v[0], bb::sum(v[1], {0})); }},
      {"cross_entropy", [&](const std::vector<Tensor>& v) { return bb::cross_entropy(v[0], t); }},
  };
  for (auto& [name, f] : fns) {
    INFO(name);
    auto run = [&](bb::DType dt, std::vector<Tensor>* grads) {
      std::vector<Tensor> in;
      for (const Tensor& v : {x, y, w, b}) in.push_back(v.to(dt).detach().requires_grad_(true));
      Tensor out = f(in);
      Tensor go = out.dim() == 0 ? bb::ones({}, {out.dtype()}) : gout.to(out.dtype());
      bb::sum(bb::mul(out, go)).backward();
      for (auto& v : in) grads->push_back(v.grad().defined() ? v.grad().to(bb::kF64) : Tensor());
      return out.to(bb::kF64);
    };
    std::vector<Tensor> g16, g64;
    Tensor o16 = run(bb::kBF16, &g16), o64 = run(bb::kF64, &g64);
    const double scale = std::max(1.0, bb::max(bb::abs(o64)).item<double>());
    REQUIRE(bbtest::max_abs_diff(o16, o64) <= 2e-2 * scale);
    for (size_t i = 0; i < g16.size(); ++i) {
      if (!g64[i].defined()) continue;
      INFO("gradient of input " << i);
      const double gs = std::max(1.0, bb::max(bb::abs(g64[i])).item<double>());
      REQUIRE(bbtest::max_abs_diff(g16[i], g64[i]) <= 3e-2 * gs);
    }
  }
}

TEST_CASE("host allocator: large blocks are reused, small ones are not cached", "[cpu][alloc]") {
  void* p = bb::cpu::host_alloc(1000000);  // may be a block earlier tests left
  const size_t before = bb::cpu::host_cached_bytes();
  REQUIRE(reinterpret_cast<uintptr_t>(p) % 64 == 0);
  std::memset(p, 1, 1000000);
  bb::cpu::host_free(p, 1000000);
  REQUIRE(bb::cpu::host_cached_bytes() >= before + 1000000);
  void* q = bb::cpu::host_alloc(990000);  // the same size class: the block just freed
  REQUIRE(q == p);
  REQUIRE(bb::cpu::host_cached_bytes() == before);
  bb::cpu::host_free(q, 990000);
  const size_t with_block = bb::cpu::host_cached_bytes();
  void* s = bb::cpu::host_alloc(1000);
  bb::cpu::host_free(s, 1000);
  REQUIRE(bb::cpu::host_cached_bytes() == with_block);  // 1000 bytes went back to malloc
  // Tensors go through it.
  void* first;
  {
    Tensor t = bb::empty({3 << 20});
    first = t.data_ptr();
  }
  Tensor t2 = bb::empty({3 << 20});
  REQUIRE(t2.data_ptr() == first);  // the block freed last is reused first
}
