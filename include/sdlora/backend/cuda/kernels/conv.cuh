/// @file conv.cuh
/// @brief Kernels and launchers of backend/cuda/conv.hpp: im2col (one thread per column element) and a gathering
/// col2im (one thread per input pixel, taps summed in the CPU's (i, j) order, no atomics). nvcc only.
/// Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/conv.hpp>            // launcher declarations, ConvDims
#include <sdlora/backend/cuda/kernels/common.cuh>  // grid_size, kBlockSize, load, store

namespace sdlora::ops::gpu {

// cols (images, C*kh*kw, P) from x (images, C, H, W): element (img, (c, i, j), (oh, ow)) is
// x[img, c, oh*s - pad_top + i, ow*s - pad_left + j], or 0 in the padding.
template <class T>
__global__ void im2col_kernel(ConvDims d, T* cols, T const* x, Index total) {
  Index const stride = Index(gridDim.x) * blockDim.x, p = d.p(), k = d.k();
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const pix = e % p, row = (e / p) % k, img = e / (p * k);
    Index const oh = pix / d.wo, ow = pix % d.wo;
    Index const c = row / (d.kh * d.kw), i = (row / d.kw) % d.kh, j = row % d.kw;
    Index const ih = oh * d.stride - d.pad_top + i, iw = ow * d.stride - d.pad_left + j;
    bool const inside = ih >= 0 && ih < d.h && iw >= 0 && iw < d.w;
    cols[e] = inside ? x[img * d.image() + (c * d.h + ih) * d.w + iw] : store<T>(compute_t<T>(0));
  }
}

// dx (images, C, H, W): every pixel gathers the column entries of the taps that read it, in (i, j) order.
template <class T>
__global__ void col2im_kernel(ConvDims d, T* dx, T const* dcols, Index total, bool accumulate) {
  using C = compute_t<T>;
  Index const stride = Index(gridDim.x) * blockDim.x, p = d.p(), k = d.k();
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    Index const iw = e % d.w, ih = (e / d.w) % d.h, c = (e / (d.w * d.h)) % d.c, img = e / d.image();
    T const* src = dcols + img * k * p;
    C acc = accumulate ? load(dx[e]) : C(0);
    for (Index i = 0; i < d.kh; ++i) {
      Index const th = ih + d.pad_top - i;  // = oh * stride for the output row that reads (ih) with tap i
      if (th < 0 || th % d.stride != 0 || th / d.stride >= d.ho) continue;
      Index const oh = th / d.stride;
      for (Index j = 0; j < d.kw; ++j) {
        Index const tw = iw + d.pad_left - j;
        if (tw < 0 || tw % d.stride != 0 || tw / d.stride >= d.wo) continue;
        acc += load(src[((c * d.kh + i) * d.kw + j) * p + oh * d.wo + tw / d.stride]);
      }
    }
    dx[e] = store<T>(acc);
  }
}

template <class T>
void launch_im2col(cudaStream_t stream, ConvDims const& d, T* cols, T const* x, Index images) {
  Index const total = images * d.k() * d.p();
  if (total == 0) return;
  im2col_kernel<T><<<grid_size(total), kBlockSize, 0, stream>>>(d, cols, x, total);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "conv2d.im2col");
}

template <class T>
void launch_col2im(cudaStream_t stream, ConvDims const& d, T* dx, T const* dcols, Index images, bool accumulate) {
  Index const total = images * d.image();
  if (total == 0) return;
  col2im_kernel<T><<<grid_size(total), kBlockSize, 0, stream>>>(d, dx, dcols, total, accumulate);
  SDLORA_CUDA_CHECK(cudaGetLastError(), "conv2d.col2im");
}

}  // namespace sdlora::ops::gpu

/// Explicit instantiation definitions of the conv launchers for storage type T (in the one kernels .cu file).
#define SDLORA_CUDA_INSTANTIATE_CONV(T) SDLORA_CUDA_CONV_LAUNCHERS(template, T)
