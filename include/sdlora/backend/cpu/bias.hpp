/// @file bias.hpp
/// @brief CPU kernels of ops/bias.hpp. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <vector>  // std::vector

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
#pragma omp parallel for collapse(2) schedule(static) num_threads(ctx.threads()) if (y.numel() > 32768)
    for (Index o = 0; o < outer; ++o)
      for (Index k = 0; k < c; ++k) {
        T* row = py + (o * c + k) * inner;
        for (Index i = 0; i < inner; ++i) row[i] += pb[k];
      }
  }
  // db[c] += sum over o, i of dy[o, c, i], accumulated in double for each channel.
  template <class T>
  static void grad(Context<Cpu>& ctx, Bias op, TensorView<T, Cpu> db, TensorView<T const, Cpu> dy) {
    Index const c = db.numel(), inner = op.inner, outer = dy.numel() / (c * inner);
    T const* pdy = dy.data();
    T* pdb = db.data();
#pragma omp parallel for schedule(static) num_threads(ctx.threads()) if (dy.numel() > 32768)
    for (Index k = 0; k < c; ++k) {
      double s = 0;
      for (Index o = 0; o < outer; ++o) {
        T const* row = pdy + (o * c + k) * inner;
        for (Index i = 0; i < inner; ++i) s += double(row[i]);
      }
      pdb[k] += T(s);
    }
  }
};

}  // namespace sdlora::ops
