/// @file elementwise.hpp
/// @brief CPU kernels of ops/elementwise.hpp: pool loops over contiguous elements. Include <sdlora/sdlora.hpp>.
#pragma once

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/elementwise.hpp>  // Map, Zip, Impl

namespace sdlora::ops {

template <>
struct Impl<Map, Cpu> {
  template <class T, class F>
  static void run(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> x, F f) {
    T* out = y.data();
    T const* in = x.data();
    Index const n = y.numel();
    sdlora::cpu::parallel_for(ctx, n, n > 32768, [&](Index i) { out[i] = f(in[i]); });
  }
};

template <>
struct Impl<Zip, Cpu> {
  template <class T, class F>
  static void run(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> a, TensorView<T const, Cpu> b,
                  F f) {
    T* out = y.data();
    T const* pa = a.data();
    T const* pb = b.data();
    Index const n = y.numel();
    sdlora::cpu::parallel_for(ctx, n, n > 32768, [&](Index i) { out[i] = f(pa[i], pb[i]); });
  }
};

}  // namespace sdlora::ops
