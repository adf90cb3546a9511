/// @file vector_math.hpp
/// @brief Vector types and math for the CPU kernels written once for AVX2 and AVX-512: GCC vector extensions that a
/// function's target attribute turns into ymm / zmm registers, and a vectorised exp. Include <sdlora/sdlora.hpp>
/// instead.
#pragma once

#include <cstdint>  // std::int32_t

#include <sdlora/backend/cpu/convert16.hpp>  // SDLORA_X86_KERNELS
#include <sdlora/backend/cpu/isa.hpp>        // Isa, resolve_isa
#include <sdlora/core/shape.hpp>             // Index

// Host code only: nvcc's device pass (cicc, CUDA 13.0) crashes on the GCC vector extensions below, so an nvcc
// translation unit's device pass sees the generic paths only (its host pass, by g++, keeps them).
#if SDLORA_X86_KERNELS && !defined(__CUDA_ARCH__)
#define SDLORA_VECTOR_MATH 1
#else
#define SDLORA_VECTOR_MATH 0
#endif

#if SDLORA_VECTOR_MATH
namespace sdlora::cpu::vector_math {

// GCC vector extensions: the body below is written once and inlined into an AVX-512 and an AVX2+FMA function, whose
// target attribute makes these types zmm / ymm registers (and a * b + c one FMA).
typedef float Lanes16 __attribute__((vector_size(64)));
typedef std::int32_t Ints16 __attribute__((vector_size(64)));
typedef float Lanes8 __attribute__((vector_size(32)));
typedef std::int32_t Ints8 __attribute__((vector_size(32)));
// The same vectors at float alignment, for loads and stores anywhere in a row (vmovups).
typedef float Lanes16Unaligned __attribute__((vector_size(64), aligned(4), may_alias));
typedef float Lanes8Unaligned __attribute__((vector_size(32), aligned(4), may_alias));

template <class V>
struct Width;
template <>
struct Width<Lanes16> {
  using Ints = Ints16;
  using Unaligned = Lanes16Unaligned;
  static constexpr Index kLanes = 16, kChunk = 4;  // 4 rows x 4 vectors of accumulators (of 32 registers)
};
template <>
struct Width<Lanes8> {
  using Ints = Ints8;
  using Unaligned = Lanes8Unaligned;
  static constexpr Index kLanes = 8, kChunk = 3;  // 4 rows x 3 vectors of accumulators (of 16 registers)
};

// Loads and stores through references: a vector passed or returned by value outside its target would change the ABI.
template <class V>
[[gnu::always_inline]] inline void load(V& v, float const* p) {
  v = *reinterpret_cast<typename Width<V>::Unaligned const*>(p);
}
template <class V>
[[gnu::always_inline]] inline void store(float* p, V const& v) {
  *reinterpret_cast<typename Width<V>::Unaligned*>(p) = v;
}

/// exp(x) lane by lane, Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts), a degree-6 polynomial
/// for exp(r), 2^n through the exponent bits; arguments below -87 are taken as -87 (exp ~ 1.6e-38: a probability
/// that rounds to nothing beside a row maximum's 1). Within 2 ulp of expf for arguments up to 88.
template <class V>
[[gnu::always_inline]] inline void exp_clamped(V& x) {
  using Ints = typename Width<V>::Ints;
  x = x < -87.0f ? V{} - 87.0f : x;
  V const k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2): 1.5 * 2^23 trick
  V const r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  V poly = V{} + 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * (r * r) + r + 1.0f;
  x = (V)((Ints)poly + (__builtin_convertvector(k, Ints) << 23));  // same-size vector casts: bit casts
}

/// silu(x) = x / (1 + exp(-x)) lane by lane, by exp_clamped with -x taken as at most 88 (exp stays finite; below
/// x = -88 the result is ~1e-36 either way).
template <class V>
[[gnu::always_inline]] inline void silu(V& x) {
  V e = -x;
  e = e > 88.0f ? V{} + 88.0f : e;
  exp_clamped(e);
  x = x / (1.0f + e);
}

/// y[i] = act(((x[i] - mean) * rstd) * gamma + beta) for i < n, act SiLU or none: a GroupNorm row (mean 0, rstd 1,
/// gamma 1, beta 0: a plain SiLU). The scalar tail computes the same formula with std::exp.
template <class V>
[[gnu::always_inline]] inline void norm_act_row(float* y, float const* x, Index n, float mean, float rstd,
                                                float gamma, float beta, bool apply_silu) {
  constexpr Index L = Width<V>::kLanes;
  Index i = 0;
  for (; i + L <= n; i += L) {
    V v;
    load(v, x + i);
    v = ((v - mean) * rstd) * gamma + beta;
    if (apply_silu) silu(v);
    store(y + i, v);
  }
  for (; i < n; ++i) {
    float const v = ((x[i] - mean) * rstd) * gamma + beta;
    y[i] = apply_silu ? v / (1.f + __builtin_expf(-v)) : v;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline void norm_act_row_avx512(
    float* y, float const* x, Index n, float mean, float rstd, float gamma, float beta, bool apply_silu) {
  norm_act_row<Lanes16>(y, x, n, mean, rstd, gamma, beta, apply_silu);
}
__attribute__((target("avx2,fma"))) inline void norm_act_row_avx2(float* y, float const* x, Index n, float mean,
                                                                   float rstd, float gamma, float beta,
                                                                   bool apply_silu) {
  norm_act_row<Lanes8>(y, x, n, mean, rstd, gamma, beta, apply_silu);
}

}  // namespace sdlora::cpu::vector_math
#endif

namespace sdlora::cpu {

/// The vectorised row (vector_math::norm_act_row) on the best path the process allows, or false where only the
/// generic code runs (portable path, non-x86): the caller then computes the row itself.
inline bool norm_act_row(float* y, float const* x, Index n, float mean, float rstd, float gamma, float beta,
                         bool apply_silu) {
#if SDLORA_VECTOR_MATH
  switch (resolve_isa(Isa::kAuto)) {
    case Isa::kAvx512: vector_math::norm_act_row_avx512(y, x, n, mean, rstd, gamma, beta, apply_silu); return true;
    case Isa::kAvx2: vector_math::norm_act_row_avx2(y, x, n, mean, rstd, gamma, beta, apply_silu); return true;
    default: break;
  }
#endif
  return false;
}

}  // namespace sdlora::cpu
