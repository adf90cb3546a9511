/// @file conv.hpp
/// @brief CPU kernels of ops/conv.hpp. Include <sdlora/sdlora.hpp> instead.
///
/// float: implicit GEMM. The packed GEMM (sgemm.hpp) reads the column matrix straight from the image while it packs
/// its panels, so no column buffer exists and memory does not grow with the image beyond the activations:
///   forward          y (O, P) = w (O, C*kh*kw) @ cols(x) (C*kh*kw, P)
///   weight gradient  dw (O, C*kh*kw) += dy (O, P) @ cols(x)^T (P, C*kh*kw)
///   input gradient   dx (C, H*W) = w' (C, O*kh*kw) @ cols(dy, padded by k - 1 - pad) (O*kh*kw, H*W) for stride 1,
///                    with w' the kernel flipped in space and transposed in (O, C); strided convolutions use
///                    dcols = w^T dy and col2im (their dcols is a quarter of the input's size or less).
/// double (finite-difference tests): explicit im2col / col2im around Eigen GEMMs, one image at a time.
/// A 1x1, stride-1, unpadded convolution is a plain GEMM on the image itself.
#pragma once

#include <algorithm>    // std::clamp, std::fill, std::fill_n, std::max, std::min
#include <concepts>     // std::same_as
#include <type_traits>  // std::integral_constant, std::is_same_v
#include <vector>       // std::vector

#include <sdlora/backend/cpu/bias.hpp>  // Impl<Bias, Cpu>
#include <sdlora/backend/cpu/gemm.hpp>   // Impl<Gemm, Cpu>
#include <sdlora/backend/cpu/sgemm.hpp>  // cpu::gemm_packed, cpu::matrix_packer_a
#include <sdlora/backend/cpu/winograd.hpp>  // winograd::convolve
#include <sdlora/ops/bias.hpp>          // bias_add_channels
#include <sdlora/ops/conv.hpp>          // Conv2d, Conv2dGeometry, Impl
#include <sdlora/ops/gemm.hpp>          // gemm

namespace sdlora::ops {

namespace cpu {

using sdlora::cpu::gemm_packed;
using sdlora::cpu::matrix_packer_a;
using sdlora::cpu::WeightSource;
using sdlora::cpu::matrix_packer_b;
using sdlora::cpu::gemm_shared_a;
using sdlora::cpu::StridedOutput;

/// The sizes of one convolution, read once from the operands.
struct ConvDims {
  Index c, h, w;       // input channels and spatial size
  Index o, kh, kw;     // output channels and kernel size
  Index ho, wo;        // output spatial size
  Index k() const { return c * kh * kw; }  // GEMM depth: rows of the column matrix
  Index p() const { return ho * wo; }      // output pixels: columns of the column matrix
};

inline ConvDims conv_dims(Shape const& x, Shape const& w, Shape const& y) {
  return {x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3]};
}

/// A 1x1, stride-1, unpadded convolution reads the image (C, H*W) itself as its column matrix.
inline bool is_pointwise(ConvDims const& d, Conv2dGeometry const& g) {
  return d.kh == 1 && d.kw == 1 && g.stride == 1 && g.pad == Pad2d{};
}

/// The range [lo, hi) of output positions o with 0 <= o * stride - pad + k < size (the taps that land inside).
inline void valid_range(Index size, Index out, Index stride, Index pad, Index k, Index& lo, Index& hi) {
  Index const first = pad - k;  // o * stride >= first
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  Index const last = size - 1 + pad - k;  // o * stride <= last
  hi = last < 0 ? 0 : std::min(out, last / stride + 1);
  lo = std::min(lo, hi);
}

/// cols (C*kh*kw, H_out*W_out) from one image x (C, H, W); row (c, i, j) holds tap (i, j) of channel c.
template <class T>
void im2col(Context<Cpu>& ctx, T* cols, T const* x, ConvDims const& d, Conv2dGeometry const& g) {
  Index const rows = d.k(), p = d.p(), s = g.stride;
  sdlora::cpu::parallel_for(ctx, rows, rows * p > 32768, [&](Index r) {
    Index const c = r / (d.kh * d.kw), i = (r / d.kw) % d.kh, j = r % d.kw;
    T const* src = x + c * d.h * d.w;
    T* dst = cols + r * p;
    Index oh_lo, oh_hi, ow_lo, ow_hi;
    valid_range(d.h, d.ho, s, g.pad.top, i, oh_lo, oh_hi);
    valid_range(d.w, d.wo, s, g.pad.left, j, ow_lo, ow_hi);
    std::fill_n(dst, oh_lo * d.wo, T(0));
    for (Index oh = oh_lo; oh < oh_hi; ++oh) {
      T* out = dst + oh * d.wo;
      Index const base = (oh * s - g.pad.top + i) * d.w - g.pad.left + j;  // src[base + ow * s]: tap (i, j) at (oh, ow)
      std::fill_n(out, ow_lo, T(0));
      if (s == 1) {
        for (Index ow = ow_lo; ow < ow_hi; ++ow) out[ow] = src[base + ow];
      } else {
        for (Index ow = ow_lo; ow < ow_hi; ++ow) out[ow] = src[base + ow * s];
      }
      std::fill(out + ow_hi, out + d.wo, T(0));
    }
    std::fill(dst + oh_hi * d.wo, dst + p, T(0));
  });
}

/// dx (C, H, W) += col2im(dcols (C*kh*kw, H_out*W_out)): the adjoint of im2col. One thread per channel, so no two
/// threads write the same pixel.
template <class T>
void col2im_add(Context<Cpu>& ctx, T* dx, T const* dcols, ConvDims const& d, Conv2dGeometry const& g) {
  Index const p = d.p(), s = g.stride;
  sdlora::cpu::parallel_for(ctx, d.c, d.k() * p > 32768, [&](Index c) {
    T* dst = dx + c * d.h * d.w;
    for (Index i = 0; i < d.kh; ++i) {
      Index oh_lo, oh_hi;
      valid_range(d.h, d.ho, s, g.pad.top, i, oh_lo, oh_hi);
      for (Index j = 0; j < d.kw; ++j) {
        Index ow_lo, ow_hi;
        valid_range(d.w, d.wo, s, g.pad.left, j, ow_lo, ow_hi);
        T const* src = dcols + ((c * d.kh + i) * d.kw + j) * p;
        for (Index oh = oh_lo; oh < oh_hi; ++oh) {
          T const* in = src + oh * d.wo;
          Index const base = (oh * s - g.pad.top + i) * d.w - g.pad.left + j;
          for (Index ow = ow_lo; ow < ow_hi; ++ow) dst[base + ow * s] += in[ow];
        }
      }
    }
  });
}

/// Packs panels of the column matrix cols(img) (C*kh*kw, P) of an image (C, H, W) for the packed GEMM, without
/// materialising it: element (row (c, i, j), column p = (oh, ow)) is img[c, oh * stride - pad_top + i,
/// ow * stride - pad_left + j], zero outside the image. `grid_w` is the output width.
struct ImageColumns {
  float const* img;
  Index c, h, w, kh, kw, stride, pad_top, pad_left, grid_w;

  /// Row `row` of the column matrix as its channel and kernel tap (i, j).
  struct Tap {
    Index ch, i, j;
  };
  Tap tap_of(Index row) const { return {row / (kh * kw), (row / kw) % kh, row % kw}; }

  /// Writes `count` consecutive columns starting at p (all in one output row or across rows) of row (c, i, j) to
  /// out[t * step], t = 0 .. count.
  void row_segment(float* out, Index step, Index row, Index p, Index count) const {
    Tap const t = tap_of(row);
    segment(out, step, t.ch, t.i, t.j, p / grid_w, p % grid_w, count);
  }

  using Unit = std::integral_constant<Index, 1>;  // a step of 1 known at compile time

  /// row_segment for the row of channel ch and tap (i, j), from output position (oh, ow) on: the packers keep these
  /// counters as they go instead of dividing for every segment (four integer divisions cost more than copying the
  /// 16 values of a panel row). Step is Index, or Unit for the B panels' contiguous rows, whose stride-1 copy the
  /// compiler then vectorises (a memmove call per 16 values costs more).
  template <class Step>
  void segment(float* out, Step step, Index ch, Index i, Index j, Index oh, Index ow, Index count) const {
    float const* plane = img + ch * h * w;
    for (Index t = 0; t < count;) {
      Index const run = std::min(count - t, grid_w - ow);  // columns left in this output row
      Index const ih = oh * stride - pad_top + i, iw0 = ow * stride - pad_left + j;
      float* o = out + t * step;
      if (ih < 0 || ih >= h) {
        for (Index u = 0; u < run; ++u) o[u * step] = 0.f;
      } else if (stride == 1) {  // a contiguous run of the input row, zero where it leaves the image
        Index const lo = std::clamp<Index>(-iw0, 0, run), hi = std::clamp<Index>(w - iw0, lo, run);
        float const* src = plane + ih * w + iw0;
        for (Index u = 0; u < lo; ++u) o[u * step] = 0.f;
        for (Index u = lo; u < hi; ++u) o[u * step] = src[u];
        for (Index u = hi; u < run; ++u) o[u * step] = 0.f;
      } else {
        float const* src = plane + ih * w;
        for (Index u = 0; u < run; ++u) {
          Index const iw = iw0 + u * stride;
          o[u * step] = iw >= 0 && iw < w ? src[iw] : 0.f;
        }
      }
      t += run;
      ow += run;
      if (ow == grid_w) ow = 0, ++oh;
    }
  }

  /// B packer for cols(img) as the (K = rows, N = columns) operand: panels of `nr` columns over rows [k0, k0 + kc).
  void pack_as_b(float* dst, Index k0, Index kc, Index n0, Index nc, Index nr) const {
    for (Index q = 0; q < nc; q += nr, dst += nr * kc) {
      Index const width = std::min(nr, nc - q), oh = (n0 + q) / grid_w, ow = (n0 + q) % grid_w;
      auto [ch, i, j] = tap_of(k0);  // row k0 + d's channel and tap
      for (Index d = 0; d < kc; ++d) {
        segment(dst + d * nr, Unit{}, ch, i, j, oh, ow, width);
        std::fill(dst + d * nr + width, dst + (d + 1) * nr, 0.f);
        if (++j == kw) j = 0, ++i;
        if (i == kh) i = 0, ++ch;
      }
    }
  }

  /// B packer for cols(img)^T as the (K = columns, N = rows) operand: panels of `nr` rows over columns [k0, k0 + kc).
  void pack_transposed_as_b(float* dst, Index k0, Index kc, Index n0, Index nc, Index nr) const {
    for (Index q = 0; q < nc; q += nr, dst += nr * kc) {
      Index const width = std::min(nr, nc - q);
      for (Index r = 0; r < width; ++r) row_segment(dst + r, nr, n0 + q + r, k0, kc);
      for (Index r = width; r < nr; ++r)
        for (Index d = 0; d < kc; ++d) dst[d * nr + r] = 0.f;
    }
  }
};

/// The Winograd problem of a 3x3, stride-1 convolution (x -> y), or of its input gradient (dy -> dx) when `gradient`.
inline sdlora::cpu::winograd::Problem winograd_problem(Index n, ConvDims const& d, Conv2dGeometry const& g,
                                                       bool gradient) {
  if (!gradient) return {n, d.c, d.h, d.w, d.o, d.ho, d.wo, g.pad.top, g.pad.left, false};
  return {n, d.o, d.ho, d.wo, d.c, d.h, d.w, d.kh - 1 - g.pad.top, d.kw - 1 - g.pad.left, true};
}

/// Whether a convolution takes the Winograd path (3x3, stride 1, large enough; winograd.hpp).
inline bool use_winograd(Context<Cpu> const& ctx, Index n, ConvDims const& d, Conv2dGeometry const& g,
                         bool gradient) {
  return d.kh == 3 && d.kw == 3 && g.stride == 1 &&
         sdlora::cpu::winograd::worth_it(ctx, winograd_problem(n, d, g, gradient));
}

/// Implicit-GEMM convolution for float (see the file comment).
struct ImplicitConv {
  /// y = conv(x, w) (+ y when accumulating) + bias (O, or null), the bias added in the GEMM's epilogue.
  static void forward(Context<Cpu>& ctx, Conv2dGeometry const& g, ConvDims const& d, Index n, float* y,
                      float const* x, WeightSource w, bool accumulate, float const* bias) {
    Index const k = d.k(), p = d.p();
    auto pack_b = [&](float* dst, Index bi, Index k0, Index kc, Index n0, Index nc, Index nr) {
      ImageColumns{x + bi * d.c * d.h * d.w, d.c, d.h, d.w, d.kh, d.kw, g.stride, g.pad.top, g.pad.left, d.wo}
          .pack_as_b(dst, k0, kc, n0, nc, nr);
    };
    w.ld = k;
    w.trans = false;
    gemm_shared_a(ctx, n, d.o, p, k, sdlora::cpu::weight_packer_a(w), pack_b, y, d.o * p, p, 1.f,
                  accumulate ? 1.f : 0.f, bias);
  }

  static void backward_weight(Context<Cpu>& ctx, Conv2dGeometry const& g, ConvDims const& d, Index n, float* dw,
                              float const* dy, float const* x) {
    Index const k = d.k(), p = d.p();
    for (Index i = 0; i < n; ++i) {  // images in order: dw sums them in the same order on any thread count
      ImageColumns const cols{x + i * d.c * d.h * d.w, d.c, d.h, d.w, d.kh, d.kw, g.stride, g.pad.top, g.pad.left,
                              d.wo};
      auto pack_b = [&](float* dst, Index, Index k0, Index kc, Index n0, Index nc, Index nr) {
        cols.pack_transposed_as_b(dst, k0, kc, n0, nc, nr);
      };
      gemm_packed(ctx, 1, d.o, k, p, matrix_packer_a({dy + i * d.o * p, p, false}, 0), pack_b,
                  StridedOutput{dw, 0, k}, k, 1.f, 1.f);
    }
  }

  /// Stride 1 only: the input gradient is a convolution of dy with the flipped, transposed kernel.
  static void backward_input(Context<Cpu>& ctx, Conv2dGeometry const& g, ConvDims const& d, Index n, float* dx,
                             float const* dy, WeightSource w, bool accumulate) {
    Index const taps = d.kh * d.kw, kt = d.o * taps, hw = d.h * d.w;
    // A (C, O*kh*kw): A(c, (o, t)) = w[o, c, tap kh*kw - 1 - t] (the kernel flipped along both axes), packed straight
    // from w: for one o, a panel's rows are one contiguous run of w (MR channels x taps), widened once.
    // A float weight is read in place; a 16-bit one widened a run at a time (a memcpy per run of a float weight was
    // ~3.5% of a 512 px LoRA step, in the small images' convolutions, where packing the weight dominates).
    auto pack_a = [&](float* dst, Index, Index m0, Index mc, Index k0, Index kc, Index mr) {
      std::vector<float> run(w.dtype == DType::F32 ? 0 : std::size_t(mr * taps));  // (MR, taps) of one 16-bit o
      for (Index q = 0; q < mc; q += mr, dst += mr * kc) {
        Index const rows = std::min(mr, mc - q);
        Index loaded = -1;  // the o whose run `src` points at
        float const* src = nullptr;
        for (Index dd = 0; dd < kc; ++dd) {
          Index const o = (k0 + dd) / taps, t = (k0 + dd) % taps;
          if (o != loaded) src = w.read(run.data(), (o * d.c + m0 + q) * taps, rows * taps), loaded = o;
          float* out = dst + dd * mr;
          for (Index r = 0; r < rows; ++r) out[r] = src[r * taps + taps - 1 - t];
          std::fill(out + rows, out + mr, 0.f);
        }
      }
    };
    auto pack_b = [&](float* dst, Index bi, Index k0, Index kc, Index n0, Index nc, Index nr) {
      ImageColumns{dy + bi * d.o * d.p(), d.o, d.ho, d.wo, d.kh, d.kw, 1, d.kh - 1 - g.pad.top,
                   d.kw - 1 - g.pad.left, d.w}
          .pack_as_b(dst, k0, kc, n0, nc, nr);
    };
    gemm_shared_a(ctx, n, d.c, hw, kt, pack_a, pack_b, dx, d.c * hw, hw, 1.f, accumulate ? 1.f : 0.f);
  }
};

}  // namespace cpu

template <>
struct Impl<Conv2d, Cpu> {
  /// forward for float activations and a weight of shape w_shape (O, C, kh, kw) in any storage (a frozen 16-bit
  /// weight is widened while packing; see nn::Parameter::set_storage).
  static void forward_stored(Context<Cpu>& ctx, Conv2d const& op, TensorView<float, Cpu> y,
                             TensorView<float const, Cpu> x, cpu::WeightSource w, Shape const& w_shape,
                             TensorView<float const, Cpu> b) {
    cpu::ConvDims const d = cpu::conv_dims(x.shape(), w_shape, y.shape());
    Index const n = x.dim(0), p = d.p();
    conv_detail::expect_bias(b, d.o);  // (nn::Conv2d calls this directly for a 16-bit weight)
    if (cpu::is_pointwise(d, op.geometry)) {  // y (O, P) = w (O, C) @ x (C, P) + b per image
      w.ld = d.c;
      w.trans = false;
      cpu::gemm_shared_a(ctx, n, d.o, p, d.c, sdlora::cpu::weight_packer_a(w),
                         sdlora::cpu::matrix_packer_b({x.data(), p, false}, d.c * p), y.data(), d.o * p, p, 1.f,
                         op.accumulate ? 1.f : 0.f, b.data());
    } else if (cpu::use_winograd(ctx, n, d, op.geometry, false)) {
      sdlora::cpu::winograd::convolve(ctx, cpu::winograd_problem(n, d, op.geometry, false), y.data(), x.data(), w,
                                      op.accumulate, b.data());
    } else {
      cpu::ImplicitConv::forward(ctx, op.geometry, d, n, y.data(), x.data(), w, op.accumulate, b.data());
    }
  }

  /// backward_input for a weight in any storage: stride 1 and pointwise convolutions pack it directly; strided ones
  /// (a few downsamplers) run on a float copy. A template (T is float) only so that a translation unit that never
  /// calls it does not compile the generic float GEMM path it falls back on (~1.5 s of every test file's compile).
  template <std::same_as<float> T>
  static void backward_input_stored(Context<Cpu>& ctx, Conv2d const& op, TensorView<T, Cpu> dx,
                                    TensorView<T const, Cpu> dy, cpu::WeightSource w, Shape const& w_shape) {
    cpu::ConvDims const d = cpu::conv_dims(dx.shape(), w_shape, dy.shape());
    Index const n = dx.dim(0), p = d.p();
    if (cpu::is_pointwise(d, op.geometry)) {  // dx (C, P) = w^T (C, O) @ dy (O, P) per image
      w.ld = d.c;
      w.trans = true;
      cpu::gemm_shared_a(ctx, n, d.c, p, d.o, sdlora::cpu::weight_packer_a(w),
                         sdlora::cpu::matrix_packer_b({dy.data(), p, false}, d.o * p), dx.data(), d.c * p, p, 1.f,
                         op.accumulate ? 1.f : 0.f);
    } else if (cpu::use_winograd(ctx, n, d, op.geometry, true)) {
      sdlora::cpu::winograd::convolve(ctx, cpu::winograd_problem(n, d, op.geometry, true), dx.data(), dy.data(), w,
                                      op.accumulate, nullptr);
    } else if (op.geometry.stride == 1) {
      cpu::ImplicitConv::backward_input(ctx, op.geometry, d, n, dx.data(), dy.data(), w, op.accumulate);
    } else {
      auto wide = Tensor<float, Cpu>::uninitialized(w_shape);  // (O, C, kh, kw)
      w.widen(wide.data(), 0, wide.numel());
      backward_input<T>(ctx, op, dx, dy, wide.view());
    }
  }

  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, Conv2d const& op, TensorView<T, Cpu> y, TensorView<T const, Cpu> x,
                      TensorView<T const, Cpu> w, TensorView<T const, Cpu> b) {
    if constexpr (std::is_same_v<T, float>) {  // the packed GEMM, the bias in its epilogue
      forward_stored(ctx, op, y, x, {w.data(), DType::F32, 0, false}, w.shape(), b);
    } else {
      cpu::ConvDims const d = cpu::conv_dims(x.shape(), w.shape(), y.shape());
      Index const n = x.dim(0), k = d.k(), p = d.p();
      bool const pointwise = cpu::is_pointwise(d, op.geometry);
      auto cols = pointwise ? Tensor<T, Cpu>() : Tensor<T, Cpu>::uninitialized(Shape{k, p});  // (C*kh*kw, P)
      TensorView<T const, Cpu> const wm(w.data(), Shape{d.o, k});                                // (O, C*kh*kw)
      for (Index i = 0; i < n; ++i) {
        T const* xi = x.data() + i * d.c * d.h * d.w;
        if (!pointwise) cpu::im2col(ctx, cols.data(), xi, d, op.geometry);
        TensorView<T const, Cpu> const ci(pointwise ? xi : cols.data(), Shape{k, p});  // (C*kh*kw, P)
        TensorView<T, Cpu> const yi(y.data() + i * d.o * p, Shape{d.o, p});            // (O, P)
        gemm<T, Cpu>(ctx, yi, wm, ci, {.beta = op.accumulate ? 1.0 : 0.0});
      }
      if (b.data() != nullptr) bias_add_channels<T, Cpu>(ctx, y, b);
    }
  }

  template <HostCompute T>
  static void backward_input(Context<Cpu>& ctx, Conv2d const& op, TensorView<T, Cpu> dx, TensorView<T const, Cpu> dy,
                             TensorView<T const, Cpu> w) {
    cpu::ConvDims const d = cpu::conv_dims(dx.shape(), w.shape(), dy.shape());
    Index const n = dx.dim(0), k = d.k(), p = d.p(), image = d.c * d.h * d.w;
    bool const pointwise = cpu::is_pointwise(d, op.geometry);
    if constexpr (std::is_same_v<T, float>) {
      if (!pointwise && op.geometry.stride == 1) {
        backward_input_stored<T>(ctx, op, dx, dy, {w.data(), DType::F32, 0, false}, w.shape());
        return;
      }
    }
    auto dcols = pointwise ? Tensor<T, Cpu>() : Tensor<T, Cpu>::uninitialized(Shape{k, p});  // (C*kh*kw, P)
    TensorView<T const, Cpu> const wm(w.data(), Shape{d.o, k});                                 // (O, C*kh*kw)
    for (Index i = 0; i < n; ++i) {
      TensorView<T const, Cpu> const dyi(dy.data() + i * d.o * p, Shape{d.o, p});               // (O, P)
      T* dxi = dx.data() + i * image;
      if (pointwise) {
        gemm<T, Cpu>(ctx, TensorView<T, Cpu>(dxi, Shape{k, p}), wm, dyi,
                     {.trans_a = true, .beta = op.accumulate ? 1.0 : 0.0});
        continue;
      }
      gemm<T, Cpu>(ctx, dcols.view(), wm, dyi, {.trans_a = true});
      if (!op.accumulate) std::fill_n(dxi, image, T(0));
      cpu::col2im_add(ctx, dxi, dcols.data(), d, op.geometry);
    }
  }

  template <HostCompute T>
  static void backward_weight(Context<Cpu>& ctx, Conv2d const& op, TensorView<T, Cpu> dw, TensorView<T const, Cpu> dy,
                              TensorView<T const, Cpu> x) {
    cpu::ConvDims const d = cpu::conv_dims(x.shape(), dw.shape(), dy.shape());
    Index const n = x.dim(0), k = d.k(), p = d.p();
    bool const pointwise = cpu::is_pointwise(d, op.geometry);
    if constexpr (std::is_same_v<T, float>) {
      if (!pointwise) {
        cpu::ImplicitConv::backward_weight(ctx, op.geometry, d, n, dw.data(), dy.data(), x.data());
        return;
      }
    }
    auto cols = pointwise ? Tensor<T, Cpu>() : Tensor<T, Cpu>::uninitialized(Shape{k, p});  // (C*kh*kw, P)
    TensorView<T, Cpu> const dwm(dw.data(), Shape{d.o, k});                                    // (O, C*kh*kw)
    for (Index i = 0; i < n; ++i) {
      T const* xi = x.data() + i * d.c * d.h * d.w;
      if (!pointwise) cpu::im2col(ctx, cols.data(), xi, d, op.geometry);
      TensorView<T const, Cpu> const ci(pointwise ? xi : cols.data(), Shape{k, p});             // (C*kh*kw, P)
      TensorView<T const, Cpu> const dyi(dy.data() + i * d.o * p, Shape{d.o, p});               // (O, P)
      gemm<T, Cpu>(ctx, dwm, dyi, ci, {.trans_b = true, .beta = 1.0});
    }
  }
};

}  // namespace sdlora::ops
