// The CUDA runtime seam on a GPU: device tensors, host/device round trips, device to
// device copies. Exits with 77 (CTest: skipped) where there is no GPU.
#include <cstdio>
#include <vector>

#include "barbell/barbell.hpp"

namespace bb = barbell;

namespace {
int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}
}  // namespace

int main() {
  if (!bb::cuda::is_available()) {
    std::printf("skipped: no CUDA device visible (%d devices)\n", bb::cuda::device_count());
    return 77;
  }
  bb::Device gpu = bb::Device::cuda(0);
  for (bb::DType dt : {bb::kF32, bb::kBF16, bb::kF16, bb::kI64}) {
    for (int64_t n : {1, 7, 1000, 1 << 20}) {
      bb::Tensor h = bb::randn({n}, {dt});
      bb::Tensor d = h.to(gpu);
      expect(d.is_cuda() && d.shape() == h.shape() && d.dtype() == dt, "to(cuda) keeps shape and dtype");
      bb::Tensor back = d.clone().to(bb::Device::cpu());  // clone: a device-to-device copy
      expect(back.to_vector<double>() == h.to_vector<double>(), "host -> device -> device -> host is exact");
    }
  }
  bb::Tensor z = bb::zeros({3, 5}, {bb::kF32, gpu});
  expect(z.to(bb::Device::cpu()).sum().item() == 0.0, "zeros on the GPU");
  bool threw = false;
  try {
    bb::add(z, z);  // op kernels are not written yet: a clear error, not a crash
  } catch (const bb::DeviceError&) {
    threw = true;
  }
  expect(threw, "an op without a CUDA kernel throws DeviceError");
  std::printf("%s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
