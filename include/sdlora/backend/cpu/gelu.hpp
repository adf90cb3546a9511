/// @file gelu.hpp
/// @brief CPU kernels of ops/gelu.hpp's fused GEGLU (GELU and QuickGELU run through the elementwise CPU kernels).
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/gelu.hpp>  // Geglu, Impl, fn::Gelu, fn::GeluBackward, fn::GeluTanh, fn::GeluTanhBackward

namespace sdlora::ops {

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
      for (Index j = 0; j < n; ++j) out[j] = a[j] * act(g[j]);
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
      for (Index j = 0; j < n; ++j) {
        da[j] = d[j] * act(g[j]);
        dg[j] = act_backward(d[j] * a[j], g[j]);
      }
    });
  }
};

}  // namespace sdlora::ops
