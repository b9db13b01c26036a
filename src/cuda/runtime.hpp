// The seam between the library and the CUDA backend in kernels/: device memory,
// copies, device count, and the stream a launch goes to. The public face of the
// runtime is barbell/cuda/cuda.hpp. Without BARBELL_WITH_CUDA every call throws
// DeviceError (device_count() answers 0).
#pragma once

#include <cstddef>

namespace barbell::cuda_rt {

int device_count();                 // 0 without a driver or a GPU; never throws
void* alloc(size_t nbytes, int device);
void free(void* ptr, size_t nbytes, int device) noexcept;  // stream-ordered
// All copies are ordered on this thread's current stream of `device`. copy_h2d
// returns once the source has been read (into pinned staging), so the host buffer may
// be reused at once; copy_d2h returns when the data has arrived; copy_d2d does not
// wait (between two GPUs it orders both devices' current streams with events).
void copy_h2d(void* dst, const void* src, size_t nbytes, int device);
void copy_d2h(void* dst, const void* src, size_t nbytes, int device);
void copy_d2d(void* dst, const void* src, size_t nbytes, int device, int src_device = -1);  // -1: same
// Makes `device` current on this thread (checking that it exists) and returns this
// thread's current stream on it (a cudaStream_t).
void* prepare_launch(int device);

}  // namespace barbell::cuda_rt
