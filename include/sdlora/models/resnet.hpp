/// @file resnet.hpp
/// @brief ResnetBlock2D as diffusers builds it for the SD UNet and VAE (resnet_time_scale_shift = "default",
/// output_scale_factor 1 unless given), with forward, backward and optional gradient checkpointing.
/// Include <sdlora/models.hpp> instead.
#pragma once

#include <optional>  // std::optional
#include <string>    // std::string

#include <sdlora/nn/activation.hpp>  // nn::SiLU
#include <sdlora/nn/conv2d.hpp>      // nn::Conv2d
#include <sdlora/nn/group_norm.hpp>  // nn::GroupNorm
#include <sdlora/nn/linear.hpp>      // nn::Linear
#include <sdlora/nn/saved.hpp>       // nn::SavedTensor
#include <sdlora/ops/bias.hpp>       // ops::bias_add_channels, ops::bias_grad_channels
#include <sdlora/ops/elementwise.hpp>  // ops::add, ops::scale

namespace sdlora::models {

using nn::Mode;

/// reference: diffusers/models/resnet.py, ResnetBlock2D
///   h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))[:, :, None, None]
///   out = (shortcut(x) + conv2(silu(norm2(h)))) / output_scale_factor
template <class T, class B = Cpu>
class ResnetBlock2D {
 public:
  ResnetBlock2D() = default;
  /// temb_channels = 0: no time embedding (the VAE).
  ResnetBlock2D(Index in_channels, Index out_channels, Index temb_channels, Index groups, double eps,
                double output_scale_factor = 1.0)
      : norm1(groups, in_channels, eps),
        conv1(in_channels, out_channels, 3, 1, 1),
        norm2(groups, out_channels, eps),
        conv2(out_channels, out_channels, 3, 1, 1),
        in_channels_(in_channels),
        out_channels_(out_channels),
        output_scale_factor_(output_scale_factor) {
    if (temb_channels > 0) time_emb_proj.emplace(temb_channels, out_channels);
    if (in_channels != out_channels) conv_shortcut.emplace(in_channels, out_channels, 1, 1, 0);
  }

  nn::GroupNorm<T, B> norm1;
  nn::Conv2d<T, B> conv1;
  std::optional<nn::Linear<T, B>> time_emb_proj;
  nn::GroupNorm<T, B> norm2;
  nn::Conv2d<T, B> conv2;
  std::optional<nn::Conv2d<T, B>> conv_shortcut;
  /// Keep only the inputs in training and recompute the block inside backward.
  bool gradient_checkpointing = false;

  /// out (N, Cout, H, W) from x (N, Cin, H, W) and temb (N, Ct) (an empty view without time embedding).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> temb, Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == in_channels_,
                   "[resnet_block] x must be (N, " << in_channels_ << ", H, W), got " << x.shape());
    if (mode == Mode::Train && gradient_checkpointing) {
      auto const in = saved_.x.keep(ctx, x, Mode::Train);  // x, or x rounded to the 16 bits kept
      saved_.temb = temb.empty() ? Tensor<T, B>() : Tensor<T, B>::from_view(temb);
      return run(ctx, in.x, temb, Mode::TrainDiscard);
    }
    return run(ctx, x, temb, mode);
  }

  struct Grads {
    Tensor<T, B> dx;     // (N, Cin, H, W)
    Tensor<T, B> dtemb;  // (N, Ct), empty without time embedding
  };

  Grads backward(Context<B>& ctx, TensorView<T const, B> dout) {
    if (gradient_checkpointing) {
      SDLORA_EXPECTS(!saved_.x.empty(), "[resnet_block.backward] run forward with Mode::Train first");
      auto const x = saved_.x.take(ctx);
      run(ctx, x.view(), saved_.temb.view(), Mode::Train, true);  // recompute, keeping what backward needs
      saved_ = {};
    }
    Tensor<T, B> dh(dout.shape());  // (N, Cout, H, W)
    ops::copy<T, B>(ctx, dh.view(), dout);
    if (output_scale_factor_ != 1.0) ops::scale<T, B>(ctx, dh.view(), 1.0 / output_scale_factor_);
    auto g = conv2.backward(ctx, dh.view());
    g = act2_.backward(ctx, g.view());
    g = norm2.backward(ctx, g.view());  // (N, Cout, H, W): gradient of h
    Grads out;
    if (time_emb_proj) {
      Index const n = g.dim(0), c = g.dim(1);
      Tensor<T, B> dt(Shape{n * c});  // sum over H, W of dh, per (n, c)
      ops::bias_grad_channels<T, B>(ctx, dt.view(), g.view().reshaped(Shape{1, n * c, g.dim(2), g.dim(3)}));
      auto dproj = time_emb_proj->backward(ctx, dt.view().reshaped(Shape{n, c}));
      out.dtemb = act_t_.backward(ctx, dproj.view());
    }
    g = conv1.backward(ctx, g.view());
    g = act1_.backward(ctx, g.view());
    out.dx = norm1.backward(ctx, g.view());
    if (conv_shortcut) {
      auto ds = conv_shortcut->backward(ctx, dh.view());
      ops::axpy<T, B>(ctx, out.dx.view(), 1.0, ds.view());
    } else {
      ops::axpy<T, B>(ctx, out.dx.view(), 1.0, dh.view());
    }
    return out;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    norm1.visit(nn::join(name, "norm1"), visitor);
    conv1.visit(nn::join(name, "conv1"), visitor);
    if (time_emb_proj) time_emb_proj->visit(nn::join(name, "time_emb_proj"), visitor);
    norm2.visit(nn::join(name, "norm2"), visitor);
    conv2.visit(nn::join(name, "conv2"), visitor);
    if (conv_shortcut) conv_shortcut->visit(nn::join(name, "conv_shortcut"), visitor);
  }

 private:
  /// The block's forward; with `recompute` (gradient checkpointing's pass inside backward), it stops once backward's
  /// saved tensors are kept: conv2's and the shortcut's outputs and the sum after them are read by nothing in
  /// backward (a frozen convolution's input gradient needs only its weight), so unless an adapter must see them they
  /// are not computed, about half the block's multiply-adds, and an empty tensor is returned.
  Tensor<T, B> run(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> temb, Mode mode,
                   bool recompute = false) {
    auto h = nn::norm_silu(ctx, norm1, act1_, x, mode);
    h = conv1.forward(ctx, h.view(), mode);  // (N, Cout, H, W)
    if (time_emb_proj) {
      SDLORA_EXPECTS(temb.rank() == 2 && temb.dim(0) == x.dim(0),
                     "[resnet_block] temb must be (" << x.dim(0) << ", C), got " << temb.shape());
      auto t = act_t_.forward(ctx, temb, mode);
      t = time_emb_proj->forward(ctx, t.view(), mode);  // (N, Cout)
      Index const n = h.dim(0), c = h.dim(1);
      ops::bias_add_channels<T, B>(ctx, h.view().reshaped(Shape{1, n * c, h.dim(2), h.dim(3)}),
                                   t.view().reshaped(Shape{n * c}));
    }
    h = nn::norm_silu(ctx, norm2, act2_, h.view(), mode);
    if (recompute && !conv2.adapted() && !(conv_shortcut && conv_shortcut->adapted())) {
      conv2.keep_for_backward(ctx, h.view(), mode);
      if (conv_shortcut) conv_shortcut->keep_for_backward(ctx, x, mode);
      return {};
    }
    h = conv2.forward(ctx, h.view(), mode);  // dropout p = 0 in SD: identity
    if (conv_shortcut) {
      auto s = conv_shortcut->forward(ctx, x, mode);
      ops::add<T, B>(ctx, h.view(), h.view(), s.view());
    } else {
      ops::add<T, B>(ctx, h.view(), h.view(), x);
    }
    if (output_scale_factor_ != 1.0) ops::scale<T, B>(ctx, h.view(), 1.0 / output_scale_factor_);
    return h;
  }

  nn::SiLU<T, B> act1_, act2_, act_t_;
  Index in_channels_ = 0, out_channels_ = 0;
  double output_scale_factor_ = 1.0;
  struct Saved {
    nn::SavedTensor<T, B> x;  // (N, Cin, H, W): gradient checkpointing recomputes the block from its inputs
    Tensor<T, B> temb;  // (N, Ct)
  } saved_;
};

}  // namespace sdlora::models
