/// @file conv.hpp
/// @brief CUDA backend of ops/conv.hpp: an im2col kernel + one cuBLAS strided-batched GEMM per chunk of images
/// (the weight is broadcast over the chunk), the input gradient as a GEMM into columns + a gathering col2im kernel
/// (one thread per input pixel: no atomics, the CPU's summation order), the weight gradient as one accumulating
/// GEMM per image. A 1x1, stride-1, unpadded convolution is a plain GEMM on the images. Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <algorithm>  // std::max, std::min

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/bias.hpp>     // Impl<Bias, Cuda>
#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/gemm.hpp>     // Impl<Gemm, Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/backend/cuda/memory.hpp>   // Tensor<T, Cuda> column buffers
#include <sdlora/core/config.hpp>           // SDLORA_HOST_DEVICE
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/bias.hpp>              // bias_add_channels
#include <sdlora/ops/conv.hpp>              // Conv2d, Conv2dGeometry, Impl
#include <sdlora/ops/gemm.hpp>              // gemm

namespace sdlora::ops {

namespace gpu {
/// The sizes of one convolution (as cpu::ConvDims) plus its geometry, passed by value to the kernels.
struct ConvDims {
  Index c, h, w;    // input channels and spatial size
  Index o, kh, kw;  // output channels and kernel size
  Index ho, wo;     // output spatial size
  Index stride, pad_top, pad_left;
  SDLORA_HOST_DEVICE Index k() const { return c * kh * kw; }  // GEMM depth: rows of the column matrix
  SDLORA_HOST_DEVICE Index p() const { return ho * wo; }      // output pixels: columns of the column matrix
  SDLORA_HOST_DEVICE Index image() const { return c * h * w; }
};

inline ConvDims conv_dims(Shape const& x, Shape const& w, Shape const& y, Conv2dGeometry const& g) {
  return {x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], g.stride, g.pad.top, g.pad.left};
}

/// cols (images, C*kh*kw, H_out*W_out) from x (images, C, H, W). Defined in kernels/conv.cuh.
template <class T>
void launch_im2col(cudaStream_t stream, ConvDims const& d, T* cols, T const* x, Index images);
/// dx (images, C, H, W) = (accumulate ? dx : 0) + col2im(dcols (images, C*kh*kw, H_out*W_out)).
template <class T>
void launch_col2im(cudaStream_t stream, ConvDims const& d, T* dx, T const* dcols, Index images, bool accumulate);

/// At most this many column-buffer elements at once (128 MiB of float); at least one image per chunk.
inline constexpr Index kConvColumnBudget = Index(1) << 25;
inline Index conv_chunk(ConvDims const& d, Index n) {
  return std::max<Index>(1, std::min<Index>(n, kConvColumnBudget / std::max<Index>(1, d.k() * d.p())));
}
}  // namespace gpu

template <>
struct Impl<Conv2d, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, Conv2d const& op, TensorView<T, Cuda> y, TensorView<T const, Cuda> x,
                      TensorView<T const, Cuda> w, TensorView<T const, Cuda> b) {
    gpu::ConvDims const d = gpu::conv_dims(x.shape(), w.shape(), y.shape(), op.geometry);
    Index const n = x.dim(0), k = d.k(), p = d.p();
    Gemm const mm{.beta = op.accumulate ? 1.0 : 0.0};
    TensorView<T const, Cuda> const wm(w.data(), Shape{d.o, k});  // (O, C*kh*kw), broadcast over images
    if (pointwise(d)) {
      gemm<T, Cuda>(ctx, TensorView<T, Cuda>(y.data(), Shape{n, d.o, p}), wm,
                    TensorView<T const, Cuda>(x.data(), Shape{n, k, p}), mm);  // (N, O, P) = (O, C) @ (N, C, P)
    } else {
      Index const chunk = gpu::conv_chunk(d, n);
      auto cols = Tensor<T, Cuda>::uninitialized(Shape{chunk, k, p});  // (chunk, C*kh*kw, P)
      for (Index i0 = 0; i0 < n; i0 += chunk) {
        Index const nb = std::min(chunk, n - i0);
        gpu::launch_im2col<T>(ctx.stream(), d, cols.data(), x.data() + i0 * d.image(), nb);
        gemm<T, Cuda>(ctx, TensorView<T, Cuda>(y.data() + i0 * d.o * p, Shape{nb, d.o, p}), wm,
                      TensorView<T const, Cuda>(cols.data(), Shape{nb, k, p}), mm);
      }
    }
    if (b.data() != nullptr) bias_add_channels<T, Cuda>(ctx, y, b);
  }

  template <class T>
  static void backward_input(Context<Cuda>& ctx, Conv2d const& op, TensorView<T, Cuda> dx, TensorView<T const, Cuda> dy,
                             TensorView<T const, Cuda> w) {
    gpu::ConvDims const d = gpu::conv_dims(dx.shape(), w.shape(), dy.shape(), op.geometry);
    Index const n = dx.dim(0), k = d.k(), p = d.p();
    TensorView<T const, Cuda> const wm(w.data(), Shape{d.o, k});  // (O, C*kh*kw)
    if (pointwise(d)) {
      gemm<T, Cuda>(ctx, TensorView<T, Cuda>(dx.data(), Shape{n, k, p}), wm,
                    TensorView<T const, Cuda>(dy.data(), Shape{n, d.o, p}),
                    {.trans_a = true, .beta = op.accumulate ? 1.0 : 0.0});  // (N, C, P) = (O, C)^T @ (N, O, P)
      return;
    }
    Index const chunk = gpu::conv_chunk(d, n);
    auto dcols = Tensor<T, Cuda>::uninitialized(Shape{chunk, k, p});  // (chunk, C*kh*kw, P)
    for (Index i0 = 0; i0 < n; i0 += chunk) {
      Index const nb = std::min(chunk, n - i0);
      gemm<T, Cuda>(ctx, TensorView<T, Cuda>(dcols.data(), Shape{nb, k, p}), wm,
                    TensorView<T const, Cuda>(dy.data() + i0 * d.o * p, Shape{nb, d.o, p}), {.trans_a = true});
      gpu::launch_col2im<T>(ctx.stream(), d, dx.data() + i0 * d.image(), dcols.data(), nb, op.accumulate);
    }
  }

  template <class T>
  static void backward_weight(Context<Cuda>& ctx, Conv2d const& op, TensorView<T, Cuda> dw,
                              TensorView<T const, Cuda> dy, TensorView<T const, Cuda> x) {
    gpu::ConvDims const d = gpu::conv_dims(x.shape(), dw.shape(), dy.shape(), op.geometry);
    Index const n = x.dim(0), k = d.k(), p = d.p();
    bool const is_pointwise = pointwise(d);
    Index const chunk = is_pointwise ? n : gpu::conv_chunk(d, n);
    // (chunk, C*kh*kw, P); the images themselves when pointwise
    auto cols = is_pointwise ? Tensor<T, Cuda>() : Tensor<T, Cuda>::uninitialized(Shape{chunk, k, p});
    TensorView<T, Cuda> const dwm(dw.data(), Shape{d.o, k});  // (O, C*kh*kw)
    for (Index i0 = 0; i0 < n; i0 += chunk) {
      Index const nb = std::min(chunk, n - i0);
      if (!is_pointwise) gpu::launch_im2col<T>(ctx.stream(), d, cols.data(), x.data() + i0 * d.image(), nb);
      for (Index i = 0; i < nb; ++i) {
        T const* ci = is_pointwise ? x.data() + (i0 + i) * d.image() : cols.data() + i * k * p;
        gemm<T, Cuda>(ctx, dwm, TensorView<T const, Cuda>(dy.data() + (i0 + i) * d.o * p, Shape{d.o, p}),
                      TensorView<T const, Cuda>(ci, Shape{k, p}), {.trans_b = true, .beta = 1.0});  // += dy_i cols_i^T
      }
    }
  }

 private:
  static bool pointwise(gpu::ConvDims const& d) {
    return d.kh == 1 && d.kw == 1 && d.stride == 1 && d.pad_top == 0 && d.pad_left == 0 && d.ho == d.h && d.wo == d.w;
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_CONV_LAUNCHERS(PREFIX, T)                                                                       \
  PREFIX void ::sdlora::ops::gpu::launch_im2col<T>(cudaStream_t, ::sdlora::ops::gpu::ConvDims const&, T*, T const*, \
                                                   ::sdlora::Index);                                                \
  PREFIX void ::sdlora::ops::gpu::launch_col2im<T>(cudaStream_t, ::sdlora::ops::gpu::ConvDims const&, T*, T const*, \
                                                   ::sdlora::Index, bool);
#define SDLORA_CUDA_DECLARE_CONV(T) SDLORA_CUDA_CONV_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_CONV)
