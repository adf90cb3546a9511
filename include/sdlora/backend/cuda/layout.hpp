/// @file layout.hpp
/// @brief CUDA backend of ops/layout.hpp: a 32 x 32 shared-memory tiled transpose of the last two axes (coalesced
/// reads and writes). Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/layout.hpp>            // TransposeLastTwo, Impl

namespace sdlora::ops {

namespace gpu {
/// y (n, cols, rows) = x (n, rows, cols) transposed. Defined in kernels/layout.cuh.
template <class T>
void launch_transpose_last_two(cudaStream_t stream, T* y, T const* x, Index n, Index rows, Index cols);
}  // namespace gpu

template <>
struct Impl<TransposeLastTwo, Cuda> {
  template <class T>
  static void run(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> x, Index n, Index rows,
                  Index cols) {
    gpu::launch_transpose_last_two<T>(ctx.stream(), y.data(), x.data(), n, rows, cols);
  }
};

}  // namespace sdlora::ops

/// The launcher of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_LAYOUT_LAUNCHERS(PREFIX, T)                                                             \
  PREFIX void ::sdlora::ops::gpu::launch_transpose_last_two<T>(cudaStream_t, T*, T const*, ::sdlora::Index, \
                                                               ::sdlora::Index, ::sdlora::Index);
#define SDLORA_CUDA_DECLARE_LAYOUT(T) SDLORA_CUDA_LAYOUT_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_LAYOUT)
