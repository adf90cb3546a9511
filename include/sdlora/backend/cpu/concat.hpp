/// @file concat.hpp
/// @brief CPU kernels of ops/concat.hpp (per-sample contiguous block copies). Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::copy_n

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/concat.hpp>  // ConcatChannels, Impl

namespace sdlora::ops {

template <>
struct Impl<ConcatChannels, Cpu> {
  template <class T>
  static void concat(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> a, TensorView<T const, Cpu> b) {
    Index const n = y.dim(0), sa = a.numel() / n, sb = b.numel() / n;
    sdlora::cpu::parallel_for(ctx, n, y.numel() > 65536, [&](Index i) {
      std::copy_n(a.data() + i * sa, sa, y.data() + i * (sa + sb));
      std::copy_n(b.data() + i * sb, sb, y.data() + i * (sa + sb) + sa);
    });
  }
  template <class T>
  static void split(Context<Cpu>& ctx, TensorView<T, Cpu> a, TensorView<T, Cpu> b, TensorView<T const, Cpu> y) {
    Index const n = y.dim(0), sa = a.numel() / n, sb = b.numel() / n;
    sdlora::cpu::parallel_for(ctx, n, y.numel() > 65536, [&](Index i) {
      std::copy_n(y.data() + i * (sa + sb), sa, a.data() + i * sa);
      std::copy_n(y.data() + i * (sa + sb) + sa, sb, b.data() + i * sb);
    });
  }
};

}  // namespace sdlora::ops
