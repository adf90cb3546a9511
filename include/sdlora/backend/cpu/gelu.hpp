/// @file gelu.hpp
/// @brief CPU kernels of ops/gelu.hpp's fused GEGLU (GELU and QuickGELU run through the elementwise CPU kernels).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <type_traits>  // std::is_same_v

#include <Eigen/Core>                         // Eigen::Array, Eigen::Map
#include <unsupported/Eigen/SpecialFunctions>  // ArrayBase::erf (vectorised for float)

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/gelu.hpp>  // Geglu, Impl, fn::Gelu, fn::GeluBackward, fn::GeluTanh, fn::GeluTanhBackward

namespace sdlora::ops {

namespace cpu {
/// One GEGLU row with the exact GELU, as Eigen arrays: Eigen's erf is a vectorised rational approximation for float
/// (a few ulp; libm's scalar erf was ~10% of an SD 1.5 UNet forward at 64x64) and libm's for double.
/// out = a * gelu(g), gelu(g) = 0.5 g (1 + erf(g / sqrt(2))).
template <class T>
void geglu_row(T* out, T const* a, T const* g, Index n) {
  using Map = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
  using ConstMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1> const>;
  ConstMap const ga(g, n), aa(a, n);
  Map(out, n) = aa * (T(0.5) * ga * (T(1) + (ga * T(kInvSqrt2)).erf()));
}
/// Its backward: da = dy gelu(g); dg = dy a (0.5 (1 + erf(g / sqrt(2))) + g exp(-g^2 / 2) / sqrt(2 pi)).
template <class T>
void geglu_row_backward(T* da, T* dg, T const* dy, T const* a, T const* g, Index n) {
  using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
  using Map = Eigen::Map<Array>;
  using ConstMap = Eigen::Map<Array const>;
  ConstMap const ga(g, n), aa(a, n), d(dy, n);
  Array const phi = T(0.5) * (T(1) + (ga * T(kInvSqrt2)).erf());  // Phi(g)
  Map(da, n) = d * ga * phi;
  Map(dg, n) = d * aa * (phi + ga * T(kInvSqrt2Pi) * (T(-0.5) * ga * ga).exp());
}
}  // namespace cpu

template <>
struct Impl<Geglu, Cpu> {
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, Geglu op, TensorView<T, Cpu> y, TensorView<T const, Cpu> h) {
    if (op.approximate == GeluApproximation::Tanh) forward_with(ctx, fn::GeluTanh{}, y, h);
    else forward_with(ctx, fn::Gelu{}, y, h);
  }
  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, Geglu op, TensorView<T, Cpu> dh, TensorView<T const, Cpu> h,
                       TensorView<T const, Cpu> dy) {
    if (op.approximate == GeluApproximation::Tanh)
      backward_with(ctx, fn::GeluTanh{}, fn::GeluTanhBackward{}, dh, h, dy);
    else backward_with(ctx, fn::Gelu{}, fn::GeluBackward{}, dh, h, dy);
  }

 private:
  template <class T, class Act>
  static void forward_with(Context<Cpu>& ctx, Act act, TensorView<T, Cpu> y, TensorView<T const, Cpu> h) {
    Index const n = y.dim(-1), rows = n == 0 ? 0 : y.numel() / n;
    T* py = y.data();
    T const* ph = h.data();
    sdlora::cpu::parallel_for(ctx, rows, y.numel() > 32768, [&](Index r) {
      T const* a = ph + r * 2 * n;  // (N) hidden half
      T const* g = a + n;           // (N) gate half
      T* out = py + r * n;
      if constexpr (std::is_same_v<Act, fn::Gelu>) {
        cpu::geglu_row(out, a, g, n);
      } else {
        for (Index j = 0; j < n; ++j) out[j] = a[j] * act(g[j]);
      }
    });
  }
  template <class T, class Act, class ActBackward>
  static void backward_with(Context<Cpu>& ctx, Act act, ActBackward act_backward, TensorView<T, Cpu> dh,
                            TensorView<T const, Cpu> h, TensorView<T const, Cpu> dy) {
    Index const n = dy.dim(-1), rows = n == 0 ? 0 : dy.numel() / n;
    T* pdh = dh.data();
    T const* ph = h.data();
    T const* pdy = dy.data();
    sdlora::cpu::parallel_for(ctx, rows, dy.numel() > 32768, [&](Index r) {
      T const* a = ph + r * 2 * n;
      T const* g = a + n;
      T const* d = pdy + r * n;
      T* da = pdh + r * 2 * n;
      T* dg = da + n;
      if constexpr (std::is_same_v<Act, fn::Gelu>) {
        cpu::geglu_row_backward(da, dg, d, a, g, n);
      } else {
        for (Index j = 0; j < n; ++j) {
          da[j] = d[j] * act(g[j]);
          dg[j] = act_backward(d[j] * a[j], g[j]);
        }
      }
    });
  }
};

}  // namespace sdlora::ops
