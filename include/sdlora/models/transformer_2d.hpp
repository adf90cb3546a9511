/// @file transformer_2d.hpp
/// @brief The UNet's spatial transformer: BasicTransformerBlock (self-attention, cross-attention, GEGLU
/// feed-forward, three LayerNorms) and Transformer2DModel (GroupNorm, proj_in / proj_out as 1x1 convolutions or
/// linears, residual). Forward, backward, optional gradient checkpointing. Include <sdlora/models.hpp> instead.
#pragma once

#include <string>  // std::string
#include <vector>  // std::vector

#include <sdlora/nn/attention.hpp>     // nn::Attention
#include <sdlora/nn/conv2d.hpp>        // nn::Conv2d
#include <sdlora/nn/feed_forward.hpp>  // nn::FeedForward
#include <sdlora/nn/group_norm.hpp>    // nn::GroupNorm
#include <sdlora/nn/layer_norm.hpp>    // nn::LayerNorm
#include <sdlora/nn/linear.hpp>        // nn::Linear
#include <sdlora/nn/saved.hpp>         // nn::SavedTensor
#include <sdlora/ops/elementwise.hpp>  // ops::add, ops::axpy
#include <sdlora/ops/layout.hpp>       // ops::nchw_to_nlc, ops::nlc_to_nchw

namespace sdlora::models {

using nn::Mode;

/// Gradients of a block that reads the text context.
template <class T, class B>
struct ContextGrads {
  Tensor<T, B> dx;        // same shape as the block input
  Tensor<T, B> dcontext;  // (N, Lk, Cc): accumulated over the block's cross-attentions
};

/// x += y, elementwise.
template <class T, class B>
void add_into(Context<B>& ctx, Tensor<T, B>& x, Tensor<T, B> const& y) {
  ops::axpy<T, B>(ctx, x.view(), 1.0, y.view());
}
/// acc += g, where an empty acc takes g (fan-in of context gradients).
template <class T, class B>
void accumulate(Context<B>& ctx, Tensor<T, B>& acc, Tensor<T, B>&& g) {
  if (g.empty()) return;
  if (acc.empty()) acc = std::move(g);
  else add_into(ctx, acc, g);
}

/// reference: diffusers/models/attention.py, BasicTransformerBlock (norm_type "layer_norm", SD 1.x / 2.x)
///   x = attn1(norm1(x)) + x;  x = attn2(norm2(x), context) + x;  x = ff(norm3(x)) + x
template <class T, class B = Cpu>
class BasicTransformerBlock {
 public:
  BasicTransformerBlock() = default;
  BasicTransformerBlock(Index dim, Index heads, Index dim_head, Index cross_attention_dim, bool upcast_attention)
      : norm1(dim, 1e-5),
        attn1(dim, 0, heads, dim_head, false, true, upcast_attention),
        norm2(dim, 1e-5),
        attn2(dim, cross_attention_dim, heads, dim_head, false, true, upcast_attention),
        norm3(dim, 1e-5),
        ff(dim) {}

  nn::LayerNorm<T, B> norm1;
  nn::Attention<T, B> attn1;
  nn::LayerNorm<T, B> norm2;
  nn::Attention<T, B> attn2;
  nn::LayerNorm<T, B> norm3;
  nn::FeedForward<T, B> ff;

  /// x (N, L, C), context (N, Lk, Cc) -> (N, L, C)
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> context, Mode mode) {
    return run(ctx, x, context, mode, false);
  }

  /// Gradient checkpointing's recompute inside backward: forward in Mode::Train as far as backward reads. The
  /// feed-forward's last product and the residual sum after it are read by nothing in backward, so they are skipped
  /// unless an adapter on ff.net.2 must see its output.
  void recompute(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> context) {
    run(ctx, x, context, Mode::Train, true);
  }

  ContextGrads<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    auto dx = Tensor<T, B>::from_view(dy);  // (N, L, C): the residual path
    auto g = ff.backward(ctx, dy);
    g = norm3.backward(ctx, g.view());
    add_into(ctx, dx, g);
    auto cross = attn2.backward(ctx, dx.view());
    g = norm2.backward(ctx, cross.dx.view());
    add_into(ctx, dx, g);
    auto self = attn1.backward(ctx, dx.view());
    g = norm1.backward(ctx, self.dx.view());
    add_into(ctx, dx, g);
    return {std::move(dx), std::move(cross.dcontext)};
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    norm1.visit(nn::join(name, "norm1"), visitor);
    attn1.visit(nn::join(name, "attn1"), visitor);
    norm2.visit(nn::join(name, "norm2"), visitor);
    attn2.visit(nn::join(name, "attn2"), visitor);
    norm3.visit(nn::join(name, "norm3"), visitor);
    ff.visit(nn::join(name, "ff"), visitor);
  }

 private:
  /// The forward; with `recompute`, it stops once ff has kept what backward needs and returns an empty tensor.
  Tensor<T, B> run(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> context, Mode mode,
                   bool recompute) {
    auto h = norm1.forward(ctx, x, mode);
    auto y = attn1.forward(ctx, h.view(), {}, mode);
    ops::add<T, B>(ctx, y.view(), y.view(), x);  // (N, L, C)
    h = norm2.forward(ctx, y.view(), mode);
    auto a = attn2.forward(ctx, h.view(), context, mode);
    add_into(ctx, y, a);
    h = norm3.forward(ctx, y.view(), mode);
    if (recompute && ff.keep_for_backward(ctx, h.view(), mode)) return {};
    a = ff.forward(ctx, h.view(), mode);
    add_into(ctx, y, a);
    return y;
  }
};

/// reference: diffusers/models/transformers/transformer_2d.py, Transformer2DModel (continuous input)
///   h = proj_in(norm(x)) as tokens; h = blocks(h, context); out = proj_out(h) as an image + x
template <class T, class B = Cpu>
class Transformer2DModel {
 public:
  Transformer2DModel() = default;
  Transformer2DModel(Index heads, Index dim_head, Index in_channels, Index num_layers, Index cross_attention_dim,
                     Index norm_groups, bool use_linear_projection, bool upcast_attention)
      : norm(norm_groups, in_channels, 1e-6), linear_(use_linear_projection), channels_(in_channels) {
    Index const inner = heads * dim_head;
    if (linear_) {
      proj_in_linear = nn::Linear<T, B>(in_channels, inner);
      proj_out_linear = nn::Linear<T, B>(inner, in_channels);
    } else {
      proj_in_conv = nn::Conv2d<T, B>(in_channels, inner, 1, 1, 0);
      proj_out_conv = nn::Conv2d<T, B>(inner, in_channels, 1, 1, 0);
    }
    for (Index i = 0; i < num_layers; ++i)
      transformer_blocks.emplace_back(inner, heads, dim_head, cross_attention_dim, upcast_attention);
  }

  nn::GroupNorm<T, B> norm;
  nn::Conv2d<T, B> proj_in_conv, proj_out_conv;      // "proj_in" / "proj_out" when !use_linear_projection
  nn::Linear<T, B> proj_in_linear, proj_out_linear;  // "proj_in" / "proj_out" when use_linear_projection
  std::vector<BasicTransformerBlock<T, B>> transformer_blocks;
  bool gradient_checkpointing = false;

  /// x (N, C, H, W), context (N, Lk, Cc) -> (N, C, H, W)
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> context, Mode mode) {
    SDLORA_EXPECTS(x.rank() == 4 && x.dim(1) == channels_,
                   "[transformer_2d] x must be (N, " << channels_ << ", H, W), got " << x.shape());
    bool const checkpoint = mode == Mode::Train && gradient_checkpointing;
    if (checkpoint) {
      // diffusers' checkpointing unit: each BasicTransformerBlock keeps only its input and is recomputed in backward,
      // one block at a time (the norm and projections keep what backward needs as usual)
      saved_.context = Tensor<T, B>::from_view(context);
      saved_.block_inputs.clear();
      saved_.block_inputs.resize(transformer_blocks.size());
    } else if (nn::keeps_saved(mode)) {
      saved_ = {};
    }
    return run(ctx, x, context, mode, checkpoint);
  }

  ContextGrads<T, B> backward(Context<B>& ctx, TensorView<T const, B> dout) {
    bool const checkpointed = !saved_.block_inputs.empty();
    SDLORA_EXPECTS(!gradient_checkpointing || checkpointed || transformer_blocks.empty(),
                   "[transformer_2d.backward] run forward with Mode::Train first");
    Index const n = dout.dim(0), c = dout.dim(1), hh = dout.dim(2), ww = dout.dim(3);
    Tensor<T, B> g;  // (N, HW, inner)
    if (linear_) {
      Tensor<T, B> d_tokens(Shape{n, hh * ww, c});
      ops::nchw_to_nlc<T, B>(ctx, d_tokens.view(), dout);
      g = proj_out_linear.backward(ctx, d_tokens.view());
    } else {
      auto dh = proj_out_conv.backward(ctx, dout);  // (N, inner, H, W)
      g = Tensor<T, B>(Shape{n, hh * ww, dh.dim(1)});
      ops::nchw_to_nlc<T, B>(ctx, g.view(), dh.view());
    }
    Tensor<T, B> dcontext;
    for (std::size_t i = transformer_blocks.size(); i-- > 0;) {
      auto& block = transformer_blocks[i];
      if (checkpointed) {  // recompute this block's activations from its input, then release the input
        auto const input = saved_.block_inputs[i].take(ctx);
        block.recompute(ctx, input.view(), saved_.context.view());
      }
      auto gb = block.backward(ctx, g.view());
      g = std::move(gb.dx);
      accumulate(ctx, dcontext, std::move(gb.dcontext));
    }
    Tensor<T, B> dnorm;  // (N, C, H, W)
    if (linear_) {
      auto dt = proj_in_linear.backward(ctx, g.view());  // (N, HW, C)
      dnorm = Tensor<T, B>(Shape{n, c, hh, ww});
      ops::nlc_to_nchw<T, B>(ctx, dnorm.view(), dt.view());
    } else {
      Tensor<T, B> dimg(Shape{n, g.dim(2), hh, ww});
      ops::nlc_to_nchw<T, B>(ctx, dimg.view(), g.view());
      dnorm = proj_in_conv.backward(ctx, dimg.view());
    }
    saved_ = {};
    auto dx = norm.backward(ctx, dnorm.view());
    ops::axpy<T, B>(ctx, dx.view(), 1.0, dout);  // the residual
    return {std::move(dx), std::move(dcontext)};
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    norm.visit(nn::join(name, "norm"), visitor);
    if (linear_) proj_in_linear.visit(nn::join(name, "proj_in"), visitor);
    else proj_in_conv.visit(nn::join(name, "proj_in"), visitor);
    for (std::size_t i = 0; i < transformer_blocks.size(); ++i)
      transformer_blocks[i].visit(nn::join(name, "transformer_blocks." + std::to_string(i)), visitor);
    if (linear_) proj_out_linear.visit(nn::join(name, "proj_out"), visitor);
    else proj_out_conv.visit(nn::join(name, "proj_out"), visitor);
  }

 private:
  /// The forward; with `checkpoint` each block's input is kept in saved_ and the block itself keeps nothing.
  Tensor<T, B> run(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> context, Mode mode,
                   bool checkpoint) {
    Index const n = x.dim(0), c = x.dim(1), hh = x.dim(2), ww = x.dim(3);
    auto h = norm.forward(ctx, x, mode);  // (N, C, H, W)
    Tensor<T, B> tokens;                  // (N, HW, inner)
    if (linear_) {
      Tensor<T, B> t(Shape{n, hh * ww, c});
      ops::nchw_to_nlc<T, B>(ctx, t.view(), h.view());
      tokens = proj_in_linear.forward(ctx, t.view(), mode);
    } else {
      auto p = proj_in_conv.forward(ctx, h.view(), mode);  // (N, inner, H, W)
      tokens = Tensor<T, B>(Shape{n, hh * ww, p.dim(1)});
      ops::nchw_to_nlc<T, B>(ctx, tokens.view(), p.view());
    }
    for (std::size_t i = 0; i < transformer_blocks.size(); ++i) {
      if (checkpoint) {  // the block runs from what is kept (its input, or the input rounded to 16 bits)
        auto const in = saved_.block_inputs[i].keep(ctx, std::move(tokens), Mode::Train);
        tokens = transformer_blocks[i].forward(ctx, in.x, context, Mode::TrainDiscard);
      } else {
        tokens = transformer_blocks[i].forward(ctx, tokens.view(), context, mode);
      }
    }
    Tensor<T, B> out(Shape{n, c, hh, ww});
    if (linear_) {
      auto p = proj_out_linear.forward(ctx, tokens.view(), mode);  // (N, HW, C)
      ops::nlc_to_nchw<T, B>(ctx, out.view(), p.view());
    } else {
      Tensor<T, B> img(Shape{n, tokens.dim(2), hh, ww});
      ops::nlc_to_nchw<T, B>(ctx, img.view(), tokens.view());
      out = proj_out_conv.forward(ctx, img.view(), mode);
    }
    ops::add<T, B>(ctx, out.view(), out.view(), x);
    return out;
  }

  bool linear_ = false;
  Index channels_ = 0;
  struct Saved {  // gradient checkpointing: what each block's recompute starts from
    std::vector<nn::SavedTensor<T, B>> block_inputs;  // (N, HW, inner) per BasicTransformerBlock
    Tensor<T, B> context;                    // (N, Lk, Cc)
  } saved_;
};

}  // namespace sdlora::models
