// Runtime dtype dispatch for the CPU backend: call a generic lambda with a tag whose
// ::type is the element type; acc_t<T> is the type arithmetic is done in.
#pragma once

#include <type_traits>

#include "barbell/core/dtype.hpp"
#include "barbell/core/error.hpp"

namespace barbell::cpu {

template <typename T> struct Tag { using type = T; };

template <typename T> struct acc { using type = float; };
template <> struct acc<double> { using type = double; };
template <> struct acc<int32_t> { using type = int64_t; };
template <> struct acc<int64_t> { using type = int64_t; };
template <> struct acc<bool> { using type = int64_t; };
template <typename T> using acc_t = typename acc<T>::type;

template <typename F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: return f(Tag<float>{});
    case DType::F64: return f(Tag<double>{});
    case DType::BF16: return f(Tag<BFloat16>{});
    case DType::F16: return f(Tag<Half>{});
    default: break;
  }
  throw DTypeError(fmt::format("{}: expected a floating dtype (f32, f64, bf16, f16), got {}", op, dtype_name(t)));
}

template <typename F>
decltype(auto) dispatch_all(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: return f(Tag<float>{});
    case DType::F64: return f(Tag<double>{});
    case DType::BF16: return f(Tag<BFloat16>{});
    case DType::F16: return f(Tag<Half>{});
    case DType::I32: return f(Tag<int32_t>{});
    case DType::I64: return f(Tag<int64_t>{});
    case DType::Bool: return f(Tag<bool>{});
  }
  throw DTypeError(fmt::format("{}: unknown dtype", op));
}

template <typename F>
decltype(auto) dispatch_index(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::I32: return f(Tag<int32_t>{});
    case DType::I64: return f(Tag<int64_t>{});
    default: break;
  }
  throw DTypeError(fmt::format("{}: expected an index dtype (i32, i64), got {}", op, dtype_name(t)));
}

}  // namespace barbell::cpu
