/// @file dropout.hpp
/// @brief Dropout (torch.nn.Dropout): identity in inference or at p = 0; in training a counter-based Philox mask
/// that a recompute reproduces. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::uint64_t
#include <string>   // std::string

#include <sdlora/nn/module.hpp>    // Mode
#include <sdlora/ops/dropout.hpp>  // ops::Dropout, ops::dropout_apply

namespace sdlora::nn {

/// Each training forward draws the mask of (seed, counter) and then increments `counter`, so successive steps get
/// fresh masks while a run is reproducible from its seed. Gradient checkpointing replays a forward with the same
/// mask by reading `counter` before the first forward and restoring it before the recompute.
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.Dropout.html
template <class T, class B = Cpu>
class Dropout {
 public:
  explicit Dropout(double p = 0.0, std::uint64_t seed = 0) : p(p), seed(seed) {
    SDLORA_EXPECTS(p >= 0.0 && p < 1.0, "[dropout] p must be in [0, 1), got " << p);
  }

  double p;
  std::uint64_t seed;
  std::uint64_t counter = 0;  // the mask stream of the next training forward

  /// y (...) = x in inference or at p = 0; x * mask / (1 - p) in training.
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    saved_.applied = mode != Mode::Infer && p > 0.0;  // Train (or a checkpointing first pass)
    saved_.shape = x.shape();
    if (!saved_.applied) return Tensor<T, B>::from_view(x);
    saved_.counter = counter++;
    auto y = Tensor<T, B>::uninitialized(x.shape());
    ops::dropout_apply<T, B>(ctx, op(saved_.counter), y.view(), x);
    return y;
  }
  /// dx (...) = dy * mask / (1 - p) with the forward's mask (or dy when the forward was the identity).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(dy.shape() == saved_.shape,
                   "[dropout.backward] dy must be " << saved_.shape << " as in forward, got " << dy.shape());
    if (!saved_.applied) return Tensor<T, B>::from_view(dy);
    auto dx = Tensor<T, B>::uninitialized(dy.shape());
    ops::dropout_apply<T, B>(ctx, op(saved_.counter), dx.view(), dy);
    return dx;
  }
  template <class V>
  void visit(std::string const&, V&&) {}

 private:
  ops::Dropout op(std::uint64_t c) const { return ops::Dropout{p, seed, c}; }

  struct Saved {
    bool applied = false;        // false: forward was the identity, so is backward
    std::uint64_t counter = 0;   // the mask's stream: backward regenerates the mask instead of storing it
    Shape shape;                 // (...): to check dy
  } saved_;
};

}  // namespace sdlora::nn
