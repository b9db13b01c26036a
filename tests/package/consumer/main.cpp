// A program built against an installed barbell: tensors, linear + cross_entropy, backward.
// Exits 0 when the loss and gradients match the hand-computed values.
#include <barbell/barbell.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

namespace bb = barbell;

static int failures = 0;

static void expect_near(const char* what, double got, double want, double tol = 1e-5) {
  bool ok = std::abs(got - want) <= tol;
  std::printf("%-14s got %+.6f want %+.6f %s\n", what, got, want, ok ? "ok" : "MISMATCH");
  if (!ok) ++failures;
}

int main() {
  std::printf("barbell %s, CUDA backend %d, GPUs visible %d\n", BARBELL_VERSION, BARBELL_HAVE_CUDA,
              bb::cuda::device_count());

  // x [2, 3], weight [4, 3] and bias [4] all zero: logits are 0, so softmax is 1/4 everywhere,
  // loss = log 4, and d loss / d logits = (1/4 - onehot) / N.
  bb::Tensor x = bb::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  // No designated initializers: a consumer may well compile as plain C++17.
  bb::TensorOptions param;
  param.requires_grad = true;
  bb::Tensor w = bb::zeros({4, 3}, param);
  bb::Tensor b = bb::zeros({4}, param);
  bb::Tensor targets = bb::from_vector<int64_t>({1, 3}, {2});

  bb::Tensor loss = bb::cross_entropy(bb::linear(x, w, b), targets);
  loss.backward();

  expect_near("loss", loss.item(), std::log(4.0));
  std::vector<float> gb = b.grad().to_vector<float>();
  const double want_gb[4] = {0.25, -0.25, 0.25, -0.25};
  for (int j = 0; j < 4; ++j) expect_near("grad b", gb[j], want_gb[j]);
  // Row 1 of grad w: ((1/4 - 1) * x0 + 1/4 * x1) / 2.
  std::vector<float> gw = w.grad().to_vector<float>();
  const double want_gw1[3] = {0.125, -0.125, -0.375};
  for (int k = 0; k < 3; ++k) expect_near("grad w[1]", gw[3 + k], want_gw1[k]);

  // A CUDA tensor either works (GPU present) or throws a barbell::Error; never a crash.
  try {
    bb::TensorOptions on_gpu;
    on_gpu.device = bb::Device::cuda(0);
    bb::Tensor g = bb::ones({2}, on_gpu);
    expect_near("cuda sum", g.to(bb::Device::cpu()).sum().item(), 2.0);
  } catch (const bb::Error& e) {
    std::printf("no CUDA tensor here: %s\n", e.what());
  }

  std::printf("%s\n", failures == 0 ? "consumer: all checks passed" : "consumer: FAILED");
  return failures == 0 ? 0 : 1;
}
