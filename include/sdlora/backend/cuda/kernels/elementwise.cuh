/// @file elementwise.cuh
/// @brief Kernels and launchers of backend/cuda/elementwise.hpp (map, zip): grid-stride loops that call the same
/// SDLORA_HOST_DEVICE functors as the CPU loops. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/check.hpp>        // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/elementwise.hpp>  // launch_map, launch_zip declarations
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, load, store

namespace sdlora::ops::gpu {

// y (n) = f(x (n)), computed in compute_t<T>.
template <class T, class F>
__global__ void map_kernel(T* y, T const* x, Index n, F f) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = store<T>(f(load(x[i])));
}

// y (n) = f(a (n), b (n)), computed in compute_t<T>.
template <class T, class F>
__global__ void zip_kernel(T* y, T const* a, T const* b, Index n, F f) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = store<T>(f(load(a[i]), load(b[i])));
}

template <class T, class F>
void launch_map(cudaStream_t stream, T* y, T const* x, Index n, F f) {
  if (n == 0) return;
  map_kernel<T, F><<<grid_size(n), kBlockSize, 0, stream>>>(y, x, n, f);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "map");
}

template <class T, class F>
void launch_zip(cudaStream_t stream, T* y, T const* a, T const* b, Index n, F f) {
  if (n == 0) return;
  zip_kernel<T, F><<<grid_size(n), kBlockSize, 0, stream>>>(y, a, b, n, f);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "zip");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definition of launch_map<T, F> / launch_zip<T, F>. Use at global scope in the one .cu file
/// that includes <sdlora/cuda_kernels.cuh>, for functors beyond the shipped ones (see backend/cuda/elementwise.hpp).
#define SDLORA_CUDA_INSTANTIATE_MAP(T, F) \
  template void ::sdlora::ops::gpu::launch_map<T, F>(cudaStream_t, T*, T const*, ::sdlora::Index, F);
#define SDLORA_CUDA_INSTANTIATE_ZIP(T, F) \
  template void ::sdlora::ops::gpu::launch_zip<T, F>(cudaStream_t, T*, T const*, T const*, ::sdlora::Index, F);
