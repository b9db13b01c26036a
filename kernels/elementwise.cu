// CUDA elementwise kernels: strided cast-copy, fill, binary and unary ops, the
// activations' derivatives and where. Semantics mirror src/cpu/elementwise.cpp
// (arithmetic in float for f32/bf16/f16, double for f64 and for unary ops on
// integers, int64 for binary ops on integers and bool).
//
// Every op goes through launch() below, which merges the dims that are contiguous
// (or broadcast) for all operands together and then picks one of two kernels:
//  - vector_kernel: every operand is one dense run (stride 1) or a broadcast scalar
//    (stride 0) and every dense pointer is 16-byte aligned for its vector: 16-byte
//    loads and stores, a scalar tail;
//  - strided_kernel: up to kMaxDims merged dims, offsets computed per element from
//    the linear index with 32-bit arithmetic (multiply-shift division) when every
//    offset fits, 64-bit otherwise.
// Both are grid-stride loops over int64 element counts.
#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

constexpr int kMaxDims = 8;
constexpr int kThreads = 256;

template <typename T>
constexpr bool is_16bit = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// ---- conversions and math ----------------------------------------------------------

// cpu::convert on the device: bool is "!= 0" of the value as float, 16-bit types go
// through float both ways, everything else is a static_cast.
template <typename To, typename From>
__device__ __forceinline__ To cvt(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (is_16bit<From>) {
    return cvt<To>(to_acc(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return static_cast<float>(v) != 0.0f;
  } else if constexpr (is_16bit<To>) {
    return from_acc<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

// Precise (not intrinsic) math in float or double.
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return ::exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return ::log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return ::erf(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return ::fabs(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return ::pow(x, y); }

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

// The arithmetic type of each op family (cpu::acc_t and the CPU kernels' choices).
template <typename T>
using float_acc_t = acc_t<T>;  // float, or double for f64
template <typename T>
using binary_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, acc_t<T>>;
template <typename T>
using unary_acc_t = std::conditional_t<std::is_integral_v<T>, double, acc_t<T>>;

template <UnaryOp OP, typename A>
__device__ __forceinline__ A unary_apply(A x, A s) {
  if constexpr (OP == UnaryOp::Neg) return -x;
  else if constexpr (OP == UnaryOp::Exp) return m_exp(x);
  else if constexpr (OP == UnaryOp::Log) return m_log(x);
  else if constexpr (OP == UnaryOp::Sqrt) return m_sqrt(x);
  else if constexpr (OP == UnaryOp::Rsqrt) return A(1) / m_sqrt(x);  // not rsqrt(): match the CPU's rounding
  else if constexpr (OP == UnaryOp::Tanh) return m_tanh(x);
  else if constexpr (OP == UnaryOp::Relu) return x > A(0) ? x : A(0);
  else if constexpr (OP == UnaryOp::Silu) return x / (A(1) + m_exp(-x));
  else if constexpr (OP == UnaryOp::GeluTanh) {
    const A u = A(kSqrt2OverPi) * (x + A(0.044715) * x * x * x);
    return A(0.5) * x * (A(1) + m_tanh(u));
  } else if constexpr (OP == UnaryOp::GeluErf) return A(0.5) * x * (A(1) + m_erf(x * A(kInvSqrt2)));
  else if constexpr (OP == UnaryOp::Abs) return m_abs(x);
  else if constexpr (OP == UnaryOp::AddScalar) return x + s;
  else if constexpr (OP == UnaryOp::MulScalar) return x * s;
  else if constexpr (OP == UnaryOp::PowScalar) return s == A(2) ? x * x : m_pow(x, s);  // x*x == pow(x, 2) exactly
  else if constexpr (OP == UnaryOp::RSubScalar) return s - x;
  else return s / x;  // RDivScalar
}

// The same with the op known only at run time: the integer dtypes use it, so that
// they get one kernel instead of one per op (they are rare and memory-bound).
template <typename A>
__device__ __forceinline__ A unary_apply_rt(UnaryOp op, A x, A s) {
  switch (op) {
    case UnaryOp::Neg: return unary_apply<UnaryOp::Neg>(x, s);
    case UnaryOp::Exp: return unary_apply<UnaryOp::Exp>(x, s);
    case UnaryOp::Log: return unary_apply<UnaryOp::Log>(x, s);
    case UnaryOp::Sqrt: return unary_apply<UnaryOp::Sqrt>(x, s);
    case UnaryOp::Rsqrt: return unary_apply<UnaryOp::Rsqrt>(x, s);
    case UnaryOp::Tanh: return unary_apply<UnaryOp::Tanh>(x, s);
    case UnaryOp::Relu: return unary_apply<UnaryOp::Relu>(x, s);
    case UnaryOp::Silu: return unary_apply<UnaryOp::Silu>(x, s);
    case UnaryOp::GeluTanh: return unary_apply<UnaryOp::GeluTanh>(x, s);
    case UnaryOp::GeluErf: return unary_apply<UnaryOp::GeluErf>(x, s);
    case UnaryOp::Abs: return unary_apply<UnaryOp::Abs>(x, s);
    case UnaryOp::AddScalar: return unary_apply<UnaryOp::AddScalar>(x, s);
    case UnaryOp::MulScalar: return unary_apply<UnaryOp::MulScalar>(x, s);
    case UnaryOp::PowScalar: return unary_apply<UnaryOp::PowScalar>(x, s);
    case UnaryOp::RSubScalar: return unary_apply<UnaryOp::RSubScalar>(x, s);
    case UnaryOp::RDivScalar: return unary_apply<UnaryOp::RDivScalar>(x, s);
  }
  return x;
}

// f'(x) of the activations (cpu unary_grad).
template <UnaryOp OP, typename A>
__device__ __forceinline__ A unary_grad(A x) {
  if constexpr (OP == UnaryOp::Relu) {
    return x > A(0) ? A(1) : A(0);
  } else if constexpr (OP == UnaryOp::Silu) {
    const A sg = A(1) / (A(1) + m_exp(-x));
    return sg * (A(1) + x * (A(1) - sg));
  } else if constexpr (OP == UnaryOp::GeluTanh) {
    const A u = A(kSqrt2OverPi) * (x + A(0.044715) * x * x * x);
    const A th = m_tanh(u);
    const A du = A(kSqrt2OverPi) * (A(1) + A(3 * 0.044715) * x * x);
    return A(0.5) * (A(1) + th) + A(0.5) * x * (A(1) - th * th) * du;
  } else if constexpr (OP == UnaryOp::GeluErf) {
    const A cdf = A(0.5) * (A(1) + m_erf(x * A(kInvSqrt2)));
    const A pdf = m_exp(A(-0.5) * x * x) * A(kInvSqrt2Pi);
    return cdf + x * pdf;
  } else {
    static_assert(OP == UnaryOp::Abs, "no derivative kernel for this op");
    return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
  }
}

// Integer add, sub and mul wrap on overflow (two's complement, as the CPU backend and
// PyTorch): computed in the unsigned type, where wrapping is defined.
template <BinaryOp OP, typename A>
__device__ __forceinline__ A wrapping(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    const U x = static_cast<U>(a), y = static_cast<U>(b);
    if constexpr (OP == BinaryOp::Add) return static_cast<A>(x + y);
    else if constexpr (OP == BinaryOp::Sub) return static_cast<A>(x - y);
    else return static_cast<A>(x * y);
  } else {
    if constexpr (OP == BinaryOp::Add) return a + b;
    else if constexpr (OP == BinaryOp::Sub) return a - b;
    else return a * b;
  }
}

template <BinaryOp OP, typename A>
__device__ __forceinline__ A binary_apply(A a, A b) {
  if constexpr (OP == BinaryOp::Add) return wrapping<BinaryOp::Add>(a, b);
  else if constexpr (OP == BinaryOp::Sub) return wrapping<BinaryOp::Sub>(a, b);
  else if constexpr (OP == BinaryOp::Mul) return wrapping<BinaryOp::Mul>(a, b);
  else if constexpr (OP == BinaryOp::Div) return a / b;
  else if constexpr (OP == BinaryOp::Pow) {
    if constexpr (std::is_integral_v<A>) return static_cast<A>(::pow(static_cast<double>(a), static_cast<double>(b)));
    else return m_pow(a, b);
  } else if constexpr (OP == BinaryOp::Max) return a > b ? a : b;
  else return a == b ? A(1) : A(0);  // Eq
}

template <typename A>
__device__ __forceinline__ A binary_apply_rt(BinaryOp op, A a, A b) {
  switch (op) {
    case BinaryOp::Add: return binary_apply<BinaryOp::Add>(a, b);
    case BinaryOp::Sub: return binary_apply<BinaryOp::Sub>(a, b);
    case BinaryOp::Mul: return binary_apply<BinaryOp::Mul>(a, b);
    case BinaryOp::Div: return binary_apply<BinaryOp::Div>(a, b);
    case BinaryOp::Pow: return binary_apply<BinaryOp::Pow>(a, b);
    case BinaryOp::Max: return binary_apply<BinaryOp::Max>(a, b);
    case BinaryOp::Eq: return binary_apply<BinaryOp::Eq>(a, b);
  }
  return a;
}

// ---- the per-element functors --------------------------------------------------------

template <typename D, typename S>
struct CopyF {
  __device__ D operator()(S v) const { return cvt<D>(v); }
};

template <typename T>
struct FillF {
  using Stored = std::conditional_t<is_16bit<T>, float, T>;  // 16-bit: rounded on the device
  Stored v;
  __device__ T operator()() const { return cvt<T>(v); }
};

// out = a op (alpha * b) in A; Eq writes bool.
template <BinaryOp OP, typename T, typename O>
struct BinaryF {
  using A = binary_acc_t<T>;
  A alpha;
  __device__ O operator()(T a, T b) const {
    const A x = cvt<A>(a), y = wrapping<BinaryOp::Mul>(alpha, cvt<A>(b));
    if constexpr (OP == BinaryOp::Eq) return x == y;
    else return cvt<O>(binary_apply<OP>(x, y));
  }
};
// Integer and bool operands: the op chosen at run time (one kernel per dtype).
template <typename T, typename O>
struct BinaryRtF {
  using A = binary_acc_t<T>;
  A alpha;
  BinaryOp op;
  __device__ O operator()(T a, T b) const {
    // Eq gives 1 or 0 and O is bool; a bool result of another op is "!= 0".
    return cvt<O>(binary_apply_rt(op, cvt<A>(a), wrapping<BinaryOp::Mul>(alpha, cvt<A>(b))));
  }
};

template <UnaryOp OP, typename T>
struct UnaryF {
  using A = unary_acc_t<T>;
  A s;
  __device__ T operator()(T x) const { return cvt<T>(unary_apply<OP>(cvt<A>(x), s)); }
};
template <typename T>
struct UnaryRtF {
  using A = unary_acc_t<T>;
  A s;
  UnaryOp op;
  __device__ T operator()(T x) const { return cvt<T>(unary_apply_rt(op, cvt<A>(x), s)); }
};

// dx = dy * f'(x)
template <UnaryOp OP, typename T>
struct GradF {
  using A = float_acc_t<T>;
  __device__ T operator()(T dy, T x) const { return cvt<T>(cvt<A>(dy) * unary_grad<OP>(cvt<A>(x))); }
};

// cond is read as bytes (any nonzero byte is true).
template <typename T>
struct WhereF {
  __device__ T operator()(uint8_t c, T a, T b) const { return c ? a : b; }
};

// ---- vectorised contiguous kernel ---------------------------------------------------------

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};

template <int VEC, typename T>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* p, int64_t v, bool bcast) {
  if (bcast) {
    Vec<T, VEC> r;
    const T x = p[0];
#pragma unroll
    for (int j = 0; j < VEC; ++j) r.v[j] = x;
    return r;
  }
  return reinterpret_cast<const Vec<T, VEC>*>(p)[v];
}

template <typename Out, int VEC, typename F, typename... Ts>
__device__ __forceinline__ Vec<Out, VEC> apply_vec(const F& f, const Vec<Ts, VEC>&... x) {
  Vec<Out, VEC> r;
#pragma unroll
  for (int j = 0; j < VEC; ++j) r.v[j] = f(x.v[j]...);
  return r;
}

// Bit K of `bcast` set: input K is one value broadcast to all elements.
template <int VEC, typename F, typename Out, size_t... K, typename... Ins>
__device__ __forceinline__ void vector_body(const F& f, int64_t n, unsigned bcast, Out* out,
                                            std::index_sequence<K...>, const Ins*... in) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  for (int64_t v = tid; v < nvec; v += step)
    reinterpret_cast<Vec<Out, VEC>*>(out)[v] =
        apply_vec<Out, VEC>(f, load_vec<VEC>(in, v, ((bcast >> K) & 1u) != 0)...);
  for (int64_t i = nvec * VEC + tid; i < n; i += step) out[i] = f((((bcast >> K) & 1u) ? in[0] : in[i])...);
}

template <int VEC, typename F, typename Out, typename... Ins>
__global__ void __launch_bounds__(kThreads)
    vector_kernel(F f, int64_t n, unsigned bcast, Out* out, const Ins*... in) {
  vector_body<VEC>(f, n, bcast, out, std::index_sequence_for<Ins...>{}, in...);
}

// ---- strided kernel -----------------------------------------------------------------------

// n / d for n, d < 2^31 by a multiply and a shift (Granlund-Montgomery round-up method;
// the sum is taken in 64 bits).
struct Div32 {
  uint32_t d = 1, m = 1, s = 0;
  Div32() = default;
  explicit Div32(uint32_t divisor) : d(divisor) {
    while ((uint64_t(1) << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(__umulhi(n, m)) + n) >> s);
  }
};
struct Div64 {
  uint64_t d = 1;
  Div64() = default;
  explicit Div64(uint64_t divisor) : d(divisor) {}
  __device__ __forceinline__ uint64_t div(uint64_t n) const { return n / d; }
};

// Offsets of N operands for a linear index over the merged shape. Dims are stored
// innermost first; the outermost needs no division.
template <int N, bool Wide>
struct Indexer {
  using lin_t = std::conditional_t<Wide, uint64_t, uint32_t>;
  using off_t = std::conditional_t<Wide, int64_t, int32_t>;
  using div_t = std::conditional_t<Wide, Div64, Div32>;
  int ndim = 1;
  div_t size[kMaxDims];
  off_t stride[kMaxDims][N];

  __device__ __forceinline__ void offsets(lin_t i, off_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
      if (d == ndim - 1) {
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += static_cast<off_t>(i) * stride[d][k];
        break;
      }
      const lin_t q = size[d].div(i);
      const off_t r = static_cast<off_t>(i - q * size[d].d);
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += r * stride[d][k];
      i = q;
    }
  }
};

template <typename F, typename Out, typename Off, size_t... K, typename... Ins>
__device__ __forceinline__ void strided_apply(const F& f, Out* out, const Off* off, std::index_sequence<K...>,
                                              const Ins*... in) {
  out[off[0]] = f(in[off[K + 1]]...);
}

template <bool Wide, typename F, typename Out, typename... Ins>
__global__ void __launch_bounds__(kThreads)
    strided_kernel(F f, int64_t n, Indexer<1 + sizeof...(Ins), Wide> ix, Out* out, const Ins*... in) {
  using IX = Indexer<1 + sizeof...(Ins), Wide>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    typename IX::off_t off[1 + sizeof...(Ins)];
    ix.offsets(static_cast<typename IX::lin_t>(i), off);
    strided_apply(f, out, off, std::index_sequence_for<Ins...>{}, in...);
  }
}

// ---- host side: layout and launch ----------------------------------------------------------

// Strides of t broadcast to `shape` (0 on broadcast dims), as the CPU backend does.
Shape bcast_strides(const Tensor& t, const Shape& shape, const char* op) {
  BB_CHECK(t.shape().size() <= shape.size(), ShapeError, "{}: cannot broadcast {} to {}", op,
           shape_str(t.shape()), shape_str(shape));
  Shape st(shape.size(), 0);
  const size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i) {
    const int64_t ts = t.shape()[i], s = shape[lead + i];
    BB_CHECK(ts == s || ts == 1, ShapeError, "{}: cannot broadcast {} to {}", op, shape_str(t.shape()),
             shape_str(shape));
    st[lead + i] = ts == 1 && s != 1 ? 0 : t.strides()[i];
  }
  return st;
}

// The shape with size-1 dims dropped and neighbours merged wherever every operand
// allows it (cpu::make_plan); outermost first, never empty.
template <size_t N>
struct Layout {
  Shape shape;
  std::array<Shape, N> strides;
};
template <size_t N>
Layout<N> coalesce(const Shape& shape, const std::array<Shape, N>& strides) {
  Layout<N> L;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !L.shape.empty();
    for (size_t k = 0; k < N && merge; ++k) merge = L.strides[k].back() == strides[k][d] * shape[d];
    if (merge) {
      L.shape.back() *= shape[d];
      for (size_t k = 0; k < N; ++k) L.strides[k].back() = strides[k][d];
    } else {
      L.shape.push_back(shape[d]);
      for (size_t k = 0; k < N; ++k) L.strides[k].push_back(strides[k][d]);
    }
  }
  if (L.shape.empty()) {
    L.shape.push_back(1);
    for (size_t k = 0; k < N; ++k) L.strides[k].push_back(1);
  }
  return L;
}

// Can every operand's offsets (and the linear index) be computed in int32?
template <size_t N>
bool fits_32bit(const Layout<N>& L, int64_t n) {
  if (n > INT32_MAX) return false;  // then every size is below 2^31 too
  for (size_t k = 0; k < N; ++k) {
    int64_t span = 0;
    for (size_t d = 0; d < L.shape.size(); ++d) {
      const int64_t st = std::llabs(L.strides[k][d]);
      if (L.shape[d] > 1 && st > INT32_MAX) return false;
      span += (L.shape[d] - 1) * st;
      if (span > INT32_MAX) return false;
    }
  }
  return true;
}

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename Out, typename... Ins>
constexpr int vec_width() {
  size_t m = sizeof(Out);
  ((m = std::max(m, sizeof(Ins))), ...);
  return static_cast<int>(16 / m);
}

template <bool Wide, size_t N, typename F, typename Out, typename... Ins>
void launch_strided(const Layout<N>& L, int64_t n, cudaStream_t stream, const F& f, Out* out, const Ins*... in) {
  Indexer<static_cast<int>(N), Wide> ix{};
  const int nd = static_cast<int>(L.shape.size());
  ix.ndim = nd;
  for (int d = 0; d < nd; ++d) {
    const size_t src = static_cast<size_t>(nd - 1 - d);  // innermost first
    ix.size[d] = typename decltype(ix)::div_t(static_cast<typename decltype(ix)::lin_t>(L.shape[src]));
    for (size_t k = 0; k < N; ++k) ix.stride[d][k] = static_cast<typename decltype(ix)::off_t>(L.strides[k][src]);
  }
  BB_LAUNCH(grid_for(n, kThreads), kThreads, 0, stream, strided_kernel<Wide>)(f, n, ix, out, in...);
  BB_CUDA_LAUNCH_CHECK();
}

// Runs out[...] = f(in[...]...) over out's shape. strides[0] are out's, strides[k+1]
// input k's, already broadcast to out's shape.
template <typename F, typename Out, typename... Ins>
void launch(const char* op, const Tensor& out, const std::array<Shape, 1 + sizeof...(Ins)>& strides, const F& f,
            Out* po, const Ins*... pin) {
  constexpr size_t N = 1 + sizeof...(Ins);
  const int64_t n = out.numel();
  if (n == 0) return;
  const Layout<N> L = coalesce(out.shape(), strides);
  cudaStream_t stream = stream_for(out);
  constexpr int VEC = vec_width<Out, Ins...>();

  // Fast path: one dense run for out, each input dense or a broadcast scalar.
  if (L.shape.size() == 1 && L.strides[0][0] == 1) {
    bool ok = is_aligned(po, VEC * sizeof(Out));
    unsigned bcast = 0;
    [[maybe_unused]] size_t k = 0;
    [[maybe_unused]] auto check = [&](const auto* p) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(p)>>;
      const int64_t st = L.strides[k + 1][0];
      if (st == 0) bcast |= 1u << k;
      else if (st != 1 || !is_aligned(p, VEC * sizeof(T))) ok = false;
      ++k;
    };
    (check(pin), ...);
    if (ok) {
      BB_LAUNCH(grid_for((n + VEC - 1) / VEC, kThreads), kThreads, 0, stream, vector_kernel<VEC>)
      (f, n, bcast, po, pin...);
      BB_CUDA_LAUNCH_CHECK();
      return;
    }
  }
  BB_CHECK(L.shape.size() <= static_cast<size_t>(kMaxDims), ShapeError,
           "{}: output {} (strides {}) needs {} dims after merging contiguous and broadcast dims; the CUDA "
           "kernel takes at most {} (make an operand contiguous first)",
           op, shape_str(out.shape()), shape_str(out.strides()), L.shape.size(), kMaxDims);
  if (fits_32bit(L, n)) launch_strided<false>(L, n, stream, f, po, pin...);
  else launch_strided<true>(L, n, stream, f, po, pin...);
}

template <typename T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}

// cpu cast_to: the value as the CPU's fill stores it (16-bit: the float, rounded on
// the device).
template <typename T>
typename FillF<T>::Stored fill_value(double v) {
  if constexpr (std::is_same_v<T, bool>) return v != 0.0;
  else if constexpr (is_16bit<T>) return static_cast<float>(v);
  else if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<int64_t>(v));
  else return static_cast<T>(v);
}

using cpu::UnaryTag;
using cpu::with_unary_op;
template <BinaryOp OP>
using BinaryTag = std::integral_constant<BinaryOp, OP>;

const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "add";
    case BinaryOp::Sub: return "sub";
    case BinaryOp::Mul: return "mul";
    case BinaryOp::Div: return "div";
    case BinaryOp::Pow: return "pow";
    case BinaryOp::Max: return "maximum";
    case BinaryOp::Eq: return "eq";
  }
  return "binary op";
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------

void copy(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  const std::array<Shape, 2> st{dst.strides(), bcast_strides(src, dst.shape(), "copy")};
  if (dst.dtype() == src.dtype()) {
    // Both dense in the same order: a device memcpy.
    const Layout<2> L = coalesce(dst.shape(), st);
    if (L.shape.size() == 1 && L.strides[0][0] == 1 && L.strides[1][0] == 1) {
      cudaStream_t stream = stream_for(dst);
      if (dst.data_ptr() != src.data_ptr())
        BB_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream));
      return;
    }
  }
  dispatch_all(dst.dtype(), "copy", [&](auto dtag) {
    using D = typename decltype(dtag)::type;
    dispatch_all(src.dtype(), "copy", [&](auto stag) {
      using S = typename decltype(stag)::type;
      launch("copy", dst, st, CopyF<D, S>{}, ptr<D>(dst), cptr<S>(src));
    });
  });
}

void fill(const Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const std::array<Shape, 1> st{dst.strides()};
  const Layout<1> L = coalesce(dst.shape(), st);
  if (L.shape.size() == 1 && L.strides[0][0] == 1 && value == 0.0 && !std::signbit(value)) {
    // +0 is all zero bytes in every dtype.
    BB_CUDA_CHECK(cudaMemsetAsync(dst.data_ptr(), 0, dst.nbytes(), stream_for(dst)));
    return;
  }
  dispatch_all(dst.dtype(), "fill", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("fill", dst, st, FillF<T>{fill_value<T>(value)}, ptr<T>(dst));
  });
}

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  const char* name = binary_name(op);
  BB_CHECK(a.dtype() == b.dtype(), DTypeError, "{}: dtypes differ: {} {} and {} {}", name, dtype_name(a.dtype()),
           shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
  const DType odt = op == BinaryOp::Eq ? DType::Bool : a.dtype();
  BB_CHECK(out.dtype() == odt, DTypeError, "{}: output is {} {}, expected {}", name, dtype_name(out.dtype()),
           shape_str(out.shape()), dtype_name(odt));
  if (out.numel() == 0) return;
  const std::array<Shape, 3> st{out.strides(), bcast_strides(a, out.shape(), name), bcast_strides(b, out.shape(), name)};
  dispatch_all(a.dtype(), name, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = binary_acc_t<T>;
    const A al = static_cast<A>(alpha);
    const T* pa = cptr<T>(a);
    const T* pb = cptr<T>(b);
    if constexpr (std::is_integral_v<T>) {
      if (op == BinaryOp::Eq) launch(name, out, st, BinaryRtF<T, bool>{al, op}, ptr<bool>(out), pa, pb);
      else launch(name, out, st, BinaryRtF<T, T>{al, op}, ptr<T>(out), pa, pb);
    } else {
      auto go = [&](auto otag) {
        constexpr BinaryOp OP = decltype(otag)::value;
        using O = std::conditional_t<OP == BinaryOp::Eq, bool, T>;
        launch(name, out, st, BinaryF<OP, T, O>{al}, ptr<O>(out), pa, pb);
      };
      switch (op) {
        case BinaryOp::Add: return go(BinaryTag<BinaryOp::Add>{});
        case BinaryOp::Sub: return go(BinaryTag<BinaryOp::Sub>{});
        case BinaryOp::Mul: return go(BinaryTag<BinaryOp::Mul>{});
        case BinaryOp::Div: return go(BinaryTag<BinaryOp::Div>{});
        case BinaryOp::Pow: return go(BinaryTag<BinaryOp::Pow>{});
        case BinaryOp::Max: return go(BinaryTag<BinaryOp::Max>{});
        case BinaryOp::Eq: return go(BinaryTag<BinaryOp::Eq>{});
      }
      throw ValueError(fmt::format("binary op: unknown op {}", static_cast<int>(op)));
    }
  });
}

void unary(UnaryOp op, const Tensor& out, const Tensor& x, double scalar) {
  BB_CHECK(out.dtype() == x.dtype(), DTypeError, "unary op: output {} {} and input {} {} differ in dtype",
           dtype_name(out.dtype()), shape_str(out.shape()), dtype_name(x.dtype()), shape_str(x.shape()));
  if (out.numel() == 0) return;
  const std::array<Shape, 2> st{out.strides(), bcast_strides(x, out.shape(), "unary op")};
  dispatch_all(x.dtype(), "unary op", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      throw DTypeError(fmt::format("unary op: not defined on bool tensors, got bool {}", shape_str(x.shape())));
    } else {
      using A = unary_acc_t<T>;
      const A s = static_cast<A>(scalar);
      if constexpr (std::is_integral_v<T>) {
        launch("unary op", out, st, UnaryRtF<T>{s, op}, ptr<T>(out), cptr<T>(x));
      } else {
        with_unary_op(op, [&](auto otag) {
          constexpr UnaryOp OP = decltype(otag)::value;
          launch("unary op", out, st, UnaryF<OP, T>{s}, ptr<T>(out), cptr<T>(x));
        });
      }
    }
  });
}

void unary_backward(UnaryOp op, const Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* name = "activation backward";
  BB_CHECK(dx.dtype() == x.dtype() && dy.dtype() == x.dtype(), DTypeError,
           "{}: dtypes differ: dx {} {}, dy {} {}, x {} {}", name, dtype_name(dx.dtype()), shape_str(dx.shape()),
           dtype_name(dy.dtype()), shape_str(dy.shape()), dtype_name(x.dtype()), shape_str(x.shape()));
  if (dx.numel() == 0) return;
  const std::array<Shape, 3> st{dx.strides(), bcast_strides(dy, dx.shape(), name), bcast_strides(x, dx.shape(), name)};
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto go = [&](auto otag) {
      constexpr UnaryOp OP = decltype(otag)::value;
      launch(name, dx, st, GradF<OP, T>{}, ptr<T>(dx), cptr<T>(dy), cptr<T>(x));
    };
    switch (op) {
      case UnaryOp::Relu: return go(UnaryTag<UnaryOp::Relu>{});
      case UnaryOp::Silu: return go(UnaryTag<UnaryOp::Silu>{});
      case UnaryOp::GeluTanh: return go(UnaryTag<UnaryOp::GeluTanh>{});
      case UnaryOp::GeluErf: return go(UnaryTag<UnaryOp::GeluErf>{});
      case UnaryOp::Abs: return go(UnaryTag<UnaryOp::Abs>{});
      default:
        throw ValueError(fmt::format("{}: no derivative kernel for unary op {} (input {})", name,
                                     static_cast<int>(op), shape_str(x.shape())));
    }
  });
}

void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  BB_CHECK(cond.dtype() == DType::Bool, DTypeError, "where: condition must be bool, got {} {}",
           dtype_name(cond.dtype()), shape_str(cond.shape()));
  BB_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), DTypeError,
           "where: dtypes differ: out {} {}, a {} {}, b {} {}", dtype_name(out.dtype()), shape_str(out.shape()),
           dtype_name(a.dtype()), shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
  if (out.numel() == 0) return;
  const std::array<Shape, 4> st{out.strides(), bcast_strides(cond, out.shape(), "where"),
                                bcast_strides(a, out.shape(), "where"), bcast_strides(b, out.shape(), "where")};
  dispatch_all(out.dtype(), "where", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("where", out, st, WhereF<T>{}, ptr<T>(out), cptr<uint8_t>(cond), cptr<T>(a), cptr<T>(b));
  });
}

}  // namespace barbell::gpu
