/// @file activation.hpp
/// @brief CUDA backend of ops/activation.hpp: SiLU forward and backward through the elementwise map/zip kernels with
/// the fn::Silu / fn::SiluBackward functors (the CPU's formulas). Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <sdlora/backend/cuda/context.hpp>      // Context<Cuda>
#include <sdlora/backend/cuda/elementwise.hpp>  // launch_map, launch_zip, SDLORA_CUDA_DECLARE_MAP / _ZIP
#include <sdlora/backend/cuda/launch.hpp>       // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>                // half, bfloat16
#include <sdlora/ops/activation.hpp>            // Silu, Impl, fn::Silu, fn::SiluBackward

namespace sdlora::ops {

template <>
struct Impl<Silu, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> x) {
    gpu::launch_map<T, fn::Silu>(ctx.stream(), y.data(), x.data(), x.numel(), fn::Silu{});
  }
  template <class T>
  static void backward(Context<Cuda>& ctx, TensorView<T, Cuda> dx, TensorView<T const, Cuda> dy,
                       TensorView<T const, Cuda> x) {
    gpu::launch_zip<T, fn::SiluBackward>(ctx.stream(), dx.data(), dy.data(), x.data(), x.numel(), fn::SiluBackward{});
  }
};

}  // namespace sdlora::ops

/// The map/zip instances of Impl<Silu, Cuda> for storage type T.
#define SDLORA_CUDA_SILU_INSTANCES(MAP, ZIP, T) MAP(T, ::sdlora::ops::fn::Silu) ZIP(T, ::sdlora::ops::fn::SiluBackward)
#define SDLORA_CUDA_DECLARE_SILU(T) SDLORA_CUDA_SILU_INSTANCES(SDLORA_CUDA_DECLARE_MAP, SDLORA_CUDA_DECLARE_ZIP, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_SILU)
/// Explicit instantiation definitions (used by cuda_kernels.cuh, after kernels/elementwise.cuh).
#define SDLORA_CUDA_INSTANTIATE_SILU(T) \
  SDLORA_CUDA_SILU_INSTANCES(SDLORA_CUDA_INSTANTIATE_MAP, SDLORA_CUDA_INSTANTIATE_ZIP, T)
