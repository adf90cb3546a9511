/// @file trainer.hpp
/// @brief The training step of diffusers' LoRA recipes (train_text_to_image_lora.py, train_dreambooth_lora.py,
/// textual_inversion.py) on a loaded Stable Diffusion: LoRA injection (UNet and optionally text encoder) or new
/// token rows (Textual Inversion), noise/timestep sampling from one torch-compatible generator, the epsilon /
/// v-prediction target, MSE with optional min-SNR-γ weighting or prior preservation, gradient accumulation, grad
/// clipping, optimizer and LR schedule, and the state a checkpoint needs. Include <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>  // std::copy_n
#include <cmath>    // std::isfinite
#include <cstdint>  // std::int64_t
#include <limits>   // std::numeric_limits
#include <map>      // std::map
#include <memory>   // std::unique_ptr
#include <string>   // std::string
#include <type_traits>  // std::is_same_v
#include <utility>  // std::move
#include <vector>   // std::vector

#include <sdlora/core/rng.hpp>              // TorchGenerator
#include <sdlora/lora/format.hpp>           // lora::collect, save_kohya, save_peft
#include <sdlora/lora/inject.hpp>           // lora::inject, freeze_base
#include <sdlora/models/checkpoint.hpp>     // models::StableDiffusion
#include <sdlora/pipeline/stages.hpp>       // pipeline::tokenize
#include <sdlora/schedulers/factory.hpp>    // schedulers::make_scheduler
#include <sdlora/train/grad_clip.hpp>       // clip_grad_norm
#include <sdlora/train/loss.hpp>            // mse_loss, weighted_mse_loss, prior_preservation_loss
#include <sdlora/train/lr_schedule.hpp>     // LrSchedule
#include <sdlora/train/non_finite.hpp>      // all_finite, NonFiniteProbes, first_non_finite_parameter
#include <sdlora/train/optimizer.hpp>       // make_optimizer
#include <sdlora/train/param_ref.hpp>       // trainable_parameters
#include <sdlora/train/state.hpp>           // TrainingState

namespace sdlora::train {

enum class Method { Lora, DreamBooth, TextualInversion };

inline Method method_from_name(std::string const& name) {
  if (name == "lora") return Method::Lora;
  if (name == "dreambooth") return Method::DreamBooth;
  if (name == "textual_inversion") return Method::TextualInversion;
  SDLORA_THROW(ConfigError, "[train] unknown method '" << name << "' (expected lora, dreambooth or textual_inversion)");
}

/// Everything that decides what a training step computes (flag names follow diffusers' scripts).
struct TrainerOptions {
  Method method = Method::Lora;
  // LoRA
  int rank = 4;
  std::optional<double> alpha;                        // absent: alpha = rank (diffusers' scripts)
  double lora_dropout = 0.0;
  std::string target_modules = "to_q|to_k|to_v|to_out\\.0";  // UNet leaves (PEFT end-of-name match)
  bool train_conv = false;                            // also LoCon on matching convolutions
  lora::LoraInit init = lora::LoraInit::Gaussian;     // diffusers' scripts: init_lora_weights="gaussian"
  bool train_text_encoder = false;
  std::string text_target_modules = "q_proj|k_proj|v_proj|out_proj";
  double text_encoder_lr = 0.0;                       // 0: the UNet's learning rate
  // Textual Inversion
  std::string placeholder_token;                      // e.g. "<erica>"
  std::string initializer_token;                      // e.g. "toy" (must be one token)
  int num_vectors = 1;
  // Objective
  std::string prediction_type;                        // "" = the checkpoint scheduler's
  double snr_gamma = 0.0;                             // 0: plain MSE
  double noise_offset = 0.0;
  double prior_loss_weight = 1.0;                     // DreamBooth with prior preservation
  bool with_prior_preservation = false;
  // Optimisation
  OptimizerOptions optimizer;
  LrScheduleOptions lr_schedule;
  int gradient_accumulation_steps = 1;
  double max_grad_norm = 1.0;                         // <= 0: no clipping
  bool gradient_checkpointing = false;
  std::uint64_t seed = 0;
};

/// One micro-batch: latents already multiplied by the VAE scaling factor, token ids, and (optionally) the noise
/// and timesteps; empty ones are drawn from the trainer's generator in diffusers' order. SDXL also needs the second
/// tokenizer's ids and each sample's time ids (train_dreambooth_lora_sdxl.py's compute_time_ids).
struct MicroBatch {
  Tensor<float, Cpu> latents;          // (N, C, h, w)
  Tensor<std::int32_t, Cpu> input_ids;  // (N, 77)
  Tensor<std::int32_t, Cpu> input_ids_2;  // (N, 77): SDXL, tokenizer_2's ids
  Tensor<float, Cpu> time_ids;            // (N, 6): SDXL, original size (h, w), crop top-left, target size (h, w)
  Tensor<float, Cpu> noise;            // (N, C, h, w) or empty
  std::vector<std::int64_t> timesteps;  // N values or empty
};

/// What one optimizer step reports.
struct StepReport {
  double loss = 0;       // mean over the micro-batches
  double grad_norm = 0;  // before clipping
  double lr = 0;         // the UNet learning rate used for this step
  bool skipped = false;  // the loss or the gradient norm was not finite: no update was applied (the step counts)
  std::string non_finite_parameter;  // set when the update itself left this trainable parameter non-finite
};

/// The LoRA / DreamBooth / Textual Inversion trainer over a loaded model (which it modifies: adapters are attached,
/// base weights frozen, token rows added), on the model's backend B. Host side: the generator (noise, timesteps),
/// the noise scheduler's arithmetic (noisy latents and the target), the learning-rate schedule and the micro-batches
/// themselves; each micro-batch crosses to B once (noisy latents, target, timesteps, time ids) and the networks, the
/// loss, clipping, the optimizers and the Textual Inversion row restore run on B.
template <class T, class B = Cpu>
class Trainer {
 public:
  Trainer(Context<B>& ctx, models::StableDiffusion<T, B>& sd, TrainerOptions options)
      : ctx_(ctx), sd_(sd), o_(std::move(options)), generator_(o_.seed) {
    if (o_.gradient_accumulation_steps < 1)
      SDLORA_THROW(ConfigError, "[train] gradient_accumulation_steps must be >= 1, got " << o_.gradient_accumulation_steps);
    nlohmann::json sched = sd_.scheduler_config;
    if (!o_.prediction_type.empty()) sched["prediction_type"] = o_.prediction_type;
    noise_scheduler_ = schedulers::make_scheduler("ddpm", sched);
    std::string const pt = sched.value("prediction_type", std::string("epsilon"));
    if (pt == "epsilon") prediction_ = PredictionType::Epsilon;
    else if (pt == "v_prediction") prediction_ = PredictionType::VPrediction;
    else SDLORA_THROW(ConfigError, "[train] prediction_type '" << pt << "' is not supported for training");

    nn::set_trainable(sd_.unet, false);
    nn::set_trainable(sd_.text_encoder, false);
    nn::set_trainable(sd_.text_encoder_2, false);
    if (sd_.is_sdxl() && o_.method == Method::TextualInversion)
      SDLORA_THROW(ConfigError, "[train] Textual Inversion on SDXL (an embedding per text encoder) is not supported; "
                                "train a LoRA or DreamBooth-LoRA");
    if (o_.method == Method::TextualInversion) setup_textual_inversion();
    else setup_lora();
    sd_.unet.set_gradient_checkpointing(o_.gradient_checkpointing);

    unet_params_ = trainable_parameters<T, B>(sd_.unet, "unet");
    text_params_ = trainable_parameters<T, B>(sd_.text_encoder, "text_encoder");
    if (sd_.is_sdxl()) {
      auto two = trainable_parameters<T, B>(sd_.text_encoder_2, "text_encoder_2");
      text_params_.insert(text_params_.end(), two.begin(), two.end());
    }
    if (unet_params_.empty() && text_params_.empty()) SDLORA_THROW(ConfigError, "[train] nothing to train");
    if (!unet_params_.empty()) unet_opt_ = make_optimizer<T, B>(o_.optimizer, unet_params_);
    if (!text_params_.empty()) {
      OptimizerOptions te = o_.optimizer;
      if (o_.method == Method::TextualInversion) te.lr = o_.optimizer.lr;
      else if (o_.text_encoder_lr > 0) te.lr = o_.text_encoder_lr;
      text_opt_ = make_optimizer<T, B>(te, text_params_);
    }
    LrScheduleOptions ls = o_.lr_schedule;
    ls.base_lr = o_.optimizer.lr;
    schedule_ = std::make_unique<LrSchedule>(ls);
  }

  TrainerOptions const& options() const { return o_; }
  std::int64_t global_step() const { return global_step_; }
  TorchGenerator& generator() { return generator_; }
  schedulers::Scheduler const& noise_scheduler() const { return *noise_scheduler_; }
  /// Every trainable parameter, UNet first, under "unet." / "text_encoder." names.
  std::vector<ParamRef<T, B>> parameters() const {
    auto all = unet_params_;
    all.insert(all.end(), text_params_.begin(), text_params_.end());
    return all;
  }
  /// Distinct prompts whose embeddings the frozen text encoders computed and kept (0 while a text encoder trains).
  std::size_t cached_prompts() const { return prompt_cache_.size(); }

  /// Encodes and keeps the embeddings of every prompt of `b` now (frozen text encoders only), as the first step
  /// that sees them would.
  void cache_prompts(MicroBatch const& b) {
    if (!text_params_.empty())
      SDLORA_THROW(ConfigError, "[train] prompt embeddings are cached only while the text encoders are frozen");
    frozen_conditioning(b);
  }
  /// Frees the frozen text encoders (their weights: 0.5 GB on SD 1.5, 3.3 GB on SDXL in float32) once every prompt the
  /// run will use is cached, as diffusers' scripts delete the encoders after precomputing the prompt embeddings. The
  /// model's text encoders are empty afterwards (generation needs a reload); an uncached prompt is then an error.
  void release_text_encoders() {
    if (!text_params_.empty())
      SDLORA_THROW(ConfigError, "[train] the text encoders train (LoRA or Textual Inversion): they cannot be released");
    sd_.text_encoder = models::ClipTextModel<T, B>();
    sd_.text_encoder_2 = models::ClipTextModel<T, B>();
    text_encoders_released_ = true;
  }
  bool text_encoders_released() const { return text_encoders_released_; }
  /// Textual Inversion: the ids of the added token rows.
  std::vector<int> const& placeholder_ids() const { return placeholder_ids_; }
  std::vector<std::string> const& placeholder_tokens() const { return placeholder_tokens_; }

  /// Fills the micro-batch's missing noise and timesteps from the generator, in diffusers' order:
  /// noise = randn(latents.shape); noise += offset * randn(N, C, 1, 1); timesteps = randint(0, T, (N,)).
  void draw_noise(MicroBatch& b) {
    if (b.noise.empty()) {
      b.noise = generator_.randn(b.latents.shape());
      if (o_.noise_offset != 0.0) {
        Index const n = b.latents.dim(0), c = b.latents.dim(1), hw = b.latents.dim(2) * b.latents.dim(3);
        auto off = generator_.randn(Shape{n, c, 1, 1});
        for (Index i = 0; i < n * c; ++i)
          for (Index k = 0; k < hw; ++k) b.noise(i * hw + k) += float(o_.noise_offset) * off(i);
      }
    }
    if (b.timesteps.empty()) {
      auto t = generator_.randint(0, noise_scheduler_->num_train_timesteps(), Shape{b.latents.dim(0)});
      b.timesteps.assign(t.span().begin(), t.span().end());
    }
  }

  /// Forward and backward of one micro-batch; gradients accumulate (scaled by 1 / accumulation steps, as
  /// accelerate's backward does). Returns the unscaled loss.
  double forward_backward(MicroBatch b) {
    draw_noise(b);
    return forward_backward_drawn(b);
  }

  /// Clips, steps the optimizers at the scheduled learning rate, restores frozen embedding rows (Textual
  /// Inversion), zeroes gradients and advances the step. A non-finite gradient norm drops the update instead
  /// (StepReport::skipped); a parameter the update made non-finite is named in StepReport::non_finite_parameter.
  StepReport optimizer_step() {
    StepReport r;
    auto all = parameters();
    r.grad_norm = o_.max_grad_norm > 0 ? clip_grad_norm<T, B>(ctx_, all, o_.max_grad_norm)
                                       : double(grad_norm<T, B>(ctx_, all));
    double const mult = schedule_->multiplier(global_step_);
    r.lr = o_.optimizer.lr * mult;
    if (!std::isfinite(r.grad_norm)) {
      drop_update();
      r.skipped = true;
      return r;
    }
    if (unet_opt_) {
      unet_opt_->set_lr(o_.optimizer.lr * mult);
      unet_opt_->step();
      unet_opt_->zero_grad();
    }
    if (text_opt_) {
      double const base = o_.method != Method::TextualInversion && o_.text_encoder_lr > 0 ? o_.text_encoder_lr
                                                                                          : o_.optimizer.lr;
      text_opt_->set_lr(base * mult);
      text_opt_->step();
      text_opt_->zero_grad();
    }
    if (o_.method == Method::TextualInversion) restore_frozen_rows();
    for (auto const& p : all)
      if (!finite(p.param->value.view())) {
        r.non_finite_parameter = p.name;
        break;
      }
    ++global_step_;
    return r;
  }

  /// One optimizer step over `gradient_accumulation_steps` micro-batches. A non-finite loss or gradient norm
  /// applies no update (StepReport::skipped; the step still counts) and keeps the micro-batches for
  /// locate_non_finite().
  StepReport step(std::vector<MicroBatch> micro) {
    SDLORA_EXPECTS(int(micro.size()) == o_.gradient_accumulation_steps,
                   "[train] " << micro.size() << " micro-batches for " << o_.gradient_accumulation_steps
                              << " accumulation steps");
    double loss = 0;
    for (auto& m : micro) {
      draw_noise(m);
      loss += forward_backward_drawn(m);
    }
    loss /= double(micro.size());
    StepReport r;
    if (std::isfinite(loss)) {
      r = optimizer_step();
    } else {
      r.grad_norm = std::numeric_limits<double>::quiet_NaN();
      r.lr = o_.optimizer.lr * schedule_->multiplier(global_step_);
      drop_update();
      r.skipped = true;
    }
    r.loss = loss;
    if (r.skipped) failed_batches_ = std::move(micro);
    return r;
  }

  /// After a skipped step: re-runs its micro-batches with a check after every Linear / Conv2d (forward, then
  /// backward) and says where the first non-finite value appeared ("the output of unet.down_blocks.0...to_k") and
  /// which parameter, if any, holds a NaN or inf. Leaves the gradients zero.
  std::string locate_non_finite() {
    std::string where;
    for (auto const& m : failed_batches_)
      if (!all_finite(m.latents)) where = "the latents of the batch (VAE encoding)";
    if (where.empty()) {
      NonFiniteProbes<T, models::ClipTextModel<T, B>, B> text_probes(sd_.text_encoder, "text_encoder");
      NonFiniteProbes<T, models::UNet2DConditionModel<T, B>, B> unet_probes(sd_.unet, "unet");
      try {
        for (auto const& m : failed_batches_) forward_backward_drawn(m);
        where = "no module output or gradient in a re-run (the loss or its reduction overflowed)";
      } catch (detail::NonFiniteFound const& e) {
        where = e.what();
      }
    }
    for (auto const& p : parameters()) p.param->zero_grad();
    auto bad = first_non_finite_parameter(sd_.text_encoder, "text_encoder");
    if (!bad) bad = first_non_finite_parameter(sd_.unet, "unet");
    if (bad) where += "; parameter " + *bad + " holds NaN or inf";
    return where;
  }

  /// The state a checkpoint holds (parameters, optimizer moments, step, generator state); the caller adds the
  /// data order and settings.
  TrainingState<T> state() const {
    TrainingState<T> s;
    s.global_step = global_step_;
    s.lr_schedule_step = global_step_;
    s.parameters = capture_parameters(parameters());
    if (unet_opt_) merge_optimizer(s.optimizer, unet_opt_->state_dict());
    if (text_opt_) merge_optimizer(s.optimizer, text_opt_->state_dict());
    auto const bytes = generator_.torch_state_bytes();
    std::vector<std::uint64_t> words((bytes.size() + 7) / 8, 0);
    for (std::size_t i = 0; i < bytes.size(); ++i) words[i / 8] |= std::uint64_t(bytes[i]) << (8 * (i % 8));
    s.rng["noise"] = words;
    s.rng["noise_bytes"] = {bytes.size()};
    return s;
  }
  /// Restores what state() captured.
  void load_state(TrainingState<T> const& s) {
    restore_parameters(parameters(), s.parameters);
    if (unet_opt_) unet_opt_->load_state_dict(split_optimizer(s.optimizer, unet_params_));
    if (text_opt_) text_opt_->load_state_dict(split_optimizer(s.optimizer, text_params_));
    global_step_ = s.global_step;
    auto const w = s.rng.find("noise"), nb = s.rng.find("noise_bytes");
    if (w == s.rng.end() || nb == s.rng.end() || nb->second.size() != 1 || nb->second[0] > w->second.size() * 8 ||
        s.global_step < 0)
      SDLORA_THROW(FormatError, "[training_state] the checkpoint's step or noise generator state (rng.noise, "
                                "rng.noise_bytes) is missing or inconsistent");
    auto const& words = w->second;
    std::size_t const n = std::size_t(nb->second[0]);
    std::vector<std::uint8_t> bytes(n);
    for (std::size_t i = 0; i < n; ++i) bytes[i] = std::uint8_t(words[i / 8] >> (8 * (i % 8)));
    generator_.set_torch_state_bytes(bytes);
  }

  /// The trained LoRA (UNet and text encoder adapters; SDXL: both text encoders) as one file description.
  lora::LoraFile lora_file() {
    auto f = lora::collect(sd_.unet, "unet");
    auto te = lora::collect(sd_.text_encoder, "text_encoder");
    f.entries.insert(f.entries.end(), std::make_move_iterator(te.entries.begin()),
                     std::make_move_iterator(te.entries.end()));
    if (sd_.is_sdxl()) {
      auto te2 = lora::collect(sd_.text_encoder_2, "text_encoder_2");
      f.entries.insert(f.entries.end(), std::make_move_iterator(te2.entries.begin()),
                       std::make_move_iterator(te2.entries.end()));
    }
    return f;
  }

  /// Textual Inversion: the learned vectors (num_vectors, dim), on the host.
  Tensor<T, Cpu> learned_embeddings() const {
    Index const dim = sd_.text_encoder.config().hidden_size;
    Tensor<T, Cpu> out(Shape{Index(placeholder_ids_.size()), dim});
    auto const& w = sd_.text_encoder.token_embedding.weight.value;  // (V, dim) on B
    for (std::size_t i = 0; i < placeholder_ids_.size(); ++i) {
      T const* row = w.data() + placeholder_ids_[i] * dim;  // (dim) on B
      if constexpr (std::is_same_v<B, Cpu>) std::copy_n(row, dim, out.data() + Index(i) * dim);
      else BackendMemory<B>::download(out.data() + Index(i) * dim, row, std::size_t(dim) * sizeof(T));
    }
    return out;
  }

 private:
  /// forward_backward of a micro-batch whose noise and timesteps are drawn.
  double forward_backward_drawn(MicroBatch const& b) {
    Index const n = b.latents.dim(0);
    SDLORA_EXPECTS(b.input_ids.rank() == 2 && b.input_ids.dim(0) == n,
                   "[train] " << n << " latents but input_ids " << b.input_ids.shape());
    SDLORA_EXPECTS(Index(b.timesteps.size()) == n && b.noise.shape() == b.latents.shape(),
                   "[train] noise " << b.noise.shape() << " / " << b.timesteps.size() << " timesteps for latents "
                                    << b.latents.shape());
    auto const noisy = noise_scheduler_->add_noise(b.latents.view(), b.noise.view(),
                                                   std::span<std::int64_t const>(b.timesteps));
    Tensor<float, Cpu> const target = prediction_ == PredictionType::Epsilon
                                          ? b.noise
                                          : noise_scheduler_->get_velocity(b.latents.view(), b.noise.view(),
                                                                           std::span<std::int64_t const>(b.timesteps));
    bool const text_trains = !text_params_.empty();
    auto const mode_text = text_trains ? nn::Mode::Train : nn::Mode::Infer;
    Tensor<T, Cpu> ts_host(Shape{n});
    for (Index i = 0; i < n; ++i) ts_host(i) = T(b.timesteps[std::size_t(i)]);
    auto const ts = to_backend<B>(std::move(ts_host));
    auto const latents = to_backend<B>(convert<T>(noisy.view()));
    // The UNet keeps activations only when its own parameters train or gradients must reach the text encoder.
    auto const mode_unet = nn::Mode::Train;
    Tensor<T, B> pred;
    Index text_channels = 0;  // SDXL: text_encoder's share of the context channels
    if (sd_.is_sdxl()) {
      // train_dreambooth_lora_sdxl.py: encode_prompt with both encoders (hidden_states[-2] side by side, pooled
      // from text_encoder_2), unet_added_conditions = {time_ids, text_embeds}.
      SDLORA_EXPECTS(b.input_ids_2.shape() == b.input_ids.shape() && b.time_ids.rank() == 2 && b.time_ids.dim(0) == n &&
                         b.time_ids.dim(1) == 6,
                     "[train] an SDXL micro-batch needs input_ids_2 " << b.input_ids.shape() << " and time_ids (" << n
                                                                      << ", 6), got " << b.input_ids_2.shape()
                                                                      << " and " << b.time_ids.shape());
      auto const time_ids = to_backend<B>(convert<T>(b.time_ids.view()));
      if (text_trains) {
        auto a = sd_.text_encoder.forward_hidden_and_pooled(ctx_, b.input_ids, mode_text);
        auto c = sd_.text_encoder_2.forward_hidden_and_pooled(ctx_, b.input_ids_2, mode_text);
        text_channels = a.hidden.dim(2);
        auto const context = pipeline::concat_features<T, B>(ctx_, a.hidden.view(), c.hidden.view());
        pred = sd_.unet.forward(ctx_, latents.view(), ts.view(), context.view(), {c.pooled.view(), time_ids.view()},
                                mode_unet);
      } else {
        auto const cond = frozen_conditioning(b);
        pred = sd_.unet.forward(ctx_, latents.view(), ts.view(), cond.context.view(),
                                {cond.pooled.view(), time_ids.view()}, mode_unet);
      }
    } else if (text_trains) {
      auto text = sd_.text_encoder.forward(ctx_, b.input_ids, mode_text);
      pred = sd_.unet.forward(ctx_, latents.view(), ts.view(), text.last_hidden_state.view(), mode_unet);
    } else {
      auto const cond = frozen_conditioning(b);
      pred = sd_.unet.forward(ctx_, latents.view(), ts.view(), cond.context.view(), mode_unet);
    }
    auto const tgt = to_backend<B>(convert<T>(target.view()));
    std::vector<float> snr_weights;
    if (o_.snr_gamma > 0) {
      // With prior preservation the weights are those of the instance half only (diffusers' dreambooth scripts).
      std::size_t const count = o_.with_prior_preservation ? b.timesteps.size() / 2 : b.timesteps.size();
      auto const snr = compute_snr(TensorView<float const, Cpu>(noise_scheduler_->alphas_cumprod().data(),
                                                                Shape{Index(noise_scheduler_->alphas_cumprod().size())}),
                                   std::span<std::int64_t const>(b.timesteps.data(), count));
      snr_weights = min_snr_weights(snr, o_.snr_gamma, prediction_);
    }
    LossAndGrad<T, B> loss;
    if (o_.with_prior_preservation)
      loss = prior_preservation_loss<T, B>(ctx_, pred.view(), tgt.view(), o_.prior_loss_weight, snr_weights);
    else if (o_.snr_gamma > 0)
      loss = weighted_mse_loss<T, B>(ctx_, pred.view(), tgt.view(), std::span<float const>(snr_weights));
    else
      loss = mse_loss<T, B>(ctx_, pred.view(), tgt.view());
    if (o_.gradient_accumulation_steps > 1)
      ops::scale<T, B>(ctx_, loss.grad.view(), 1.0 / o_.gradient_accumulation_steps);
    auto g = sd_.unet.backward(ctx_, loss.grad.view());
    if (text_trains && sd_.is_sdxl()) {
      auto [d1, d2] = pipeline::split_features<T, B>(ctx_, g.dencoder_hidden_states.view(), text_channels);
      sd_.text_encoder.backward_hidden_and_pooled(ctx_, d1.view(), TensorView<T const, B>());
      sd_.text_encoder_2.backward_hidden_and_pooled(ctx_, d2.view(), g.dtext_embeds.view());
    } else if (text_trains) {
      sd_.text_encoder.backward(ctx_, g.dencoder_hidden_states.view());
    }
    return loss.value;
  }

  /// Prompt embeddings while the text encoders are frozen (no text-encoder LoRA, no Textual Inversion): each
  /// distinct prompt is encoded once, alone (so that its embedding does not depend on the batch it came in and a
  /// resumed run stays bit-identical), and kept, as diffusers' scripts precompute them when the encoders do not train.
  pipeline::Conditioning<T, B> frozen_conditioning(MicroBatch const& b) {
    Index const n = b.input_ids.dim(0), l = b.input_ids.dim(1);
    bool const sdxl = sd_.is_sdxl();
    pipeline::Conditioning<T, B> out;
    for (Index i = 0; i < n; ++i) {
      std::vector<std::int32_t> key(b.input_ids.data() + i * l, b.input_ids.data() + (i + 1) * l);
      if (sdxl) key.insert(key.end(), b.input_ids_2.data() + i * l, b.input_ids_2.data() + (i + 1) * l);
      auto it = prompt_cache_.find(key);
      if (it == prompt_cache_.end() && text_encoders_released_)
        SDLORA_THROW(ConfigError, "[train] a prompt of sample " << i << " of the micro-batch is not among the "
                                  << prompt_cache_.size() << " cached ones and the text encoders were released "
                                  << "(release_text_encoders): cache every prompt first");
      if (it == prompt_cache_.end()) {
        Tensor<std::int32_t, Cpu> ids(Shape{1, l}), ids_2;
        std::copy_n(b.input_ids.data() + i * l, l, ids.data());
        pipeline::Conditioning<T, B> one;
        if (sdxl) {
          ids_2 = Tensor<std::int32_t, Cpu>(Shape{1, l});
          std::copy_n(b.input_ids_2.data() + i * l, l, ids_2.data());
          auto a = sd_.text_encoder.forward_hidden_and_pooled(ctx_, ids);
          auto c = sd_.text_encoder_2.forward_hidden_and_pooled(ctx_, ids_2);
          one.context = pipeline::concat_features<T, B>(ctx_, a.hidden.view(), c.hidden.view());
          one.pooled = std::move(c.pooled);
        } else {
          one.context = std::move(sd_.text_encoder.forward(ctx_, ids).last_hidden_state);
        }
        it = prompt_cache_.emplace(std::move(key), std::move(one)).first;
      }
      auto const& row = it->second;
      if (i == 0) {
        out.context = Tensor<T, B>::uninitialized(Shape{n, row.context.dim(1), row.context.dim(2)});
        if (sdxl) out.pooled = Tensor<T, B>::uninitialized(Shape{n, row.pooled.dim(1)});
      }
      BackendMemory<B>::copy(out.context.data() + i * row.context.numel(), row.context.data(), row.context.bytes());
      if (sdxl) BackendMemory<B>::copy(out.pooled.data() + i * row.pooled.numel(), row.pooled.data(), row.pooled.bytes());
    }
    return out;
  }

  /// A step whose loss or gradient norm is not finite: its gradients are dropped, the step counts (the learning
  /// rate schedule and the data order move on as in an ordinary step).
  void drop_update() {
    for (auto const& p : parameters()) p.param->zero_grad();
    ++global_step_;
  }

  void setup_lora() {
    lora::InjectOptions io;
    io.target = o_.target_modules;
    io.rank = o_.rank;
    io.alpha = o_.alpha;
    io.dropout = o_.lora_dropout;
    io.init = o_.init;
    io.seed = o_.seed;
    io.include_conv = o_.train_conv;
    auto report = lora::inject(sd_.unet, io);
    if (report.layers == 0)
      SDLORA_THROW(ConfigError, "[train] target_modules '" << o_.target_modules << "' matches no UNet layer");
    if (o_.train_text_encoder) {
      io.target = o_.text_target_modules;
      io.seed = o_.seed + 1;
      io.include_conv = false;
      auto te = lora::inject(sd_.text_encoder, io);
      if (te.layers == 0)
        SDLORA_THROW(ConfigError, "[train] text target modules '" << o_.text_target_modules
                                                                  << "' match no text-encoder layer");
      if (sd_.is_sdxl()) {
        io.seed = o_.seed + 2;
        lora::inject(sd_.text_encoder_2, io);
        // SDXL reads text_encoder's penultimate layer: its last layer only feeds the unused pooled output, its
        // adapters get no gradient and, as torch's AdamW skips parameters without one, stay out of the optimizer.
        auto& layers = sd_.text_encoder.layers;
        if (!layers.empty()) nn::set_trainable(layers.back(), false);
      }
    }
  }

  void setup_textual_inversion() {
    auto& tok = sd_.tokenizer;
    if (o_.placeholder_token.empty()) SDLORA_THROW(ConfigError, "[textual_inversion] --placeholder_token is required");
    if (o_.num_vectors < 1) SDLORA_THROW(ConfigError, "[textual_inversion] --num_vectors must be >= 1");
    placeholder_tokens_ = {o_.placeholder_token};
    for (int i = 1; i < o_.num_vectors; ++i) placeholder_tokens_.push_back(o_.placeholder_token + "_" + std::to_string(i));
    for (auto const& t : placeholder_tokens_)
      if (tok.token_to_id(t))
        SDLORA_THROW(ConfigError, "[textual_inversion] placeholder token '" << t
                                      << "' is already in the vocabulary: choose another");
    auto const init = tok.encode(o_.initializer_token);  // BOS ... EOS
    if (init.size() != 3)
      SDLORA_THROW(ConfigError, "[textual_inversion] initializer token '" << o_.initializer_token << "' is "
                                    << (init.size() < 3 ? 0 : init.size() - 2) << " tokens; it must be exactly one");
    Index const first = Index(tok.size());
    tok.add_tokens(placeholder_tokens_);
    SDLORA_EXPECTS(Index(sd_.text_encoder.token_embedding.num_embeddings()) == first,
                   "[textual_inversion] the tokenizer (" << first << ") and the embedding ("
                                                         << sd_.text_encoder.token_embedding.num_embeddings()
                                                         << ") disagree on the vocabulary size");
    sd_.text_encoder.add_tokens(Index(placeholder_tokens_.size()), init[1]);
    for (std::size_t i = 0; i < placeholder_tokens_.size(); ++i) placeholder_ids_.push_back(int(first) + int(i));
    auto& emb = sd_.text_encoder.token_embedding;
    emb.weight.set_trainable(true);
    emb.grad_row_begin = first;
    frozen_rows_ = Tensor<T, B>::from_view(emb.weight.value.slice(0, first));
  }

  /// diffusers' textual_inversion.py: after each step, every row but the new ones gets its original value back.
  void restore_frozen_rows() {
    auto& w = sd_.text_encoder.token_embedding.weight.value;
    BackendMemory<B>::copy(w.data(), frozen_rows_.data(), frozen_rows_.bytes());
  }

  static void merge_optimizer(OptimizerState<T>& into, OptimizerState<T> const& from) {
    if (into.type.empty()) into.type = from.type;
    for (auto const& [k, v] : from.tensors) into.tensors[k] = v;
    for (auto const& [k, v] : from.codes) into.codes[k] = v;
    for (auto const& [k, v] : from.scalars) into.scalars[k] = v;
  }
  static OptimizerState<T> split_optimizer(OptimizerState<T> const& all, std::vector<ParamRef<T, B>> const& params) {
    OptimizerState<T> out;
    out.type = all.type;
    auto mine = [&](std::string const& k) {
      for (auto const& p : params)
        if (k.rfind(p.name + ".", 0) == 0) return true;
      return false;
    };
    auto per_param = [](std::string const& k) {
      return k.rfind("unet.", 0) == 0 || k.rfind("text_encoder.", 0) == 0 || k.rfind("text_encoder_2.", 0) == 0;
    };
    for (auto const& [k, v] : all.tensors)
      if (mine(k)) out.tensors[k] = v;
    for (auto const& [k, v] : all.codes)
      if (mine(k)) out.codes[k] = v;
    for (auto const& [k, v] : all.scalars)
      if (mine(k) || !per_param(k)) out.scalars[k] = v;  // hyperparameters ("lr") belong to both
    return out;
  }

  /// Whether every element is finite: the host loop on Cpu, one double sum of squares on another backend (a NaN or
  /// inf makes it non-finite; squares of finite floats cannot overflow a double).
  bool finite(TensorView<T const, B> x) {
    if constexpr (std::is_same_v<B, Cpu>) return all_finite<T>(x);
    else return x.empty() || std::isfinite(ops::sum_squares<T, B>(ctx_, x));
  }

  Context<B>& ctx_;
  models::StableDiffusion<T, B>& sd_;
  TrainerOptions o_;
  TorchGenerator generator_;
  std::unique_ptr<schedulers::Scheduler> noise_scheduler_;
  PredictionType prediction_ = PredictionType::Epsilon;
  std::vector<ParamRef<T, B>> unet_params_, text_params_;
  std::unique_ptr<Optimizer<T, B>> unet_opt_, text_opt_;
  std::unique_ptr<LrSchedule> schedule_;
  std::int64_t global_step_ = 0;
  std::vector<int> placeholder_ids_;
  std::vector<std::string> placeholder_tokens_;
  Tensor<T, B> frozen_rows_;  // (V, dim): Textual Inversion restores these rows after every step
  bool text_encoders_released_ = false;
  std::vector<MicroBatch> failed_batches_;  // the last skipped step's micro-batches (noise drawn), for diagnosis
  std::map<std::vector<std::int32_t>, pipeline::Conditioning<T, B>> prompt_cache_;  // frozen_conditioning
};

}  // namespace sdlora::train
