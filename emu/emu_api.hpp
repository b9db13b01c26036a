// The emulated GPU's interface for emulated vendor libraries (cuBLASLt/cuBLAS, CUB's
// device-wide algorithms): how they queue work on an emulated stream and declare the
// device memory that work reads and writes. Implemented by the emulated CUDA runtime
// (emu/runtime.cpp, the integrator's); tests/emu/ has a minimal stand-in for unit tests.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>

namespace barbell::emu {

// A device-side fault inside an emulated operation (bad address, misaligned access,
// ...). Thrown from inside `work`; the runtime turns it into a sticky
// cudaErrorIllegalAddress (as a GPU would) and prints the message.
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Queues `work` on stream `s` (0 = the legacy default stream, cudaStreamPerThread, or a
// stream made by cudaStreamCreate*) as one device operation called `name` (shown in
// messages and traffic tables, e.g. "cublasLtMatmul"). It runs in stream order on the
// emulated device, possibly later than this call (at the next synchronisation), on
// another OS thread's call stack: capture by value. Returns cudaSuccess, or the error
// the runtime would give (an invalid stream, a sticky error already pending).
cudaError_t enqueue(cudaStream_t s, const std::string& name, std::function<void()> work);

// Inside `work` only: declares that it reads / writes the `bytes` bytes at p. The range
// must lie inside one live device allocation (else Fault naming the operation, the
// address and the nearest allocation); the access is recorded for the stream-ordering
// checks (another stream's unordered access to the same bytes is an error) and for the
// traffic counters. Declare what is touched as precisely as is cheap (e.g. one call per
// column of a strided matrix, not the bounding box), and before touching it.
void device_read(const void* p, size_t bytes);
void device_write(void* p, size_t bytes);

// Whether [p, p + bytes) lies inside one live device allocation (no side effects;
// callable anywhere). For argument validation that a library does on the host.
bool is_device_range(const void* p, size_t bytes);

}  // namespace barbell::emu
