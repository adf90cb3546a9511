/// @file gelu.hpp
/// @brief GELU (exact erf form and tanh approximation), QuickGELU (CLIP) and GEGLU (diffusers), forward and
/// backward. Scalar math is a functor with a host+device call operator, written once for every backend; GELU and
/// QuickGELU run through the elementwise map/zip ops, GEGLU has its own fused op (`Geglu`).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cmath>  // std::erf, std::exp, std::tanh

#include <sdlora/core/backend.hpp>     // Context
#include <sdlora/core/config.hpp>      // SDLORA_HOST_DEVICE
#include <sdlora/core/tensor.hpp>      // TensorView
#include <sdlora/ops/elementwise.hpp>  // map, zip, detail::expect_same_size
#include <sdlora/ops/impl.hpp>         // Impl

namespace sdlora::ops {

/// torch.nn.functional.gelu's `approximate` argument: "none" (erf) or "tanh".
enum class GeluApproximation { None, Tanh };

inline constexpr double kInvSqrt2 = 0.70710678118654752440;    // 1 / sqrt(2)
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
inline constexpr double kGeluTanhCubic = 0.044715;              // the cubic coefficient of the tanh form
inline constexpr double kQuickGeluScale = 1.702;                // CLIP's quick_gelu: x * sigmoid(1.702 x)

namespace fn {
/// gelu(x) = 0.5 x (1 + erf(x / sqrt(2))).
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.GELU.html (approximate="none")
struct Gelu {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const {
    using std::erf;
    return T(0.5) * x * (T(1) + erf(x * T(kInvSqrt2)));
  }
};
/// dy * gelu'(x), gelu'(x) = Phi(x) + x phi(x) = 0.5 (1 + erf(x / sqrt(2))) + x exp(-x^2 / 2) / sqrt(2 pi).
struct GeluBackward {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T dy, T x) const {
    using std::erf;
    using std::exp;
    return dy * (T(0.5) * (T(1) + erf(x * T(kInvSqrt2))) + x * T(kInvSqrt2Pi) * exp(T(-0.5) * x * x));
  }
};
/// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// reference: https://pytorch.org/docs/stable/generated/torch.nn.GELU.html (approximate="tanh")
struct GeluTanh {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const {
    using std::tanh;
    return T(0.5) * x * (T(1) + tanh(T(kSqrt2OverPi) * (x + T(kGeluTanhCubic) * x * x * x)));
  }
};
/// dy * gelu_tanh'(x) = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)), t = tanh(...).
struct GeluTanhBackward {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T dy, T x) const {
    using std::tanh;
    T const t = tanh(T(kSqrt2OverPi) * (x + T(kGeluTanhCubic) * x * x * x));
    T const inner = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhCubic) * x * x);
    return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * inner);
  }
};
/// quick_gelu(x) = x * sigmoid(1.702 x) (transformers' QuickGELUActivation, CLIP's hidden_act="quick_gelu").
struct QuickGelu {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T x) const {
    using std::exp;
    return x / (T(1) + exp(T(-kQuickGeluScale) * x));
  }
};
/// dy * quick_gelu'(x) = dy * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x).
struct QuickGeluBackward {
  template <class T>
  SDLORA_HOST_DEVICE T operator()(T dy, T x) const {
    using std::exp;
    T const s = T(1) / (T(1) + exp(T(-kQuickGeluScale) * x));
    return dy * (s + T(kQuickGeluScale) * x * s * (T(1) - s));
  }
};
}  // namespace fn

/// y = gelu(x) elementwise (erf form or tanh approximation); y may alias x.
template <class T, class B>
void gelu_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x,
                  GeluApproximation approximate = GeluApproximation::None) {
  detail::expect_same_size("gelu", y, x);
  if (approximate == GeluApproximation::Tanh) map(ctx, y, x, fn::GeluTanh{});
  else map(ctx, y, x, fn::Gelu{});
}
/// dx = dy * gelu'(x) elementwise; dx may alias dy.
template <class T, class B>
void gelu_backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy, TensorView<T const, B> x,
                   GeluApproximation approximate = GeluApproximation::None) {
  detail::expect_same_size("gelu.backward", dx, dy);
  detail::expect_same_size("gelu.backward", dy, x);
  if (approximate == GeluApproximation::Tanh) zip(ctx, dx, dy, x, fn::GeluTanhBackward{});
  else zip(ctx, dx, dy, x, fn::GeluBackward{});
}
/// y = x * sigmoid(1.702 x) elementwise; y may alias x.
template <class T, class B>
void quick_gelu_forward(Context<B>& ctx, TensorView<T, B> y, TensorView<T const, B> x) {
  detail::expect_same_size("quick_gelu", y, x);
  map(ctx, y, x, fn::QuickGelu{});
}
/// dx = dy * quick_gelu'(x) elementwise; dx may alias dy.
template <class T, class B>
void quick_gelu_backward(Context<B>& ctx, TensorView<T, B> dx, TensorView<T const, B> dy, TensorView<T const, B> x) {
  detail::expect_same_size("quick_gelu.backward", dx, dy);
  detail::expect_same_size("quick_gelu.backward", dy, x);
  zip(ctx, dx, dy, x, fn::QuickGeluBackward{});
}

/// Op tag of the fused GEGLU: h (..., 2N) = [a | g] split on the last axis, y (..., N) = a * gelu(g).
/// reference: diffusers.models.activations.GEGLU (hidden_states, gate = proj(x).chunk(2, dim=-1)).
struct Geglu {
  GeluApproximation approximate = GeluApproximation::None;
};

namespace detail {
template <class VY, class VH>
void expect_geglu_shapes(char const* op, VY const& y, VH const& h) {
  SDLORA_EXPECTS(y.rank() >= 1 && h.rank() == y.rank() && h.dim(-1) == 2 * y.dim(-1) &&
                     h.numel() == 2 * y.numel(),
                 "[" << op << "] h must be (..., 2N) for y (..., N), got h " << h.shape() << ", y " << y.shape());
  SDLORA_EXPECTS(y.is_contiguous() && h.is_contiguous(), "[" << op << "] operands must be contiguous");
}
}  // namespace detail

/// y (..., N) = h[..., :N] * gelu(h[..., N:]) for h (..., 2N).
template <class T, class B>
void geglu_forward(Context<B>& ctx, Geglu op, TensorView<T, B> y, TensorView<T const, B> h) {
  detail::expect_geglu_shapes("geglu", y, h);
  Impl<Geglu, B>::forward(ctx, op, y, h);
}
/// dh (..., 2N) = [dy * gelu(g) | dy * a * gelu'(g)] from the saved h (..., 2N) and dy (..., N).
template <class T, class B>
void geglu_backward(Context<B>& ctx, Geglu op, TensorView<T, B> dh, TensorView<T const, B> h,
                    TensorView<T const, B> dy) {
  detail::expect_geglu_shapes("geglu.backward", dy, h);
  SDLORA_EXPECTS(dh.shape() == h.shape() && dh.is_contiguous(),
                 "[geglu.backward] dh must be " << h.shape() << ", got " << dh.shape());
  Impl<Geglu, B>::backward(ctx, op, dh, h, dy);
}

}  // namespace sdlora::ops
