/// @file stages.hpp
/// @brief The stages of a Stable Diffusion generation, each a public function a user can call alone: prompt
/// encoding, initial latents, classifier-free-guided noise prediction, latent decoding and image post-processing.
/// Every stage is generic over the backend B of the networks: token ids, timesteps, SDXL time ids and random draws
/// are made on the host (TorchGenerator, as diffusers draws them on a CPU generator) and uploaded once; the
/// networks' tensors stay on B. Include <sdlora/pipeline.hpp> instead.
#pragma once

#include <algorithm>  // std::max
#include <cstdint>  // std::int32_t
#include <string>   // std::string
#include <type_traits>  // std::is_same_v
#include <utility>  // std::pair
#include <vector>   // std::vector

#include <sdlora/core/backend.hpp>      // BackendMemory
#include <sdlora/core/rng.hpp>          // TorchGenerator
#include <sdlora/pipeline/embeddings.hpp> // expand_prompt
#include <sdlora/models/checkpoint.hpp> // StableDiffusion
#include <sdlora/ops/concat.hpp>        // ops::concat_channels
#include <sdlora/ops/elementwise.hpp>   // ops::zip, ops::scale, ops::fn::Guidance

namespace sdlora::pipeline {

namespace detail {
/// A host float tensor as T on backend B (Cpu: the conversion itself, no second copy).
template <class T, class B>
Tensor<T, B> to_compute(TensorView<float const, Cpu> x) {
  if constexpr (std::is_same_v<B, Cpu>) return convert<T>(x);
  else return to_backend<B>(convert<T>(x).view());
}
/// A tensor of T on backend B as a host float tensor (Cpu: the conversion itself).
template <class T, class B>
Tensor<float, Cpu> to_host_float(TensorView<T const, B> x) {
  if constexpr (std::is_same_v<B, Cpu>) return convert<float>(x);
  else return convert<float>(to_cpu<T, B>(x).view());
}
/// (n) copies of the timestep t, made on the host and uploaded.
template <class T, class B>
Tensor<T, B> timestep_batch(Index n, double t) {
  Tensor<T, Cpu> ts(Shape{n});
  for (Index i = 0; i < n; ++i) ts(i) = T(t);
  if constexpr (std::is_same_v<B, Cpu>) return ts;
  else return to_backend<B>(ts.view());
}
}  // namespace detail

/// Token ids (N, 77) of prompts: BOS, tokens, EOS, padding with the tokenizer's pad token, truncated to 77.
inline Tensor<std::int32_t, Cpu> tokenize(tokenizer::ClipTokenizer const& tok, std::vector<std::string> const& prompts,
                                          int max_length = 77) {
  Tensor<std::int32_t, Cpu> ids(Shape{Index(prompts.size()), max_length});
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    auto const row = tok.encode_padded(prompts[b], max_length);
    for (int i = 0; i < max_length; ++i) ids.at({Index(b), i}) = row[std::size_t(i)];
  }
  return ids;
}

/// Text embeddings (N, 77, C) as diffusers' encode_prompt computes them: the text encoder's last hidden state, or
/// with clip_skip = k the hidden state k layers before the last, passed through the final LayerNorm. Multi-vector
/// Textual Inversion tokens are expanded first (expand_prompt, diffusers' maybe_convert_prompt).
template <class T, class B>
Tensor<T, B> encode_prompts(Context<B>& ctx, models::StableDiffusion<T, B>& sd, std::vector<std::string> const& prompts,
                            int clip_skip = 0) {
  std::vector<std::string> expanded;
  for (auto const& p : prompts) expanded.push_back(expand_prompt(sd.tokenizer, p));
  auto ids = tokenize(sd.tokenizer, expanded);
  return std::move(sd.text_encoder.forward(ctx, ids, nn::Mode::Infer, clip_skip).last_hidden_state);
}

/// What the UNet is conditioned on: the text context and, for SDXL, the pooled text embedding and the time ids.
template <class T, class B>
struct Conditioning {
  Tensor<T, B> context;   // (N, 77, C)
  Tensor<T, B> pooled;    // (N, P): SDXL only, text_encoder_2's projected pooled output
  Tensor<T, B> time_ids;  // (N, 6): SDXL only, original size (h, w), crop top-left (top, left), target size (h, w)

  bool empty() const { return context.empty(); }
  typename models::UNet2DConditionModel<T, B>::AddedConditions added() const { return {pooled.view(), time_ids.view()}; }
};

/// SDXL's micro-conditioning as diffusers' _get_add_time_ids builds it: one row (orig h, orig w, crop top,
/// crop left, target h, target w) per sample.
struct SizeConditioning {
  int original_height = 0, original_width = 0;
  int crop_top = 0, crop_left = 0;
  int target_height = 0, target_width = 0;
};

/// cat([a, b], dim=0) of two tensors whose other axes agree.
template <class T, class B>
Tensor<T, B> cat_batch(TensorView<T const, B> a, TensorView<T const, B> b) {
  Shape shape = a.shape();
  SDLORA_EXPECTS(b.rank() == a.rank() && b.numel() / std::max<Index>(b.dim(0), 1) == a.numel() / std::max<Index>(a.dim(0), 1),
                 "[cat_batch] " << a.shape() << " and " << b.shape() << " differ beyond the batch axis");
  shape[0] = a.dim(0) + b.dim(0);
  Tensor<T, B> out(shape);
  auto const ca = Tensor<T, B>::from_view(a), cb = Tensor<T, B>::from_view(b);
  BackendMemory<B>::copy(out.data(), ca.data(), std::size_t(ca.numel()) * sizeof(T));
  BackendMemory<B>::copy(out.data() + ca.numel(), cb.data(), std::size_t(cb.numel()) * sizeof(T));
  return out;
}

/// cat([a, b], dim=-1) of (N, L, Ca) and (N, L, Cb): SDXL's two text encoders' states side by side.
template <class T, class B>
Tensor<T, B> concat_features(Context<B>& ctx, TensorView<T const, B> a, TensorView<T const, B> b) {
  Index const n = a.dim(0), l = a.dim(1), ca = a.dim(2), cb = b.dim(2);
  Tensor<T, B> out(Shape{n * l, ca + cb});
  ops::concat_channels<T, B>(ctx, out.view(), a.reshaped(Shape{n * l, ca}), b.reshaped(Shape{n * l, cb}));
  out.reshape(Shape{n, l, ca + cb});
  return out;
}
/// The inverse: d(a), d(b) of d(cat([a, b], dim=-1)), `ca` channels for a.
template <class T, class B>
std::pair<Tensor<T, B>, Tensor<T, B>> split_features(Context<B>& ctx, TensorView<T const, B> y, Index ca) {
  Index const n = y.dim(0), l = y.dim(1), cb = y.dim(2) - ca;
  Tensor<T, B> a(Shape{n, l, ca}), b(Shape{n, l, cb});
  auto const flat = Tensor<T, B>::from_view(y);
  ops::split_channels<T, B>(ctx, a.view().reshaped(Shape{n * l, ca}), b.view().reshaped(Shape{n * l, cb}),
                            flat.view().reshaped(Shape{n * l, ca + cb}));
  return {std::move(a), std::move(b)};
}

/// The conditioning of N prompts. SD 1.x / 2.x: encode_prompts. SDXL (diffusers' StableDiffusionXLPipeline
/// encode_prompt): both text encoders' hidden_states[-(clip_skip + 2)] concatenated along the channels, the pooled
/// embedding from text_encoder_2, and the time ids of `sizes`. With `zeros`, the context and pooled embedding are
/// zeros of the same shapes (force_zeros_for_empty_prompt for an absent negative prompt).
template <class T, class B>
Conditioning<T, B> encode_conditioning(Context<B>& ctx, models::StableDiffusion<T, B>& sd,
                                       std::vector<std::string> const& prompts, int clip_skip = 0,
                                       SizeConditioning const& sizes = {}, bool zeros = false) {
  Conditioning<T, B> out;
  if (!sd.is_sdxl()) {
    out.context = encode_prompts(ctx, sd, prompts, clip_skip);
    if (zeros) out.context = Tensor<T, B>(out.context.shape());
    return out;
  }
  std::vector<std::string> expanded;
  for (auto const& p : prompts) expanded.push_back(expand_prompt(sd.tokenizer, p));
  auto a = sd.text_encoder.forward_hidden_and_pooled(ctx, tokenize(sd.tokenizer, expanded), nn::Mode::Infer, clip_skip);
  auto b = sd.text_encoder_2.forward_hidden_and_pooled(ctx, tokenize(sd.tokenizer_2, expanded), nn::Mode::Infer,
                                                       clip_skip);
  Index const n = a.hidden.dim(0);
  out.context = concat_features<T, B>(ctx, a.hidden.view(), b.hidden.view());
  out.pooled = std::move(b.pooled);
  if (zeros) {
    out.context = Tensor<T, B>(out.context.shape());
    out.pooled = Tensor<T, B>(out.pooled.shape());
  }
  Tensor<T, Cpu> time_ids(Shape{n, 6});  // (N, 6), made on the host
  int const row[6] = {sizes.original_height, sizes.original_width, sizes.crop_top,
                      sizes.crop_left,       sizes.target_height,  sizes.target_width};
  for (Index i = 0; i < n; ++i)
    for (int k = 0; k < 6; ++k) time_ids.at({i, k}) = T(row[k]);
  if constexpr (std::is_same_v<B, Cpu>) out.time_ids = std::move(time_ids);
  else out.time_ids = to_backend<B>(time_ids.view());
  return out;
}

/// Initial latents (N, C, H/f, W/f) = randn(shape, generator) * init_noise_sigma, drawn in one call as diffusers'
/// prepare_latents does (so a seed gives diffusers' latents).
inline Tensor<float, Cpu> initial_latents(TorchGenerator& generator, Shape shape, double init_noise_sigma) {
  auto latents = generator.randn(shape);
  if (init_noise_sigma != 1.0)
    for (auto& v : latents.span()) v = float(double(v) * init_noise_sigma);
  return latents;
}

/// eps = eps_uncond + scale * (eps_cond - eps_uncond) of a (2N, ...) UNet output [uncond; cond], on B.
template <class T, class B>
Tensor<T, B> combine_guidance(Context<B>& ctx, Tensor<T, B> const& eps, Shape const& shape, double scale) {
  Index const n = shape.numel();
  auto out = Tensor<T, B>::uninitialized(shape);
  ops::zip<T, B>(ctx, out.view(), TensorView<T const, B>(eps.data(), shape),
                 TensorView<T const, B>(eps.data() + n, shape), ops::fn::Guidance{scale});
  return out;
}

/// Classifier-free guidance: one UNet call on cat([uncond, cond]) inputs, then
/// eps = eps_uncond + scale * (eps_cond - eps_uncond). With an empty `uncond` (scale <= 1), a plain call.
template <class T, class B>
Tensor<T, B> guided_noise(Context<B>& ctx, models::UNet2DConditionModel<T, B>& unet, TensorView<T const, B> latents,
                          double t, TensorView<T const, B> cond, TensorView<T const, B> uncond, double scale) {
  Index const n = latents.dim(0);
  if (uncond.empty()) {
    auto const ts = detail::timestep_batch<T, B>(n, t);  // (N)
    return unet.forward(ctx, latents, ts.view(), cond);
  }
  // Batch the two passes: latents twice, contexts [uncond; cond] along the batch axis.
  Tensor<T, B> x(Shape{2 * n, latents.dim(1), latents.dim(2), latents.dim(3)});
  BackendMemory<B>::copy(x.data(), latents.data(), std::size_t(latents.numel()) * sizeof(T));
  BackendMemory<B>::copy(x.data() + latents.numel(), latents.data(), std::size_t(latents.numel()) * sizeof(T));
  Tensor<T, B> context(Shape{2 * n, cond.dim(1), cond.dim(2)});
  BackendMemory<B>::copy(context.data(), uncond.data(), std::size_t(uncond.numel()) * sizeof(T));
  BackendMemory<B>::copy(context.data() + uncond.numel(), cond.data(), std::size_t(cond.numel()) * sizeof(T));
  auto const ts = detail::timestep_batch<T, B>(2 * n, t);             // (2N)
  auto eps = unet.forward(ctx, x.view(), ts.view(), context.view());  // (2N, C, h, w)
  return combine_guidance<T, B>(ctx, eps, latents.shape(), scale);
}

/// Classifier-free guidance on full conditionings (SDXL's pooled embeddings and time ids batched like the context);
/// an empty `uncond` means a plain call.
template <class T, class B>
Tensor<T, B> guided_noise(Context<B>& ctx, models::UNet2DConditionModel<T, B>& unet, TensorView<T const, B> latents,
                          double t, Conditioning<T, B> const& cond, Conditioning<T, B> const& uncond, double scale) {
  if (cond.pooled.empty() && cond.time_ids.empty())
    return guided_noise<T, B>(ctx, unet, latents, t, cond.context.view(), uncond.context.view(), scale);
  Index const n = latents.dim(0);
  if (uncond.empty()) {
    auto const ts = detail::timestep_batch<T, B>(n, t);  // (N)
    return unet.forward(ctx, latents, ts.view(), cond.context.view(), cond.added());
  }
  auto const x = cat_batch<T, B>(latents, latents);
  auto const context = cat_batch<T, B>(uncond.context.view(), cond.context.view());
  auto const pooled = cat_batch<T, B>(uncond.pooled.view(), cond.pooled.view());
  auto const time_ids = cat_batch<T, B>(uncond.time_ids.view(), cond.time_ids.view());
  auto const ts = detail::timestep_batch<T, B>(2 * n, t);  // (2N)
  auto eps = unet.forward(ctx, x.view(), ts.view(), context.view(), {pooled.view(), time_ids.view()});
  return combine_guidance<T, B>(ctx, eps, latents.shape(), scale);
}

/// Images (N, 3, H, W) in [-1, 1] (unclamped) from latents (N, C, h, w) in the UNet's scale.
template <class T, class B>
Tensor<T, B> decode_latents(Context<B>& ctx, models::AutoencoderKL<T, B>& vae, TensorView<T const, B> latents) {
  Tensor<T, B> z = Tensor<T, B>::from_view(latents);
  ops::scale<T, B>(ctx, z.view(), 1.0 / vae.config().scaling_factor);
  // The blocks the denoising loop freed and the allocator keeps for reuse are of the UNet's sizes, not the decoder's
  // (whose activations are the largest of a generation): hand them back first, so they do not add to its peak.
  if constexpr (requires { BackendMemory<B>::release_cached(); }) BackendMemory<B>::release_cached();
  return vae.decode(ctx, z.view());
}

/// Latents in the UNet's scale of images (N, 3, H, W) in [-1, 1]: a sample of the VAE's distribution with noise
/// drawn from `generator` on the host (as diffusers' retrieve_latents(..., sample_mode="sample")) and uploaded,
/// times the scaling factor.
template <class T, class B>
Tensor<T, B> encode_images(Context<B>& ctx, models::AutoencoderKL<T, B>& vae, TensorView<T const, B> images,
                           TorchGenerator& generator) {
  auto dist = vae.encode(ctx, images);
  auto const noise = detail::to_compute<T, B>(generator.randn(dist.mean.shape()).view());  // (N, C, h, w)
  auto z = dist.sample(ctx, noise.view());
  ops::scale<T, B>(ctx, z.view(), vae.config().scaling_factor);
  return z;
}

}  // namespace sdlora::pipeline
