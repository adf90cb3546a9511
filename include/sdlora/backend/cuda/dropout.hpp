/// @file dropout.hpp
/// @brief CUDA backend of ops/dropout.hpp: one thread per Philox block of four elements, with core/rng.hpp's host +
/// device philox_block, so the mask equals the CPU's bit for bit (float results too: the same keep test and the same
/// multiplication). Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/dropout.hpp>           // Dropout, Impl

namespace sdlora::ops {

namespace gpu {
/// y (n) = x (n) * mask / (1 - p); y may alias x. Defined in kernels/dropout.cuh.
template <class T>
void launch_dropout(cudaStream_t stream, Dropout const& op, T* y, T const* x, Index n);
}  // namespace gpu

template <>
struct Impl<Dropout, Cuda> {
  template <class T>
  static void run(Context<Cuda>& ctx, Dropout const& op, TensorView<T, Cuda> y, TensorView<T const, Cuda> x) {
    gpu::launch_dropout<T>(ctx.stream(), op, y.data(), x.data(), x.numel());
  }
};

}  // namespace sdlora::ops

/// The launcher of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_DROPOUT_LAUNCHERS(PREFIX, T)                                                               \
  PREFIX void ::sdlora::ops::gpu::launch_dropout<T>(cudaStream_t, ::sdlora::ops::Dropout const&, T*, T const*, \
                                                    ::sdlora::Index);
#define SDLORA_CUDA_DECLARE_DROPOUT(T) SDLORA_CUDA_DROPOUT_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_DROPOUT)
