/// @file attention.hpp
/// @brief CUDA backend of ops/attention.hpp: a flash-attention-style forward and backward with plain (non tensor
/// core) arithmetic in the compute type. Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
///
/// Forward: one block per (batch, head, query tile); the query tile and its output accumulator stay in shared
/// memory while key/value tiles stream through it with an online softmax (running max and sum per row); writes o and
/// the per-row logsumexp. Backward (FlashAttention-2, deterministic, no atomics): D = rowsum(dout * o) per row, then
/// one block per (batch, head, key tile) accumulates dk, dv over the query tiles, and one block per (batch, head,
/// query tile) accumulates dq over the key tiles; both recompute P = exp(scale q k^T - lse) tile by tile.
/// Tile sizes adapt to the head dimension so that a block's shared memory stays within 48 KiB (no opt-in needed):
/// 32 x 32 tiles for D = 64 in float, smaller for SD's D = 160 or the VAE's single 512-wide head (slow but correct).
/// `forward_materialized` (a CPU test reference) runs the same tiled forward on CUDA.
#pragma once

#include <cstddef>  // std::size_t

#include <cuda_runtime_api.h>  // cudaStream_t

#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/backend/cuda/launch.hpp>   // SDLORA_CUDA_STORAGE_TYPES
#include <sdlora/backend/cuda/memory.hpp>   // Tensor<double, Cuda> scratch
#include <sdlora/core/config.hpp>           // SDLORA_HOST_DEVICE
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/attention.hpp>         // Attention, Impl

namespace sdlora::ops {

namespace gpu {
/// A (B, L, H*D) operand: row l of batch b starts at data + b * batch_stride + l * row_stride.
template <class T>
struct AttentionRows {
  T* data;
  Index batch_stride, row_stride;
  SDLORA_HOST_DEVICE T* row(Index b, Index l) const { return data + b * batch_stride + l * row_stride; }
};
template <class T>
AttentionRows<T> attention_rows(TensorView<T, Cuda> const& v) {
  return {v.data(), v.stride(0), v.stride(1)};
}

/// Query rows (bq) and keys (bk) per tile of one kernel.
struct AttentionTile {
  Index bq, bk;
};

/// Sizes shared by the kernels, and each kernel's tiles.
struct AttentionDims {
  Index batch, heads, lq, lk, d;
  double scale;
  bool causal;
  AttentionTile forward, backward_kv, backward_q;
};

/// Shared memory of a kernel holding `per_qd` (bq, D) arrays, `per_kd` (bk, D) arrays, `per_qk` (bq, bk) arrays and
/// `per_q` (bq) vectors of `elem` bytes.
struct AttentionSmem {
  Index per_qd, per_kd, per_qk, per_q;
  std::size_t bytes(AttentionTile t, Index d, std::size_t elem) const {
    return std::size_t(per_qd * t.bq * d + per_kd * t.bk * d + per_qk * t.bq * t.bk + per_q * t.bq) * elem;
  }
};
inline constexpr AttentionSmem kAttentionForwardSmem{2, 1, 1, 3};     // q, o accumulator; k or v; s; m, l, alpha
inline constexpr AttentionSmem kAttentionBackwardKvSmem{2, 4, 2, 2};  // q, dout; k, v, dk, dv; p, ds; lse, delta
inline constexpr AttentionSmem kAttentionBackwardQSmem{3, 2, 1, 2};   // q, dout, dq; k, v; ds; lse, delta
inline constexpr std::size_t kAttentionSmemBudget = 48 * 1024;        // the default per-block limit of every GPU

/// The largest tiles (from 64 x 64, halving the larger side) whose shared memory fits the budget.
inline AttentionTile attention_tile(AttentionSmem const& smem, Index d, std::size_t elem) {
  AttentionTile t{64, 64};
  while (smem.bytes(t, d, elem) > kAttentionSmemBudget && (t.bq > 1 || t.bk > 1)) {
    if (t.bk >= t.bq && t.bk > 1)
      t.bk /= 2;
    else
      t.bq /= 2;
  }
  SDLORA_EXPECTS(smem.bytes(t, d, elem) <= kAttentionSmemBudget,
                 "[attention] head dimension " << d << " is too large for the CUDA kernels' shared memory");
  return t;
}

template <class T>
AttentionDims attention_dims(Attention const& op, Index batch, Index lq, Index lk, Index width) {
  std::size_t const elem = sizeof(T) == 8 ? 8 : 4;  // the compute type: double, or float for float/half/bfloat16
  Index const d = op.head_dim(width);
  AttentionDims g{batch, op.heads, lq, lk, d, op.resolved_scale(width), op.causal, {}, {}, {}};
  g.forward = attention_tile(kAttentionForwardSmem, d, elem);
  g.backward_kv = attention_tile(kAttentionBackwardKvSmem, d, elem);
  g.backward_q = attention_tile(kAttentionBackwardQSmem, d, elem);
  return g;
}

/// o, lse (B, H, Lq) from q, k, v. Defined in kernels/attention.cuh.
template <class T>
void launch_attention_forward(cudaStream_t stream, AttentionDims const& g, AttentionRows<T> o, T* lse,
                              AttentionRows<T const> q, AttentionRows<T const> k, AttentionRows<T const> v);
/// dq, dk, dv (overwritten); delta (B, H, Lq) doubles of scratch.
template <class T>
void launch_attention_backward(cudaStream_t stream, AttentionDims const& g, AttentionRows<T> dq, AttentionRows<T> dk,
                               AttentionRows<T> dv, AttentionRows<T const> q, AttentionRows<T const> k,
                               AttentionRows<T const> v, AttentionRows<T const> o, T const* lse,
                               AttentionRows<T const> dout, double* delta);
}  // namespace gpu

template <>
struct Impl<Attention, Cuda> {
  template <class T>
  static void forward(Context<Cuda>& ctx, Attention const& op, TensorView<T, Cuda> o, TensorView<T, Cuda> lse,
                      TensorView<T const, Cuda> q, TensorView<T const, Cuda> k, TensorView<T const, Cuda> v) {
    gpu::AttentionDims const g = gpu::attention_dims<T>(op, q.dim(0), q.dim(1), k.dim(1), q.dim(2));
    gpu::launch_attention_forward<T>(ctx.stream(), g, gpu::attention_rows(o), lse.data(), gpu::attention_rows(q),
                                     gpu::attention_rows(k), gpu::attention_rows(v));
  }

  template <class T>
  static void backward(Context<Cuda>& ctx, Attention const& op, TensorView<T, Cuda> dq, TensorView<T, Cuda> dk,
                       TensorView<T, Cuda> dv, TensorView<T const, Cuda> q, TensorView<T const, Cuda> k,
                       TensorView<T const, Cuda> v, TensorView<T const, Cuda> o, TensorView<T const, Cuda> lse,
                       TensorView<T const, Cuda> dout) {
    gpu::AttentionDims const g = gpu::attention_dims<T>(op, q.dim(0), q.dim(1), k.dim(1), q.dim(2));
    auto delta = Tensor<double, Cuda>::uninitialized(Shape{g.batch, g.heads, g.lq});  // (B, H, Lq) rowsum(dout * o)
    gpu::launch_attention_backward<T>(ctx.stream(), g, gpu::attention_rows(dq), gpu::attention_rows(dk),
                                      gpu::attention_rows(dv), gpu::attention_rows(q), gpu::attention_rows(k),
                                      gpu::attention_rows(v), gpu::attention_rows(o), lse.data(),
                                      gpu::attention_rows(dout), delta.data());
  }

  /// The CPU's O(Lq Lk) reference has no CUDA counterpart; this runs the tiled forward (the same result).
  template <class T>
  static void forward_materialized(Context<Cuda>& ctx, Attention const& op, TensorView<T, Cuda> o,
                                   TensorView<T const, Cuda> q, TensorView<T const, Cuda> k,
                                   TensorView<T const, Cuda> v) {
    auto lse = Tensor<T, Cuda>::uninitialized(Shape{q.dim(0), op.heads, q.dim(1)});  // (B, H, Lq), discarded
    forward<T>(ctx, op, o, lse.view(), q, k, v);
  }
};

}  // namespace sdlora::ops

/// The launchers of one storage type, after PREFIX (`extern template` to declare, `template` to instantiate).
#define SDLORA_CUDA_ATTENTION_LAUNCHERS(PREFIX, T)                                                      \
  PREFIX void ::sdlora::ops::gpu::launch_attention_forward<T>(                                          \
      cudaStream_t, ::sdlora::ops::gpu::AttentionDims const&, ::sdlora::ops::gpu::AttentionRows<T>, T*, \
      ::sdlora::ops::gpu::AttentionRows<T const>, ::sdlora::ops::gpu::AttentionRows<T const>,           \
      ::sdlora::ops::gpu::AttentionRows<T const>);                                                      \
  PREFIX void ::sdlora::ops::gpu::launch_attention_backward<T>(                                         \
      cudaStream_t, ::sdlora::ops::gpu::AttentionDims const&, ::sdlora::ops::gpu::AttentionRows<T>,     \
      ::sdlora::ops::gpu::AttentionRows<T>, ::sdlora::ops::gpu::AttentionRows<T>,                       \
      ::sdlora::ops::gpu::AttentionRows<T const>, ::sdlora::ops::gpu::AttentionRows<T const>,           \
      ::sdlora::ops::gpu::AttentionRows<T const>, ::sdlora::ops::gpu::AttentionRows<T const>, T const*, \
      ::sdlora::ops::gpu::AttentionRows<T const>, double*);
#define SDLORA_CUDA_DECLARE_ATTENTION(T) SDLORA_CUDA_ATTENTION_LAUNCHERS(extern template, T)
SDLORA_CUDA_STORAGE_TYPES(SDLORA_CUDA_DECLARE_ATTENTION)
