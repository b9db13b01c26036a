// AdamW over many parameters in one launch (per device and parameter dtype, split
// only when the list outgrows one kernel-parameter block).
//
// The per-tensor descriptors (pointers, size, the step's bias corrections and weight
// decay as ready factors) travel in the kernel's parameters (__grid_constant__, up to
// the 32 KB CUDA 12.1+ allows), so there is no host buffer to keep alive and no copy.
// Each block takes one chunk of kChunk elements of one tensor: it finds its tensor by
// binary search over the prefix sums of chunk counts. Each thread updates 4 elements,
// with 16-byte moment loads when aligned. The arithmetic is cpu::adamw_step's, in the
// same order with the same constants, and rounded operation by operation (no FMA
// contraction), so f32 results equal the CPU's bit for bit.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <type_traits>
#include <utility>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 4;
constexpr int64_t kChunk = int64_t(kThreads) * kPerThread;  // elements per block
constexpr size_t kParamBytes = 32000;                         // under the 32764-byte limit

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};

// One tensor. S is the moments' type (float, or double for f64 parameters).
template <typename S>
struct Desc {
  void* param;
  const void* grad;
  S* m;
  S* v;
  float* master;   // null without a master copy
  int64_t n;
  S decay;         // 1 - lr * weight_decay
  S step_size;     // lr / (1 - beta1^step)
  S inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^step)
  int aligned;     // every pointer aligned for 4-element vector access
};

template <typename S>
struct BatchHead {
  int count;
  S b1, b2, omb1, omb2, eps;
};
template <typename S>
constexpr int kCap = static_cast<int>((kParamBytes - sizeof(BatchHead<S>) - 64) / (sizeof(Desc<S>) + sizeof(int)));

template <typename S>
struct Batch {
  int count;
  S b1, b2, omb1, omb2, eps;
  int block_start[kCap<S> + 1];  // prefix sums of the tensors' chunk counts
  Desc<S> d[kCap<S>];
};
static_assert(sizeof(Batch<float>) <= 32764 && sizeof(Batch<double>) <= 32764, "kernel parameters over 32764 bytes");

// Correctly rounded single operations: no contraction into FMA, as on the CPU.
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

// One element: updates m and v, returns the new weight (cpu::adamw_step's expression).
template <typename S>
__device__ __forceinline__ S adamw_update(S p, S g, S& m, S& v, const Batch<S>& b, const Desc<S>& d) {
  m = add(mul(b.b1, m), mul(b.omb1, g));
  v = add(mul(b.b2, v), mul(mul(b.omb2, g), g));
  return sub(mul(p, d.decay), div(mul(d.step_size, m), add(mul(sqrt_rn(v), d.inv_sqrt_bc2), b.eps)));
}

template <typename T, typename S>
__global__ void __launch_bounds__(kThreads) adamw_kernel(const __grid_constant__ Batch<S> b) {
  // The tensor whose chunk range holds this block.
  int lo = 0, hi = b.count - 1;
  const int blk = static_cast<int>(blockIdx.x);
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (b.block_start[mid] <= blk) lo = mid;
    else hi = mid - 1;
  }
  const Desc<S>& d = b.d[lo];
  const int64_t i0 = (int64_t(blk - b.block_start[lo]) * kThreads + threadIdx.x) * kPerThread;
  if (i0 >= d.n) return;
  T* param = static_cast<T*>(d.param);
  const T* grad = static_cast<const T*>(d.grad);
  if (d.aligned && i0 + kPerThread <= d.n) {
    using VT = Vec<T, kPerThread>;
    using VS = Vec<S, kPerThread>;
    const VT g4 = *reinterpret_cast<const VT*>(grad + i0);
    VS m4 = *reinterpret_cast<const VS*>(d.m + i0);
    VS v4 = *reinterpret_cast<const VS*>(d.v + i0);
    VT p4;
    VS w4;  // fp32 weights (master or param)
    if (d.master) {
      const Vec<float, kPerThread> ms = *reinterpret_cast<const Vec<float, kPerThread>*>(d.master + i0);
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) w4.v[j] = static_cast<S>(ms.v[j]);
    } else {
      p4 = *reinterpret_cast<const VT*>(param + i0);
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) w4.v[j] = static_cast<S>(to_acc(p4.v[j]));
    }
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      w4.v[j] = adamw_update<S>(w4.v[j], static_cast<S>(to_acc(g4.v[j])), m4.v[j], v4.v[j], b, d);
      p4.v[j] = from_acc<T>(static_cast<acc_t<T>>(w4.v[j]));
    }
    *reinterpret_cast<VS*>(d.m + i0) = m4;
    *reinterpret_cast<VS*>(d.v + i0) = v4;
    if (d.master) {
      Vec<float, kPerThread> ms;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) ms.v[j] = static_cast<float>(w4.v[j]);
      *reinterpret_cast<Vec<float, kPerThread>*>(d.master + i0) = ms;
    }
    *reinterpret_cast<VT*>(param + i0) = p4;
  } else {
    const int64_t end = ::min(d.n, i0 + kPerThread);
    for (int64_t i = i0; i < end; ++i) {
      S m = d.m[i], v = d.v[i];
      const S w = d.master ? static_cast<S>(d.master[i]) : static_cast<S>(to_acc(param[i]));
      const S x = adamw_update<S>(w, static_cast<S>(to_acc(grad[i])), m, v, b, d);
      d.m[i] = m;
      d.v[i] = v;
      if (d.master) d.master[i] = static_cast<float>(x);
      param[i] = from_acc<T>(static_cast<acc_t<T>>(x));
    }
  }
}

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Launches the items (all of dtype T, on one device) in as few launches as fit.
template <typename T>
void launch_group(const std::vector<const AdamWItem*>& items, double lr, double beta1, double beta2, double eps) {
  using S = std::conditional_t<std::is_same_v<T, double>, double, float>;
  cudaStream_t st = stream_for(items.front()->param);
  auto batch = std::make_unique<Batch<S>>();
  auto reset = [&] {
    batch->count = 0;
    batch->block_start[0] = 0;
    // 1 - beta in double first: in float, 1 - 0.999f is off by 1.3e-5 relative.
    batch->b1 = S(beta1);
    batch->b2 = S(beta2);
    batch->omb1 = S(1.0 - beta1);
    batch->omb2 = S(1.0 - beta2);
    batch->eps = S(eps);
  };
  auto flush = [&] {
    if (batch->count == 0) return;
    BB_LAUNCH(static_cast<unsigned>(batch->block_start[batch->count]), kThreads, 0, st, adamw_kernel<T, S>)
    (*batch);
    BB_CUDA_LAUNCH_CHECK();
    reset();
  };
  reset();
  for (const AdamWItem* it : items) {
    const int64_t n = it->param.numel();
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    BB_CHECK(chunks < INT_MAX, ShapeError, "adamw_multi: param {} is more than the kernel handles",
             shape_str(it->param.shape()));
    if (batch->count == kCap<S> || int64_t(batch->block_start[batch->count]) + chunks > INT_MAX) flush();
    const double bc1 = 1.0 - std::pow(beta1, double(it->step)), bc2 = 1.0 - std::pow(beta2, double(it->step));
    Desc<S>& d = batch->d[batch->count];
    d.param = it->param.data_ptr();
    d.grad = it->grad.data_ptr();
    d.m = ptr<S>(it->exp_avg);
    d.v = ptr<S>(it->exp_avg_sq);
    d.master = it->master.defined() ? ptr<float>(it->master) : nullptr;
    d.n = n;
    d.decay = S(1.0 - lr * it->weight_decay);
    d.step_size = S(lr / bc1);
    d.inv_sqrt_bc2 = S(1.0 / std::sqrt(bc2));
    const size_t pb = sizeof(T) * kPerThread, sb = sizeof(S) * kPerThread;
    d.aligned = aligned_to(d.param, pb) && aligned_to(d.grad, pb) && aligned_to(d.m, sb) && aligned_to(d.v, sb) &&
                (!d.master || aligned_to(d.master, sizeof(float) * kPerThread));
    batch->block_start[batch->count + 1] = batch->block_start[batch->count] + static_cast<int>(chunks);
    ++batch->count;
  }
  flush();
}

void check_item(const AdamWItem& it) {
  const char* op = "adamw_multi";
  BB_CHECK(it.param.defined() && it.grad.defined() && it.exp_avg.defined() && it.exp_avg_sq.defined(), ValueError,
           "{}: param, grad, exp_avg and exp_avg_sq must be defined", op);
  const Tensor& p = it.param;
  BB_CHECK(p.is_cuda(), DeviceError, "{}: param {} is on {}, not a GPU", op, shape_str(p.shape()), p.device().str());
  const DType dt = p.dtype();
  BB_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16 || dt == DType::F64, DTypeError,
           "{}: param {} is {}; the kernel takes f32, bf16, f16 or f64", op, shape_str(p.shape()), dtype_name(dt));
  const DType state = dt == DType::F64 ? DType::F64 : DType::F32;
  BB_CHECK(it.grad.dtype() == dt && it.exp_avg.dtype() == state && it.exp_avg_sq.dtype() == state, DTypeError,
           "{}: param {} is {}: grad must be {} and the moments {}, got {}, {}, {}", op, shape_str(p.shape()),
           dtype_name(dt), dtype_name(dt), dtype_name(state), dtype_name(it.grad.dtype()),
           dtype_name(it.exp_avg.dtype()), dtype_name(it.exp_avg_sq.dtype()));
  const bool master = it.master.defined();
  BB_CHECK(!master || (it.master.dtype() == DType::F32 && dt != DType::F64), DTypeError,
           "{}: master of param {} ({}) must be f32, for an f32, bf16 or f16 param, got {}", op,
           shape_str(p.shape()), dtype_name(dt), dtype_name(it.master.dtype()));
  for (const Tensor* t : {&it.grad, &it.exp_avg, &it.exp_avg_sq, master ? &it.master : &it.grad}) {
    BB_CHECK(t->device() == p.device(), DeviceError, "{}: param {} is on {} but its grad, a moment or master is on {}",
             op, shape_str(p.shape()), p.device().str(), t->device().str());
  }
  for (const Tensor* t : {&p, &it.grad, &it.exp_avg, &it.exp_avg_sq, master ? &it.master : &p}) {
    BB_CHECK(t->is_contiguous() && t->numel() == p.numel(), ShapeError,
             "{}: param {}: grad, moments and master must be contiguous with the same size, got {}", op,
             shape_str(p.shape()), shape_str(t->shape()));
  }
  BB_CHECK(it.step >= 1, ValueError, "{}: step is 1-based, got {} for param {}", op, it.step, shape_str(p.shape()));
}

}  // namespace

void adamw_multi(const std::vector<AdamWItem>& items, double lr, double beta1, double beta2, double eps) {
  // Groups by (device, dtype), keeping the items' order within each.
  std::map<std::pair<int, int>, std::vector<const AdamWItem*>> groups;
  for (const AdamWItem& it : items) {
    check_item(it);
    if (it.param.numel() == 0) continue;
    groups[{it.param.device().index(), static_cast<int>(it.param.dtype())}].push_back(&it);
  }
  for (const auto& entry : groups) {
    const std::vector<const AdamWItem*>& group = entry.second;
    dispatch_float(static_cast<DType>(entry.first.second), "adamw_multi", [&](auto tag) {
      launch_group<typename decltype(tag)::type>(group, lr, beta1, beta2, eps);
    });
  }
}

}  // namespace barbell::gpu
