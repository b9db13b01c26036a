// A minimal stand-in for the emulated device (emu/emu_api.hpp) for the unit tests of the emulated
// vendor libraries: what the tests can ask of it beyond the interface.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace barbell::emu::stub {

// A "device" allocation: 256-byte aligned host memory that device_read/device_write accept,
// filled with 0xCD bytes. Freed with free().
void* alloc(size_t bytes);
void free(void* p);

// The message of the barbell::emu::Fault the last work threw (the stub runs work at once, in
// enqueue, and keeps its fault as the runtime would keep a sticky error); "" when none. Clears it.
std::string take_fault();

// Every range declared since the last take, in order.
struct Access {
  bool write;
  uintptr_t lo, hi;
};
std::vector<Access> take_accesses();

// Every enqueue since the last take: the stream and the operation's name.
struct Launch {
  cudaStream_t stream;
  std::string name;
};
std::vector<Launch> take_launches();

// The error the next enqueue returns instead of running the work (cudaSuccess: run it).
void fail_next_enqueue(cudaError_t e);

}  // namespace barbell::emu::stub
