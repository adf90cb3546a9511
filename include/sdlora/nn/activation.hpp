/// @file activation.hpp
/// @brief SiLU as a module without parameters (torch.nn.SiLU). GELU, GEGLU and QuickGELU live with attention.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>  // std::string

#include <sdlora/nn/module.hpp>        // Mode
#include <sdlora/ops/activation.hpp>   // ops::silu_forward, ops::silu_backward

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.SiLU.html
template <class T, class B = Cpu>
class SiLU {
 public:
  /// y = x * sigmoid(x), elementwise.
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto y = Tensor<T, B>::uninitialized(x.shape());
    ops::silu_forward<T, B>(ctx, y.view(), x);
    if (keeps_saved(mode)) saved_.x = Tensor<T, B>::from_view(x);
    return y;
  }

  /// dx = dy * silu'(x).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.x.empty() && dy.shape() == saved_.x.shape(),
                   "[silu.backward] dy must be " << saved_.x.shape() << " (run forward with Mode::Train), got "
                                                 << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    ops::silu_backward<T, B>(ctx, dx.view(), dy, saved_.x.view());
    saved_ = {};  // one backward per forward
    return dx;
  }

  /// No parameters: nothing to visit.
  template <class V>
  void visit(std::string const&, V&&) {}

 private:
  struct Saved {
    Tensor<T, B> x;  // (any): silu'(x)
  } saved_;
};

}  // namespace sdlora::nn
