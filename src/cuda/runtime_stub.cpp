// The CUDA seam and runtime API in a build without the CUDA backend: no devices, and
// a clear error for anyone who asks for one.
#include "barbell/core/error.hpp"
#include "barbell/cuda/cuda.hpp"
#include "cuda/runtime.hpp"

#if !defined(BARBELL_WITH_CUDA)
namespace barbell {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw DeviceError(fmt::format("{}: this build of barbell has no CUDA backend (configure with BARBELL_CUDA=ON)", what));
}
}  // namespace

namespace cuda_rt {
int device_count() { return 0; }
void* alloc(size_t, int) { no_cuda("cuda alloc"); }
void free(void*, size_t, int) noexcept {}
void copy_h2d(void*, const void*, size_t, int) { no_cuda("copy to cuda"); }
void copy_d2h(void*, const void*, size_t, int) { no_cuda("copy from cuda"); }
void copy_d2d(void*, const void*, size_t, int, int) { no_cuda("cuda copy"); }
void* prepare_launch(int) { no_cuda("cuda launch"); }
}  // namespace cuda_rt

namespace cuda {
DeviceProperties properties(int) { no_cuda("cuda::properties"); }
int current_device() { no_cuda("cuda::current_device"); }
void set_device(int) { no_cuda("cuda::set_device"); }
Stream Stream::create(int, int) { no_cuda("cuda::Stream::create"); }
Stream Stream::wrap(void*, int) { no_cuda("cuda::Stream::wrap"); }
void Stream::synchronize() const { no_cuda("cuda::Stream::synchronize"); }
bool Stream::query() const { no_cuda("cuda::Stream::query"); }
Stream current_stream(int) { no_cuda("cuda::current_stream"); }
void set_current_stream(const Stream&) { no_cuda("cuda::set_current_stream"); }
StreamGuard::StreamGuard(const Stream&) { no_cuda("cuda::StreamGuard"); }
StreamGuard::~StreamGuard() = default;
Event::Event(bool) { no_cuda("cuda::Event"); }
void Event::record(const Stream&) { no_cuda("cuda::Event::record"); }
void Event::synchronize() const { no_cuda("cuda::Event::synchronize"); }
bool Event::query() const { no_cuda("cuda::Event::query"); }
void Event::wait(const Stream&) const { no_cuda("cuda::Event::wait"); }
float Event::elapsed_ms(const Event&) const { no_cuda("cuda::Event::elapsed_ms"); }
void synchronize(int) { no_cuda("cuda::synchronize"); }
MemoryStats memory_stats(int) { no_cuda("cuda::memory_stats"); }
void reset_peak_memory_stats(int) { no_cuda("cuda::reset_peak_memory_stats"); }
void empty_cache(int) { no_cuda("cuda::empty_cache"); }
void set_poison_allocations(bool) {}
bool poison_allocations() { return false; }
bool is_emulated() { return false; }
std::vector<KernelTraffic> emulated_traffic() { return {}; }
void set_allow_tf32(bool) {}
bool allow_tf32() { return false; }
}  // namespace cuda
}  // namespace barbell
#endif
