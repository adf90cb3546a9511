/// @file bias.hpp
/// @brief CPU kernels of ops/bias.hpp. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <vector>  // std::vector

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/bias.hpp>  // Bias, Impl

namespace sdlora::ops {

template <>
struct Impl<Bias, Cpu> {
  // View y as (outer, C, inner); y[o, c, i] += b[c].
  template <class T>
  static void add(Context<Cpu>& ctx, Bias op, TensorView<T, Cpu> y, TensorView<T const, Cpu> b) {
    Index const c = b.numel(), inner = op.inner, outer = y.numel() / (c * inner);
    T* py = y.data();
    T const* pb = b.data();
    sdlora::cpu::parallel_for(ctx, outer * c, y.numel() > 32768, [&](Index ok) {
      T* row = py + ok * inner;  // row (o, k) of (outer, C, inner)
      T const bk = pb[ok % c];
      for (Index i = 0; i < inner; ++i) row[i] += bk;
    });
  }
  // db[c] += sum over o, i of dy[o, c, i], accumulated in double for each channel.
  template <class T>
  static void grad(Context<Cpu>& ctx, Bias op, TensorView<T, Cpu> db, TensorView<T const, Cpu> dy) {
    Index const c = db.numel(), inner = op.inner, outer = dy.numel() / (c * inner);
    T const* pdy = dy.data();
    T* pdb = db.data();
    sdlora::cpu::parallel_for(ctx, c, dy.numel() > 32768, [&](Index k) {
      double s = 0;
      for (Index o = 0; o < outer; ++o) {
        T const* row = pdy + (o * c + k) * inner;
        for (Index i = 0; i < inner; ++i) s += double(row[i]);
      }
      pdb[k] += T(s);
    });
  }
};

}  // namespace sdlora::ops
