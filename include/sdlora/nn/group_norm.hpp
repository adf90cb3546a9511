/// @file group_norm.hpp
/// @brief GroupNorm: torch.nn.GroupNorm over (N, C, *), optionally fused with the SiLU that follows it in diffusers'
/// resnet blocks (norm_silu). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>       // std::string
#include <type_traits>  // std::type_identity_t
#include <utility>      // std::move

#include <sdlora/nn/activation.hpp>  // SiLU
#include <sdlora/nn/module.hpp>      // Parameter, Mode
#include <sdlora/nn/saved.hpp>       // SavedTensor
#include <sdlora/ops/norm.hpp>       // ops::GroupNorm, ops::group_norm_forward, ops::group_norm_backward

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.GroupNorm.html
/// diffusers passes eps = 1e-6 for the UNet and VAE resnets (`resnet_eps`, `norm_eps`); torch's default is 1e-5.
template <class T, class B = Cpu>
class GroupNorm {
 public:
  GroupNorm() = default;
  GroupNorm(Index num_groups, Index num_channels, double eps = 1e-5, bool affine = true, bool fuse_silu = false)
      : weight(affine ? Parameter<T, B>(Shape{num_channels}) : Parameter<T, B>()),
        bias(affine ? Parameter<T, B>(Shape{num_channels}) : Parameter<T, B>()),
        num_groups(num_groups),
        num_channels(num_channels),
        eps(eps),
        fuse_silu(fuse_silu) {
    SDLORA_EXPECTS(num_groups >= 1 && num_channels % num_groups == 0,
                   "[group_norm] " << num_channels << " channels do not split into " << num_groups << " groups");
    if (affine) weight.value.fill(T(1));  // torch's init: weight 1, bias 0
  }

  Parameter<T, B> weight;  // (C) or empty
  Parameter<T, B> bias;    // (C) or empty
  Index num_groups = 1;
  Index num_channels = 0;
  double eps = 1e-5;
  bool fuse_silu = false;  // y = silu(group_norm(x)): one pass instead of two

  bool affine() const { return !weight.value.empty(); }

  /// y (N, C, *) = group_norm(x (N, C, *)) [then silu].
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto const in = saved_.x.keep(ctx, check_input(x), mode);  // x, or x rounded to the 16 bits kept
    return run(ctx, op(), in.x, keeps_saved(mode));
  }

  /// silu(group_norm(x)) for inference, in one pass and one tensor (the norm's output is the activation's input
  /// and is needed no more): what every ResnetBlock2D and the UNet's / VAE's output norm compute in Mode::Infer
  /// (see norm_silu below), where the two layers apart would hold two full-size tensors at once. Training keeps the
  /// layers apart (backward needs both).
  Tensor<T, B> forward_silu(Context<B>& ctx, TensorView<T const, B> x) {
    ops::GroupNorm fused = op();
    fused.silu = true;
    return run(ctx, fused, check_input(x), false);
  }

  /// dx (N, C, *); dweight += sum dy xhat and dbias += sum dy when trainable.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.x.empty() && dy.shape() == saved_.x.shape(),
                   "[group_norm.backward] dy must be " << saved_.x.shape() << " (run forward with Mode::Train), got "
                                                       << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    TensorView<T, B> const dgamma = affine() && weight.trainable ? weight.grad.view() : TensorView<T, B>();
    TensorView<T, B> const dbeta = affine() && bias.trainable ? bias.grad.view() : TensorView<T, B>();
    auto const x = saved_.x.take(ctx);
    ops::group_norm_backward<T, B>(ctx, op(), dx.view(), dgamma, dbeta, dy, x.view(), saved_.mean.view(),
                                   saved_.rstd.view(), gamma(), beta());
    saved_ = {};  // one backward per forward
    return dx;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    visitor(name, *this);
  }
  template <class F>
  void for_each_parameter(std::string const& prefix, F&& f) {
    if (!affine()) return;
    f(join(prefix, "weight"), weight);
    f(join(prefix, "bias"), bias);
  }

 private:
  ops::GroupNorm op() const { return {num_groups, eps, fuse_silu}; }
  TensorView<T const, B> check_input(TensorView<T const, B> x) const {
    SDLORA_EXPECTS(x.rank() >= 2 && x.dim(1) == num_channels,
                   "[group_norm] x must be (N, " << num_channels << ", *), got " << x.shape());
    return x;
  }
  /// y = the op on x; the per-group mean and rstd are kept for backward when `keep`.
  Tensor<T, B> run(Context<B>& ctx, ops::GroupNorm const& norm, TensorView<T const, B> x, bool keep) {
    auto y = Tensor<T, B>::uninitialized(x.shape());
    auto mean = Tensor<T, B>::uninitialized(Shape{x.dim(0), num_groups});
    auto rstd = Tensor<T, B>::uninitialized(Shape{x.dim(0), num_groups});
    ops::group_norm_forward<T, B>(ctx, norm, y.view(), mean.view(), rstd.view(), x, gamma(), beta());
    if (keep) {
      saved_.mean = std::move(mean);
      saved_.rstd = std::move(rstd);
    }
    return y;
  }
  TensorView<T const, B> gamma() const { return affine() ? weight.value.view() : TensorView<T const, B>(); }
  TensorView<T const, B> beta() const { return affine() ? bias.value.view() : TensorView<T const, B>(); }

  struct Saved {
    SavedTensor<T, B> x;  // (N, C, *): xhat = (x - mean) * rstd in every gradient
    Tensor<T, B> mean;  // (N, G)
    Tensor<T, B> rstd;  // (N, G): 1 / sqrt(var + eps)
  } saved_;
};

/// silu(norm(x)), as diffusers' resnet blocks and output norms compute it: one fused pass and one tensor in
/// Mode::Infer, the two layers apart (each keeping what its backward needs) otherwise.
template <class T, class B>
Tensor<T, B> norm_silu(Context<B>& ctx, GroupNorm<T, B>& norm, SiLU<T, B>& act,
                       std::type_identity_t<TensorView<T const, B>> x, Mode mode) {
  if (mode == Mode::Infer) return norm.forward_silu(ctx, x);
  auto const h = norm.forward(ctx, x, mode);
  return act.forward(ctx, h.view(), mode);
}

}  // namespace sdlora::nn
