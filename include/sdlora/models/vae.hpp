/// @file vae.hpp
/// @brief AutoencoderKL (the SD 1.x / 2.x VAE): encoder to the latent distribution (mean, logvar), sampling with a
/// caller-provided noise tensor, decoder back to pixels. Forward, and backward for training: forward(..., Mode::Train)
/// keeps what backward needs (Mode::Infer keeps nothing), backward returns the input gradient and accumulates (+=)
/// into trainable parameters only. The training objective (reconstruction + KL) is train/vae_objective.hpp.
/// Include <sdlora/models.hpp> instead.
#pragma once

#include <cmath>   // std::exp
#include <string>   // std::string
#include <utility>  // std::move
#include <vector>   // std::vector

#include <sdlora/models/config.hpp>  // VaeConfig
#include <sdlora/models/resnet.hpp>  // ResnetBlock2D
#include <sdlora/nn/attention.hpp>   // nn::Attention
#include <sdlora/nn/downsample.hpp>  // nn::Downsample2D
#include <sdlora/nn/upsample.hpp>    // nn::Upsample2D
#include <sdlora/ops/concat.hpp>     // ops::split_channels, ops::concat_channels
#include <sdlora/ops/layout.hpp>     // ops::nchw_to_nlc, ops::nlc_to_nchw

namespace sdlora::models {

/// The VAE mid-block attention: one head over all H*W positions, GroupNorm first, residual after.
/// reference: diffusers Attention(..., norm_num_groups, residual_connection=True, _from_deprecated_attn_block)
template <class T, class B = Cpu>
class VaeAttention {
 public:
  VaeAttention() = default;
  VaeAttention(Index channels, Index groups)
      : group_norm(groups, channels, 1e-6), attn(channels, 0, 1, channels, true, true, true) {}
  nn::GroupNorm<T, B> group_norm;
  nn::Attention<T, B> attn;  // to_q, to_k, to_v, to_out.0 (with bias)

  /// out (N, C, H, W) = x + attention(group_norm(x)) over the H*W positions.
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    Index const n = x.dim(0), c = x.dim(1), hh = x.dim(2), ww = x.dim(3);
    auto h = group_norm.forward(ctx, x, mode);                        // (N, C, H, W)
    auto tokens = Tensor<T, B>::uninitialized(Shape{n, hh * ww, c});  // (N, H*W, C)
    ops::nchw_to_nlc<T, B>(ctx, tokens.view(), h.view());
    auto a = attn.forward(ctx, tokens.view(), {}, mode);  // (N, H*W, C)
    auto out = Tensor<T, B>::uninitialized(x.shape());    // (N, C, H, W)
    ops::nlc_to_nchw<T, B>(ctx, out.view(), a.view());
    ops::add<T, B>(ctx, out.view(), out.view(), x);
    return out;
  }
  /// dx (N, C, H, W) from dout (N, C, H, W): the residual plus the attention and norm path.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dout) {
    Index const n = dout.dim(0), c = dout.dim(1), hh = dout.dim(2), ww = dout.dim(3);
    auto dtokens = Tensor<T, B>::uninitialized(Shape{n, hh * ww, c});  // (N, H*W, C)
    ops::nchw_to_nlc<T, B>(ctx, dtokens.view(), dout);
    auto const ga = attn.backward(ctx, dtokens.view());   // self-attention: q, k, v gradients summed in dx
    auto dh = Tensor<T, B>::uninitialized(dout.shape());  // (N, C, H, W)
    ops::nlc_to_nchw<T, B>(ctx, dh.view(), ga.dx.view());
    auto dx = group_norm.backward(ctx, dh.view());    // (N, C, H, W)
    ops::add<T, B>(ctx, dx.view(), dx.view(), dout);  // residual
    return dx;
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    group_norm.visit(nn::join(name, "group_norm"), visitor);
    attn.to_q.visit(nn::join(name, "to_q"), visitor);
    attn.to_k.visit(nn::join(name, "to_k"), visitor);
    attn.to_v.visit(nn::join(name, "to_v"), visitor);
    attn.to_out_0.visit(nn::join(name, "to_out.0"), visitor);
  }
};

/// UNetMidBlock2D without time embedding: resnet, attention, resnet.
template <class T, class B = Cpu>
class VaeMidBlock {
 public:
  VaeMidBlock() = default;
  VaeMidBlock(Index channels, Index groups, bool add_attention) {
    resnets.emplace_back(channels, channels, 0, groups, 1e-6);
    if (add_attention) attentions.emplace_back(channels, groups);
    resnets.emplace_back(channels, channels, 0, groups, 1e-6);
  }
  std::vector<ResnetBlock2D<T, B>> resnets;
  std::vector<VaeAttention<T, B>> attentions;

  /// out (N, C, H, W) from x (N, C, H, W).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto h = resnets[0].forward(ctx, x, {}, mode);
    if (!attentions.empty()) h = attentions[0].forward(ctx, h.view(), mode);
    return resnets[1].forward(ctx, h.view(), {}, mode);
  }
  /// dx (N, C, H, W) from dout (N, C, H, W): the children in reverse.
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dout) {
    auto g = std::move(resnets[1].backward(ctx, dout).dx);
    if (!attentions.empty()) g = attentions[0].backward(ctx, g.view());
    return std::move(resnets[0].backward(ctx, g.view()).dx);
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    nn::visit_each(name, "resnets", resnets, visitor);
    nn::visit_each(name, "attentions", attentions, visitor);
  }
};

/// A VAE down or up block: resnets then an optional resampler ("downsamplers.0" / "upsamplers.0").
template <class T, class B, class Resample>
struct VaeBlock {
  std::vector<ResnetBlock2D<T, B>> resnets;
  std::vector<Resample> samplers;  // at most one
  std::string samplers_name;       // "downsamplers" or "upsamplers"

  Tensor<T, B> forward(Context<B>& ctx, Tensor<T, B> h, Mode mode = Mode::Infer) {
    for (auto& r : resnets) h = r.forward(ctx, h.view(), {}, mode);
    for (auto& s : samplers) h = s.forward(ctx, h.view(), mode);
    return h;
  }
  /// The gradient of the block's input from that of its output: resampler, then resnets, in reverse.
  Tensor<T, B> backward(Context<B>& ctx, Tensor<T, B> g) {
    for (auto s = samplers.rbegin(); s != samplers.rend(); ++s) g = s->backward(ctx, g.view());
    for (auto r = resnets.rbegin(); r != resnets.rend(); ++r) g = std::move(r->backward(ctx, g.view()).dx);
    return g;
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    nn::visit_each(name, "resnets", resnets, visitor);
    nn::visit_each(name, samplers_name, samplers, visitor);
  }
};

/// reference: diffusers/models/autoencoders/vae.py, Encoder
template <class T, class B = Cpu>
class VaeEncoder {
 public:
  VaeEncoder() = default;
  explicit VaeEncoder(VaeConfig const& c) {
    auto const& ch = c.block_out_channels;
    conv_in = nn::Conv2d<T, B>(c.in_channels, ch[0], 3, 1, 1);
    Index out = ch[0];
    for (std::size_t i = 0; i < ch.size(); ++i) {
      Index const in = out;
      out = ch[i];
      VaeBlock<T, B, nn::Downsample2D<T, B>> block{{}, {}, "downsamplers"};
      for (int j = 0; j < c.layers_per_block; ++j)
        block.resnets.emplace_back(j == 0 ? in : out, out, 0, c.norm_num_groups, 1e-6);
      if (i + 1 < ch.size()) block.samplers.emplace_back(out, true, out, 0);  // padding 0: pad (0, 1, 0, 1)
      down_blocks.push_back(std::move(block));
    }
    mid_block = VaeMidBlock<T, B>(ch.back(), c.norm_num_groups, c.mid_block_add_attention);
    conv_norm_out = nn::GroupNorm<T, B>(c.norm_num_groups, ch.back(), 1e-6);
    conv_out = nn::Conv2d<T, B>(ch.back(), 2 * c.latent_channels, 3, 1, 1);
  }
  nn::Conv2d<T, B> conv_in;
  std::vector<VaeBlock<T, B, nn::Downsample2D<T, B>>> down_blocks;
  VaeMidBlock<T, B> mid_block;
  nn::GroupNorm<T, B> conv_norm_out;
  nn::Conv2d<T, B> conv_out;

  /// (N, 2 * latent_channels, H / f, W / f): mean and logvar stacked on the channel axis, from x (N, in, H, W).
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode = Mode::Infer) {
    auto h = conv_in.forward(ctx, x, mode);
    for (auto& block : down_blocks) h = block.forward(ctx, std::move(h), mode);
    h = mid_block.forward(ctx, h.view(), mode);
    h = nn::norm_silu(ctx, conv_norm_out, act_, h.view(), mode);
    return conv_out.forward(ctx, h.view(), mode);
  }
  /// dx (N, in, H, W) from dy (N, 2 * latent_channels, H / f, W / f), after forward(..., Mode::Train).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    auto g = conv_out.backward(ctx, dy);
    g = act_.backward(ctx, g.view());
    g = conv_norm_out.backward(ctx, g.view());
    g = mid_block.backward(ctx, g.view());
    for (auto block = down_blocks.rbegin(); block != down_blocks.rend(); ++block)
      g = block->backward(ctx, std::move(g));
    return conv_in.backward(ctx, g.view());
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    conv_in.visit(nn::join(name, "conv_in"), visitor);
    nn::visit_each(name, "down_blocks", down_blocks, visitor);
    mid_block.visit(nn::join(name, "mid_block"), visitor);
    conv_norm_out.visit(nn::join(name, "conv_norm_out"), visitor);
    conv_out.visit(nn::join(name, "conv_out"), visitor);
  }

 private:
  nn::SiLU<T, B> act_;
};

/// reference: diffusers/models/autoencoders/vae.py, Decoder
template <class T, class B = Cpu>
class VaeDecoder {
 public:
  VaeDecoder() = default;
  explicit VaeDecoder(VaeConfig const& c) {
    auto const& ch = c.block_out_channels;
    conv_in = nn::Conv2d<T, B>(c.latent_channels, ch.back(), 3, 1, 1);
    mid_block = VaeMidBlock<T, B>(ch.back(), c.norm_num_groups, c.mid_block_add_attention);
    Index out = ch.back();
    for (std::size_t i = 0; i < ch.size(); ++i) {
      Index const prev = out;
      out = ch[ch.size() - 1 - i];
      VaeBlock<T, B, nn::Upsample2D<T, B>> block{{}, {}, "upsamplers"};
      for (int j = 0; j < c.layers_per_block + 1; ++j)
        block.resnets.emplace_back(j == 0 ? prev : out, out, 0, c.norm_num_groups, 1e-6);
      if (i + 1 < ch.size()) block.samplers.emplace_back(out, true, out);
      up_blocks.push_back(std::move(block));
    }
    conv_norm_out = nn::GroupNorm<T, B>(c.norm_num_groups, ch[0], 1e-6);
    conv_out = nn::Conv2d<T, B>(ch[0], c.out_channels, 3, 1, 1);
  }
  nn::Conv2d<T, B> conv_in;
  VaeMidBlock<T, B> mid_block;
  std::vector<VaeBlock<T, B, nn::Upsample2D<T, B>>> up_blocks;
  nn::GroupNorm<T, B> conv_norm_out;
  nn::Conv2d<T, B> conv_out;

  /// (N, out_channels, H * f, W * f) from latents (N, latent_channels, H, W) (after post_quant_conv)
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> z, Mode mode = Mode::Infer) {
    auto h = conv_in.forward(ctx, z, mode);
    h = mid_block.forward(ctx, h.view(), mode);
    for (auto& block : up_blocks) h = block.forward(ctx, std::move(h), mode);
    h = nn::norm_silu(ctx, conv_norm_out, act_, h.view(), mode);
    return conv_out.forward(ctx, h.view(), mode);
  }
  /// dz (N, latent_channels, H, W) from dy (N, out_channels, H * f, W * f), after forward(..., Mode::Train).
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    auto g = conv_out.backward(ctx, dy);
    g = act_.backward(ctx, g.view());
    g = conv_norm_out.backward(ctx, g.view());
    for (auto block = up_blocks.rbegin(); block != up_blocks.rend(); ++block) g = block->backward(ctx, std::move(g));
    g = mid_block.backward(ctx, g.view());
    return conv_in.backward(ctx, g.view());
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    conv_in.visit(nn::join(name, "conv_in"), visitor);
    mid_block.visit(nn::join(name, "mid_block"), visitor);
    nn::visit_each(name, "up_blocks", up_blocks, visitor);
    conv_norm_out.visit(nn::join(name, "conv_norm_out"), visitor);
    conv_out.visit(nn::join(name, "conv_out"), visitor);
  }

 private:
  nn::SiLU<T, B> act_;
};

/// The latent distribution of an image: mean and log-variance (clamped to [-30, 20] as diffusers does).
template <class T, class B = Cpu>
struct LatentDistribution {
  Tensor<T, B> mean;    // (N, L, h, w)
  Tensor<T, B> logvar;  // (N, L, h, w)

  /// mean + exp(0.5 logvar) * noise, with `noise` (N, L, h, w) drawn by the caller (torch-compatible or Philox).
  Tensor<T, B> sample(Context<B>& ctx, TensorView<T const, B> noise) const {
    SDLORA_EXPECTS(noise.shape() == mean.shape(),
                   "[vae.sample] noise must be " << mean.shape() << ", got " << noise.shape());
    Tensor<T, B> out(mean.shape());
    Tensor<T, B> std_dev(logvar.shape());
    ops::map<T, B>(ctx, std_dev.view(), logvar.view(), LogvarToStd{});
    ops::zip<T, B>(ctx, out.view(), std_dev.view(), noise, ops::fn::Mul{});
    ops::add<T, B>(ctx, out.view(), out.view(), mean.view());
    return out;
  }

  struct LogvarToStd {
    template <class U>
    SDLORA_HOST_DEVICE U operator()(U lv) const {
      U const c = lv < U(-30) ? U(-30) : (lv > U(20) ? U(20) : lv);
      return U(std::exp(0.5 * double(c)));
    }
  };
};

/// reference: diffusers/models/autoencoders/autoencoder_kl.py, AutoencoderKL
template <class T, class B = Cpu>
class AutoencoderKL {
 public:
  AutoencoderKL() = default;
  explicit AutoencoderKL(VaeConfig config) : config_(std::move(config)), encoder(config_), decoder(config_) {
    Index const l = config_.latent_channels;
    if (config_.use_quant_conv) quant_conv = nn::Conv2d<T, B>(2 * l, 2 * l, 1);
    if (config_.use_post_quant_conv) post_quant_conv = nn::Conv2d<T, B>(l, l, 1);
  }
  VaeConfig const& config() const { return config_; }
  /// Sets the latent scaling factor (saved with the config; a trained-from-scratch VAE measures its own).
  void set_scaling_factor(double factor) { config_.scaling_factor = factor; }

 private:
  VaeConfig config_;

 public:
  VaeEncoder<T, B> encoder;
  VaeDecoder<T, B> decoder;
  nn::Conv2d<T, B> quant_conv;       // present when use_quant_conv
  nn::Conv2d<T, B> post_quant_conv;  // present when use_post_quant_conv

  /// The latent distribution of images (N, 3, H, W) in [-1, 1]; H and W multiples of the downsampling factor.
  /// `logvar` is the raw network output (LatentDistribution::sample and train/vae_objective.hpp clamp it).
  /// Mode::Train keeps what encode_backward needs.
  LatentDistribution<T, B> encode(Context<B>& ctx, TensorView<T const, B> images, Mode mode = Mode::Infer) {
    int const f = config_.scale();
    SDLORA_EXPECTS(
        images.rank() == 4 && images.dim(1) == config_.in_channels && images.dim(2) % f == 0 && images.dim(3) % f == 0,
        "[vae.encode] images must be (N, " << config_.in_channels << ", H, W) with H, W multiples of " << f << ", got "
                                           << images.shape());
    auto h = encoder.forward(ctx, images, mode);  // (N, 2L, H / f, W / f)
    if (config_.use_quant_conv) h = quant_conv.forward(ctx, h.view(), mode);
    Index const n = h.dim(0), l = config_.latent_channels, hh = h.dim(2), ww = h.dim(3);
    LatentDistribution<T, B> d{Tensor<T, B>(Shape{n, l, hh, ww}), Tensor<T, B>(Shape{n, l, hh, ww})};
    ops::split_channels<T, B>(ctx, d.mean.view(), d.logvar.view(), h.view());
    return d;
  }

  /// d images (N, 3, H, W) from the gradients of the last encode(..., Mode::Train)'s mean and (raw) logvar, both
  /// (N, L, H / f, W / f); parameter gradients accumulate.
  Tensor<T, B> encode_backward(Context<B>& ctx, TensorView<T const, B> dmean, TensorView<T const, B> dlogvar) {
    SDLORA_EXPECTS(dmean.rank() == 4 && dmean.shape() == dlogvar.shape() && dmean.dim(1) == config_.latent_channels,
                   "[vae.encode_backward] dmean and dlogvar must both be (N, "
                       << config_.latent_channels << ", h, w), got " << dmean.shape() << " and " << dlogvar.shape());
    Index const l = config_.latent_channels;
    auto dmoments = Tensor<T, B>::uninitialized(Shape{dmean.dim(0), 2 * l, dmean.dim(2), dmean.dim(3)});
    ops::concat_channels<T, B>(ctx, dmoments.view(), dmean, dlogvar);  // (N, 2L, h, w)
    if (!config_.use_quant_conv) return encoder.backward(ctx, dmoments.view());
    auto g = quant_conv.backward(ctx, dmoments.view());
    return encoder.backward(ctx, g.view());
  }

  /// Images (N, 3, H * f, W * f) (roughly in [-1, 1]) from latents (N, L, H, W) (already divided by the scaling
  /// factor). Mode::Train keeps what decode_backward needs.
  Tensor<T, B> decode(Context<B>& ctx, TensorView<T const, B> latents, Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(
        latents.rank() == 4 && latents.dim(1) == config_.latent_channels,
        "[vae.decode] latents must be (N, " << config_.latent_channels << ", H, W), got " << latents.shape());
    if (!config_.use_post_quant_conv) return decoder.forward(ctx, latents, mode);
    auto z = post_quant_conv.forward(ctx, latents, mode);
    return decoder.forward(ctx, z.view(), mode);
  }
  /// d latents (N, L, H, W) from the gradient of the last decode(..., Mode::Train)'s images (N, 3, H * f, W * f);
  /// parameter gradients accumulate.
  Tensor<T, B> decode_backward(Context<B>& ctx, TensorView<T const, B> dimages) {
    auto g = decoder.backward(ctx, dimages);
    if (!config_.use_post_quant_conv) return g;
    return post_quant_conv.backward(ctx, g.view());
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    encoder.visit(nn::join(name, "encoder"), visitor);
    decoder.visit(nn::join(name, "decoder"), visitor);
    if (config_.use_quant_conv) quant_conv.visit(nn::join(name, "quant_conv"), visitor);
    if (config_.use_post_quant_conv) post_quant_conv.visit(nn::join(name, "post_quant_conv"), visitor);
  }
};

}  // namespace sdlora::models
