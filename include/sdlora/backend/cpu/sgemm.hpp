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
#include <bit>        // std::bit_cast
#include <cstdint>    // std::uint16_t, std::uint32_t
#include <cstring>    // std::memcpy

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>  // _mm512_*, _mm256_*
#define SDLORA_X86_KERNELS 1
#else
#define SDLORA_X86_KERNELS 0
#endif

#include <sdlora/backend/cpu/isa.hpp>       // Isa, resolve_isa
#include <sdlora/backend/cpu/parallel.hpp>  // parallel_tasks, ThreadPool
#include <sdlora/core/backend.hpp>     // Context<Cpu>, BackendMemory<Cpu>
#include <sdlora/core/dtype.hpp>       // DType, half
#include <sdlora/core/shape.hpp>       // Index

namespace sdlora::cpu {

/// c (MR, NR) = alpha * sum_k a[k] (MR) outer b[k] (NR) + beta * c, with a packed (kc, MR) and b packed (kc, NR);
/// beta == 0 never reads c.
using MicroKernel = void (*)(Index kc, float const* a, float const* b, float* c, Index ldc, float alpha, float beta);

/// A micro-kernel and its register tile.
struct GemmKernel {
  Isa isa;
  Index mr, nr;
  MicroKernel run;
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
#define SDLORA_ROW(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = _mm512_setzero_ps();
  SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
  SDLORA_ROW(6) SDLORA_ROW(7) SDLORA_ROW(8) SDLORA_ROW(9) SDLORA_ROW(10) SDLORA_ROW(11)
#undef SDLORA_ROW
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
  __m512 const va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  // (a lambda would not inherit the function's target attribute)
#define SDLORA_STORE(p, v)                                                                    \
  _mm512_storeu_ps(p, beta != 0.f ? _mm512_fmadd_ps(vb, _mm512_loadu_ps(p), _mm512_mul_ps(va, v)) \
                                 : _mm512_mul_ps(va, v));
#define SDLORA_ROW(r)                  \
  SDLORA_STORE(c + r * ldc, c##r##0)   \
  SDLORA_STORE(c + r * ldc + 16, c##r##1)
  SDLORA_ROW(0) SDLORA_ROW(1) SDLORA_ROW(2) SDLORA_ROW(3) SDLORA_ROW(4) SDLORA_ROW(5)
  SDLORA_ROW(6) SDLORA_ROW(7) SDLORA_ROW(8) SDLORA_ROW(9) SDLORA_ROW(10) SDLORA_ROW(11)
#undef SDLORA_ROW
#undef SDLORA_STORE
}
#endif

}  // namespace kernels

/// The micro-kernel for a path (resolved against the CPU: never one it cannot run).
inline GemmKernel gemm_kernel(Isa requested) {
  switch (resolve_isa(requested)) {
#if SDLORA_X86_KERNELS
    case Isa::kAvx512: return {Isa::kAvx512, 12, 32, &kernels::micro_avx512};
    case Isa::kAvx2: return {Isa::kAvx2, 6, 16, &kernels::micro_avx2};
#endif
    default: return {Isa::kPortable, 4, 16, &kernels::micro_portable<4, 16>};
  }
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
    switch (dtype) {
      case DType::F16: widen_f16(dst, static_cast<std::uint16_t const*>(p) + offset, n); return;
      case DType::BF16: {
        std::uint16_t const* src = static_cast<std::uint16_t const*>(p) + offset;
        for (Index i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(std::uint32_t(src[i]) << 16);
        return;
      }
      default: std::memcpy(dst, static_cast<float const*>(p) + offset, sizeof(float) * std::size_t(n)); return;
    }
  }

  static void widen_f16(float* dst, std::uint16_t const* src, Index n) {
#if SDLORA_X86_KERNELS
    // Every AVX2 CPU has F16C; asking for "avx2" also builds with clang 14, whose __builtin_cpu_supports lacks "f16c".
    static bool const f16c = [] {
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") != 0;
    }();
    if (f16c) return widen_f16_f16c(dst, src, n);
#endif
    for (Index i = 0; i < n; ++i) dst[i] = float(half::from_bits(src[i]));
  }
#if SDLORA_X86_KERNELS
  __attribute__((target("avx,f16c"))) static void widen_f16_f16c(float* dst, std::uint16_t const* src, Index n) {
    Index i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(src + i))));
    for (; i < n; ++i) dst[i] = float(half::from_bits(src[i]));
  }
#endif
};

/// Packs rows [r0, r0 + rows) x depth [d0, d0 + depth) of an operand read as (row, depth) into panels of `width`
/// rows: panel q holds depth-major (depth, width) values, zero past the last row. A's rows are M, B's are N. The loop
/// order follows whichever index is contiguous in memory; 16-bit storage is widened on the way.
inline void pack_weight_panels(float* dst, WeightSource const& x, Index r0, Index rows, Index d0, Index depth,
                               Index width) {
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

/// A (M, K) operand packer: (dst, batch index, m0, mc, k0, kc, MR).
inline auto matrix_packer_a(MatrixOperand a, Index batch_stride) {
  return [a, batch_stride](float* dst, Index bi, Index m0, Index mc, Index k0, Index kc, Index mr) {
    pack_weight_panels(dst, WeightSource{a.p + bi * batch_stride, DType::F32, a.ld, a.trans}, m0, mc, k0, kc, mr);
  };
}

/// A (K, N) operand packer: (dst, batch index, k0, kc, n0, nc, NR). Packs op(B)^T's rows (N) over the depth (K).
inline auto matrix_packer_b(MatrixOperand b, Index batch_stride) {
  return [b, batch_stride](float* dst, Index bi, Index k0, Index kc, Index n0, Index nc, Index nr) {
    // Read as (n, k): element (n, k) of op(B)^T is op(B)(k, n), i.e. the transposed operand with trans flipped.
    pack_weight_panels(dst, WeightSource{b.p + bi * batch_stride, DType::F32, b.ld, !b.trans}, n0, nc, k0, kc, nr);
  };
}

/// A (M, K) packer over a WeightSource (no batch).
inline auto weight_packer_a(WeightSource a) {
  return [a](float* dst, Index, Index m0, Index mc, Index k0, Index kc, Index mr) {
    pack_weight_panels(dst, a, m0, mc, k0, kc, mr);
  };
}
/// A (K, N) packer over a WeightSource (no batch): op(B)^T read as (n, k).
inline auto weight_packer_b(WeightSource b) {
  return [b](float* dst, Index, Index k0, Index kc, Index n0, Index nc, Index nr) {
    WeightSource t = b;
    t.trans = !b.trans;
    pack_weight_panels(dst, t, n0, nc, k0, kc, nr);
  };
}

/// Scratch of one thread: one packed A block and one packed B block, allocated on the thread's first GEMM and kept
/// (540 KB) so that no GEMM call allocates or faults in pages.
class PackBuffers {
 public:
  PackBuffers()
      : a_(static_cast<float*>(BackendMemory<Cpu>::allocate(sizeof(float) * kMc * kKc))),
        b_(static_cast<float*>(BackendMemory<Cpu>::allocate(sizeof(float) * kNc * kKc))) {}
  PackBuffers(PackBuffers const&) = delete;
  PackBuffers& operator=(PackBuffers const&) = delete;
  ~PackBuffers() {
    BackendMemory<Cpu>::deallocate(a_);
    BackendMemory<Cpu>::deallocate(b_);
  }
  float* a() const { return a_; }
  float* b() const { return b_; }

  /// The calling thread's buffers.
  static PackBuffers const& local() {
    thread_local PackBuffers const buffers;
    return buffers;
  }

 private:
  float* a_;  // (kMc / MR panels, kKc, MR)
  float* b_;  // (kNc / NR panels, kKc, NR)
};

/// How C is cut into tasks.
struct GemmTiling {
  Index m_chunk, n_tile, m_chunks, n_tiles;
  Index tasks(Index batch) const { return batch * m_chunks * n_tiles; }
};

/// Whole rows of C per task when the N tiles alone give every thread several tasks; otherwise M chunks of kMc rows,
/// then narrower N tiles (down to 4 register tiles), until there are about 4 tasks per thread.
inline GemmTiling gemm_tiling(Index batch, Index m, Index n, int threads, Index nr) {
  Index const want = threads > 1 ? Index(4) * threads : 1;
  GemmTiling t{m, kNc, 1, (n + kNc - 1) / kNc};
  if (t.tasks(batch) >= want) return t;
  t.m_chunk = std::min(m, kMc);
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

/// C(bi) (M, N) = alpha * A @ B + beta * C for every batch index bi, A and B read through the packers and C's
/// element (bi, row, col) at c_at(bi, row, col): the NR columns of one register tile (NR = 16 or 32, tiles start at
/// multiples of NR) must be consecutive in memory, and rows ldc apart. beta == 0 never reads C.
template <class PackA, class PackB, class COut>
void gemm_packed(Context<Cpu>& ctx, Index batch, Index m, Index n, Index k, PackA const& pack_a, PackB const& pack_b,
                 COut const& c_at, Index ldc, float alpha, float beta) {
  if (batch == 0 || m == 0 || n == 0) return;
  GemmKernel const kern = gemm_kernel(ctx.isa);
  if (k == 0) {  // C = beta * C
    for (Index bi = 0; bi < batch; ++bi)
      for (Index r = 0; r < m; ++r)
        for (Index j = 0; j < n; ++j) {
          float* e = c_at(bi, r, j);
          *e = beta == 0.f ? 0.f : beta * *e;
        }
    return;
  }
  int const threads = ctx.threads();
  GemmTiling const tiling = gemm_tiling(batch, m, n, threads, kern.nr);
  Index const tasks = tiling.tasks(batch);
  bool const parallel = threads > 1 && tasks > 1 && double(batch) * m * n * k > double(1 << 17) &&
                        !ThreadPool::inside_task();

  auto run_task = [&](PackBuffers const& buf, Index t) {
    Index const bi = t / (tiling.m_chunks * tiling.n_tiles), rest = t % (tiling.m_chunks * tiling.n_tiles);
    Index const ms = (rest / tiling.n_tiles) * tiling.m_chunk, me = std::min(m, ms + tiling.m_chunk);
    Index const ns = (rest % tiling.n_tiles) * tiling.n_tile, nt = std::min(tiling.n_tile, n - ns);
    alignas(64) float edge[12 * 32];  // (MR, NR) tile for the ragged edges
    for (Index nb = ns; nb < ns + nt; nb += kNc) {
      Index const nc = std::min(kNc, ns + nt - nb);
      for (Index pc = 0; pc < k; pc += kKc) {
        Index const kc = std::min(kKc, k - pc);
        float const beta_k = pc == 0 ? beta : 1.f;
        pack_b(buf.b(), bi, pc, kc, nb, nc, kern.nr);
        for (Index ic = ms; ic < me; ic += kMc) {
          Index const mc = std::min(kMc, me - ic);
          pack_a(buf.a(), bi, ic, mc, pc, kc, kern.mr);
          for (Index jr = 0; jr < nc; jr += kern.nr) {
            Index const nr = std::min(kern.nr, nc - jr);
            float const* bp = buf.b() + jr * kc;
            for (Index ir = 0; ir < mc; ir += kern.mr) {
              Index const mr = std::min(kern.mr, mc - ir);
              float const* ap = buf.a() + ir * kc;
              float* cp = c_at(bi, ic + ir, nb + jr);
              if (mr == kern.mr && nr == kern.nr) {
                kern.run(kc, ap, bp, cp, ldc, alpha, beta_k);
                continue;
              }
              kern.run(kc, ap, bp, edge, kern.nr, alpha, 0.f);
              for (Index r = 0; r < mr; ++r)
                for (Index j = 0; j < nr; ++j)
                  cp[r * ldc + j] = beta_k == 0.f ? edge[r * kern.nr + j] : edge[r * kern.nr + j] + beta_k * cp[r * ldc + j];
            }
          }
        }
      }
    }
  };

  if (!parallel) {
    for (Index t = 0; t < tasks; ++t) run_task(PackBuffers::local(), t);
    return;
  }
  parallel_tasks(ctx, tasks, [&](Index t, int) { run_task(PackBuffers::local(), t); });
}

/// C_i (M, P) = alpha * A @ B_i + beta * C_i for items i < count that share A (a weight): C_i at c + i * item_stride
/// with row stride ldc, B_i packed by pack_b_item(dst, i, k0, kc, col0, ncols, nr) over item i's columns. When P is a
/// multiple of every NR the items are laid side by side as one (M, count * P) product, so A is packed once rather
/// than once per item (packing the weight dominates convolutions of small images); every element is the same sum in
/// the same order either way, so the bits do not depend on the choice.
template <class PackA, class PackB>
void gemm_shared_a(Context<Cpu>& ctx, Index count, Index m, Index p, Index k, PackA const& pack_a,
                   PackB const& pack_b_item, float* c, Index item_stride, Index ldc, float alpha, float beta) {
  constexpr Index kMaxNr = 32;
  if (count <= 1 || p % kMaxNr != 0) {
    gemm_packed(ctx, count, m, p, k, pack_a, pack_b_item, StridedOutput{c, item_stride, ldc}, ldc, alpha, beta);
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
  gemm_packed(ctx, 1, m, count * p, k, pack_a, pack_b, c_at, ldc, alpha, beta);
}

/// C (batch?, M, N) = alpha * op(A) @ op(B) + beta * C for plain row-major operands (batch stride 0 broadcasts).
inline void sgemm(Context<Cpu>& ctx, Index batch, Index m, Index n, Index k, MatrixOperand a, Index a_batch_stride,
                  MatrixOperand b, Index b_batch_stride, float* c, Index ldc, Index c_batch_stride, float alpha,
                  float beta) {
  gemm_packed(ctx, batch, m, n, k, matrix_packer_a(a, a_batch_stride), matrix_packer_b(b, b_batch_stride),
              StridedOutput{c, c_batch_stride, ldc}, ldc, alpha, beta);
}

/// C (M, N) = alpha * op(A) @ op(W) + beta * C for float activations A and a weight W in any storage (Linear).
inline void sgemm_weight(Context<Cpu>& ctx, Index m, Index n, Index k, MatrixOperand a, WeightSource w, float* c,
                         Index ldc, float alpha, float beta) {
  gemm_packed(ctx, 1, m, n, k, matrix_packer_a(a, 0), weight_packer_b(w), StridedOutput{c, 0, ldc}, ldc, alpha,
              beta);
}

}  // namespace sdlora::cpu
