/// @file timestep.hpp
/// @brief CPU kernel of ops/timestep.hpp. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cmath>   // std::exp, std::log, std::sin, std::cos
#include <vector>  // std::vector

#include <sdlora/ops/timestep.hpp>  // TimestepSinusoidal, Impl

namespace sdlora::ops {

template <>
struct Impl<TimestepSinusoidal, Cpu> {
  // Each step rounds to T in diffusers' order: exponent = (-ln(max_period) * i) / (half - shift), freq = exp(exponent),
  // arg = scale * (t * freq).
  template <HostCompute T>
  static void run(Context<Cpu>&, TimestepSinusoidal const& op, TensorView<T, Cpu> out,
                  TensorView<T const, Cpu> timesteps) {
    Index const n = out.dim(0), dim = out.dim(1), half = dim / 2;
    T const neg_log_period = T(-std::log(op.max_period));
    T const denominator = T(double(half) - op.downscale_freq_shift);
    std::vector<T> freq(static_cast<std::size_t>(half));
    for (Index i = 0; i < half; ++i) freq[std::size_t(i)] = std::exp(T(neg_log_period * T(i)) / denominator);
    Index const sin_at = op.flip_sin_to_cos ? half : 0, cos_at = op.flip_sin_to_cos ? 0 : half;
    for (Index r = 0; r < n; ++r) {
      T const t = timesteps.data()[r];
      T* row = out.data() + r * dim;
      for (Index i = 0; i < half; ++i) {
        T const arg = T(op.scale) * T(t * freq[std::size_t(i)]);
        row[sin_at + i] = std::sin(arg);
        row[cos_at + i] = std::cos(arg);
      }
      if (dim % 2 == 1) row[dim - 1] = T(0);
    }
  }
};

}  // namespace sdlora::ops
