/// @file bias.hpp
/// @brief CUDA backend of ops/bias.hpp: bias add (grid-stride) and bias gradient (one block per channel, summed in
/// double). Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/bias.hpp>              // Bias, Impl

namespace sdlora::ops {

namespace gpu {
/// y (outer, c, inner) += b (c), for n = outer * c * inner elements. Defined in kernels/bias.cuh.
template <class T>
void launch_bias_add(cudaStream_t stream, T* y, T const* b, Index c, Index inner, Index n);
/// db (c) += sum over o, i of dy (outer, c, inner), accumulated in double. Defined in kernels/bias.cuh.
template <class T>
void launch_bias_grad(cudaStream_t stream, T* db, T const* dy, Index c, Index inner, Index outer);
}  // namespace gpu

template <>
struct Impl<Bias, Cuda> {
  template <class T>
  static void add(Context<Cuda>& ctx, Bias op, TensorView<T, Cuda> y, TensorView<T const, Cuda> b) {
    SDLORA_EXPECTS(y.is_contiguous() && b.is_contiguous(), "[bias] operands must be contiguous");
    gpu::launch_bias_add<T>(ctx.stream(), y.data(), b.data(), b.numel(), op.inner, y.numel());
  }
  template <class T>
  static void grad(Context<Cuda>& ctx, Bias op, TensorView<T, Cuda> db, TensorView<T const, Cuda> dy) {
    SDLORA_EXPECTS(db.is_contiguous() && dy.is_contiguous(), "[bias] operands must be contiguous");
    Index const c = db.numel();
    Index const outer = c * op.inner == 0 ? 0 : dy.numel() / (c * op.inner);
    gpu::launch_bias_grad<T>(ctx.stream(), db.data(), dy.data(), c, op.inner, outer);
  }
};

}  // namespace sdlora::ops

#define SDLORA_CUDA_DECLARE_BIAS(T)                                                                              \
  extern template void ::sdlora::ops::gpu::launch_bias_add<T>(cudaStream_t, T*, T const*, ::sdlora::Index,      \
                                                              ::sdlora::Index, ::sdlora::Index);                 \
  extern template void ::sdlora::ops::gpu::launch_bias_grad<T>(cudaStream_t, T*, T const*, ::sdlora::Index,     \
                                                               ::sdlora::Index, ::sdlora::Index);
SDLORA_CUDA_DECLARE_BIAS(float)
SDLORA_CUDA_DECLARE_BIAS(double)
SDLORA_CUDA_DECLARE_BIAS(::sdlora::half)
SDLORA_CUDA_DECLARE_BIAS(::sdlora::bfloat16)
