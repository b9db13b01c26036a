// What the GPU benchmarks (bench_kernels, bench_attention) share:
//   GpuTimer     the median of CUDA-event times of one call, each call queued behind
//                device-to-device copies that keep the GPU busy while the host enqueues
//                it (so host launch gaps are not timed) and move several times the L2
//                through it (so no call starts with a warm L2);
//   random_rows  random inputs made on the GPU without drawing every element on the CPU.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "barbell/barbell.hpp"
#include "barbell/cuda/cuda.hpp"
#include "bench_util.hpp"

namespace bench {

struct Measured {
  std::vector<double> ms;
  double median_ms = 0, min_ms = 0, max_ms = 0, host_us = 0;
  int reps = 0;
};

// A [R, C] tensor on cuda:0 in dtype dt: 1M normal draws (times scale) tiled over the
// rows, each row then scaled by its own factor in [0.5, 1.5), plus shift.
inline barbell::Tensor random_rows(barbell::Generator& gen, int64_t R, int64_t C, barbell::DType dt,
                                   double scale = 1.0, double shift = 0.0) {
  namespace bb = barbell;
  bb::NoGradGuard ng;
  const bb::Device gpu = bb::Device::cuda(0);
  const int64_t br = std::max<int64_t>(1, std::min<int64_t>(R, (int64_t{1} << 20) / C));
  bb::Tensor base = bb::randn({br, C}, {bb::DType::F32}, &gen).to(gpu);
  if (scale != 1.0) base = bb::mul(base, scale);
  const int64_t k = (R + br - 1) / br;
  bb::Tensor tiled = base.unsqueeze(0).expand({k, br, C}).contiguous().view({k * br, C}).narrow(0, 0, R);
  bb::Tensor rs = bb::add(bb::rand({R, 1}, {bb::DType::F32}, &gen), 0.5).to(gpu);
  bb::Tensor x = bb::mul(tiled, rs);
  if (shift != 0.0) x = bb::add(x, shift);
  return x.to(dt);
}

class GpuTimer {
 public:
  double target_ms = 150;  // timed GPU time aimed at per case
  int warm = 3, min_reps = 10, max_reps = 100;
  double copy_gbps = 0;  // the device's D2D copy rate when measured ((read + write) GB/s); 2000 assumed before
  size_t l2 = 50u << 20;

  // Allocates the delay buffers on cuda:0: two of `delay_floats` f32 each.
  void init(int64_t delay_floats) {
    l2 = barbell::cuda::properties(0).l2_cache;
    const barbell::TensorOptions f32{barbell::DType::F32, barbell::Device::cuda(0)};
    src_ = barbell::empty({delay_floats}, f32);
    dst_ = barbell::empty({delay_floats}, f32);
    src_.fill_(1.0);
  }

  // Keeps the GPU busy for about `us` microseconds (and at least long enough to move 4x
  // the L2 through it) with device-to-device copies on barbell's current stream.
  void delay(double us) {
    const double bw = copy_gbps > 0 ? copy_gbps * 1e9 : 2e12;  // (read + write) bytes / s
    int64_t n = static_cast<int64_t>(std::max(us * 1e-6 * bw, 4.0 * static_cast<double>(l2)) / 8);
    barbell::NoGradGuard ng;
    while (n > 0) {
      const int64_t m = std::min(n, src_.numel());
      dst_.narrow(0, 0, m).copy_(src_.narrow(0, 0, m));
      n -= m;
    }
  }

  // Times timed(i) (setup(i) before each call, untimed; i counts every call made).
  Measured measure(const std::function<void(int)>& timed, const std::function<void(int)>& setup = nullptr) {
    using Clock = std::chrono::steady_clock;
    Measured r;
    int it = 0;
    for (int i = 0; i < warm; ++i, ++it) {
      if (setup) setup(it);
      timed(it);
    }
    barbell::cuda::synchronize();
    // The host time to enqueue one timed call (all of it, if the call waits for the GPU).
    std::vector<double> hs;
    for (int i = 0; i < 3; ++i, ++it) {
      if (setup) setup(it);
      barbell::cuda::synchronize();
      auto t0 = Clock::now();
      timed(it);
      hs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      barbell::cuda::synchronize();
    }
    r.host_us = median(hs);
    const double delay_us = 2.0 * r.host_us + 20.0;
    // One timed call for the estimate of how many fit in target_ms.
    barbell::cuda::Event a, b;
    if (setup) setup(it);
    delay(delay_us);
    a.record();
    timed(it++);
    b.record();
    b.synchronize();
    const double est = std::max(1e-3, static_cast<double>(b.elapsed_ms(a)));
    r.reps = std::clamp(static_cast<int>(target_ms / est), min_reps, max_reps);
    std::vector<barbell::cuda::Event> e0, e1;
    for (int i = 0; i < r.reps; ++i) {
      e0.emplace_back(true);
      e1.emplace_back(true);
    }
    for (int i = 0; i < r.reps; ++i, ++it) {
      if (setup) setup(it);
      delay(delay_us);
      e0[static_cast<size_t>(i)].record();
      timed(it);
      e1[static_cast<size_t>(i)].record();
    }
    barbell::cuda::synchronize();
    for (int i = 0; i < r.reps; ++i)
      r.ms.push_back(static_cast<double>(e1[static_cast<size_t>(i)].elapsed_ms(e0[static_cast<size_t>(i)])));
    r.median_ms = median(r.ms);
    r.min_ms = *std::min_element(r.ms.begin(), r.ms.end());
    r.max_ms = *std::max_element(r.ms.begin(), r.ms.end());
    return r;
  }

 private:
  barbell::Tensor src_, dst_;
};

}  // namespace bench
