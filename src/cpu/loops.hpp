// The strided N-operand loop every elementwise CPU kernel runs on: dims are
// coalesced, then work is split into chunks of the innermost dim across the pool's threads.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "barbell/core/shape.hpp"
#include "cpu/parallel.hpp"

namespace barbell::cpu {

template <size_t N>
struct Plan {
  Shape shape;                   // coalesced shape; never empty (a scalar is [1])
  std::array<Shape, N> strides;  // per operand, in elements; 0 on broadcast dims
};

template <size_t N>
Plan<N> make_plan(const Shape& shape, const std::array<Shape, N>& strides) {
  Plan<N> p;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !p.shape.empty();
    for (size_t k = 0; k < N && merge; ++k) merge = p.strides[k].back() == strides[k][d] * shape[d];
    if (merge) {
      p.shape.back() *= shape[d];
      for (size_t k = 0; k < N; ++k) p.strides[k].back() = strides[k][d];
    } else {
      p.shape.push_back(shape[d]);
      for (size_t k = 0; k < N; ++k) p.strides[k].push_back(strides[k][d]);
    }
  }
  if (p.shape.empty()) {
    p.shape.push_back(1);
    for (size_t k = 0; k < N; ++k) p.strides[k].push_back(1);
  }
  return p;
}

// Calls f(n, offsets, inner_strides) for runs of n elements along the innermost dim.
template <size_t N, typename F>
void run_plan(const Plan<N>& p, F&& f) {
  const int64_t nd = static_cast<int64_t>(p.shape.size());
  const int64_t inner = p.shape.back();
  int64_t outer = 1;
  for (int64_t d = 0; d < nd - 1; ++d) outer *= p.shape[d];
  constexpr int64_t kChunk = 8192;
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  const int64_t tasks = outer * chunks_per_row;
  std::array<int64_t, N> inner_st;
  for (size_t k = 0; k < N; ++k) inner_st[k] = p.strides[k].back();
  // A task is one run of up to kChunk elements. Within a chunk of tasks the row offsets
  // advance like an odometer: no divisions per run (many strided views have runs of a
  // few dozen elements).
  const int64_t per_task = std::max<int64_t>(1, std::min(inner, kChunk));
  parallel_for(tasks, grain_for(per_task), [&](int64_t t0, int64_t t1) {
    int64_t row = t0 / chunks_per_row, c = t0 % chunks_per_row;
    Shape idx(static_cast<size_t>(std::max<int64_t>(nd - 1, 0)), 0);
    std::array<int64_t, N> row_off{};
    int64_t r = row;
    for (int64_t d = nd - 2; d >= 0; --d) {
      idx[static_cast<size_t>(d)] = r % p.shape[d];
      r /= p.shape[d];
      for (size_t k = 0; k < N; ++k) row_off[k] += idx[static_cast<size_t>(d)] * p.strides[k][d];
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t start = c * kChunk, n = std::min(kChunk, inner - start);
      std::array<int64_t, N> off;
      for (size_t k = 0; k < N; ++k) off[k] = row_off[k] + start * inner_st[k];
      f(n, off, inner_st);
      if (++c < chunks_per_row) continue;
      c = 0;
      for (int64_t d = nd - 2; d >= 0; --d) {  // next row
        const size_t ud = static_cast<size_t>(d);
        for (size_t k = 0; k < N; ++k) row_off[k] += p.strides[k][d];
        if (++idx[ud] < p.shape[d]) break;
        for (size_t k = 0; k < N; ++k) row_off[k] -= idx[ud] * p.strides[k][d];
        idx[ud] = 0;
      }
    }
  });
}

}  // namespace barbell::cpu
