/// @file gelu.cuh
/// @brief Kernels and launchers of backend/cuda/gelu.hpp's fused GEGLU, with the fn:: functors of ops/gelu.hpp.
/// nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/gelu.hpp>            // launcher declarations
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, load, store

namespace sdlora::ops::gpu {

// y (rows, n) = a * act(g) with [a | g] = h (rows, 2n).
template <class T, class Act>
__global__ void geglu_forward_kernel(T* y, T const* h, Index rows, Index n, Act act) {
  Index const stride = Index(gridDim.x) * blockDim.x, total = rows * n;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const r = e / n, j = e % n;
    T const* a = h + r * 2 * n;
    y[e] = store<T>(load(a[j]) * act(load(a[n + j])));
  }
}

// dh (rows, 2n) = [dy * act(g) | act'(dy * a, g)] (act_backward(upstream, x) = upstream * act'(x)).
template <class T, class Act, class ActBackward>
__global__ void geglu_backward_kernel(T* dh, T const* h, T const* dy, Index rows, Index n, Act act,
                                      ActBackward act_backward) {
  Index const stride = Index(gridDim.x) * blockDim.x, total = rows * n;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const r = e / n, j = e % n;
    T const* a = h + r * 2 * n;
    auto const d = load(dy[e]), av = load(a[j]), gv = load(a[n + j]);
    dh[r * 2 * n + j] = store<T>(d * act(gv));
    dh[r * 2 * n + n + j] = store<T>(act_backward(d * av, gv));
  }
}

template <class T>
void launch_geglu_forward(cudaStream_t stream, GeluApproximation approximate, T* y, T const* h, Index rows, Index n) {
  Index const total = rows * n;
  if (total == 0) return;
  if (approximate == GeluApproximation::Tanh)
    geglu_forward_kernel<<<grid_size(total), kBlockSize, 0, stream>>>(y, h, rows, n, fn::GeluTanh{});
  else
    geglu_forward_kernel<<<grid_size(total), kBlockSize, 0, stream>>>(y, h, rows, n, fn::Gelu{});
  SDLORA_CUDA_CHECK(cudaGetLastError(), "geglu");
}

template <class T>
void launch_geglu_backward(cudaStream_t stream, GeluApproximation approximate, T* dh, T const* h, T const* dy,
                           Index rows, Index n) {
  Index const total = rows * n;
  if (total == 0) return;
  if (approximate == GeluApproximation::Tanh)
    geglu_backward_kernel<<<grid_size(total), kBlockSize, 0, stream>>>(dh, h, dy, rows, n, fn::GeluTanh{},
                                                                       fn::GeluTanhBackward{});
  else
    geglu_backward_kernel<<<grid_size(total), kBlockSize, 0, stream>>>(dh, h, dy, rows, n, fn::Gelu{},
                                                                       fn::GeluBackward{});
  SDLORA_CUDA_CHECK(cudaGetLastError(), "geglu.backward");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the GEGLU launchers and the GELU map/zip instances for storage type T.
#define SDLORA_CUDA_INSTANTIATE_GEGLU(T) SDLORA_CUDA_GEGLU_LAUNCHERS(template, T)
#define SDLORA_CUDA_INSTANTIATE_GELU(T) \
  SDLORA_CUDA_GELU_INSTANCES(SDLORA_CUDA_INSTANTIATE_MAP, SDLORA_CUDA_INSTANTIATE_ZIP, T)
