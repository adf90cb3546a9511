/// @file softmax.hpp
/// @brief CUDA backend of ops/softmax.hpp: one block per row (max, sum of exp, then the normalised row; backward:
/// the row's dot(dy, y), then dx). Per-thread partials in the compute type, block reductions in double.
/// Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/softmax.hpp>           // Softmax, Impl

namespace sdlora::ops {

namespace gpu {
/// y (rows, n) = softmax of each row of x (rows, n); y may alias x. Defined in kernels/softmax.cuh.
template <class T>
void launch_softmax_forward(cudaStream_t stream, T* y, T const* x, Index rows, Index n);
/// dx (rows, n) = y * (dy - rowsum(dy * y)); dx may alias dy.
template <class T>
void launch_softmax_backward(cudaStream_t stream, T* dx, T const* y, T const* dy, Index rows, Index n);
}  // namespace gpu

template <>
struct Impl<Softmax, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> x) {
    Index const n = x.dim(-1);
    gpu::launch_softmax_forward<T>(ctx.stream(), y.data(), x.data(), n == 0 ? 0 : x.numel() / n, n);
  }
  template <class T>
  static void backward(Context<Cuda>& ctx, TensorView<T, Cuda> dx, TensorView<T const, Cuda> y,
                       TensorView<T const, Cuda> dy) {
    Index const n = y.dim(-1);
    gpu::launch_softmax_backward<T>(ctx.stream(), dx.data(), y.data(), dy.data(), n == 0 ? 0 : y.numel() / n, n);
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_SOFTMAX_LAUNCHERS(PREFIX, T)                                                                    \
  PREFIX void ::sdlora::ops::gpu::launch_softmax_forward<T>(cudaStream_t, T*, T const*, ::sdlora::Index,            \
                                                            ::sdlora::Index);                                       \
  PREFIX void ::sdlora::ops::gpu::launch_softmax_backward<T>(cudaStream_t, T*, T const*, T const*, ::sdlora::Index, \
                                                             ::sdlora::Index);
#define SDLORA_CUDA_DECLARE_SOFTMAX(T) SDLORA_CUDA_SOFTMAX_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_SOFTMAX)
