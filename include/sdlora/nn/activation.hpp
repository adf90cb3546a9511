/// @file activation.hpp
/// @brief SiLU as a module without parameters (torch.nn.SiLU). GELU, GEGLU and QuickGELU live with attention.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>  // std::string

#include <sdlora/nn/module.hpp>        // Mode
#include <sdlora/nn/saved.hpp>         // SavedTensor
#include <sdlora/ops/activation.hpp>   // ops::silu_forward, ops::silu_backward

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.SiLU.html
template <class T, class B = Cpu>
class SiLU {
 public:
  /// y = x * sigmoid(x), elementwise.
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto const in = saved_.x.keep(ctx, x, mode);  // x, or x rounded to the 16 bits kept
    auto y = Tensor<T, B>::uninitialized(x.shape());
    ops::silu_forward<T, B>(ctx, y.view(), in.x);
    return y;
  }

  /// dx = dy * silu'(x).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.x.empty() && dy.shape() == saved_.x.shape(),
                   "[silu.backward] dy must be " << saved_.x.shape() << " (run forward with Mode::Train), got "
                                                 << dy.shape());
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    auto const x = saved_.x.take(ctx);
    ops::silu_backward<T, B>(ctx, dx.view(), dy, x.view());
    saved_ = {};  // one backward per forward
    return dx;
  }

  /// No parameters: nothing to visit.
  template <class V>
  void visit(std::string const&, V&&) {}

 private:
  struct Saved {
    SavedTensor<T, B> x;  // (any): silu'(x)
  } saved_;
};

}  // namespace sdlora::nn
