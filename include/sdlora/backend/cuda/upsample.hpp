/// @file upsample.hpp
/// @brief CUDA backend of ops/upsample.hpp: nearest-neighbour forward (one thread per output element) and a
/// gathering backward (one thread per input element sums its output pixels in the CPU's row-major order: no
/// atomics, float results equal the CPU's). Source indices are torch's, as on the CPU. Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/upsample.hpp>          // UpsampleNearest, Impl

namespace sdlora::ops {

namespace gpu {
/// planes (N*C) of (h, w) input and (ho, wo) output.
struct UpsampleDims {
  Index planes, h, w, ho, wo;
};
/// y (planes, ho, wo) = nearest(x (planes, h, w)). Defined in kernels/upsample.cuh.
template <class T>
void launch_upsample_nearest_forward(cudaStream_t stream, UpsampleDims const& d, T* y, T const* x);
/// dx (planes, h, w) = the sum of dy (planes, ho, wo) over each input pixel's copies (overwrites).
template <class T>
void launch_upsample_nearest_backward(cudaStream_t stream, UpsampleDims const& d, T* dx, T const* dy);
}  // namespace gpu

template <>
struct Impl<UpsampleNearest, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> x) {
    gpu::launch_upsample_nearest_forward<T>(ctx.stream(), {x.dim(0) * x.dim(1), x.dim(2), x.dim(3), y.dim(2), y.dim(3)},
                                            y.data(), x.data());
  }
  template <class T>
  static void backward(Context<Cuda>& ctx, TensorView<T, Cuda> dx, TensorView<T const, Cuda> dy) {
    gpu::launch_upsample_nearest_backward<T>(
        ctx.stream(), {dx.dim(0) * dx.dim(1), dx.dim(2), dx.dim(3), dy.dim(2), dy.dim(3)}, dx.data(), dy.data());
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_UPSAMPLE_LAUNCHERS(PREFIX, T)                           \
  PREFIX void ::sdlora::ops::gpu::launch_upsample_nearest_forward<T>(       \
      cudaStream_t, ::sdlora::ops::gpu::UpsampleDims const&, T*, T const*); \
  PREFIX void ::sdlora::ops::gpu::launch_upsample_nearest_backward<T>(      \
      cudaStream_t, ::sdlora::ops::gpu::UpsampleDims const&, T*, T const*);
#define SDLORA_CUDA_DECLARE_UPSAMPLE(T) SDLORA_CUDA_UPSAMPLE_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_UPSAMPLE)
