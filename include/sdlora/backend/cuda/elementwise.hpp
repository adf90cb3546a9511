/// @file elementwise.hpp
/// @brief CUDA backend of ops/elementwise.hpp: Impl<Map, Cuda> and Impl<Zip, Cuda>. Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
///
/// This file is the exemplar of how a CUDA op is split (style-study §5):
///  1. here: `ops::Impl<Op, Cuda>` (host code) and the *declaration* of a launcher template in `ops::gpu`
///     (`launch_map`), plus `extern template` lines for the instances sdlora ships;
///  2. kernels/elementwise.cuh: the `__global__` kernel and the launcher's *definition* (nvcc only), plus
///     SDLORA_CUDA_INSTANTIATE_MAP / _ZIP for explicit instantiation definitions;
///  3. cuda_kernels.cuh: the instantiation definitions of the shipped instances (the consumer's one .cu file).
/// A functor of your own (e.g. an activation) works the same way: declare it SDLORA_HOST_DEVICE in a header both
/// compilers see, and add SDLORA_CUDA_INSTANTIATE_MAP(float, YourFunctor) to your .cu file after including
/// <sdlora/cuda_kernels.cuh>; a missing instance is a link error naming sdlora::ops::gpu::launch_map<T, F>.
///
/// Scalar types: float and double are computed in their own type; half and bfloat16 are widened to float, f is
/// applied in float, and the result is rounded to nearest even (as the CPU conversions do).
/// Namespace `gpu`, not `cuda`: a lowercase `cuda` inside sdlora would hide ::cuda::std under nvcc.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/elementwise.hpp>       // Map, Zip, Impl, fn::*

namespace sdlora::ops {

namespace gpu {
/// y[i] = f(x[i]) for i < n on `stream` (y may alias x). Defined in kernels/elementwise.cuh.
template <class T, class F>
void launch_map(cudaStream_t stream, T* y, T const* x, Index n, F f);
/// y[i] = f(a[i], b[i]) for i < n on `stream` (y may alias a or b). Defined in kernels/elementwise.cuh.
template <class T, class F>
void launch_zip(cudaStream_t stream, T* y, T const* a, T const* b, Index n, F f);
}  // namespace gpu

template <>
struct Impl<Map, Cuda> {
  template <class T, class F>
  static void run(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> x, F f) {
    gpu::launch_map<T, F>(ctx.stream(), y.data(), x.data(), y.numel(), f);
  }
};

template <>
struct Impl<Zip, Cuda> {
  template <class T, class F>
  static void run(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> a, TensorView<T const, Cuda> b,
                  F f) {
    gpu::launch_zip<T, F>(ctx.stream(), y.data(), a.data(), b.data(), y.numel(), f);
  }
};

}  // namespace sdlora::ops

/// An explicit instantiation declaration (`extern template`) of launch_map<T, F>: the definition is in the TU that
/// includes <sdlora/cuda_kernels.cuh>.
#define SDLORA_CUDA_DECLARE_MAP(T, F) \
  extern template void ::sdlora::ops::gpu::launch_map<T, F>(cudaStream_t, T*, T const*, ::sdlora::Index, F);
#define SDLORA_CUDA_DECLARE_ZIP(T, F)                                                                       \
  extern template void ::sdlora::ops::gpu::launch_zip<T, F>(cudaStream_t, T*, T const*, T const*, ::sdlora::Index, \
                                                            F);

/// The map/zip instances sdlora ships: the named wrappers of ops/elementwise.hpp for every storage type.
#define SDLORA_CUDA_ELEMENTWISE_INSTANCES(MAP, ZIP)                                                             \
  MAP(float, ::sdlora::ops::fn::Identity) MAP(float, ::sdlora::ops::fn::Scale)                                  \
  MAP(double, ::sdlora::ops::fn::Identity) MAP(double, ::sdlora::ops::fn::Scale)                                \
  MAP(::sdlora::half, ::sdlora::ops::fn::Identity) MAP(::sdlora::half, ::sdlora::ops::fn::Scale)                \
  MAP(::sdlora::bfloat16, ::sdlora::ops::fn::Identity) MAP(::sdlora::bfloat16, ::sdlora::ops::fn::Scale)        \
  ZIP(float, ::sdlora::ops::fn::Add) ZIP(float, ::sdlora::ops::fn::Sub) ZIP(float, ::sdlora::ops::fn::Mul)      \
  ZIP(float, ::sdlora::ops::fn::Axpy)                                                                           \
  ZIP(double, ::sdlora::ops::fn::Add) ZIP(double, ::sdlora::ops::fn::Sub) ZIP(double, ::sdlora::ops::fn::Mul)   \
  ZIP(double, ::sdlora::ops::fn::Axpy)                                                                          \
  ZIP(::sdlora::half, ::sdlora::ops::fn::Add) ZIP(::sdlora::half, ::sdlora::ops::fn::Sub)                       \
  ZIP(::sdlora::half, ::sdlora::ops::fn::Mul) ZIP(::sdlora::half, ::sdlora::ops::fn::Axpy)                      \
  ZIP(::sdlora::bfloat16, ::sdlora::ops::fn::Add) ZIP(::sdlora::bfloat16, ::sdlora::ops::fn::Sub)               \
  ZIP(::sdlora::bfloat16, ::sdlora::ops::fn::Mul) ZIP(::sdlora::bfloat16, ::sdlora::ops::fn::Axpy)               \
  ZIP(float, ::sdlora::ops::fn::Guidance) ZIP(double, ::sdlora::ops::fn::Guidance)                              \
  ZIP(::sdlora::half, ::sdlora::ops::fn::Guidance) ZIP(::sdlora::bfloat16, ::sdlora::ops::fn::Guidance)

SDLORA_CUDA_ELEMENTWISE_INSTANCES(SDLORA_CUDA_DECLARE_MAP, SDLORA_CUDA_DECLARE_ZIP)
