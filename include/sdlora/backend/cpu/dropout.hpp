/// @file dropout.hpp
/// @brief CPU kernel of ops/dropout.hpp: one Philox block gives the mask of four consecutive elements.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::min
#include <cstdint>    // std::uint64_t

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/core/rng.hpp>     // philox_block, philox_uniform
#include <sdlora/ops/dropout.hpp>  // Dropout, Impl

namespace sdlora::ops {

template <>
struct Impl<Dropout, Cpu> {
  template <HostCompute T>
  static void run(Context<Cpu>& ctx, Dropout const& op, TensorView<T, Cpu> y, TensorView<T const, Cpu> x) {
    Index const n = x.numel(), blocks = (n + 3) / 4;
    T* py = y.data();
    T const* px = x.data();
    T const keep_scale = T(1.0 / (1.0 - op.p));
    sdlora::cpu::parallel_for(ctx, blocks, n > 32768, [&](Index blk) {
      // Element i uses word i % 4 of block i / 4: the same as philox_uniform_at(seed, counter, 0, i).
      PhiloxBlock const words = philox_block(op.seed, op.counter, std::uint64_t(blk));
      Index const end = std::min(n, blk * 4 + 4);
      for (Index i = blk * 4; i < end; ++i)
        py[i] = double(philox_uniform(words.v[i - blk * 4])) >= op.p ? px[i] * keep_scale : T(0);
    });
  }
};

}  // namespace sdlora::ops
