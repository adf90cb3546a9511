/// @file attention.hpp
/// @brief Multi-head scaled-dot-product attention over (B, L, H*D) activations: a tiled forward that never holds
/// the (Lq, Lk) score matrix and saves the per-row logsumexp, the matching backward that recomputes the
/// probabilities tile by tile (flash-attention-2), and a materialised reference forward for tests.
/// Include <sdlora/sdlora.hpp> instead.
///
/// reference: torch.nn.functional.scaled_dot_product_attention; Dao, "FlashAttention-2" (2023), algorithms 1 and 2.
#pragma once

#include <cmath>  // std::sqrt

#include <sdlora/core/backend.hpp>  // Context
#include <sdlora/core/tensor.hpp>   // TensorView
#include <sdlora/ops/impl.hpp>      // Impl

namespace sdlora::ops {

/// Op tag and options. Heads are interleaved in the last axis as (H, D), like diffusers' `view(B, L, H, D)`.
struct Attention {
  Index heads = 1;
  double scale = 0.0;   // 0 means 1 / sqrt(D)
  bool causal = false;  // query i sees key j only when j <= i (top-left aligned, torch's is_causal; CLIP's mask)
  Index block_q = 64;   // query rows per tile (CPU)
  Index block_k = 256;  // keys per tile (CPU)

  Index head_dim(Index width) const { return width / heads; }
  double resolved_scale(Index width) const { return scale != 0.0 ? scale : 1.0 / std::sqrt(double(head_dim(width))); }
};

namespace detail {
template <class VQ, class VK, class VV>
void expect_attention_inputs(char const* name, Attention const& op, VQ const& q, VK const& k, VV const& v) {
  SDLORA_EXPECTS(op.heads >= 1 && op.block_q >= 1 && op.block_k >= 1,
                 "[" << name << "] heads, block_q and block_k must be positive, got " << op.heads << ", "
                     << op.block_q << ", " << op.block_k);
  SDLORA_EXPECTS(q.rank() == 3 && k.rank() == 3 && v.rank() == 3,
                 "[" << name << "] q, k, v must be (B, L, H*D), got q " << q.shape() << ", k " << k.shape() << ", v "
                     << v.shape());
  SDLORA_EXPECTS(k.shape() == v.shape() && q.dim(0) == k.dim(0) && q.dim(2) == k.dim(2) && k.dim(1) >= 1,
                 "[" << name << "] q (B, Lq, H*D), k and v (B, Lk, H*D) with Lk >= 1, got q " << q.shape() << ", k "
                     << k.shape() << ", v " << v.shape());
  SDLORA_EXPECTS(q.dim(2) % op.heads == 0 && q.dim(2) > 0,
                 "[" << name << "] width " << q.dim(2) << " of q " << q.shape() << " is not a multiple of "
                     << op.heads << " heads");
  SDLORA_EXPECTS(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1,
                 "[" << name << "] the last axis of q, k, v must be contiguous");
}
template <class VO, class VQ>
void expect_like(char const* name, char const* what, VO const& o, VQ const& q) {
  SDLORA_EXPECTS(o.shape() == q.shape() && o.stride(2) == 1,
                 "[" << name << "] " << what << " must be " << q.shape() << " with a contiguous last axis, got "
                     << o.shape());
}
template <class VL, class VQ>
void expect_lse(char const* name, Attention const& op, VL const& lse, VQ const& q) {
  SDLORA_EXPECTS(lse.shape() == (Shape{q.dim(0), op.heads, q.dim(1)}) && lse.is_contiguous(),
                 "[" << name << "] lse must be contiguous (" << q.dim(0) << ", " << op.heads << ", " << q.dim(1)
                     << "), got " << lse.shape());
}
}  // namespace detail

/// Tiled forward: o (B, Lq, H*D) = softmax(scale q k^T [+ causal mask]) v per head, computed with an online
/// softmax over key tiles; lse (B, H, Lq) receives each row's logsumexp of the scaled, masked scores for backward.
/// q, k, v and o may be strided on the first two axes (e.g. slices of a fused projection).
template <class T, class B>
void attention_forward(Context<B>& ctx, Attention const& op, TensorView<T, B> o, TensorView<T, B> lse,
                       TensorView<T const, B> q, TensorView<T const, B> k, TensorView<T const, B> v) {
  detail::expect_attention_inputs("attention", op, q, k, v);
  detail::expect_like("attention", "o", o, q);
  detail::expect_lse("attention", op, lse, q);
  Impl<Attention, B>::forward(ctx, op, o, lse, q, k, v);
}

/// Backward of attention_forward: from dout (B, Lq, H*D), the forward's o and lse, writes (overwrites, does not
/// accumulate) dq (B, Lq, H*D), dk and dv (B, Lk, H*D). Probabilities are recomputed tile by tile from q, k and lse;
/// with D_i = rowsum(dout_i * o_i): dv = P^T dout, dS = P * (dout v^T - D), dq = scale dS k, dk = scale dS^T q.
template <class T, class B>
void attention_backward(Context<B>& ctx, Attention const& op, TensorView<T, B> dq, TensorView<T, B> dk,
                        TensorView<T, B> dv, TensorView<T const, B> q, TensorView<T const, B> k,
                        TensorView<T const, B> v, TensorView<T const, B> o, TensorView<T const, B> lse,
                        TensorView<T const, B> dout) {
  detail::expect_attention_inputs("attention.backward", op, q, k, v);
  detail::expect_like("attention.backward", "o", o, q);
  detail::expect_like("attention.backward", "dout", dout, q);
  detail::expect_like("attention.backward", "dq", dq, q);
  detail::expect_like("attention.backward", "dk", dk, k);
  detail::expect_like("attention.backward", "dv", dv, v);
  detail::expect_lse("attention.backward", op, lse, q);
  Impl<Attention, B>::backward(ctx, op, dq, dk, dv, q, k, v, o, lse, dout);
}

/// Reference forward that materialises each head's (Lq, Lk) probabilities (for tests; memory O(Lq Lk)).
template <class T, class B>
void attention_forward_materialized(Context<B>& ctx, Attention const& op, TensorView<T, B> o,
                                    TensorView<T const, B> q, TensorView<T const, B> k, TensorView<T const, B> v) {
  detail::expect_attention_inputs("attention.materialized", op, q, k, v);
  detail::expect_like("attention.materialized", "o", o, q);
  Impl<Attention, B>::forward_materialized(ctx, op, o, q, k, v);
}

}  // namespace sdlora::ops
