// The CPU tensors' allocator (host_alloc.hpp). glibc hands large blocks back to the OS
// when they are freed (munmap, or trimming the heap), and every fresh page then costs a
// page fault when it is first written: on a training step that allocates and frees the
// same activations every step, 5-10% of the time went to the kernel. Blocks of 64 KiB
// and more are cached here by size class (a quarter of a power of two: at most 25%
// slack), up to BARBELL_CPU_CACHE_MB (default 2048) MiB in all; smaller ones and
// anything over the limit go to malloc as before.
#include "cpu/host_alloc.hpp"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace barbell::cpu {

namespace {

constexpr size_t kMinCached = size_t(64) << 10;

size_t size_class(size_t n) {
  if (n < kMinCached) return (n + 63) / 64 * 64;
  int lg = 63 - __builtin_clzll(static_cast<unsigned long long>(n));
  const size_t step = size_t(1) << (lg - 2);
  return (n + step - 1) / step * step;
}

size_t cache_limit() {
  const char* v = std::getenv("BARBELL_CPU_CACHE_MB");
  long mb = v ? std::atol(v) : 2048;
  return mb < 0 ? 0 : static_cast<size_t>(mb) << 20;
}

struct Cache {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;  // by size class
  size_t cached = 0;
  const size_t limit = cache_limit();
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may be freed during exit
  return *c;
}

}  // namespace

void* host_alloc(size_t nbytes) {
  const size_t sz = size_class(nbytes);
  if (sz >= kMinCached) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.free_blocks.find(sz);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= sz;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, sz);
  if (p == nullptr) {
    // Memory may be held here for other sizes: give it back and try once more.
    Cache& c = cache();
    {
      std::lock_guard<std::mutex> lk(c.mu);
      for (auto& [s, v] : c.free_blocks)
        for (void* q : v) std::free(q);
      c.free_blocks.clear();
      c.cached = 0;
    }
    p = std::aligned_alloc(64, sz);
  }
  return p;
}

void host_free(void* p, size_t nbytes) {
  if (p == nullptr) return;
  const size_t sz = size_class(nbytes);
  if (sz >= kMinCached) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lk(c.mu);
    if (c.cached + sz <= c.limit) {
      c.free_blocks[sz].push_back(p);
      c.cached += sz;
      return;
    }
  }
  std::free(p);
}

size_t host_cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  return c.cached;
}

}  // namespace barbell::cpu
