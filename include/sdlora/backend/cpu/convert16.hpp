/// @file convert16.hpp
/// @brief Float <-> 16-bit (F16, BF16) conversion of contiguous runs on the CPU, rounding to nearest even as
/// core/dtype.hpp's half and bfloat16 do: the GEMM's packers widen 16-bit weights with it, and 16-bit saved
/// activations (nn/saved.hpp) are narrowed and widened with it. F16 goes through the F16C instructions where the CPU
/// has them (every AVX2 CPU; the same bits as the scalar conversion), BF16 is integer arithmetic the compiler
/// vectorises. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <bit>      // std::bit_cast
#include <cstdint>  // std::uint16_t, std::uint32_t

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>  // _mm512_*, _mm256_*
#define SDLORA_X86_KERNELS 1
#else
#define SDLORA_X86_KERNELS 0
#endif

#include <sdlora/backend/cpu/isa.hpp>  // detected_isa
#include <sdlora/core/dtype.hpp>       // DType, half, bfloat16
#include <sdlora/core/shape.hpp>       // Index

namespace sdlora::cpu {

namespace convert16_detail {
// Every AVX2 CPU has F16C; asking for "avx2" also builds with clang 14, whose __builtin_cpu_supports lacks "f16c".
inline bool has_f16c() { return detected_isa() >= Isa::kAvx2; }

#if SDLORA_X86_KERNELS
__attribute__((target("avx,f16c"))) inline void widen_f16c(float* dst, std::uint16_t const* src, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(src + i))));
  for (; i < n; ++i) dst[i] = float(half::from_bits(src[i]));
}
__attribute__((target("avx,f16c"))) inline void narrow_f16c(std::uint16_t* dst, float const* src, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = half(src[i]).bits;
}
#endif
}  // namespace convert16_detail

/// dst[0, n) = the F16 or BF16 values src[0, n) as float (exact).
inline void widen16(float* dst, std::uint16_t const* src, Index n, DType dtype) {
  if (dtype == DType::BF16) {
    for (Index i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(std::uint32_t(src[i]) << 16);
    return;
  }
#if SDLORA_X86_KERNELS
  if (convert16_detail::has_f16c()) return convert16_detail::widen_f16c(dst, src, n);
#endif
  for (Index i = 0; i < n; ++i) dst[i] = float(half::from_bits(src[i]));
}

/// dst[0, n) = src[0, n) rounded to F16 or BF16 (nearest even; F16 overflows to infinity, NaN stays NaN).
inline void narrow16(std::uint16_t* dst, float const* src, Index n, DType dtype) {
  if (dtype == DType::BF16) {
    for (Index i = 0; i < n; ++i) dst[i] = bfloat16::from_float(src[i]);
    return;
  }
#if SDLORA_X86_KERNELS
  if (convert16_detail::has_f16c()) return convert16_detail::narrow_f16c(dst, src, n);
#endif
  for (Index i = 0; i < n; ++i) dst[i] = half(src[i]).bits;
}

}  // namespace sdlora::cpu
