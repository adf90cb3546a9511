/// @file norm.hpp
/// @brief CUDA backend of ops/norm.hpp: GroupNorm (+ fused SiLU) and LayerNorm, forward and backward. One block per
/// (sample, group) or per row; two-pass statistics (sum, then squared deviations) with per-thread partials in the
/// compute type and block reductions in double; parameter gradients from per-(sample, channel) or per-row-chunk
/// partials summed in a fixed order (deterministic, no atomics). Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/backend/cuda/memory.hpp>   // Tensor<double, Cuda> scratch
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/norm.hpp>              // GroupNorm, LayerNorm, Impl

namespace sdlora::ops {

namespace gpu {
/// x viewed as (N, G, C/G, S): S is the product of the axes after C.
struct GroupNormDims {
  Index n, c, groups, s;
  double eps;
  bool silu;
};
/// x viewed as (rows, D).
struct LayerNormDims {
  Index rows, d;
  double eps;
};

/// y, mean (N, G), rstd (N, G) from x (N, C, S); gamma, beta (C) may be null. Defined in kernels/norm.cuh.
template <class T>
void launch_group_norm_forward(cudaStream_t stream, GroupNormDims const& d, T* y, T* mean, T* rstd, T const* x,
                               T const* gamma, T const* beta);
/// dx (N, C, S); dgamma, dbeta (C) += (each may be null); sums (2, N, C) doubles of scratch.
template <class T>
void launch_group_norm_backward(cudaStream_t stream, GroupNormDims const& d, T* dx, T* dgamma, T* dbeta, T const* dy,
                                T const* x, T const* mean, T const* rstd, T const* gamma, T const* beta, double* sums);
/// y, mean (rows), rstd (rows) from x (rows, D); gamma, beta (D) may be null.
template <class T>
void launch_layer_norm_forward(cudaStream_t stream, LayerNormDims const& d, T* y, T* mean, T* rstd, T const* x,
                               T const* gamma, T const* beta);
/// dx (rows, D) only; gamma (D) may be null.
template <class T>
void launch_layer_norm_backward_input(cudaStream_t stream, LayerNormDims const& d, T* dx, T const* dy, T const* x,
                                      T const* mean, T const* rstd, T const* gamma);
/// dgamma, dbeta (D) += (each may be null) through partials (2, layer_norm_chunks(rows), D) doubles of scratch.
template <class T>
void launch_layer_norm_backward_params(cudaStream_t stream, LayerNormDims const& d, T* dgamma, T* dbeta, T const* dy,
                                       T const* x, T const* mean, T const* rstd, double* partials);

/// Row chunks of the LayerNorm parameter-gradient partials.
inline Index layer_norm_chunks(Index rows) { return rows < 128 ? rows : 128; }
}  // namespace gpu

template <>
struct Impl<GroupNorm, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, GroupNorm const& op, TensorView<T, Cuda> y, TensorView<T, Cuda> mean,
                      TensorView<T, Cuda> rstd, TensorView<T const, Cuda> x, TensorView<T const, Cuda> gamma,
                      TensorView<T const, Cuda> beta) {
    gpu::GroupNormDims const d = dims(op, x);
    gpu::launch_group_norm_forward<T>(ctx.stream(), d, y.data(), mean.data(), rstd.data(), x.data(), gamma.data(),
                                      beta.data());
  }

  template <class T>
  static void backward(Context<Cuda>& ctx, GroupNorm const& op, TensorView<T, Cuda> dx, TensorView<T, Cuda> dgamma,
                       TensorView<T, Cuda> dbeta, TensorView<T const, Cuda> dy, TensorView<T const, Cuda> x,
                       TensorView<T const, Cuda> mean, TensorView<T const, Cuda> rstd, TensorView<T const, Cuda> gamma,
                       TensorView<T const, Cuda> beta) {
    gpu::GroupNormDims const d = dims(op, x);
    auto sums = Tensor<double, Cuda>::uninitialized(Shape{2, d.n, d.c});  // (2, N, C) sum dz, sum dz xhat
    gpu::launch_group_norm_backward<T>(ctx.stream(), d, dx.data(), dgamma.data(), dbeta.data(), dy.data(), x.data(),
                                       mean.data(), rstd.data(), gamma.data(), beta.data(), sums.data());
  }

 private:
  template <class V>
  static gpu::GroupNormDims dims(GroupNorm const& op, V const& x) {
    Index const n = x.dim(0), c = x.dim(1);
    return {n, c, op.groups, n * c == 0 ? 0 : x.numel() / (n * c), op.eps, op.silu};
  }
};

template <>
struct Impl<LayerNorm, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, LayerNorm const& op, TensorView<T, Cuda> y, TensorView<T, Cuda> mean,
                      TensorView<T, Cuda> rstd, TensorView<T const, Cuda> x, TensorView<T const, Cuda> gamma,
                      TensorView<T const, Cuda> beta) {
    Index const d = x.dim(-1);
    gpu::launch_layer_norm_forward<T>(ctx.stream(), {d == 0 ? 0 : x.numel() / d, d, op.eps}, y.data(), mean.data(),
                                      rstd.data(), x.data(), gamma.data(), beta.data());
  }

  template <class T>
  static void backward(Context<Cuda>& ctx, LayerNorm const& op, TensorView<T, Cuda> dx, TensorView<T, Cuda> dgamma,
                       TensorView<T, Cuda> dbeta, TensorView<T const, Cuda> dy, TensorView<T const, Cuda> x,
                       TensorView<T const, Cuda> mean, TensorView<T const, Cuda> rstd,
                       TensorView<T const, Cuda> gamma) {
    Index const d = x.dim(-1);
    gpu::LayerNormDims const dims{d == 0 ? 0 : x.numel() / d, d, op.eps};
    gpu::launch_layer_norm_backward_input<T>(ctx.stream(), dims, dx.data(), dy.data(), x.data(), mean.data(),
                                             rstd.data(), gamma.data());
    if (dgamma.data() == nullptr && dbeta.data() == nullptr) return;
    auto partials = Tensor<double, Cuda>::uninitialized(Shape{2, gpu::layer_norm_chunks(dims.rows), d});  // (2, Q, D)
    gpu::launch_layer_norm_backward_params<T>(ctx.stream(), dims, dgamma.data(), dbeta.data(), dy.data(), x.data(),
                                              mean.data(), rstd.data(), partials.data());
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_NORM_LAUNCHERS(PREFIX, T)                                                                          \
  PREFIX void ::sdlora::ops::gpu::launch_group_norm_forward<T>(cudaStream_t, ::sdlora::ops::gpu::GroupNormDims const&, \
                                                               T*, T*, T*, T const*, T const*, T const*);              \
  PREFIX void ::sdlora::ops::gpu::launch_group_norm_backward<T>(                                                       \
      cudaStream_t, ::sdlora::ops::gpu::GroupNormDims const&, T*, T*, T*, T const*, T const*, T const*, T const*,      \
      T const*, T const*, double*);                                                                                    \
  PREFIX void ::sdlora::ops::gpu::launch_layer_norm_forward<T>(cudaStream_t, ::sdlora::ops::gpu::LayerNormDims const&, \
                                                               T*, T*, T*, T const*, T const*, T const*);              \
  PREFIX void ::sdlora::ops::gpu::launch_layer_norm_backward_input<T>(                                                 \
      cudaStream_t, ::sdlora::ops::gpu::LayerNormDims const&, T*, T const*, T const*, T const*, T const*, T const*);   \
  PREFIX void ::sdlora::ops::gpu::launch_layer_norm_backward_params<T>(                                                \
      cudaStream_t, ::sdlora::ops::gpu::LayerNormDims const&, T*, T*, T const*, T const*, T const*, T const*,          \
      double*);
#define SDLORA_CUDA_DECLARE_NORM(T) SDLORA_CUDA_NORM_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_NORM)
