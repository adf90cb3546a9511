/// @file softmax.hpp
/// @brief CPU kernels of ops/softmax.hpp: one row per iteration, the thread pool over rows. Include <sdlora/sdlora.hpp>.
#pragma once

#include <algorithm>  // std::max
#include <cmath>      // std::exp
#include <limits>     // std::numeric_limits

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/softmax.hpp>  // Softmax, Impl

namespace sdlora::ops {

template <>
struct Impl<Softmax, Cpu> {
  /// Softmax of one row of n elements; out may alias in. Fully masked rows (all -inf) give zeros, not NaN.
  template <class T>
  static void row(T* out, T const* in, Index n) {
    T m = -std::numeric_limits<T>::infinity();
    for (Index j = 0; j < n; ++j) m = std::max(m, in[j]);
    if (m == -std::numeric_limits<T>::infinity()) {
      for (Index j = 0; j < n; ++j) out[j] = T(0);
      return;
    }
    T sum = 0;
    for (Index j = 0; j < n; ++j) {
      out[j] = std::exp(in[j] - m);
      sum += out[j];
    }
    T const inv = T(1) / sum;
    for (Index j = 0; j < n; ++j) out[j] *= inv;
  }

  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> x) {
    Index const n = x.dim(-1), rows = n == 0 ? 0 : x.numel() / n;
    T* py = y.data();
    T const* px = x.data();
    sdlora::cpu::parallel_for(ctx, rows, x.numel() > 32768, [&](Index r) { row(py + r * n, px + r * n, n); });
  }

  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, TensorView<T, Cpu> dx, TensorView<T const, Cpu> y,
                       TensorView<T const, Cpu> dy) {
    Index const n = y.dim(-1), rows = n == 0 ? 0 : y.numel() / n;
    T* pdx = dx.data();
    T const* py = y.data();
    T const* pdy = dy.data();
    sdlora::cpu::parallel_for(ctx, rows, y.numel() > 32768, [&](Index r) {
      T const* yr = py + r * n;
      T const* dyr = pdy + r * n;
      T dot = 0;
      for (Index j = 0; j < n; ++j) dot += dyr[j] * yr[j];
      T* dxr = pdx + r * n;
      for (Index j = 0; j < n; ++j) dxr[j] = yr[j] * (dyr[j] - dot);
    });
  }
};

}  // namespace sdlora::ops
