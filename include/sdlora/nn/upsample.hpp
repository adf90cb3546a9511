/// @file upsample.hpp
/// @brief Upsample2D: diffusers' nearest 2x interpolation followed by an optional 3x3 convolution named "conv".
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <array>   // std::array
#include <string>  // std::string

#include <sdlora/nn/conv2d.hpp>    // Conv2d
#include <sdlora/nn/module.hpp>    // Mode, join
#include <sdlora/ops/upsample.hpp> // ops::upsample_nearest_forward, ops::upsample_nearest_backward

namespace sdlora::nn {

/// reference: diffusers/models/upsampling.py, Upsample2D (use_conv_transpose = false, no norm, interpolate = true)
template <class T, class B = Cpu>
class Upsample2D {
 public:
  Upsample2D() = default;
  /// Upsample2D(channels, use_conv, out_channels = channels, kernel_size = 3, padding = 1, bias = true).
  Upsample2D(Index channels, bool use_conv, Index out_channels = 0, Index kernel_size = 3, Index padding = 1,
             bool bias = true)
      : channels(channels), use_conv(use_conv) {
    if (use_conv)
      conv = Conv2d<T, B>(channels, out_channels > 0 ? out_channels : channels, kernel_size, 1, padding, bias);
  }

  Conv2d<T, B> conv;  // present when use_conv
  Index channels = 0;
  bool use_conv = false;

  /// y (N, out, 2H, 2W) = conv(nearest2x(x (N, C, H, W))). `output_size` {H', W'} replaces the 2x size, as diffusers'
  /// `output_size` argument (used when the latent size is not a multiple of the UNet's total downsampling).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer,
                       std::array<Index, 2> output_size = {0, 0}) {
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == channels,
                   "[upsample2d] x must be (N, " << channels << ", H, W), got " << x.shape());
    Index const ho = output_size[0] > 0 ? output_size[0] : 2 * x.dim(2);
    Index const wo = output_size[1] > 0 ? output_size[1] : 2 * x.dim(3);
    auto up = Tensor<T, B>::uninitialized(Shape{x.dim(0), x.dim(1), ho, wo});  // (N, C, H', W')
    ops::upsample_nearest_forward<T, B>(ctx, up.view(), x);
    if (keeps_saved(mode)) saved_.x_shape = x.shape();
    return use_conv ? conv.forward(ctx, up.view(), mode) : up;
  }

  /// dx (N, C, H, W): the conv's backward (accumulating its trainable gradients), then the sum over each copied block.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(saved_.x_shape.rank() == 4, "[upsample2d.backward] run forward with Mode::Train first");
    auto dx = Tensor<T, B>::uninitialized(saved_.x_shape);
    if (use_conv) {
      auto const dup = conv.backward(ctx, dy);  // (N, C, H', W')
      ops::upsample_nearest_backward<T, B>(ctx, dx.view(), dup.view());
    } else {
      ops::upsample_nearest_backward<T, B>(ctx, dx.view(), dy);
    }
    return dx;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    if (use_conv) conv.visit(join(name, "conv"), visitor);
  }

 private:
  struct Saved {
    Shape x_shape;  // (N, C, H, W): the shape of dx
  } saved_;
};

}  // namespace sdlora::nn
