/// @file reduce.hpp
/// @brief CPU kernels of ops/reduce.hpp (double accumulation, OpenMP reduction). Include <sdlora/sdlora.hpp>.
#pragma once

#include <algorithm>  // std::max
#include <cmath>      // std::abs

#include <sdlora/ops/reduce.hpp>  // Reduce, Impl

namespace sdlora::ops {

template <>
struct Impl<Reduce, Cpu> {
  template <class T>
  static double run(Context<Cpu>& ctx, Reduce op, TensorView<T const, Cpu> a, TensorView<T const, Cpu> b) {
    SDLORA_EXPECTS(a.is_contiguous() && b.is_contiguous(), "[reduce] operands must be contiguous");
    T const* pa = a.data();
    T const* pb = b.data();
    Index const n = a.numel();
    double acc = 0.0;
    switch (op.kind) {
      case Reduce::Kind::Sum:
#pragma omp parallel for reduction(+ : acc) num_threads(ctx.threads()) if (n > 32768)
        for (Index i = 0; i < n; ++i) acc += double(pa[i]);
        break;
      case Reduce::Kind::SumSquares:
#pragma omp parallel for reduction(+ : acc) num_threads(ctx.threads()) if (n > 32768)
        for (Index i = 0; i < n; ++i) acc += double(pa[i]) * double(pa[i]);
        break;
      case Reduce::Kind::Dot:
#pragma omp parallel for reduction(+ : acc) num_threads(ctx.threads()) if (n > 32768)
        for (Index i = 0; i < n; ++i) acc += double(pa[i]) * double(pb[i]);
        break;
      case Reduce::Kind::MaxAbs:
#pragma omp parallel for reduction(max : acc) num_threads(ctx.threads()) if (n > 32768)
        for (Index i = 0; i < n; ++i) acc = std::max(acc, std::abs(double(pa[i])));
        break;
    }
    return acc;
  }
};

}  // namespace sdlora::ops
