// CUDA reductions over a contiguous [A, R, I] view (R reduced): sum_dim (with a
// scale, for mean), max_dim (value and first index of the maximum, NaN wins) and
// max_dim's backward. Semantics mirror src/cpu/reduce.cpp; sums accumulate in fp32
// (fp64 for f64, int64 for integers and bool).
//
// Strategies, all deterministic (no atomics; every launch configuration depends
// only on the sizes and the device's SM count, and partials are combined in a fixed
// order):
//  - I == 1, rows of R contiguous elements: a warp per row when R is small, else a
//    block per row, 16-byte loads after an aligning head. When there are too few rows
//    to fill the GPU each row is split into chunks, one block each, whose partials go
//    to a workspace that a second kernel combines (a warp per output).
//  - I > 1: a block covers consecutive outputs a * I + i (coalesced along i) with up
//    to 8 threads along R each, combined in shared memory; R is also split across
//    blocks (with the same workspace scheme) when A * I is too small.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

constexpr int kThreads = 256;          // every kernel here runs 256-thread blocks
constexpr int kWarpRowMax = 1024;      // rows up to this length get a warp each
constexpr int64_t kMinRowChunk = 16384;  // fewest elements of a row one block takes when splitting
constexpr int kMinColSteps = 16;       // fewest loop steps per thread when splitting R across blocks
constexpr int kColMaxBy = 8;           // threads along R per output in the column kernel
constexpr int kMaxSplits = 1024;
constexpr int64_t kMaxGrid = int64_t(1) << 20;

template <typename T>
constexpr bool is_16bit = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// Reduction arithmetic: float (double for f64), int64 for integers and bool.
template <typename T>
using racc_t = std::conditional_t<std::is_integral_v<T>, int64_t, acc_t<T>>;

template <typename T>
__device__ __forceinline__ racc_t<T> racc(T v) {
  if constexpr (is_16bit<T>) return to_acc(v);
  else return static_cast<racc_t<T>>(v);
}

template <typename T>
__device__ __forceinline__ bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) return isnan(v);
  else return false;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};

// ---- the two reductions as policies ---------------------------------------------------------
// Each has a State, identity(), step(state, value, r) for one element at position r
// of the reduced dim, combine() (associative and commutative, bit for bit), shfl()
// for warp exchanges and finish(output index, state).

// out[o] = scale * sum. O is T, or int64 for integer and bool input.
template <typename T_, typename O>
struct SumOp {
  using T = T_;
  using A = racc_t<T>;
  using State = A;
  const T* x;
  O* out;
  double scale;

  __device__ static State identity() { return A(0); }
  __device__ static void step(State& s, A v, int64_t) { s += v; }
  __device__ static State combine(State a, State b) { return a + b; }
  __device__ static State shfl(State s, int mask) { return __shfl_xor_sync(0xffffffffu, s, mask); }
  __device__ void finish(int64_t o, State s) const {
    if constexpr (std::is_same_v<A, float>) {
      // Scale in double like the CPU, then round once to O.
      const float v = static_cast<float>(static_cast<double>(s) * scale);
      if constexpr (is_16bit<O>) out[o] = from_acc<O>(v);
      else out[o] = static_cast<O>(v);
    } else if constexpr (std::is_same_v<A, double>) {
      out[o] = static_cast<O>(s * scale);
    } else {
      out[o] = static_cast<O>(scale == 1.0 ? s : static_cast<int64_t>(static_cast<double>(s) * scale));
    }
  }
};

// values[o] / indices[o] = the max over r and its first index; a NaN beats everything
// (the first NaN wins). Either output may be null.
template <typename T_>
struct MaxOp {
  using T = T_;
  using A = racc_t<T>;
  struct State {
    A v;
    int64_t i;  // -1: no element yet
  };
  const T* x;
  T* values;
  int64_t* indices;
  int64_t R, I;

  __device__ static State identity() { return State{A(0), -1}; }
  // The CPU's scan in increasing r: replace on a strictly greater value or the first NaN.
  __device__ static void step(State& s, A v, int64_t r) {
    if (s.i < 0 || v > s.v || (is_nan(v) && !is_nan(s.v))) s = State{v, r};
  }
  __device__ static State combine(State a, State b) {
    if (b.i < 0) return a;
    if (a.i < 0) return b;
    const bool an = is_nan(a.v), bn = is_nan(b.v);
    if (an != bn) return an ? a : b;
    if (!an && a.v != b.v) return a.v > b.v ? a : b;
    return a.i < b.i ? a : b;  // equal (or both NaN): the first index
  }
  __device__ static State shfl(State s, int mask) {
    return State{__shfl_xor_sync(0xffffffffu, s.v, mask), __shfl_xor_sync(0xffffffffu, s.i, mask)};
  }
  __device__ void finish(int64_t o, State s) const {
    const int64_t a = o / I, i = o - a * I;
    if (values) values[o] = x[(a * R + s.i) * I + i];  // the element itself, as the CPU writes it
    if (indices) indices[o] = s.i;
  }
};

template <typename Op>
__device__ __forceinline__ typename Op::State warp_reduce(typename Op::State s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = Op::combine(s, Op::shfl(s, o));
  return s;
}

// The block's combined state, valid in thread 0. `scratch` holds 32 states.
template <typename Op>
__device__ __forceinline__ typename Op::State block_reduce(typename Op::State s, typename Op::State* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  s = warp_reduce<Op>(s);
  __syncthreads();  // scratch may still be read from the previous call
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < nwarps ? scratch[lane] : Op::identity();
    s = warp_reduce<Op>(s);
  }
  return s;
}

// ---- kernels --------------------------------------------------------------------------------

// Rows of `len` contiguous elements. Group g (a warp when WARP, else the block) takes
// split g % splits of row g / splits: elements [s * chunk, min(len, (s + 1) * chunk)).
// With one split the result is finished in place, else written to ws[row * splits + s].
template <typename Op, bool WARP>
__global__ void __launch_bounds__(kThreads)
    row_reduce_kernel(Op op, int64_t rows, int64_t len, int64_t chunk, int splits, typename Op::State* ws) {
  using T = typename Op::T;
  using State = typename Op::State;
  constexpr int VEC = 16 / sizeof(T);
  __shared__ State scratch[32];
  const int nthreads = WARP ? 32 : static_cast<int>(blockDim.x);
  const int tid = WARP ? static_cast<int>(threadIdx.x & 31) : static_cast<int>(threadIdx.x);
  const int gpb = WARP ? static_cast<int>(blockDim.x >> 5) : 1;  // groups per block
  const int64_t groups = rows * splits;
  const int64_t gstep = static_cast<int64_t>(gridDim.x) * gpb;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * gpb + (WARP ? threadIdx.x >> 5 : 0); g < groups; g += gstep) {
    const int64_t row = g / splits;
    const int s = static_cast<int>(g - row * splits);
    const int64_t begin = s * chunk;
    const int64_t m = std::min(len, begin + chunk) - begin;  // may be <= 0
    const T* q = op.x + row * len + begin;
    State st = Op::identity();
    if (m > 0) {
      // Scalar head up to the first 16-byte boundary, vectors, scalar tail.
      const int64_t head =
          std::min<int64_t>(m, ((16 - (reinterpret_cast<uintptr_t>(q) & 15)) & 15) / sizeof(T));
      for (int64_t j = tid; j < head; j += nthreads) Op::step(st, racc(q[j]), begin + j);
      const int64_t nv = (m - head) / VEC;
      const auto* qv = reinterpret_cast<const Vec<T, VEC>*>(q + head);
      for (int64_t k = tid; k < nv; k += nthreads) {
        const Vec<T, VEC> v = qv[k];
#pragma unroll
        for (int j = 0; j < VEC; ++j) Op::step(st, racc(v.v[j]), begin + head + k * VEC + j);
      }
      for (int64_t j = head + nv * VEC + tid; j < m; j += nthreads) Op::step(st, racc(q[j]), begin + j);
    }
    if constexpr (WARP) st = warp_reduce<Op>(st);
    else st = block_reduce<Op>(st, scratch);
    if (tid == 0) {
      if (splits == 1) op.finish(row, st);
      else ws[row * splits + s] = st;
    }
  }
}

// I > 1. Block (bx, by) over the flattened outputs o = a * I + i: thread (tx, ty) of
// tile t takes output t * bx + tx (consecutive i, so loads coalesce) and
// r = r0 + ty, r0 + ty + by, ... within this block's split [r0, r1). The by partial
// states of an output are then combined by a tree in shared memory.
template <typename Op>
__global__ void __launch_bounds__(kThreads)
    col_reduce_kernel(Op op, int64_t A, int64_t R, int64_t I, int64_t rchunk, int splits, typename Op::State* ws) {
  using State = typename Op::State;
  __shared__ State sm[kThreads];
  const int bx = static_cast<int>(blockDim.x), by = static_cast<int>(blockDim.y);
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t nout = A * I, tiles = (nout + bx - 1) / bx;
  const int s = static_cast<int>(blockIdx.y);
  const int64_t r0 = s * rchunk, r1 = std::min(R, r0 + rchunk);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t o = t * bx + tx;
    State st = Op::identity();
    if (o < nout) {
      const int64_t a = o / I, i = o - a * I;
      const auto* p = op.x + a * R * I + i;
      int64_t r = r0 + ty;
      // Four loads in flight per thread, then the steps in order.
      for (; r + 3 * by < r1; r += 4 * by) {
        const auto v0 = racc(p[r * I]), v1 = racc(p[(r + by) * I]);
        const auto v2 = racc(p[(r + 2 * by) * I]), v3 = racc(p[(r + 3 * by) * I]);
        Op::step(st, v0, r);
        Op::step(st, v1, r + by);
        Op::step(st, v2, r + 2 * by);
        Op::step(st, v3, r + 3 * by);
      }
      for (; r < r1; r += by) Op::step(st, racc(p[r * I]), r);
    }
    sm[ty * bx + tx] = st;
    __syncthreads();
    for (int h = by >> 1; h > 0; h >>= 1) {  // by is a power of two
      if (ty < h) sm[ty * bx + tx] = Op::combine(sm[ty * bx + tx], sm[(ty + h) * bx + tx]);
      __syncthreads();
    }
    if (ty == 0 && o < nout) {
      if (splits == 1) op.finish(o, sm[tx]);
      else ws[o * splits + s] = sm[tx];
    }
    __syncthreads();  // sm is reused by the next tile
  }
}

// Combines the `splits` partials of each output in a fixed order: a warp per output.
template <typename Op>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(Op op, int64_t nout, int splits, const typename Op::State* ws) {
  using State = typename Op::State;
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t wpb = blockDim.x >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t o = blockIdx.x * wpb + (threadIdx.x >> 5); o < nout; o += step) {
    State st = Op::identity();
    for (int s = lane; s < splits; s += 32) st = Op::combine(st, ws[o * splits + s]);
    st = warp_reduce<Op>(st);
    if (lane == 0) op.finish(o, st);
  }
}

// dx[a, r, i] = r == indices[a, i] ? dy[a, i] : 0, written once over all of dx. U is
// the index type (32-bit when the sizes allow it).
template <typename T, typename U>
__global__ void __launch_bounds__(kThreads)
    max_backward_kernel(T* dx, const T* dy, const int64_t* idx, U n, U R, U I) {
  const T zero = from_acc<T>(acc_t<T>(0));
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < static_cast<int64_t>(n);
       e += step) {
    const U ue = static_cast<U>(e);
    const U q = ue / I, i = ue - q * I;
    const U a = q / R, r = q - a * R;
    const U o = a * I + i;
    dx[e] = idx[o] == static_cast<int64_t>(r) ? dy[o] : zero;
  }
}

// ---- host side --------------------------------------------------------------------------------

int sm_count(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) device = 0;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    BB_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    if (n < 1) n = 1;
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Temporary device memory for partials, freed in stream order after the kernels
// that use it (the pool is stream-ordered on the launching thread's current stream).
class Workspace {
 public:
  Workspace(size_t bytes, int device) : bytes_(bytes), device_(device), p_(cuda_rt::alloc(bytes, device)) {}
  ~Workspace() { cuda_rt::free(p_, bytes_, device_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* get() const { return p_; }

 private:
  size_t bytes_;
  int device_;
  void* p_;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs `op` over x viewed as [A, R, I] (A * I > 0), choosing the strategy above.
template <typename Op>
void run_reduce(const Op& op, int64_t A, int64_t R, int64_t I, cudaStream_t stream) {
  using State = typename Op::State;
  int device = 0;
  BB_CUDA_CHECK(cudaGetDevice(&device));  // stream_for made the tensor's device current
  const int64_t nout = A * I;
  const int64_t target = 8 * static_cast<int64_t>(sm_count(device));  // blocks for one full wave

  int splits = 1;
  int64_t chunk = R;  // row split length (I == 1) or R chunk (I > 1)
  dim3 grid, block;
  bool warp_rows = false;
  if (I == 1) {
    if (R <= kWarpRowMax) {
      warp_rows = true;
      block = dim3(kThreads);
      grid = dim3(static_cast<unsigned>(std::min(ceil_div(A, kThreads / 32), kMaxGrid)));
    } else {
      if (A < target) {
        const int64_t want = std::min(ceil_div(target, A), R / kMinRowChunk);
        splits = static_cast<int>(std::clamp<int64_t>(want, 1, kMaxSplits));
      }
      chunk = ceil_div(ceil_div(R, splits), 64) * 64;  // multiples of 64 keep the chunks' alignment
      splits = static_cast<int>(ceil_div(R, chunk));
      block = dim3(kThreads);
      grid = dim3(static_cast<unsigned>(std::min(A * splits, kMaxGrid)));
    }
  } else {
    // Up to 8 threads along R per output (fewer when R is small), the rest along the
    // outputs; R is split across blocks when the outputs alone cannot fill the GPU.
    int by = 1;
    while (by < kColMaxBy && by < R) by *= 2;
    const int bx = kThreads / by;
    const int64_t tiles = ceil_div(nout, bx);
    if (tiles < target) {
      const int64_t want = std::min(ceil_div(target, tiles), R / (static_cast<int64_t>(by) * kMinColSteps));
      splits = static_cast<int>(std::clamp<int64_t>(want, 1, kMaxSplits));
    }
    chunk = ceil_div(R, splits);
    if (chunk == 0) chunk = 1;  // R == 0: one empty split
    splits = static_cast<int>(std::max<int64_t>(1, ceil_div(R, chunk)));
    block = dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by));
    grid = dim3(static_cast<unsigned>(std::min(tiles, kMaxGrid)), static_cast<unsigned>(splits));
  }

  std::unique_ptr<Workspace> ws;
  State* pws = nullptr;
  if (splits > 1) {
    ws = std::make_unique<Workspace>(static_cast<size_t>(nout) * splits * sizeof(State), device);
    pws = static_cast<State*>(ws->get());
  }
  if (I == 1) {
    if (warp_rows)
      BB_LAUNCH(grid, block, 0, stream, row_reduce_kernel<Op, true>)(op, A, R, chunk, splits, pws);
    else
      BB_LAUNCH(grid, block, 0, stream, row_reduce_kernel<Op, false>)(op, A, R, chunk, splits, pws);
  } else {
    BB_LAUNCH(grid, block, 0, stream, col_reduce_kernel<Op>)(op, A, R, I, chunk, splits, pws);
  }
  BB_CUDA_LAUNCH_CHECK();
  if (splits > 1) {
    const unsigned fgrid = static_cast<unsigned>(std::min(ceil_div(nout, kThreads / 32), kMaxGrid));
    BB_LAUNCH(fgrid, kThreads, 0, stream, finalize_kernel<Op>)(op, nout, splits, pws);
    BB_CUDA_LAUNCH_CHECK();
  }
}

void check_layout(const char* op, const Tensor& x, const Tensor& out, int64_t A, int64_t R, int64_t I) {
  BB_CHECK(A >= 0 && R >= 0 && I >= 0 && x.numel() == A * R * I, ShapeError,
           "{}: input {} is not [A={}, R={}, I={}]", op, shape_str(x.shape()), A, R, I);
  BB_CHECK(x.is_contiguous(), ValueError, "{}: the CUDA kernel needs a contiguous input, got {} with strides {}", op,
           shape_str(x.shape()), shape_str(x.strides()));
  BB_CHECK(out.numel() == A * I && out.is_contiguous(), ValueError,
           "{}: output {} (strides {}) must be a contiguous [A={}, I={}]", op, shape_str(out.shape()),
           shape_str(out.strides()), A, I);
}

}  // namespace

void sum_dim(const Tensor& out, const Tensor& x, int64_t A, int64_t R, int64_t I, double scale) {
  check_layout("sum", x, out, A, R, I);
  if (out.numel() == 0) return;
  cudaStream_t stream = stream_for(out);
  dispatch_all(x.dtype(), "sum", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = static_cast<const T*>(x.data_ptr());
    if (out.dtype() == x.dtype()) {
      run_reduce(SumOp<T, T>{px, ptr<T>(out), scale}, A, R, I, stream);
    } else if constexpr (std::is_integral_v<T>) {
      BB_CHECK(out.dtype() == DType::I64, DTypeError, "sum: output of a {} sum must be i64 or {}, got {} {}",
               dtype_name(x.dtype()), dtype_name(x.dtype()), dtype_name(out.dtype()), shape_str(out.shape()));
      run_reduce(SumOp<T, int64_t>{px, ptr<int64_t>(out), scale}, A, R, I, stream);
    } else {
      throw DTypeError(fmt::format("sum: output {} {} must have the input's dtype {}", dtype_name(out.dtype()),
                                   shape_str(out.shape()), dtype_name(x.dtype())));
    }
  });
}

void max_dim(const Tensor& values, const Tensor& indices, const Tensor& x, int64_t A, int64_t R, int64_t I) {
  const Tensor& out = indices.defined() ? indices : values;
  if (!out.defined()) return;  // nothing asked for
  check_layout("max", x, out, A, R, I);
  if (values.defined()) {
    check_layout("max", x, values, A, R, I);
    BB_CHECK(values.dtype() == x.dtype(), DTypeError, "max: values {} {} must have the input's dtype {}",
             dtype_name(values.dtype()), shape_str(values.shape()), dtype_name(x.dtype()));
  }
  if (indices.defined())
    BB_CHECK(indices.dtype() == DType::I64, DTypeError, "max: indices must be i64, got {} {}",
             dtype_name(indices.dtype()), shape_str(indices.shape()));
  if (out.numel() == 0) return;
  BB_CHECK(R > 0, ShapeError, "max: the reduced dim of input {} is empty (A={}, R={}, I={})", shape_str(x.shape()),
           A, R, I);
  cudaStream_t stream = stream_for(out);
  dispatch_all(x.dtype(), "max", [&](auto tag) {
    using T = typename decltype(tag)::type;
    MaxOp<T> op{static_cast<const T*>(x.data_ptr()), values.defined() ? ptr<T>(values) : nullptr,
                indices.defined() ? ptr<int64_t>(indices) : nullptr, R, I};
    run_reduce(op, A, R, I, stream);
  });
}

void max_dim_backward(const Tensor& dx, const Tensor& dy, const Tensor& indices, int64_t A, int64_t R, int64_t I) {
  const char* op = "max backward";
  check_layout(op, dx, dy, A, R, I);
  check_layout(op, dx, indices, A, R, I);
  BB_CHECK(dy.dtype() == dx.dtype(), DTypeError, "{}: dy {} {} and dx {} {} differ in dtype", op,
           dtype_name(dy.dtype()), shape_str(dy.shape()), dtype_name(dx.dtype()), shape_str(dx.shape()));
  BB_CHECK(indices.dtype() == DType::I64, DTypeError, "{}: indices must be i64, got {} {}", op,
           dtype_name(indices.dtype()), shape_str(indices.shape()));
  const int64_t n = dx.numel();
  if (n == 0) return;
  cudaStream_t stream = stream_for(dx);
  dispatch_float(dx.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* pdx = ptr<T>(dx);
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const int64_t* pi = static_cast<const int64_t*>(indices.data_ptr());
    const unsigned grid = grid_for(n, kThreads);
    if (n <= INT32_MAX) {
      BB_LAUNCH(grid, kThreads, 0, stream, max_backward_kernel<T, uint32_t>)
      (pdx, pdy, pi, static_cast<uint32_t>(n), static_cast<uint32_t>(R), static_cast<uint32_t>(I));
    } else {
      BB_LAUNCH(grid, kThreads, 0, stream, max_backward_kernel<T, uint64_t>)
      (pdx, pdy, pi, static_cast<uint64_t>(n), static_cast<uint64_t>(R), static_cast<uint64_t>(I));
    }
    BB_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace barbell::gpu
