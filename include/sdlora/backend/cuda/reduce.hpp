/// @file reduce.hpp
/// @brief CUDA backend of ops/reduce.hpp: each block reduces its grid-stride share in double, the host combines the
/// per-block partials in a fixed order (so results are deterministic). Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <algorithm>  // std::max
#include <vector>     // std::vector

#include <cuda_runtime_api.h>  // cudaStream_t, cudaMemcpyAsync, cudaStreamSynchronize

#include <sdlora/backend/cuda/check.hpp>    // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // reduce_blocks
#include <sdlora/backend/cuda/memory.hpp>   // Tensor<double, Cuda>
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/reduce.hpp>            // Reduce, Impl

namespace sdlora::ops {

namespace gpu {
/// partials[block] (reduce_blocks(n)) = sum (or max) over the block's share of f(a[i], b[i]) in double.
/// Defined in kernels/reduce.cuh.
template <class T>
void launch_reduce(cudaStream_t stream, Reduce::Kind kind, double* partials, T const* a, T const* b, Index n);
}  // namespace gpu

template <>
struct Impl<Reduce, Cuda> {
  template <class T>
  static double run(Context<Cuda>& ctx, Reduce op, TensorView<T const, Cuda> a, TensorView<T const, Cuda> b) {
    SDLORA_EXPECTS(a.is_contiguous() && b.is_contiguous(), "[reduce] operands must be contiguous");
    Index const n = a.numel();
    if (n == 0) return 0.0;
    int const blocks = gpu::reduce_blocks(n);
    auto partials = Tensor<double, Cuda>::uninitialized(Shape{blocks});  // (blocks)
    gpu::launch_reduce<T>(ctx.stream(), op.kind, partials.data(), a.data(), b.data(), n);
    std::vector<double> host(std::size_t(blocks), 0.0);                   // (blocks)
    SDLORA_CUDA_CHECK(cudaMemcpyAsync(host.data(), partials.data(), partials.bytes(), cudaMemcpyDeviceToHost,
                                      ctx.stream()),
                      "reduce");
    ctx.synchronize();
    double acc = 0.0;
    for (double p : host) acc = op.kind == Reduce::Kind::MaxAbs ? std::max(acc, p) : acc + p;
    return acc;
  }
};

}  // namespace sdlora::ops

#define SDLORA_CUDA_DECLARE_REDUCE(T)                                                                            \
  extern template void ::sdlora::ops::gpu::launch_reduce<T>(cudaStream_t, ::sdlora::ops::Reduce::Kind, double*, \
                                                            T const*, T const*, ::sdlora::Index);
SDLORA_CUDA_DECLARE_REDUCE(float)
SDLORA_CUDA_DECLARE_REDUCE(double)
SDLORA_CUDA_DECLARE_REDUCE(::sdlora::half)
SDLORA_CUDA_DECLARE_REDUCE(::sdlora::bfloat16)
