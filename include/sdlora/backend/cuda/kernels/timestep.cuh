/// @file timestep.cuh
/// @brief Kernel and launcher of backend/cuda/timestep.hpp. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cmath>  // exp, sin, cos

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, compute_t, load, store
#include <sdlora/backend/cuda/timestep.hpp>        // launcher declaration, TimestepDims

namespace sdlora::ops::gpu {

// Element (r, i) for i < dim / 2 writes the sin and cos columns of frequency i; i == dim / 2 (odd dim) the zero pad.
template <class T>
__global__ void timestep_sinusoidal_kernel(TimestepDims d, T* out, T const* timesteps, Index total) {
  using C = compute_t<T>;
  Index const half = d.dim / 2, per_row = half + d.dim % 2, stride = Index(gridDim.x) * blockDim.x;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const r = e / per_row, i = e % per_row;
    T* row = out + r * d.dim;
    if (i == half) {
      row[d.dim - 1] = store<T>(C(0));
      continue;
    }
    // As the CPU: exponent = (-ln(max_period) * i) / (half - shift), freq = exp(exponent), arg = scale * (t * freq).
    C const freq = exp(C(C(d.neg_log_period) * C(i)) / C(d.denominator));
    C const arg = C(d.scale) * C(load(timesteps[r]) * freq);
    row[(d.flip_sin_to_cos ? half : 0) + i] = store<T>(sin(arg));
    row[(d.flip_sin_to_cos ? 0 : half) + i] = store<T>(cos(arg));
  }
}

template <class T>
void launch_timestep_sinusoidal(cudaStream_t stream, TimestepDims const& d, T* out, T const* timesteps) {
  Index const total = d.n * (d.dim / 2 + d.dim % 2);
  if (total == 0) return;
  timestep_sinusoidal_kernel<T><<<grid_size(total), kBlockSize, 0, stream>>>(d, out, timesteps, total);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "timestep_sinusoidal");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the timestep launcher for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_TIMESTEP(T) SDLORA_CUDA_TIMESTEP_LAUNCHERS(template, T)
