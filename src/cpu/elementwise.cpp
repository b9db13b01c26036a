// CPU elementwise kernels: strided cast-copy, fill, binary and unary ops, the
// activations' derivatives, where. Arithmetic in float (double for f64).
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu/bf16.hpp"
#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"
#include "cpu/loops.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

namespace {

// Strides of `t` broadcast to `shape` (0 on broadcast dims).
Shape bcast_strides(const Tensor& t, const Shape& shape) {
  Shape st(shape.size(), 0);
  size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i)
    st[lead + i] = t.shape()[i] == 1 && shape[lead + i] != 1 ? 0 : t.strides()[i];
  return st;
}

template <typename T>
inline T cast_to(double v) {
  if constexpr (std::is_same_v<T, bool>) return v != 0.0;
  else return static_cast<T>(static_cast<acc_t<T>>(v));
}

template <typename Out, typename In>
inline Out convert(In v) {
  if constexpr (std::is_same_v<Out, In>) return v;
  else if constexpr (std::is_same_v<Out, bool>) return static_cast<float>(v) != 0.0f;
  else if constexpr (std::is_same_v<In, BFloat16> || std::is_same_v<In, Half>) return static_cast<Out>(static_cast<float>(v));
  else if constexpr (std::is_same_v<Out, BFloat16> || std::is_same_v<Out, Half>) return Out(static_cast<float>(v));
  else return static_cast<Out>(v);
}

constexpr double kSqrt2OverPi = 0.7978845608028654;

constexpr double kInvSqrt2 = 0.7071067811865476;

// exp for float as plain arithmetic (2^k by exponent bits, 2^f by a degree-6
// polynomial, relative error ~2e-7) so loops over it vectorise; libm's expf and
// tanhf are scalar calls and dominated GELU's cost.
inline float vec_expf(float x) {
  x = x > 88.0f ? 88.0f : x;  // selects, not std::min/max: they vectorise
  x = x < -87.0f ? -87.0f : x;
  float t = x * 1.4426950408889634f;  // x / ln 2
  // Round to nearest by the 1.5 * 2^23 trick: SSE2 has no floor instruction. The sum's
  // low mantissa bits then hold k itself, which gives 2^k by integer arithmetic with no
  // float-to-int conversion (undefined for the NaN that passes the clamps above; a NaN
  // still comes out, through p).
  const float kr = t + 12582912.0f;
  const float k = kr - 12582912.0f;
  float f = (t - k) * 0.6931471805599453f;  // in [-ln2/2, ln2/2]
  float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
  uint32_t kbits;
  std::memcpy(&kbits, &kr, 4);
  const uint32_t bits = (kbits - 0x4B400000u + 127u) << 23;  // (k + 127) << 23, k in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// tanh through one exp: absolute error about 1e-7, which is what GELU needs; f64
// keeps std::tanh.
template <typename A>
inline A fast_tanh(A u) {
  if constexpr (std::is_same_v<A, float>) {
    u = u > 20.0f ? 20.0f : u;
    u = u < -20.0f ? -20.0f : u;
    float e = vec_expf(2.0f * u);
    return 1.0f - 2.0f / (e + 1.0f);
  } else {
    return std::tanh(u);
  }
}

template <typename A>
inline A apply_unary(UnaryOp op, A x, A s) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return A(1) / std::sqrt(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Relu: return x > A(0) ? x : A(0);
    case UnaryOp::Silu: return x / (A(1) + std::exp(-x));
    case UnaryOp::GeluTanh: {
      A u = A(kSqrt2OverPi) * (x + A(0.044715) * x * x * x);
      return A(0.5) * x * (A(1) + fast_tanh(u));
    }
    case UnaryOp::GeluErf: return A(0.5) * x * (A(1) + std::erf(x * A(kInvSqrt2)));
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::AddScalar: return x + s;
    case UnaryOp::MulScalar: return x * s;
    case UnaryOp::PowScalar: return std::pow(x, s);
    case UnaryOp::RSubScalar: return s - x;
    case UnaryOp::RDivScalar: return s / x;
  }
  return x;
}

template <typename A>
inline A unary_grad(UnaryOp op, A x) {
  switch (op) {
    case UnaryOp::Relu: return x > A(0) ? A(1) : A(0);
    case UnaryOp::Silu: {
      A sg = A(1) / (A(1) + std::exp(-x));
      return sg * (A(1) + x * (A(1) - sg));
    }
    case UnaryOp::GeluTanh: {
      A u = A(kSqrt2OverPi) * (x + A(0.044715) * x * x * x);
      A th = fast_tanh(u);
      A du = A(kSqrt2OverPi) * (A(1) + A(3 * 0.044715) * x * x);
      return A(0.5) * (A(1) + th) + A(0.5) * x * (A(1) - th * th) * du;
    }
    case UnaryOp::GeluErf: {
      A cdf = A(0.5) * (A(1) + std::erf(x * A(kInvSqrt2)));
      A pdf = std::exp(A(-0.5) * x * x) * A(0.3989422804014327);
      return cdf + x * pdf;
    }
    case UnaryOp::Abs: return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
    default: return A(0);
  }
}

// Integer add, sub and mul wrap on overflow (two's complement, as PyTorch): computed in
// the unsigned type, where wrapping is defined, instead of signed overflow (undefined).
template <typename A>
inline A wrapping(BinaryOp op, A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    const U x = static_cast<U>(a), y = static_cast<U>(b);
    return static_cast<A>(op == BinaryOp::Add ? x + y : op == BinaryOp::Sub ? x - y : x * y);
  } else {
    return op == BinaryOp::Add ? a + b : op == BinaryOp::Sub ? a - b : a * b;
  }
}

template <typename A>
inline A apply_binary(BinaryOp op, A a, A b) {
  switch (op) {
    case BinaryOp::Add: return wrapping(BinaryOp::Add, a, b);
    case BinaryOp::Sub: return wrapping(BinaryOp::Sub, a, b);
    case BinaryOp::Mul: return wrapping(BinaryOp::Mul, a, b);
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow:
      if constexpr (std::is_integral_v<A>) return static_cast<A>(std::pow(static_cast<double>(a), static_cast<double>(b)));
      else return std::pow(a, b);
    case BinaryOp::Max: return a > b ? a : b;
    case BinaryOp::Eq: return a == b;
  }
  return a;
}

// The activations that have a backward kernel.
template <typename F>
void with_activation(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Relu: return f(UnaryTag<UnaryOp::Relu>{});
    case UnaryOp::Silu: return f(UnaryTag<UnaryOp::Silu>{});
    case UnaryOp::GeluTanh: return f(UnaryTag<UnaryOp::GeluTanh>{});
    case UnaryOp::GeluErf: return f(UnaryTag<UnaryOp::GeluErf>{});
    case UnaryOp::Abs: return f(UnaryTag<UnaryOp::Abs>{});
    default: throw Error("activation backward: internal error: no derivative kernel for this op");
  }
}

}  // namespace

// The vectorised contiguous paths of copy, unary and unary_backward: true when one ran.
// Function templates, not `if constexpr` inside the loop lambdas: clang checks a call in
// a nested lambda's discarded branch whose arguments do not depend on the innermost
// template (bits(o) with o a float*), which GCC leaves alone.
template <typename D, typename S>
bool copy_fast(D* o, const S* x, int64_t n) {
  if constexpr (std::is_same_v<D, BFloat16> && std::is_same_v<S, float>) {
    vec().f32_to_bf16(bits(o), x, n);
    return true;
  } else if constexpr (std::is_same_v<D, float> && std::is_same_v<S, BFloat16>) {
    vec().bf16_to_f32(o, bits(x), n);
    return true;
  }
  return false;
}

template <UnaryOp OP, typename T>
bool unary_fast(T* o, const T* in, int64_t n) {
  if constexpr (OP == UnaryOp::GeluTanh || OP == UnaryOp::Silu) {
    const auto fn = OP == UnaryOp::Silu ? vec().silu : vec().gelu_tanh;
    if constexpr (std::is_same_v<T, float>) {
      fn(o, in, n);
      return true;
    } else if constexpr (std::is_same_v<T, BFloat16>) {
      bf16_map1(o, in, n, fn);
      return true;
    }
  }
  return false;
}

template <UnaryOp OP, typename T>
bool unary_grad_fast(T* o, const T* g, const T* in, int64_t n) {
  if constexpr (OP == UnaryOp::GeluTanh || OP == UnaryOp::Silu) {
    const auto fn = OP == UnaryOp::Silu ? vec().silu_grad : vec().gelu_tanh_grad;
    if constexpr (std::is_same_v<T, float>) {
      fn(o, g, in, n);
      return true;
    } else if constexpr (std::is_same_v<T, BFloat16>) {
      bf16_map2(o, g, in, n, false, fn);
      return true;
    }
  }
  return false;
}

void copy(const Tensor& dst, const Tensor& src) {
  Shape st_src = bcast_strides(src, dst.shape());
  auto plan = make_plan<2>(dst.shape(), {dst.strides(), st_src});
  dispatch_all(dst.dtype(), "copy", [&](auto dtag) {
    using D = typename decltype(dtag)::type;
    dispatch_all(src.dtype(), "copy", [&](auto stag) {
      using S = typename decltype(stag)::type;
      D* d = static_cast<D*>(dst.data_ptr());
      const S* s = static_cast<const S*>(src.data_ptr());
      run_plan(plan, [&](int64_t n, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st) {
        D* o = d + off[0];
        const S* x = s + off[1];
        if (st[0] == 1 && st[1] == 1 && copy_fast(o, x, n)) return;
        if (st[0] == 1 && st[1] == 1) {
          for (int64_t i = 0; i < n; ++i) o[i] = convert<D>(x[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * st[0]] = convert<D>(x[i * st[1]]);
        }
      });
    });
  });
}

void fill(const Tensor& dst, double value) {
  auto plan = make_plan<1>(dst.shape(), {dst.strides()});
  dispatch_all(dst.dtype(), "fill", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v = cast_to<T>(value);
    T* d = static_cast<T*>(dst.data_ptr());
    run_plan(plan, [&](int64_t n, const std::array<int64_t, 1>& off, const std::array<int64_t, 1>& st) {
      for (int64_t i = 0; i < n; ++i) d[off[0] + i * st[0]] = v;
    });
  });
}

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  auto plan = make_plan<3>(out.shape(), {out.strides(), bcast_strides(a, out.shape()), bcast_strides(b, out.shape())});
  dispatch_all(a.dtype(), "binary op", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = static_cast<const T*>(b.data_ptr());
    const A al = static_cast<A>(alpha);
    auto body = [&](auto* po, auto otag) {
      using O = std::remove_pointer_t<decltype(po)>;
      constexpr BinaryOp OP = decltype(otag)::value;
      run_plan(plan, [&](int64_t n, const std::array<int64_t, 3>& off, const std::array<int64_t, 3>& st) {
        O* o = po + off[0];
        const T* x = pa + off[1];
        const T* y = pb + off[2];
        // f32 add/sub/mul/div: the vectorised kernels of this CPU's level (vec.hpp).
        if constexpr (std::is_same_v<T, float> && std::is_same_v<O, float> &&
                      (OP == BinaryOp::Add || OP == BinaryOp::Sub || OP == BinaryOp::Mul ||
                       OP == BinaryOp::Div)) {
          if (alpha == 1.0 && st[0] == 1 && st[1] == 1 && (st[2] == 1 || st[2] == 0)) {
            return vec().binary(static_cast<int>(OP), o, x, y, n, st[2] == 0);
          }
        }
        if constexpr (std::is_same_v<T, BFloat16> && std::is_same_v<O, BFloat16> &&
                      (OP == BinaryOp::Add || OP == BinaryOp::Sub || OP == BinaryOp::Mul ||
                       OP == BinaryOp::Div)) {
          if (alpha == 1.0 && st[0] == 1 && st[1] == 1 && (st[2] == 1 || st[2] == 0)) {
            const auto fn = vec().binary;
            return bf16_map2(o, x, y, n, st[2] == 0,
                             [&](float* of, const float* af, const float* bf, int64_t m) {
                               fn(static_cast<int>(OP), of, af, bf, m, st[2] == 0);
                             });
          }
        }
        // The common cases get loops the compiler can vectorise.
        if (alpha == 1.0 && st[0] == 1 && st[1] == 1 && st[2] == 1) {
          for (int64_t i = 0; i < n; ++i) o[i] = convert<O>(apply_binary<A>(OP, A(x[i]), A(y[i])));
        } else if (alpha == 1.0 && st[0] == 1 && st[1] == 1 && st[2] == 0) {
          const A yv = A(y[0]);
          for (int64_t i = 0; i < n; ++i) o[i] = convert<O>(apply_binary<A>(OP, A(x[i]), yv));
        } else {
          for (int64_t i = 0; i < n; ++i)
            o[i * st[0]] = convert<O>(
                apply_binary<A>(OP, A(x[i * st[1]]), wrapping(BinaryOp::Mul, al, A(y[i * st[2]]))));
        }
      });
    };
    using BT = BinaryOp;
    T* pt = static_cast<T*>(out.data_ptr());
    // The op as a compile-time constant: one specialised loop per op.
    switch (op) {
      case BT::Add: return body(pt, std::integral_constant<BT, BT::Add>{});
      case BT::Sub: return body(pt, std::integral_constant<BT, BT::Sub>{});
      case BT::Mul: return body(pt, std::integral_constant<BT, BT::Mul>{});
      case BT::Div: return body(pt, std::integral_constant<BT, BT::Div>{});
      case BT::Pow: return body(pt, std::integral_constant<BT, BT::Pow>{});
      case BT::Max: return body(pt, std::integral_constant<BT, BT::Max>{});
      case BT::Eq: return body(static_cast<bool*>(out.data_ptr()), std::integral_constant<BT, BT::Eq>{});
    }
  });
}

void unary(UnaryOp op, const Tensor& out, const Tensor& x, double scalar) {
  auto plan = make_plan<2>(out.shape(), {out.strides(), x.strides()});
  dispatch_all(x.dtype(), "unary op", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      throw DTypeError("unary op: not defined on bool tensors");
    } else {
      using A = std::conditional_t<std::is_integral_v<T>, double, acc_t<T>>;
      const T* px = static_cast<const T*>(x.data_ptr());
      T* po = static_cast<T*>(out.data_ptr());
      const A s = static_cast<A>(scalar);
      with_unary_op(op, [&](auto otag) {
        constexpr UnaryOp OP = decltype(otag)::value;
        run_plan(plan, [&](int64_t n, const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st) {
          T* o = po + off[0];
          const T* in = px + off[1];
          if (st[0] == 1 && st[1] == 1 && unary_fast<OP>(o, in, n)) return;
          if (st[0] == 1 && st[1] == 1) {
            for (int64_t i = 0; i < n; ++i) o[i] = convert<T>(apply_unary<A>(OP, A(in[i]), s));
          } else {
            for (int64_t i = 0; i < n; ++i) o[i * st[0]] = convert<T>(apply_unary<A>(OP, A(in[i * st[1]]), s));
          }
        });
      });
    }
  });
}

void unary_backward(UnaryOp op, const Tensor& dx, const Tensor& dy, const Tensor& x) {
  auto plan = make_plan<3>(dx.shape(), {dx.strides(), dy.strides(), x.strides()});
  dispatch_float(x.dtype(), "activation backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    T* pdx = static_cast<T*>(dx.data_ptr());
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const T* px = static_cast<const T*>(x.data_ptr());
    with_activation(op, [&](auto otag) {
      constexpr UnaryOp OP = decltype(otag)::value;
      run_plan(plan, [&](int64_t n, const std::array<int64_t, 3>& off, const std::array<int64_t, 3>& st) {
        T* o = pdx + off[0];
        const T* g = pdy + off[1];
        const T* in = px + off[2];
        if (st[0] == 1 && st[1] == 1 && st[2] == 1 && unary_grad_fast<OP>(o, g, in, n)) return;
        if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
          for (int64_t i = 0; i < n; ++i) o[i] = T(A(g[i]) * unary_grad<A>(OP, A(in[i])));
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * st[0]] = T(A(g[i * st[1]]) * unary_grad<A>(OP, A(in[i * st[2]])));
        }
      });
    });
  });
}

void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  auto plan = make_plan<4>(out.shape(), {out.strides(), bcast_strides(cond, out.shape()),
                                         bcast_strides(a, out.shape()), bcast_strides(b, out.shape())});
  dispatch_all(out.dtype(), "where", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* po = static_cast<T*>(out.data_ptr());
    const bool* pc = static_cast<const bool*>(cond.data_ptr());
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = static_cast<const T*>(b.data_ptr());
    run_plan(plan, [&](int64_t n, const std::array<int64_t, 4>& off, const std::array<int64_t, 4>& st) {
      for (int64_t i = 0; i < n; ++i)
        po[off[0] + i * st[0]] = pc[off[1] + i * st[1]] ? pa[off[2] + i * st[2]] : pb[off[3] + i * st[3]];
    });
  });
}

}  // namespace barbell::cpu
