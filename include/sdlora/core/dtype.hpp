/// @file dtype.hpp
/// @brief Scalar types: float, double, and the 16-bit storage types half (IEEE binary16) and bfloat16, with exact
/// round-to-nearest-even conversions from float. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <bit>          // std::bit_cast
#include <cstdint>      // std::uint16_t, std::uint32_t
#include <string_view>  // std::string_view
#include <type_traits>  // std::is_same_v

#include <sdlora/core/config.hpp>  // SDLORA_HOST_DEVICE

namespace sdlora {

/// bfloat16: the upper 16 bits of an IEEE float32; conversion rounds to nearest even, NaN stays NaN.
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  SDLORA_HOST_DEVICE explicit bfloat16(float f) : bits(from_float(f)) {}
  SDLORA_HOST_DEVICE explicit operator float() const { return std::bit_cast<float>(std::uint32_t(bits) << 16); }

  static SDLORA_HOST_DEVICE bfloat16 from_bits(std::uint16_t b) {
    bfloat16 h;
    h.bits = b;
    return h;
  }
  static SDLORA_HOST_DEVICE std::uint16_t from_float(float f) {
    std::uint32_t const u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);  // quiet NaN
    std::uint32_t const rounding = 0x7fffu + ((u >> 16) & 1u);                         // ties to even
    return std::uint16_t((u + rounding) >> 16);
  }
};

/// half: IEEE 754 binary16 (1 sign, 5 exponent, 10 mantissa bits); conversion rounds to nearest even, with
/// subnormals, overflow to infinity and NaN preserved.
struct half {
  std::uint16_t bits = 0;

  half() = default;
  SDLORA_HOST_DEVICE explicit half(float f) : bits(from_float(f)) {}
  SDLORA_HOST_DEVICE explicit operator float() const { return to_float(bits); }

  static SDLORA_HOST_DEVICE half from_bits(std::uint16_t b) {
    half h;
    h.bits = b;
    return h;
  }

  static SDLORA_HOST_DEVICE std::uint16_t from_float(float f) {
    std::uint32_t const u = std::bit_cast<std::uint32_t>(f);
    std::uint16_t const sign = std::uint16_t((u >> 16) & 0x8000u);
    std::uint32_t const abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // NaN, quiet
    if (abs >= 0x47800000u) return std::uint16_t(sign | 0x7c00u);  // >= 65536 (or inf): infinity
    if (abs < 0x38800000u) {                                         // below 2^-14: subnormal or zero
      if (abs < 0x33000000u) return sign;                            // below half the smallest subnormal
      int const exponent = int(abs >> 23);                           // 102..112
      std::uint32_t const mantissa = (abs & 0x7fffffu) | 0x800000u;  // implicit bit
      int const shift = 126 - exponent;                              // 14..24
      std::uint32_t result = mantissa >> shift;
      std::uint32_t const rest = mantissa & ((1u << shift) - 1u);
      std::uint32_t const halfway = 1u << (shift - 1);
      if (rest > halfway || (rest == halfway && (result & 1u))) ++result;
      return std::uint16_t(sign | result);
    }
    // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
    std::uint32_t const rebased = abs - 0x38000000u;
    std::uint32_t const rounding = 0xfffu + ((rebased >> 13) & 1u);
    return std::uint16_t(sign | ((rebased + rounding) >> 13));  // a carry into the exponent gives inf correctly
  }

  static SDLORA_HOST_DEVICE float to_float(std::uint16_t h) {
    std::uint32_t const sign = std::uint32_t(h & 0x8000u) << 16;
    std::uint32_t const exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
      if (mantissa == 0) return std::bit_cast<float>(sign);
      int e = -1;  // normalise the subnormal
      do {
        ++e;
        mantissa <<= 1;
      } while ((mantissa & 0x400u) == 0);
      return std::bit_cast<float>(sign | std::uint32_t(127 - 15 - e) << 23 | ((mantissa & 0x3ffu) << 13));
    }
    return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
};

/// The element types a file can hold (safetensors names).
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

inline constexpr int dtype_size(DType d) {
  switch (d) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16: return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL: return 1;
  }
  return 0;
}

/// The DType of a C++ scalar type.
template <class T>
inline constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>) return DType::F64;
  else if constexpr (std::is_same_v<T, float>) return DType::F32;
  else if constexpr (std::is_same_v<T, half>) return DType::F16;
  else if constexpr (std::is_same_v<T, bfloat16>) return DType::BF16;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::I32;
  else if constexpr (std::is_same_v<T, std::int16_t>) return DType::I16;
  else if constexpr (std::is_same_v<T, std::int8_t>) return DType::I8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return DType::U8;
  else if constexpr (std::is_same_v<T, bool>) return DType::BOOL;
  else static_assert(sizeof(T) == 0, "dtype_of: T must be a scalar type sdlora stores (float, half, int32_t, ...)");
}

/// Converts any stored scalar to float (through the exact widening for half/bfloat16).
template <class T>
SDLORA_HOST_DEVICE float to_float(T v) {
  return static_cast<float>(v);
}

/// Converts float (or double) to a stored scalar with round-to-nearest-even for the 16-bit types.
template <class T, class S>
SDLORA_HOST_DEVICE T from_scalar(S v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) return T(static_cast<float>(v));
  else return static_cast<T>(v);
}

}  // namespace sdlora
