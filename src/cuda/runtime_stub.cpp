// The CUDA seam in a build without the CUDA backend: no devices, and a clear error
// for anyone who asks for device memory.
#include "cuda/runtime.hpp"

#include "barbell/core/error.hpp"

#if !defined(BARBELL_WITH_CUDA)
namespace barbell::cuda_rt {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw DeviceError(fmt::format("{}: this build of barbell has no CUDA backend (configure with BARBELL_CUDA=ON)", what));
}
}  // namespace
int device_count() { return 0; }
void* alloc(size_t, int) { no_cuda("cuda alloc"); }
void free(void*, int) noexcept {}
void copy_h2d(void*, const void*, size_t, int) { no_cuda("copy to cuda"); }
void copy_d2h(void*, const void*, size_t, int) { no_cuda("copy from cuda"); }
void copy_d2d(void*, const void*, size_t, int) { no_cuda("cuda copy"); }
}  // namespace barbell::cuda_rt
#endif
