// The seam between the library and the CUDA backend in kernels/: device memory,
// copies, device count. Without BARBELL_WITH_CUDA every call throws DeviceError.
#pragma once

#include <cstddef>

namespace barbell::cuda_rt {

int device_count();                 // 0 without a driver or a GPU; never throws
void* alloc(size_t nbytes, int device);
void free(void* ptr, int device) noexcept;
void copy_h2d(void* dst, const void* src, size_t nbytes, int device);
void copy_d2h(void* dst, const void* src, size_t nbytes, int device);
void copy_d2d(void* dst, const void* src, size_t nbytes, int device);

}  // namespace barbell::cuda_rt
