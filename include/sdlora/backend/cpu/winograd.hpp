/// @file winograd.hpp
/// @brief 3x3 stride-1 float convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms
/// for Convolutional Neural Networks", 2016), the CPU path of the big convolutions in a UNet's and a VAE's ResNet
/// blocks. Include <sdlora/sdlora.hpp> instead.
///
/// Each 2x2 block of outputs ("tile") of output channel o is A^T [ sum_c (G g_oc G^T) . (B^T d_c B) ] A, with g_oc
/// the 3x3 kernel and d_c the 4x4 input patch under the tile: the sum over input channels is 16 independent GEMMs,
/// one per position e of the 4x4 transformed tile, M_e (O, tiles) = U_e (O, C) @ V_e (C, tiles). Per output value
/// that is 4 multiply-adds per input channel where the direct convolution does 9 (2.25x fewer); the transforms are
/// additions (and halvings for the weight): measured 3% of a 512 px LoRA step and 13% of a 512 px VAE decode (whose
/// 128-channel convolutions give each transformed value fewer products), against 39-54% in the micro-kernel.
///
/// Memory stays bounded: the input channels are taken in ranges whose transformed weights (16 x O x range) fit the
/// caller's shared panel buffer (sgemm.hpp's SharedPanels, 16 MB); per range, every task (one image's block of 64
/// tiles) transforms its patches straight into the micro-kernel's packed B panels, runs the 16 products into a
/// per-thread scratch and adds the output transform into y. The transformed weights are packed straight into the
/// micro-kernel's A panels, so the GEMM is sgemm.hpp's register kernel on its own panels.
///
/// Results: each output value is computed by one task in a fixed order, so the bits depend on neither the thread
/// count nor the batch. They are not the direct path's bits (a different sum): the test suite bounds the difference
/// (tests/nn_image/conv_float_test.cpp), and Context<Cpu>::winograd = false (or SDLORA_WINOGRAD=0 for a process) keeps
/// every convolution on the direct path.
#pragma once

#include <algorithm>  // std::min, std::max, std::clamp, std::copy_n
#include <cstdlib>    // std::getenv
#include <cstring>    // std::strcmp
#include <vector>     // std::vector

#include <sdlora/backend/cpu/isa.hpp>       // Isa
#include <sdlora/backend/cpu/parallel.hpp>  // parallel_tasks
#include <sdlora/backend/cpu/sgemm.hpp>     // gemm_kernel, WeightSource, SharedPanels, kKc, kMc
#include <sdlora/core/backend.hpp>          // Context<Cpu>
#include <sdlora/core/dtype.hpp>            // DType
#include <sdlora/core/shape.hpp>            // Index

namespace sdlora::cpu::winograd {

/// Output tiles per task: a multiple of every NR (16, 32).
inline constexpr Index kTileBlock = 64;

/// One convolution as the Winograd path sees it: `in` (n, depth, h, w) -> `out` (n, rows, ho, wo), 3x3, stride 1,
/// padded by (pad_top, pad_left) above and left (the bottom / right padding follows from the sizes). The kernel
/// g(r, d) of output channel r and input channel d is read from a WeightSource: at ((r * depth + d) * 9) when not
/// `flipped` (a forward convolution's (O, C, 3, 3) weight), else at ((d * rows + r) * 9) rotated by 180 degrees (the
/// input gradient: a convolution of dy with the flipped, transposed kernel).
struct Problem {
  Index n, depth, h, w;
  Index rows, ho, wo;
  Index pad_top, pad_left;
  bool flipped = false;
  Index range = 0;  // input channels per range; 0: as many as the shared panel buffer holds (tests set fewer)

  Index tiles_h() const { return (ho + 1) / 2; }
  Index tiles_w() const { return (wo + 1) / 2; }
  Index tiles() const { return tiles_h() * tiles_w(); }
};

/// Whether the process allows the Winograd path (SDLORA_WINOGRAD=0 turns it off; read once).
inline bool environment_allows() {
  static bool const allowed = [] {
    char const* v = std::getenv("SDLORA_WINOGRAD");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return allowed;
}

/// Whether a 3x3, stride-1 convolution is worth the Winograd path: at least 256 output tiles in the batch (32x32
/// outputs) so the weight transform is a few percent of the work, and 64 channels or more on both sides so the
/// per-tile transforms are (the VAE's 3-channel output convolution and the UNet's 4-channel input stay direct).
/// bf16 compute (Context<Cpu>::compute) keeps every convolution direct: its tile units outrun the float Winograd GEMMs.
inline bool worth_it(Context<Cpu> const& ctx, Problem const& p) {
  return ctx.winograd && ctx.compute == DType::F32 && environment_allows() && p.n * p.tiles() >= 256 && p.depth >= 64 && p.rows >= 64 &&
         p.pad_top >= 0 && p.pad_top <= 2 && p.pad_left >= 0 && p.pad_left <= 2;
}

namespace kernels {

/// The most rows of any micro-kernel's A panel (AVX-512: 12).
inline constexpr Index kMaxMr = 12;

/// U = G g G^T for the kMaxMr kernels of a panel side by side (g[t][i]: tap t, row-major, of kernel i; u[e][i]),
/// G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]. Loops over the kernels, which the compiler vectorises.
inline void weight_panel(float u[16][kMaxMr], float const g[9][kMaxMr]) {
  for (Index i = 0; i < kMaxMr; ++i) {
    float t[4][3];
    for (int j = 0; j < 3; ++j) {
      t[0][j] = g[j][i];
      t[1][j] = 0.5f * (g[j][i] + g[3 + j][i] + g[6 + j][i]);
      t[2][j] = 0.5f * (g[j][i] - g[3 + j][i] + g[6 + j][i]);
      t[3][j] = g[6 + j][i];
    }
    for (int r = 0; r < 4; ++r) {
      u[r * 4 + 0][i] = t[r][0];
      u[r * 4 + 1][i] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
      u[r * 4 + 2][i] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
      u[r * 4 + 3][i] = t[r][2];
    }
  }
}

/// Consecutive tiles of one tile row: tiles [j0, j1) of a panel or a task's block, whose outputs start at (oh, ow)
/// and go right 2 columns per tile (their 4x4 input patches start at (oh - pad_top, ow - pad_left)).
struct Segment {
  Index j0, j1, oh, ow;
};

/// Cuts `count` tiles from tile t0 (row-major over tiles_w tiles per row) into segments; returns how many.
inline int segments_of(Segment* out, Index t0, Index count, Index tiles_w) {
  int n = 0;
  for (Index j = 0; j < count;) {
    Index const t = t0 + j, tw = t % tiles_w, len = std::min(count - j, tiles_w - tw);
    out[n++] = {j, j + len, (t / tiles_w) * 2, tw * 2};
    j += len;
  }
  return n;
}

/// The geometry the transforms need.
struct Plane {
  Index h, w;                // the plane's size (input for the input transform, output for the output one)
  Index pad_top, pad_left;   // input transform only
};

/// The input transform of one panel of NR tiles (`count` of them real, the rest zero): for each of kc channels from
/// `x` (planes `plane` floats apart), the 16 vectors V_e (NR tiles) = (B^T d B)_e written to
/// dst + e * e_stride + k * NR, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. A segment's tiles read each patch row
/// as one run of 2 len + 2 values at stride 2 (the image row itself, or a zero-padded copy at the border); the transform along
/// the rows, then down the columns, loops over the tiles, which the compiler vectorises for the function's target.
template <Index NR>
[[gnu::always_inline]] inline void input_panel_body(float* dst, Index e_stride, float const* x, Index plane,
                                                    Plane const& g, Segment const* seg, int segments, Index count,
                                                    Index kc) {
  alignas(64) float run[2 * NR + 2];
  alignas(64) float t[16][NR];  // along the rows: t[a * 4 + b][j]
  for (int e = 0; e < 16; ++e)
    for (Index j = count; j < NR; ++j) t[e][j] = 0.f;
  for (Index k = 0; k < kc; ++k, x += plane) {
    for (int s = 0; s < segments; ++s) {
      Index const j0 = seg[s].j0, len = seg[s].j1 - j0, span = 2 * len + 2;
      Index const col = seg[s].ow - g.pad_left, lo = std::clamp<Index>(-col, 0, span);
      Index const hi = std::clamp<Index>(g.w - col, lo, span);
      for (int a = 0; a < 4; ++a) {
        Index const r = seg[s].oh - g.pad_top + a;
        float const* row = run;  // the patch row: the image's own where it lies inside, else a zero-padded copy
        if (r < 0 || r >= g.h) {
          for (Index q = 0; q < span; ++q) run[q] = 0.f;
        } else if (lo == 0 && hi == span) {
          row = x + r * g.w + col;
        } else {
          float const* src = x + r * g.w + col;
          for (Index q = 0; q < lo; ++q) run[q] = 0.f;
          for (Index q = lo; q < hi; ++q) run[q] = src[q];
          for (Index q = hi; q < span; ++q) run[q] = 0.f;
        }
        float* t0 = t[a * 4] + j0;
        float* t1 = t[a * 4 + 1] + j0;
        float* t2 = t[a * 4 + 2] + j0;
        float* t3 = t[a * 4 + 3] + j0;
        for (Index j = 0; j < len; ++j) {
          float const d0 = row[2 * j], d1 = row[2 * j + 1], d2 = row[2 * j + 2], d3 = row[2 * j + 3];
          t0[j] = d0 - d2;
          t1[j] = d1 + d2;
          t2[j] = d2 - d1;
          t3[j] = d1 - d3;
        }
      }
    }
    float* out = dst + k * NR;
    for (int b = 0; b < 4; ++b)
      for (Index j = 0; j < NR; ++j) {
        float const u0 = t[b][j], u1 = t[4 + b][j], u2 = t[8 + b][j], u3 = t[12 + b][j];
        out[b * e_stride + j] = u0 - u2;
        out[(4 + b) * e_stride + j] = u1 + u2;
        out[(8 + b) * e_stride + j] = u2 - u1;
        out[(12 + b) * e_stride + j] = u1 - u3;
      }
  }
}

/// The output transform of one output channel's products, Y = A^T m A with A^T = [1 1 1 0; 0 1 -1 -1], for `count`
/// tiles whose 16 values m_e lie at m + e * e_stride + j, written (or, when `add`, added) into the output plane `y`
/// (size g.h x g.w) segment by segment, then `bias` added.
[[gnu::always_inline]] inline void output_body(float* y, Plane const& g, float const* m, Index e_stride,
                                               Segment const* seg, int segments, Index count, bool add, float bias) {
  alignas(64) float v[4][kTileBlock];  // the tiles' top-left, top-right, bottom-left, bottom-right outputs
  for (Index j = 0; j < count; ++j) {
    float t[2][4];
    for (int b = 0; b < 4; ++b) {
      float const m0 = m[b * e_stride + j], m1 = m[(4 + b) * e_stride + j], m2 = m[(8 + b) * e_stride + j];
      float const m3 = m[(12 + b) * e_stride + j];
      t[0][b] = m0 + m1 + m2;
      t[1][b] = m1 - m2 - m3;
    }
    for (int a = 0; a < 2; ++a) {
      v[a * 2][j] = t[a][0] + t[a][1] + t[a][2];
      v[a * 2 + 1][j] = t[a][1] - t[a][2] - t[a][3];
    }
  }
  for (int s = 0; s < segments; ++s) {
    Index const j0 = seg[s].j0, len = seg[s].j1 - j0, pairs = std::min(len, (g.w - seg[s].ow) / 2);
    for (int a = 0; a < 2 && seg[s].oh + a < g.h; ++a) {
      float* o = y + (seg[s].oh + a) * g.w + seg[s].ow;
      float const* left = v[a * 2] + j0;
      float const* right = v[a * 2 + 1] + j0;
      if (add) {
        for (Index j = 0; j < pairs; ++j) {
          o[2 * j] = (o[2 * j] + left[j]) + bias;
          o[2 * j + 1] = (o[2 * j + 1] + right[j]) + bias;
        }
      } else {
        for (Index j = 0; j < pairs; ++j) {
          o[2 * j] = left[j] + bias;
          o[2 * j + 1] = right[j] + bias;
        }
      }
      if (pairs < len) o[2 * pairs] = (add ? o[2 * pairs] + left[pairs] : left[pairs]) + bias;  // odd width
    }
  }
}

inline void input_panel_16(float* dst, Index e_stride, float const* x, Index plane, Plane const& g,
                           Segment const* seg, int segments, Index count, Index kc) {
  input_panel_body<16>(dst, e_stride, x, plane, g, seg, segments, count, kc);
}
inline void output(float* y, Plane const& g, float const* m, Index e_stride, Segment const* seg, int segments,
                   Index count, bool add, float bias) {
  output_body(y, g, m, e_stride, seg, segments, count, add, bias);
}
#if SDLORA_X86_KERNELS
__attribute__((target("avx2,fma"))) inline void input_panel_16_avx2(float* dst, Index e_stride, float const* x,
                                                                      Index plane, Plane const& g, Segment const* seg,
                                                                      int segments, Index count, Index kc) {
  input_panel_body<16>(dst, e_stride, x, plane, g, seg, segments, count, kc);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline void input_panel_32_avx512(
    float* dst, Index e_stride, float const* x, Index plane, Plane const& g, Segment const* seg, int segments,
    Index count, Index kc) {
  input_panel_body<32>(dst, e_stride, x, plane, g, seg, segments, count, kc);
}
__attribute__((target("avx2,fma"))) inline void output_avx2(float* y, Plane const& g, float const* m, Index e_stride,
                                                              Segment const* seg, int segments, Index count, bool add,
                                                              float bias) {
  output_body(y, g, m, e_stride, seg, segments, count, add, bias);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) inline void output_avx512(
    float* y, Plane const& g, float const* m, Index e_stride, Segment const* seg, int segments, Index count, bool add,
    float bias) {
  output_body(y, g, m, e_stride, seg, segments, count, add, bias);
}
#endif

}  // namespace kernels

/// Per-thread scratch of the tasks: packed B panels (16 x range x kTileBlock) and the products (16 x rows x
/// kTileBlock), kept between calls.
struct TaskScratch {
  std::vector<float> v, m;
  static TaskScratch& local() {
    thread_local TaskScratch s;
    return s;
  }
};

/// out (n, rows, ho, wo) = conv3x3(in) (+ out when `accumulate`) (+ bias (rows) when not null, added last).
template <Index NR>
void run(Context<Cpu>& ctx, GemmKernel const& kern, Problem const& p, float* out, float const* in, WeightSource w,
         bool accumulate, float const* bias) {
  Index const mr = kern.mr, rows_pad = (p.rows + mr - 1) / mr * mr, tiles = p.tiles(), tw = p.tiles_w();
  Index const blocks = (tiles + kTileBlock - 1) / kTileBlock, plane_in = p.h * p.w, plane_out = p.ho * p.wo;
  // Input channels per range: the transformed weights of a range fill at most the shared panel buffer.
  Index const fit = kSharedPanelFloats / (16 * rows_pad) / kKc * kKc;
  Index const range = std::min(p.depth, p.range > 0 ? p.range : std::max(kKc, fit));
  float* const u = SharedPanels::reserve(16 * rows_pad * range);
  [[maybe_unused]] bool const x86 = SDLORA_X86_KERNELS && kern.isa != Isa::kPortable;

  for (Index k0 = 0; k0 < p.depth; k0 += range) {
    Index const kr = std::min(range, p.depth - k0);
    Index const e_stride_u = rows_pad * kr;  // U_e's packed panels: depth block pc at (pc - k0) * rows_pad
    // Weight transform: one task per MR-row panel, every depth of the range. The kernels are read in the order they
    // are stored: a forward weight's row r holds its depths' kernels one after another, a flipped one's depth d holds
    // its rows' (one contiguous run per panel and depth); float weights are read in place, 16-bit ones widened.
    parallel_tasks(ctx, rows_pad / mr, [&](Index panel, int) {
      Index const r0 = panel * mr, rows = std::min(mr, p.rows - r0);
      std::vector<float> widened(w.dtype == DType::F32 ? 0 : std::size_t(9 * mr));  // a 16-bit weight's run
      for (Index pc = k0; pc < k0 + kr; pc += kKc) {
        Index const kc = std::min(kKc, k0 + kr - pc);
        float* const base = u + (pc - k0) * rows_pad + r0 * kc;  // + e * e_stride_u + k * mr + i
        // Depth by depth, the panel's rows side by side: g[t][i] is tap t of row r0 + i's kernel, and each of the 16
        // transformed values is stored as one run of MR (12 x 16 scattered stores per depth before: the transform
        // then cost a third of the GEMM it feeds at 256 tiles).
        for (Index k = 0; k < kc; ++k) {
          alignas(64) float g[9][kernels::kMaxMr] = {}, ut[16][kernels::kMaxMr];
          if (!p.flipped) {
            for (Index i = 0; i < rows; ++i) {
              Index const at = ((r0 + i) * p.depth + pc + k) * 9;
              float const* src = w.read(widened.data(), at, 9);
              for (int t = 0; t < 9; ++t) g[t][i] = src[t];
            }
          } else {
            Index const at = ((pc + k) * p.rows + r0) * 9;
            float const* src = w.read(widened.data(), at, rows * 9);
            for (Index i = 0; i < rows; ++i)
              for (int t = 0; t < 9; ++t) g[t][i] = src[i * 9 + 8 - t];  // rotated by 180 degrees
          }
          kernels::weight_panel(ut, g);
          for (int e = 0; e < 16; ++e) std::copy_n(ut[e], mr, base + e * e_stride_u + k * mr);
        }
      }
    });

    bool const first = k0 == 0, last = k0 + kr == p.depth;
    parallel_tasks(ctx, p.n * blocks, [&](Index task, int) {
      Index const img = task / blocks, t0 = (task % blocks) * kTileBlock, count = std::min(kTileBlock, tiles - t0);
      TaskScratch& s = TaskScratch::local();
      Index const e_stride_v = kr * kTileBlock, e_stride_m = rows_pad * kTileBlock;
      if (Index(s.v.size()) < 16 * e_stride_v) s.v.resize(std::size_t(16 * e_stride_v));
      if (Index(s.m.size()) < 16 * e_stride_m) s.m.resize(std::size_t(16 * e_stride_m));
      float const* const x = in + (img * p.depth + k0) * plane_in;

      // Input transform into packed B panels: V_e's depth block pc at (pc - k0) * kTileBlock, panel jr at jr * kc.
      kernels::Plane const in_plane{p.h, p.w, p.pad_top, p.pad_left};
      for (Index jr = 0; jr < kTileBlock; jr += NR) {
        Index const real = std::clamp<Index>(count - jr, 0, NR);
        kernels::Segment seg[NR];
        int const segments = kernels::segments_of(seg, t0 + jr, real, tw);
        for (Index pc = k0; pc < k0 + kr; pc += kKc) {
          Index const kc = std::min(kKc, k0 + kr - pc);
          float* const dst = s.v.data() + (pc - k0) * kTileBlock + jr * kc;
          float const* const src = x + (pc - k0) * plane_in;
#if SDLORA_X86_KERNELS
          if constexpr (NR == 32) {
            kernels::input_panel_32_avx512(dst, e_stride_v, src, plane_in, in_plane, seg, segments, real, kc);
            continue;
          } else if (x86) {
            kernels::input_panel_16_avx2(dst, e_stride_v, src, plane_in, in_plane, seg, segments, real, kc);
            continue;
          }
#endif
          if constexpr (NR == 16)
            kernels::input_panel_16(dst, e_stride_v, src, plane_in, in_plane, seg, segments, real, kc);
        }
      }

      // The 16 products M_e (rows_pad, kTileBlock) = U_e @ V_e over the range's depth blocks.
      for (int e = 0; e < 16; ++e) {
        float const* const ue = u + e * e_stride_u;
        float const* const ve = s.v.data() + e * e_stride_v;
        float* const me = s.m.data() + e * e_stride_m;
        for (Index pc = 0; pc < kr; pc += kKc) {
          Index const kc = std::min(kKc, kr - pc);
          float const beta = pc == 0 ? 0.f : 1.f;
          for (Index ic = 0; ic < rows_pad; ic += kMc) {
            Index const mc = std::min(kMc, rows_pad - ic);
            for (Index jr = 0; jr < kTileBlock; jr += NR)
              for (Index ir = ic; ir < ic + mc; ir += mr)
                kern.run(kc, ue + pc * rows_pad + ir * kc, ve + pc * kTileBlock + jr * kc,
                         me + ir * kTileBlock + jr, kTileBlock, 1.f, beta);
          }
        }
      }

      // Output transform, added into the image after the first range (and onto `out` when accumulating).
      kernels::Segment seg[kTileBlock];
      int const segments = kernels::segments_of(seg, t0, count, tw);
      kernels::Plane const out_plane{p.ho, p.wo, 0, 0};
      bool const add = !first || accumulate;
      for (Index r = 0; r < p.rows; ++r) {
        float* const y = out + (img * p.rows + r) * plane_out;
        float const* const m = s.m.data() + r * kTileBlock;
        float const b = last && bias ? bias[r] : 0.f;
#if SDLORA_X86_KERNELS
        if (kern.isa == Isa::kAvx512) {
          kernels::output_avx512(y, out_plane, m, e_stride_m, seg, segments, count, add, b);
          continue;
        }
        if (x86) {
          kernels::output_avx2(y, out_plane, m, e_stride_m, seg, segments, count, add, b);
          continue;
        }
#endif
        kernels::output(y, out_plane, m, e_stride_m, seg, segments, count, add, b);
      }
    });
  }
}

/// Runs the convolution on the path for ctx's ISA (the micro-kernel's NR sets the panel width).
inline void convolve(Context<Cpu>& ctx, Problem const& p, float* out, float const* in, WeightSource w,
                     bool accumulate, float const* bias) {
  GemmKernel const kern = gemm_kernel(ctx.isa);
  if (kern.nr == 32) run<32>(ctx, kern, p, out, in, w, accumulate, bias);
  else run<16>(ctx, kern, p, out, in, w, accumulate, bias);
}

}  // namespace sdlora::cpu::winograd
