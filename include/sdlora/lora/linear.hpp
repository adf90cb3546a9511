/// @file linear.hpp
/// @brief LoraLinear: the LoRA branch of a Linear, y += scale * B(A(dropout(x))) (PEFT's lora.Linear).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstdint>  // std::uint64_t, std::int64_t

#include <sdlora/lora/adapter.hpp>     // LoraAdapter, LoraOptions
#include <sdlora/nn/saved.hpp>         // nn::SavedTensor
#include <sdlora/ops/dropout.hpp>     // ops::dropout_apply
#include <sdlora/ops/elementwise.hpp>  // ops::zip, ops::add
#include <sdlora/ops/gemm.hpp>         // ops::gemm

namespace sdlora::lora {

/// reference: peft/tuners/lora/layer.py (Linear.forward: result + lora_B(lora_A(dropout(x))) * scaling)
template <class T, class B = Cpu>
class LoraLinear final : public LoraAdapter<T, B> {
  using Base = LoraAdapter<T, B>;

 public:
  /// A (rank, in) from the seed, B (out, rank) = 0.
  LoraLinear(Index in_features, Index out_features, LoraOptions options)
      : Base(options, Shape{options.rank, in_features}, Shape{out_features, options.rank}) {}

  Index in_features() const { return this->lora_A.value.dim(1); }
  Index out_features() const { return this->lora_B.value.dim(0); }

  /// y (..., out) += scale * (dropout(x) (..., in) A^T) B^T. A merged adapter adds nothing (the base has it).
  void forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x, nn::Mode mode) override {
    if (this->merged()) return;
    Index const in = in_features(), out = out_features(), r = this->rank();
    SDLORA_EXPECTS(x.rank() >= 1 && x.dim(-1) == in && y.numel() / out == x.numel() / in && y.dim(-1) == out,
                   "[lora_linear] x must be (..., " << in << ") and y (..., " << out << "), got x " << x.shape()
                                                    << ", y " << y.shape());
    Index const rows = x.numel() / in;
    auto x2 = x.reshaped(Shape{rows, in});  // (rows, in)
    auto const down = this->down_input(ctx, x2, saved_.x, mode);  // dropout(x), kept for dA when A trains
    TensorView<T const, B> const xin = down.in.x;                  // (rows, in)
    auto h = Tensor<T, B>::uninitialized(Shape{rows, r});         // (rows, r) = xin A^T
    ops::gemm<T, B>(ctx, h.view(), xin, this->lora_A.value.view(), {.trans_b = true});
    ops::gemm<T, B>(ctx, y.reshaped(Shape{rows, out}), h.view(), this->lora_B.value.view(),
                    {.trans_b = true, .alpha = this->scale(), .beta = 1.0});
    if (mode == nn::Mode::Train) {  // keep for backward (not in Infer / TrainDiscard)
      saved_.rows = rows;
      saved_.dropout_call = down.dropout_call;
      saved_.h = this->lora_B.trainable ? std::move(h) : Tensor<T, B>();
    }
  }

  /// dB += scale dy^T h; dA += scale (dy B)^T dropout(x); dx += scale mask * ((dy B) A).
  void backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy) override {
    if (this->merged()) return;
    Index const in = in_features(), out = out_features(), r = this->rank();
    Index const rows = dy.numel() / out;
    SDLORA_EXPECTS(dy.dim(-1) == out && dx.numel() == rows * in && saved_.rows == rows,
                   "[lora_linear.backward] dy " << dy.shape() << " / dx " << dx.shape()
                                                << " do not match the last Mode::Train forward (" << saved_.rows
                                                << " rows of " << in << " -> " << out << ")");
    auto dy2 = dy.reshaped(Shape{rows, out});               // (rows, out)
    auto g = Tensor<T, B>::uninitialized(Shape{rows, r});   // (rows, r) = dy B
    ops::gemm<T, B>(ctx, g.view(), dy2, this->lora_B.value.view());
    double const s = this->scale();
    if (this->lora_B.trainable) {
      SDLORA_EXPECTS(saved_.h.numel() == rows * r, "[lora_linear.backward] lora_B became trainable after forward");
      ops::gemm<T, B>(ctx, this->lora_B.grad.view(), dy2, saved_.h.view(), {.trans_a = true, .alpha = s, .beta = 1.0});
    }
    if (this->lora_A.trainable) {
      SDLORA_EXPECTS(!saved_.x.empty() && saved_.x.shape().numel() == rows * in,
                     "[lora_linear.backward] lora_A became trainable after forward");
      auto const x = saved_.x.take(ctx);
      ops::gemm<T, B>(ctx, this->lora_A.grad.view(), g.view(), x.view(), {.trans_a = true, .alpha = s, .beta = 1.0});
    }
    saved_.x.reset();  // one backward per forward (rows and the mask index stay for dx)
    saved_.h = {};
    auto dx2 = dx.reshaped(Shape{rows, in});  // (rows, in)
    if (saved_.dropout_call < 0) {
      ops::gemm<T, B>(ctx, dx2, g.view(), this->lora_A.value.view(), {.alpha = s, .beta = 1.0});
    } else {
      auto t = Tensor<T, B>::uninitialized(Shape{rows, in});  // (rows, in) = scale g A, then * mask
      ops::gemm<T, B>(ctx, t.view(), g.view(), this->lora_A.value.view(), {.alpha = s});
      ops::dropout_apply<T, B>(ctx, this->dropout_op(std::uint64_t(saved_.dropout_call)), t.view(), t.view());
      ops::add<T, B>(ctx, dx2, dx2, t.view());
    }
  }

 private:
  struct Saved {
    Index rows = -1;                // rows of the last Mode::Train forward
    std::int64_t dropout_call = -1;  // its dropout mask index, or -1 without dropout (dx needs the mask)
    nn::SavedTensor<T, B> x;        // (rows, in): dropout(x), for dA; kept only when A is trainable
    Tensor<T, B> h;                 // (rows, r): A dropout(x), for dB; kept only when B is trainable
  } saved_;
};

}  // namespace sdlora::lora
