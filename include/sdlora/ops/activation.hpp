/// @file activation.hpp
/// @brief SiLU (x * sigmoid(x)) forward and backward. The scalar math is written once as functors (fn::Silu,
/// fn::SiluBackward) for device kernels and fused epilogues; the CPU kernel evaluates the same formulas on Eigen
/// arrays so that exp is vectorised. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cmath>  // std::exp

#include <sdlora/core/backend.hpp>     // Context
#include <sdlora/core/config.hpp>      // SDLORA_HOST_DEVICE
#include <sdlora/core/tensor.hpp>      // TensorView
#include <sdlora/ops/elementwise.hpp>  // detail::expect_same_size
#include <sdlora/ops/impl.hpp>         // Impl

namespace sdlora::ops {

/// Op tag: SiLU forward (y = silu(x)) and backward (dx = dy * silu'(x)) over contiguous elements.
struct Silu {};

namespace fn {
/// silu(x) = x * sigmoid(x) = x / (1 + exp(-x)).
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.SiLU.html
struct Silu {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const {
    using std::exp;
    return x / (T(1) + exp(-x));
  }
};
/// d silu / dx applied to dy: dy * s * (1 + x * (1 - s)) with s = sigmoid(x).
struct SiluBackward {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T dy, T x) const {
    using std::exp;
    T const s = T(1) / (T(1) + exp(-x));
    return dy * s * (T(1) + x * (T(1) - s));
  }
};
}  // namespace fn

/// y = silu(x), elementwise; y may alias x.
template <class T, class B>
void silu_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  detail::expect_same_size("silu", y, x);
  Impl<Silu, B>::forward(ctx, y, x);
}

/// dx = dy * silu'(x), elementwise; dx may alias dy.
template <class T, class B>
void silu_backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy, TensorView<T const, B> x) {
  detail::expect_same_size("silu.backward", dx, dy);
  detail::expect_same_size("silu.backward", dy, x);
  Impl<Silu, B>::backward(ctx, dx, dy, x);
}

}  // namespace sdlora::ops
