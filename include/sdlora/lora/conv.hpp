/// @file conv.hpp
/// @brief LoraConv (LoCon): the LoRA branch of a Conv2d. down = a k x k conv with the base conv's stride and padding
/// (r, in, kh, kw), up = a 1x1 conv (out, r, 1, 1): y += scale * up(down(dropout(x))) (PEFT's lora.Conv2d, kohya's
/// LoRA-C3Lier / LyCORIS LoCon). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::uint64_t, std::int64_t

#include <sdlora/lora/adapter.hpp>     // LoraAdapter, LoraOptions
#include <sdlora/nn/saved.hpp>         // nn::SavedTensor
#include <sdlora/ops/dropout.hpp>     // ops::dropout_apply
#include <sdlora/ops/conv.hpp>         // ops::conv2d_forward, ops::conv2d_backward_input, ops::conv2d_backward_weight
#include <sdlora/ops/elementwise.hpp>  // ops::scale, ops::add

namespace sdlora::lora {

/// reference: peft/tuners/lora/layer.py (Conv2d: lora_A = Conv2d(in, r, k, stride, padding), lora_B = Conv2d(r, out, 1))
template <class T, class B = Cpu>
class LoraConv final : public LoraAdapter<T, B> {
  using Base = LoraAdapter<T, B>;

 public:
  /// A (rank, in, k, k) from the seed, B (out, rank, 1, 1) = 0; `geometry` is the base conv's.
  LoraConv(Index in_channels, Index out_channels, Index kernel, ops::Conv2dGeometry geometry, LoraOptions options)
      : Base(options, Shape{options.rank, in_channels, kernel, kernel}, Shape{out_channels, options.rank, 1, 1}),
        geometry(geometry) {}

  ops::Conv2dGeometry geometry;  // the base conv's stride and padding, used by the down conv

  Index in_channels() const { return this->lora_A.value.dim(1); }
  Index out_channels() const { return this->lora_B.value.dim(0); }

  /// y (N, out, H', W') += up(scale * down(dropout(x) (N, in, H, W))). A merged adapter adds nothing.
  void forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x, nn::Mode mode) override {
    if (this->merged()) return;
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == in_channels() && y.rank() == 4 && y.dim(1) == out_channels(),
                   "[lora_conv] x must be (N, " << in_channels() << ", H, W) and y (N, " << out_channels()
                                                << ", H', W'), got x " << x.shape() << ", y " << y.shape());
    auto const down = this->down_input(ctx, x, saved_.x, mode);  // dropout(x), kept for dA when A trains
    TensorView<T const, B> const xin = down.in.x;                 // (N, in, H, W)
    auto h = Tensor<T, B>::uninitialized(ops::conv2d_output_shape(x.shape(), this->lora_A.shape(), geometry));
    ops::conv2d_forward<T, B>(ctx, h.view(), xin, this->lora_A.value.view(), {}, geometry);  // (N, r, H', W')
    ops::scale<T, B>(ctx, h.view(), this->scale());                                          // h = scale * down
    ops::conv2d_forward<T, B>(ctx, y, h.view(), this->lora_B.value.view(), {}, kPointwise, true);
    if (mode == nn::Mode::Train) {  // keep for backward (not in Infer / TrainDiscard)
      saved_.x_shape = x.shape();
      saved_.dropout_call = down.dropout_call;
      saved_.h = this->lora_B.trainable ? std::move(h) : Tensor<T, B>();
    }
  }

  /// g = scale * up^T dy; dB += corr(dy, h); dA += corr(g, dropout(x)); dx += mask * down^T(g).
  void backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy) override {
    if (this->merged()) return;
    SDLORA_EXPECTS(saved_.x_shape.rank() == 4 && dx.shape() == saved_.x_shape,
                   "[lora_conv.backward] dx " << dx.shape() << " does not match the last Mode::Train forward's x "
                                              << saved_.x_shape);
    Shape const h_shape = ops::conv2d_output_shape(saved_.x_shape, this->lora_A.shape(), geometry);
    auto g = Tensor<T, B>::uninitialized(h_shape);  // (N, r, H', W')
    ops::conv2d_backward_input<T, B>(ctx, g.view(), dy, this->lora_B.value.view(), kPointwise);
    if (this->lora_B.trainable) {
      SDLORA_EXPECTS(saved_.h.shape() == h_shape, "[lora_conv.backward] lora_B became trainable after forward");
      ops::conv2d_backward_weight<T, B>(ctx, this->lora_B.grad.view(), dy, saved_.h.view(), kPointwise);
    }
    ops::scale<T, B>(ctx, g.view(), this->scale());
    if (this->lora_A.trainable) {
      SDLORA_EXPECTS(saved_.x.shape() == saved_.x_shape, "[lora_conv.backward] lora_A became trainable after forward");
      auto const x = saved_.x.take(ctx);
      ops::conv2d_backward_weight<T, B>(ctx, this->lora_A.grad.view(), g.view(), x.view(), geometry);
    }
    saved_.x.reset();  // one backward per forward (the shape and the mask index stay for dx)
    saved_.h = {};
    if (saved_.dropout_call < 0) {
      ops::conv2d_backward_input<T, B>(ctx, dx, g.view(), this->lora_A.value.view(), geometry, true);
    } else {
      auto t = Tensor<T, B>::uninitialized(saved_.x_shape);  // (N, in, H, W) = down^T(g), then * mask
      ops::conv2d_backward_input<T, B>(ctx, t.view(), g.view(), this->lora_A.value.view(), geometry);
      ops::dropout_apply<T, B>(ctx, this->dropout_op(std::uint64_t(saved_.dropout_call)), t.view(), t.view());
      ops::add<T, B>(ctx, dx, dx, t.view());
    }
  }

 private:
  static constexpr ops::Conv2dGeometry kPointwise{};  // the 1x1 up conv: stride 1, no padding

  struct Saved {
    Shape x_shape;                   // (N, in, H, W) of the last Mode::Train forward
    std::int64_t dropout_call = -1;  // its dropout mask index, or -1 without dropout (dx needs the mask)
    nn::SavedTensor<T, B> x;         // (N, in, H, W): dropout(x), for dA; kept only when A is trainable
    Tensor<T, B> h;                  // (N, r, H', W'): scale * down(dropout(x)), for dB; only when B is trainable
  } saved_;
};

}  // namespace sdlora::lora
