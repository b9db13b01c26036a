// The CPU backend's parallel loop: parallel_for(n, grain, f) runs f(begin, end) over
// disjoint chunks of [0, n) on barbell's thread pool (src/core/parallel.cpp).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace barbell::cpu {

namespace detail {
using ChunkFn = void (*)(void* ctx, int64_t begin, int64_t end);
// Runs fn over chunks of `chunk` iterations (the last one shorter), on the pool's
// threads and the caller's; returns when all are done; rethrows the first exception.
void run_chunks(int64_t n, int64_t chunk, ChunkFn fn, void* ctx);
int pool_threads();  // 1 inside a parallel region (nested loops run serially)
}  // namespace detail

// Calls f(begin, end) on chunks that cover [0, n) once, in parallel when there are at
// least two chunks of `grain` iterations and more than one thread. Chunks are claimed
// dynamically, so a thread the OS has descheduled delays the others by one chunk at most.
// Where the result must not depend on the thread count (reductions), f must write
// per-iteration results and the caller combines them in a fixed order: which thread
// runs which chunk, and how [0, n) is cut, depend on the thread count and timing.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int threads = n >= 2 * grain ? detail::pool_threads() : 1;
  if (threads <= 1) {
    f(int64_t(0), n);
    return;
  }
  // A few chunks per thread, for balance when a thread runs late; none below grain.
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks > 4 * threads) chunks = 4 * threads;
  const int64_t chunk = (n + chunks - 1) / chunks;
  using Fn = std::remove_reference_t<F>;
  detail::run_chunks(
      n, chunk, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// Element-count grain: loops cheaper than about this many simple element operations
// per chunk stay on one thread (waking a thread costs a few microseconds, more when
// the cores are busy with other work).
constexpr int64_t kGrainElems = 32768;
inline int64_t grain_for(int64_t per_iteration) {
  return per_iteration >= kGrainElems ? 1 : kGrainElems / (per_iteration > 0 ? per_iteration : 1);
}

}  // namespace barbell::cpu
