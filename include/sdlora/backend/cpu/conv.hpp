/// @file conv.hpp
/// @brief CPU kernels of ops/conv.hpp: im2col / col2im (OpenMP over rows or channels) around Eigen GEMMs, one image
/// at a time so the column buffer stays C*kh*kw x H_out*W_out. A 1x1, stride-1, unpadded convolution is a plain
/// GEMM on the image itself. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::max, std::min, std::fill_n

#include <sdlora/backend/cpu/bias.hpp>  // Impl<Bias, Cpu>
#include <sdlora/backend/cpu/gemm.hpp>  // Impl<Gemm, Cpu>
#include <sdlora/ops/bias.hpp>          // bias_add_channels
#include <sdlora/ops/conv.hpp>          // Conv2d, Conv2dGeometry, Impl
#include <sdlora/ops/gemm.hpp>          // gemm

namespace sdlora::ops {

namespace cpu {

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
#pragma omp parallel for schedule(static) num_threads(ctx.threads()) if (rows * p > 32768)
  for (Index r = 0; r < rows; ++r) {
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
  }
}

/// dx (C, H, W) += col2im(dcols (C*kh*kw, H_out*W_out)): the adjoint of im2col. One thread per channel, so no two
/// threads write the same pixel.
template <class T>
void col2im_add(Context<Cpu>& ctx, T* dx, T const* dcols, ConvDims const& d, Conv2dGeometry const& g) {
  Index const p = d.p(), s = g.stride;
#pragma omp parallel for schedule(static) num_threads(ctx.threads()) if (d.k() * p > 32768)
  for (Index c = 0; c < d.c; ++c) {
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
  }
}

}  // namespace cpu

template <>
struct Impl<Conv2d, Cpu> {
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, Conv2d const& op, TensorView<T, Cpu> y, TensorView<T const, Cpu> x,
                      TensorView<T const, Cpu> w, TensorView<T const, Cpu> b) {
    cpu::ConvDims const d = cpu::conv_dims(x.shape(), w.shape(), y.shape());
    Index const n = x.dim(0), k = d.k(), p = d.p();
    bool const pointwise = cpu::is_pointwise(d, op.geometry);
    auto cols = pointwise ? Tensor<T, Cpu>() : Tensor<T, Cpu>::uninitialized(Shape{k, p});  // (C*kh*kw, P)
    TensorView<T const, Cpu> const wm(w.data(), Shape{d.o, k});                                // (O, C*kh*kw)
    for (Index i = 0; i < n; ++i) {
      T const* xi = x.data() + i * d.c * d.h * d.w;
      if (!pointwise) cpu::im2col(ctx, cols.data(), xi, d, op.geometry);
      TensorView<T const, Cpu> const ci(pointwise ? xi : cols.data(), Shape{k, p});             // (C*kh*kw, P)
      TensorView<T, Cpu> const yi(y.data() + i * d.o * p, Shape{d.o, p});                       // (O, P)
      gemm<T, Cpu>(ctx, yi, wm, ci, {.beta = op.accumulate ? 1.0 : 0.0});
    }
    if (b.data() != nullptr) bias_add_channels<T, Cpu>(ctx, y, b);
  }

  template <HostCompute T>
  static void backward_input(Context<Cpu>& ctx, Conv2d const& op, TensorView<T, Cpu> dx, TensorView<T const, Cpu> dy,
                             TensorView<T const, Cpu> w) {
    cpu::ConvDims const d = cpu::conv_dims(dx.shape(), w.shape(), dy.shape());
    Index const n = dx.dim(0), k = d.k(), p = d.p(), image = d.c * d.h * d.w;
    bool const pointwise = cpu::is_pointwise(d, op.geometry);
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
