/// @file elementwise.hpp
/// @brief Elementwise ops over contiguous tensors of equal size: `map` (y = f(x)), `zip` (y = f(a, b)), and the
/// named wrappers add/sub/mul/axpy/scale/copy built on them. Scalar math is a functor with a host+device call
/// operator, written once for every backend. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/config.hpp>   // SDLORA_HOST_DEVICE
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

struct Map {};  // y[i] = f(x[i])
struct Zip {};  // y[i] = f(a[i], b[i])

namespace fn {
struct Add {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T a, T b) const { return a + b; }
};
struct Sub {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T a, T b) const { return a - b; }
};
struct Mul {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T a, T b) const { return a * b; }
};
/// a + alpha * b
struct Axpy {
  double alpha;
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T a, T b) const { return a + T(alpha) * b; }
};
struct Scale {
  double alpha;
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const { return T(alpha) * x; }
};
struct Identity {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const { return x; }
};
/// Classifier-free guidance: uncond + scale * (cond - uncond), in T (diffusers' noise_pred_uncond +
/// guidance_scale * (noise_pred_text - noise_pred_uncond)).
struct Guidance {
  double scale;
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T uncond, T cond) const { return uncond + T(scale) * (cond - uncond); }
};
}  // namespace fn

namespace detail {
template <class VA, class VB>
void expect_same_size(char const* op, VA const& a, VB const& b) {
  SDLORA_EXPECTS(a.numel() == b.numel(), "[" << op << "] sizes differ: " << a.shape() << " vs " << b.shape());
  SDLORA_EXPECTS(a.is_contiguous() && b.is_contiguous(), "[" << op << "] operands must be contiguous");
}
}  // namespace detail

/// y = f(x), elementwise; y may alias x.
template <class T, class B, class F>
void map(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x, F f) {
  detail::expect_same_size("map", y, x);
  Impl<Map, B>::run(ctx, y, x, f);
}
/// y = f(a, b), elementwise; y may alias a or b.
template <class T, class B, class F>
void zip(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> a, TensorView<T const, B> b, F f) {
  detail::expect_same_size("zip", y, a);
  detail::expect_same_size("zip", a, b);
  Impl<Zip, B>::run(ctx, y, a, b, f);
}

/// y = a + b
template <class T, class B>
void add(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> a, TensorView<T const, B> b) {
  zip(ctx, y, a, b, fn::Add{});
}
/// y += alpha * x
template <class T, class B>
void axpy(Context<B>& ctx, TensorView<T, B> y, double alpha, TensorView<T const, B> x) {
  zip(ctx, y, TensorView<T const, B>(y), x, fn::Axpy{alpha});
}
/// y *= alpha
template <class T, class B>
void scale(Context<B>& ctx, TensorView<T, B> y, double alpha) {
  map(ctx, y, TensorView<T const, B>(y), fn::Scale{alpha});
}
/// dst = src (same number of elements; shapes may differ)
template <class T, class B>
void copy(Context<B>& ctx, TensorView<T, B> dst, TensorView<T const, B> src) {
  map(ctx, dst, src, fn::Identity{});
}

}  // namespace sdlora::ops
