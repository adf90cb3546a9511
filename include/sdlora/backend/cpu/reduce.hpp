/// @file reduce.hpp
/// @brief CPU kernels of ops/reduce.hpp (double accumulation in fixed blocks summed in order: the same result on any thread count). Include <sdlora/sdlora.hpp>.
#pragma once

#include <algorithm>  // std::max
#include <cmath>      // std::abs

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_sum
#include <sdlora/ops/reduce.hpp>            // Reduce, Impl

namespace sdlora::ops {

template <>
struct Impl<Reduce, Cpu> {
  template <class T>
  static double run(Context<Cpu>& ctx, Reduce op, TensorView<T const, Cpu> a, TensorView<T const, Cpu> b) {
    SDLORA_EXPECTS(a.is_contiguous() && b.is_contiguous(), "[reduce] operands must be contiguous");
    T const* pa = a.data();
    T const* pb = b.data();
    Index const n = a.numel();
    bool const parallel = n > 32768;
    Context<Cpu> serial{.num_threads = 1, .isa = ctx.isa};
    Context<Cpu> const& run_on = parallel ? ctx : serial;
    switch (op.kind) {
      case Reduce::Kind::Sum: return sdlora::cpu::parallel_sum(run_on, n, [&](Index i) { return double(pa[i]); });
      case Reduce::Kind::SumSquares:
        return sdlora::cpu::parallel_sum(run_on, n, [&](Index i) { return double(pa[i]) * double(pa[i]); });
      case Reduce::Kind::Dot:
        return sdlora::cpu::parallel_sum(run_on, n, [&](Index i) { return double(pa[i]) * double(pb[i]); });
      case Reduce::Kind::MaxAbs: break;
    }
    double acc = 0.0;  // max is exact in any order
    for (Index i = 0; i < n; ++i) acc = std::max(acc, std::abs(double(pa[i])));
    return acc;
  }
};

}  // namespace sdlora::ops
