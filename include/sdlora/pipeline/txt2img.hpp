/// @file txt2img.hpp
/// @brief Text-to-image and image-to-image generation with diffusers' StableDiffusionPipeline semantics: the same
/// seed gives diffusers' latents (initial noise and every ancestral step's noise come from one torch-compatible
/// generator, drawn in diffusers' order). Include <sdlora/pipeline.hpp> instead.
///
/// Backends: the networks run on the backend B of the StableDiffusion<T, B> they are given (pipeline/device.hpp's
/// on_backend<Cuda>(sd) copies a loaded checkpoint to the GPU). What runs where:
///  - on B: the text encoders (once per request: the embeddings are made on B and stay there), every UNet call with
///    its classifier-free-guidance combination (ops::fn::Guidance), the VAE encode / decode;
///  - on the host, in float: the scheduler (set_timesteps, scale_model_input, step, add_noise: all of its arithmetic,
///    in the same code for every backend, so a seed gives the same schedule), every random draw (TorchGenerator:
///    initial latents, ancestral noise, the VAE sample), the CFG scale, the finiteness checks and the step callback.
///  - crossing per denoising step: the scaled latents up (N, C, h, w) and the guided noise prediction down
///    (N, C, h, w), 2 x 64 KiB per image at 512 px, against a UNet call of 2N images; the final latents go down once
///    after the VAE decode's images.
#pragma once

#include <algorithm>   // std::min
#include <functional>  // std::function
#include <memory>      // std::unique_ptr
#include <string>      // std::string
#include <type_traits> // std::type_identity_t
#include <vector>      // std::vector

#include <sdlora/pipeline/checks.hpp>         // all_finite, NonFiniteError
#include <sdlora/pipeline/stages.hpp>         // encode_prompts, initial_latents, guided_noise, decode_latents
#include <sdlora/schedulers/factory.hpp>      // schedulers::make_scheduler

namespace sdlora::pipeline {

/// One generation request.
struct GenerateOptions {
  std::string prompt;
  std::string negative_prompt;
  int steps = 30;
  double guidance_scale = 7.5;  // <= 1 disables classifier-free guidance
  int width = 512;
  int height = 512;
  int batch_size = 1;           // images generated together for this prompt (one generator stream)
  std::uint64_t seed = 0;
  std::string sampler;          // "" = the checkpoint's own scheduler; ddpm ddim pndm euler euler_a dpmpp_2m
  bool karras = false;
  int clip_skip = 0;
  double strength = 0.8;        // img2img: how much of the schedule to run
  // SDXL micro-conditioning (diffusers' original_size, crops_coords_top_left, target_size); 0 = the output size
  // (original, target) and 0, 0 (crop), as diffusers' defaults.
  int original_width = 0, original_height = 0;
  int crop_top = 0, crop_left = 0;
  int target_width = 0, target_height = 0;
};

/// What a step callback sees; returning false cancels the generation (generate throws GenerationCancelled).
struct StepInfo {
  int step;       // 0-based
  int total;
  double timestep;
  TensorView<float const, Cpu> latents;  // after this step
};
using StepCallback = std::function<bool(StepInfo const&)>;

struct GenerationCancelled : Error {
  using Error::Error;
};

/// The result: decoded images in [-1, 1] (N, 3, H, W) and the final latents (N, C, H/f, W/f).
struct Generated {
  Tensor<float, Cpu> images;
  Tensor<float, Cpu> latents;
};

/// The scheduler a request asks for, configured from the checkpoint's scheduler config.
template <class T, class B>
std::unique_ptr<schedulers::Scheduler> make_scheduler(models::StableDiffusion<T, B> const& sd, GenerateOptions const& o) {
  return schedulers::make_scheduler(o.sampler, sd.scheduler_config, o.karras);
}

/// The denoising loop from `latents` over `timesteps` (a suffix of the scheduler's schedule for img2img). The
/// latents stay on the host in float (the scheduler's step is host arithmetic); each step uploads the scaled latents
/// as T, runs the guided UNet call on B and downloads the noise prediction.
template <class T, class B>
Tensor<float, Cpu> denoise(Context<B>& ctx, models::UNet2DConditionModel<T, B>& unet,
                           schedulers::Scheduler& scheduler, Tensor<float, Cpu> latents,
                           std::vector<double> const& timesteps, Conditioning<T, B> const& cond,
                           Conditioning<T, B> const& uncond, double guidance_scale, TorchGenerator& generator,
                           StepCallback const& callback = {}) {
  int const total = int(timesteps.size());
  for (int i = 0; i < total; ++i) {
    double const t = timesteps[std::size_t(i)];
    auto const x = scheduler.scale_model_input(latents.view(), t);  // (N, C, h, w) host float
    auto eps = guided_noise<T, B>(ctx, unet, detail::to_compute<T, B>(x.view()).view(), t, cond, uncond,
                                  guidance_scale);                  // (N, C, h, w) on B
    auto const eps_f = detail::to_host_float<T, B>(eps.view());
    Tensor<float, Cpu> noise;
    if (scheduler.step_uses_noise(t)) noise = generator.randn(eps_f.shape());
    latents = std::move(scheduler.step(eps_f.view(), t, latents.view(), noise.view()).prev_sample);
    if (!all_finite(latents))
      SDLORA_THROW(pipeline::NonFiniteError, "[generate] denoising step " << i + 1 << " of " << total << " (timestep "
                                                                          << t << "): the latents became NaN or inf");
    if (callback && !callback(StepInfo{i, total, t, latents.view()}))
      throw GenerationCancelled("[generate] cancelled at step " + std::to_string(i + 1) + " of " +
                                std::to_string(total));
  }
  return latents;
}

/// The same with text contexts only (SD 1.x / 2.x).
template <class T, class B>
Tensor<float, Cpu> denoise(Context<B>& ctx, models::UNet2DConditionModel<T, B>& unet,
                           schedulers::Scheduler& scheduler, Tensor<float, Cpu> latents,
                           std::vector<double> const& timesteps, std::type_identity_t<TensorView<T const, B>> cond,
                           std::type_identity_t<TensorView<T const, B>> uncond, double guidance_scale,
                           TorchGenerator& generator,
                           StepCallback const& callback = {}) {
  Conditioning<T, B> c, u;
  c.context = Tensor<T, B>::from_view(cond);
  if (!uncond.empty()) u.context = Tensor<T, B>::from_view(uncond);
  return denoise<T, B>(ctx, unet, scheduler, std::move(latents), timesteps, c, u, guidance_scale, generator,
                       callback);
}

namespace detail {
template <class T, class B>
void check_size(models::StableDiffusion<T, B> const& sd, GenerateOptions const& o) {
  int const f = sd.vae_scale();
  if (o.width <= 0 || o.height <= 0 || o.width % f != 0 || o.height % f != 0)
    SDLORA_THROW(ConfigError, "[generate] width and height must be positive multiples of " << f << ", got "
                                                                                        << o.width << "x" << o.height);
  if (o.steps <= 0) SDLORA_THROW(ConfigError, "[generate] steps must be positive, got " << o.steps);
  if (o.batch_size <= 0) SDLORA_THROW(ConfigError, "[generate] batch size must be positive, got " << o.batch_size);
}

/// (cond, uncond) conditionings for a batch; uncond empty without guidance. SDXL: an empty negative prompt with
/// force_zeros_for_empty_prompt gives zero embeddings (diffusers, when no negative prompt is passed).
template <class T, class B>
std::pair<Conditioning<T, B>, Conditioning<T, B>> prompt_embeddings(Context<B>& ctx, models::StableDiffusion<T, B>& sd,
                                                                    GenerateOptions const& o) {
  std::vector<std::string> const p(std::size_t(o.batch_size), o.prompt), n(std::size_t(o.batch_size), o.negative_prompt);
  SizeConditioning sizes;
  sizes.original_height = o.original_height > 0 ? o.original_height : o.height;
  sizes.original_width = o.original_width > 0 ? o.original_width : o.width;
  sizes.crop_top = o.crop_top;
  sizes.crop_left = o.crop_left;
  sizes.target_height = o.target_height > 0 ? o.target_height : o.height;
  sizes.target_width = o.target_width > 0 ? o.target_width : o.width;
  auto cond = encode_conditioning(ctx, sd, p, o.clip_skip, sizes);
  Conditioning<T, B> uncond;
  if (o.guidance_scale > 1.0) {
    bool const zeros = sd.is_sdxl() && sd.force_zeros_for_empty_prompt && o.negative_prompt.empty();
    uncond = encode_conditioning(ctx, sd, n, o.clip_skip, sizes, zeros);
  }
  if (!all_finite(cond.context) || !all_finite(uncond.context) || !all_finite(cond.pooled) ||
      !all_finite(uncond.pooled))
    SDLORA_THROW(pipeline::NonFiniteError, "[generate] text encoder: the prompt embeddings are NaN or inf");
  return {std::move(cond), std::move(uncond)};
}

/// The VAE decode of the final latents; NonFiniteError when the pixels are not finite (never a black image).
template <class T, class B>
Generated decode(Context<B>& ctx, models::StableDiffusion<T, B>& sd, Tensor<float, Cpu> latents) {
  Generated out;
  auto const images = decode_latents<T, B>(ctx, sd.vae, detail::to_compute<T, B>(latents.view()).view());
  out.images = detail::to_host_float<T, B>(images.view());  // (N, 3, H, W)
  if (!all_finite(out.images))
    SDLORA_THROW(pipeline::NonFiniteError, "[generate] VAE decode: the pixels are NaN or inf");
  out.latents = std::move(latents);
  return out;
}
}  // namespace detail

/// Text to image.
template <class T, class B>
Generated txt2img(Context<B>& ctx, models::StableDiffusion<T, B>& sd, GenerateOptions const& o,
                  StepCallback const& callback = {}) {
  detail::check_size(sd, o);
  auto scheduler = make_scheduler(sd, o);
  auto [cond, uncond] = detail::prompt_embeddings(ctx, sd, o);
  TorchGenerator generator(o.seed);
  scheduler->set_timesteps(o.steps);
  int const f = sd.vae_scale();
  Shape const shape{o.batch_size, sd.unet.config().in_channels, o.height / f, o.width / f};
  auto latents = initial_latents(generator, shape, scheduler->init_noise_sigma());
  latents = denoise<T, B>(ctx, sd.unet, *scheduler, std::move(latents), scheduler->timesteps(), cond, uncond,
                          o.guidance_scale, generator, callback);
  return detail::decode(ctx, sd, std::move(latents));
}

/// Image to image: the init image (3, H, W) or (N, 3, H, W) in [-1, 1] is encoded, noised to the timestep that
/// `strength` selects, and denoised from there (diffusers' StableDiffusionImg2ImgPipeline).
template <class T, class B>
Generated img2img(Context<B>& ctx, models::StableDiffusion<T, B>& sd, TensorView<float const, Cpu> init_image,
                  GenerateOptions o, StepCallback const& callback = {}) {
  Tensor<float, Cpu> image = Tensor<float, Cpu>::from_view(init_image);
  if (image.rank() == 3) image.reshape(Shape{1, image.dim(0), image.dim(1), image.dim(2)});
  SDLORA_EXPECTS(image.rank() == 4 && image.dim(1) == 3, "[img2img] init image must be (3, H, W), got "
                                                             << init_image.shape());
  o.height = int(image.dim(2));
  o.width = int(image.dim(3));
  detail::check_size(sd, o);
  if (!(o.strength > 0.0 && o.strength <= 1.0))
    SDLORA_THROW(ConfigError, "[img2img] strength must be in (0, 1], got " << o.strength);
  auto scheduler = make_scheduler(sd, o);
  auto [cond, uncond] = detail::prompt_embeddings(ctx, sd, o);
  TorchGenerator generator(o.seed);
  scheduler->set_timesteps(o.steps);
  // diffusers get_timesteps: skip the first steps - int(steps * strength) of the schedule.
  int const init_timestep = std::min(int(double(o.steps) * o.strength), o.steps);
  int const t_start = std::max(o.steps - init_timestep, 0) * scheduler->order();
  std::vector<double> const all = scheduler->timesteps();
  std::vector<double> const timesteps(all.begin() + std::min<std::size_t>(std::size_t(t_start), all.size()), all.end());
  if (timesteps.empty())
    SDLORA_THROW(ConfigError, "[img2img] strength " << o.strength << " with " << o.steps << " steps leaves no step");
  scheduler->set_begin_index(t_start);
  // Encode (one generator draw for the VAE sample), repeat over the batch, then noise at the first timestep.
  auto const z = encode_images<T, B>(ctx, sd.vae, detail::to_compute<T, B>(image.view()).view(), generator);
  auto init = detail::to_host_float<T, B>(z.view());  // (1, C, h, w): repeated and noised on the host
  if (!all_finite(init))
    SDLORA_THROW(pipeline::NonFiniteError, "[img2img] VAE encode: the init image's latents are NaN or inf");
  Tensor<float, Cpu> batch(Shape{o.batch_size * init.dim(0), init.dim(1), init.dim(2), init.dim(3)});
  for (int b = 0; b < o.batch_size; ++b)
    std::copy_n(init.data(), init.numel(), batch.data() + b * init.numel());
  auto noise = generator.randn(batch.shape());
  std::vector<double> const first(std::size_t(batch.dim(0)), timesteps.front());
  auto latents = scheduler->add_noise(batch.view(), noise.view(), std::span<double const>(first));
  latents = denoise<T, B>(ctx, sd.unet, *scheduler, std::move(latents), timesteps, cond, uncond, o.guidance_scale,
                          generator, callback);
  return detail::decode(ctx, sd, std::move(latents));
}

}  // namespace sdlora::pipeline
