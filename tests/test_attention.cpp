// scaled_dot_product_attention's API on the CPU: backend selection and its errors, the
// logsumexp output against a hand-written float64 reference, and the GPT's backend
// setting. The fused kernels themselves are tested on a GPU (tests/cuda/
// test_cuda_attention.cpp) and, on the CPU, under the warp emulator (tests/sim).
#include <cmath>
#include <vector>

#include "testing.hpp"

namespace bb = barbell;
using bb::AttentionBackend;

namespace {

// lse[b, h, i] = log sum_j exp(scale * q_i . k_j) over the keys i sees.
std::vector<double> reference_lse(const bb::Tensor& q, const bb::Tensor& k, bool causal, double scale) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  auto vq = q.contiguous().to_vector<double>(), vk = k.contiguous().to_vector<double>();
  std::vector<double> out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        std::vector<double> s;
        for (int64_t j = 0; j < Tk; ++j) {
          if (causal && j > i + (Tk - Tq)) continue;
          double d = 0;
          for (int64_t c = 0; c < D; ++c)
            d += vq[static_cast<size_t>(((b * H + h) * Tq + i) * D + c)] *
                 vk[static_cast<size_t>(((b * H + h) * Tk + j) * D + c)];
          s.push_back(d * scale);
        }
        double m = -INFINITY;
        for (double x : s) m = std::max(m, x);
        double sum = 0;
        for (double x : s) sum += std::exp(x - m);
        out.push_back(m + std::log(sum));
      }
  return out;
}

}  // namespace

TEST_CASE("attention: Auto resolves to Math on the CPU; fused backends refuse CPU tensors", "[ops][attention]") {
  bb::manual_seed(3);
  bb::Tensor q = bb::randn({2, 3, 5, 64}), k = bb::randn({2, 3, 7, 64}), v = bb::randn({2, 3, 7, 64});
  REQUIRE(bb::resolve_attention_backend(q, k, v) == AttentionBackend::Math);
  REQUIRE(bb::resolve_attention_backend(q, k, v, AttentionBackend::Math) == AttentionBackend::Math);
  using Catch::Matchers::Contains;
  REQUIRE_THROWS_AS(bb::resolve_attention_backend(q, k, v, AttentionBackend::Flash), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::scaled_dot_product_attention(q, k, v, false, std::nullopt, AttentionBackend::Flash),
                      Contains("scaled_dot_product_attention") && Contains("flash") && Contains("CUDA"));
  REQUIRE_THROWS_WITH(bb::scaled_dot_product_attention(q, k, v, false, std::nullopt, AttentionBackend::Cudnn),
                      Contains("scaled_dot_product_attention") && Contains("cudnn") && Contains("[2, 3, 5, 64]"));
  // Shape errors come before backend errors.
  REQUIRE_THROWS_AS(bb::resolve_attention_backend(q, q.transpose(1, 2), v, AttentionBackend::Flash), bb::ShapeError);
  REQUIRE(std::string(bb::attention_backend_name(AttentionBackend::Flash)) == "flash");
  REQUIRE(std::string(bb::attention_backend_name(AttentionBackend::Math)) == "math");
}

TEST_CASE("attention: the Math backend's logsumexp matches a float64 reference", "[ops][attention]") {
  bb::manual_seed(4);
  for (bool causal : {false, true}) {
    for (auto [Tq, Tk] : {std::pair<int64_t, int64_t>{6, 6}, {3, 8}, {1, 5}}) {
      INFO("causal " << causal << " Tq " << Tq << " Tk " << Tk);
      bb::Tensor q = bb::randn({2, 2, Tq, 8}, {bb::kF64}), k = bb::randn({2, 2, Tk, 8}, {bb::kF64}),
                 v = bb::randn({2, 2, Tk, 8}, {bb::kF64});
      auto r = bb::scaled_dot_product_attention_lse(q, k, v, causal, 0.7);
      REQUIRE(r.lse.shape() == bb::Shape{2, 2, Tq});
      REQUIRE(r.lse.dtype() == bb::kF64);
      auto want = reference_lse(q, k, causal, 0.7);
      auto got = r.lse.to_vector<double>();
      for (size_t i = 0; i < want.size(); ++i) REQUIRE(got[i] == Approx(want[i]).epsilon(1e-12).margin(1e-12));
      bbtest::require_close(r.out, bb::scaled_dot_product_attention(q, k, v, causal, 0.7), 0, 0);
    }
  }
  // 16-bit inputs get an f32 logsumexp.
  bb::Tensor q = bb::randn({1, 2, 4, 8}).to(bb::kBF16);
  auto r = bb::scaled_dot_product_attention_lse(q, q, q, true);
  REQUIRE(r.lse.dtype() == bb::kF32);
  auto want = reference_lse(q.to(bb::kF64), q.to(bb::kF64), true, 1.0 / std::sqrt(8.0));
  auto got = r.lse.to_vector<double>();
  for (size_t i = 0; i < want.size(); ++i) REQUIRE(std::abs(got[i] - want[i]) < 0.05);
}

TEST_CASE("attention: the deterministic switch is process-wide and off by default", "[ops][attention]") {
  REQUIRE_FALSE(bb::deterministic_attention());
  bb::set_deterministic_attention(true);
  REQUIRE(bb::deterministic_attention());
  bb::set_deterministic_attention(false);
  REQUIRE_FALSE(bb::deterministic_attention());
}

TEST_CASE("attention: the GPT passes its attention backend to every layer", "[ops][attention][nn]") {
  auto cfg = bb::nn::GPTConfig::tiny();
  bb::Tensor ids = bb::from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4});
  cfg.attn_backend = AttentionBackend::Math;
  bb::nn::GPT math(cfg);
  cfg.attn_backend = AttentionBackend::Auto;
  bb::nn::GPT autob(cfg);
  bbtest::require_close(math.forward(ids), autob.forward(ids), 0, 0);  // same seed, Auto is Math on the CPU
  cfg.attn_backend = AttentionBackend::Flash;
  bb::nn::GPT flash(cfg);
  REQUIRE_THROWS_WITH(flash.forward(ids), Catch::Matchers::Contains("flash"));
}
