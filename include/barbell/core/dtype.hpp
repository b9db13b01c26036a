// Element types known at run time (DType), the 16-bit float storage types, and the
// helpers that convert them to and from float.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace barbell {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, I64, Bool };

inline constexpr DType kF32 = DType::F32;
inline constexpr DType kF64 = DType::F64;
inline constexpr DType kBF16 = DType::BF16;
inline constexpr DType kF16 = DType::F16;
inline constexpr DType kI32 = DType::I32;
inline constexpr DType kI64 = DType::I64;
inline constexpr DType kBool = DType::Bool;

size_t dtype_size(DType t);
const char* dtype_name(DType t);
inline bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::BF16 || t == DType::F16;
}
inline bool is_integral(DType t) { return t == DType::I32 || t == DType::I64 || t == DType::Bool; }

// bfloat16 storage: the top half of an IEEE float, rounded to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) {  // NOLINT: implicit like a built-in float type
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  operator float() const {  // NOLINT
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// IEEE half storage with round-to-nearest-even conversion from float.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f) : bits(from_float(f)) {}  // NOLINT
  operator float() const { return to_float(bits); }  // NOLINT
  static uint16_t from_float(float f);
  static float to_float(uint16_t h);
};

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::F16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };

}  // namespace barbell

template <>
struct fmt::formatter<barbell::DType> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(barbell::DType t, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(barbell::dtype_name(t), ctx);
  }
};
