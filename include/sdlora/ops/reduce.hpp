/// @file reduce.hpp
/// @brief Whole-tensor reductions returned to the host in double: sum, sum of squares, dot product, max |x|.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag: sum over i of f(a[i], b[i]) accumulated in double. b may be the same view as a.
struct Reduce {
  enum class Kind { Sum, SumSquares, Dot, MaxAbs };
  Kind kind;
};

template <class T, class B>
double sum(Context<B>& ctx, TensorView<T const, B> x) {
  return Impl<Reduce, B>::run(ctx, Reduce{Reduce::Kind::Sum}, x, x);
}
template <class T, class B>
double sum_squares(Context<B>& ctx, TensorView<T const, B> x) {
  return Impl<Reduce, B>::run(ctx, Reduce{Reduce::Kind::SumSquares}, x, x);
}
template <class T, class B>
double dot(Context<B>& ctx, TensorView<T const, B> a, TensorView<T const, B> b) {
  SDLORA_EXPECTS(a.numel() == b.numel(), "[dot] sizes differ: " << a.shape() << " vs " << b.shape());
  return Impl<Reduce, B>::run(ctx, Reduce{Reduce::Kind::Dot}, a, b);
}
template <class T, class B>
double max_abs(Context<B>& ctx, TensorView<T const, B> x) {
  return Impl<Reduce, B>::run(ctx, Reduce{Reduce::Kind::MaxAbs}, x, x);
}

}  // namespace sdlora::ops
