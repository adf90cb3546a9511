/// @file layout.hpp
/// @brief Layout changes between image tensors (N, C, H, W) and token sequences (N, H*W, C), as diffusers'
/// Transformer2DModel and the VAE attention do with permute + reshape. Each is the other's backward.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag: y[n, l, c] = x[n, c, l] over (N, C, L) <-> (N, L, C), L = H*W.
struct TransposeLastTwo {};

/// y (N, H*W, C) = x (N, C, H, W) permuted (0, 2, 3, 1)
template <class T, class B>
void nchw_to_nlc(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  SDLORA_EXPECTS(x.rank() == 4 && y.rank() == 3 && y.dim(0) == x.dim(0) && y.dim(1) == x.dim(2) * x.dim(3) &&
                     y.dim(2) == x.dim(1) && x.is_contiguous() && y.is_contiguous(),
                 "[nchw_to_nlc] y " << y.shape() << " is not x " << x.shape() << " as (N, H*W, C)");
  Impl<TransposeLastTwo, B>::run(ctx, y, x, x.dim(0), x.dim(1), x.dim(2) * x.dim(3));
}
/// y (N, C, H, W) = x (N, H*W, C) permuted back
template <class T, class B>
void nlc_to_nchw(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  SDLORA_EXPECTS(y.rank() == 4 && x.rank() == 3 && x.dim(0) == y.dim(0) && x.dim(1) == y.dim(2) * y.dim(3) &&
                     x.dim(2) == y.dim(1) && x.is_contiguous() && y.is_contiguous(),
                 "[nlc_to_nchw] x " << x.shape() << " is not y " << y.shape() << " as (N, H*W, C)");
  Impl<TransposeLastTwo, B>::run(ctx, y, x, x.dim(0), x.dim(1), x.dim(2));
}

}  // namespace sdlora::ops
