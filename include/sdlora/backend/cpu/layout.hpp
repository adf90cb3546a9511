/// @file layout.hpp
/// @brief CPU kernels of ops/layout.hpp: a blocked transpose of the last two axes. Include <sdlora/sdlora.hpp>.
#pragma once

#include <algorithm>  // std::min

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/layout.hpp>  // TransposeLastTwo, Impl

namespace sdlora::ops {

template <>
struct Impl<TransposeLastTwo, Cpu> {
  /// x viewed as (n, rows, cols) -> y (n, cols, rows)
  template <class T>
  static void run(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> x, Index n, Index rows,
                  Index cols) {
    constexpr Index kTile = 32;
    T const* px = x.data();
    T* py = y.data();
    Index const row_tiles = (rows + kTile - 1) / kTile;
    sdlora::cpu::parallel_for(ctx, n * row_tiles, x.numel() > 65536, [&](Index t) {
      Index const b = t / row_tiles, r0 = (t % row_tiles) * kTile;
      for (Index c0 = 0; c0 < cols; c0 += kTile)
        for (Index r = r0; r < std::min(rows, r0 + kTile); ++r)
          for (Index c = c0; c < std::min(cols, c0 + kTile); ++c)
            py[(b * cols + c) * rows + r] = px[(b * rows + r) * cols + c];
    });
  }
};

}  // namespace sdlora::ops
