/// @file downsample.hpp
/// @brief Downsample2D: diffusers' stride-2 3x3 convolution named "conv" (use_conv = true). With padding = 0 the
/// input is first padded by (left 0, right 1, top 0, bottom 1), as in the VAE encoder. Include <sdlora/sdlora.hpp>.
#pragma once

#include <string>  // std::string

#include <sdlora/core/error.hpp>  // SDLORA_THROW, ConfigError
#include <sdlora/nn/conv2d.hpp>   // Conv2d
#include <sdlora/nn/module.hpp>   // Mode, join
#include <sdlora/ops/conv.hpp>    // ops::Conv2dGeometry, ops::Pad2d

namespace sdlora::nn {

/// reference: diffusers/models/downsampling.py, Downsample2D (no norm). The average-pooling variant
/// (use_conv = false) is not used by SD's UNet or VAE and is refused with a ConfigError.
template <class T, class B = Cpu>
class Downsample2D {
 public:
  Downsample2D() = default;
  /// Downsample2D(channels, use_conv, out_channels = channels, padding = 1, kernel_size = 3, bias = true).
  Downsample2D(Index channels, bool use_conv, Index out_channels = 0, Index padding = 1, Index kernel_size = 3,
               bool bias = true)
      : channels(channels) {
    if (!use_conv) SDLORA_THROW(ConfigError, "[downsample2d] use_conv = false (average pooling) is not supported");
    // F.pad(x, (0, 1, 0, 1)) then an unpadded conv == a conv padded by 0 top/left and 1 bottom/right.
    ops::Pad2d const pad = padding == 0 ? ops::Pad2d{0, 1, 0, 1} : ops::Pad2d::uniform(padding);
    conv = Conv2d<T, B>(channels, out_channels > 0 ? out_channels : channels, kernel_size,
                        ops::Conv2dGeometry{2, pad}, bias);
  }

  Conv2d<T, B> conv;
  Index channels = 0;

  /// y (N, out, H', W') = conv_stride2(x (N, C, H, W)).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == channels,
                   "[downsample2d] x must be (N, " << channels << ", H, W), got " << x.shape());
    return conv.forward(ctx, x, mode);
  }

  /// dx (N, C, H, W); the conv accumulates its trainable gradients.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) { return conv.backward(ctx, dy); }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    conv.visit(join(name, "conv"), visitor);
  }
};

}  // namespace sdlora::nn
