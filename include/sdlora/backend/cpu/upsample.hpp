/// @file upsample.hpp
/// @brief CPU kernels of ops/upsample.hpp: index tables per axis, the thread pool over (N, C) planes.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::min, std::fill_n
#include <cmath>      // std::floor
#include <vector>     // std::vector

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/upsample.hpp>  // UpsampleNearest, Impl

namespace sdlora::ops {

namespace cpu {
/// src[o] for every output index o: torch's nearest_idx (exact for 1x and 2x, float scale otherwise).
inline std::vector<Index> nearest_sources(Index in, Index out) {
  std::vector<Index> src(static_cast<std::size_t>(out));
  float const scale = float(in) / float(out);
  for (Index o = 0; o < out; ++o) {
    Index s;
    if (out == in) s = o;
    else if (out == 2 * in) s = o >> 1;
    else s = std::min(static_cast<Index>(std::floor(float(o) * scale)), in - 1);
    src[static_cast<std::size_t>(o)] = s;
  }
  return src;
}
}  // namespace cpu

template <>
struct Impl<UpsampleNearest, Cpu> {
  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, TensorView<T, Cpu> y, TensorView<T const, Cpu> x) {
    Index const planes = x.dim(0) * x.dim(1), h = x.dim(2), w = x.dim(3), ho = y.dim(2), wo = y.dim(3);
    auto const rows = cpu::nearest_sources(h, ho), cols = cpu::nearest_sources(w, wo);
    sdlora::cpu::parallel_for(ctx, planes, y.numel() > 32768, [&](Index p) {
      T const* in = x.data() + p * h * w;
      T* out = y.data() + p * ho * wo;
      for (Index oh = 0; oh < ho; ++oh) {
        T const* src = in + rows[std::size_t(oh)] * w;
        T* dst = out + oh * wo;
        for (Index ow = 0; ow < wo; ++ow) dst[ow] = src[cols[std::size_t(ow)]];
      }
    });
  }

  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, TensorView<T, Cpu> dx, TensorView<T const, Cpu> dy) {
    Index const planes = dx.dim(0) * dx.dim(1), h = dx.dim(2), w = dx.dim(3), ho = dy.dim(2), wo = dy.dim(3);
    auto const rows = cpu::nearest_sources(h, ho), cols = cpu::nearest_sources(w, wo);
    sdlora::cpu::parallel_for(ctx, planes, dy.numel() > 32768, [&](Index p) {
      T const* in = dy.data() + p * ho * wo;
      T* out = dx.data() + p * h * w;
      std::fill_n(out, h * w, T(0));
      for (Index oh = 0; oh < ho; ++oh) {
        T* dst = out + rows[std::size_t(oh)] * w;
        T const* src = in + oh * wo;
        for (Index ow = 0; ow < wo; ++ow) dst[cols[std::size_t(ow)]] += src[ow];
      }
    });
  }
};

}  // namespace sdlora::ops
