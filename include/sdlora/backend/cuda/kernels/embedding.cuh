/// @file embedding.cuh
/// @brief Kernels and launchers of backend/cuda/embedding.hpp. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cstdint>  // std::int32_t

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/embedding.hpp>       // launcher declarations
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, load, store

namespace sdlora::ops::gpu {

template <class T>
__global__ void embedding_forward_kernel(T* y, T const* weight, std::int32_t const* ids, Index d, Index total) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride)
    y[e] = weight[Index(ids[e / d]) * d + e % d];
}

// Thread j owns column j of dweight: tokens are added in order, each addition rounded to T as on the CPU.
template <class T>
__global__ void embedding_backward_kernel(T* dweight, T const* dy, std::int32_t const* ids, Index n, Index d,
                                          Index row_begin) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index j = Index(blockIdx.x) * blockDim.x + threadIdx.x; j < d; j += stride)
    for (Index i = 0; i < n; ++i) {
      if (ids[i] < row_begin) continue;
      T* w = dweight + Index(ids[i]) * d + j;
      *w = store<T>(load(*w) + load(dy[i * d + j]));
    }
}

template <class T>
void launch_embedding_forward(cudaStream_t stream, T* y, T const* weight, std::int32_t const* ids, Index n, Index d) {
  Index const total = n * d;
  if (total == 0) return;
  embedding_forward_kernel<T><<<grid_size(total), kBlockSize, 0, stream>>>(y, weight, ids, d, total);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "embedding");
}

template <class T>
void launch_embedding_backward(cudaStream_t stream, T* dweight, T const* dy, std::int32_t const* ids, Index n, Index d,
                               Index row_begin) {
  if (n * d == 0) return;
  embedding_backward_kernel<T><<<grid_size(d), kBlockSize, 0, stream>>>(dweight, dy, ids, n, d, row_begin);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "embedding.backward");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the embedding launchers for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_EMBEDDING(T) SDLORA_CUDA_EMBEDDING_LAUNCHERS(template, T)
