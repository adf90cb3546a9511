/// @file embedding.hpp
/// @brief CPU kernels of ops/embedding.hpp. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::copy_n
#include <cstdint>    // std::int32_t
#include <span>       // std::span

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/embedding.hpp>  // Embedding, Impl

namespace sdlora::ops {

template <>
struct Impl<Embedding, Cpu> {
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> weight,
                      std::span<std::int32_t const> ids) {
    Index const n = Index(ids.size()), d = weight.dim(1);
    T* py = y.data();
    T const* pw = weight.data();
    sdlora::cpu::parallel_for(ctx, n, n * d > 32768, [&](Index i) { std::copy_n(pw + Index(ids[i]) * d, d, py + i * d); });
  }
  // Serial over tokens (repeated ids write the same row); the rows are short and N is a prompt's length.
  template <HostCompute T>
  static void backward(Context<Cpu>&, TensorView<T, Cpu> dweight, TensorView<T const, Cpu> dy,
                       std::span<std::int32_t const> ids, Index row_begin) {
    Index const n = Index(ids.size()), d = dweight.dim(1);
    T* pw = dweight.data();
    T const* pdy = dy.data();
    for (Index i = 0; i < n; ++i) {
      if (ids[i] < row_begin) continue;
      T* row = pw + Index(ids[i]) * d;
      T const* src = pdy + i * d;
      for (Index j = 0; j < d; ++j) row[j] += src[j];
    }
  }
};

}  // namespace sdlora::ops
