// Scalar: a number passed to an op or a factory that remembers whether it was written
// as a bool, an integer or a floating value, so that type promotion can follow PyTorch.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "barbell/core/dtype.hpp"

namespace barbell {

class Scalar {
 public:
  enum class Kind : uint8_t { Bool, Int, Float };

  Scalar() = default;
  // Implicit, like a built-in number: `x * 2` is an integer scalar, `x * 2.0` a floating one.
  template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
  Scalar(T v) {  // NOLINT(google-explicit-constructor)
    if constexpr (std::is_same_v<T, bool>) {
      kind_ = Kind::Bool;
      i_ = v ? 1 : 0;
    } else if constexpr (std::is_integral_v<T>) {
      kind_ = Kind::Int;
      if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(int64_t)) {
        if (v > static_cast<T>(std::numeric_limits<int64_t>::max()))
          unsigned_too_big(static_cast<uint64_t>(v));
      }
      i_ = static_cast<int64_t>(v);
    } else {
      kind_ = Kind::Float;
      d_ = static_cast<double>(v);
    }
  }
  Scalar(BFloat16 v) : kind_(Kind::Float), d_(static_cast<float>(v)) {}  // NOLINT
  Scalar(Half v) : kind_(Kind::Float), d_(static_cast<float>(v)) {}      // NOLINT

  Kind kind() const { return kind_; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_integral() const { return kind_ == Kind::Int; }  // an integer, not a bool
  bool is_floating() const { return kind_ == Kind::Float; }
  // The value as a double (rounded for integers beyond 2^53).
  double to_double() const { return kind_ == Kind::Float ? d_ : static_cast<double>(i_); }
  // The exact value of a bool or integer scalar; a floating one throws ValueError (use
  // to_double()).
  int64_t to_int64() const;
  // "2", "0.5", "true": for error messages.
  std::string str() const;

 private:
  [[noreturn]] static void unsigned_too_big(uint64_t v);

  Kind kind_ = Kind::Int;
  int64_t i_ = 0;
  double d_ = 0;
};

// The dtype a factory infers from its value when none is given: bool, i64 or f32.
DType default_dtype_for(const Scalar& s);

}  // namespace barbell
