// Scalar's conversions and printing, and the dtype a factory infers from a value.
#include "barbell/core/scalar.hpp"

#include <fmt/format.h>

#include "barbell/core/error.hpp"

namespace barbell {

void Scalar::unsigned_too_big(uint64_t v) {
  throw ValueError(fmt::format("Scalar: the unsigned value {} does not fit in int64", v));
}

int64_t Scalar::to_int64() const {
  BB_CHECK(kind_ != Kind::Float, ValueError, "Scalar: {} is a floating value, not an integer", d_);
  return i_;
}

std::string Scalar::str() const {
  switch (kind_) {
    case Kind::Bool: return i_ ? "true" : "false";
    case Kind::Int: return std::to_string(i_);
    case Kind::Float: return fmt::format("{}", d_);
  }
  return "?";
}

DType default_dtype_for(const Scalar& s) {
  return s.is_bool() ? DType::Bool : s.is_integral() ? DType::I64 : DType::F32;
}

}  // namespace barbell
