/// @file bias.hpp
/// @brief Bias over the last axis (Linear) or over channels (Conv2d, NCHW): forward add and gradient reduction.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag. `inner` is the number of contiguous elements that share one bias value: 1 for rows (..., C),
/// H*W for channels of (N, C, H, W).
struct Bias {
  Index inner;
};

/// y (..., C) += b (C)
template <class T, class B>
void bias_add_rows(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> b) {
  SDLORA_EXPECTS(y.rank() >= 1 && y.dim(-1) == b.numel(), "[bias] y " << y.shape() << " vs bias " << b.shape());
  Impl<Bias, B>::add(ctx, Bias{1}, y, b);
}
/// db (C) += sum over rows of dy (..., C)
template <class T, class B>
void bias_grad_rows(Context<B>& ctx, TensorView<T, B> db, TensorView<T const, B> dy) {
  SDLORA_EXPECTS(dy.rank() >= 1 && dy.dim(-1) == db.numel(), "[bias] dy " << dy.shape() << " vs db " << db.shape());
  Impl<Bias, B>::grad(ctx, Bias{1}, db, dy);
}
/// y (N, C, H, W) += b (C) broadcast over N, H, W
template <class T, class B>
void bias_add_channels(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> b) {
  SDLORA_EXPECTS(y.rank() == 4 && y.dim(1) == b.numel(), "[bias] y " << y.shape() << " vs bias " << b.shape());
  Impl<Bias, B>::add(ctx, Bias{y.dim(2) * y.dim(3)}, y, b);
}
/// db (C) += sum over N, H, W of dy (N, C, H, W)
template <class T, class B>
void bias_grad_channels(Context<B>& ctx, TensorView<T, B> db, TensorView<T const, B> dy) {
  SDLORA_EXPECTS(dy.rank() == 4 && dy.dim(1) == db.numel(), "[bias] dy " << dy.shape() << " vs db " << db.shape());
  Impl<Bias, B>::grad(ctx, Bias{dy.dim(2) * dy.dim(3)}, db, dy);
}

}  // namespace sdlora::ops
