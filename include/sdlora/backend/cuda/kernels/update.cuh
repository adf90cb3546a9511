/// @file update.cuh
/// @brief Kernel and launcher of backend/cuda/update.hpp: a grid-stride loop calling the same SDLORA_HOST_DEVICE
/// update rule as the CPU loop, in T (the optimizers' parameters and states are float or double). nvcc only.
/// Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize
#include <sdlora/backend/cuda/update.hpp>          // launch_update declaration

namespace sdlora::ops::gpu {

// x (n), g (n), s1 (n) or null, s2 (n) or null: f(x[i], g[i], s1 + i, s2 + i).
template <class T, class F>
__global__ void update_kernel(T* x, T const* g, T* s1, T* s2, Index n, F f) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    f(x[i], g[i], s1 ? s1 + i : nullptr, s2 ? s2 + i : nullptr);
}

template <class T, class F>
void launch_update(cudaStream_t stream, T* x, T const* g, T* s1, T* s2, Index n, F f) {
  if (n == 0) return;
  update_kernel<T, F><<<grid_size(n), kBlockSize, 0, stream>>>(x, g, s1, s2, n, f);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "update");
}

}  // namespace sdlora::ops::gpu

#define SDLORA_CUDA_INSTANTIATE_UPDATE(T, F) \
  template void ::sdlora::ops::gpu::launch_update<T, F>(cudaStream_t, T*, T const*, T*, T*, ::sdlora::Index, F);
