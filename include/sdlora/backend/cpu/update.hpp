/// @file update.hpp
/// @brief CPU backend of ops/update.hpp: the optimizers' elementwise update as one parallel loop (elements are
/// independent, so the thread count never changes a bit). Include <sdlora/train.hpp> instead.
#pragma once

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/ops/update.hpp>            // Update, Impl

namespace sdlora::ops {

template <>
struct Impl<Update, Cpu> {
  static constexpr Index kParallelMin = Index(1) << 16;  // smaller parameters (most LoRA factors) stay on one thread

  template <class T, class F>
  static void run(Context<Cpu>& ctx, TensorView<T, Cpu> x, TensorView<T const, Cpu> g, TensorView<T, Cpu> s1,
                  TensorView<T, Cpu> s2, F f) {
    T* px = x.data();        // (n)
    T const* pg = g.data();  // (n)
    T* p1 = s1.empty() ? nullptr : s1.data();  // (n) or null
    T* p2 = s2.empty() ? nullptr : s2.data();  // (n) or null
    Index const n = x.numel();
    sdlora::cpu::parallel_for(ctx, n, n > kParallelMin,
                              [&](Index i) { f(px[i], pg[i], p1 ? p1 + i : nullptr, p2 ? p2 + i : nullptr); });
  }
};

}  // namespace sdlora::ops
