/// @file activation.hpp
/// @brief CPU kernels of ops/activation.hpp: the formulas of fn::Silu / fn::SiluBackward on Eigen arrays (vectorised
/// exp), in chunks spread over the thread pool. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>    // std::min
#include <type_traits>  // std::is_same_v

#include <Eigen/Core>  // Eigen::Array, Eigen::Map

#include <sdlora/backend/cpu/parallel.hpp>     // cpu::parallel_for
#include <sdlora/backend/cpu/vector_math.hpp>  // cpu::norm_act_row
#include <sdlora/ops/activation.hpp>  // Silu, Impl

namespace sdlora::ops {

namespace cpu {
template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1> const>;

/// y = silu(x) = x / (1 + exp(-x)) over n contiguous values; y may alias x. Float on x86 takes the AVX2 / AVX-512
/// kernel (vector_math.hpp: Eigen's exp runs at the build's baseline SSE2 width); double and the portable path Eigen.
template <class T>
void silu_span(T* y, T const* x, Index n) {
  if constexpr (std::is_same_v<T, float>) {
    if (sdlora::cpu::norm_act_row(y, x, n, 0.f, 1.f, 1.f, 0.f, true)) return;
  }
  ConstArrayMap<T> const xa(x, n);
  ArrayMap<T>(y, n) = xa / (T(1) + (-xa).exp());
}

/// dx = dy * s * (1 + x (1 - s)), s = sigmoid(x), over n contiguous values; dx may alias dy.
template <class T>
void silu_backward_span(T* dx, T const* dy, T const* x, Index n) {
  ConstArrayMap<T> const xa(x, n), ga(dy, n);
  Eigen::Array<T, Eigen::Dynamic, 1> const s = T(1) / (T(1) + (-xa).exp());
  ArrayMap<T>(dx, n) = ga * s * (T(1) + xa * (T(1) - s));
}

inline constexpr Index kSiluChunk = 4096;
}  // namespace cpu

template <>
struct Impl<Silu, Cpu> {
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> x) {
    Index const n = x.numel(), chunks = (n + cpu::kSiluChunk - 1) / cpu::kSiluChunk;
    sdlora::cpu::parallel_for(ctx, chunks, n > 32768, [&](Index c) {
      Index const begin = c * cpu::kSiluChunk, len = std::min(cpu::kSiluChunk, n - begin);
      cpu::silu_span(y.data() + begin, x.data() + begin, len);
    });
  }

  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, TensorView<T, Cpu> dx, TensorView<T const, Cpu> dy,
                       TensorView<T const, Cpu> x) {
    Index const n = x.numel(), chunks = (n + cpu::kSiluChunk - 1) / cpu::kSiluChunk;
    sdlora::cpu::parallel_for(ctx, chunks, n > 32768, [&](Index c) {
      Index const begin = c * cpu::kSiluChunk, len = std::min(cpu::kSiluChunk, n - begin);
      cpu::silu_backward_span(dx.data() + begin, dy.data() + begin, x.data() + begin, len);
    });
  }
};

}  // namespace sdlora::ops
