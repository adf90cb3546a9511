/// @file attention.hpp
/// @brief CPU kernels of ops/attention.hpp: single-threaded products on per-head strided maps (the packed GEMM for
/// float, Eigen for double), the thread pool over (batch, head, tile). Include <sdlora/sdlora.hpp> instead.
///
/// Forward: one task per (batch, head, query tile); an online softmax over key tiles keeps a running row max m,
/// row sum l and unnormalised output, so memory per task is one (block_q, block_k) score tile. In float on AVX2 /
/// AVX-512 (not causal) the tile is one fused kernel (attention_kernels::forward_tile: q, k^T and v copied into
/// buffers padded to the vector width, register-tiled products, a vectorised exp); elsewhere the products go through
/// the packed GEMM and the softmax through Eigen.
/// Backward: when batch * heads covers the threads, one task per (batch, head) walks key tiles and query tiles and
/// accumulates dq, dk, dv in place (5 products per tile pair). Otherwise two passes keep every thread busy without
/// write conflicts: tasks per (batch, head, key tile) accumulate dk, dv; tasks per (batch, head, query tile)
/// accumulate dq (7 products per tile pair: the scores and dout v^T are recomputed). In float on AVX2 / AVX-512
/// (not causal) each tile pair is one fused kernel (attention_kernels::backward_tile) on operands copied once per
/// head into width-padded buffers, with padded accumulators copied out at the end; elsewhere the products go through
/// the packed GEMM.
#pragma once

#include <algorithm>  // std::min, std::max
#include <cmath>      // std::exp, std::log
#include <cstdint>    // std::int32_t
#include <cstring>    // std::memcpy, std::memset
#include <limits>       // std::numeric_limits
#include <optional>     // std::optional
#include <type_traits>  // std::is_same_v, std::decay_t
#include <utility>      // std::pair
#include <vector>       // std::vector

#include <Eigen/Core>  // Eigen::Matrix, Eigen::Map, Eigen::Block

#include <sdlora/backend/cpu/gemm.hpp>     // cpu::MatrixMap, cpu::ConstMatrixMap
#include <sdlora/backend/cpu/isa.hpp>      // cpu::Isa, cpu::resolve_isa
#include <sdlora/backend/cpu/parallel.hpp> // cpu::parallel_tasks
#include <sdlora/backend/cpu/sgemm.hpp>    // cpu::sgemm
#include <sdlora/backend/cpu/softmax.hpp>  // Impl<Softmax, Cpu>::row
#include <sdlora/backend/cpu/vector_math.hpp>  // vector_math::exp_clamped, SDLORA_VECTOR_MATH
#include <sdlora/ops/attention.hpp>        // Attention, Impl

namespace sdlora::cpu::attention_kernels {

/// Sizes and pointers of one (batch, head, query tile) of the forward: q rows at q + r * ldq; the head's keys as
/// k^T, kt[c * ldkt + j] (zero for j >= lk), and its values padded with zero columns to dp, vp[j * dp + c] (zero rows
/// for j >= lk), both made once per head by pack_keys_values; outputs at o + r * ldo and lse[r].
struct ForwardTile {
  float const* q;
  float const* kt;
  float const* vp;
  float* o;
  float* lse;
  Index ldq, ldkt, ldo;
  Index nq, lk, d, dp, bk;
  float scale;
  bool amx = false;  // the products on AMX-BF16 tiles (Context<Cpu>::compute = BF16; amx_product)
  // With amx, the head's kt and vp converted once as depth pairs (sizes: amx_pairs_sizes), or null.
  std::uint16_t const* kt16 = nullptr;
  std::uint16_t const* vp16 = nullptr;
};

/// A b operand of amx_product already in depth pairs: pair row r, column c at p[(r * width + c) * 2].
struct AmxPairs {
  std::uint16_t const* p;
  Index width;
};

/// One head's kt (d, ldkt) and vp (ldkt, dp) of the forward as depth pairs, zero past their depths (d and ldkt) up to
/// a whole number of AMX steps and one more step of keys (the last key tile's padded depth): kt16 (pad32(d) / 2, ldkt,
/// 2), vp16 ((pad32(ldkt) + 32) / 2, dp, 2). Sizes in elements: amx_pairs_sizes.
inline std::pair<Index, Index> amx_pairs_sizes(Index d, Index ldkt, Index dp) {
  return {(d + 31) / 32 * 32 * ldkt, ((ldkt + 31) / 32 * 32 + 32) * dp};
}

/// Buffers of amx_product: its operands as bf16 tiles, a float transpose, and the last few b operands converted (a
/// backward tile pair's k^T, v^T and k depend only on the head and the key tile, which the next query tile shares).
/// One per worker and per op call: an operand's memory holds the same values for as long as the op runs.
struct AmxProductScratch {
  struct Converted {
    float const* src = nullptr;
    Index head = -1, ld = 0, n = 0, width = 0;
    std::vector<std::uint16_t> pairs;
  };
  std::vector<std::uint16_t> a, b;
  std::vector<float> t;
  Converted kept[3];
  int next = 0;  // the slot to replace
};

/// Per-worker buffers of forward_tile, sized for (bq, bk, D) padded to the vector width.
struct ForwardTileScratch {
  std::vector<float> q, s, acc, m, l;  // (bq', D) scaled q; (bq', bk') scores then probabilities;
                                       // (bq', D') unnormalised output; (bq') row max and row sum
  AmxProductScratch amx;
};

/// Keys and values of one head in the layout ForwardTile reads: kt (D, ldkt) = k^T and vp (ldkt, dp) = v, each padded
/// with zeros (ldkt >= lk + lanes covers every key tile's padding; dp = D rounded up to the lanes).
inline void pack_keys_values(float* kt, float* vp, float const* k, Index ldk, float const* v, Index ldv, Index lk,
                             Index d, Index ldkt, Index dp) {
  std::memset(kt, 0, sizeof(float) * std::size_t(d * ldkt));
  std::memset(vp, 0, sizeof(float) * std::size_t(ldkt * dp));
  for (Index j = 0; j < lk; ++j) {
    float const* kj = k + j * ldk;
    for (Index c = 0; c < d; ++c) kt[c * ldkt + j] = kj[c];
    std::memcpy(vp + j * dp, v + j * ldv, sizeof(float) * std::size_t(d));
  }
}

inline constexpr Index kRows = 4;  // rows per register tile of the fused kernels

/// One (query tile, key tile) pair of one head's backward, in the layouts pack_backward_head makes (dp: D rounded up
/// to the vector width; rows = nq rounded up to kRows; nkp = nk rounded up to the width): q and dout rows of the
/// tile, (rows, dp) each with zero columns from D; the head's k^T and v^T from key j0 (kt[c * ldkt + j]); its k rows
/// from key j0, (nkp, dp). Accumulates, where not null, dq (rows, dp), dk and dv (nkp, dp), row stride dp; rows
/// beyond nq and keys beyond nk add zeros.
struct BackwardTile {
  float const* qp;
  float const* dop;
  float const* kt;
  float const* vt;
  float const* kp;
  float const* lse;    // nq row logsumexps of the forward
  float const* delta;  // nq values of rowsum(dout * o)
  float* dq;
  float* dk;
  float* dv;
  Index ldkt, nq, nk, d, dp;
  float scale;
  bool amx = false;  // the products on AMX-BF16 tiles (Context<Cpu>::compute = BF16; amx_product)
  Index head = -1;   // which (batch, head) the operands are of (amx_product keeps k^T, v^T and k converted per head)
};

/// Per-worker buffers of backward_tile: (rows, nkp) probabilities and dS.
struct BackwardTileScratch {
  std::vector<float> p, ds;
  AmxProductScratch amx;
};

/// One head's operands for the backward: qp and dop (lq + kRows, dp): q and dout rows with zero columns from D and
/// zero rows from lq (a tile's padded rows read zeros); kt and vt (D, ldkt): k^T and v^T, zero for keys >= lk; kp
/// (ldkt, dp): k rows with zero columns and zero rows from lk. ldkt >= lk + lanes covers every key tile's padding.
struct BackwardHead {
  std::vector<float> qp, dop, kt, vt, kp;
};
inline void pack_backward_head(BackwardHead& h, float const* q, Index ldq, float const* dout, Index lddo,
                               float const* k, Index ldk, float const* v, Index ldv, Index lq, Index lk, Index d,
                               Index ldkt, Index dp) {
  std::size_t const rows = std::size_t((lq + kRows) * dp), keys = std::size_t(d * ldkt);
  h.qp.assign(rows, 0.f);
  h.dop.assign(rows, 0.f);
  for (Index r = 0; r < lq; ++r) {
    std::memcpy(h.qp.data() + r * dp, q + r * ldq, sizeof(float) * std::size_t(d));
    std::memcpy(h.dop.data() + r * dp, dout + r * lddo, sizeof(float) * std::size_t(d));
  }
  h.kt.resize(keys);
  h.kp.resize(std::size_t(ldkt * dp));
  pack_keys_values(h.kt.data(), h.kp.data(), k, ldk, k, ldk, lk, d, ldkt, dp);  // k^T, and k rows as the forward's v
  h.vt.assign(keys, 0.f);
  for (Index j = 0; j < lk; ++j)
    for (Index c = 0; c < d; ++c) h.vt[std::size_t(c * ldkt + j)] = v[j * ldv + c];
}

#define SDLORA_FUSED_ATTENTION SDLORA_VECTOR_MATH

#if SDLORA_FUSED_ATTENTION
using vector_math::exp_clamped;
using vector_math::Lanes16;
using vector_math::Lanes8;
using vector_math::load;
using vector_math::store;
using vector_math::Width;

/// p[i] = exp(p[i] - shift) for i < n (n a multiple of the width), by exp_clamped. Returns the sum of the results.
template <class V>
[[gnu::always_inline]] inline float exp_shifted(float* p, Index n, float shift) {
  V sum = V{};
  for (Index i = 0; i < n; i += Width<V>::kLanes) {
    V x;
    load(x, p + i);
    x -= shift;
    exp_clamped(x);
    store(p + i, x);
    sum += x;
  }
  float total = 0.f;
  for (Index l = 0; l < Width<V>::kLanes; ++l) total += sum[l];
  return total;
}

/// The largest of p[0, n) (n a multiple of the width).
template <class V>
[[gnu::always_inline]] inline float max_of(float const* p, Index n) {
  V m, x;
  load(m, p);
  for (Index i = Width<V>::kLanes; i < n; i += Width<V>::kLanes) {
    load(x, p + i);
    m = m > x ? m : x;
  }
  float best = m[0];
  for (Index l = 1; l < Width<V>::kLanes; ++l) best = std::max(best, m[l]);
  return best;
}

/// c rows r0..r0+kRows, columns [c0, c0 + C * lanes) = a rows (depth n) times b rows (b[j * ldb + c]): accumulators
/// stay in registers over the depth. a(r, j) is a[r * lda + j], or with TransA a[j * lda + r] (a stored transposed,
/// so the kRows values of one depth step are adjacent). `accumulate` adds to c.
template <class V, Index C, bool TransA>
[[gnu::always_inline]] inline void rows_times_panel(float* c, Index ldc, float const* a, Index lda, float const* b,
                                                    Index ldb, Index n, bool accumulate) {
  constexpr Index L = Width<V>::kLanes;
  V acc[kRows][C];
  for (Index r = 0; r < kRows; ++r)
    for (Index i = 0; i < C; ++i) {
      acc[r][i] = V{};
      if (accumulate) load(acc[r][i], c + r * ldc + i * L);
    }
  for (Index j = 0; j < n; ++j) {
    V bj[C];
    for (Index i = 0; i < C; ++i) load(bj[i], b + j * ldb + i * L);
    for (Index r = 0; r < kRows; ++r) {
      float const x = TransA ? a[j * lda + r] : a[r * lda + j];
      for (Index i = 0; i < C; ++i) acc[r][i] += x * bj[i];
    }
  }
  for (Index r = 0; r < kRows; ++r)
    for (Index i = 0; i < C; ++i) store(c + r * ldc + i * L, acc[r][i]);
}

/// c (rows, width) (+)= a (rows, n) @ b (n, width), rows a multiple of kRows and width of the vector width; with
/// TransA, a is stored as its transpose (n, rows) with row stride lda.
template <class V, bool TransA = false>
[[gnu::always_inline]] inline void product(float* c, Index ldc, float const* a, Index lda, float const* b, Index ldb,
                                           Index rows, Index n, Index width, bool accumulate) {
  constexpr Index L = Width<V>::kLanes, C = Width<V>::kChunk;
  for (Index r0 = 0; r0 < rows; r0 += kRows)
    for (Index c0 = 0, chunk = 0; c0 < width; c0 += chunk * L) {
      // Vectors left split into equal chunks of at most C (10 as 3 3 2 2, not 3 3 3 1: a one-vector chunk has
      // too few accumulators to hide the FMA latency).
      Index const left = (width - c0) / L, chunks = (left + C - 1) / C;
      chunk = (left + chunks - 1) / chunks;
      float* cp = c + r0 * ldc + c0;
      float const* ap = TransA ? a + r0 : a + r0 * lda;
      float const* bp = b + c0;
      switch (chunk) {
        case 1: rows_times_panel<V, 1, TransA>(cp, ldc, ap, lda, bp, ldb, n, accumulate); break;
        case 2: rows_times_panel<V, 2, TransA>(cp, ldc, ap, lda, bp, ldb, n, accumulate); break;
        case 3: rows_times_panel<V, (C >= 3 ? 3 : 1), TransA>(cp, ldc, ap, lda, bp, ldb, n, accumulate); break;
        default: rows_times_panel<V, C, TransA>(cp, ldc, ap, lda, bp, ldb, n, accumulate); break;
      }
    }
}

/// c (rows, width) (+)= a (rows, n) @ b (n, width) as product() does, with operands rounded to bf16 and multiplied
/// on AMX tiles (sums in float): a (row-major, or stored transposed with TransA: (n, rows)) becomes bf16 rows
/// (rows and n padded to 16 and 32; a transposed one through the AVX-512 panel transpose), b depth pairs
/// (bf16.hpp's to_pairs); 2 x 2 tiles of 16 x 16 at a time, those C tiles that leave c through a zero-padded copy.
/// `head` >= 0 names the head whose operand b is (then b's conversion is kept for the next calls with the same b);
/// `pre`, where not null, is b already in depth pairs (zero past n up to n rounded up to 32).
__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16"))) inline void amx_product(
    float* c, Index ldc, float const* a, Index lda, bool trans_a, float const* b, Index ldb, Index rows, Index n,
    Index width, bool accumulate, AmxProductScratch& s, Index head = -1, AmxPairs const* pre = nullptr) {
  auto const pad = [](Index x, Index to) { return (x + to - 1) / to * to; };
  Index const R = pad(rows, 16), N = pad(n, 32), W = pad(width, 16);
  s.a.assign(std::size_t(R * N), 0);
  if (!trans_a) {
    for (Index r = 0; r < rows; ++r) bf16_detail::narrow(s.a.data() + r * N, a + r * lda, n);
  } else {  // a(r, j) = a[j * lda + r]: transposed into (rows, N) floats, zero past n, then rounded by rows
    s.t.resize(std::size_t(rows * N));
    for (Index p0 = 0; p0 < N; p0 += 16)
      sdlora::cpu::kernels::transpose_rows_avx512(s.t.data() + p0, N, a + p0 * lda, lda,
                                                  std::clamp<Index>(n - p0, 0, 16), rows, 16);
    bf16_detail::narrow(s.a.data(), s.t.data(), rows * N);
  }
  std::uint16_t const* bb = pre ? pre->p : nullptr;
  Index const wb = pre ? pre->width : W;  // columns of a pair row of bb
  for (auto const& k : s.kept)
    if (!bb && head >= 0 && k.src == b && k.head == head && k.ld == ldb && k.n == n && k.width == width) bb = k.pairs.data();
  if (!bb) {
    std::vector<std::uint16_t>* to = &s.b;
    if (head >= 0) {
      auto& slot = s.kept[s.next];
      s.next = (s.next + 1) % 3;
      slot = {b, head, ldb, n, width, std::move(slot.pairs)};
      to = &slot.pairs;
    }
    to->resize(std::size_t(N * W));
    bf16_detail::to_pairs(to->data(), b, ldb, W, width, n, N);
    bb = to->data();
  }
  std::uint16_t const* const ab = s.a.data();
  alignas(64) float edge[4][16 * 16];
  sdlora::cpu::kernels::amx_begin();
  for (Index r0 = 0; r0 < R; r0 += 32)
    for (Index c0 = 0; c0 < W; c0 += 32) {
      bool const two_r = r0 + 16 < R, two_c = c0 + 16 < W;
      // C tile (i, j) at rows r0 + 16 i, columns c0 + 16 j: in c itself when whole, else in edge[2 i + j].
      auto whole = [&](Index i, Index j) { return r0 + 16 * i + 16 <= rows && c0 + 16 * j + 16 <= width; };
      auto at = [&](Index i, Index j) { return c + (r0 + 16 * i) * ldc + c0 + 16 * j; };
      auto fill_edge = [&](Index i, Index j) {
        float* e = edge[2 * i + j];
        Index const nr = std::clamp<Index>(rows - r0 - 16 * i, 0, 16), nc = std::clamp<Index>(width - c0 - 16 * j, 0, 16);
        std::fill_n(e, 256, 0.f);
        if (accumulate)
          for (Index r = 0; r < nr; ++r) std::copy_n(at(i, j) + r * ldc, nc, e + r * 16);
      };
#define SDLORA_C_IN(T, i, j)                                          if (whole(i, j)) {                                                    if (accumulate) _tile_loadd(T, at(i, j), ldc * 4);                  else _tile_zero(T);                                               } else {                                                              fill_edge(i, j);                                                    _tile_loadd(T, edge[T], 64);                                      }
      SDLORA_C_IN(0, 0, 0)
      if (two_c) { SDLORA_C_IN(1, 0, 1) }
      if (two_r) { SDLORA_C_IN(2, 1, 0) }
      if (two_r && two_c) { SDLORA_C_IN(3, 1, 1) }
#undef SDLORA_C_IN
      for (Index k0 = 0; k0 < N; k0 += 32) {
        _tile_loadd(4, ab + r0 * N + k0, N * 2);
        _tile_loadd(6, bb + k0 * wb + c0 * 2, wb * 4);  // pair rows k0 / 2 ..: wb columns x 2 each
        if (two_c) _tile_loadd(7, bb + k0 * wb + (c0 + 16) * 2, wb * 4);
        _tile_dpbf16ps(0, 4, 6);
        if (two_c) _tile_dpbf16ps(1, 4, 7);
        if (two_r) {
          _tile_loadd(5, ab + (r0 + 16) * N + k0, N * 2);
          _tile_dpbf16ps(2, 5, 6);
          if (two_c) _tile_dpbf16ps(3, 5, 7);
        }
      }
#define SDLORA_C_OUT(T, i, j)                                                                            if (whole(i, j)) {                                                                                       _tile_stored(T, at(i, j), ldc * 4);                                                                  } else {                                                                                                 _tile_stored(T, edge[T], 64);                                                                          Index const nr = std::clamp<Index>(rows - r0 - 16 * i, 0, 16), nc = std::clamp<Index>(width - c0 - 16 * j, 0, 16);     for (Index r = 0; r < nr; ++r) std::copy_n(edge[T] + r * 16, nc, at(i, j) + r * ldc);               }
      SDLORA_C_OUT(0, 0, 0)
      if (two_c) { SDLORA_C_OUT(1, 0, 1) }
      if (two_r) { SDLORA_C_OUT(2, 1, 0) }
      if (two_r && two_c) { SDLORA_C_OUT(3, 1, 1) }
#undef SDLORA_C_OUT
    }
  sdlora::cpu::kernels::amx_end();
}

/// The forward of one query tile with the online softmax (the generic path's algorithm): the scaled q rows, each key
/// tile's k^T and v copied into width-padded buffers, scores and P @ V by register-tiled loops over those buffers.
template <class V>
[[gnu::always_inline]] inline void forward_tile_body(ForwardTile const& t, ForwardTileScratch& s) {
  constexpr Index L = Width<V>::kLanes;
  auto const pad = [](Index n, Index to) { return (n + to - 1) / to * to; };
  Index const rows = pad(t.nq, kRows), dp = t.dp, bkp = pad(std::min(t.bk, t.lk), L);
  s.q.assign(std::size_t(rows * t.d), 0.f);
  s.s.resize(std::size_t(rows * bkp));
  s.acc.assign(std::size_t(rows * dp), 0.f);
  s.m.assign(std::size_t(rows), -std::numeric_limits<float>::infinity());
  s.l.assign(std::size_t(rows), 0.f);
  for (Index r = 0; r < t.nq; ++r)
    for (Index c = 0; c < t.d; ++c) s.q[std::size_t(r * t.d + c)] = t.q[r * t.ldq + c] * t.scale;
  for (Index j0 = 0; j0 < t.lk; j0 += t.bk) {
    Index const nk = std::min(t.bk, t.lk - j0), nkp = pad(nk, L);
    float* sc = s.s.data();
    if (t.amx) {
      AmxPairs const pre{t.kt16 + j0 * 2, t.ldkt};
      amx_product(sc, nkp, s.q.data(), t.d, false, t.kt + j0, t.ldkt, rows, t.d, nkp, false, s.amx, -1,
                  t.kt16 ? &pre : nullptr);
    }
    else product<V>(sc, nkp, s.q.data(), t.d, t.kt + j0, t.ldkt, rows, t.d, nkp, false);  // (rows, nkp) scaled scores
    for (Index r = 0; r < rows; ++r) {
      float* row = sc + r * nkp;
      for (Index j = nk; j < nkp; ++j) row[j] = -std::numeric_limits<float>::infinity();
      float const mx = std::max(s.m[std::size_t(r)], max_of<V>(row, nkp));
      float const alpha = std::exp(s.m[std::size_t(r)] - mx);  // 0 on the first tile (exp(-inf))
      float sum = exp_shifted<V>(row, nkp, mx);
      for (Index j = nk; j < nkp; ++j) {  // padded keys: ~1.6e-38 each from the clamp, made exactly 0
        sum -= row[j];
        row[j] = 0.f;
      }
      s.l[std::size_t(r)] = s.l[std::size_t(r)] * alpha + sum;
      s.m[std::size_t(r)] = mx;
      float* acc = s.acc.data() + r * dp;
      for (Index c = 0; c < dp; ++c) acc[c] *= alpha;
    }
    if (t.amx) {
      AmxPairs const pre{t.vp16 + j0 * dp, dp};  // pair row j0 / 2 (j0 even)
      amx_product(s.acc.data(), dp, sc, nkp, false, t.vp + j0 * dp, dp, rows, nkp, dp, true, s.amx, -1,
                  t.vp16 && j0 % 2 == 0 ? &pre : nullptr);
    }
    else product<V>(s.acc.data(), dp, sc, nkp, t.vp + j0 * dp, dp, rows, nkp, dp, true);  // acc += P @ v
  }
  for (Index r = 0; r < t.nq; ++r) {
    float const l = s.l[std::size_t(r)];
    for (Index c = 0; c < t.d; ++c) t.o[r * t.ldo + c] = s.acc[std::size_t(r * dp + c)] / l;
    t.lse[r] = s.m[std::size_t(r)] + std::log(l);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline void forward_tile_avx512(
    ForwardTile const& t, ForwardTileScratch& s) {
  forward_tile_body<Lanes16>(t, s);
}
__attribute__((target("avx2,fma"))) inline void forward_tile_avx2(ForwardTile const& t, ForwardTileScratch& s) {
  forward_tile_body<Lanes8>(t, s);
}

/// The backward of one tile pair (BackwardTile): P = exp(scale q k^T - lse) and dP = dout v^T by register-tiled
/// products, dS = scale P * (dP - delta) in place of dP, then dv += P^T dout, dk += dS^T q and dq += dS k with the
/// transposed operands read in place. Rows beyond nq and keys beyond nk are zeroed in P and dS, so padding adds 0.
template <class V>
[[gnu::always_inline]] inline void backward_tile_body(BackwardTile const& t, BackwardTileScratch& s) {
  constexpr Index L = Width<V>::kLanes;
  Index const rows = (t.nq + kRows - 1) / kRows * kRows, nkp = (t.nk + L - 1) / L * L;
  s.p.resize(std::size_t(rows * nkp));
  s.ds.resize(std::size_t(rows * nkp));
  float* const p = s.p.data();
  float* const ds = s.ds.data();
  if (t.amx) {
    amx_product(p, nkp, t.qp, t.dp, false, t.kt, t.ldkt, rows, t.d, nkp, false, s.amx, t.head);
    amx_product(ds, nkp, t.dop, t.dp, false, t.vt, t.ldkt, rows, t.d, nkp, false, s.amx, t.head);
  } else {
    product<V>(p, nkp, t.qp, t.dp, t.kt, t.ldkt, rows, t.d, nkp, false);    // q k^T
    product<V>(ds, nkp, t.dop, t.dp, t.vt, t.ldkt, rows, t.d, nkp, false);  // dout v^T
  }
  for (Index r = 0; r < rows; ++r) {
    float* const pr = p + r * nkp;
    float* const dr = ds + r * nkp;
    if (r >= t.nq) {
      std::memset(pr, 0, sizeof(float) * std::size_t(nkp));
      std::memset(dr, 0, sizeof(float) * std::size_t(nkp));
      continue;
    }
    float const lse = t.lse[r], delta = t.delta[r];
    for (Index i = 0; i < nkp; i += L) {
      V x, g;
      load(x, pr + i);
      x = x * t.scale - lse;
      exp_clamped(x);  // the forward's probabilities (<= 1: lse is the row's logsumexp)
      load(g, dr + i);
      store(pr + i, x);
      store(dr + i, x * (g - delta) * t.scale);
    }
    for (Index j = t.nk; j < nkp; ++j) pr[j] = dr[j] = 0.f;  // padded keys
  }
  if (t.amx) {
    if (t.dv) amx_product(t.dv, t.dp, p, nkp, true, t.dop, t.dp, nkp, rows, t.dp, true, s.amx);
    if (t.dk) amx_product(t.dk, t.dp, ds, nkp, true, t.qp, t.dp, nkp, rows, t.dp, true, s.amx);
    if (t.dq) amx_product(t.dq, t.dp, ds, nkp, false, t.kp, t.dp, rows, nkp, t.dp, true, s.amx, t.head);
    return;
  }
  if (t.dv) product<V, true>(t.dv, t.dp, p, nkp, t.dop, t.dp, nkp, rows, t.dp, true);  // P^T dout
  if (t.dk) product<V, true>(t.dk, t.dp, ds, nkp, t.qp, t.dp, nkp, rows, t.dp, true);  // dS^T q (scaled)
  if (t.dq) product<V>(t.dq, t.dp, ds, nkp, t.kp, t.dp, rows, nkp, t.dp, true);        // dS k (scaled)
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline void backward_tile_avx512(
    BackwardTile const& t, BackwardTileScratch& s) {
  backward_tile_body<Lanes16>(t, s);
}
__attribute__((target("avx2,fma"))) inline void backward_tile_avx2(BackwardTile const& t, BackwardTileScratch& s) {
  backward_tile_body<Lanes8>(t, s);
}
#endif

/// A fused tile kernel for an ISA and its vector width (lanes), or a null function where only the generic path runs
/// (portable, non-x86).
template <class Tile, class Scratch>
struct TileKernel {
  void (*run)(Tile const&, Scratch&) = nullptr;
  Index lanes = 1;
};
using ForwardTileKernel = TileKernel<ForwardTile, ForwardTileScratch>;
using BackwardTileKernel = TileKernel<BackwardTile, BackwardTileScratch>;

#if SDLORA_FUSED_ATTENTION
/// The AVX-512 or the AVX2 function of a fused kernel, by the ISA the CPU and the cap allow.
template <class Tile, class Scratch>
inline TileKernel<Tile, Scratch> tile_kernel(Isa isa, void (*avx512)(Tile const&, Scratch&),
                                             void (*avx2)(Tile const&, Scratch&)) {
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: return {avx512, 16};
    case Isa::kAvx2: return {avx2, 8};
    default: return {};
  }
}
inline ForwardTileKernel forward_tile(Isa isa) { return tile_kernel(isa, &forward_tile_avx512, &forward_tile_avx2); }
inline BackwardTileKernel backward_tile(Isa isa) {
  return tile_kernel(isa, &backward_tile_avx512, &backward_tile_avx2);
}
#else
inline ForwardTileKernel forward_tile(Isa) { return {}; }
inline BackwardTileKernel backward_tile(Isa) { return {}; }
#endif

}  // namespace sdlora::cpu::attention_kernels

namespace sdlora::ops {

template <>
struct Impl<Attention, Cpu> {
  /// Below this many multiply-adds (B * H * Lq * Lk * D) a parallel region costs more than it saves.
  static constexpr Index kParallelWork = Index(1) << 18;

  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, Attention const& op, TensorView<T, Cpu> o, TensorView<T, Cpu> lse,
                      TensorView<T const, Cpu> q, TensorView<T const, Cpu> k, TensorView<T const, Cpu> v) {
    Geometry const g(op, q, k);
    Index const tiles_q = (g.lq + g.bq - 1) / g.bq;
    Index const tasks = g.batch * g.heads * tiles_q;
    Index const work = g.batch * g.heads * g.lq * g.lk * g.d;
    T const inf = std::numeric_limits<T>::infinity();
    if constexpr (std::is_same_v<T, float>) {
      // The fused tile (AVX-512 / AVX2): head widths of any size, SD 1.5's 40, 80 and 160 included, without the
      // generic path's per-tile GEMM packing and ragged 32-column edges; causal masks stay on the generic path.
      namespace ak = sdlora::cpu::attention_kernels;
      if (auto const tile = ak::forward_tile(ctx.isa); tile.run != nullptr && !g.causal) {
        Context<Cpu> const& run_on = tasks > 1 && work > kParallelWork ? ctx : serial_context(ctx);
        Index const heads_total = g.batch * g.heads;
        Index const ldkt = (g.lk + tile.lanes - 1) / tile.lanes * tile.lanes + tile.lanes;  // keys, padded
        Index const dp = (g.d + tile.lanes - 1) / tile.lanes * tile.lanes;                  // head width, padded
        auto kt = Tensor<float, Cpu>::uninitialized(Shape{heads_total, g.d, ldkt});  // (B*H, D, Lk') k^T per head
        auto vp = Tensor<float, Cpu>::uninitialized(Shape{heads_total, ldkt, dp});   // (B*H, Lk', D') v per head
        bool const amx = amx_attention(ctx, tile.lanes);
        std::pair<Index, Index> const sizes = ak::amx_pairs_sizes(g.d, ldkt, dp);
        Index const kt16_size = sizes.first, vp16_size = sizes.second;  // per head
        std::vector<std::uint16_t> pairs(amx ? std::size_t(heads_total * (kt16_size + vp16_size)) : 0);
        sdlora::cpu::parallel_for(run_on, heads_total, heads_total > 1, [&](Index bh) {
          Index const b = bh / g.heads, h = bh % g.heads;
          ak::pack_keys_values(kt.data() + bh * g.d * ldkt, vp.data() + bh * ldkt * dp,
                               k.data() + b * k.stride(0) + h * g.d, k.stride(1),
                               v.data() + b * v.stride(0) + h * g.d, v.stride(1), g.lk, g.d, ldkt, dp);
          if (amx) {
            std::uint16_t* kt16 = pairs.data() + bh * (kt16_size + vp16_size);
            sdlora::cpu::bf16_detail::to_pairs(kt16, kt.data() + bh * g.d * ldkt, ldkt, ldkt, ldkt, g.d,
                                               kt16_size / ldkt);
            sdlora::cpu::bf16_detail::to_pairs(kt16 + kt16_size, vp.data() + bh * ldkt * dp, dp, dp, dp, ldkt,
                                               vp16_size / dp);
          }
        });
        std::vector<ak::ForwardTileScratch> scratch(std::size_t(run_on.threads()));
        sdlora::cpu::parallel_tasks(run_on, tasks, [&](Index t, int worker) {
          Index const bh = t / tiles_q, b = bh / g.heads, h = bh % g.heads;
          Index const i0 = (t % tiles_q) * g.bq, nq = std::min(g.bq, g.lq - i0);
          ak::ForwardTile const tile_args{
              .q = q.data() + b * q.stride(0) + i0 * q.stride(1) + h * g.d,
              .kt = kt.data() + bh * g.d * ldkt,
              .vp = vp.data() + bh * ldkt * dp,
              .o = o.data() + b * o.stride(0) + i0 * o.stride(1) + h * g.d,
              .lse = lse.data() + bh * g.lq + i0,
              .ldq = q.stride(1), .ldkt = ldkt, .ldo = o.stride(1),
              .nq = nq, .lk = g.lk, .d = g.d, .dp = dp, .bk = g.bk, .scale = float(g.scale), .amx = amx,
              .kt16 = amx ? pairs.data() + bh * (kt16_size + vp16_size) : nullptr,
              .vp16 = amx ? pairs.data() + bh * (kt16_size + vp16_size) + kt16_size : nullptr};
          tile.run(tile_args, scratch[std::size_t(worker)]);
        });
        return;
      }
    }
    struct ForwardScratch {
      Mat<T> s, acc;  // (bq, bk) scores then probabilities; (bq, D) unnormalised output
      Vec<T> m, l;    // (bq) running row max and row sum of exp(s - m)
    };
    Context<Cpu> const& run_on = tasks > 1 && work > kParallelWork ? ctx : serial_context(ctx);
    std::vector<std::optional<ForwardScratch>> scratch(std::size_t(run_on.threads()));
    sdlora::cpu::parallel_tasks(run_on, tasks, [&](Index t, int worker) {
      auto& mine = scratch[std::size_t(worker)];
      if (!mine) mine.emplace(ForwardScratch{Mat<T>(g.bq, g.bk), Mat<T>(g.bq, g.d), Vec<T>(g.bq), Vec<T>(g.bq)});
      Mat<T>& s = mine->s;
      Mat<T>& acc = mine->acc;
      Vec<T>& m = mine->m;
      Vec<T>& l = mine->l;
      {
        Index const bh = t / tiles_q, b = bh / g.heads, h = bh % g.heads;
        Index const i0 = (t % tiles_q) * g.bq, nq = std::min(g.bq, g.lq - i0);
        auto const qi = head(q, b, h, i0, nq, g.d);  // (nq, D)
        Index const kend = g.causal ? std::min(g.lk, i0 + nq) : g.lk;
        m.head(nq).setConstant(-inf);
        l.head(nq).setZero();
        acc.topRows(nq).setZero();
        for (Index j0 = 0; j0 < kend; j0 += g.bk) {
          Index const nk = std::min(g.bk, kend - j0);
          auto const kj = head(k, b, h, j0, nk, g.d);  // (nk, D)
          auto const vj = head(v, b, h, j0, nk, g.d);  // (nk, D)
          Eigen::Block<Mat<T>> st = s.topLeftCorner(nq, nk);
          product(ctx, st, qi, false, kj, true, T(g.scale), false);
          if (g.causal) mask_tile(st, i0, j0);
          for (Index r = 0; r < nq; ++r) {
            T const m_new = std::max(m(r), st.row(r).maxCoeff());
            if (m_new == -inf) {  // nothing visible yet in this row (cannot happen with j0 = 0 first; kept safe)
              st.row(r).setZero();
              continue;
            }
            T const alpha = std::exp(m(r) - m_new);  // exp(-inf) = 0 on the first tile
            st.row(r) = (st.row(r).array() - m_new).exp().matrix();
            l(r) = l(r) * alpha + st.row(r).sum();
            acc.row(r) *= alpha;
            m(r) = m_new;
          }
          product(ctx, acc.topRows(nq), st, false, vj, false, T(1), true);
        }
        auto oi = head(o, b, h, i0, nq, g.d);  // (nq, D)
        T* lse_row = lse.data() + (b * g.heads + h) * g.lq + i0;
        for (Index r = 0; r < nq; ++r) {
          oi.row(r) = acc.row(r) / l(r);
          lse_row[r] = m(r) + std::log(l(r));
        }
      }
    });
  }

  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, Attention const& op, TensorView<T, Cpu> dq, TensorView<T, Cpu> dk,
                       TensorView<T, Cpu> dv, TensorView<T const, Cpu> q, TensorView<T const, Cpu> k,
                       TensorView<T const, Cpu> v, TensorView<T const, Cpu> o, TensorView<T const, Cpu> lse,
                       TensorView<T const, Cpu> dout) {
    Geometry const g(op, q, k);
    Index const heads_total = g.batch * g.heads;
    Index const tiles_q = (g.lq + g.bq - 1) / g.bq, tiles_k = (g.lk + g.bk - 1) / g.bk;
    int const threads = ctx.threads();
    Index const work = heads_total * g.lq * g.lk * g.d;

    // D_i = rowsum(dout_i * o_i) for every (batch, head, query row).
    auto delta = Tensor<T, Cpu>::uninitialized(Shape{g.batch, g.heads, g.lq});  // (B, H, Lq)
    sdlora::cpu::parallel_for(ctx, heads_total, heads_total * g.lq * g.d > 32768, [&](Index bh) {
      Index const b = bh / g.heads, h = bh % g.heads;
      auto const oh = head(o, b, h, 0, g.lq, g.d);      // (Lq, D)
      auto const doh = head(dout, b, h, 0, g.lq, g.d);  // (Lq, D)
      T* dst = delta.data() + bh * g.lq;
      for (Index r = 0; r < g.lq; ++r) dst[r] = oh.row(r).dot(doh.row(r));
    });
    if constexpr (std::is_same_v<T, float>) {
      namespace ak = sdlora::cpu::attention_kernels;
      if (auto const tile = ak::backward_tile(ctx.isa); tile.run != nullptr && !g.causal) {
        fused_backward(ctx, g, tile, dq, dk, dv, q, k, v, lse, dout, delta.data());
        return;
      }
    }
    TileArgs<T> const args{ctx, g, q, k, v, lse, dout, delta.data()};

    if (heads_total >= threads || threads == 1) {
      // One task per (batch, head): no other task writes its dq, dk, dv slices.
      Context<Cpu> const& run_on = heads_total > 1 && work > kParallelWork ? ctx : serial_context(ctx);
      ScratchPerWorker<T> scratch(run_on, g);
      sdlora::cpu::parallel_tasks(run_on, heads_total, [&](Index bh, int worker) {
        {
          Index const b = bh / g.heads, h = bh % g.heads;
          auto dqh = head(dq, b, h, 0, g.lq, g.d);  // (Lq, D)
          auto dkh = head(dk, b, h, 0, g.lk, g.d);  // (Lk, D)
          auto dvh = head(dv, b, h, 0, g.lk, g.d);  // (Lk, D)
          dqh.setZero();
          dkh.setZero();
          dvh.setZero();
          for (Index j0 = 0; j0 < g.lk; j0 += g.bk)
            for (Index i0 = g.causal ? j0 / g.bq * g.bq : 0; i0 < g.lq; i0 += g.bq)
              tile_backward(args, scratch.get(worker), b, h, i0, j0, &dqh, i0, &dkh, &dvh, j0);
        }
      });
      return;
    }
    // Pass 1: dk, dv per (batch, head, key tile).
    Context<Cpu> const& run_on = work > kParallelWork ? ctx : serial_context(ctx);
    ScratchPerWorker<T> scratch(run_on, g);
    sdlora::cpu::parallel_tasks(run_on, heads_total * tiles_k, [&](Index t, int worker) {
      {
        Index const bh = t / tiles_k, b = bh / g.heads, h = bh % g.heads;
        Index const j0 = (t % tiles_k) * g.bk, nk = std::min(g.bk, g.lk - j0);
        auto dkj = head(dk, b, h, j0, nk, g.d);  // (nk, D)
        auto dvj = head(dv, b, h, j0, nk, g.d);  // (nk, D)
        dkj.setZero();
        dvj.setZero();
        for (Index i0 = g.causal ? j0 / g.bq * g.bq : 0; i0 < g.lq; i0 += g.bq)
          tile_backward<T>(args, scratch.get(worker), b, h, i0, j0, nullptr, 0, &dkj, &dvj, 0);
      }
    });
    // Pass 2: dq per (batch, head, query tile).
    sdlora::cpu::parallel_tasks(run_on, heads_total * tiles_q, [&](Index t, int worker) {
      {
        Index const bh = t / tiles_q, b = bh / g.heads, h = bh % g.heads;
        Index const i0 = (t % tiles_q) * g.bq, nq = std::min(g.bq, g.lq - i0);
        auto dqi = head(dq, b, h, i0, nq, g.d);  // (nq, D)
        dqi.setZero();
        Index const kend = g.causal ? std::min(g.lk, i0 + nq) : g.lk;
        for (Index j0 = 0; j0 < kend; j0 += g.bk)
          tile_backward<T>(args, scratch.get(worker), b, h, i0, j0, &dqi, 0, nullptr, nullptr, 0);
      }
    });
  }

  template <HostCompute T>
  static void forward_materialized(Context<Cpu>& ctx, Attention const& op, TensorView<T, Cpu> o,
                                   TensorView<T const, Cpu> q, TensorView<T const, Cpu> k,
                                   TensorView<T const, Cpu> v) {
    Geometry const g(op, q, k);
    Index const heads_total = g.batch * g.heads;
    sdlora::cpu::parallel_for(ctx, heads_total, heads_total > 1, [&](Index bh) {
      Index const b = bh / g.heads, h = bh % g.heads;
      Mat<T> s(g.lq, g.lk);  // (Lq, Lk) scores, then probabilities
      product(ctx, s, head(q, b, h, 0, g.lq, g.d), false, head(k, b, h, 0, g.lk, g.d), true, T(g.scale), false);
      Eigen::Block<Mat<T>> all = s.topLeftCorner(g.lq, g.lk);
      if (g.causal) mask_tile(all, 0, 0);
      for (Index r = 0; r < g.lq; ++r) Impl<Softmax, Cpu>::row(s.data() + r * g.lk, s.data() + r * g.lk, g.lk);
      product(ctx, head(o, b, h, 0, g.lq, g.d), s, false, head(v, b, h, 0, g.lk, g.d), false, T(1), false);
    });
  }

 private:
  template <class T>
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// c = alpha * op(a) @ op(b) (+ c with `accumulate`) on the calling thread: the packed GEMM for float (its
  /// run-time ISA path), Eigen for double. a, b, c are row-major Eigen maps or blocks.
  template <class MC, class MA, class MB>
  static void product(Context<Cpu> const& ctx, MC&& c, MA const& a, bool trans_a, MB const& b, bool trans_b,
                      typename std::decay_t<MC>::Scalar alpha, bool accumulate) {
    using T = typename std::decay_t<MC>::Scalar;
    if constexpr (std::is_same_v<T, float>) {
      Context<Cpu> serial{.num_threads = 1, .isa = ctx.isa};
      sdlora::cpu::sgemm(serial, 1, c.rows(), c.cols(), trans_a ? a.rows() : a.cols(), {a.data(), a.outerStride(), trans_a},
                         0, {b.data(), b.outerStride(), trans_b}, 0, c.data(), c.outerStride(), 0, alpha,
                         accumulate ? 1.f : 0.f);
    } else {
      auto run = [&](auto const& pa, auto const& pb) {
        if (accumulate) c.noalias() += alpha * (pa * pb);
        else c.noalias() = alpha * (pa * pb);
      };
      if (trans_a && trans_b) run(a.transpose(), b.transpose());
      else if (trans_a) run(a.transpose(), b);
      else if (trans_b) run(a, b.transpose());
      else run(a, b);
    }
  }
  template <class T>
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  template <class T>
  using MatrixMap = cpu::MatrixMap<T>;

  /// Sizes shared by every kernel, read once from the views.
  struct Geometry {
    Index batch, heads, lq, lk, d, bq, bk;
    double scale;
    bool causal;
    template <class VQ, class VK>
    Geometry(Attention const& op, VQ const& q, VK const& k)
        : batch(q.dim(0)),
          heads(op.heads),
          lq(q.dim(1)),
          lk(k.dim(1)),
          d(op.head_dim(q.dim(2))),
          bq(std::min(op.block_q, std::max<Index>(q.dim(1), 1))),
          bk(std::min(op.block_k, k.dim(1))),
          scale(op.resolved_scale(q.dim(2))),
          causal(op.causal) {}
  };

  /// Rows [r0, r0 + n) of head h of batch b in a (B, L, H*D) view, as an (n, D) map with the view's row stride.
  template <class T>
  static cpu::ConstMatrixMap<T> head(TensorView<T const, Cpu> const& x, Index b, Index h, Index r0, Index n,
                                     Index d) {
    return cpu::ConstMatrixMap<T>(x.data() + b * x.stride(0) + r0 * x.stride(1) + h * d, n, d,
                                  Eigen::OuterStride<>(x.stride(1)));
  }
  template <class T>
  static MatrixMap<T> head(TensorView<T, Cpu> const& x, Index b, Index h, Index r0, Index n, Index d) {
    return MatrixMap<T>(x.data() + b * x.stride(0) + r0 * x.stride(1) + h * d, n, d,
                        Eigen::OuterStride<>(x.stride(1)));
  }

  /// Sets s(r, c) = -inf where key j0 + c lies after query i0 + r.
  template <class M>
  static void mask_tile(M& s, Index i0, Index j0) {
    using T = typename M::Scalar;
    for (Index r = 0; r < s.rows(); ++r)
      for (Index c = std::max<Index>(0, i0 + r + 1 - j0); c < s.cols(); ++c)
        s(r, c) = -std::numeric_limits<T>::infinity();
  }

  template <class T>
  struct Scratch {
    Mat<T> p, dp;  // (bq, bk) probabilities and dout v^T, then dS in place
    explicit Scratch(Geometry const& g) : p(g.bq, g.bk), dp(g.bq, g.bk) {}
  };
  /// One Scratch per pool worker, made on the worker's first task.
  template <class T>
  class ScratchPerWorker {
   public:
    ScratchPerWorker(Context<Cpu> const& ctx, Geometry const& g) : g_(g), slots_(std::size_t(ctx.threads())) {}
    Scratch<T>& get(int worker) {
      auto& slot = slots_[std::size_t(worker)];
      if (!slot) slot.emplace(g_);
      return *slot;
    }

   private:
    Geometry const& g_;
    std::vector<std::optional<Scratch<T>>> slots_;
  };
  /// The same kernel path on one thread (for problems too small to split).
  /// Whether the fused kernels multiply on AMX-BF16 tiles: bf16 compute (Context<Cpu>::compute) on the AVX-512 path
  /// of a CPU with AMX. Elsewhere attention's products stay float under bf16 compute.
  static bool amx_attention(Context<Cpu> const& ctx, Index lanes) {
#if SDLORA_FUSED_ATTENTION
    return ctx.compute == DType::BF16 && lanes == 16 && sdlora::cpu::bf16_unit() == sdlora::cpu::Bf16Unit::kAmx;
#else
    (void)ctx, (void)lanes;
    return false;
#endif
  }

  static Context<Cpu> const& serial_context(Context<Cpu> const& ctx) {
    thread_local Context<Cpu> serial;
    serial.num_threads = 1;
    serial.isa = ctx.isa;
    return serial;
  }
  template <class T>
  struct TileArgs {
    Context<Cpu> const& ctx;  // the kernel path (each tile's products run on its own thread)
    Geometry const& g;
    TensorView<T const, Cpu> q, k, v, lse, dout;
    T const* delta;  // (B, H, Lq) rowsum(dout * o)
  };

  /// The fused float backward (attention_kernels::backward_tile, AVX2 / AVX-512, not causal): each head's q, dout,
  /// k and v copied once into width-padded buffers, dq, dk and dv accumulated in padded buffers and copied out. The
  /// same two schedules as the generic path: one task per (batch, head) when those cover the threads; otherwise all
  /// heads packed first, then tasks per (batch, head, key tile) for dk, dv and per (batch, head, query tile) for dq.
  static void fused_backward(Context<Cpu>& ctx, Geometry const& g,
                             sdlora::cpu::attention_kernels::BackwardTileKernel const& tile, TensorView<float, Cpu> dq,
                             TensorView<float, Cpu> dk, TensorView<float, Cpu> dv, TensorView<float const, Cpu> q,
                             TensorView<float const, Cpu> k, TensorView<float const, Cpu> v,
                             TensorView<float const, Cpu> lse, TensorView<float const, Cpu> dout,
                             float const* delta) {
    namespace ak = sdlora::cpu::attention_kernels;
    Index const heads_total = g.batch * g.heads;
    Index const tiles_q = (g.lq + g.bq - 1) / g.bq, tiles_k = (g.lk + g.bk - 1) / g.bk;
    Index const lanes = tile.lanes;
    Index const ldkt = (g.lk + lanes - 1) / lanes * lanes + lanes;  // keys, padded
    Index const dp = (g.d + lanes - 1) / lanes * lanes;             // head width, padded
    Index const rows_q = g.lq + ak::kRows;                          // query rows, padded
    Index const work = heads_total * g.lq * g.lk * g.d;
    int const threads = ctx.threads();
    auto pack = [&](ak::BackwardHead& to, Index b, Index h) {
      ak::pack_backward_head(to, q.data() + b * q.stride(0) + h * g.d, q.stride(1),
                             dout.data() + b * dout.stride(0) + h * g.d, dout.stride(1),
                             k.data() + b * k.stride(0) + h * g.d, k.stride(1), v.data() + b * v.stride(0) + h * g.d,
                             v.stride(1), g.lq, g.lk, g.d, ldkt, dp);
    };
    // The arguments of tile pair (i0, j0) of a packed head; the caller points dq, dk, dv at its accumulators.
    auto pair = [&](ak::BackwardHead const& hd, Index bh, Index i0, Index j0) {
      return ak::BackwardTile{.qp = hd.qp.data() + i0 * dp, .dop = hd.dop.data() + i0 * dp,
                              .kt = hd.kt.data() + j0, .vt = hd.vt.data() + j0, .kp = hd.kp.data() + j0 * dp,
                              .lse = lse.data() + bh * g.lq + i0, .delta = delta + bh * g.lq + i0,
                              .dq = nullptr, .dk = nullptr, .dv = nullptr,
                              .ldkt = ldkt, .nq = std::min(g.bq, g.lq - i0), .nk = std::min(g.bk, g.lk - j0),
                              .d = g.d, .dp = dp, .scale = float(g.scale), .amx = amx_attention(ctx, lanes),
                              .head = bh};
    };
    // Rows [0, n) of a padded accumulator (row stride dp) into rows [r0, r0 + n) of head h of batch b of `to`.
    auto copy_out = [&](TensorView<float, Cpu> const& to, Index b, Index h, Index r0, Index n, float const* from) {
      float* dst = to.data() + b * to.stride(0) + r0 * to.stride(1) + h * g.d;
      for (Index r = 0; r < n; ++r)
        std::memcpy(dst + r * to.stride(1), from + r * dp, sizeof(float) * std::size_t(g.d));
    };
    struct Worker {
      ak::BackwardHead head;
      ak::BackwardTileScratch tile;
      std::vector<float> dq, dk, dv;  // padded accumulators
    };

    if (heads_total >= threads || threads == 1) {
      // One task per (batch, head): its packed operands and accumulators in the worker's buffers.
      Context<Cpu> const& run_on = heads_total > 1 && work > kParallelWork ? ctx : serial_context(ctx);
      std::vector<Worker> workers(std::size_t(run_on.threads()));
      sdlora::cpu::parallel_tasks(run_on, heads_total, [&](Index bh, int worker) {
        Worker& w = workers[std::size_t(worker)];
        Index const b = bh / g.heads, h = bh % g.heads;
        pack(w.head, b, h);
        w.dq.assign(std::size_t(rows_q * dp), 0.f);
        w.dk.assign(std::size_t(ldkt * dp), 0.f);
        w.dv.assign(std::size_t(ldkt * dp), 0.f);
        for (Index j0 = 0; j0 < g.lk; j0 += g.bk)
          for (Index i0 = 0; i0 < g.lq; i0 += g.bq) {
            ak::BackwardTile t = pair(w.head, bh, i0, j0);
            t.dq = w.dq.data() + i0 * dp;
            t.dk = w.dk.data() + j0 * dp;
            t.dv = w.dv.data() + j0 * dp;
            tile.run(t, w.tile);
          }
        copy_out(dq, b, h, 0, g.lq, w.dq.data());
        copy_out(dk, b, h, 0, g.lk, w.dk.data());
        copy_out(dv, b, h, 0, g.lk, w.dv.data());
      });
      return;
    }
    // Fewer heads than threads: every head packed once, then dk, dv per key tile and dq per query tile.
    Context<Cpu> const& run_on = work > kParallelWork ? ctx : serial_context(ctx);
    std::vector<ak::BackwardHead> heads(static_cast<std::size_t>(heads_total));
    sdlora::cpu::parallel_for(run_on, heads_total, heads_total > 1,
                              [&](Index bh) { pack(heads[std::size_t(bh)], bh / g.heads, bh % g.heads); });
    std::vector<Worker> workers(std::size_t(run_on.threads()));
    Index const keys_p = (g.bk + lanes - 1) / lanes * lanes, query_p = (g.bq + ak::kRows - 1) / ak::kRows * ak::kRows;
    sdlora::cpu::parallel_tasks(run_on, heads_total * tiles_k, [&](Index t, int worker) {
      Worker& w = workers[std::size_t(worker)];
      Index const bh = t / tiles_k, j0 = (t % tiles_k) * g.bk;
      w.dk.assign(std::size_t(keys_p * dp), 0.f);
      w.dv.assign(std::size_t(keys_p * dp), 0.f);
      for (Index i0 = 0; i0 < g.lq; i0 += g.bq) {
        ak::BackwardTile a = pair(heads[std::size_t(bh)], bh, i0, j0);
        a.dk = w.dk.data();
        a.dv = w.dv.data();
        tile.run(a, w.tile);
      }
      Index const nk = std::min(g.bk, g.lk - j0);
      copy_out(dk, bh / g.heads, bh % g.heads, j0, nk, w.dk.data());
      copy_out(dv, bh / g.heads, bh % g.heads, j0, nk, w.dv.data());
    });
    sdlora::cpu::parallel_tasks(run_on, heads_total * tiles_q, [&](Index t, int worker) {
      Worker& w = workers[std::size_t(worker)];
      Index const bh = t / tiles_q, i0 = (t % tiles_q) * g.bq;
      w.dq.assign(std::size_t(query_p * dp), 0.f);
      for (Index j0 = 0; j0 < g.lk; j0 += g.bk) {
        ak::BackwardTile a = pair(heads[std::size_t(bh)], bh, i0, j0);
        a.dq = w.dq.data();
        tile.run(a, w.tile);
      }
      copy_out(dq, bh / g.heads, bh % g.heads, i0, std::min(g.bq, g.lq - i0), w.dq.data());
    });
  }

  /// The backward contribution of one (query tile i0, key tile j0) pair of head (b, h). dq, dk and dv are each
  /// accumulated when not null: query tile rows land at dq rows [dq_row0, dq_row0 + nq), key tile rows at dk and dv
  /// rows [dkv_row0, dkv_row0 + nk) (the maps cover either the whole head or just the tile).
  template <class T>
  static void tile_backward(TileArgs<T> const& a, Scratch<T>& scratch, Index b, Index h, Index i0, Index j0,
                            MatrixMap<T>* dq, Index dq_row0, MatrixMap<T>* dk, MatrixMap<T>* dv, Index dkv_row0) {
    Geometry const& g = a.g;
    Index const nq = std::min(g.bq, g.lq - i0), nk = std::min(g.bk, g.lk - j0);
    if (g.causal && j0 > i0 + nq - 1) return;  // every key of the tile lies after every query
    auto const qi = head(a.q, b, h, i0, nq, g.d);     // (nq, D)
    auto const kj = head(a.k, b, h, j0, nk, g.d);     // (nk, D)
    auto const vj = head(a.v, b, h, j0, nk, g.d);     // (nk, D)
    auto const doi = head(a.dout, b, h, i0, nq, g.d);  // (nq, D)
    T const* lse_row = a.lse.data() + (b * g.heads + h) * g.lq + i0;
    T const* delta_row = a.delta + (b * g.heads + h) * g.lq + i0;
    T const scale = T(g.scale);

    Eigen::Block<Mat<T>> p = scratch.p.topLeftCorner(nq, nk);  // (nq, nk)
    product(a.ctx, p, qi, false, kj, true, scale, false);
    if (g.causal) mask_tile(p, i0, j0);
    for (Index r = 0; r < nq; ++r) p.row(r) = (p.row(r).array() - lse_row[r]).exp().matrix();
    Eigen::Block<Mat<T>> ds = scratch.dp.topLeftCorner(nq, nk);  // (nq, nk) dP, then dS
    product(a.ctx, ds, doi, false, vj, true, T(1), false);
    for (Index r = 0; r < nq; ++r) ds.row(r) = (p.row(r).array() * (ds.row(r).array() - delta_row[r])).matrix();
    if (dv) product(a.ctx, dv->middleRows(dkv_row0, nk), p, true, doi, false, T(1), true);
    if (dk) product(a.ctx, dk->middleRows(dkv_row0, nk), ds, true, qi, false, scale, true);
    if (dq) product(a.ctx, dq->middleRows(dq_row0, nq), ds, false, kj, false, scale, true);
  }
};

}  // namespace sdlora::ops
