// Fused softmax cross-entropy over rows of V logits, forward and backward, with no
// probability tensor and no host round trip.
//
// Forward: one block per row reads the row once with 16-byte loads (a scalar head and
// tail around the aligned body, so odd V such as 50257 works) keeping an online
// (max, sum of exp) per thread, combined over the block; lse = max + log(sum) is saved
// and the row's loss lse - x[target] goes to a scratch row. One block then adds the
// counted rows' losses in a fixed order (fp64) and writes the mean and the count: both
// deterministic. No counted row gives loss NaN and count 0, as the CPU's mean over
// nothing. Backward: one block per row writes (exp(x - lse) - onehot) * dloss / count,
// with the scale formed on the device (0 when count is 0, as on the CPU) and zero rows
// for ignored targets.
#include <math_constants.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));
constexpr int kUnroll = 4;  // vectors in flight per thread per step


// exp(x - m): the difference is formed first (exact enough whatever |m| is), then
// expf; a pre-scaled exp2f(fma(x, log2e, -m*log2e)) would lose ~ulp(|m|) in the
// exponent for large logits. The kernel is memory-bound, so expf costs nothing.
__device__ __forceinline__ float scaled(float m) { return m; }
__device__ __forceinline__ double scaled(double m) { return m; }
__device__ __forceinline__ float exp_shift(float x, float m) { return ::expf(x - m); }
__device__ __forceinline__ double exp_shift(double x, double m) { return ::exp(x - m); }
// exp(a - b)
__device__ __forceinline__ float exp_diff(float a, float b) { return ::expf(a - b); }
__device__ __forceinline__ double exp_diff(double a, double b) { return ::exp(a - b); }
__device__ __forceinline__ float acc_log(float v) { return ::logf(v); }
__device__ __forceinline__ double acc_log(double v) { return ::log(v); }

// Adds N values to a thread's online (max m, sum s of exp(x - m)). The max skips NaN
// (as std::max on the CPU does) and the sum takes it; -inf adds 0.
template <typename T, int N>
__device__ __forceinline__ void online_add(const T (&v)[N], acc_t<T>& m, acc_t<T>& s) {
  using A = acc_t<T>;
  A x[N];
  x[0] = to_acc(v[0]);
  A mv = x[0];
#pragma unroll
  for (int j = 1; j < N; ++j) {
    x[j] = to_acc(v[j]);
    mv = ::fmax(mv, x[j]);
  }
  if (mv > m) {
    s *= exp_diff(m, mv);  // 0 while m is -inf; NaN stays NaN
    m = mv;
  }
  const A ms = scaled(m);
#pragma unroll
  for (int j = 0; j < N; ++j) s += x[j] == -A(INFINITY) ? A(0) : exp_shift(x[j], ms);
}

// A row as a scalar head (up to the first 16-byte boundary; the whole row when vec is
// false), an aligned body of vectors and a scalar tail.
struct RowSplit {
  int64_t head, nbody, tail;  // tail starts at head + nbody * VEC
};
template <typename T>
__device__ __forceinline__ RowSplit split_row(const T* row, int64_t V, bool vec) {
  constexpr int VEC = kVec<T>;
  RowSplit r;
  const unsigned mis = static_cast<unsigned>(reinterpret_cast<uintptr_t>(row) & 15u);
  r.head = vec ? (mis ? (16 - mis) / sizeof(T) : 0) : V;
  if (r.head > V) r.head = V;
  r.nbody = (V - r.head) / VEC;
  r.tail = r.head + r.nbody * VEC;
  return r;
}

// Float dtype codes for scalars read and written on the device.
constexpr int kF64 = static_cast<int>(DType::F64), kBF16 = static_cast<int>(DType::BF16),
              kF16 = static_cast<int>(DType::F16);  // anything else is F32

__device__ __forceinline__ double load_scalar(const void* p, int dt) {
  switch (dt) {
    case kF64: return *static_cast<const double*>(p);
    case kBF16: return static_cast<double>(__bfloat162float(*static_cast<const bf16*>(p)));
    case kF16: return static_cast<double>(__half2float(*static_cast<const f16*>(p)));
    default: return static_cast<double>(*static_cast<const float*>(p));
  }
}
__device__ __forceinline__ void store_scalar(void* p, int dt, double v) {
  if (dt == kF64) *static_cast<double*>(p) = v;
  else *static_cast<float*>(p) = static_cast<float>(v);
}

// ---- forward ------------------------------------------------------------------------------
template <typename T, typename I, typename L>
__global__ void __launch_bounds__(256)
    ce_forward(L* __restrict__ lse, acc_t<T>* __restrict__ row_loss, const T* __restrict__ logits,
               const I* __restrict__ targets, int64_t V, long long ignore) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  using Vt = Vec<T, VEC>;
  __shared__ A red[32];
  const int64_t row = blockIdx.x;
  const long long t = static_cast<long long>(targets[row]);
  if (t == ignore) {  // not counted; the whole block leaves together
    if (threadIdx.x == 0) {
      lse[row] = L(0);
      row_loss[row] = A(0);
    }
    return;
  }
  const T* xr = logits + row * V;
  const RowSplit sp = split_row(xr, V, true);
  A m = -A(INFINITY), s = A(0);
  const int64_t tid = threadIdx.x, G = blockDim.x;
  for (int64_t i = tid; i < sp.head; i += G) {
    const T v[1] = {xr[i]};
    online_add(v, m, s);
  }
  for (int64_t i = sp.tail + tid; i < V; i += G) {
    const T v[1] = {xr[i]};
    online_add(v, m, s);
  }
  const Vt* body = reinterpret_cast<const Vt*>(xr + sp.head);
  for (int64_t base = tid; base < sp.nbody; base += G * kUnroll) {
    Vt buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * G < sp.nbody) buf[u] = body[base + u * G];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * G < sp.nbody) online_add(buf[u].v, m, s);
  }
  const A mb = block_max(m, red);
  const A sa = m == -A(INFINITY) ? s : s * exp_diff(m, mb);
  const A sb = block_sum(sa, red);
  if (threadIdx.x == 0) {
    const A l = mb + acc_log(sb);
    lse[row] = static_cast<L>(l);
    row_loss[row] = (t >= 0 && t < V) ? l - to_acc(xr[t]) : A(CUDART_NAN);
  }
}

// loss = mean of the counted rows' losses (NaN when none), count = their number.
template <typename I, typename A>
__global__ void __launch_bounds__(1024)
    ce_mean(void* loss, int loss_dt, void* count, int count_dt, const A* __restrict__ row_loss,
            const I* __restrict__ targets, int64_t rows, long long ignore) {
  __shared__ double sd[32];
  __shared__ long long sc[32];
  double tot = 0;
  long long cnt = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    if (static_cast<long long>(targets[r]) != ignore) {
      tot += static_cast<double>(row_loss[r]);
      ++cnt;
    }
  }
  tot = block_sum(tot, sd);
  cnt = block_sum(cnt, sc);
  if (threadIdx.x == 0) {
    store_scalar(loss, loss_dt, cnt > 0 ? tot / static_cast<double>(cnt) : CUDART_NAN);
    store_scalar(count, count_dt, static_cast<double>(cnt));
  }
}

// ---- backward -----------------------------------------------------------------------------
template <typename T, typename I, typename L>
__global__ void __launch_bounds__(256)
    ce_backward(T* __restrict__ d, const T* __restrict__ logits, const I* __restrict__ targets,
                const L* __restrict__ lse, const void* dloss, int dloss_dt, const void* count, int count_dt,
                int64_t V, long long ignore, bool vec) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  using Vt = Vec<T, VEC>;
  const int64_t row = blockIdx.x;
  const long long t = static_cast<long long>(targets[row]);
  const bool ign = t == ignore;
  T* dr = d + row * V;
  const T* xr = logits + row * V;
  const RowSplit sp = split_row(dr, V, vec);  // x has the same offset within 16 bytes
  const int64_t tid = threadIdx.x, G = blockDim.x;
  Vt* dbody = reinterpret_cast<Vt*>(dr + sp.head);
  if (ign) {
    const T z = from_acc<T>(A(0));
    for (int64_t i = tid; i < sp.head; i += G) dr[i] = z;
    for (int64_t i = sp.tail + tid; i < V; i += G) dr[i] = z;
    Vt zv;
#pragma unroll
    for (int j = 0; j < VEC; ++j) zv.v[j] = z;
    for (int64_t c = tid; c < sp.nbody; c += G) dbody[c] = zv;
    return;
  }
  const double cn = load_scalar(count, count_dt);
  const A sc = static_cast<A>(cn > 0 ? load_scalar(dloss, dloss_dt) / cn : 0.0);
  const A ls = scaled(static_cast<A>(lse[row]));
  // (exp(x - lse) - [i == t]) * scale
  auto grad = [&](A x, int64_t i) {
    const A g = exp_shift(x, ls) * sc;
    return from_acc<T>(i == t ? g - sc : g);
  };
  for (int64_t i = tid; i < sp.head; i += G) dr[i] = grad(to_acc(xr[i]), i);
  for (int64_t i = sp.tail + tid; i < V; i += G) dr[i] = grad(to_acc(xr[i]), i);
  const Vt* xbody = reinterpret_cast<const Vt*>(xr + sp.head);
  for (int64_t base = tid; base < sp.nbody; base += G * kUnroll) {
    Vt buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * G < sp.nbody) buf[u] = xbody[base + u * G];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = base + u * G;
      if (c < sp.nbody) {
        Vt o;
        const int64_t i0 = sp.head + c * VEC;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = grad(to_acc(buf[u].v[j]), i0 + j);
        dbody[c] = o;
      }
    }
  }
}

// ---- host side ------------------------------------------------------------------------------
// Threads per row: enough for a few 16-byte vectors each, 32 to 256.
int row_threads(int64_t V, int vec) {
  const int64_t nvec = (V + vec - 1) / vec;
  const int64_t want = (nvec + kUnroll - 1) / kUnroll;
  return static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, (want + 31) / 32 * 32)));
}

void check_contig(const char* op, const char* what, const Tensor& t, int64_t numel) {
  BB_CHECK(t.is_contiguous() && t.numel() == numel, ShapeError, "{}: {} must be contiguous with {} elements, got {}",
           op, what, numel, shape_str(t.shape()));
}
void check_scalar(const char* op, const char* what, const Tensor& t, bool any_float) {
  BB_CHECK(t.numel() == 1, ShapeError, "{}: {} must be a one-element tensor, got {}", op, what, shape_str(t.shape()));
  const DType dt = t.dtype();
  BB_CHECK(dt == DType::F32 || dt == DType::F64 || (any_float && (dt == DType::BF16 || dt == DType::F16)), DTypeError,
           "{}: {} must be {}, got {}", op, what, any_float ? "a float dtype" : "f32 or f64", dtype_name(dt));
}
void check_sizes(const char* op, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t rows,
                 int64_t V) {
  BB_CHECK(rows >= 0 && V >= 0 && rows <= INT_MAX, ShapeError, "{}: bad sizes rows={} V={} for logits {}", op, rows,
           V, shape_str(logits.shape()));
  check_contig(op, "logits", logits, rows * V);
  check_contig(op, "targets", targets, rows);
  check_contig(op, "lse", lse, rows);
}

// Calls f(Tag<T>{}, Tag<I>{}, Tag<L>{}) for the logits, targets and lse dtypes (lse
// F32, or F64 with f64 logits).
template <typename F>
void dispatch_ce(const char* op, const Tensor& logits, const Tensor& targets, const Tensor& lse, F&& f) {
  dispatch_float(logits.dtype(), op, [&](auto ttag) {
    using T = typename decltype(ttag)::type;
    dispatch_index(targets.dtype(), op, [&](auto itag) {
      if (lse.dtype() == DType::F32) {
        f(ttag, itag, Tag<float>{});
        return;
      }
      if constexpr (std::is_same_v<T, double>) {
        if (lse.dtype() == DType::F64) {
          f(ttag, itag, Tag<double>{});
          return;
        }
      }
      throw DTypeError(
          fmt::format("{}: lse must be f32 (or f64 for f64 logits), got {}", op, dtype_name(lse.dtype())));
    });
  });
}

}  // namespace

void cross_entropy(const Tensor& loss, const Tensor& count, const Tensor& lse, const Tensor& logits,
                   const Tensor& targets, int64_t rows, int64_t V, int64_t ignore_index) {
  const char* op = "cross_entropy";
  check_sizes(op, logits, targets, lse, rows, V);
  check_scalar(op, "loss", loss, false);
  check_scalar(op, "count", count, false);
  cudaStream_t st = stream_for(logits);
  dispatch_ce(op, logits, targets, lse, [&](auto ttag, auto itag, auto ltag) {
    using T = typename decltype(ttag)::type;
    using I = typename decltype(itag)::type;
    using L = typename decltype(ltag)::type;
    using A = acc_t<T>;
    Tensor row_loss;
    A* prl = nullptr;
    if (rows > 0) {
      row_loss = empty({rows}, {std::is_same_v<A, double> ? DType::F64 : DType::F32, logits.device()});
      prl = ptr<A>(row_loss);
      BB_LAUNCH(static_cast<unsigned>(rows), row_threads(V, kVec<T>), 0, st, ce_forward<T, I, L>)
      (ptr<L>(lse), prl, ptr<T>(logits), ptr<I>(targets), V, static_cast<long long>(ignore_index));
      BB_CUDA_LAUNCH_CHECK();
    }
    BB_LAUNCH(1, 1024, 0, st, ce_mean<I, A>)
    (loss.data_ptr(), static_cast<int>(loss.dtype()), count.data_ptr(), static_cast<int>(count.dtype()), prl,
     ptr<I>(targets), rows, static_cast<long long>(ignore_index));
    BB_CUDA_LAUNCH_CHECK();
  });
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, const Tensor& count, int64_t rows, int64_t V,
                            int64_t ignore_index) {
  const char* op = "cross_entropy backward";
  check_sizes(op, logits, targets, lse, rows, V);
  check_contig(op, "dlogits", dlogits, rows * V);
  BB_CHECK(dlogits.dtype() == logits.dtype(), DTypeError, "{}: dlogits is {} but logits are {}", op,
           dtype_name(dlogits.dtype()), dtype_name(logits.dtype()));
  check_scalar(op, "dloss", dloss, true);
  check_scalar(op, "count", count, false);
  if (rows == 0 || V == 0) return;
  cudaStream_t st = stream_for(logits);
  // Vector access needs d and x at the same offset within 16 bytes (true for fresh
  // allocations); otherwise every element goes scalar.
  const bool vec = (reinterpret_cast<uintptr_t>(dlogits.data_ptr()) & 15u) ==
                   (reinterpret_cast<uintptr_t>(logits.data_ptr()) & 15u);
  dispatch_ce(op, logits, targets, lse, [&](auto ttag, auto itag, auto ltag) {
    using T = typename decltype(ttag)::type;
    using I = typename decltype(itag)::type;
    using L = typename decltype(ltag)::type;
    BB_LAUNCH(static_cast<unsigned>(rows), row_threads(V, kVec<T>), 0, st, ce_backward<T, I, L>)
    (ptr<T>(dlogits), ptr<T>(logits), ptr<I>(targets), ptr<L>(lse), dloss.data_ptr(),
     static_cast<int>(dloss.dtype()), count.data_ptr(), static_cast<int>(count.dtype()), V,
     static_cast<long long>(ignore_index), vec);
    BB_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace barbell::gpu
