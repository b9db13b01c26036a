// Embedding lookup (a row gather), its deterministic backward, and the id range check
// the ops run before either.
//
// Forward copies whole rows with the widest aligned word (16 bytes when it can).
// Backward, with no float atomics: the token positions are sorted by id with CUB's
// stable radix sort, so each id's positions form one run in token order. The sorted
// list is cut into fixed chunks of kChunk entries; a block sums the dy rows of each run
// in its chunk in order (fp32, fp64 for f64) and writes the dweight row directly when
// the run lies inside the chunk. A run that crosses chunk boundaries leaves one partial
// per chunk, and a fix-up kernel adds them in chunk order and writes the row. dweight
// is zero-filled first, so unused rows read 0. Same ids, same bits, every run.
#ifdef BARBELL_CUDA_EMULATE
#include "cub_emu.hpp"  // CUB's device-wide radix sort on the emulated device
#else
#include <cub/device/device_radix_sort.cuh>
#endif

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};

constexpr int kThreads = 256;
constexpr int kChunk = 64;  // sorted entries per block in the backward sum

uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// ---- forward ----------------------------------------------------------------------------
// out[r, :] = weight[ids[r], :], rows copied as words of type W. Block (tx, ty): ty rows
// at a time, tx words of each.
template <typename I, typename W>
__global__ void __launch_bounds__(kThreads)
    embedding_gather(W* __restrict__ out, const W* __restrict__ weight, const I* __restrict__ ids, int64_t rows,
                     int64_t words) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += int64_t(gridDim.x) * blockDim.y) {
    const W* src = weight + static_cast<int64_t>(ids[r]) * words;
    W* dst = out + r * words;
    for (int64_t c = threadIdx.x; c < words; c += blockDim.x) dst[c] = src[c];
  }
}

template <typename I, typename W>
void launch_gather(void* out, const void* weight, const I* ids, int64_t rows, int64_t row_bytes, cudaStream_t st) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(W));
  const int tx = static_cast<int>(std::min<int64_t>(kThreads, (words + 31) / 32 * 32));
  const int ty = kThreads / tx;
  const int64_t grid = std::min<int64_t>((rows + ty - 1) / ty, int64_t(1) << 20);
  BB_LAUNCH(static_cast<unsigned>(grid), dim3(tx, ty), 0, st, embedding_gather<I, W>)
  (static_cast<W*>(out), static_cast<const W*>(weight), ids, rows, words);
  BB_CUDA_LAUNCH_CHECK();
}

// ---- backward -------------------------------------------------------------------------------
template <typename I>
__global__ void __launch_bounds__(kThreads)
    sort_input(uint32_t* __restrict__ keys, int32_t* __restrict__ pos, const I* __restrict__ ids, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    keys[i] = static_cast<uint32_t>(ids[i]);
    pos[i] = static_cast<int32_t>(i);
  }
}

// Block ch sums the runs of equal keys in sorted entries [ch*kChunk, ch*kChunk + kChunk)
// over VEC columns per thread. A run that starts before the chunk goes to part[ch, 0],
// one that goes on past it (and started inside) to part[ch, 1]; others are complete and
// go to dw.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    embedding_bwd_chunks(T* __restrict__ dw, acc_t<T>* __restrict__ part, const uint32_t* __restrict__ keys,
                         const int32_t* __restrict__ pos, const T* __restrict__ dy, int64_t n, int64_t C) {
  using A = acc_t<T>;
  using V = Vec<T, VEC>;
  __shared__ uint32_t skey[kChunk];
  __shared__ int32_t spos[kChunk];
  const int64_t ch = blockIdx.x, start = ch * kChunk, end = ::min(n, start + kChunk);
  const int cnt = static_cast<int>(end - start);
  for (int t = threadIdx.x; t < cnt; t += blockDim.x) {
    skey[t] = keys[start + t];
    spos[t] = pos[start + t];
  }
  const bool has_before = start > 0, has_after = end < n;
  const uint32_t before = has_before ? keys[start - 1] : 0u, after = has_after ? keys[end] : 0u;
  __syncthreads();
  const int64_t cvec = C / VEC;
  for (int64_t cv = threadIdx.x; cv < cvec; cv += blockDim.x) {
    int i = 0;
    while (i < cnt) {
      const uint32_t key = skey[i];
      int e = i + 1;
      while (e < cnt && skey[e] == key) ++e;
      A acc[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = A(0);
#pragma unroll 4
      for (int k = i; k < e; ++k) {
        const V g = reinterpret_cast<const V*>(dy + static_cast<int64_t>(spos[k]) * C)[cv];
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += to_acc(g.v[j]);
      }
      const bool starts_before = i == 0 && has_before && before == key;
      const bool goes_on = e == cnt && has_after && after == key;
      if (!starts_before && !goes_on) {
        V o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = from_acc<T>(acc[j]);
        reinterpret_cast<V*>(dw + static_cast<int64_t>(key) * C)[cv] = o;
      } else {
        A* dst = part + (ch * 2 + (starts_before ? 0 : 1)) * C + cv * VEC;
#pragma unroll
        for (int j = 0; j < VEC; ++j) dst[j] = acc[j];
      }
      i = e;
    }
  }
}

// Block ch owns the run that starts inside its chunk and goes on past it: its partial
// plus those of the following chunks, in chunk order, is that id's row.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    embedding_bwd_fixup(T* __restrict__ dw, const acc_t<T>* __restrict__ part, const uint32_t* __restrict__ keys,
                        int64_t n, int64_t C, int64_t nchunks) {
  using A = acc_t<T>;
  using V = Vec<T, VEC>;
  const int64_t ch = blockIdx.x, start = ch * kChunk, end = ::min(n, start + kChunk);
  const uint32_t key = keys[end - 1];
  const bool goes_on = end < n && keys[end] == key;
  const bool started_before = start > 0 && keys[start] == key && keys[start - 1] == key;
  if (!goes_on || started_before) return;
  const int64_t cvec = C / VEC;
  for (int64_t cv = threadIdx.x; cv < cvec; cv += blockDim.x) {
    A acc[VEC];
    const A* head = part + (ch * 2 + 1) * C + cv * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = head[j];
    for (int64_t c2 = ch + 1; c2 < nchunks; ++c2) {
      const A* p = part + (c2 * 2) * C + cv * VEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += p[j];
      const int64_t e2 = ::min(n, (c2 + 1) * kChunk);
      if (e2 >= n || keys[e2] != key) break;
    }
    V o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = from_acc<T>(acc[j]);
    reinterpret_cast<V*>(dw + static_cast<int64_t>(key) * C)[cv] = o;
  }
}

template <typename T, int VEC>
void launch_bwd_sums(T* dw, acc_t<T>* part, const uint32_t* keys, const int32_t* pos, const T* dy, int64_t n,
                     int64_t C, int64_t nchunks, cudaStream_t st) {
  const int64_t cvec = C / VEC;
  const int tx = static_cast<int>(std::min<int64_t>(kThreads, (cvec + 31) / 32 * 32));
  BB_LAUNCH(static_cast<unsigned>(nchunks), tx, 0, st, embedding_bwd_chunks<T, VEC>)
  (dw, part, keys, pos, dy, n, C);
  BB_CUDA_LAUNCH_CHECK();
  if (nchunks > 1) {
    BB_LAUNCH(static_cast<unsigned>(nchunks), tx, 0, st, embedding_bwd_fixup<T, VEC>)
    (dw, part, keys, n, C, nchunks);
    BB_CUDA_LAUNCH_CHECK();
  }
}

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

// ---- index range ------------------------------------------------------------------------------
__device__ __forceinline__ void warp_minmax(long long& lo, long long& hi) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    lo = ::min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = ::max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
}
// Block-wide min/max; thread 0 gets the result.
__device__ __forceinline__ void block_minmax(long long& lo, long long& hi) {
  __shared__ long long slo[32], shi[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  warp_minmax(lo, hi);
  if (lane == 0) {
    slo[warp] = lo;
    shi[warp] = hi;
  }
  __syncthreads();
  if (warp == 0) {
    lo = lane < nwarps ? slo[lane] : LLONG_MAX;
    hi = lane < nwarps ? shi[lane] : LLONG_MIN;
    warp_minmax(lo, hi);
  }
}

template <typename I>
__global__ void __launch_bounds__(kThreads)
    id_minmax(long long* __restrict__ part, const I* __restrict__ ids, int64_t n, long long ignore, bool has_ignore) {
  long long lo = LLONG_MAX, hi = LLONG_MIN;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const long long v = static_cast<long long>(ids[i]);
    if (has_ignore && v == ignore) continue;
    lo = ::min(lo, v);
    hi = ::max(hi, v);
  }
  block_minmax(lo, hi);
  if (threadIdx.x == 0) {
    part[blockIdx.x] = lo;
    part[gridDim.x + blockIdx.x] = hi;
  }
}

__global__ void __launch_bounds__(kThreads) id_minmax_final(long long* __restrict__ out, const long long* __restrict__ part,
                                                            int nparts) {
  long long lo = LLONG_MAX, hi = LLONG_MIN;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) {
    lo = ::min(lo, part[i]);
    hi = ::max(hi, part[nparts + i]);
  }
  block_minmax(lo, hi);
  if (threadIdx.x == 0) {
    out[0] = lo;
    out[1] = hi;
  }
}

void check_ids(const char* op, const Tensor& ids) {
  BB_CHECK(ids.is_contiguous(), ShapeError, "{}: ids {} must be contiguous", op, shape_str(ids.shape()));
  BB_CHECK(ids.numel() <= INT32_MAX, ShapeError, "{}: {} ids are more than the kernel handles", op, ids.numel());
}

}  // namespace

void embedding(const Tensor& out, const Tensor& ids, const Tensor& weight) {
  const char* op = "embedding";
  check_ids(op, ids);
  BB_CHECK(weight.dim() == 2 && weight.is_contiguous(), ShapeError, "{}: weight must be a contiguous [V, C], got {}",
           op, shape_str(weight.shape()));
  const int64_t n = ids.numel(), C = weight.shape()[1];
  BB_CHECK(out.is_contiguous() && out.numel() == n * C && out.dtype() == weight.dtype(), ShapeError,
           "{}: out {} ({}) must be contiguous with {} x {} elements of weight's dtype {}", op, shape_str(out.shape()),
           dtype_name(out.dtype()), n, C, dtype_name(weight.dtype()));
  if (n == 0 || C == 0) return;
  cudaStream_t st = stream_for(weight);
  const int64_t row_bytes = C * static_cast<int64_t>(weight.element_size());
  const uintptr_t a = addr(out.data_ptr()) | addr(weight.data_ptr());
  dispatch_index(ids.dtype(), op, [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pi = ptr<I>(ids);
    void* po = out.data_ptr();
    const void* pw = weight.data_ptr();
    if (row_bytes % 16 == 0 && a % 16 == 0) launch_gather<I, uint4>(po, pw, pi, n, row_bytes, st);
    else if (row_bytes % 8 == 0 && a % 8 == 0) launch_gather<I, uint2>(po, pw, pi, n, row_bytes, st);
    else if (row_bytes % 4 == 0 && a % 4 == 0) launch_gather<I, uint32_t>(po, pw, pi, n, row_bytes, st);
    else launch_gather<I, uint16_t>(po, pw, pi, n, row_bytes, st);
  });
}

void embedding_backward(const Tensor& dweight, const Tensor& dy, const Tensor& ids) {
  const char* op = "embedding backward";
  check_ids(op, ids);
  BB_CHECK(dweight.dim() == 2 && dweight.is_contiguous(), ShapeError,
           "{}: dweight must be a contiguous [V, C], got {}", op, shape_str(dweight.shape()));
  const int64_t n = ids.numel(), V = dweight.shape()[0], C = dweight.shape()[1];
  BB_CHECK(V <= INT32_MAX, ShapeError, "{}: {} rows in dweight are more than the kernel handles", op, V);
  BB_CHECK(dy.is_contiguous() && dy.numel() == n * C && dy.dtype() == dweight.dtype(), ShapeError,
           "{}: dy {} ({}) must be contiguous with {} x {} elements of dweight's dtype {}", op, shape_str(dy.shape()),
           dtype_name(dy.dtype()), n, C, dtype_name(dweight.dtype()));
  if (V == 0 || C == 0) return;
  cudaStream_t st = stream_for(dweight);
  BB_CUDA_CHECK(cudaMemsetAsync(dweight.data_ptr(), 0, dweight.nbytes(), st));  // 0.0 in every float dtype
  if (n == 0) return;

  int end_bit = 1;
  while (end_bit < 32 && (uint64_t(1) << end_bit) < static_cast<uint64_t>(V)) ++end_bit;
  const int nitems = static_cast<int>(n);
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  size_t sort_bytes = 0;
  BB_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                                                static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                static_cast<int32_t*>(nullptr), nitems, 0, end_bit, st));

  dispatch_float(dweight.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    // One scratch allocation: sort keys and values (in and out), CUB's temporary
    // storage, and two partial rows per chunk.
    const size_t ids_bytes = align_up(static_cast<size_t>(n) * 4);
    const size_t part_bytes = align_up(static_cast<size_t>(nchunks) * 2 * static_cast<size_t>(C) * sizeof(A));
    const size_t total = 4 * ids_bytes + align_up(sort_bytes) + part_bytes;
    Tensor scratch = empty({static_cast<int64_t>(total / 8 + 32)}, {DType::I64, dweight.device()});
    char* base = reinterpret_cast<char*>((addr(scratch.data_ptr()) + 255) / 256 * 256);
    auto* keys_in = reinterpret_cast<uint32_t*>(base);
    auto* keys_out = reinterpret_cast<uint32_t*>(base + ids_bytes);
    auto* pos_in = reinterpret_cast<int32_t*>(base + 2 * ids_bytes);
    auto* pos_out = reinterpret_cast<int32_t*>(base + 3 * ids_bytes);
    void* temp = base + 4 * ids_bytes;
    A* part = reinterpret_cast<A*>(base + 4 * ids_bytes + align_up(sort_bytes));

    dispatch_index(ids.dtype(), op, [&](auto itag) {
      using I = typename decltype(itag)::type;
      BB_LAUNCH(grid_for(n, kThreads), kThreads, 0, st, sort_input<I>)(keys_in, pos_in, ptr<I>(ids), n);
      BB_CUDA_LAUNCH_CHECK();
    });
    size_t temp_bytes = sort_bytes;
    BB_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, pos_in, pos_out, nitems, 0,
                                                  end_bit, st));

    T* pdw = ptr<T>(dweight);
    const T* pdy = ptr<T>(dy);
    constexpr int VEC = 16 / static_cast<int>(sizeof(T));
    if (C % VEC == 0 && addr(pdw) % 16 == 0 && addr(pdy) % 16 == 0)
      launch_bwd_sums<T, VEC>(pdw, part, keys_out, pos_out, pdy, n, C, nchunks, st);
    else
      launch_bwd_sums<T, 1>(pdw, part, keys_out, pos_out, pdy, n, C, nchunks, st);
  });
}

void index_range(const Tensor& ids, int64_t ignore, bool has_ignore, int64_t* lo, int64_t* hi) {
  const char* op = "index_range";
  BB_CHECK(ids.is_contiguous(), ShapeError, "{}: ids {} must be contiguous", op, shape_str(ids.shape()));
  const int64_t n = ids.numel();
  if (n == 0) {
    *lo = INT64_MAX;
    *hi = INT64_MIN;
    return;
  }
  cudaStream_t st = stream_for(ids);
  const unsigned nparts = grid_for(n, kThreads * 8, 512);
  Tensor buf = empty({2 + 2 * static_cast<int64_t>(nparts)}, {DType::I64, ids.device()});
  auto* out = static_cast<long long*>(buf.data_ptr());
  long long* part = out + 2;
  dispatch_index(ids.dtype(), op, [&](auto itag) {
    using I = typename decltype(itag)::type;
    BB_LAUNCH(nparts, kThreads, 0, st, id_minmax<I>)
    (part, ptr<I>(ids), n, static_cast<long long>(ignore), has_ignore);
    BB_CUDA_LAUNCH_CHECK();
  });
  BB_LAUNCH(1, kThreads, 0, st, id_minmax_final)(out, part, static_cast<int>(nparts));
  BB_CUDA_LAUNCH_CHECK();
  long long host[2] = {0, 0};
  BB_CUDA_CHECK(cudaMemcpyAsync(host, out, sizeof(host), cudaMemcpyDeviceToHost, st));
  BB_CUDA_CHECK(cudaStreamSynchronize(st));
  *lo = static_cast<int64_t>(host[0]);
  *hi = static_cast<int64_t>(host[1]);
}

}  // namespace barbell::gpu
