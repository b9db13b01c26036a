// Sum of squares of all elements of a list of tensors (the global gradient norm), in
// one launch for the whole list (split only when it outgrows one kernel-parameter
// block) plus one small reduction.
//
// The tensors' descriptors travel in the kernel's parameters (__grid_constant__). Each
// block takes one chunk of kChunk elements of one tensor (found by binary search over
// the prefix sums of chunk counts), squares and adds them in fp32 per thread (fp64 for
// f64 tensors) with 16-byte loads when aligned, reduces over the block in fp64 and
// writes one partial. A single block then adds the partials in a fixed order: the same
// bits every run.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per block
constexpr size_t kParamBytes = 32000;

constexpr int kF64 = static_cast<int>(DType::F64), kBF16 = static_cast<int>(DType::BF16),
              kF16 = static_cast<int>(DType::F16);  // anything else is F32

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};

struct Desc {
  const void* p;
  int64_t n;
  int dtype;
  int aligned;  // 16-byte aligned
};
constexpr int kCap = static_cast<int>((kParamBytes - 64) / (sizeof(Desc) + sizeof(int)));
struct Batch {
  int count;
  int64_t part_offset;           // where this launch's partials start
  int block_start[kCap + 1];     // prefix sums of the tensors' chunk counts
  Desc d[kCap];
};
static_assert(sizeof(Batch) <= 32764, "kernel parameters over 32764 bytes");

// Sum of squares of x[begin, end) by this thread's share, in acc_t<T>.
template <typename T>
__device__ __forceinline__ acc_t<T> chunk_sumsq(const T* x, int64_t begin, int64_t end, bool aligned) {
  using A = acc_t<T>;
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  A acc = A(0);
  int64_t i = begin;
  if (aligned) {  // begin is a multiple of kChunk, so x + begin stays aligned
    const int64_t nvec = (end - begin) / VEC;
    const Vec<T, VEC>* xv = reinterpret_cast<const Vec<T, VEC>*>(x + begin);
    for (int64_t c = threadIdx.x; c < nvec; c += blockDim.x) {
      const Vec<T, VEC> v = xv[c];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const A a = to_acc(v.v[j]);
        acc += a * a;
      }
    }
    i = begin + nvec * VEC;
  }
  for (int64_t k = i + threadIdx.x; k < end; k += blockDim.x) {
    const A a = to_acc(x[k]);
    acc += a * a;
  }
  return acc;
}

__global__ void __launch_bounds__(kThreads) sumsq_kernel(const __grid_constant__ Batch b, double* __restrict__ part) {
  __shared__ double red[32];
  int lo = 0, hi = b.count - 1;
  const int blk = static_cast<int>(blockIdx.x);
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (b.block_start[mid] <= blk) lo = mid;
    else hi = mid - 1;
  }
  const Desc& d = b.d[lo];
  const int64_t begin = int64_t(blk - b.block_start[lo]) * kChunk, end = ::min(d.n, begin + kChunk);
  const bool al = d.aligned != 0;
  double acc;
  switch (d.dtype) {  // uniform over the block
    case kF64: acc = chunk_sumsq(static_cast<const double*>(d.p), begin, end, al); break;
    case kBF16: acc = chunk_sumsq(static_cast<const bf16*>(d.p), begin, end, al); break;
    case kF16: acc = chunk_sumsq(static_cast<const f16*>(d.p), begin, end, al); break;
    default: acc = chunk_sumsq(static_cast<const float*>(d.p), begin, end, al); break;
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) part[b.part_offset + blk] = acc;
}

// out = sum of part[0, n) in a fixed order (strided per thread, then the block tree).
__global__ void __launch_bounds__(1024) sumsq_final(void* out, int out_dt, const double* __restrict__ part, int64_t n) {
  __shared__ double red[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += part[i];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    if (out_dt == kF64) *static_cast<double*>(out) = acc;
    else *static_cast<float*>(out) = static_cast<float>(acc);
  }
}

}  // namespace

void sum_of_squares(const Tensor& out, const std::vector<Tensor>& xs) {
  const char* op = "sum_of_squares";
  BB_CHECK(out.numel() == 1 && (out.dtype() == DType::F32 || out.dtype() == DType::F64), ShapeError,
           "{}: out must be an f32 (or f64) scalar, got {} {}", op, dtype_name(out.dtype()), shape_str(out.shape()));
  std::vector<const Tensor*> list;
  int64_t total_blocks = 0;
  for (const Tensor& x : xs) {
    if (!x.defined()) continue;
    BB_CHECK(is_floating(x.dtype()), DTypeError, "{}: tensor {} is {}, not a float dtype", op, shape_str(x.shape()),
             dtype_name(x.dtype()));
    BB_CHECK(x.is_contiguous(), ShapeError, "{}: tensor {} must be contiguous", op, shape_str(x.shape()));
    BB_CHECK(x.device() == out.device(), DeviceError, "{}: tensor {} is on {} but out is on {}", op,
             shape_str(x.shape()), x.device().str(), out.device().str());
    if (x.numel() == 0) continue;
    const int64_t chunks = (x.numel() + kChunk - 1) / kChunk;
    BB_CHECK(chunks < INT_MAX - total_blocks, ShapeError, "{}: the tensors are more than the kernel handles", op);
    total_blocks += chunks;
    list.push_back(&x);
  }
  cudaStream_t st = stream_for(out);
  if (list.empty()) {
    BB_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.element_size(), st));  // 0.0
    return;
  }
  Tensor part = empty({total_blocks}, {DType::F64, out.device()});
  double* pp = ptr<double>(part);
  auto batch = std::make_unique<Batch>();
  batch->count = 0;
  batch->part_offset = 0;
  batch->block_start[0] = 0;
  auto flush = [&] {
    if (batch->count == 0) return;
    const int nblocks = batch->block_start[batch->count];
    BB_LAUNCH(static_cast<unsigned>(nblocks), kThreads, 0, st, sumsq_kernel)(*batch, pp);
    BB_CUDA_LAUNCH_CHECK();
    batch->part_offset += nblocks;
    batch->count = 0;
  };
  for (const Tensor* x : list) {
    if (batch->count == kCap) flush();
    Desc& d = batch->d[batch->count];
    d.p = x->data_ptr();
    d.n = x->numel();
    d.dtype = static_cast<int>(x->dtype());
    d.aligned = reinterpret_cast<uintptr_t>(d.p) % 16 == 0;
    batch->block_start[batch->count + 1] =
        batch->block_start[batch->count] + static_cast<int>((d.n + kChunk - 1) / kChunk);
    ++batch->count;
  }
  flush();
  BB_LAUNCH(1, 1024, 0, st, sumsq_final)(out.data_ptr(), static_cast<int>(out.dtype()), pp, total_blocks);
  BB_CUDA_LAUNCH_CHECK();
}

}  // namespace barbell::gpu
