/// @file linear.hpp
/// @brief Linear: y = x W^T + b over the last axis (torch.nn.Linear), with attachable adapters (LoRA).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <string>  // std::string

#include <type_traits>  // std::is_same_v

#include <sdlora/backend/cpu/sgemm.hpp>  // cpu::sgemm_weight
#include <sdlora/nn/module.hpp>         // Parameter, Mode, Adapter
#include <sdlora/nn/saved.hpp>          // SavedTensor, KeptInput
#include <sdlora/ops/elementwise.hpp>   // ops::add
#include <sdlora/ops/gemm.hpp>          // ops::gemm
#include <sdlora/ops/bias.hpp>          // ops::bias_add_rows, ops::bias_grad_rows

namespace sdlora::nn {

/// reference: https://pytorch.org/docs/stable/generated/torch.nn.Linear.html
template <class T, class B = Cpu>
class Linear {
 public:
  Linear() = default;
  Linear(Index in_features, Index out_features, bool bias = true)
      : weight(Shape{out_features, in_features}), bias(bias ? Parameter<T, B>(Shape{out_features}) : Parameter<T, B>()) {}

  Parameter<T, B> weight;  // (out, in)
  Parameter<T, B> bias;    // (out) or empty
  AdapterList<T, B> adapters;

  Index in_features() const { return weight.shape()[1]; }
  Index out_features() const { return weight.shape()[0]; }
  bool has_bias() const { return !bias.value.empty(); }

  /// y (..., out) = x (..., in) W^T + b, then y += adapter(x) for each enabled adapter.
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(x.rank() >= 1 && x.dim(-1) == in_features(),
                   "[linear] x must be (..., " << in_features() << "), got " << x.shape());
    Index const rows = x.numel() / in_features();
    Shape out_shape = x.shape();
    out_shape[-1] = out_features();
    // dW needs the input: kept (x, or x rounded to the 16 bits kept) only when the weight itself is trainable
    auto const in = weight.trainable ? saved_.x.keep(ctx, x, mode) : KeptInput<T, B>{{}, x};
    auto y = Tensor<T, B>::uninitialized(out_shape);
    auto const y2 = y.view().reshaped(Shape{rows, out_features()});
    auto const x2 = in.x.reshaped(Shape{rows, in_features()});
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>) {
      // One packed GEMM: a 16-bit weight widened while packing, the bias added to each output tile in its epilogue.
      cpu::sgemm_weight(ctx, rows, out_features(), in_features(), {x2.data(), x2.stride(0), false}, weight_source(true),
                        y2.data(), y2.stride(0), 1.f, 0.f, has_bias() ? bias.value.data() : nullptr);
    } else {
      if (weight.is_16bit()) stored_weight_gemm(ctx, y2, x2, true);
      else ops::gemm<T, B>(ctx, y2, x2, weight.value.view(), {.trans_b = true});
      if (has_bias()) ops::bias_add_rows<T, B>(ctx, y.view(), bias.value.view());
    }
    for (auto& a : adapters)
      if (a->enabled) a->forward(ctx, y.view(), x, mode);
    return y;
  }

  /// Whether an enabled adapter (a LoRA, a probe) reads this layer's input and output in forward.
  bool adapted() const { return any_enabled(adapters); }

  /// Keeps what backward needs after forward(x, mode) without computing the output (gradient checkpointing's
  /// recompute; see Conv2d::keep_for_backward). Only where adapted() is false.
  void keep_for_backward(Context<B>& ctx, TensorView<T const, B> x, Mode mode) {
    SDLORA_EXPECTS(x.rank() >= 1 && x.dim(-1) == in_features(),
                   "[linear] x must be (..., " << in_features() << "), got " << x.shape());
    SDLORA_EXPECTS(!adapted(), "[linear.keep_for_backward] an enabled adapter needs the output: run forward");
    if (weight.trainable) saved_.x.keep(ctx, x, mode);
  }

  /// dx (..., in) = dy (..., out) W; dW += dy^T x and db += sum(dy) when trainable; adapters add their part.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(dy.rank() >= 1 && dy.dim(-1) == out_features(),
                   "[linear.backward] dy must be (..., " << out_features() << "), got " << dy.shape());
    Index const rows = dy.numel() / out_features();
    Shape in_shape = dy.shape();
    in_shape[-1] = in_features();
    auto dx = Tensor<T, B>::uninitialized(in_shape);
    auto dy2 = dy.reshaped(Shape{rows, out_features()});
    if (weight.is_16bit())
      stored_weight_gemm(ctx, dx.view().reshaped(Shape{rows, in_features()}), dy2, false);
    else
      ops::gemm<T, B>(ctx, dx.view().reshaped(Shape{rows, in_features()}), dy2, weight.value.view());
    if (weight.trainable) {
      SDLORA_EXPECTS(!saved_.x.empty() && saved_.x.shape().numel() == rows * in_features(),
                     "[linear.backward] no saved input: run forward with Mode::Train first");
      auto const x = saved_.x.take(ctx);
      ops::gemm<T, B>(ctx, weight.grad.view(), dy2, x.view().reshaped(Shape{rows, in_features()}),
                      {.trans_a = true, .beta = 1.0});
    }
    saved_ = {};  // one backward per forward
    if (has_bias() && bias.trainable) ops::bias_grad_rows<T, B>(ctx, bias.grad.view(), dy);
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
  /// The weight (out, in) as the CPU GEMM reads it, in its storage (float or 16 bits), transposed when `trans_w`.
  cpu::WeightSource weight_source(bool trans_w) const {
    if (weight.is_16bit()) return {weight.value16.data(), weight.storage, weight.shape()[1], trans_w};
    return {weight.value.data(), DType::F32, weight.shape()[1], trans_w};
  }

  /// c (rows, n) = a (rows, k) @ op(W) with W kept in 16 bits (CPU: the GEMM widens it while packing).
  void stored_weight_gemm(Context<B>& ctx, TensorView<T, B> c, TensorView<T const, B> a, bool trans_w) {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, Cpu>) {
      cpu::sgemm_weight(ctx, c.dim(0), c.dim(1), a.dim(1), {a.data(), a.stride(0), false}, weight_source(trans_w),
                        c.data(), c.stride(0), 1.f, 0.f);
    } else {
      SDLORA_THROW(ConfigError, "[linear] 16-bit weights are implemented for float on the CPU backend");
    }
  }

  struct Saved {
    SavedTensor<T, B> x;  // (..., in): dW = dy^T x, kept only when the weight itself is trainable
  } saved_;
};

}  // namespace sdlora::nn
