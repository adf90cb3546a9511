/// @file embedding.hpp
/// @brief CUDA backend of ops/embedding.hpp: the host ids are copied to the device on the context's stream, then a
/// gather (one thread per output element) or a scatter-add. The scatter-add gives each thread one column and walks the
/// tokens in order, so repeated ids accumulate in the CPU's order without atomics (deterministic, float results equal
/// the CPU's); N is a batch of prompt tokens, so the serial walk is short. Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cstdint>  // std::int32_t
#include <span>     // std::span

#include <cuda_runtime_api.h>  // cudaStream_t, cudaMemcpyAsync

#include <sdlora/backend/cuda/check.hpp>    // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/backend/cuda/memory.hpp>   // Tensor<std::int32_t, Cuda>
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/embedding.hpp>         // Embedding, Impl

namespace sdlora::ops {

namespace gpu {
/// y (n, d) = weight (V, d)[ids (n)], ids on the device. Defined in kernels/embedding.cuh.
template <class T>
void launch_embedding_forward(cudaStream_t stream, T* y, T const* weight, std::int32_t const* ids, Index n, Index d);
/// dweight (V, d)[ids[i]] += dy (n, d)[i] for ids[i] >= row_begin, in token order per column.
template <class T>
void launch_embedding_backward(cudaStream_t stream, T* dweight, T const* dy, std::int32_t const* ids, Index n, Index d,
                               Index row_begin);

/// A device copy of the host ids, queued on `stream` (the source is staged before the call returns).
inline Tensor<std::int32_t, Cuda> upload_ids(cudaStream_t stream, std::span<std::int32_t const> ids) {
  auto device = Tensor<std::int32_t, Cuda>::uninitialized(Shape{Index(ids.size())});  // (N)
  if (!ids.empty())
    SDLORA_CUDA_CHECK(cudaMemcpyAsync(device.data(), ids.data(), device.bytes(), cudaMemcpyHostToDevice, stream),
                      "embedding");
  return device;
}
}  // namespace gpu

template <>
struct Impl<Embedding, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, TensorView<T, Cuda> y, TensorView<T const, Cuda> weight,
                      std::span<std::int32_t const> ids) {
    auto const device_ids = gpu::upload_ids(ctx.stream(), ids);
    gpu::launch_embedding_forward<T>(ctx.stream(), y.data(), weight.data(), device_ids.data(), Index(ids.size()),
                                     weight.dim(1));
  }
  template <class T>
  static void backward(Context<Cuda>& ctx, TensorView<T, Cuda> dweight, TensorView<T const, Cuda> dy,
                       std::span<std::int32_t const> ids, Index row_begin) {
    auto const device_ids = gpu::upload_ids(ctx.stream(), ids);
    gpu::launch_embedding_backward<T>(ctx.stream(), dweight.data(), dy.data(), device_ids.data(), Index(ids.size()),
                                      dweight.dim(1), row_begin);
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_EMBEDDING_LAUNCHERS(PREFIX, T)                                                              \
  PREFIX void ::sdlora::ops::gpu::launch_embedding_forward<T>(cudaStream_t, T*, T const*, std::int32_t const*,  \
                                                              ::sdlora::Index, ::sdlora::Index);                \
  PREFIX void ::sdlora::ops::gpu::launch_embedding_backward<T>(cudaStream_t, T*, T const*, std::int32_t const*, \
                                                               ::sdlora::Index, ::sdlora::Index, ::sdlora::Index);
#define SDLORA_CUDA_DECLARE_EMBEDDING(T) SDLORA_CUDA_EMBEDDING_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_EMBEDDING)
