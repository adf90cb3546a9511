/// @file bias.cuh
/// @brief Kernels and launchers of backend/cuda/bias.hpp. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/bias.hpp>            // launch_bias_add, launch_bias_grad declarations
#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // block_reduce, grid_size, kBlockSize, load, store

namespace sdlora::ops::gpu {

// y (outer, c, inner) += b (c)
template <class T>
__global__ void bias_add_kernel(T* y, T const* b, Index c, Index inner, Index n) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = store<T>(load(y[i]) + load(b[(i / inner) % c]));
}

// db (c) += sum over (o, i) of dy (outer, c, inner): block k reduces channel k in double.
template <class T>
__global__ void bias_grad_kernel(T* db, T const* dy, Index c, Index inner, Index outer) {
  __shared__ double scratch[kBlockSize / kWarpSize];
  Index const k = blockIdx.x;
  Index const count = outer * inner;
  double acc = 0.0;
  for (Index j = threadIdx.x; j < count; j += blockDim.x) {
    Index const o = j / inner, i = j % inner;
    acc += double(load(dy[(o * c + k) * inner + i]));
  }
  acc = block_reduce(acc, SumOp{}, threadIdx.x, blockDim.x, scratch);
  // As the CPU does: round the channel's sum to T, then add it to db in T's compute type.
  if (threadIdx.x == 0) db[k] = store<T>(load(db[k]) + load(store<T>(compute_t<T>(acc))));
}

template <class T>
void launch_bias_add(cudaStream_t stream, T* y, T const* b, Index c, Index inner, Index n) {
  if (n == 0) return;
  bias_add_kernel<T><<<grid_size(n), kBlockSize, 0, stream>>>(y, b, c, inner, n);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "bias");
}

template <class T>
void launch_bias_grad(cudaStream_t stream, T* db, T const* dy, Index c, Index inner, Index outer) {
  if (c == 0) return;
  SDLORA_EXPECTS(c <= 0x7fffffff, "[bias] " << c << " channels exceed the grid limit");
  bias_grad_kernel<T><<<unsigned(c), kBlockSize, 0, stream>>>(db, dy, c, inner, outer);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "bias");
}

}  // namespace sdlora::ops::gpu

#define SDLORA_CUDA_INSTANTIATE_BIAS(T)                                                                  \
  template void ::sdlora::ops::gpu::launch_bias_add<T>(cudaStream_t, T*, T const*, ::sdlora::Index,      \
                                                       ::sdlora::Index, ::sdlora::Index);                \
  template void ::sdlora::ops::gpu::launch_bias_grad<T>(cudaStream_t, T*, T const*, ::sdlora::Index,     \
                                                        ::sdlora::Index, ::sdlora::Index);
