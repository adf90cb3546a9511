/// @file sgemm.hpp
/// @brief The CPU's float GEMM: packed panels and register-blocked micro-kernels (portable, AVX2+FMA, AVX-512) chosen
/// once per process at run time, driven over independent output tiles by the thread pool (parallel.hpp). Include
/// <sdlora/sdlora.hpp> instead.
///
/// C (M, N) = alpha * A (M, K) @ B (K, N) + beta * C. The operands are read only through packing functions, so a
/// convolution packs its column matrix straight from the image (implicit GEMM, backend/cpu/conv.hpp) and no
/// operand has to exist as a matrix. The algorithm is the classic one (Goto & van de Geijn, "Anatomy of
/// high-performance matrix multiplication", 2008): for each depth block of kKc, a (kc, nt) block of B is packed into
/// NR-wide panels, then (mc, kc) blocks of A into MR-tall panels, and the micro-kernel multiplies one A panel by one
/// B panel into an (MR, NR) tile of C held in registers.
///
/// Threads: one task per (batch, M chunk, N tile) of C, handed out dynamically, each packing its own panels; no two
/// tasks write the same element and the depth is never split, so every element is summed in the same order whatever
/// the thread count (results are identical for 1 and N threads) and no thread ever waits for another's panel.
#pragma once

#include <algorithm>  // std::min, std::max, std::fill_n
#include <cstdint>    // std::uint16_t
#include <cstring>    // std::memcpy
#include <type_traits>  // std::is_base_of_v

#include <sdlora/backend/cpu/bf16.hpp>       // the bf16-compute kernels, PanelFormat
#include <sdlora/backend/cpu/convert16.hpp>  // widen16, SDLORA_X86_KERNELS (and <immintrin.h> on x86-64)
#include <sdlora/backend/cpu/isa.hpp>       // Isa, resolve_isa
#include <sdlora/backend/cpu/parallel.hpp>  // parallel_tasks, ThreadPool
#include <sdlora/core/backend.hpp>     // Context<Cpu>, BackendMemory<Cpu>
#include <sdlora/core/dtype.hpp>       // DType
#include <sdlora/core/shape.hpp>       // Index

namespace sdlora::cpu {

/// The AVX-512 micro-kernel's register tile (MR, NR); no other path packs panels of these widths.
inline constexpr Index kAvx512Mr = 12, kAvx512Nr = 32;
/// The AVX2 micro-kernel's register tile; the portable kernel's B panels are 16 wide too.
inline constexpr Index kAvx2Mr = 6, kAvx2Nr = 16;

/// c (MR, NR) = alpha * sum_k a[k] (MR) outer b[k] (NR) + beta * c, with a packed (kc, MR) and b packed (kc, NR);
/// beta == 0 never reads c.
using MicroKernel = void (*)(Index kc, float const* a, float const* b, float* c, Index ldc, float alpha, float beta);

/// A micro-kernel, its register tile and the panels it reads. The float kernels read float panels; the bf16-compute
/// kernels (bf16.hpp) read panels converted from them, whose rows take panel_row_floats(format, pad, kc) floats.
struct GemmKernel {
  Isa isa;
  Index mr, nr;
  MicroKernel run;
  PanelFormat a_format = PanelFormat::kFloat, b_format = PanelFormat::kFloat;
  Index pad = 1;                  // depth padding of the bf16 formats
  void (*begin)() = nullptr;      // called by a thread before a task's first micro-kernel (AMX: tile configuration)
  void (*end)() = nullptr;        // and after its last
  Index mc = 144;                 // rows of A per packed block (kMc; a multiple of mr)

  Index a_row(Index kc) const { return panel_row_floats(a_format, pad, kc); }
  Index b_row(Index kc) const { return panel_row_floats(b_format, pad, kc); }
  bool converts() const { return a_format != PanelFormat::kFloat; }
};

namespace kernels {

/// Portable path: loops the compiler vectorises for the baseline ISA.
template <Index MR, Index NR>
void micro_portable(Index kc, float const* a, float const* b, float* c, Index ldc, float alpha, float beta) {
  float acc[MR][NR] = {};
  for (Index k = 0; k < kc; ++k, a += MR, b += NR)
    for (Index r = 0; r < MR; ++r)
      for (Index j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
  for (Index r = 0; r < MR; ++r)
    for (Index j = 0; j < NR; ++j)
      c[r * ldc + j] = beta == 0.f ? alpha * acc[r][j] : alpha * acc[r][j] + beta * c[r * ldc + j];
}

#if SDLORA_X86_KERNELS
// The x86 kernels name every accumulator (macros below) so that they live in registers at any optimisation level.

/// AVX2 + FMA: a 6 x 16 tile in 12 ymm accumulators, two ymm of B and one broadcast of A per row per step.
__attribute__((target("avx2,fma"))) inline void micro_avx2(Index kc, float const* a, float const* b, float* c,
                                                            Index ldc, float alpha, float beta) {
#define SDLORA_ROW(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();
  SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
#undef SDLORA_ROW
  for (Index k = 0; k < kc; ++k, a += 6, b += 16) {
    __m256 const b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#define SDLORA_ROW(r)                                \
  {                                                  \
    __m256 const ar = _mm256_broadcast_ss(a + r);    \
    c##r##0 = _mm256_fmadd_ps(ar, b0, c##r##0);      \
    c##r##1 = _mm256_fmadd_ps(ar, b1, c##r##1);      \
  }
    SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
#undef SDLORA_ROW
  }
  __m256 const va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  // (a lambda would not inherit the function's target attribute)
#define SDLORA_STORE(p, v)                                                                    \
  _mm256_storeu_ps(p, beta != 0.f ? _mm256_fmadd_ps(vb, _mm256_loadu_ps(p), _mm256_mul_ps(va, v)) \
                                 : _mm256_mul_ps(va, v));
#define SDLORA_ROW(r)                  \
  SDLORA_STORE(c + r * ldc, c##r##0)   \
  SDLORA_STORE(c + r * ldc + 8, c##r##1)
  SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
#undef SDLORA_ROW
#undef SDLORA_STORE
}

/// AVX-512: a 12 x 32 tile in 24 zmm accumulators (of 32 registers), two zmm of B and one broadcast of A per row.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline void micro_avx512(
    Index kc, float const* a, float const* b, float* c, Index ldc, float alpha, float beta) {
  SDLORA_AVX512_TILE_DECLARE  // (bf16.hpp)
  for (Index k = 0; k < kc; ++k, a += 12, b += 32) {
    __m512 const b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#define SDLORA_ROW(r)                              \
  {                                                \
    __m512 const ar = _mm512_set1_ps(a[r]);        \
    c##r##0 = _mm512_fmadd_ps(ar, b0, c##r##0);    \
    c##r##1 = _mm512_fmadd_ps(ar, b1, c##r##1);    \
  }
    SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
    SDLORA_ROW(6) SDLORA_ROW(7) SDLORA_ROW(8) SDLORA_ROW(9) SDLORA_ROW(10) SDLORA_ROW(11)
#undef SDLORA_ROW
  }
  SDLORA_AVX512_TILE_STORE  // (a macro: a lambda would not inherit the function's target attribute)
}
#endif

}  // namespace kernels

/// The micro-kernel for a path (resolved against the CPU: never one it cannot run) and a compute type: F32, or BF16
/// (bf16.hpp: AMX-BF16 or AVX512-BF16 on the AVX-512 path where the CPU has them, else the path's float kernel on
/// panels rounded to bf16).
inline GemmKernel gemm_kernel(Isa requested, DType compute = DType::F32) {
  GemmKernel k{Isa::kPortable, 4, 16, &kernels::micro_portable<4, 16>};
  switch (resolve_isa(requested)) {
#if SDLORA_X86_KERNELS
    case Isa::kAvx512: k = {Isa::kAvx512, kAvx512Mr, kAvx512Nr, &kernels::micro_avx512}; break;
    case Isa::kAvx2: k = {Isa::kAvx2, kAvx2Mr, kAvx2Nr, &kernels::micro_avx2}; break;
#endif
    default: break;
  }
  if (compute != DType::BF16) return k;
#if SDLORA_X86_KERNELS
  if (k.isa == Isa::kAvx512 && bf16_unit() == Bf16Unit::kAmx)
    return {Isa::kAvx512, 32, 32, &kernels::micro_amx, PanelFormat::kBf16Rows, PanelFormat::kBf16Pairs, 32,
            &kernels::amx_begin, &kernels::amx_end, 128};
  if (k.isa == Isa::kAvx512 && bf16_unit() == Bf16Unit::kDot)
    return {Isa::kAvx512, kAvx512Mr, kAvx512Nr, &kernels::micro_bf16_dot, PanelFormat::kBf16Pairs,
            PanelFormat::kBf16Pairs, 2};
#endif
  k.a_format = k.b_format = PanelFormat::kBf16Rounded;
  return k;
}

/// Blocking: the depth block keeps a (kKc, NR) B panel and an (MR, kKc) A panel in L1; an (kMc, kKc) A block and a
/// (kKc, kNc) B block stay in a 1 MB L2.
inline constexpr Index kKc = 256;
inline constexpr Index kMc = 144;  // a multiple of every MR (4, 6, 12)
inline constexpr Index kNc = 384;  // a multiple of every NR (16, 32)

/// A row-major or transposed matrix operand: element (r, c) of op(X) is p[r * ld + c], or p[c * ld + r] if trans.
struct MatrixOperand {
  float const* p;
  Index ld;
  bool trans;
  float at(Index r, Index c) const { return trans ? p[c * ld + r] : p[r * ld + c]; }
};

/// A weight matrix stored as float, F16 or BF16 (a frozen Parameter's storage), read as float: the packers widen
/// contiguous runs of it (F16 through the F16C instructions where the CPU has them, BF16 by a shift) straight into
/// the GEMM panels, so a 16-bit weight never exists as a float copy.
struct WeightSource {
  void const* p;
  DType dtype;  // F32, F16 or BF16
  Index ld;     // row stride in elements
  bool trans;   // element (r, c) of the operand is at c * ld + r instead of r * ld + c

  /// dst[0, n) = the n stored elements starting at element `offset`, as float.
  void widen(float* dst, Index offset, Index n) const {
    if (dtype == DType::F16 || dtype == DType::BF16)
      widen16(dst, static_cast<std::uint16_t const*>(p) + offset, n, dtype);
    else
      std::memcpy(dst, static_cast<float const*>(p) + offset, sizeof(float) * std::size_t(n));
  }

  /// The n stored elements from `offset` as float: read in place from a float weight, else widened into `scratch`
  /// (n floats; unused for a float weight).
  float const* read(float* scratch, Index offset, Index n) const {
    if (dtype == DType::F32) return static_cast<float const*>(p) + offset;
    widen(scratch, offset, n);
    return scratch;
  }
};

#if SDLORA_X86_KERNELS
// Full unrolling keeps the transpose's register arrays in registers. nvcc's front end, which also reads this header's
// host code in a .cu file, refuses the pragma, so there it is left to the compiler.
#if defined(__CUDACC__)
#define SDLORA_UNROLL(n)
#else
#define SDLORA_UNROLL_PRAGMA(text) _Pragma(#text)
#define SDLORA_UNROLL(n) SDLORA_UNROLL_PRAGMA(GCC unroll n)
#endif

namespace kernels {

/// dst[d * width + i] = src[i * ld + d] for d < depth and the `lanes` (<= 16) columns i of one 16-row group of a
/// panel: rows i >= rows (< 16) are zero. Sixteen depths at a time as a 16 x 16 transpose in registers (unpack,
/// in-lane shuffle, two 128-bit lane shuffles): 64 shuffles and 32 vector loads / stores for 256 values, where the
/// scalar loop does a load and a strided store per value. Packing a weight this way is pure data movement, so the
/// bits are those of the scalar loop.
__attribute__((target("avx512f"))) inline void transpose_rows_avx512(float* dst, Index width, float const* src,
                                                                      Index ld, Index rows, Index depth,
                                                                      Index lanes) {
  __mmask16 const store = __mmask16((1u << lanes) - 1u);
  // The maskz forms throughout: GCC 12's unmasked ones pass _mm512_undefined_ps, a -Wmaybe-uninitialized error.
  __mmask16 const all = 0xFFFF;
  for (Index d0 = 0; d0 < depth; d0 += 16) {
    Index const dn = std::min<Index>(16, depth - d0);
    __mmask16 const load = __mmask16((1u << dn) - 1u);
    __m512 r[16], t[16];
    SDLORA_UNROLL(16)
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_maskz_loadu_ps(load, src + i * ld + d0) : _mm512_setzero_ps();
    // In each 128-bit lane l: t[2p] = (r[2p][4l], r[2p+1][4l], r[2p][4l+1], r[2p+1][4l+1]), t[2p+1] the next two.
    SDLORA_UNROLL(8)
    for (int q = 0; q < 8; ++q) {
      t[2 * q] = _mm512_maskz_unpacklo_ps(all, r[2 * q], r[2 * q + 1]);
      t[2 * q + 1] = _mm512_maskz_unpackhi_ps(all, r[2 * q], r[2 * q + 1]);
    }
    // r[4g + c], lane l = rows 4g..4g+3 at column 4l + c.
    SDLORA_UNROLL(4)
    for (int g = 0; g < 4; ++g) {
      r[4 * g + 0] = _mm512_maskz_shuffle_ps(all, t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * g + 1] = _mm512_maskz_shuffle_ps(all, t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[4 * g + 2] = _mm512_maskz_shuffle_ps(all, t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * g + 3] = _mm512_maskz_shuffle_ps(all, t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    // Column 4l + c gathers lane l of r[c], r[4 + c], r[8 + c], r[12 + c].
    SDLORA_UNROLL(4)
    for (int c = 0; c < 4; ++c) {
      __m512 const even_lo = _mm512_maskz_shuffle_f32x4(all, r[c], r[4 + c], 0x88);  // lanes 0, 2 of r[c], r[4 + c]
      __m512 const odd_lo = _mm512_maskz_shuffle_f32x4(all, r[c], r[4 + c], 0xDD);   // lanes 1, 3
      __m512 const even_hi = _mm512_maskz_shuffle_f32x4(all, r[8 + c], r[12 + c], 0x88);
      __m512 const odd_hi = _mm512_maskz_shuffle_f32x4(all, r[8 + c], r[12 + c], 0xDD);
      t[c] = _mm512_maskz_shuffle_f32x4(all, even_lo, even_hi, 0x88);      // column c
      t[4 + c] = _mm512_maskz_shuffle_f32x4(all, odd_lo, odd_hi, 0x88);    // column 4 + c
      t[8 + c] = _mm512_maskz_shuffle_f32x4(all, even_lo, even_hi, 0xDD);  // column 8 + c
      t[12 + c] = _mm512_maskz_shuffle_f32x4(all, odd_lo, odd_hi, 0xDD);   // column 12 + c
    }
    for (Index j = 0; j < dn; ++j) _mm512_mask_storeu_ps(dst + (d0 + j) * width, store, t[j]);
  }
}

/// dst[d * width + i] = src[d * ld + i] for i < rows, 0 for rows <= i < width, d < depth: a panel whose rows are
/// contiguous in memory, copied a vector at a time (the generic loop calls memcpy for every 12 or 32 floats).
__attribute__((target("avx512f"))) inline void copy_rows_avx512(float* dst, Index width, float const* src, Index ld,
                                                                 Index rows, Index depth) {
  for (Index d = 0; d < depth; ++d, src += ld, dst += width)
    for (Index i0 = 0; i0 < width; i0 += 16) {
      Index const valid = std::clamp<Index>(rows - i0, 0, 16), lanes = std::min<Index>(16, width - i0);
      __m512 const v = _mm512_maskz_loadu_ps(__mmask16((1u << valid) - 1u), src + i0);
      _mm512_mask_storeu_ps(dst + i0, __mmask16((1u << lanes) - 1u), v);
    }
}

/// dst[0, lanes) = v (lanes <= 8) where dst[lanes, 8) may be overwritten (a later store of the panel writes there):
/// a full store. Zen 3's masked store is microcoded (slower than the scalar loop it replaces), so it serves only the
/// panel's last row, where the full store would run past the panel.
__attribute__((target("avx2"))) inline void store_lanes_avx2(float* dst, __m256 v, Index lanes, bool last) {
  if (lanes == 8 || !last) {
    _mm256_storeu_ps(dst, v);
    return;
  }
  __m256i const iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(dst, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(lanes)), iota), v);
}

/// v = src[0, valid) and zeros (valid <= 8): a full load where all eight are wanted.
__attribute__((target("avx2"))) inline __m256 load_lanes_avx2(float const* src, Index valid) {
  if (valid == 8) return _mm256_loadu_ps(src);
  if (valid == 0) return _mm256_setzero_ps();
  __m256i const iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(src, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(valid)), iota));
}

/// AVX2 counterpart of transpose_rows_avx512 for the AVX2 kernel's panels (6 and 16 wide): one 8-row group of a
/// panel, eight depths at a time as an 8 x 8 transpose in registers (unpack, in-lane shuffle, 128-bit lane permute:
/// 24 shuffles and 16 loads / stores for 64 values). Rows i >= rows (< 8) are zero; `lanes` (<= 8) columns are
/// stored, each depth's store spilling into the next depth's row (rewritten right after) except at the last depth.
/// Pure data movement: the bits are those of the scalar loop.
__attribute__((target("avx2"))) inline void transpose_rows_avx2(float* dst, Index width, float const* src, Index ld,
                                                                 Index rows, Index depth, Index lanes) {
  for (Index d0 = 0; d0 < depth; d0 += 8) {
    Index const dn = std::min<Index>(8, depth - d0);
    __m256 r[8], t[8];
    SDLORA_UNROLL(8)
    for (int i = 0; i < 8; ++i) r[i] = load_lanes_avx2(src + i * ld + d0, i < rows ? dn : 0);
    // In each 128-bit lane l: t[2p] = (r[2p][4l], r[2p+1][4l], r[2p][4l+1], r[2p+1][4l+1]), t[2p+1] the next two.
    SDLORA_UNROLL(4)
    for (int q = 0; q < 4; ++q) {
      t[2 * q] = _mm256_unpacklo_ps(r[2 * q], r[2 * q + 1]);
      t[2 * q + 1] = _mm256_unpackhi_ps(r[2 * q], r[2 * q + 1]);
    }
    // r[4g + c], lane l = rows 4g..4g+3 at column 4l + c.
    SDLORA_UNROLL(2)
    for (int g = 0; g < 2; ++g) {
      r[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    // Column c is lane 0 of r[c] and r[4 + c]; column 4 + c their lane 1.
    SDLORA_UNROLL(4)
    for (int c = 0; c < 4; ++c) {
      t[c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x20);
      t[4 + c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x31);
    }
    for (Index j = 0; j < dn; ++j) store_lanes_avx2(dst + (d0 + j) * width, t[j], lanes, d0 + j == depth - 1);
  }
}

/// AVX2 counterpart of copy_rows_avx512: a panel whose rows are contiguous in memory, eight values at a time.
__attribute__((target("avx2"))) inline void copy_rows_avx2(float* dst, Index width, float const* src, Index ld,
                                                            Index rows, Index depth) {
  for (Index d = 0; d < depth; ++d, src += ld, dst += width)
    for (Index i0 = 0; i0 < width; i0 += 8)
      store_lanes_avx2(dst + i0, load_lanes_avx2(src + i0, std::clamp<Index>(rows - i0, 0, 8)),
                       std::min<Index>(8, width - i0), d == depth - 1);
}

}  // namespace kernels
#undef SDLORA_UNROLL
#undef SDLORA_UNROLL_PRAGMA
#endif

/// Packs rows [r0, r0 + rows) x depth [d0, d0 + depth) of an operand read as (row, depth) into panels of `width`
/// rows: panel q holds depth-major (depth, width) values, zero past the last row. A's rows are M, B's are N. The loop
/// order follows whichever index is contiguous in memory; 16-bit storage is widened on the way. Where depth is
/// contiguous (a weight (out, in) or (O, C*kh*kw) row-major) each panel is a transpose: in registers for the x86
/// kernels' panels, whose widths say which path packs (AVX-512: 12 and 32, on a CPU that has it; AVX2: 6 and 16, unless
/// SDLORA_ISA=portable; the portable kernel's 16-wide B panels are then packed by the AVX2 code too when only a
/// Context<Cpu>::isa caps the path, which moves the same values).
inline void pack_weight_panels(float* dst, WeightSource const& x, Index r0, Index rows, Index d0, Index depth,
                               Index width) {
#if SDLORA_X86_KERNELS
  bool const avx512 = (width == kAvx512Mr || width == kAvx512Nr) && detected_isa() == Isa::kAvx512;
  bool const avx2 = (width == kAvx2Mr || width == kAvx2Nr) && resolve_isa(Isa::kAuto) != Isa::kPortable;
  if (avx512 || avx2) {
    Index const group = avx512 ? 16 : 8;  // rows per register transpose
    if (x.trans && x.dtype == DType::F32) {
      for (Index q = 0; q < rows; q += width, dst += width * depth) {
        float const* src = static_cast<float const*>(x.p) + d0 * x.ld + r0 + q;
        if (avx512) kernels::copy_rows_avx512(dst, width, src, x.ld, std::min(width, rows - q), depth);
        else kernels::copy_rows_avx2(dst, width, src, x.ld, std::min(width, rows - q), depth);
      }
      return;
    }
    if (!x.trans) {
      alignas(64) float runs[32 * kKc];  // a panel's rows widened from 16 bits (depth <= kKc)
      for (Index q = 0; q < rows; q += width, dst += width * depth) {
        Index const w = std::min(width, rows - q);
        float const* src = runs;
        Index ld = kKc;
        if (x.dtype == DType::F32) src = static_cast<float const*>(x.p) + (r0 + q) * x.ld + d0, ld = x.ld;
        else
          for (Index i = 0; i < w; ++i) x.widen(runs + i * kKc, (r0 + q + i) * x.ld + d0, depth);
        for (Index i0 = 0; i0 < width; i0 += group) {
          Index const valid = std::clamp<Index>(w - i0, 0, group), lanes = std::min<Index>(group, width - i0);
          if (avx512) kernels::transpose_rows_avx512(dst + i0, width, src + i0 * ld, ld, valid, depth, lanes);
          else kernels::transpose_rows_avx2(dst + i0, width, src + i0 * ld, ld, valid, depth, lanes);
        }
      }
      return;
    }
  }
#endif
  alignas(64) float run[kKc];  // one row's depth run (depth <= kKc)
  for (Index q = 0; q < rows; q += width, dst += width * depth) {
    Index const w = std::min(width, rows - q);
    if (!x.trans) {  // depth contiguous: read each row's run (widened first unless float), write with stride `width`
      for (Index i = 0; i < w; ++i) {
        Index const at = (r0 + q + i) * x.ld + d0;
        float const* src = run;
        if (x.dtype == DType::F32) src = static_cast<float const*>(x.p) + at;
        else x.widen(run, at, depth);
        for (Index d = 0; d < depth; ++d) dst[d * width + i] = src[d];
      }
    } else {  // rows contiguous: widen `w` consecutive values per depth step in place
      for (Index d = 0; d < depth; ++d) x.widen(dst + d * width, (d0 + d) * x.ld + r0 + q, w);
    }
    if (w < width)
      for (Index d = 0; d < depth; ++d) std::fill_n(dst + d * width + w, width - w, 0.f);
  }
}

/// A packer of an operand held in memory, read as (row, depth): A's (M, K), or op(B)^T's (N, K) for B. Batch item
/// bi's operand starts bi * batch_stride elements in (float operands only; a weight has no batch). It packs float
/// panels, and gives the bf16 paths its source, which they read straight into their formats (pack_direct).
struct SourcePacker {
  WeightSource w;
  Index batch_stride = 0;

  WeightSource source(Index bi) const {
    WeightSource s = w;
    if (batch_stride != 0) s.p = static_cast<float const*>(w.p) + bi * batch_stride;
    return s;
  }
};
/// A's packer: (dst, batch index, m0, mc, k0, kc, MR).
struct SourcePackerA : SourcePacker {
  void operator()(float* dst, Index bi, Index m0, Index mc, Index k0, Index kc, Index mr) const {
    pack_weight_panels(dst, source(bi), m0, mc, k0, kc, mr);
  }
};
/// B's packer: (dst, batch index, k0, kc, n0, nc, NR), packing op(B)^T's rows (N) over the depth (K).
struct SourcePackerB : SourcePacker {
  void operator()(float* dst, Index bi, Index k0, Index kc, Index n0, Index nc, Index nr) const {
    pack_weight_panels(dst, source(bi), n0, nc, k0, kc, nr);
  }
};

/// A (M, K) operand packer.
inline SourcePackerA matrix_packer_a(MatrixOperand a, Index batch_stride) {
  return {{WeightSource{a.p, DType::F32, a.ld, a.trans}, batch_stride}};
}

/// A (K, N) operand packer. Read as (n, k): element (n, k) of op(B)^T is op(B)(k, n), i.e. the transposed operand
/// with trans flipped.
inline SourcePackerB matrix_packer_b(MatrixOperand b, Index batch_stride) {
  return {{WeightSource{b.p, DType::F32, b.ld, !b.trans}, batch_stride}};
}

/// A (M, K) packer over a WeightSource (no batch).
inline SourcePackerA weight_packer_a(WeightSource a) { return {{a, 0}}; }

/// A (K, N) packer over a WeightSource (no batch): op(B)^T read as (n, k).
inline SourcePackerB weight_packer_b(WeightSource b) {
  b.trans = !b.trans;
  return {{b, 0}};
}

/// Scratch of one thread: one packed A block and one packed B block, allocated on the thread's first GEMM and kept
/// (540 KB) so that no GEMM call allocates or faults in pages; and one float panel, where the bf16 paths pack a panel
/// before converting it (two of 32 KB).
class PackBuffers {
 public:
  PackBuffers()
      : a_(static_cast<float*>(BackendMemory<Cpu>::allocate(sizeof(float) * kMc * kKc))),
        b_(static_cast<float*>(BackendMemory<Cpu>::allocate(sizeof(float) * kNc * kKc))),
        stage_(static_cast<float*>(BackendMemory<Cpu>::allocate(sizeof(float) * 2 * 32 * kKc))) {}
  PackBuffers(PackBuffers const&) = delete;
  PackBuffers& operator=(PackBuffers const&) = delete;
  ~PackBuffers() {
    BackendMemory<Cpu>::deallocate(a_);
    BackendMemory<Cpu>::deallocate(b_);
    BackendMemory<Cpu>::deallocate(stage_);
  }
  float* a() const { return a_; }
  float* b() const { return b_; }
  float* stage() const { return stage_; }               // (kKc, 32)
  float* stage2() const { return stage_ + 32 * kKc; }  // (32, kKc)

  /// The calling thread's buffers.
  static PackBuffers const& local() {
    thread_local PackBuffers const buffers;
    return buffers;
  }

 private:
  float* a_;  // (kMc / MR panels, kKc, MR)
  float* b_;  // (kNc / NR panels, kKc, NR)
  float* stage_;
};

/// Packs rows [r0, r0 + rows) x depths [d0, d0 + depth) of an operand in memory (read as (row, depth)) straight into
/// panels of `width` in a bf16 `format`, where its layout allows: rows of bf16 (AMX's A) from a depth-contiguous
/// operand, each row's run rounded; depth pairs from a row-contiguous float operand (two depths' runs interleaved
/// while rounded) or from a depth-contiguous one (runs rounded, then a 32-bit transpose of the pairs). Returns false,
/// packing nothing, where it does not (the caller then packs float panels and converts them).
inline bool pack_direct(GemmKernel const& kern, PanelFormat format, float* dst, WeightSource const& s, Index r0,
                        Index rows, Index d0, Index depth, Index width) {
#if SDLORA_X86_KERNELS
  Index const kp = (depth + kern.pad - 1) / kern.pad * kern.pad;
  auto* out = reinterpret_cast<std::uint16_t*>(dst);
  alignas(64) float run[kKc];
  // Row r's depth run rounded into o[0, kp), zero past depth.
  auto round_run = [&](std::uint16_t* o, Index r) {
    Index const at = r * s.ld + d0;
    if (s.dtype == DType::BF16) std::memcpy(o, static_cast<std::uint16_t const*>(s.p) + at, sizeof(*o) * depth);
    else bf16_detail::narrow(o, s.read(run, at, depth), depth);
    std::fill(o + depth, o + kp, std::uint16_t(0));
  };
  if (format == PanelFormat::kBf16Rows && !s.trans) {
    for (Index q = 0; q < rows; q += width, out += width * kp)
      for (Index i = 0; i < width; ++i)
        if (q + i < rows) round_run(out + i * kp, r0 + q + i);
        else std::fill_n(out + i * kp, kp, std::uint16_t(0));
    return true;
  }
  if (format == PanelFormat::kBf16Pairs && s.trans && s.dtype == DType::F32) {
    for (Index q = 0; q < rows; q += width, out += width * kp)
      bf16_detail::to_pairs(out, static_cast<float const*>(s.p) + d0 * s.ld + r0 + q, s.ld, width,
                            std::min(width, rows - q), depth, kp);
    return true;
  }
  if (format == PanelFormat::kBf16Pairs && !s.trans && width <= 32) {
    auto* stage = reinterpret_cast<std::uint16_t*>(PackBuffers::local().stage());  // (width, kp) bf16
    for (Index q = 0; q < rows; q += width, dst += width * kp / 2) {
      Index const w = std::min(width, rows - q);
      for (Index i = 0; i < w; ++i) round_run(stage + i * kp, r0 + q + i);
      for (Index i0 = 0; i0 < width; i0 += 16)  // pair p of row i (32 bits) to dst[p * width + i]
        kernels::transpose_rows_avx512(dst + i0, width, reinterpret_cast<float const*>(stage) + i0 * kp / 2, kp / 2,
                                       std::clamp<Index>(w - i0, 0, 16), kp / 2, std::min<Index>(16, width - i0));
    }
    return true;
  }
#endif
  (void)kern, (void)format, (void)dst, (void)s, (void)r0, (void)rows, (void)d0, (void)depth, (void)width;
  return false;
}

/// Packs `rows` rows from r0 over depths [d0, d0 + depth) into panels of `width` in a kernel's `format`:
/// pack(dst, r0, rows, d0, depth) writes float panels (an operand's packer); the bf16 formats are rounded in place
/// or packed one panel at a time into the thread's staging panel and converted from there, while it is in L1.
template <class Pack>
void pack_in_format(GemmKernel const& kern, PanelFormat format, float* dst, Index r0, Index rows, Index d0,
                    Index depth, Index width, Pack const& pack) {
  if (format == PanelFormat::kFloat) return pack(dst, r0, rows, d0, depth);
  if (format == PanelFormat::kBf16Rounded) {
    pack(dst, r0, rows, d0, depth);
    bf16_detail::round_in_place(dst, (rows + width - 1) / width * width * depth);
    return;
  }
  float* const stage = PackBuffers::local().stage();
  Index const row_floats = panel_row_floats(format, kern.pad, depth);
  for (Index q = 0; q < rows; q += width, dst += width * row_floats) {
    pack(stage, r0 + q, std::min(width, rows - q), d0, depth);
#if SDLORA_X86_KERNELS
    if (format == PanelFormat::kBf16Rows && width <= 32) {  // AMX: transposed in registers, then rounded by rows
      Index const kp = row_floats * 2;
      float* const rows_major = PackBuffers::local().stage2();  // (width, kp) float
      for (Index p0 = 0; p0 < kp; p0 += 16)
        kernels::transpose_rows_avx512(rows_major + p0, kp, stage + p0 * width, width,
                                       std::clamp<Index>(depth - p0, 0, 16), width, 16);
      bf16_detail::narrow(reinterpret_cast<std::uint16_t*>(dst), rows_major, width * kp);
      continue;
    }
#endif
    bf16_detail::convert_panel(dst, stage, format, width, depth, kern.pad);
  }
}

/// How C is cut into tasks.
struct GemmTiling {
  Index m_chunk, n_tile, m_chunks, n_tiles;
  Index tasks(Index batch) const { return batch * m_chunks * n_tiles; }
};

/// Whole rows of C per task when the N tiles alone give every thread several tasks; otherwise M chunks of kMc rows,
/// then narrower N tiles (down to 4 register tiles), until there are about 4 tasks per thread.
inline GemmTiling gemm_tiling(Index batch, Index m, Index n, int threads, Index nr, Index mc = kMc) {
  Index const want = threads > 1 ? Index(4) * threads : 1;
  GemmTiling t{m, kNc, 1, (n + kNc - 1) / kNc};
  if (t.tasks(batch) >= want) return t;
  t.m_chunk = std::min(m, mc);
  t.m_chunks = (m + t.m_chunk - 1) / t.m_chunk;
  while (t.tasks(batch) < want && t.n_tile > 4 * nr) {
    t.n_tile = std::max(4 * nr, (t.n_tile / 2 + nr - 1) / nr * nr);
    t.n_tiles = (n + t.n_tile - 1) / t.n_tile;
  }
  return t;
}

/// The usual C addressing: batch bi's (M, N) matrix at c + bi * batch_stride with row stride ldc.
struct StridedOutput {
  float* c;
  Index batch_stride, ldc;
  float* operator()(Index bi, Index row, Index col) const { return c + bi * batch_stride + row * ldc + col; }
};

/// Operands packed once per call and read by every task: the calling thread's buffer, grown to the largest request
/// (at most kSharedPanelFloats) and kept, so that repeated GEMMs neither allocate nor fault in pages.
inline constexpr Index kSharedPanelFloats = Index(1) << 22;  // 16 MB

class SharedPanels {
 public:
  SharedPanels() = default;
  SharedPanels(SharedPanels const&) = delete;
  SharedPanels& operator=(SharedPanels const&) = delete;
  ~SharedPanels() { BackendMemory<Cpu>::deallocate(p_); }

  /// At least `floats` floats of the calling thread's buffer (its contents are not kept across calls).
  static float* reserve(Index floats) {
    thread_local SharedPanels panels;
    if (floats > panels.size_) {
      BackendMemory<Cpu>::deallocate(panels.p_);
      panels.p_ = nullptr;
      panels.size_ = 0;
      panels.p_ = static_cast<float*>(BackendMemory<Cpu>::allocate(sizeof(float) * std::size_t(floats)));
      panels.size_ = floats;
    }
    return panels.p_;
  }

 private:
  float* p_ = nullptr;
  Index size_ = 0;
};

/// A bias added to C after the product (y = A @ B + bias): per row of C (a convolution's output channels) or per
/// column (a Linear's output features). gemm_packed adds it to each register tile right after the tile's last depth
/// block, while the tile is in L1, where a separate pass would read and write the whole output once more. The bias is
/// the last term added to each element, as in that pass, so the bits are the same. At most one of the two is set.
struct GemmBias {
  float const* row = nullptr;  // (M): C(bi, r, c) += row[r]
  float const* col = nullptr;  // (N): C(bi, r, c) += col[c]
};

/// C(bi) (M, N) = alpha * A @ B + beta * C for every batch index bi, A and B read through the packers and C's
/// element (bi, row, col) at c_at(bi, row, col): the NR columns of one register tile (NR = 16 or 32, tiles start at
/// multiples of NR) must be consecutive in memory, and rows ldc apart. beta == 0 never reads C.
///
/// Tasks are (M chunk, N tile) blocks of C. An operand that several tasks would each pack alike (A when there are
/// several N tiles, B when there are several M chunks; a weight packed 15 times for one Linear of 2048 tokens, a
/// convolution's image columns 3 times) is packed once, in parallel, into the caller's SharedPanels before the tasks
/// run, over as many depth blocks at a time as fit in it. Every element of C is the same sum of the same products
/// in the same order whatever is packed where, so the bits depend on neither the tiling nor the thread count.
/// `bias` (GemmBias) is added to each element last. shared_floats bounds the shared panels (a test lowers it to cover
/// several depth ranges).
template <class PackA, class PackB, class COut>
void gemm_packed(Context<Cpu>& ctx, Index batch, Index m, Index n, Index k, PackA const& pack_a, PackB const& pack_b,
                 COut const& c_at, Index ldc, float alpha, float beta, GemmBias bias = {},
                 Index shared_floats = kSharedPanelFloats) {
  if (batch == 0 || m == 0 || n == 0) return;
  GemmKernel const kern = gemm_kernel(ctx.isa, ctx.compute);
  if (k == 0) {  // C = beta * C
    for (Index bi = 0; bi < batch; ++bi)
      for (Index r = 0; r < m; ++r)
        for (Index j = 0; j < n; ++j) {
          float* e = c_at(bi, r, j);
          *e = beta == 0.f ? 0.f : beta * *e;
          if (bias.row) *e += bias.row[r];
          if (bias.col) *e += bias.col[j];
        }
    return;
  }
  int const threads = ctx.threads();
  GemmTiling const tiling = gemm_tiling(batch, m, n, threads, kern.nr, kern.mc);
  Index const tasks = tiling.tasks(batch);
  bool const big = double(batch) * m * n * k > double(1 << 17);
  bool const parallel = threads > 1 && tasks > 1 && big && !ThreadPool::inside_task();

  // Shared panels (one batch item only), for the depth range [k0, k1) packed last: depth block pc's A panels at
  // a_shared + (pc - k0) / kKc * a_block, its B panels at b_shared + (pc - k0) / kKc * b_block (floats per depth
  // block); block (ic, pc)'s panels start ic rows in, kern.a_row(kc) floats a row (kc for float panels).
  Index const m_pad = (m + kern.mr - 1) / kern.mr * kern.mr, n_pad = (n + kern.nr - 1) / kern.nr * kern.nr;
  bool const share_a = batch == 1 && big && tiling.n_tiles > 1, share_b = batch == 1 && big && tiling.m_chunks > 1;
  Index const a_block = share_a ? m_pad * kern.a_row(kKc) : 0, b_block = share_b ? n_pad * kern.b_row(kKc) : 0;
  Index const range = a_block + b_block == 0 ? k : std::max<Index>(1, shared_floats / (a_block + b_block)) * kKc;
  Index const held = (std::min(range, k) + kKc - 1) / kKc;  // depth blocks in the shared buffer
  float* const a_shared = a_block + b_block == 0 ? nullptr : SharedPanels::reserve((a_block + b_block) * held);
  float* const b_shared = a_shared + a_block * held;

  // The operands' packers in the kernel's panel formats.
  auto pack_a_in = [&](float* dst, Index bi, Index m0, Index mc, Index k0, Index kc) {
    if constexpr (std::is_base_of_v<SourcePacker, PackA>)
      if (kern.converts() && pack_direct(kern, kern.a_format, dst, pack_a.source(bi), m0, mc, k0, kc, kern.mr)) return;
    pack_in_format(kern, kern.a_format, dst, m0, mc, k0, kc, kern.mr,
                   [&](float* to, Index r0, Index rows, Index d0, Index depth) {
                     pack_a(to, bi, r0, rows, d0, depth, kern.mr);
                   });
  };
  auto pack_b_in = [&](float* dst, Index bi, Index k0, Index kc, Index n0, Index nc) {
    if constexpr (std::is_base_of_v<SourcePacker, PackB>)
      if (kern.converts() && pack_direct(kern, kern.b_format, dst, pack_b.source(bi), n0, nc, k0, kc, kern.nr)) return;
    pack_in_format(kern, kern.b_format, dst, n0, nc, k0, kc, kern.nr,
                   [&](float* to, Index r0, Index rows, Index d0, Index depth) {
                     pack_b(to, bi, d0, depth, r0, rows, kern.nr);
                   });
  };

  // The bias of an (mr, nr) tile of C at cp, rows from r0 and columns from c0, after its last depth block.
  auto add_bias = [&](float* cp, Index r0, Index mr, Index c0, Index nr) {
    if (bias.row)
      for (Index r = 0; r < mr; ++r)
        for (Index j = 0; j < nr; ++j) cp[r * ldc + j] += bias.row[r0 + r];
    if (bias.col)
      for (Index r = 0; r < mr; ++r)
        for (Index j = 0; j < nr; ++j) cp[r * ldc + j] += bias.col[c0 + j];
  };

  auto run_task = [&](PackBuffers const& buf, Index t, Index k0, Index k1) {
    Index const bi = t / (tiling.m_chunks * tiling.n_tiles), rest = t % (tiling.m_chunks * tiling.n_tiles);
    Index const ms = (rest / tiling.n_tiles) * tiling.m_chunk, me = std::min(m, ms + tiling.m_chunk);
    Index const ns = (rest % tiling.n_tiles) * tiling.n_tile, nt = std::min(tiling.n_tile, n - ns);
    alignas(64) float edge[32 * 32];  // (MR, NR) tile for the ragged edges
    if (kern.begin) kern.begin();
    for (Index nb = ns; nb < ns + nt; nb += kNc) {
      Index const nc = std::min(kNc, ns + nt - nb);
      for (Index pc = k0; pc < k1; pc += kKc) {
        Index const kc = std::min(kKc, k - pc);
        float const beta_k = pc == 0 ? beta : 1.f;
        float const* b_panels = buf.b();
        if (share_b) b_panels = b_shared + (pc - k0) / kKc * b_block + nb * kern.b_row(kc);
        else pack_b_in(buf.b(), bi, pc, kc, nb, nc);
        for (Index ic = ms; ic < me; ic += kern.mc) {
          Index const mc = std::min(kern.mc, me - ic);
          float const* a_panels = buf.a();
          if (share_a) a_panels = a_shared + (pc - k0) / kKc * a_block + ic * kern.a_row(kc);
          else pack_a_in(buf.a(), bi, ic, mc, pc, kc);
          for (Index jr = 0; jr < nc; jr += kern.nr) {
            Index const nr = std::min(kern.nr, nc - jr);
            float const* bp = b_panels + jr * kern.b_row(kc);
            for (Index ir = 0; ir < mc; ir += kern.mr) {
              Index const mr = std::min(kern.mr, mc - ir);
              float const* ap = a_panels + ir * kern.a_row(kc);
              float* cp = c_at(bi, ic + ir, nb + jr);
              if (mr == kern.mr && nr == kern.nr) {
                kern.run(kc, ap, bp, cp, ldc, alpha, beta_k);
              } else {
                kern.run(kc, ap, bp, edge, kern.nr, alpha, 0.f);
                for (Index r = 0; r < mr; ++r)
                  for (Index j = 0; j < nr; ++j)
                    cp[r * ldc + j] = beta_k == 0.f ? edge[r * kern.nr + j]
                                                    : edge[r * kern.nr + j] + beta_k * cp[r * ldc + j];
              }
              if (pc + kc == k) add_bias(cp, ic + ir, mr, nb + jr, nr);
            }
          }
        }
      }
    }
    if (kern.end) kern.end();
  };

  // Packing tasks of the shared panels for depths [k0, k1): (depth block, kMc rows of A or kNc columns of B).
  Index const a_blocks = share_a ? (m + kern.mc - 1) / kern.mc : 0, b_blocks = share_b ? (n + kNc - 1) / kNc : 0;
  auto pack_shared = [&](Index t, Index k0) {
    Index const pc = k0 + t / (a_blocks + b_blocks) * kKc, j = t % (a_blocks + b_blocks);
    Index const kc = std::min(kKc, k - pc);
    if (j < a_blocks) {
      Index const ic = j * kern.mc;
      pack_a_in(a_shared + (pc - k0) / kKc * a_block + ic * kern.a_row(kc), 0, ic, std::min(kern.mc, m - ic), pc, kc);
    } else {
      Index const nb = (j - a_blocks) * kNc;
      pack_b_in(b_shared + (pc - k0) / kKc * b_block + nb * kern.b_row(kc), 0, pc, kc, nb, std::min(kNc, n - nb));
    }
  };

  for (Index k0 = 0; k0 < k; k0 += range) {
    Index const k1 = std::min(k, k0 + range);
    Index const pack_tasks = (k1 - k0 + kKc - 1) / kKc * (a_blocks + b_blocks);
    if (!parallel) {
      for (Index t = 0; t < pack_tasks; ++t) pack_shared(t, k0);
      for (Index t = 0; t < tasks; ++t) run_task(PackBuffers::local(), t, k0, k1);
      continue;
    }
    if (pack_tasks > 0) parallel_tasks(ctx, pack_tasks, [&](Index t, int) { pack_shared(t, k0); });
    parallel_tasks(ctx, tasks, [&](Index t, int) { run_task(PackBuffers::local(), t, k0, k1); });
  }
}

/// C_i (M, P) = alpha * A @ B_i + beta * C_i for items i < count that share A (a weight): C_i at c + i * item_stride
/// with row stride ldc, B_i packed by pack_b_item(dst, i, k0, kc, col0, ncols, nr) over item i's columns. When P is a
/// multiple of every NR the items are laid side by side as one (M, count * P) product, so A is packed once rather
/// than once per item (packing the weight dominates convolutions of small images); every element is the same sum in
/// the same order either way, so the bits do not depend on the choice. row_bias (M) is added to each row last
/// (GemmBias).
template <class PackA, class PackB>
void gemm_shared_a(Context<Cpu>& ctx, Index count, Index m, Index p, Index k, PackA const& pack_a,
                   PackB const& pack_b_item, float* c, Index item_stride, Index ldc, float alpha, float beta,
                   float const* row_bias = nullptr) {
  constexpr Index kMaxNr = 32;
  GemmBias const bias{row_bias, nullptr};
  if (count <= 1 || p % kMaxNr != 0) {
    gemm_packed(ctx, count, m, p, k, pack_a, pack_b_item, StridedOutput{c, item_stride, ldc}, ldc, alpha, beta, bias);
    return;
  }
  auto pack_b = [&](float* dst, Index, Index k0, Index kc, Index n0, Index nc, Index nr) {
    for (Index q = 0; q < nc; q += nr) {  // each NR panel lies within one item
      Index const col = n0 + q, item = col / p;
      pack_b_item(dst + q * kc, item, k0, kc, col - item * p, std::min(nr, nc - q), nr);
    }
  };
  auto c_at = [&](Index, Index row, Index col) {
    Index const item = col / p;
    return c + item * item_stride + row * ldc + (col - item * p);
  };
  gemm_packed(ctx, 1, m, count * p, k, pack_a, pack_b, c_at, ldc, alpha, beta, bias);
}

/// C (batch?, M, N) = alpha * op(A) @ op(B) + beta * C for plain row-major operands (batch stride 0 broadcasts).
inline void sgemm(Context<Cpu>& ctx, Index batch, Index m, Index n, Index k, MatrixOperand a, Index a_batch_stride,
                  MatrixOperand b, Index b_batch_stride, float* c, Index ldc, Index c_batch_stride, float alpha,
                  float beta) {
  gemm_packed(ctx, batch, m, n, k, matrix_packer_a(a, a_batch_stride), matrix_packer_b(b, b_batch_stride),
              StridedOutput{c, c_batch_stride, ldc}, ldc, alpha, beta);
}

/// C (M, N) = alpha * op(A) @ op(W) + beta * C (+ col_bias (N) on every row, added last) for float activations A and
/// a weight W in any storage (Linear).
inline void sgemm_weight(Context<Cpu>& ctx, Index m, Index n, Index k, MatrixOperand a, WeightSource w, float* c,
                         Index ldc, float alpha, float beta, float const* col_bias = nullptr) {
  gemm_packed(ctx, 1, m, n, k, matrix_packer_a(a, 0), weight_packer_b(w), StridedOutput{c, 0, ldc}, ldc, alpha,
              beta, GemmBias{nullptr, col_bias});
}

}  // namespace sdlora::cpu
