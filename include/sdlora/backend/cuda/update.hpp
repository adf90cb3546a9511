/// @file update.hpp
/// @brief CUDA backend of ops/update.hpp: Impl<Update, Cuda> and the launcher declaration with the instances sdlora
/// ships (AdamW and SGD rules in float and double). Compile-verified only (no GPU has run it yet). Host C++ (compiles
/// with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <span>  // std::span

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/ops/update.hpp>            // Update, Impl, fn::AdamWUpdate, fn::SgdUpdate

namespace sdlora::ops {

namespace gpu {
/// f(x[i], g[i], s1 + i, s2 + i) for i < n on `stream` (s1 / s2 may be null). Defined in kernels/update.cuh.
template <class T, class F>
void launch_update(cudaStream_t stream, T* x, T const* g, T* s1, T* s2, Index n, F f);
}  // namespace gpu

template <>
struct Impl<Update, Cuda> {
  template <class T, class F>
  static void run(Context<Cuda>& ctx, TensorView<T, Cuda> x, TensorView<T const, Cuda> g, TensorView<T, Cuda> s1,
                  TensorView<T, Cuda> s2, F f) {
    gpu::launch_update<T, F>(ctx.stream(), x.data(), g.data(), s1.empty() ? nullptr : s1.data(),
                             s2.empty() ? nullptr : s2.data(), x.numel(), f);
  }
};

/// One launch per tensor on the context's stream. A single launch over a tensor list (torch's multi_tensor_apply)
/// is left until a GPU can run and time it.
template <>
struct Impl<UpdateMany, Cuda> {
  template <class T, class F>
  static void run(Context<Cuda>& ctx, std::span<UpdateSlice<T, Cuda, F> const> slices) {
    for (auto const& s : slices) Impl<Update, Cuda>::run<T, F>(ctx, s.x, s.g, s.s1, s.s2, s.f);
  }
};

}  // namespace sdlora::ops

#define SDLORA_CUDA_DECLARE_UPDATE(T, F) \
  extern template void ::sdlora::ops::gpu::launch_update<T, F>(cudaStream_t, T*, T const*, T*, T*, ::sdlora::Index, F);

/// The update instances sdlora ships: the AdamW and SGD rules for float and double parameters.
#define SDLORA_CUDA_UPDATE_INSTANCES(M)                                                                   \
  M(float, ::sdlora::ops::fn::AdamWUpdate<float>) M(double, ::sdlora::ops::fn::AdamWUpdate<double>) \
  M(float, ::sdlora::ops::fn::SgdUpdate<float>) M(double, ::sdlora::ops::fn::SgdUpdate<double>)

SDLORA_CUDA_UPDATE_INSTANCES(SDLORA_CUDA_DECLARE_UPDATE)
