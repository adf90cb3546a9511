/// @file conv2d.hpp
/// @brief Conv2d: torch.nn.Conv2d over NCHW (groups = 1), with attachable adapters (LoRA / LoCon).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>       // std::string
#include <type_traits>  // std::is_same_v

#include <sdlora/backend/cpu/sgemm.hpp>  // cpu::WeightSource
#include <sdlora/nn/module.hpp>            // Parameter, Mode, Adapter
#include <sdlora/nn/saved.hpp>  // SavedTensor, KeptInput
#include <sdlora/ops/bias.hpp>   // ops::bias_grad_channels
#include <sdlora/ops/conv.hpp>   // ops::conv2d_forward, ops::conv2d_backward_input, ops::conv2d_backward_weight

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.Conv2d.html
template <class T, class B = Cpu>
class Conv2d {
 public:
  Conv2d() = default;
  /// A square `kernel`, `stride` and symmetric `padding`, as torch.nn.Conv2d(in, out, kernel, stride, padding, bias).
  Conv2d(Index in_channels, Index out_channels, Index kernel, Index stride = 1, Index padding = 0, bool bias = true)
      : Conv2d(in_channels, out_channels, kernel, ops::Conv2dGeometry{stride, ops::Pad2d::uniform(padding)}, bias) {}
  /// Any geometry, e.g. the asymmetric pad (0, 1, 0, 1) of the VAE encoder's Downsample2D.
  Conv2d(Index in_channels, Index out_channels, Index kernel, ops::Conv2dGeometry geometry, bool bias = true)
      : weight(Shape{out_channels, in_channels, kernel, kernel}),
        bias(bias ? Parameter<T, B>(Shape{out_channels}) : Parameter<T, B>()),
        geometry(geometry) {}

  Parameter<T, B> weight;  // (out, in, kh, kw)
  Parameter<T, B> bias;    // (out) or empty
  ops::Conv2dGeometry geometry;
  AdapterList<T, B> adapters;

  Index in_channels() const { return weight.shape()[1]; }
  Index out_channels() const { return weight.shape()[0]; }
  Index kernel_size() const { return weight.shape()[2]; }
  bool has_bias() const { return !bias.value.empty(); }

  /// y (N, out, H', W') = conv(x (N, in, H, W), W) + b, then y += adapter(x) for each enabled adapter.
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == in_channels(),
                   "[conv2d] x must be (N, " << in_channels() << ", H, W), got " << x.shape());
    // dW needs the input: kept (x, or x rounded to the 16 bits kept) only when the weight itself is trainable
    auto const in = weight.trainable ? saved_.x.keep(ctx, x, mode) : KeptInput<T, B>{{}, x};
    auto y = Tensor<T, B>::uninitialized(ops::conv2d_output_shape(x.shape(), weight.shape(), geometry));
    TensorView<T const, B> const b = has_bias() ? bias.value.view() : TensorView<T const, B>();
    if (weight.is_16bit()) {
      if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>)
        ops::Impl<ops::Conv2d, B>::forward_stored(ctx, {geometry}, y.view(), in.x, stored_weight(), weight.shape(),
                                                  b);
      else
        SDLORA_THROW(ConfigError, "[conv2d] 16-bit weights are implemented for float on the CPU backend");
    } else {
      ops::conv2d_forward<T, B>(ctx, y.view(), in.x, weight.value.view(), b, geometry);
    }
    for (auto& a : adapters)
      if (a->enabled) a->forward(ctx, y.view(), x, mode);
    if (keeps_saved(mode)) saved_.x_shape = x.shape();
    return y;
  }

  /// Whether an enabled adapter (a LoRA, a probe) reads this layer's input and output in forward.
  bool adapted() const { return any_enabled(adapters); }

  /// Keeps what backward needs after forward(x, mode) without computing the output: the recompute of gradient
  /// checkpointing stops at a block's last convolutions, whose outputs nothing in backward reads. Only where no
  /// enabled adapter needs the output (adapted() is false).
  void keep_for_backward(Context<B>& ctx, TensorView<T const, B> x, Mode mode) {
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == in_channels(),
                   "[conv2d] x must be (N, " << in_channels() << ", H, W), got " << x.shape());
    SDLORA_EXPECTS(!adapted(), "[conv2d.keep_for_backward] an enabled adapter needs the output: run forward");
    if (weight.trainable) saved_.x.keep(ctx, x, mode);
    if (keeps_saved(mode)) saved_.x_shape = x.shape();
  }

  /// dx (N, in, H, W) = conv^T(dy, W); dW += corr(dy, x) and db += sum(dy) when trainable; adapters add their part.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(saved_.x_shape.rank() == 4, "[conv2d.backward] run forward with Mode::Train first");
    Shape const expected = ops::conv2d_output_shape(saved_.x_shape, weight.shape(), geometry);
    SDLORA_EXPECTS(dy.shape() == expected, "[conv2d.backward] dy must be " << expected << ", got " << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(saved_.x_shape);
    if (weight.is_16bit()) {
      if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>)
        ops::Impl<ops::Conv2d, B>::backward_input_stored(ctx, {geometry}, dx.view(), dy, stored_weight(),
                                                         weight.shape());
      else
        SDLORA_THROW(ConfigError, "[conv2d] 16-bit weights are implemented for float on the CPU backend");
    } else {
      ops::conv2d_backward_input<T, B>(ctx, dx.view(), dy, weight.value.view(), geometry);
    }
    if (weight.trainable) {
      SDLORA_EXPECTS(saved_.x.shape() == saved_.x_shape,
                     "[conv2d.backward] the weight became trainable after forward: no saved input");
      auto const x = saved_.x.take(ctx);
      ops::conv2d_backward_weight<T, B>(ctx, weight.grad.view(), dy, x.view(), geometry);
    }
    saved_.x.reset();  // one backward per forward
    if (has_bias() && bias.trainable) ops::bias_grad_channels<T, B>(ctx, bias.grad.view(), dy);
    for (auto& a : adapters)
      if (a->enabled) a->backward(ctx, dx.view(), dy);
    return dx;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    visitor(name, *this);
  }
  template <class F>
  void for_each_parameter(std::string const& prefix, F&& f) {
    f(join(prefix, "weight"), weight);
    if (has_bias()) f(join(prefix, "bias"), bias);
    for (auto& a : adapters) a->for_each_parameter(prefix, f);
  }

 private:
  /// The 16-bit weight as a packing source (CPU).
  cpu::WeightSource stored_weight() const { return {weight.value16.data(), weight.storage, 0, false}; }

  struct Saved {
    Shape x_shape;   // (N, in, H, W): the shape of dx
    SavedTensor<T, B> x;  // (N, in, H, W): dW = corr(dy, x), kept only when the weight itself is trainable
  } saved_;
};

}  // namespace sdlora::nn
