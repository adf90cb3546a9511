/// @file upsample.cuh
/// @brief Kernels and launchers of backend/cuda/upsample.hpp. nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <cmath>  // floor

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, load, store
#include <sdlora/backend/cuda/upsample.hpp>        // launcher declarations, UpsampleDims

namespace sdlora::ops::gpu {

/// The input index that output index o copies: torch's nearest_idx, as cpu::nearest_sources (exact for 1x and 2x,
/// floor(o * float(in / out)) in float otherwise). Monotone in o.
SDLORA_DEVICE Index nearest_source(Index o, Index in, Index out) {
  if (out == in) return o;
  if (out == 2 * in) return o >> 1;
  float const scale = float(in) / float(out);
  Index const s = Index(floor(float(o) * scale));
  return s < in - 1 ? s : in - 1;
}

/// The first output index whose source is >= i (a lower bound, then a short forward scan).
SDLORA_DEVICE Index first_copy(Index i, Index in, Index out) {
  Index o = i * out / in - 2;
  o = o < 0 ? 0 : o;
  while (o < out && nearest_source(o, in, out) < i) ++o;
  return o;
}

template <class T>
__global__ void upsample_nearest_forward_kernel(UpsampleDims d, T* y, T const* x, Index total) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const ow = e % d.wo, oh = (e / d.wo) % d.ho, p = e / (d.wo * d.ho);
    y[e] = x[(p * d.h + nearest_source(oh, d.h, d.ho)) * d.w + nearest_source(ow, d.w, d.wo)];
  }
}

// dx[p, ih, iw] = sum over oh with source ih (ascending) of sum over ow with source iw (ascending) of dy[p, oh, ow]:
// the order in which the CPU adds them.
template <class T>
__global__ void upsample_nearest_backward_kernel(UpsampleDims d, T* dx, T const* dy, Index total) {
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const iw = e % d.w, ih = (e / d.w) % d.h, p = e / (d.w * d.h);
    Index const oh0 = first_copy(ih, d.h, d.ho), ow0 = first_copy(iw, d.w, d.wo);
    compute_t<T> acc = 0;
    for (Index oh = oh0; oh < d.ho && nearest_source(oh, d.h, d.ho) == ih; ++oh)
      for (Index ow = ow0; ow < d.wo && nearest_source(ow, d.w, d.wo) == iw; ++ow)
        acc += load(dy[(p * d.ho + oh) * d.wo + ow]);
    dx[e] = store<T>(acc);
  }
}

template <class T>
void launch_upsample_nearest_forward(cudaStream_t stream, UpsampleDims const& d, T* y, T const* x) {
  Index const total = d.planes * d.ho * d.wo;
  if (total == 0) return;
  upsample_nearest_forward_kernel<T><<<grid_size(total), kBlockSize, 0, stream>>>(d, y, x, total);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "upsample_nearest");
}

template <class T>
void launch_upsample_nearest_backward(cudaStream_t stream, UpsampleDims const& d, T* dx, T const* dy) {
  Index const total = d.planes * d.h * d.w;
  if (total == 0) return;
  upsample_nearest_backward_kernel<T><<<grid_size(total), kBlockSize, 0, stream>>>(d, dx, dy, total);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "upsample_nearest.backward");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the upsample launchers for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_UPSAMPLE(T) SDLORA_CUDA_UPSAMPLE_LAUNCHERS(template, T)
