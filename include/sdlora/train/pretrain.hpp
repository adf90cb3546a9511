/// @file pretrain.hpp
/// @brief Training a Stable Diffusion model from scratch (or fully fine-tuning one) with the library's own pieces:
/// the denoising UNet with every weight trainable, conditioned on a frozen text encoder, on a captioned image folder
/// (diffusers' train_text_to_image.py objective: epsilon prediction, DDPM noise, uniform timesteps, caption dropout
/// for classifier-free guidance; an EMA copy of the weights as its --use_ema); and, before it, the AutoencoderKL with
/// the KL-regularised reconstruction objective of vae_objective.hpp. sdlora-pretrain runs both stages. Include this
/// header (train.hpp does not: it is model-specific).
///
/// Everything that does not train is computed once: the VAE's latent distribution of every image (mean and standard
/// deviation; each step samples from it, as the script's latent_dist.sample() does) and the text embedding of every
/// distinct caption (the encoder is frozen). Each step then costs one UNet forward and backward.
#pragma once

#include <algorithm>   // std::min
#include <cmath>       // std::sqrt, std::isfinite
#include <cstdint>     // std::int64_t, std::uint64_t
#include <functional>  // std::function
#include <map>         // std::map
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/core/error.hpp>           // SDLORA_THROW
#include <sdlora/core/rng.hpp>             // TorchGenerator
#include <sdlora/models/checkpoint.hpp>    // models::StableDiffusion
#include <sdlora/pipeline/stages.hpp>      // pipeline::tokenize
#include <sdlora/schedulers/factory.hpp>   // schedulers::make_scheduler
#include <sdlora/train/dataset.hpp>        // Dataset
#include <sdlora/train/grad_clip.hpp>      // clip_grad_norm
#include <sdlora/train/loss.hpp>           // mse_loss
#include <sdlora/train/lr_schedule.hpp>    // LrSchedule
#include <sdlora/train/optimizer.hpp>      // make_optimizer
#include <sdlora/train/param_ref.hpp>      // trainable_parameters
#include <sdlora/train/progress.hpp>       // Progress
#include <sdlora/train/vae_objective.hpp>  // vae_training_step

namespace sdlora::train {

/// Cosine decay after a linear warm-up over `warmup` steps (the stages' default schedule).
inline LrScheduleOptions cosine(std::int64_t warmup) {
  LrScheduleOptions l;
  l.type = ScheduleType::Cosine;
  l.warmup_steps = warmup;
  return l;
}

/// The VAE stage's settings (defaults: what the bundled toy model was made with).
struct VaePretrainOptions {
  std::int64_t steps = 1500;
  Index batch_size = 16;
  OptimizerOptions optimizer{"adamw", 1e-3, 0.9, 0.999, 1e-8, 1e-2};
  LrScheduleOptions lr_schedule = cosine(100);  // training_steps = steps when 0
  VaeObjectiveOptions objective{1e-5, VaeReconstructionLoss::L1};
  double max_grad_norm = 1.0;
  /// false: the encoder (and quant_conv) stay frozen and only the decoder trains — the latent space, and so a UNet
  /// trained on it, is unchanged (how SD's ft-MSE decoders were made).
  bool train_encoder = true;
  std::uint64_t seed = 0;
  std::int64_t log_every = 50;
};

/// The UNet stage's settings (defaults: what the bundled toy model was made with).
struct UnetPretrainOptions {
  std::int64_t steps = 4000;
  Index batch_size = 32;
  OptimizerOptions optimizer{"adamw", 1e-3, 0.9, 0.999, 1e-8, 1e-2};
  LrScheduleOptions lr_schedule = cosine(200);  // training_steps = steps when 0
  double max_grad_norm = 1.0;
  /// Also train every weight of the text encoder (a from-scratch model has no pretrained CLIP: a frozen random one
  /// barely tells its prompts apart); its embeddings are then computed every step instead of once.
  bool train_text_encoder = false;
  double caption_dropout = 0.1;  // the empty caption instead, so that classifier-free guidance has an unconditional
  double ema_decay = 0.999;      // 0: no EMA; diffusers' EMAModel warm-up min(decay, (1 + t) / (10 + t))
  std::uint64_t seed = 0;
  std::int64_t log_every = 50;
};

/// What a stage did: the loss of every step (before the update) and the EMA-smoothed last value.
struct PretrainReport {
  std::vector<double> losses;
  double final_loss = 0;  // mean of the last 10% of steps
};

namespace detail {

/// Every example of `data` (centre crop, no flip) as one (N, 3, H, W) tensor in [-1, 1], and the captions.
template <class T>
Tensor<T, Cpu> load_all_images(Dataset const& data, std::vector<std::string>* captions = nullptr) {
  SDLORA_EXPECTS(!data.empty(), "[pretrain] the dataset " << data.root() << " is empty");
  TorchGenerator unused(0);  // no random transform is enabled
  Tensor<T, Cpu> out;
  Index const n = data.size();
  for (Index i = 0; i < n; ++i) {
    Example const ex = data.get(i, unused);
    if (i == 0) out = Tensor<T, Cpu>(Shape{n, ex.image.dim(0), ex.image.dim(1), ex.image.dim(2)});
    Index const per = out.numel() / n;
    SDLORA_EXPECTS(ex.image.numel() == per, "[pretrain] " << ex.source << " is " << ex.image.shape()
                                                          << " after its transforms, the first image "
                                                          << (Shape{out.dim(1), out.dim(2), out.dim(3)})
                                                          << ": use one resolution");
    for (Index k = 0; k < per; ++k) out(i * per + k) = T(ex.image(k));
    if (captions) captions->push_back(ex.caption);
  }
  return out;
}

/// Draws example indices epoch by epoch (a fresh permutation from the generator at each epoch start).
class EpochSampler {
 public:
  explicit EpochSampler(Index n) : n_(n) {}
  Index next(TorchGenerator& g) {
    if (cursor_ == order_.size()) {
      auto r = g.rand(Shape{n_});
      order_.resize(std::size_t(n_));
      for (Index k = 0; k < n_; ++k) order_[std::size_t(k)] = k;
      std::stable_sort(order_.begin(), order_.end(), [&](Index a, Index c) { return r(a) < r(c); });
      cursor_ = 0;
    }
    return order_[cursor_++];
  }

 private:
  Index n_;
  std::vector<Index> order_;
  std::size_t cursor_ = 0;
};

inline double tail_mean(std::vector<double> const& v) {
  std::size_t const tail = std::max<std::size_t>(1, v.size() / 10);
  double s = 0;
  for (std::size_t k = v.size() - tail; k < v.size(); ++k) s += v[k] / double(tail);
  return s;
}

}  // namespace detail

/// Trains every weight of `vae` on the images of `data` (loaded once). `on_step(step, loss)` after each step.
template <class T>
PretrainReport pretrain_vae(Context<Cpu>& ctx, models::AutoencoderKL<T, Cpu>& vae, Dataset const& data,
                            VaePretrainOptions const& o, std::function<void(std::int64_t, double)> const& on_step = {}) {
  SDLORA_EXPECTS(o.steps > 0 && o.batch_size > 0, "[pretrain] steps " << o.steps << ", batch " << o.batch_size);
  auto const images = detail::load_all_images<T>(data);
  Index const n = images.dim(0), per = images.numel() / n, f = vae.config().scale();
  nn::set_trainable(vae, true);
  if (!o.train_encoder) {
    nn::set_trainable(vae.encoder, false);
    nn::set_trainable(vae.quant_conv, false);
  }
  auto params = trainable_parameters<T>(vae, "vae");
  auto opt = make_optimizer<T>(o.optimizer, params);
  LrScheduleOptions ls = o.lr_schedule;
  ls.base_lr = o.optimizer.lr;
  if (ls.training_steps == 0) ls.training_steps = o.steps;
  LrSchedule schedule(ls);
  TorchGenerator g(o.seed);
  detail::EpochSampler sampler(n);
  ProgressOptions po;
  po.label = "pretrain vae";
  po.total = o.steps;
  po.every = o.log_every;
  Progress progress(po);
  PretrainReport report;
  double smooth = 0;
  Shape const batch_shape{o.batch_size, images.dim(1), images.dim(2), images.dim(3)};
  Shape const latent_shape{o.batch_size, vae.config().latent_channels, images.dim(2) / f, images.dim(3) / f};
  for (std::int64_t step = 0; step < o.steps; ++step) {
    Tensor<T, Cpu> batch(batch_shape);
    for (Index i = 0; i < o.batch_size; ++i) std::copy_n(images.data() + sampler.next(g) * per, per, batch.data() + i * per);
    auto const eps = convert<T>(g.randn(latent_shape).view());
    auto const r = vae_training_step<T>(ctx, vae, batch.view(), eps.view(), o.objective);
    double const norm = o.max_grad_norm > 0 ? clip_grad_norm<T>(params, o.max_grad_norm) : 0.0;
    if (!std::isfinite(r.loss) || !std::isfinite(norm))
      SDLORA_THROW(Error, "[pretrain] VAE step " << step + 1 << ": the loss (" << r.loss << ") or the gradient norm ("
                                                 << norm << ") is not finite");
    opt->set_lr(schedule.lr_at(step));
    opt->step();
    opt->zero_grad();
    report.losses.push_back(r.loss);
    smooth = step == 0 ? r.loss : 0.98 * smooth + 0.02 * r.loss;
    progress.update(step + 1, {{"loss", smooth}, {"rec", r.reconstruction_loss}, {"kl", r.kl_loss}});
    if (on_step) on_step(step + 1, r.loss);
  }
  progress.finish();
  nn::set_trainable(vae, false);
  report.final_loss = detail::tail_mean(report.losses);
  return report;
}

/// The VAE's view of a dataset, computed once: per image the latent mean and standard deviation (N, L, h, w).
template <class T>
struct LatentTable {
  Tensor<T, Cpu> mean;
  Tensor<T, Cpu> std_dev;
  std::vector<std::string> captions;
};

/// Encodes every example of `data` (centre crop, no flip, captions as written) with the VAE, `batch` at a time.
template <class T>
LatentTable<T> encode_dataset(Context<Cpu>& ctx, models::AutoencoderKL<T, Cpu>& vae, Dataset const& data,
                              Index batch = 16) {
  LatentTable<T> out;
  auto const images = detail::load_all_images<T>(data, &out.captions);
  Index const n = images.dim(0), per_image = images.numel() / n;
  for (Index start = 0; start < n; start += batch) {
    Index const b = std::min(batch, n - start);
    TensorView<T const, Cpu> const chunk(images.data() + start * per_image,
                                         Shape{b, images.dim(1), images.dim(2), images.dim(3)});
    auto d = vae.encode(ctx, chunk);
    if (start == 0) {
      Shape s = d.mean.shape();
      s[0] = n;
      out.mean = Tensor<T, Cpu>(s);
      out.std_dev = Tensor<T, Cpu>(s);
    }
    Index const per = d.mean.numel() / b;
    for (Index k = 0; k < d.mean.numel(); ++k) {
      double const lv = std::clamp(double(d.logvar(k)), -30.0, 20.0);
      out.mean(start * per + k) = d.mean(k);
      out.std_dev(start * per + k) = T(std::exp(0.5 * lv));
    }
  }
  return out;
}

/// 1 / the standard deviation of the latents sampled from `table` (diffusers' scaling_factor was chosen this way for
/// SD: unit-variance latents for the diffusion model).
template <class T>
double latent_scaling_factor(LatentTable<T> const& table) {
  double s = 0, s2 = 0;
  Index const n = table.mean.numel();
  for (Index k = 0; k < n; ++k) {
    double const m = double(table.mean(k)), sd = double(table.std_dev(k));
    s += m;
    s2 += m * m + sd * sd;  // E[z^2] = mean^2 + var
  }
  double const mu = s / double(n), var = s2 / double(n) - mu * mu;
  SDLORA_EXPECTS(var > 0 && std::isfinite(var), "[pretrain] the latents have variance " << var);
  return 1.0 / std::sqrt(var);
}

/// Trains every weight of `sd.unet` (the text encoder and VAE stay frozen) on the latents in `table`, scaled by
/// `sd.vae.config().scaling_factor`. `on_step(step, loss)` is called after each step (may be empty).
template <class T>
PretrainReport pretrain_unet(Context<Cpu>& ctx, models::StableDiffusion<T, Cpu>& sd, LatentTable<T> const& table,
                             UnetPretrainOptions const& o,
                             std::function<void(std::int64_t, double)> const& on_step = {}) {
  SDLORA_EXPECTS(o.steps > 0 && o.batch_size > 0, "[pretrain] steps " << o.steps << ", batch " << o.batch_size);
  SDLORA_EXPECTS(!sd.is_sdxl(), "[pretrain] SDXL's added conditions are not supported by the UNet stage");
  Index const n = table.mean.dim(0);
  Shape lat = table.mean.shape();
  Index const per = table.mean.numel() / n;
  double const sf = sd.vae.config().scaling_factor;

  // Frozen text encoder: one embedding per distinct caption, and the empty caption (shapes only, when it trains).
  nn::set_trainable(sd.text_encoder, false);
  std::map<std::string, Tensor<T, Cpu>> embedding;
  auto embed = [&](std::string const& caption) -> Tensor<T, Cpu> const& {
    auto it = embedding.find(caption);
    if (it == embedding.end()) {
      auto ids = pipeline::tokenize(sd.tokenizer, {caption});
      it = embedding.emplace(caption, std::move(sd.text_encoder.forward(ctx, ids).last_hidden_state)).first;
    }
    return it->second;
  };
  if (!o.train_text_encoder)  // a training encoder embeds each batch itself
    for (auto const& c : table.captions) embed(c);
  Tensor<T, Cpu> const& empty = embed("");
  Index const ctx_len = empty.dim(1), ctx_dim = empty.dim(2);

  nn::set_trainable(sd.unet, true);
  if (o.train_text_encoder) nn::set_trainable(sd.text_encoder, true);
  auto params = trainable_parameters<T>(sd.unet, "unet");
  if (o.train_text_encoder) {
    auto te = trainable_parameters<T>(sd.text_encoder, "text_encoder");
    params.insert(params.end(), te.begin(), te.end());
  }
  auto opt = make_optimizer<T>(o.optimizer, params);
  LrScheduleOptions ls = o.lr_schedule;
  ls.base_lr = o.optimizer.lr;
  if (ls.training_steps == 0) ls.training_steps = o.steps;
  LrSchedule schedule(ls);
  std::vector<Tensor<T, Cpu>> ema;
  if (o.ema_decay > 0)
    for (auto const& p : params) ema.push_back(p.param->value);

  nlohmann::json sched = sd.scheduler_config;
  auto noise_scheduler = schedulers::make_scheduler("ddpm", sched);
  std::int64_t const train_steps = sched.value("num_train_timesteps", 1000);

  TorchGenerator g(o.seed);
  ProgressOptions po;
  po.label = "pretrain unet";
  po.total = o.steps;
  po.every = o.log_every;
  Progress progress(po);
  PretrainReport report;
  detail::EpochSampler sampler(n);
  double smooth = 0;
  for (std::int64_t step = 0; step < o.steps; ++step) {
    Index const b = o.batch_size;
    lat[0] = b;
    Tensor<float, Cpu> latents(lat);
    Tensor<T, Cpu> context(Shape{b, ctx_len, ctx_dim});
    std::vector<std::string> captions;  // the batch's captions after dropout (a training text encoder's input)
    auto eps = g.randn(lat);
    for (Index i = 0; i < b; ++i) {
      Index const src = sampler.next(g);
      for (Index k = 0; k < per; ++k)
        latents(i * per + k) = float(sf * (double(table.mean(src * per + k)) +
                                           double(table.std_dev(src * per + k)) * double(eps(i * per + k))));
      bool const drop = o.caption_dropout > 0 && double(g.rand(Shape{1})(0)) < o.caption_dropout;
      captions.push_back(drop ? std::string() : table.captions[std::size_t(src)]);
      if (!o.train_text_encoder) {
        auto const& e = drop ? empty : embedding.at(table.captions[std::size_t(src)]);
        std::copy_n(e.data(), e.numel(), context.data() + i * e.numel());
      }
    }
    auto const noise = g.randn(lat);
    auto const t = g.randint(0, train_steps, Shape{b});
    std::vector<std::int64_t> ts_list(t.data(), t.data() + b);
    auto const noisy = noise_scheduler->add_noise(latents.view(), noise.view(), std::span<std::int64_t const>(ts_list));
    Tensor<T, Cpu> ts(Shape{b});
    for (Index i = 0; i < b; ++i) ts(i) = T(ts_list[std::size_t(i)]);
    auto const x = convert<T>(noisy.view());
    if (o.train_text_encoder)
      context = std::move(
          sd.text_encoder.forward(ctx, pipeline::tokenize(sd.tokenizer, captions), nn::Mode::Train).last_hidden_state);
    auto const pred = sd.unet.forward(ctx, x.view(), ts.view(), context.view(), nn::Mode::Train);
    auto const target = convert<T>(noise.view());
    auto loss = mse_loss<T>(pred.view(), target.view());
    auto grads = sd.unet.backward(ctx, loss.grad.view());
    if (o.train_text_encoder) sd.text_encoder.backward(ctx, grads.dencoder_hidden_states.view());
    double const norm = o.max_grad_norm > 0 ? clip_grad_norm<T>(params, o.max_grad_norm) : 0.0;
    if (!std::isfinite(loss.value) || !std::isfinite(norm))
      SDLORA_THROW(Error, "[pretrain] step " << step + 1 << ": the loss (" << loss.value
                                                    << ") or the gradient norm (" << norm << ") is not finite");
    opt->set_lr(schedule.lr_at(step));
    opt->step();
    opt->zero_grad();
    if (!ema.empty()) {
      double const decay = std::min(o.ema_decay, (1.0 + double(step)) / (10.0 + double(step)));
      for (std::size_t k = 0; k < params.size(); ++k) {
        auto const& v = params[k].param->value;
        for (Index i = 0; i < v.numel(); ++i) ema[k](i) = T(decay * double(ema[k](i)) + (1 - decay) * double(v(i)));
      }
    }
    report.losses.push_back(loss.value);
    smooth = step == 0 ? loss.value : 0.98 * smooth + 0.02 * loss.value;
    progress.update(step + 1, {{"loss", smooth}, {"lr", schedule.lr_at(step)}});
    if (on_step) on_step(step + 1, loss.value);
  }
  progress.finish();
  if (!ema.empty())
    for (std::size_t k = 0; k < params.size(); ++k) params[k].param->value = ema[k];
  nn::set_trainable(sd.unet, false);
  nn::set_trainable(sd.text_encoder, false);
  report.final_loss = detail::tail_mean(report.losses);
  return report;
}

}  // namespace sdlora::train
