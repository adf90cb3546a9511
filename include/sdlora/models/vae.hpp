/// @file vae.hpp
/// @brief AutoencoderKL (the SD 1.x / 2.x VAE): encoder to the latent distribution (mean, logvar), sampling with a
/// caller-provided noise tensor, decoder back to pixels, optional tiled decoding. Forward only.
/// Include <sdlora/models.hpp> instead.
#pragma once

#include <cmath>   // std::exp
#include <string>  // std::string
#include <vector>  // std::vector

#include <sdlora/models/config.hpp>  // VaeConfig
#include <sdlora/models/resnet.hpp>  // ResnetBlock2D
#include <sdlora/nn/attention.hpp>   // nn::Attention
#include <sdlora/nn/downsample.hpp>  // nn::Downsample2D
#include <sdlora/nn/upsample.hpp>    // nn::Upsample2D
#include <sdlora/ops/concat.hpp>     // ops::split_channels
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

  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x) {
    Index const n = x.dim(0), c = x.dim(1), hh = x.dim(2), ww = x.dim(3);
    auto h = group_norm.forward(ctx, x);
    Tensor<T, B> tokens(Shape{n, hh * ww, c});
    ops::nchw_to_nlc<T, B>(ctx, tokens.view(), h.view());
    auto a = attn.forward(ctx, tokens.view());
    Tensor<T, B> out(x.shape());
    ops::nlc_to_nchw<T, B>(ctx, out.view(), a.view());
    ops::add<T, B>(ctx, out.view(), out.view(), x);
    return out;
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

  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x) {
    auto h = resnets[0].forward(ctx, x, {});
    if (!attentions.empty()) h = attentions[0].forward(ctx, h.view());
    return resnets[1].forward(ctx, h.view(), {});
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

  Tensor<T, B> forward(Context<B>& ctx, Tensor<T, B> h) {
    for (auto& r : resnets) h = r.forward(ctx, h.view(), {});
    for (auto& s : samplers) h = s.forward(ctx, h.view());
    return h;
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

  /// (N, 2 * latent_channels, H / f, W / f): mean and logvar stacked on the channel axis
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x) {
    auto h = conv_in.forward(ctx, x);
    for (auto& block : down_blocks) h = block.forward(ctx, std::move(h));
    h = mid_block.forward(ctx, h.view());
    h = conv_norm_out.forward(ctx, h.view());
    h = act_.forward(ctx, h.view());
    return conv_out.forward(ctx, h.view());
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
  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> z) {
    auto h = conv_in.forward(ctx, z);
    h = mid_block.forward(ctx, h.view());
    for (auto& block : up_blocks) h = block.forward(ctx, std::move(h));
    h = conv_norm_out.forward(ctx, h.view());
    h = act_.forward(ctx, h.view());
    return conv_out.forward(ctx, h.view());
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
    SDLORA_EXPECTS(noise.shape() == mean.shape(), "[vae.sample] noise must be " << mean.shape() << ", got "
                                                                                  << noise.shape());
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

 private:
  VaeConfig config_;

 public:
  VaeEncoder<T, B> encoder;
  VaeDecoder<T, B> decoder;
  nn::Conv2d<T, B> quant_conv;       // present when use_quant_conv
  nn::Conv2d<T, B> post_quant_conv;  // present when use_post_quant_conv

  /// The latent distribution of images (N, 3, H, W) in [-1, 1]; H and W multiples of the downsampling factor.
  LatentDistribution<T, B> encode(Context<B>& ctx, TensorView<T const, B> images) {
    int const f = config_.scale();
    SDLORA_EXPECTS(images.rank() == 4 && images.dim(1) == config_.in_channels && images.dim(2) % f == 0 &&
                       images.dim(3) % f == 0,
                   "[vae.encode] images must be (N, " << config_.in_channels << ", H, W) with H, W multiples of " << f
                                                      << ", got " << images.shape());
    auto h = encoder.forward(ctx, images);
    if (config_.use_quant_conv) h = quant_conv.forward(ctx, h.view());
    Index const n = h.dim(0), l = config_.latent_channels, hh = h.dim(2), ww = h.dim(3);
    LatentDistribution<T, B> d{Tensor<T, B>(Shape{n, l, hh, ww}), Tensor<T, B>(Shape{n, l, hh, ww})};
    ops::split_channels<T, B>(ctx, d.mean.view(), d.logvar.view(), h.view());
    return d;
  }

  /// Images (N, 3, H * f, W * f) (roughly in [-1, 1]) from latents (N, L, H, W) (already divided by the scaling
  /// factor).
  Tensor<T, B> decode(Context<B>& ctx, TensorView<T const, B> latents) {
    SDLORA_EXPECTS(latents.rank() == 4 && latents.dim(1) == config_.latent_channels,
                   "[vae.decode] latents must be (N, " << config_.latent_channels << ", H, W), got "
                                                       << latents.shape());
    if (!config_.use_post_quant_conv) return decoder.forward(ctx, latents);
    auto z = post_quant_conv.forward(ctx, latents);
    return decoder.forward(ctx, z.view());
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
