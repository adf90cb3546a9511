/// @file layer_norm.hpp
/// @brief LayerNorm: torch.nn.LayerNorm over the last axis. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>   // std::string
#include <utility>  // std::move

#include <sdlora/nn/module.hpp>  // Parameter, Mode
#include <sdlora/nn/saved.hpp>   // SavedTensor
#include <sdlora/ops/norm.hpp>   // ops::LayerNorm, ops::layer_norm_forward, ops::layer_norm_backward

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.LayerNorm.html (normalized_shape = (dim))
template <class T, class B = Cpu>
class LayerNorm {
 public:
  LayerNorm() = default;
  explicit LayerNorm(Index dim, double eps = 1e-5, bool elementwise_affine = true)
      : weight(elementwise_affine ? Parameter<T, B>(Shape{dim}) : Parameter<T, B>()),
        bias(elementwise_affine ? Parameter<T, B>(Shape{dim}) : Parameter<T, B>()),
        dim(dim),
        eps(eps) {
    if (elementwise_affine) weight.value.fill(T(1));  // torch's init: weight 1, bias 0
  }

  Parameter<T, B> weight;  // (D) or empty
  Parameter<T, B> bias;    // (D) or empty
  Index dim = 0;
  double eps = 1e-5;

  bool affine() const { return !weight.value.empty(); }

  /// y (..., D) = layer_norm(x (..., D)).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(x.rank() >= 1 && x.dim(-1) == dim, "[layer_norm] x must be (..., " << dim << "), got " << x.shape());
    Index const rows = x.numel() / dim;
    auto const in = saved_.x.keep(ctx, x, mode);  // x, or x rounded to the 16 bits kept
    auto y = Tensor<T, B>::uninitialized(x.shape());
    auto mean = Tensor<T, B>::uninitialized(Shape{rows});
    auto rstd = Tensor<T, B>::uninitialized(Shape{rows});
    ops::layer_norm_forward<T, B>(ctx, ops::LayerNorm{eps}, y.view(), mean.view(), rstd.view(), in.x, gamma(), beta());
    if (keeps_saved(mode)) {
      saved_.mean = std::move(mean);
      saved_.rstd = std::move(rstd);
    }
    return y;
  }

  /// dx (..., D); dweight += sum dy xhat and dbias += sum dy when trainable.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.x.empty() && dy.shape() == saved_.x.shape(),
                   "[layer_norm.backward] dy must be " << saved_.x.shape() << " (run forward with Mode::Train), got "
                                                       << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    TensorView<T, B> const dgamma = affine() && weight.trainable ? weight.grad.view() : TensorView<T, B>();
    TensorView<T, B> const dbeta = affine() && bias.trainable ? bias.grad.view() : TensorView<T, B>();
    auto const x = saved_.x.take(ctx);
    ops::layer_norm_backward<T, B>(ctx, ops::LayerNorm{eps}, dx.view(), dgamma, dbeta, dy, x.view(),
                                   saved_.mean.view(), saved_.rstd.view(), gamma());
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
  TensorView<T const, B> gamma() const { return affine() ? weight.value.view() : TensorView<T const, B>(); }
  TensorView<T const, B> beta() const { return affine() ? bias.value.view() : TensorView<T const, B>(); }

  struct Saved {
    SavedTensor<T, B> x;  // (..., D): xhat = (x - mean) * rstd in every gradient
    Tensor<T, B> mean;  // (rows)
    Tensor<T, B> rstd;  // (rows): 1 / sqrt(var + eps)
  } saved_;
};

}  // namespace sdlora::nn
