// The CUDA runtime as barbell exposes it (barbell/cuda/cuda.hpp) on a GPU: device
// properties, the current device, poisoned allocations, host/device round trips of
// every dtype (small, odd and large), device-to-device copies, memory statistics
// (allocated, peak, reserved, counts; no leak), streams and StreamGuard, events
// (timing, cross-stream waits), synchronize, the TF32 switch and a bad device index.
// Exits with 77 (CTest: skipped) where there is no GPU.
#include <chrono>
#include <thread>

#include "cuda_check.hpp"

using namespace ct;

namespace {

void properties() {
  guarded("properties", [] {
    expect(bb::cuda::device_count() >= 1, "device_count() >= 1", std::to_string(bb::cuda::device_count()));
    expect(bb::cuda::is_available(), "is_available()");
    auto p = bb::cuda::properties();
    auto p0 = bb::cuda::properties(0);
    expect(p.name == p0.name && !p.name.empty(), "properties(-1) is the current device's", p.name);
    expect(p.major >= 5 && p.multiprocessors > 0 && p.total_memory > (size_t{1} << 30) && p.l2_cache > 0 &&
               p.shared_memory_per_block_optin >= 48 * 1024,
           "properties are plausible",
           "sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " + std::to_string(p.multiprocessors) +
               " SMs, L2 " + std::to_string(p.l2_cache) + ", smem optin " +
               std::to_string(p.shared_memory_per_block_optin));
    bb::cuda::set_device(0);
    expect(bb::cuda::current_device() == 0, "set_device(0) / current_device()");
  });
  expect_throw<bb::DeviceError>("set_device(device_count()) throws DeviceError",
                                [] { bb::cuda::set_device(bb::cuda::device_count()); });
  expect_throw<bb::DeviceError>("a tensor on a missing GPU throws DeviceError", [] {
    bb::zeros({3}, {DType::F32, bb::Device::cuda(bb::cuda::device_count())});
  });
  guarded("set_allow_tf32", [] {
    expect(!bb::cuda::allow_tf32(), "TF32 is off by default");
    bb::cuda::set_allow_tf32(true);
    expect(bb::cuda::allow_tf32(), "set_allow_tf32(true)");
    bb::cuda::set_allow_tf32(false);
    expect(!bb::cuda::allow_tf32(), "set_allow_tf32(false)");
  });
}

void poison() {
  guarded("poisoned allocations", [] {
    expect(bb::cuda::poison_allocations(), "poison_allocations() is on (start() set it)");
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
      auto v = host_values(bb::empty({1001}, {dt, gpu()}));
      bool all_nan = std::all_of(v.begin(), v.end(), [](double x) { return std::isnan(x); });
      expect(all_nan, "empty() on the GPU is NaN-poisoned [" + dt_name(dt) + "]");
    }
    for (DType dt : {DType::I32, DType::I64}) {
      auto v = host_values(bb::empty({33}, {dt, gpu()}));
      bool all_m1 = std::all_of(v.begin(), v.end(), [](double x) { return x == -1; });
      expect(all_m1, "empty() on the GPU is -1-poisoned [" + dt_name(dt) + "]");
    }
    bb::cuda::set_poison_allocations(false);
    expect(!bb::cuda::poison_allocations(), "set_poison_allocations(false)");
    bb::cuda::set_poison_allocations(true);
  });
}

void round_trips() {
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64, DType::Bool}) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{1} << 20, big(kLarge)}) {
      std::string name = "round trip [" + dt_name(dt) + "] n=" + std::to_string(n);
      guarded(name, [&] {
        Tensor h = bb::is_floating(dt) ? randn({n}, dt) : dt == DType::Bool ? randint(0, 2, {n}).to(dt)
                                                                          : randint(-100000, 100000, {n}, dt);
        Tensor d = h.to(gpu());
        expect(d.is_cuda() && d.shape() == h.shape() && d.dtype() == dt, name + " to(cuda) keeps shape and dtype");
        Tensor back = d.clone().to(host());  // clone: a device-to-device copy
        check_exact(name + " host -> device -> device -> host", back, h);
      }, dt);
    }
  }
  if (!quick()) {
    guarded("round trip 256 MiB", [] {
      Tensor h = bb::arange(int64_t{64} << 20, {DType::I32});
      check_exact("round trip 256 MiB i32", h.to(gpu()).to(host()), h);
    });
  }
  guarded("strided host tensor to the GPU", [] {
    Tensor h = randn({33, 65}, DType::F32);
    check_exact("strided host tensor to the GPU", h.t().to(gpu()), h.t().contiguous());
    check_exact("strided GPU tensor to the host", h.to(gpu()).t().to(host()), h.t().contiguous());
  });
}

void memory() {
  guarded("memory_stats", [] {
    bb::cuda::synchronize();
    auto s0 = bb::cuda::memory_stats();
    const size_t n = size_t{8} << 20;  // 8 MiB of f32
    {
      Tensor t = bb::empty({static_cast<int64_t>(n / 4)}, {DType::F32, gpu()});
      auto s1 = bb::cuda::memory_stats();
      expect(s1.allocated >= s0.allocated + n, "allocated grows by the tensor's bytes",
             std::to_string(s0.allocated) + " -> " + std::to_string(s1.allocated));
      expect(s1.peak_allocated >= s1.allocated, "peak_allocated >= allocated");
      expect(s1.reserved >= s1.allocated, "reserved >= allocated",
             std::to_string(s1.reserved) + " vs " + std::to_string(s1.allocated));
      expect(s1.peak_reserved >= s1.reserved, "peak_reserved >= reserved");
      expect(s1.allocations > s0.allocations, "allocations counts calls");
    }
    bb::cuda::synchronize();
    auto s2 = bb::cuda::memory_stats();
    expect(s2.allocated == s0.allocated, "allocated returns to where it was when the tensor is freed",
           std::to_string(s0.allocated) + " -> " + std::to_string(s2.allocated));
    bb::cuda::reset_peak_memory_stats();
    auto s3 = bb::cuda::memory_stats();
    expect(s3.peak_allocated == s3.allocated, "reset_peak_memory_stats() sets peak to current",
           std::to_string(s3.peak_allocated) + " vs " + std::to_string(s3.allocated));
    bb::cuda::empty_cache();
    bb::cuda::synchronize();
    auto s4 = bb::cuda::memory_stats();
    expect(s4.reserved <= s2.reserved, "empty_cache() does not grow the pool",
           std::to_string(s2.reserved) + " -> " + std::to_string(s4.reserved));
  });
  guarded("no leak over ops", [] {
    auto work = [] {
      Tensor a = randn({257, 129}, DType::F32).to(gpu()).requires_grad_(true);
      Tensor y = bb::sum(bb::gelu(bb::matmul(a, a.t())));
      y.backward();
    };
    work();  // first use: library handles and workspaces may stay allocated
    bb::cuda::synchronize();
    auto s0 = bb::cuda::memory_stats();
    for (int i = 0; i < 3; ++i) {
      work();
    }
    bb::cuda::synchronize();
    auto s1 = bb::cuda::memory_stats();
    expect(s1.allocated == s0.allocated, "allocated is unchanged after forward/backward tensors are freed",
           std::to_string(s0.allocated) + " -> " + std::to_string(s1.allocated));
  });
}

void streams_and_events() {
  guarded("streams", [] {
    bb::cuda::Stream def = bb::cuda::current_stream();
    bb::cuda::Stream s = bb::cuda::Stream::create();
    expect(s.handle() != nullptr && s.device() == 0, "Stream::create() gives a stream on device 0");
    expect(!(s == def), "a created stream is not the default one");
    Tensor x = randn({big(kLarge)}, DType::F32);
    Tensor xg = x.to(gpu());  // copied on the default stream
    // s is non-blocking: it does not wait for the default stream by itself, so the
    // kernel below could read xg before the copy lands. An event orders the two.
    bb::cuda::Event copied(false);
    copied.record(def);
    copied.wait(s);
    Tensor y;
    {
      bb::cuda::StreamGuard g(s);
      expect(bb::cuda::current_stream() == s, "StreamGuard makes the stream current");
      y = bb::mul(xg, 2.0);
    }
    expect(bb::cuda::current_stream() == def, "StreamGuard restores the previous stream");
    s.synchronize();
    expect(s.query(), "query() after synchronize() is true");
    check_exact("an op on a created stream", y, bb::mul(x, 2.0));
    // wrap: an existing handle, not owned
    bb::cuda::Stream w = bb::cuda::Stream::wrap(s.handle(), 0);
    expect(w.handle() == s.handle() && w == s, "Stream::wrap keeps the handle");
  });
  guarded("events", [] {
    bb::cuda::Event e0, e1;
    Tensor a = randn({1024, 1024}, DType::F32).to(gpu());
    e0.record();
    Tensor c = bb::matmul(a, a);
    e1.record();
    e1.synchronize();
    expect(e1.query(), "event query() after synchronize()");
    float ms = e1.elapsed_ms(e0);
    expect(ms > 0 && ms < 10000, "elapsed_ms is positive", std::to_string(ms) + " ms");
    bb::cuda::Event light(false);
    light.record();
    light.synchronize();
    expect(light.query(), "a non-timing event records and completes");
  });
  guarded("cross-stream wait", [] {
    bb::cuda::Stream s1 = bb::cuda::Stream::create(), s2 = bb::cuda::Stream::create();
    Tensor x = randn({big(kLarge)}, DType::F32);
    Tensor xg = x.to(gpu());
    bb::cuda::synchronize();
    Tensor y, z;
    bb::cuda::Event done(false);
    {
      bb::cuda::StreamGuard g(s1);
      y = xg;
      for (int i = 0; i < 20; ++i) y = bb::add(y, 1.0);  // a queue of work on s1
      done.record(s1);
    }
    done.wait(s2);
    {
      bb::cuda::StreamGuard g(s2);
      z = bb::mul(y, 0.5);
    }
    s2.synchronize();
    check("s2 waits for s1 through an event", z, bb::mul(bb::add(x.to(DType::F64), 20.0), 0.5), 1e-5);
    bb::cuda::synchronize(0);
  });
}

}  // namespace

int main() {
  return program("cuda_test_cuda_runtime", [] {
    properties();
    poison();
    round_trips();
    memory();
    streams_and_events();
  });
}
