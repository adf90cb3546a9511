/// @file concat.hpp
/// @brief CUDA backend of ops/concat.hpp: each operand is a strided 2-D copy (N rows of one sample's elements), one
/// cudaMemcpy2DAsync per operand on the context's stream; no kernel. Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cstddef>  // std::size_t

#include <cuda_runtime_api.h>  // cudaMemcpy2DAsync

#include <sdlora/backend/cuda/check.hpp>    // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/ops/concat.hpp>            // ConcatChannels, Impl

namespace sdlora::ops {

template <>
struct Impl<ConcatChannels, Cuda> {
  template <class T>
  static void concat(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> a,
                     TensorView<T const, Cuda> b) {
    Index const n = y.dim(0), sa = a.numel() / n, sb = b.numel() / n;
    copy_rows(ctx, y.data(), sa + sb, a.data(), sa, sa, n);       // y[:, :Ca] = a
    copy_rows(ctx, y.data() + sa, sa + sb, b.data(), sb, sb, n);  // y[:, Ca:] = b
  }
  template <class T>
  static void split(Context<Cuda>& ctx, TensorView<T, Cuda> a, TensorView<T, Cuda> b, TensorView<T const, Cuda> y) {
    Index const n = y.dim(0), sa = a.numel() / n, sb = b.numel() / n;
    copy_rows(ctx, a.data(), sa, y.data(), sa + sb, sa, n);
    copy_rows(ctx, b.data(), sb, y.data() + sa, sa + sb, sb, n);
  }

 private:
  /// rows x width elements from src (row pitch src_pitch elements) to dst (row pitch dst_pitch elements).
  template <class T>
  static void copy_rows(Context<Cuda>& ctx, T* dst, Index dst_pitch, T const* src, Index src_pitch, Index width,
                        Index rows) {
    if (rows == 0 || width == 0) return;
    std::size_t const e = sizeof(T);
    SDLORA_CUDA_CHECK(
        cudaMemcpy2DAsync(dst, std::size_t(dst_pitch) * e, src, std::size_t(src_pitch) * e, std::size_t(width) * e,
                          std::size_t(rows), cudaMemcpyDeviceToDevice, ctx.stream()),
        "concat_channels");
  }
};

}  // namespace sdlora::ops
