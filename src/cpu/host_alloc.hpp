// Host memory for CPU tensors: large blocks are kept for reuse instead of going back to
// the OS, so a training step does not page-fault its activations in again every step.
#pragma once

#include <cstddef>

namespace barbell::cpu {

// 64-byte aligned; nbytes > 0. host_free takes the size host_alloc was given.
void* host_alloc(size_t nbytes);
void host_free(void* p, size_t nbytes);
// Bytes held for reuse now (tests).
size_t host_cached_bytes();

}  // namespace barbell::cpu
