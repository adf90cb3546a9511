/// @file gelu.hpp
/// @brief CUDA backend of ops/gelu.hpp: the fused GEGLU (one thread per output element; backward writes both halves
/// of dh), and the map/zip instances that GELU and QuickGELU run through (the fn:: functors of ops/gelu.hpp, so the
/// device evaluates the CPU's formulas). Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>      // Context<Cuda>
#include <sdlora/backend/cuda/elementwise.hpp>  // Impl<Map, Cuda>, Impl<Zip, Cuda>, SDLORA_CUDA_DECLARE_MAP / _ZIP
#include <sdlora/backend/cuda/launch.hpp>       // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/core/dtype.hpp>                // half, bfloat16
#include <sdlora/ops/gelu.hpp>                  // Geglu, GeluApproximation, Impl, fn::Gelu...

namespace sdlora::ops {

namespace gpu {
/// y (rows, n) = h[:, :n] * gelu(h[:, n:]) for h (rows, 2n). Defined in kernels/gelu.cuh.
template <class T>
void launch_geglu_forward(cudaStream_t stream, GeluApproximation approximate, T* y, T const* h, Index rows, Index n);
/// dh (rows, 2n) = [dy * gelu(g) | dy * a * gelu'(g)].
template <class T>
void launch_geglu_backward(cudaStream_t stream, GeluApproximation approximate, T* dh, T const* h, T const* dy,
                           Index rows, Index n);
}  // namespace gpu

template <>
struct Impl<Geglu, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, Geglu op, TensorView<T, Cuda> y, TensorView<T const, Cuda> h) {
    Index const n = y.dim(-1);
    gpu::launch_geglu_forward<T>(ctx.stream(), op.approximate, y.data(), h.data(), n == 0 ? 0 : y.numel() / n, n);
  }
  template <class T>
  static void backward(Context<Cuda>& ctx, Geglu op, TensorView<T, Cuda> dh, TensorView<T const, Cuda> h,
                       TensorView<T const, Cuda> dy) {
    Index const n = dy.dim(-1);
    gpu::launch_geglu_backward<T>(ctx.stream(), op.approximate, dh.data(), h.data(), dy.data(),
                                  n == 0 ? 0 : dy.numel() / n, n);
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_GEGLU_LAUNCHERS(PREFIX, T)                                                                 \
  PREFIX void ::sdlora::ops::gpu::launch_geglu_forward<T>(cudaStream_t, ::sdlora::ops::GeluApproximation, T*,  \
                                                          T const*, ::sdlora::Index, ::sdlora::Index);         \
  PREFIX void ::sdlora::ops::gpu::launch_geglu_backward<T>(cudaStream_t, ::sdlora::ops::GeluApproximation, T*, \
                                                           T const*, T const*, ::sdlora::Index, ::sdlora::Index);
#define SDLORA_CUDA_DECLARE_GEGLU(T) SDLORA_CUDA_GEGLU_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_GEGLU)

/// The map/zip instances of gelu_forward / gelu_backward / quick_gelu_forward / quick_gelu_backward for type T.
#define SDLORA_CUDA_GELU_INSTANCES(MAP, ZIP, T)                                                                    \
  MAP(T, ::sdlora::ops::fn::Gelu)                                                                                  \
  MAP(T, ::sdlora::ops::fn::GeluTanh) MAP(T, ::sdlora::ops::fn::QuickGelu) ZIP(T, ::sdlora::ops::fn::GeluBackward) \
      ZIP(T, ::sdlora::ops::fn::GeluTanhBackward) ZIP(T, ::sdlora::ops::fn::QuickGeluBackward)
#define SDLORA_CUDA_DECLARE_GELU(T) SDLORA_CUDA_GELU_INSTANCES(SDLORA_CUDA_DECLARE_MAP, SDLORA_CUDA_DECLARE_ZIP, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_GELU)
