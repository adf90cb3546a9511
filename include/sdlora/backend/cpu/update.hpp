/// @file update.hpp
/// @brief CPU backend of ops/update.hpp: the optimizers' elementwise update as one parallel loop, and the multi-tensor
/// update as one parallel job over fixed chunks of all tensors (elements are independent, so neither the thread count
/// nor the chunking changes a bit). Include <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>  // std::min, std::upper_bound
#include <span>       // std::span
#include <vector>     // std::vector

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for, cpu::parallel_tasks
#include <sdlora/ops/update.hpp>            // Update, Impl

namespace sdlora::ops {

template <>
struct Impl<Update, Cpu> {
  static constexpr Index kParallelMin = Index(1) << 16;  // smaller parameters (most LoRA factors) stay on one thread
  static constexpr Index kChunk = Index(1) << 12;        // elements per parallel_for index

  template <class T, class F>
  static void run(Context<Cpu>& ctx, TensorView<T, Cpu> x, TensorView<T const, Cpu> g, TensorView<T, Cpu> s1,
                  TensorView<T, Cpu> s2, F f) {
    UpdateSlice<T, Cpu, F> const slice{x, g, s1, s2, f};
    Index const n = x.numel(), chunks = (n + kChunk - 1) / kChunk;
    sdlora::cpu::parallel_for(ctx, chunks, n > kParallelMin, [&](Index c) {
      run_range(slice, c * kChunk, std::min(n, (c + 1) * kChunk));
    });
  }

  /// Elements [begin, end) of one tensor.
  template <class T, class F>
  static void run_range(UpdateSlice<T, Cpu, F> const& s, Index begin, Index end) {
    T* px = s.x.data();        // (n)
    T const* pg = s.g.data();  // (n)
    T* p1 = s.s1.empty() ? nullptr : s.s1.data();  // (n) or null
    T* p2 = s.s2.empty() ? nullptr : s.s2.data();  // (n) or null
    for (Index i = begin; i < end; ++i) s.f(px[i], pg[i], p1 ? p1 + i : nullptr, p2 ? p2 + i : nullptr);
  }
};

template <>
struct Impl<UpdateMany, Cpu> {
  static constexpr Index kChunk = Index(1) << 14;  // elements per task of the concatenation

  template <class T, class F>
  static void run(Context<Cpu>& ctx, std::span<UpdateSlice<T, Cpu, F> const> slices) {
    std::vector<Index> start(slices.size() + 1, 0);  // (slices + 1) offsets of each tensor in the concatenation
    for (std::size_t s = 0; s < slices.size(); ++s) start[s + 1] = start[s] + slices[s].x.numel();
    Index const n = start.back(), tasks = (n + kChunk - 1) / kChunk;
    auto chunk = [&](Index task, int) {
      Index at = task * kChunk;
      Index const end = std::min(n, at + kChunk);
      // the last tensor starting at or before `at` (empty tensors before it are skipped by the loop)
      auto s = std::size_t(std::upper_bound(start.begin(), start.end(), at) - start.begin()) - 1;
      for (; at < end; ++s) {
        Index const stop = std::min(end, start[s + 1]);
        Impl<Update, Cpu>::run_range(slices[s], at - start[s], stop - start[s]);
        at = stop;
      }
    };
    if (n > Impl<Update, Cpu>::kParallelMin && ctx.threads() > 1) {
      sdlora::cpu::parallel_tasks(ctx, tasks, chunk);
    } else {
      for (Index t = 0; t < tasks; ++t) chunk(t, 0);
    }
  }
};

}  // namespace sdlora::ops
