/// @file softmax.cuh
/// @brief Kernels and launchers of backend/cuda/softmax.hpp. A fully masked row (all -inf) gives zeros, as on the
/// CPU. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cmath>  // exp

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // block_allreduce, compute_t, load, store
#include <sdlora/backend/cuda/softmax.hpp>         // launcher declarations

namespace sdlora::ops::gpu {

inline constexpr int kSoftmaxThreads = 128;

// Block r: y row r = exp(x - max) / sum(exp(x - max)). Each thread reads and writes the same indices in every pass,
// so y may alias x.
template <class T>
__global__ void softmax_forward_kernel(T* y, T const* x, Index n) {
  using C = compute_t<T>;
  __shared__ double scratch[kSoftmaxThreads / kWarpSize + 1];
  T const* in = x + Index(blockIdx.x) * n;
  T* out = y + Index(blockIdx.x) * n;
  C m = -std::numeric_limits<C>::infinity();
  for (Index j = threadIdx.x; j < n; j += blockDim.x) m = fmax(m, load(in[j]));
  C const row_max = C(block_allreduce(double(m), MaxOp{}, threadIdx.x, blockDim.x, scratch));
  if (row_max == -std::numeric_limits<C>::infinity()) {
    for (Index j = threadIdx.x; j < n; j += blockDim.x) out[j] = store<T>(C(0));
    return;
  }
  C s = 0;
  for (Index j = threadIdx.x; j < n; j += blockDim.x) s += exp(load(in[j]) - row_max);
  C const inv = C(1) / C(block_allreduce(double(s), SumOp{}, threadIdx.x, blockDim.x, scratch));
  for (Index j = threadIdx.x; j < n; j += blockDim.x) out[j] = store<T>(exp(load(in[j]) - row_max) * inv);
}

// Block r: dx row r = y * (dy - dot(dy, y)); dx may alias dy (same-index reads and writes per thread).
template <class T>
__global__ void softmax_backward_kernel(T* dx, T const* y, T const* dy, Index n) {
  using C = compute_t<T>;
  __shared__ double scratch[kSoftmaxThreads / kWarpSize + 1];
  Index const base = Index(blockIdx.x) * n;
  C acc = 0;
  for (Index j = threadIdx.x; j < n; j += blockDim.x) acc += load(dy[base + j]) * load(y[base + j]);
  C const dot = C(block_allreduce(double(acc), SumOp{}, threadIdx.x, blockDim.x, scratch));
  for (Index j = threadIdx.x; j < n; j += blockDim.x)
    dx[base + j] = store<T>(load(y[base + j]) * (load(dy[base + j]) - dot));
}

template <class T>
void launch_softmax_forward(cudaStream_t stream, T* y, T const* x, Index rows, Index n) {
  if (rows == 0 || n == 0) return;
  SDLORA_EXPECTS(rows <= 0x7fffffff, "[softmax] " << rows << " rows exceed the grid limit");
  softmax_forward_kernel<T><<<unsigned(rows), kSoftmaxThreads, 0, stream>>>(y, x, n);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "softmax");
}

template <class T>
void launch_softmax_backward(cudaStream_t stream, T* dx, T const* y, T const* dy, Index rows, Index n) {
  if (rows == 0 || n == 0) return;
  SDLORA_EXPECTS(rows <= 0x7fffffff, "[softmax.backward] " << rows << " rows exceed the grid limit");
  softmax_backward_kernel<T><<<unsigned(rows), kSoftmaxThreads, 0, stream>>>(dx, y, dy, n);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "softmax.backward");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the softmax launchers for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_SOFTMAX(T) SDLORA_CUDA_SOFTMAX_LAUNCHERS(template, T)
