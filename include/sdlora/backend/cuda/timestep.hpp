/// @file timestep.hpp
/// @brief CUDA backend of ops/timestep.hpp: one thread per (timestep, frequency), each step rounded to the compute
/// type in diffusers' order as on the CPU (device exp/sin/cos differ from glibc's by an ulp or two).
/// Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cmath>  // std::log

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/timestep.hpp>          // TimestepSinusoidal, Impl

namespace sdlora::ops {

namespace gpu {
struct TimestepDims {
  Index n, dim;
  double neg_log_period;  // -ln(max_period)
  double denominator;     // dim / 2 - downscale_freq_shift
  double scale;
  bool flip_sin_to_cos;
};
/// out (n, dim) from timesteps (n). Defined in kernels/timestep.cuh.
template <class T>
void launch_timestep_sinusoidal(cudaStream_t stream, TimestepDims const& d, T* out, T const* timesteps);
}  // namespace gpu

template <>
struct Impl<TimestepSinusoidal, Cuda> {
  template <class T>
  static void run(Context<Cuda>& ctx, TimestepSinusoidal const& op, TensorView<T, Cuda> out,
                  TensorView<T const, Cuda> timesteps) {
    Index const dim = out.dim(1);
    gpu::TimestepDims const d{
        out.dim(0),        dim, -std::log(op.max_period), double(dim / 2) - op.downscale_freq_shift, op.scale,
        op.flip_sin_to_cos};
    gpu::launch_timestep_sinusoidal<T>(ctx.stream(), d, out.data(), timesteps.data());
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_TIMESTEP_LAUNCHERS(PREFIX, T)                                                                      \
  PREFIX void ::sdlora::ops::gpu::launch_timestep_sinusoidal<T>(cudaStream_t, ::sdlora::ops::gpu::TimestepDims const&, \
                                                                T*, T const*);
#define SDLORA_CUDA_DECLARE_TIMESTEP(T) SDLORA_CUDA_TIMESTEP_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_TIMESTEP)
