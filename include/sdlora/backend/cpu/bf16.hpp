/// @file bf16.hpp
/// @brief The GEMM's bf16-compute paths (Context<Cpu>::compute = BF16): operands rounded to bfloat16, products
/// summed in float, as torch.autocast(device_type="cpu", dtype=torch.bfloat16) multiplies. Include
/// <sdlora/sdlora.hpp> instead.
///
/// Three ways to run it, the best the CPU has chosen once per process (sgemm.hpp's gemm_kernel):
/// - AMX-BF16 (Intel Sapphire Rapids and later): the tile unit's TDPBF16PS multiplies a (16, 32) by a (32, 16) bf16
///   tile into a (16, 16) float tile, 16 times the products of an AVX-512 FMA per instruction. Micro-tile 32 x 32 in
///   four accumulator tiles; A panels are bf16 rows (32, kc rounded up to 32), B panels depth pairs side by side.
/// - AVX512-BF16 (Zen 4, Cooper Lake and later): VDPBF16PS sums two bf16 products into each float lane. A 12 x 32
///   micro-tile like the float AVX-512 kernel's, both panels as depth pairs.
/// - Elsewhere the packed float panels are rounded to bf16 in place and the float kernels multiply them: the same
///   products (a product of two bf16 values is exact in float), summed in another order; not faster, but every CPU
///   computes what the fast paths compute, so a result does not depend on which CPU trained it beyond summation order.
///
/// The panels are packed as float by the operands' own packers (images, weights, any storage), then converted one
/// panel at a time while it is in L1, so every packer serves every path. TDPBF16PS and VDPBF16PS flush float
/// subnormals to zero and round their sums their own way: results agree with the definition (float sums of exact
/// bf16 products) within float summation error, not to the bit.
#pragma once

#include <algorithm>  // std::min
#include <atomic>     // std::atomic
#include <cstdint>    // std::uint16_t, std::uint8_t
#include <cstring>    // std::memset

#include <sdlora/backend/cpu/convert16.hpp>  // SDLORA_X86_KERNELS (and <immintrin.h> on x86-64)
#include <sdlora/core/dtype.hpp>             // bfloat16
#include <sdlora/core/shape.hpp>             // Index

#if SDLORA_X86_KERNELS
#include <cpuid.h>  // __get_cpuid_count
#if defined(__linux__)
#include <sys/syscall.h>  // SYS_arch_prctl
#include <unistd.h>       // syscall
#endif
#endif

namespace sdlora::cpu {

/// How the bf16 products are computed; ordered: a higher value is preferred where the CPU has it.
enum class Bf16Unit {
  kAuto = -1,    ///< the best the CPU has
  kRounded = 0,  ///< float kernels on rounded operands (any CPU)
  kDot = 1,      ///< AVX512-BF16's VDPBF16PS
  kAmx = 2,      ///< AMX-BF16 tiles
};

/// Caps the unit for the whole process from now on (kAuto: no cap); the tests' way to run every path on one CPU.
inline std::atomic<int>& bf16_unit_cap() {
  static std::atomic<int> cap{int(Bf16Unit::kAuto)};
  return cap;
}

/// The best unit this CPU and OS offer (AMX also needs the kernel's permission to use the tile registers, asked once
/// per process through arch_prctl on Linux).
inline Bf16Unit detected_bf16_unit() {
#if SDLORA_X86_KERNELS
  static Bf16Unit const unit = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (detected_isa() != Isa::kAvx512 || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Bf16Unit::kRounded;
    bool const amx = (d >> 22 & 1u) && (d >> 24 & 1u);  // AMX-BF16, AMX-TILE
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (amx && syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0) return Bf16Unit::kAmx;
#endif
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (a1 >> 5 & 1u)) return Bf16Unit::kDot;  // AVX512_BF16
    return Bf16Unit::kRounded;
  }();
  return unit;
#else
  return Bf16Unit::kRounded;
#endif
}

/// The unit to run under the process's cap.
inline Bf16Unit bf16_unit() {
  int const cap = bf16_unit_cap().load(), best = int(detected_bf16_unit());
  return cap < 0 || cap > best ? Bf16Unit(best) : Bf16Unit(cap);
}

inline char const* bf16_unit_name(Bf16Unit u) {
  switch (u) {
    case Bf16Unit::kAmx: return "amx-bf16";
    case Bf16Unit::kDot: return "avx512-bf16";
    case Bf16Unit::kRounded: return "rounded";
    case Bf16Unit::kAuto: break;
  }
  return "auto";
}

/// How a packed panel holds its values (sgemm.hpp's packers write kFloat; the others are converted from it).
enum class PanelFormat {
  kFloat,        ///< float (kc, width), depth-major
  kBf16Rounded,  ///< the same, each value rounded to a bf16 value
  kBf16Pairs,    ///< bf16 (kc rounded up to `pad`, width) as (depth pairs, width, 2): VDPBF16PS's and AMX's B
  kBf16Rows,     ///< bf16 (width, kc rounded up to `pad`) row-major: AMX's A
};

/// Floats one row (or column) of a panel of depth kc occupies in a format whose depth is padded to `pad`.
inline Index panel_row_floats(PanelFormat f, Index pad, Index kc) {
  if (f == PanelFormat::kFloat || f == PanelFormat::kBf16Rounded) return kc;
  return (kc + pad - 1) / pad * pad / 2;
}

namespace bf16_detail {

inline std::uint16_t round(float v) { return bfloat16::from_float(v); }

#if SDLORA_X86_KERNELS
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void narrow_avx512(std::uint16_t* dst,
                                                                                         float const* src, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), __m256i(_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i))));
  if (i < n) {
    __mmask16 const m = __mmask16((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(dst + i, m, __m256i(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i))));
  }
}
#endif

/// dst[0, n) = src[0, n) rounded to bf16 (VCVTNEPS2BF16 where the CPU has it).
inline void narrow(std::uint16_t* dst, float const* src, Index n) {
#if SDLORA_X86_KERNELS
  if (detected_bf16_unit() >= Bf16Unit::kDot) return narrow_avx512(dst, src, n);
#endif
  for (Index i = 0; i < n; ++i) dst[i] = round(src[i]);
}

/// Portable conversions of one float panel src (kc, width) depth-major.
/// Depth d's values at src + d * ld (a packed panel: ld == width), `valid` of the `width` columns (zero past).
inline void to_pairs_portable(std::uint16_t* dst, float const* src, Index ld, Index width, Index valid, Index kc,
                              Index kp) {
  for (Index p = 0; p < kp / 2; ++p)
    for (Index j = 0; j < width; ++j)
      for (Index e = 0; e < 2; ++e) {
        Index const d = 2 * p + e;
        dst[(p * width + j) * 2 + e] = d < kc && j < valid ? round(src[d * ld + j]) : 0;
      }
}

inline void to_rows_portable(std::uint16_t* dst, float const* src, Index width, Index kc, Index kp) {
  for (Index i = 0; i < width; ++i)
    for (Index d = 0; d < kp; ++d) dst[i * kp + d] = d < kc ? round(src[d * width + i]) : 0;
}

#if SDLORA_X86_KERNELS
/// to_pairs for AVX512-BF16 CPUs: two depths of 16 columns converted by one VCVTNE2PS2BF16 and interleaved by one
/// permute (the same rounding to nearest even, but float subnormals become zero as in the multiply itself).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void to_pairs_avx512(std::uint16_t* dst,
                                                                                   float const* src, Index ld,
                                                                                   Index width, Index valid, Index kc,
                                                                                   Index kp) {
  __m512i const interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (Index p = 0; p < kp / 2; ++p) {
    Index const d = 2 * p;
    for (Index j = 0; j < width; j += 16) {
      __mmask16 const lanes = __mmask16((1u << std::min<Index>(16, width - j)) - 1u);
      __mmask16 const load = __mmask16((1u << std::clamp<Index>(valid - j, 0, 16)) - 1u);
      __m512 const lo = d < kc ? _mm512_maskz_loadu_ps(load, src + d * ld + j) : _mm512_setzero_ps();
      __m512 const hi = d + 1 < kc ? _mm512_maskz_loadu_ps(load, src + (d + 1) * ld + j) : _mm512_setzero_ps();
      __m512i const both = _mm512_permutexvar_epi16(interleave, __m512i(_mm512_cvtne2ps_pbh(hi, lo)));
      _mm512_mask_storeu_epi32(dst + (p * width + j) * 2, lanes, both);
    }
  }
}
#endif

/// dst = depth pairs (kp / 2, width, 2) of depths [0, kc), depth d's `valid` values at src + d * ld; zero past kc
/// and past `valid` columns.
inline void to_pairs(std::uint16_t* dst, float const* src, Index ld, Index width, Index valid, Index kc, Index kp) {
#if SDLORA_X86_KERNELS
  if (detected_bf16_unit() >= Bf16Unit::kDot) return to_pairs_avx512(dst, src, ld, width, valid, kc, kp);
#endif
  to_pairs_portable(dst, src, ld, width, valid, kc, kp);
}

/// dst = src's float panel (kc, width) in `format` (kBf16Pairs or kBf16Rows, depth padded to `pad`).
inline void convert_panel(void* dst, float const* src, PanelFormat format, Index width, Index kc, Index pad) {
  Index const kp = (kc + pad - 1) / pad * pad;
  auto* out = static_cast<std::uint16_t*>(dst);
  if (format == PanelFormat::kBf16Rows) return to_rows_portable(out, src, width, kc, kp);
  to_pairs(out, src, width, width, width, kc, kp);
}

/// Each of the n floats rounded to its nearest bf16 value, in place.
inline void round_in_place(float* x, Index n) {
  for (Index i = 0; i < n; ++i) x[i] = float(bfloat16::from_bits(round(x[i])));
}

}  // namespace bf16_detail

namespace kernels {

#if SDLORA_X86_KERNELS
// The 12 x 32 register tile of the AVX-512 float and AVX512-BF16 micro-kernels: 24 accumulators named c<row><half>
// (so that they live in registers at any optimisation level), declared zero; and their store, c (row stride ldc) =
// alpha * acc + beta * c, where beta == 0 never reads c.
#define SDLORA_AVX512_TILE_ROW_ZERO(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = _mm512_setzero_ps();
#define SDLORA_AVX512_TILE_DECLARE                                                                        \
  SDLORA_AVX512_TILE_ROW_ZERO(0) SDLORA_AVX512_TILE_ROW_ZERO(1) SDLORA_AVX512_TILE_ROW_ZERO(2)            \
  SDLORA_AVX512_TILE_ROW_ZERO(3) SDLORA_AVX512_TILE_ROW_ZERO(4) SDLORA_AVX512_TILE_ROW_ZERO(5)            \
  SDLORA_AVX512_TILE_ROW_ZERO(6) SDLORA_AVX512_TILE_ROW_ZERO(7) SDLORA_AVX512_TILE_ROW_ZERO(8)            \
  SDLORA_AVX512_TILE_ROW_ZERO(9) SDLORA_AVX512_TILE_ROW_ZERO(10) SDLORA_AVX512_TILE_ROW_ZERO(11)
#define SDLORA_AVX512_TILE_STORE_ONE(p, v)                                                                      \
  _mm512_storeu_ps(p, beta != 0.f ? _mm512_fmadd_ps(vb, _mm512_loadu_ps(p), _mm512_mul_ps(va, v))              \
                                  : _mm512_mul_ps(va, v));
#define SDLORA_AVX512_TILE_STORE_ROW(r)                    \
  SDLORA_AVX512_TILE_STORE_ONE(c + r * ldc, c##r##0)       \
  SDLORA_AVX512_TILE_STORE_ONE(c + r * ldc + 16, c##r##1)
#define SDLORA_AVX512_TILE_STORE                                                                          \
  {                                                                                                       \
    __m512 const va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                                  \
    SDLORA_AVX512_TILE_STORE_ROW(0) SDLORA_AVX512_TILE_STORE_ROW(1) SDLORA_AVX512_TILE_STORE_ROW(2)       \
    SDLORA_AVX512_TILE_STORE_ROW(3) SDLORA_AVX512_TILE_STORE_ROW(4) SDLORA_AVX512_TILE_STORE_ROW(5)       \
    SDLORA_AVX512_TILE_STORE_ROW(6) SDLORA_AVX512_TILE_STORE_ROW(7) SDLORA_AVX512_TILE_STORE_ROW(8)       \
    SDLORA_AVX512_TILE_STORE_ROW(9) SDLORA_AVX512_TILE_STORE_ROW(10) SDLORA_AVX512_TILE_STORE_ROW(11)     \
  }

/// AVX512-BF16: c (12, 32) = alpha * a @ b + beta * c over panels of depth pairs (a: (kc/2, 12, 2), b: (kc/2, 32, 2),
/// kc rounded up to 2): 24 zmm accumulators, one 32-bit broadcast of a row's pair per VDPBF16PS pair.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma"))) inline void micro_bf16_dot(
    Index kc, float const* a, float const* b, float* c, Index ldc, float alpha, float beta) {
  auto const* ap = reinterpret_cast<std::uint32_t const*>(a);  // one (row, pair) per 32 bits
  auto const* bp = reinterpret_cast<__m512i const*>(b);       // 16 (column, pair)s per vector
  SDLORA_AVX512_TILE_DECLARE
  for (Index p = 0; p < (kc + 1) / 2; ++p, ap += 12, bp += 2) {
    __m512bh const b0 = __m512bh(_mm512_loadu_si512(bp)), b1 = __m512bh(_mm512_loadu_si512(bp + 1));
#define SDLORA_ROW(r)                                                   \
  {                                                                     \
    __m512bh const ar = __m512bh(_mm512_set1_epi32(int(ap[r])));        \
    c##r##0 = _mm512_dpbf16_ps(c##r##0, ar, b0);                        \
    c##r##1 = _mm512_dpbf16_ps(c##r##1, ar, b1);                        \
  }
    SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
    SDLORA_ROW(6) SDLORA_ROW(7) SDLORA_ROW(8) SDLORA_ROW(9) SDLORA_ROW(10) SDLORA_ROW(11)
#undef SDLORA_ROW
  }
  SDLORA_AVX512_TILE_STORE
}

/// The AMX kernel's tile registers: 0-3 accumulate C's four (16, 16) quarters, 4-5 hold A's two 16-row halves of a
/// 32-deep step, 6-7 B's two 16-column halves; every tile is 16 rows of 64 bytes.
struct AmxTileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

/// Loads the tile configuration on the calling thread (before a task's first AMX micro-kernel).
__attribute__((target("amx-tile"))) inline void amx_begin() {
  AmxTileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  // GCC 12 does not see that LDTILECFG reads the configuration and drops the stores above without this barrier.
  __asm__ volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

/// Releases the tile registers (after a task's last AMX micro-kernel), so the thread's state is small again.
__attribute__((target("amx-tile"))) inline void amx_end() { _tile_release(); }

/// AMX-BF16: c (32, 32) = alpha * a @ b + beta * c with a bf16 rows (32, kp) and b bf16 pairs (kp/2, 32, 2), kp =
/// kc rounded up to 32; the tile configuration loaded by amx_begin.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) inline void micro_amx(Index kc, float const* a, float const* b,
                                                                           float* c, Index ldc, float alpha,
                                                                           float beta) {
  Index const kp = (kc + 31) / 32 * 32;
  auto const* ab = reinterpret_cast<std::uint16_t const*>(a);
  auto const* bb = reinterpret_cast<std::uint16_t const*>(b);
  // alpha 1 and beta 0 or 1 (every GEMM but attention's scaled products, which stay float): the tiles accumulate
  // onto C itself, loaded and stored with C's row stride; otherwise they start at zero and a vector pass scales.
  bool const in_place = alpha == 1.f && (beta == 0.f || beta == 1.f);
  if (in_place && beta == 1.f) {
    _tile_loadd(0, c, ldc * 4);
    _tile_loadd(1, c + 16, ldc * 4);
    _tile_loadd(2, c + 16 * ldc, ldc * 4);
    _tile_loadd(3, c + 16 * ldc + 16, ldc * 4);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (Index d = 0; d < kp; d += 32) {
    _tile_loadd(4, ab + d, kp * 2);
    _tile_loadd(5, ab + 16 * kp + d, kp * 2);
    std::uint16_t const* bs = bb + d * 32;  // 16 pair rows of 32 columns x 2
    _tile_loadd(6, bs, 128);
    _tile_loadd(7, bs + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  if (in_place) {
    _tile_stored(0, c, ldc * 4);
    _tile_stored(1, c + 16, ldc * 4);
    _tile_stored(2, c + 16 * ldc, ldc * 4);
    _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
    return;
  }
  alignas(64) float t[32 * 32];
  _tile_stored(0, t, 128);
  _tile_stored(1, t + 16, 128);
  _tile_stored(2, t + 16 * 32, 128);
  _tile_stored(3, t + 16 * 32 + 16, 128);
  __m512 const va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (Index r = 0; r < 32; ++r)
    for (Index j = 0; j < 32; j += 16) {
      __m512 const v = _mm512_mul_ps(va, _mm512_load_ps(t + r * 32 + j));
      float* p = c + r * ldc + j;
      _mm512_storeu_ps(p, beta != 0.f ? _mm512_fmadd_ps(vb, _mm512_loadu_ps(p), v) : v);
    }
}
#endif

}  // namespace kernels

}  // namespace sdlora::cpu
