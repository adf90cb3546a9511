/// @file unet.hpp
/// @brief UNet2DConditionModel driven by a diffusers config (SD 1.x / 2.x layouts): down blocks with optional
/// cross-attention, a cross-attention mid block, up blocks with skip connections. Forward and backward (input,
/// context and trainable-parameter gradients), per-block gradient checkpointing. Include <sdlora/models.hpp>.
#pragma once

#include <array>     // std::array
#include <optional>  // std::optional
#include <string>    // std::string
#include <vector>    // std::vector

#include <sdlora/models/config.hpp>          // UNetConfig
#include <sdlora/models/resnet.hpp>          // ResnetBlock2D
#include <sdlora/models/transformer_2d.hpp>  // Transformer2DModel, ContextGrads
#include <sdlora/nn/activation.hpp>          // nn::SiLU
#include <sdlora/nn/downsample.hpp>          // nn::Downsample2D
#include <sdlora/nn/timestep_embedding.hpp>  // nn::Timesteps, nn::TimestepEmbedding
#include <sdlora/nn/upsample.hpp>            // nn::Upsample2D
#include <sdlora/ops/concat.hpp>             // ops::concat_channels, ops::split_channels
#include <sdlora/ops/elementwise.hpp>        // ops::axpy

namespace sdlora::models {

/// CrossAttnDownBlock2D / DownBlock2D: resnets (each followed by a transformer when `has_attention`), then an
/// optional stride-2 downsampler. Every layer's output is a skip connection for the up path.
template <class T, class B = Cpu>
class DownBlock {
 public:
  DownBlock() = default;
  DownBlock(UNetConfig const& c, std::size_t i, Index in_channels, Index out_channels, bool has_attention,
            bool add_downsample) {
    Index const heads = c.num_attention_heads[i];
    for (int j = 0; j < c.layers_per_block[i]; ++j) {
      resnets.emplace_back(j == 0 ? in_channels : out_channels, out_channels, c.time_embed_dim(), c.norm_num_groups,
                           c.norm_eps);
      if (has_attention)
        attentions.emplace_back(heads, out_channels / heads, out_channels, c.transformer_layers_per_block[i],
                                c.cross_attention_dim, c.norm_num_groups, c.use_linear_projection,
                                c.upcast_attention);
    }
    if (add_downsample) downsamplers.emplace_back(out_channels, true, out_channels, c.downsample_padding);
  }

  std::vector<ResnetBlock2D<T, B>> resnets;
  std::vector<Transformer2DModel<T, B>> attentions;
  std::vector<nn::Downsample2D<T, B>> downsamplers;

  /// Returns the output of each layer (the last is the block's output).
  std::vector<Tensor<T, B>> forward(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> temb,
                                    TensorView<T const, B> context, Mode mode) {
    std::vector<Tensor<T, B>> outs;
    Tensor<T, B> h;
    for (std::size_t j = 0; j < resnets.size(); ++j) {
      h = resnets[j].forward(ctx, j == 0 ? x : TensorView<T const, B>(h.view()), temb, mode);
      if (!attentions.empty()) h = attentions[j].forward(ctx, h.view(), context, mode);
      outs.push_back(h);
    }
    if (!downsamplers.empty()) outs.push_back(downsamplers[0].forward(ctx, outs.back().view(), mode));
    return outs;
  }

  /// `douts[k]`: gradient of layer output k (from the next layer plus its skip connection). Returns dx and
  /// accumulates dtemb / dcontext.
  Tensor<T, B> backward(Context<B>& ctx, std::vector<Tensor<T, B>>& douts, Tensor<T, B>& dtemb,
                        Tensor<T, B>& dcontext) {
    std::size_t k = douts.size();
    if (!downsamplers.empty()) {
      auto g = downsamplers[0].backward(ctx, douts[--k].view());
      add_into(ctx, douts[k - 1], g);
    }
    Tensor<T, B> g;
    for (std::size_t j = resnets.size(); j-- > 0;) {
      Tensor<T, B>& d = douts[--k];
      if (!attentions.empty()) {
        auto ga = attentions[j].backward(ctx, d.view());
        accumulate(ctx, dcontext, std::move(ga.dcontext));
        d = std::move(ga.dx);
      }
      auto gr = resnets[j].backward(ctx, d.view());
      accumulate(ctx, dtemb, std::move(gr.dtemb));
      if (j > 0) add_into(ctx, douts[k - 1], gr.dx);
      else g = std::move(gr.dx);
    }
    return g;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    nn::visit_each(name, "resnets", resnets, visitor);
    nn::visit_each(name, "attentions", attentions, visitor);
    nn::visit_each(name, "downsamplers", downsamplers, visitor);
  }
};

/// UNetMidBlock2DCrossAttn: resnet, (transformer, resnet) x 1.
template <class T, class B = Cpu>
class MidBlock {
 public:
  MidBlock() = default;
  MidBlock(UNetConfig const& c, Index channels) {
    Index const heads = c.num_attention_heads.back();
    resnets.emplace_back(channels, channels, c.time_embed_dim(), c.norm_num_groups, c.norm_eps,
                         c.mid_block_scale_factor);
    attentions.emplace_back(heads, channels / heads, channels, c.transformer_layers_per_block.back(),
                            c.cross_attention_dim, c.norm_num_groups, c.use_linear_projection, c.upcast_attention);
    resnets.emplace_back(channels, channels, c.time_embed_dim(), c.norm_num_groups, c.norm_eps,
                         c.mid_block_scale_factor);
  }
  std::vector<ResnetBlock2D<T, B>> resnets;
  std::vector<Transformer2DModel<T, B>> attentions;

  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, TensorView<T const, B> temb,
                       TensorView<T const, B> context, Mode mode) {
    auto h = resnets[0].forward(ctx, x, temb, mode);
    h = attentions[0].forward(ctx, h.view(), context, mode);
    return resnets[1].forward(ctx, h.view(), temb, mode);
  }
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy, Tensor<T, B>& dtemb, Tensor<T, B>& dcontext) {
    auto g1 = resnets[1].backward(ctx, dy);
    accumulate(ctx, dtemb, std::move(g1.dtemb));
    auto ga = attentions[0].backward(ctx, g1.dx.view());
    accumulate(ctx, dcontext, std::move(ga.dcontext));
    auto g0 = resnets[0].backward(ctx, ga.dx.view());
    accumulate(ctx, dtemb, std::move(g0.dtemb));
    return std::move(g0.dx);
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    nn::visit_each(name, "resnets", resnets, visitor);
    nn::visit_each(name, "attentions", attentions, visitor);
  }
};

/// CrossAttnUpBlock2D / UpBlock2D: each resnet reads cat([h, skip]); optional transformer; optional upsampler.
template <class T, class B = Cpu>
class UpBlock {
 public:
  UpBlock() = default;
  /// i indexes the reversed per-block settings, as diffusers builds up blocks.
  UpBlock(UNetConfig const& c, std::size_t i_down, Index in_channels, Index prev_output_channels, Index out_channels,
          bool has_attention, bool add_upsample) {
    Index const heads = c.num_attention_heads[i_down];
    int const layers = c.layers_per_block[i_down] + 1;
    for (int j = 0; j < layers; ++j) {
      Index const skip = j == layers - 1 ? in_channels : out_channels;
      Index const resnet_in = j == 0 ? prev_output_channels : out_channels;
      resnets.emplace_back(resnet_in + skip, out_channels, c.time_embed_dim(), c.norm_num_groups, c.norm_eps);
      skip_channels_.push_back(skip);
      if (has_attention)
        attentions.emplace_back(heads, out_channels / heads, out_channels, c.transformer_layers_per_block[i_down],
                                c.cross_attention_dim, c.norm_num_groups, c.use_linear_projection,
                                c.upcast_attention);
    }
    if (add_upsample) upsamplers.emplace_back(out_channels, true, out_channels);
  }

  std::vector<ResnetBlock2D<T, B>> resnets;
  std::vector<Transformer2DModel<T, B>> attentions;
  std::vector<nn::Upsample2D<T, B>> upsamplers;

  std::size_t num_skips() const { return resnets.size(); }

  /// `skips` are consumed from the back; `upsample_size` is the spatial size of the next skip (odd sizes).
  Tensor<T, B> forward(Context<B>& ctx, Tensor<T, B> h, std::vector<Tensor<T, B>>& skips,
                       TensorView<T const, B> temb, TensorView<T const, B> context, Mode mode,
                       std::array<Index, 2> upsample_size) {
    h_channels_.clear();
    for (std::size_t j = 0; j < resnets.size(); ++j) {
      Tensor<T, B> skip = std::move(skips.back());
      skips.pop_back();
      Tensor<T, B> cat(Shape{h.dim(0), h.dim(1) + skip.dim(1), h.dim(2), h.dim(3)});
      ops::concat_channels<T, B>(ctx, cat.view(), h.view(), skip.view());
      h_channels_.push_back(h.dim(1));
      h = resnets[j].forward(ctx, cat.view(), temb, mode);
      if (!attentions.empty()) h = attentions[j].forward(ctx, h.view(), context, mode);
    }
    if (!upsamplers.empty()) h = upsamplers[0].forward(ctx, h.view(), mode, upsample_size);
    return h;
  }

  /// Returns dh (gradient of the block input) and appends the skip gradients (in the order the skips were
  /// consumed) to `dskips`.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy, std::vector<Tensor<T, B>>& dskips,
                        Tensor<T, B>& dtemb, Tensor<T, B>& dcontext) {
    Tensor<T, B> g = upsamplers.empty() ? Tensor<T, B>::from_view(dy) : upsamplers[0].backward(ctx, dy);
    std::vector<Tensor<T, B>> mine(resnets.size());
    for (std::size_t j = resnets.size(); j-- > 0;) {
      if (!attentions.empty()) {
        auto ga = attentions[j].backward(ctx, g.view());
        accumulate(ctx, dcontext, std::move(ga.dcontext));
        g = std::move(ga.dx);
      }
      auto gr = resnets[j].backward(ctx, g.view());
      accumulate(ctx, dtemb, std::move(gr.dtemb));
      Index const n = gr.dx.dim(0), hh = gr.dx.dim(2), ww = gr.dx.dim(3);
      Tensor<T, B> dh(Shape{n, h_channels_[j], hh, ww});
      Tensor<T, B> ds(Shape{n, gr.dx.dim(1) - h_channels_[j], hh, ww});
      ops::split_channels<T, B>(ctx, dh.view(), ds.view(), gr.dx.view());
      mine[j] = std::move(ds);
      g = std::move(dh);
    }
    for (auto& d : mine) dskips.push_back(std::move(d));
    return g;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    nn::visit_each(name, "resnets", resnets, visitor);
    nn::visit_each(name, "attentions", attentions, visitor);
    nn::visit_each(name, "upsamplers", upsamplers, visitor);
  }

 private:
  std::vector<Index> skip_channels_;
  std::vector<Index> h_channels_;  // channels of h before each concat (for the split in backward)
};

/// reference: diffusers/models/unets/unet_2d_condition.py, UNet2DConditionModel
template <class T, class B = Cpu>
class UNet2DConditionModel {
 public:
  UNet2DConditionModel() = default;
  explicit UNet2DConditionModel(UNetConfig config) : config_(std::move(config)) {
    auto const& c = config_;
    std::size_t const n = c.num_blocks();
    Index const c0 = c.block_out_channels[0];
    conv_in = nn::Conv2d<T, B>(c.in_channels, c0, 3, 1, 1);
    time_proj = nn::Timesteps<T, B>(c0, c.flip_sin_to_cos, c.freq_shift);
    time_embedding = nn::TimestepEmbedding<T, B>(c0, c.time_embed_dim());
    if (c.addition_embed_type == "text_time") {
      add_time_proj = nn::Timesteps<T, B>(c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift);
      add_embedding = nn::TimestepEmbedding<T, B>(c.projection_class_embeddings_input_dim, c.time_embed_dim());
    }
    Index out = c0;
    for (std::size_t i = 0; i < n; ++i) {
      Index const in = out;
      out = c.block_out_channels[i];
      down_blocks.emplace_back(c, i, in, out, c.down_block_types[i] == "CrossAttnDownBlock2D", i + 1 < n);
    }
    mid_block = MidBlock<T, B>(c, c.block_out_channels.back());
    out = c.block_out_channels.back();
    for (std::size_t i = 0; i < n; ++i) {
      std::size_t const d = n - 1 - i;  // the matching down block
      Index const prev = out;
      out = c.block_out_channels[d];
      Index const in = c.block_out_channels[d == 0 ? 0 : d - 1];
      up_blocks.emplace_back(c, d, in, prev, out, c.up_block_types[i] == "CrossAttnUpBlock2D", i + 1 < n);
    }
    conv_norm_out = nn::GroupNorm<T, B>(c.norm_num_groups, c0, c.norm_eps);
    conv_out = nn::Conv2d<T, B>(c0, c.out_channels, 3, 1, 1);
  }

  UNetConfig const& config() const { return config_; }

  nn::Conv2d<T, B> conv_in;
  nn::Timesteps<T, B> time_proj;
  nn::TimestepEmbedding<T, B> time_embedding;
  nn::Timesteps<T, B> add_time_proj;            // SDXL (addition_embed_type "text_time") only
  nn::TimestepEmbedding<T, B> add_embedding;    // SDXL only: (pooled text_embeds ++ time-id embeddings) -> temb
  std::vector<DownBlock<T, B>> down_blocks;
  MidBlock<T, B> mid_block;
  std::vector<UpBlock<T, B>> up_blocks;
  nn::GroupNorm<T, B> conv_norm_out;
  nn::Conv2d<T, B> conv_out;

  /// Turns gradient checkpointing of every resnet and transformer on or off.
  void set_gradient_checkpointing(bool on) {
    auto set = [&](auto& blocks) {
      for (auto& b : blocks) {
        for (auto& r : b.resnets) r.gradient_checkpointing = on;
        for (auto& a : b.attentions) a.gradient_checkpointing = on;
      }
    };
    set(down_blocks);
    set(up_blocks);
    for (auto& r : mid_block.resnets) r.gradient_checkpointing = on;
    for (auto& a : mid_block.attentions) a.gradient_checkpointing = on;
  }

  /// SDXL's micro-conditioning (diffusers' added_cond_kwargs): the pooled text embedding of text_encoder_2
  /// (N, pooled) and the time ids (N, 6) = original size (h, w), crop top-left (top, left), target size (h, w).
  struct AddedConditions {
    TensorView<T const, B> text_embeds;
    TensorView<T const, B> time_ids;
  };

  /// noise prediction (N, out, H, W) from sample (N, in, H, W), timesteps (N) (float), and the text context
  /// encoder_hidden_states (N, L, cross_attention_dim).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> sample, TensorView<T const, B> timesteps,
                       TensorView<T const, B> encoder_hidden_states, Mode mode = Mode::Infer) {
    return forward(ctx, sample, timesteps, encoder_hidden_states, AddedConditions{}, mode);
  }

  /// The same with SDXL's added conditions (required when addition_embed_type is "text_time", refused otherwise).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> sample, TensorView<T const, B> timesteps,
                       TensorView<T const, B> encoder_hidden_states, AddedConditions const& added,
                       Mode mode = Mode::Infer) {
    auto const& c = config_;
    SDLORA_EXPECTS(sample.rank() == 4 && sample.dim(1) == c.in_channels,
                   "[unet] sample must be (N, " << c.in_channels << ", H, W), got " << sample.shape());
    SDLORA_EXPECTS(timesteps.rank() == 1 && timesteps.dim(0) == sample.dim(0),
                   "[unet] timesteps must be (" << sample.dim(0) << "), got " << timesteps.shape());
    SDLORA_EXPECTS(encoder_hidden_states.rank() == 3 && encoder_hidden_states.dim(0) == sample.dim(0) &&
                       encoder_hidden_states.dim(2) == c.cross_attention_dim,
                   "[unet] encoder_hidden_states must be (" << sample.dim(0) << ", L, " << c.cross_attention_dim
                                                            << "), got " << encoder_hidden_states.shape());
    auto t = time_proj.forward(ctx, timesteps);  // (N, C0)
    auto emb = time_embedding.forward(ctx, t.view(), mode);  // (N, 4 C0)
    add_text_time(ctx, emb, added, sample.dim(0), mode);
    auto h = conv_in.forward(ctx, sample, mode);
    // Skip connections: conv_in's output, then every down layer's output.
    std::vector<Tensor<T, B>> skips;
    skips.push_back(h);
    skip_counts_.clear();
    for (auto& down : down_blocks) {
      auto outs = down.forward(ctx, skips.back().view(), emb.view(), encoder_hidden_states, mode);
      skip_counts_.push_back(outs.size());
      for (auto& o : outs) skips.push_back(std::move(o));
    }
    h = mid_block.forward(ctx, skips.back().view(), emb.view(), encoder_hidden_states, mode);
    skip_total_ = skips.size();
    first_skip_.clear();
    for (std::size_t i = 0; i < up_blocks.size(); ++i) {
      first_skip_.push_back(skips.size() - 1);
      // The upsampler matches the spatial size of the skip the next block reads first (odd latent sizes).
      std::array<Index, 2> size{0, 0};
      if (i + 1 < up_blocks.size()) {
        auto const& next = skips[skips.size() - up_blocks[i].num_skips() - 1];
        size = {next.dim(2), next.dim(3)};
      }
      h = up_blocks[i].forward(ctx, std::move(h), skips, emb.view(), encoder_hidden_states, mode, size);
    }
    h = nn::norm_silu(ctx, conv_norm_out, act_, h.view(), mode);
    return conv_out.forward(ctx, h.view(), mode);
  }

  struct Grads {
    Tensor<T, B> dsample;                 // (N, in, H, W)
    Tensor<T, B> dencoder_hidden_states;  // (N, L, cross_attention_dim)
    Tensor<T, B> dtext_embeds;            // (N, pooled): SDXL only, the gradient of AddedConditions::text_embeds
  };

  /// Backward of the last forward(Mode::Train): input gradients, and trainable parameter gradients accumulated.
  Grads backward(Context<B>& ctx, TensorView<T const, B> dy) {
    auto g = conv_out.backward(ctx, dy);
    g = act_.backward(ctx, g.view());
    g = conv_norm_out.backward(ctx, g.view());
    Tensor<T, B> dtemb, dcontext;
    // Up blocks in reverse; each returns its skips' gradients in consumption order, routed to the skip indices
    // recorded in forward.
    std::vector<Tensor<T, B>> dskips(skip_total_);
    for (std::size_t i = up_blocks.size(); i-- > 0;) {
      std::vector<Tensor<T, B>> mine;
      g = up_blocks[i].backward(ctx, g.view(), mine, dtemb, dcontext);
      for (std::size_t j = 0; j < mine.size(); ++j) accumulate(ctx, dskips[first_skip_[i] - j], std::move(mine[j]));
    }
    // The mid block read the last skip too.
    auto gm = mid_block.backward(ctx, g.view(), dtemb, dcontext);
    accumulate(ctx, dskips.back(), std::move(gm));
    std::size_t end = dskips.size();
    for (std::size_t i = down_blocks.size(); i-- > 0;) {
      std::size_t const begin = end - skip_counts_[i];
      std::vector<Tensor<T, B>> douts;
      for (std::size_t k = begin; k < end; ++k) douts.push_back(std::move(dskips[k]));
      auto gx = down_blocks[i].backward(ctx, douts, dtemb, dcontext);
      accumulate(ctx, dskips[begin - 1], std::move(gx));
      end = begin;
    }
    Grads out;
    out.dsample = conv_in.backward(ctx, dskips[0].view());
    if (!dtemb.empty()) {
      time_embedding.backward(ctx, dtemb.view());  // only for parameter gradients
      if (pooled_dim_ > 0) {  // emb = time_embedding(t) + add_embedding(text_embeds ++ time embeddings)
        auto dadd = add_embedding.backward(ctx, dtemb.view());  // (N, pooled + 6 * addition_time_embed_dim)
        Index const n = dadd.dim(0);
        out.dtext_embeds = Tensor<T, B>(Shape{n, pooled_dim_});
        Tensor<T, B> dtime(Shape{n, dadd.dim(1) - pooled_dim_});
        ops::split_channels<T, B>(ctx, out.dtext_embeds.view(), dtime.view(), dadd.view());
      }
    }
    out.dencoder_hidden_states = std::move(dcontext);
    return out;
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    conv_in.visit(nn::join(name, "conv_in"), visitor);
    time_embedding.visit(nn::join(name, "time_embedding"), visitor);
    if (config_.addition_embed_type == "text_time") add_embedding.visit(nn::join(name, "add_embedding"), visitor);
    nn::visit_each(name, "down_blocks", down_blocks, visitor);
    mid_block.visit(nn::join(name, "mid_block"), visitor);
    nn::visit_each(name, "up_blocks", up_blocks, visitor);
    conv_norm_out.visit(nn::join(name, "conv_norm_out"), visitor);
    conv_out.visit(nn::join(name, "conv_out"), visitor);
  }

 private:
  /// emb += add_embedding(cat(text_embeds, add_time_proj(time_ids).reshape(N, -1))) for SDXL (diffusers'
  /// get_aug_embed with addition_embed_type "text_time"); checks that the added conditions match the config.
  void add_text_time(Context<B>& ctx, Tensor<T, B>& emb, AddedConditions const& added, Index n, Mode mode) {
    auto const& c = config_;
    bool const given = !added.text_embeds.empty() || !added.time_ids.empty();
    pooled_dim_ = 0;
    if (c.addition_embed_type != "text_time") {
      SDLORA_EXPECTS(!given, "[unet] added conditions (text_embeds, time_ids) given to a UNet without "
                             "addition_embed_type \"text_time\"");
      return;
    }
    Index const time_dim = 6 * Index(c.addition_time_embed_dim);
    Index const pooled = Index(c.projection_class_embeddings_input_dim) - time_dim;
    SDLORA_EXPECTS(added.time_ids.rank() == 2 && added.time_ids.dim(0) == n && added.time_ids.dim(1) == 6,
                   "[unet] an SDXL UNet needs time_ids (" << n << ", 6), got " << added.time_ids.shape());
    SDLORA_EXPECTS(added.text_embeds.rank() == 2 && added.text_embeds.dim(0) == n && added.text_embeds.dim(1) == pooled,
                   "[unet] an SDXL UNet needs text_embeds (" << n << ", " << pooled << "), got "
                                                             << added.text_embeds.shape());
    auto const ids = Tensor<T, B>::from_view(added.time_ids);  // contiguous, to flatten
    auto te = add_time_proj.forward(ctx, ids.view().reshaped(Shape{n * 6}));  // (6 N, addition_time_embed_dim)
    Tensor<T, B> add(Shape{n, pooled + time_dim});
    ops::concat_channels<T, B>(ctx, add.view(), added.text_embeds, te.view().reshaped(Shape{n, time_dim}));
    auto aug = add_embedding.forward(ctx, add.view(), mode);  // (N, 4 C0)
    ops::axpy<T, B>(ctx, emb.view(), 1.0, aug.view());
    pooled_dim_ = pooled;
  }

  UNetConfig config_;
  Index pooled_dim_ = 0;  // the last forward's text_embeds width (0: no added conditions)
  nn::SiLU<T, B> act_;
  std::vector<std::size_t> skip_counts_;  // outputs per down block, for routing skip gradients
  std::vector<std::size_t> first_skip_;   // per up block: index of the skip its first resnet reads
  std::size_t skip_total_ = 0;
};

}  // namespace sdlora::models
