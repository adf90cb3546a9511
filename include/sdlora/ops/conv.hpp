/// @file conv.hpp
/// @brief 2-D convolution over NCHW tensors (groups = 1, dilation = 1): forward, input gradient and weight gradient,
/// with square stride and arbitrary (asymmetric) zero padding. The bias gradient is ops::bias_grad_channels.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <ostream>  // std::ostream

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView, Shape
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Zero padding on each side of the spatial axes, in pixels. `Pad2d::uniform(1)` is torch's `padding=1`;
/// `{0, 1, 0, 1}` is diffusers' `F.pad(x, (0, 1, 0, 1))` in the VAE encoder's Downsample2D.
struct Pad2d {
  Index top = 0;
  Index bottom = 0;
  Index left = 0;
  Index right = 0;
  static constexpr Pad2d uniform(Index p) { return {p, p, p, p}; }
  friend bool operator==(Pad2d const&, Pad2d const&) = default;
};

/// Stride (the same along H and W, as in every Stable Diffusion convolution) and padding.
struct Conv2dGeometry {
  Index stride = 1;
  Pad2d pad{};
};

inline std::ostream& operator<<(std::ostream& os, Conv2dGeometry const& g) {
  return os << "stride " << g.stride << ", pad (top " << g.pad.top << ", bottom " << g.pad.bottom << ", left "
            << g.pad.left << ", right " << g.pad.right << ")";
}

/// Op tag. `accumulate` adds into the destination instead of overwriting it (used by adapters: dx += ...).
struct Conv2d {
  Conv2dGeometry geometry;
  bool accumulate = false;
};

/// The output shape (N, O, H_out, W_out) of x (N, C, H, W) convolved with w (O, C, kh, kw):
/// H_out = (H + top + bottom - kh) / stride + 1 (floor), likewise W_out.
inline Shape conv2d_output_shape(Shape const& x, Shape const& w, Conv2dGeometry const& g) {
  SDLORA_EXPECTS(x.rank() == 4 && w.rank() == 4 && x[1] == w[1],
                 "[conv2d] x must be (N, C, H, W) and w (O, C, kh, kw), got x " << x << ", w " << w);
  SDLORA_EXPECTS(g.stride >= 1 && g.pad.top >= 0 && g.pad.bottom >= 0 && g.pad.left >= 0 && g.pad.right >= 0,
                 "[conv2d] invalid geometry: " << g);
  Index const hp = x[2] + g.pad.top + g.pad.bottom, wp = x[3] + g.pad.left + g.pad.right;
  SDLORA_EXPECTS(hp >= w[2] && wp >= w[3],
                 "[conv2d] kernel " << w << " larger than the padded input " << x << " (" << g << ")");
  return Shape{x[0], w[0], (hp - w[2]) / g.stride + 1, (wp - w[3]) / g.stride + 1};
}

namespace conv_detail {
template <class V>
void expect_nchw(char const* op, char const* name, V const& v) {
  SDLORA_EXPECTS(v.rank() == 4 && v.is_contiguous(),
                 "[" << op << "] " << name << " must be a contiguous (N, C, H, W) tensor, got " << v.shape());
}
/// b is null (no bias) or (out_channels).
template <class V>
void expect_bias(V const& b, Index out_channels) {
  SDLORA_EXPECTS(b.data() == nullptr || (b.rank() == 1 && b.dim(0) == out_channels),
                 "[conv2d] bias must be (" << out_channels << "), got " << b.shape());
}

}  // namespace conv_detail

/// y (N, O, H_out, W_out) = conv(x (N, C, H, W), w (O, C, kh, kw)) + b (O), or += with `accumulate`.
/// Pass a default-constructed view (null data) as `b` for no bias.
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.functional.conv2d.html
template <class T, class B>
void conv2d_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x, TensorView<T const, B> w,
                    TensorView<T const, B> b, Conv2dGeometry const& g, bool accumulate = false) {
  conv_detail::expect_nchw("conv2d", "x", x);
  conv_detail::expect_nchw("conv2d", "w", w);
  conv_detail::expect_nchw("conv2d", "y", y);
  Shape const expected = conv2d_output_shape(x.shape(), w.shape(), g);
  SDLORA_EXPECTS(y.shape() == expected, "[conv2d] y must be " << expected << " for x " << x.shape() << ", w "
                                                              << w.shape() << " (" << g << "), got " << y.shape());
  conv_detail::expect_bias(b, w.dim(0));
  Impl<Conv2d, B>::forward(ctx, Conv2d{g, accumulate}, y, x, w, b);
}

/// dx (N, C, H, W) = conv2d^T(dy (N, O, H_out, W_out), w (O, C, kh, kw)), or += with `accumulate`.
template <class T, class B>
void conv2d_backward_input(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy, TensorView<T const, B> w,
                           Conv2dGeometry const& g, bool accumulate = false) {
  conv_detail::expect_nchw("conv2d.backward_input", "dx", dx);
  conv_detail::expect_nchw("conv2d.backward_input", "dy", dy);
  conv_detail::expect_nchw("conv2d.backward_input", "w", w);
  Shape const expected = conv2d_output_shape(dx.shape(), w.shape(), g);
  SDLORA_EXPECTS(dy.shape() == expected, "[conv2d.backward_input] dy must be " << expected << " for dx " << dx.shape()
                                                                               << ", w " << w.shape() << " (" << g
                                                                               << "), got " << dy.shape());
  Impl<Conv2d, B>::backward_input(ctx, Conv2d{g, accumulate}, dx, dy, w);
}

/// dw (O, C, kh, kw) += sum over n of the correlation of dy (N, O, H_out, W_out) with x (N, C, H, W).
/// Always accumulates (parameter gradients are sums, see nn/module.hpp).
template <class T, class B>
void conv2d_backward_weight(Context<B>& ctx, TensorView<T, B> dw, TensorView<T const, B> dy, TensorView<T const, B> x,
                            Conv2dGeometry const& g) {
  conv_detail::expect_nchw("conv2d.backward_weight", "dw", dw);
  conv_detail::expect_nchw("conv2d.backward_weight", "dy", dy);
  conv_detail::expect_nchw("conv2d.backward_weight", "x", x);
  Shape const expected = conv2d_output_shape(x.shape(), dw.shape(), g);
  SDLORA_EXPECTS(dy.shape() == expected, "[conv2d.backward_weight] dy must be " << expected << " for x " << x.shape()
                                                                                << ", dw " << dw.shape() << " (" << g
                                                                                << "), got " << dy.shape());
  Impl<Conv2d, B>::backward_weight(ctx, Conv2d{g, true}, dw, dy, x);
}

}  // namespace sdlora::ops
