/// @file attention.hpp
/// @brief Multi-head attention modules: diffusers' `Attention` (to_q, to_k, to_v, to_out.0; self- or
/// cross-attention) and transformers' `CLIPAttention` (q_proj, k_proj, v_proj, out_proj; causal in the text
/// encoder). Both run the tiled ops::attention_forward / attention_backward. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cmath>    // std::sqrt
#include <string>   // std::string
#include <utility>  // std::move

#include <sdlora/nn/dropout.hpp>       // Dropout
#include <sdlora/nn/linear.hpp>        // Linear
#include <sdlora/nn/module.hpp>        // Mode, join
#include <sdlora/nn/saved.hpp>         // SavedTensor
#include <sdlora/ops/attention.hpp>    // ops::Attention, ops::attention_forward, ops::attention_backward
#include <sdlora/ops/elementwise.hpp>  // ops::add

namespace sdlora::nn {

/// What an attention backward returns: the gradient of the queries' input and of the context (keys and values'
/// input). For self-attention both reach x, so dx holds their sum and dcontext is empty.
template <class T, class B = Cpu>
struct AttentionGrads {
  Tensor<T, B> dx;        // (B, L, C)
  Tensor<T, B> dcontext;  // (B, Lk, Cc), or empty for self-attention
};

namespace detail {
/// Projections around ops::attention, shared by Attention and ClipAttention (which own the Linear layers under
/// their own names and pass them in).
template <class T, class B>
class AttentionCore {
 public:
  ops::Attention op;

  /// y (B, L, C) = out(attention(q(x), k(src), v(src))) with src = context, or x when context is empty.
  Tensor<T, B> forward(Context<B>& ctx, Linear<T, B>& to_q, Linear<T, B>& to_k, Linear<T, B>& to_v,
                       Linear<T, B>& to_out, TensorView<T const, B> x, TensorView<T const, B> context, Mode mode) {
    bool const cross = context.data() != nullptr;
    TensorView<T const, B> const src = cross ? context : x;
    SDLORA_EXPECTS(x.rank() == 3 && src.rank() == 3 && src.dim(0) == x.dim(0),
                   "[attention] x must be (B, L, C) and context (B, Lk, Cc), got x " << x.shape() << ", context "
                                                                                    << context.shape());
    // Training keeps q, k, v and o for backward (rounded to 16 bits if the context asks; attention and to_out then
    // run on the rounded values, so that backward differentiates the forward that ran).
    auto const q = saved_.q.keep(ctx, to_q.forward(ctx, x, mode), mode);    // (B, L, H*D)
    auto const k = saved_.k.keep(ctx, to_k.forward(ctx, src, mode), mode);  // (B, Lk, H*D)
    auto const v = saved_.v.keep(ctx, to_v.forward(ctx, src, mode), mode);  // (B, Lk, H*D)
    auto o = Tensor<T, B>::uninitialized(q.x.shape());                                 // (B, L, H*D)
    auto lse = Tensor<T, B>::uninitialized(Shape{x.dim(0), op.heads, x.dim(1)});        // (B, H, L)
    ops::attention_forward<T, B>(ctx, op, o.view(), lse.view(), q.x, k.x, v.x);
    auto const kept_o = saved_.o.keep(ctx, std::move(o), mode);
    Tensor<T, B> y = to_out.forward(ctx, kept_o.x, mode);  // (B, L, C)
    if (mode == Mode::Train) {
      saved_.lse = std::move(lse);
      saved_.cross = cross;
    }
    return y;
  }

  /// Gradients of the inputs from dy (B, L, C) after to_out's own adapters; the Linear layers accumulate their
  /// trainable gradients.
  AttentionGrads<T, B> backward(Context<B>& ctx, Linear<T, B>& to_q, Linear<T, B>& to_k, Linear<T, B>& to_v,
                                Linear<T, B>& to_out, TensorView<T const, B> dy) {
    SDLORA_EXPECTS(!saved_.lse.empty(), "[attention.backward] run forward with Mode::Train first");
    Tensor<T, B> dout = to_out.backward(ctx, dy);  // (B, L, H*D)
    auto dq = Tensor<T, B>::uninitialized(saved_.q.shape());  // (B, L, H*D)
    auto dk = Tensor<T, B>::uninitialized(saved_.k.shape());  // (B, Lk, H*D)
    auto dv = Tensor<T, B>::uninitialized(saved_.v.shape());  // (B, Lk, H*D)
    auto const q = saved_.q.take(ctx), k = saved_.k.take(ctx), v = saved_.v.take(ctx), o = saved_.o.take(ctx);
    ops::attention_backward<T, B>(ctx, op, dq.view(), dk.view(), dv.view(), q.view(), k.view(), v.view(), o.view(),
                                  saved_.lse.view(), dout.view());
    bool const cross = saved_.cross;
    saved_ = {};  // one backward per forward: q, k, v, o and the log-sum-exp are released now
    AttentionGrads<T, B> grads;
    grads.dx = to_q.backward(ctx, dq.view());                 // (B, L, C)
    Tensor<T, B> dsrc = to_k.backward(ctx, dk.view());        // (B, Lk, Cc)
    Tensor<T, B> const dsrc_v = to_v.backward(ctx, dv.view());  // (B, Lk, Cc)
    ops::add<T, B>(ctx, dsrc.view(), dsrc.view(), dsrc_v.view());
    if (cross) grads.dcontext = std::move(dsrc);
    else ops::add<T, B>(ctx, grads.dx.view(), grads.dx.view(), dsrc.view());  // fan-out of x: sum
    return grads;
  }

 private:
  struct Saved {
    SavedTensor<T, B> q;  // (B, L, H*D): recomputes the probabilities; dk = scale dS^T q
    SavedTensor<T, B> k;  // (B, Lk, H*D): recomputes the probabilities; dq = scale dS k
    SavedTensor<T, B> v;  // (B, Lk, H*D): dP = dout v^T
    SavedTensor<T, B> o;  // (B, L, H*D): D = rowsum(dout * o)
    Tensor<T, B> lse;  // (B, H, L): the softmax normaliser, so the probabilities are recomputed without a max pass
    bool cross = false;  // whether k, v came from a context (then its gradient is returned separately)
  } saved_;
};
}  // namespace detail

/// diffusers.models.attention_processor.Attention with the default processor (no group/spatial norm, no residual,
/// rescale 1): q = to_q(x), k = to_k(ctx), v = to_v(ctx), softmax(q k^T / sqrt(dim_head)) v per head, to_out.0,
/// then to_out.1 (dropout).
template <class T, class B = Cpu>
class Attention {
 public:
  Attention() = default;
  /// As diffusers' Attention(query_dim, cross_attention_dim, heads, dim_head, dropout=0, bias, upcast_attention,
  /// upcast_softmax, out_bias). cross_attention_dim = 0 means self-attention (keys from x). upcast_softmax is
  /// accepted for configuration compatibility: the CPU kernels compute the softmax in T (float or double) anyway.
  Attention(Index query_dim, Index cross_attention_dim = 0, Index heads = 8, Index dim_head = 64, bool bias = false,
            bool out_bias = true, bool upcast_softmax = false)
      : to_q(query_dim, heads * dim_head, bias),
        to_k(cross_attention_dim ? cross_attention_dim : query_dim, heads * dim_head, bias),
        to_v(cross_attention_dim ? cross_attention_dim : query_dim, heads * dim_head, bias),
        to_out_0(heads * dim_head, query_dim, out_bias),
        upcast_softmax(upcast_softmax) {
    core_.op.heads = heads;
    core_.op.scale = 1.0 / std::sqrt(double(dim_head));
  }

  Linear<T, B> to_q;      // query_dim -> heads * dim_head
  Linear<T, B> to_k;      // cross_attention_dim (or query_dim) -> heads * dim_head
  Linear<T, B> to_v;      // cross_attention_dim (or query_dim) -> heads * dim_head
  Linear<T, B> to_out_0;  // "to_out.0": heads * dim_head -> query_dim
  Dropout<T, B> to_out_1;  // "to_out.1": p = 0 unless set
  bool upcast_softmax = false;

  Index heads() const { return core_.op.heads; }
  /// The attention op's options (heads, scale, tile sizes) for tuning.
  ops::Attention& op() { return core_.op; }

  /// y (B, L, query_dim) from x (B, L, query_dim) and context (B, Lk, cross_attention_dim), or an empty view
  /// (self-attention).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> context = {},
                       Mode mode = Mode::Infer) {
    Tensor<T, B> y = core_.forward(ctx, to_q, to_k, to_v, to_out_0, x, context, mode);  // (B, L, query_dim)
    return to_out_1.p > 0.0 ? to_out_1.forward(ctx, y.view(), mode) : std::move(y);
  }
  /// dx (B, L, query_dim) and dcontext (B, Lk, cross_attention_dim; empty for self-attention) from dy.
  AttentionGrads<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    if (to_out_1.p > 0.0) {
      Tensor<T, B> const dy_drop = to_out_1.backward(ctx, dy);
      return core_.backward(ctx, to_q, to_k, to_v, to_out_0, dy_drop.view());
    }
    return core_.backward(ctx, to_q, to_k, to_v, to_out_0, dy);
  }

  template <class V>
  void visit(std::string const& prefix, V&& visitor) {
    to_q.visit(join(prefix, "to_q"), visitor);
    to_k.visit(join(prefix, "to_k"), visitor);
    to_v.visit(join(prefix, "to_v"), visitor);
    to_out_0.visit(join(prefix, "to_out.0"), visitor);
  }

 private:
  detail::AttentionCore<T, B> core_;
};

/// transformers.models.clip.modeling_clip.CLIPAttention: q_proj, k_proj, v_proj, out_proj (all with bias), scale
/// head_dim^-0.5, self-attention; causal for the text encoder (its causal_attention_mask), not for the vision tower.
template <class T, class B = Cpu>
class ClipAttention {
 public:
  ClipAttention() = default;
  ClipAttention(Index embed_dim, Index num_heads, bool causal = true)
      : q_proj(embed_dim, embed_dim), k_proj(embed_dim, embed_dim), v_proj(embed_dim, embed_dim),
        out_proj(embed_dim, embed_dim) {
    SDLORA_EXPECTS(num_heads >= 1 && embed_dim % num_heads == 0,
                   "[clip_attention] embed_dim " << embed_dim << " is not a multiple of " << num_heads << " heads");
    core_.op.heads = num_heads;
    core_.op.scale = 1.0 / std::sqrt(double(embed_dim / num_heads));
    core_.op.causal = causal;
  }

  Linear<T, B> q_proj;    // (embed_dim -> embed_dim)
  Linear<T, B> k_proj;    // (embed_dim -> embed_dim)
  Linear<T, B> v_proj;    // (embed_dim -> embed_dim)
  Linear<T, B> out_proj;  // (embed_dim -> embed_dim)

  ops::Attention& op() { return core_.op; }

  /// y (B, L, E) = out_proj(attention(q_proj(x), k_proj(x), v_proj(x))) for x (B, L, E).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    return core_.forward(ctx, q_proj, k_proj, v_proj, out_proj, x, {}, mode);
  }
  /// dx (B, L, E) from dy (B, L, E).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    return std::move(core_.backward(ctx, q_proj, k_proj, v_proj, out_proj, dy).dx);
  }

  template <class V>
  void visit(std::string const& prefix, V&& visitor) {
    q_proj.visit(join(prefix, "q_proj"), visitor);
    k_proj.visit(join(prefix, "k_proj"), visitor);
    v_proj.visit(join(prefix, "v_proj"), visitor);
    out_proj.visit(join(prefix, "out_proj"), visitor);
  }

 private:
  detail::AttentionCore<T, B> core_;
};

}  // namespace sdlora::nn
