/// @file dropout.cuh
/// @brief Kernel and launcher of backend/cuda/dropout.hpp. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cstdint>  // std::uint64_t

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/dropout.hpp>         // launcher declaration
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, compute_t, load, store
#include <sdlora/core/rng.hpp>                     // philox_block, philox_uniform

namespace sdlora::ops::gpu {

// Thread blk: elements [4 blk, 4 blk + 4) use the words of Philox block blk of (seed, counter), as on the CPU.
template <class T>
__global__ void dropout_kernel(Dropout op, double keep_scale, T* y, T const* x, Index n, Index blocks) {
  using C = compute_t<T>;
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index blk = Index(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks; blk += stride) {
    PhiloxBlock const words = philox_block(op.seed, op.counter, std::uint64_t(blk));
    Index const end = n < blk * 4 + 4 ? n : blk * 4 + 4;
    for (Index i = blk * 4; i < end; ++i)
      y[i] =
          double(philox_uniform(words.v[i - blk * 4])) >= op.p ? store<T>(load(x[i]) * C(keep_scale)) : store<T>(C(0));
  }
}

template <class T>
void launch_dropout(cudaStream_t stream, Dropout const& op, T* y, T const* x, Index n) {
  Index const blocks = (n + 3) / 4;
  if (blocks == 0) return;
  dropout_kernel<T><<<grid_size(blocks), kBlockSize, 0, stream>>>(op, 1.0 / (1.0 - op.p), y, x, n, blocks);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "dropout");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definition of the dropout launcher for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_DROPOUT(T) SDLORA_CUDA_DROPOUT_LAUNCHERS(template, T)
