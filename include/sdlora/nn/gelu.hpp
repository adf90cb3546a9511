/// @file gelu.hpp
/// @brief Activation modules GELU (erf or tanh form, torch.nn.GELU) and QuickGELU (CLIP's quick_gelu).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>  // std::string

#include <sdlora/nn/module.hpp>  // Mode
#include <sdlora/nn/saved.hpp>   // SavedTensor
#include <sdlora/ops/gelu.hpp>   // ops::gelu_forward, ops::gelu_backward, ops::quick_gelu_*, GeluApproximation

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.GELU.html
template <class T, class B = Cpu>
class Gelu {
 public:
  explicit Gelu(ops::GeluApproximation approximate = ops::GeluApproximation::None) : approximate(approximate) {}

  ops::GeluApproximation approximate;

  /// y (...) = gelu(x (...)).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto const in = saved_.x.keep(ctx, x, mode);  // x, or x rounded to the 16 bits kept
    auto y = Tensor<T, B>::uninitialized(x.shape());
    ops::gelu_forward<T, B>(ctx, y.view(), in.x, approximate);
    return y;
  }
  /// dx (...) = dy (...) * gelu'(x).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(saved_.x.shape() == dy.shape(),
                   "[gelu.backward] dy must be " << saved_.x.shape() << " (run forward with Mode::Train first), got "
                                                 << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    auto const x = saved_.x.take(ctx);
    ops::gelu_backward<T, B>(ctx, dx.view(), dy, x.view(), approximate);
    saved_ = {};  // one backward per forward
    return dx;
  }
  /// No parameters: nothing to visit.
  template <class V>
  void visit(std::string const&, V&&) {}

 private:
  struct Saved {
    SavedTensor<T, B> x;  // (...): gelu'(x) needs the input
  } saved_;
};

/// x * sigmoid(1.702 x): transformers' QuickGELUActivation (hidden_act="quick_gelu" in CLIP).
template <class T, class B = Cpu>
class QuickGelu {
 public:
  /// y (...) = quick_gelu(x (...)).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto const in = saved_.x.keep(ctx, x, mode);  // x, or x rounded to the 16 bits kept
    auto y = Tensor<T, B>::uninitialized(x.shape());
    ops::quick_gelu_forward<T, B>(ctx, y.view(), in.x);
    return y;
  }
  /// dx (...) = dy (...) * quick_gelu'(x).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(saved_.x.shape() == dy.shape(),
                   "[quick_gelu.backward] dy must be " << saved_.x.shape()
                                                       << " (run forward with Mode::Train first), got " << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    auto const x = saved_.x.take(ctx);
    ops::quick_gelu_backward<T, B>(ctx, dx.view(), dy, x.view());
    saved_ = {};  // one backward per forward
    return dx;
  }
  template <class V>
  void visit(std::string const&, V&&) {}

 private:
  struct Saved {
    SavedTensor<T, B> x;  // (...): quick_gelu'(x) needs the input
  } saved_;
};

}  // namespace sdlora::nn
