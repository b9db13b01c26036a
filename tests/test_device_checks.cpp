// Device mismatches: every op that takes two tensors refuses operands on different
// devices with a DeviceError naming the op and both devices. Runs without a GPU: the
// "CUDA" operand is host memory labelled cuda:0, which the checks reject before any read.
#include "testing.hpp"

namespace bb = barbell;
using Catch::Matchers::Contains;

namespace {
// A tensor that claims to live on cuda:0; its memory is never touched by these tests.
bb::Tensor fake_cuda(std::vector<float>& host, const bb::Shape& shape, bb::DType dt = bb::kF32) {
  host.resize(static_cast<size_t>(bb::shape_numel(shape)) * 2 + 8);
  return bb::from_blob(host.data(), shape, dt, bb::Device::cuda(0));
}
}  // namespace

TEST_CASE("Ops refuse operands on different devices", "[errors][device]") {
  std::vector<float> mem1, mem2, mem3;
  bb::Tensor a = bb::randn({4, 8});
  bb::Tensor g8 = fake_cuda(mem1, {4, 8});
  bb::Tensor gw = fake_cuda(mem2, {3, 8});
  bb::Tensor gv = fake_cuda(mem3, {8});
// Catch2 v2 combined matchers hold references to their parts: build them in place.
#define names_devices(op) (Contains(op) && Contains("cpu") && Contains("cuda:0"))
  REQUIRE_THROWS_AS(bb::add(a, g8), bb::DeviceError);
  REQUIRE_THROWS_WITH(bb::add(a, g8), names_devices("add"));
  REQUIRE_THROWS_WITH(bb::sub(a, g8), names_devices("sub"));
  REQUIRE_THROWS_WITH(bb::mul(a, g8), names_devices("mul"));
  REQUIRE_THROWS_WITH(bb::div(a, g8), names_devices("div"));
  REQUIRE_THROWS_WITH(bb::pow(a, g8), names_devices("pow"));
  REQUIRE_THROWS_WITH(bb::eq(a, g8), names_devices("eq"));
  REQUIRE_THROWS_WITH(bb::matmul(a, gw.t()), names_devices("matmul"));
  REQUIRE_THROWS_WITH(bb::linear(a, gw), names_devices("linear"));
  REQUIRE_THROWS_WITH(bb::linear(a, bb::randn({3, 8}), fake_cuda(mem3, {3})), names_devices("linear"));
  REQUIRE_THROWS_WITH(bb::layer_norm(a, gv, bb::Tensor()), names_devices("layer_norm"));
  REQUIRE_THROWS_WITH(bb::layer_norm(a, bb::ones({8}), gv), names_devices("layer_norm"));
  REQUIRE_THROWS_WITH(bb::rms_norm(a, gv), names_devices("rms_norm"));
  REQUIRE_THROWS_WITH(bb::cat({a, g8}), names_devices("cat"));
  REQUIRE_THROWS_WITH(bb::where(bb::eq(a, a), a, g8), names_devices("where"));

  std::vector<float> mem4;
  bb::Tensor ids_gpu = fake_cuda(mem4, {2, 3}, bb::kI64);
  REQUIRE_THROWS_WITH(bb::embedding(ids_gpu, bb::randn({10, 4})), names_devices("embedding"));
  REQUIRE_THROWS_WITH(bb::cross_entropy(bb::randn({2, 3, 10}), ids_gpu), names_devices("cross_entropy"));

  bb::Tensor q = bb::randn({1, 2, 3, 4});
  std::vector<float> mem5;
  bb::Tensor kg = fake_cuda(mem5, {1, 2, 3, 4});
  REQUIRE_THROWS_WITH(bb::scaled_dot_product_attention(q, kg, q), names_devices("scaled_dot_product_attention"));
  REQUIRE_THROWS_WITH(bb::scaled_dot_product_attention(q, q, kg), names_devices("scaled_dot_product_attention"));

  bb::Tensor p = bb::randn({4, 8});
  bb::Tensor m1 = bb::zeros({4, 8}), m2 = bb::zeros({4, 8});
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, g8, m1, m2, {1e-3, 0.9, 0.999, 1e-8, 0.0, 1}),
                      names_devices("adamw_step_"));
#undef names_devices
}
