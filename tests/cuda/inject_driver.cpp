// Small scenarios for the bug-injection test (tests/cuda/inject.py): each runs a few ops
// on cuda:0 (the emulated device) and compares them with the CPU backend. The injector
// links this program against copies of libbarbell with one bug injected into a real
// kernel or launcher, and checks that the scenario fails and which check said so.
//   inject_driver SCENARIO     exit 0: all values right, 1: a mismatch or an error
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>

#include "barbell/barbell.hpp"
#include "barbell/cuda/cuda.hpp"

namespace bb = barbell;
using bb::DType;
using bb::Tensor;

namespace {

int g_bad = 0;

bb::Device gpu() { return bb::Device::cuda(0); }

void expect_close(const std::string& what, const Tensor& got, const Tensor& want, double tol) {
  const Tensor g = got.to(bb::Device::cpu()).to(DType::F64);
  const Tensor w = want.to(bb::Device::cpu()).to(DType::F64);
  const double err = bb::max(bb::abs(bb::sub(g, w))).item();
  const double scale = std::max(1.0, bb::max(bb::abs(w)).item());
  const bool ok = err <= tol * scale;  // NaN fails
  std::printf("%s %s: max |err| %.3g (tol %.3g)\n", ok ? "ok      " : "MISMATCH", what.c_str(), err, tol * scale);
  if (!ok) ++g_bad;
}

Tensor rnd(const bb::Shape& s, DType dt) { return bb::randn(s, {DType::F32}).to(dt); }

const std::map<std::string, std::function<void()>>& scenarios() {
  static const std::map<std::string, std::function<void()>> m = {
      {"elementwise",
       [] {
         for (DType dt : {DType::F32, DType::BF16}) {
           Tensor a = rnd({1003}, dt), b = rnd({1003}, dt);
           expect_close("add contiguous", bb::add(a.to(gpu()), b.to(gpu())), bb::add(a, b), 1e-2);
           // views that start one element into their storage: not 16-byte aligned
           Tensor ga = a.to(gpu()).narrow(0, 1, 1000), gb = b.to(gpu()).narrow(0, 1, 1000);
           expect_close("add offset views", bb::add(ga, gb), bb::add(a.narrow(0, 1, 1000), b.narrow(0, 1, 1000)),
                        1e-2);
         }
       }},
      {"softmax",
       [] {
         for (bb::Shape s : {bb::Shape{5, 33}, bb::Shape{3, 50257}}) {
           Tensor x = rnd(s, DType::F32);
           expect_close("softmax " + bb::shape_str(s), bb::softmax(x.to(gpu()), -1), bb::softmax(x, -1), 1e-5);
         }
       }},
      {"embedding",
       [] {
         Tensor w = rnd({50, 24}, DType::F32);
         Tensor ids = bb::randint(0, 50, {37});
         expect_close("embedding", bb::embedding(ids.to(gpu()), w.to(gpu())), bb::embedding(ids, w), 0);
       }},
      {"gradnorm",
       [] {
         std::vector<Tensor> h = {rnd({100003}, DType::F32), rnd({33, 65}, DType::F32), rnd({7}, DType::F32)};
         std::vector<Tensor> d;
         for (auto& t : h) d.push_back(t.to(gpu()));
         const double got = bb::sum_of_squares(d), want = bb::sum_of_squares(h);
         const bool ok = std::fabs(got - want) <= 1e-4 * want;
         std::printf("%s sum_of_squares: %.9g vs %.9g\n", ok ? "ok      " : "MISMATCH", got, want);
         if (!ok) ++g_bad;
       }},
      {"flash128",
       [] {
         Tensor q = rnd({1, 2, 64, 128}, DType::BF16), k = rnd({1, 2, 64, 128}, DType::BF16),
                v = rnd({1, 2, 64, 128}, DType::BF16);
         Tensor qg = q.to(gpu()), kg = k.to(gpu()), vg = v.to(gpu());
         for (Tensor* t : {&qg, &kg, &vg}) t->requires_grad_(true);
         Tensor o = bb::scaled_dot_product_attention(qg, kg, vg, true, std::nullopt, bb::AttentionBackend::Flash);
         Tensor q32 = q.to(DType::F32), k32 = k.to(DType::F32), v32 = v.to(DType::F32);
         for (Tensor* t : {&q32, &k32, &v32}) t->requires_grad_(true);
         Tensor ref = bb::scaled_dot_product_attention(q32, k32, v32, true, std::nullopt, bb::AttentionBackend::Math);
         expect_close("flash attention D=128", o, ref, 3e-2);
         bb::sum(o.to(DType::F32)).backward();  // the backward kernels too (more shared memory)
         bb::sum(ref).backward();
         expect_close("flash attention D=128 dq", qg.grad(), q32.grad(), 5e-2);
         expect_close("flash attention D=128 dv", vg.grad(), v32.grad(), 5e-2);
       }},
      {"matmul",
       [] {
         Tensor a = rnd({17, 40}, DType::F32), b = rnd({35, 9}, DType::F32);
         Tensor as = a.narrow(1, 0, 35);  // rows 40 apart: ld above the columns
         expect_close("matmul of a column-sliced view", bb::matmul(a.to(gpu()).narrow(1, 0, 35), b.to(gpu())),
                      bb::matmul(as, b), 1e-4);
         Tensor a16 = rnd({17, 35}, DType::BF16), b16 = rnd({35, 9}, DType::BF16);
         expect_close("matmul bf16", bb::matmul(a16.to(gpu()), b16.to(gpu())),
                      bb::matmul(a16.to(DType::F32), b16.to(DType::F32)), 3e-2);
       }},
      {"linear",
       [] {
         Tensor x = rnd({13, 32}, DType::F32), w = rnd({24, 32}, DType::F32), b = rnd({24}, DType::F32);
         expect_close("linear with bias", bb::linear(x.to(gpu()), w.to(gpu()), b.to(gpu())), bb::linear(x, w, b),
                      1e-4);
       }},
      {"d2h",
       [] {
         // computed on the device, so the host's staging buffer does not already hold the answer
         Tensor x = rnd({4099}, DType::F32);
         Tensor xg = x.to(gpu());
         expect_close("a result copied back from the device", bb::add(xg, xg).to(bb::Device::cpu()), bb::add(x, x), 0);
       }},
      {"peer",
       [] {
         // Two emulated GPUs: a result computed on cuda:0, copied to cuda:1.
         Tensor x = rnd({4099}, DType::F32);
         Tensor x0 = x.to(gpu());
         Tensor y1 = bb::add(x0, x0).to(bb::Device::cuda(1));
         expect_close("a result copied from cuda:0 to cuda:1", y1, bb::add(x, x), 0);
       }},
      {"int32",
       [] {
         // A [3, 4] view whose rows are 2^30 + 32 elements apart: offsets above 2^31 need
         // the 64-bit indexing path.
         const int64_t row = (int64_t{1} << 30) + 32;
         Tensor big = bb::empty({3, row}, {DType::BF16, gpu()});
         Tensor view = big.narrow(1, 0, 4);
         view.fill_(1.5);
         // made contiguous on the device first: a host copy of the view would move its whole span
         expect_close("fill of a view with offsets above 2^31", view.contiguous(), bb::full({3, 4}, 1.5, {DType::F32}),
                      0);
       }},
  };
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || !scenarios().count(argv[1])) {
    std::fprintf(stderr, "usage: inject_driver SCENARIO; scenarios:");
    for (const auto& [name, f] : scenarios()) std::fprintf(stderr, " %s", name.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  if (std::string(argv[1]) == "peer") setenv("BARBELL_EMU_DEVICES", "2", 1);  // before the first CUDA call
  if (bb::cuda::device_count() == 0) {
    std::printf("inject_driver: skipped: no CUDA device\n");
    return 77;
  }
  bb::manual_seed(5);
  try {
    scenarios().at(argv[1])();
    bb::cuda::synchronize();
  } catch (const std::exception& e) {
    std::printf("ERROR %s\n", e.what());
    return 1;
  }
  return g_bad ? 1 : 0;
}
