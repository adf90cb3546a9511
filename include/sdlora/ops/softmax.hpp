/// @file softmax.hpp
/// @brief Softmax over the last axis, forward and backward. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag: softmax over the last axis, y = exp(x - max) / sum(exp(x - max)) on every row.
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.functional.softmax.html (dim=-1)
struct Softmax {};

namespace detail {
template <class VA, class VB>
void expect_same_rows(char const* op, VA const& a, VB const& b) {
  SDLORA_EXPECTS(a.rank() >= 1 && a.shape() == b.shape(),
                 "[" << op << "] shapes differ: " << a.shape() << " vs " << b.shape());
  SDLORA_EXPECTS(a.is_contiguous() && b.is_contiguous(), "[" << op << "] operands must be contiguous");
}
}  // namespace detail

/// y (..., N) = softmax(x (..., N)) over the last axis; y may alias x.
template <class T, class B>
void softmax_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  detail::expect_same_rows("softmax", y, x);
  Impl<Softmax, B>::forward(ctx, y, x);
}

/// dx (..., N) = y * (dy - sum(dy * y)) per row, from the forward output y; dx may alias dy.
template <class T, class B>
void softmax_backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> y, TensorView<T const, B> dy) {
  detail::expect_same_rows("softmax.backward", dx, y);
  detail::expect_same_rows("softmax.backward", y, dy);
  Impl<Softmax, B>::backward(ctx, dx, y, dy);
}

}  // namespace sdlora::ops
