/// @file concat.hpp
/// @brief Concatenation along the channel axis of NCHW tensors (the UNet's skip connections) and its inverse,
/// the split that routes a gradient back to both inputs. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag: y (N, Ca + Cb, ...) <-> a (N, Ca, ...), b (N, Cb, ...); `inner` = product of the axes after C.
struct ConcatChannels {};

namespace detail {
template <class VY, class VA, class VB>
void expect_concat(char const* op, VY const& y, VA const& a, VB const& b) {
  bool ok = y.rank() >= 2 && a.rank() == y.rank() && b.rank() == y.rank() && a.dim(0) == y.dim(0) &&
            b.dim(0) == y.dim(0) && a.dim(1) + b.dim(1) == y.dim(1);
  for (int i = 2; ok && i < y.rank(); ++i) ok = a.dim(i) == y.dim(i) && b.dim(i) == y.dim(i);
  SDLORA_EXPECTS(ok, "[" << op << "] " << y.shape() << " is not the channel concatenation of " << a.shape()
                         << " and " << b.shape());
  SDLORA_EXPECTS(y.is_contiguous() && a.is_contiguous() && b.is_contiguous(), "[" << op << "] needs contiguous views");
}
}  // namespace detail

/// y = cat([a, b], dim=1)
template <class T, class B>
void concat_channels(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> a, TensorView<T const, B> b) {
  detail::expect_concat("concat_channels", y, a, b);
  Impl<ConcatChannels, B>::concat(ctx, y, a, b);
}
/// a, b = split(y, [Ca, Cb], dim=1) (copies)
template <class T, class B>
void split_channels(Context<B>& ctx, TensorView<T, B> a, TensorView<T, B> b, TensorView<T const, B> y) {
  detail::expect_concat("split_channels", y, a, b);
  Impl<ConcatChannels, B>::split(ctx, a, b, y);
}

}  // namespace sdlora::ops
