/// @file ddpm.hpp
/// @brief DdpmScheduler and DdimScheduler: diffusers' DDPMScheduler and DDIMScheduler (scheduling_ddpm.py,
/// scheduling_ddim.py), float32 math in diffusers' operation order. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::clamp, std::max
#include <cmath>      // std::sqrt, std::log, std::exp

#include <sdlora/schedulers/numerics.hpp>   // numerics::spaced_timesteps
#include <sdlora/schedulers/scheduler.hpp>  // Scheduler, StepOutput

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_SCHEDULERS_POP_OPTIONS 1
#endif

namespace sdlora::schedulers {

namespace detail {
/// pred_original_sample (and pred_epsilon) from the model output for the alphas_cumprod schedulers, float32.
struct X0Eps {
  float x0;
  float eps;
};
inline X0Eps predict_x0_eps(PredictionType type, float a_t, float b_t, float mo, float x) {
  float const sa = std::sqrt(a_t);
  float const sb = std::sqrt(b_t);
  switch (type) {
    case PredictionType::Epsilon: return {(x - sb * mo) / sa, mo};
    case PredictionType::Sample: return {mo, (x - sa * mo) / sb};
    case PredictionType::VPrediction: return {sa * x - sb * mo, sa * mo + sb * x};
  }
  return {0, 0};
}
inline void check_inference_steps(Scheduler const& s, int n) {
  if (n < 1 || n > s.num_train_timesteps())
    SDLORA_THROW(ConfigError, "[" << s.name() << ".set_timesteps] num_inference_steps = " << n
                                  << " must lie in [1, num_train_timesteps = " << s.num_train_timesteps() << "]");
}
}  // namespace detail

/// diffusers' DDPMScheduler (variance_type fixed_small, fixed_small_log or fixed_large; no thresholding).
class DdpmScheduler : public Scheduler {
 public:
  explicit DdpmScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
    for (int t = num_train_timesteps() - 1; t >= 0; --t) timesteps_.push_back(t);  // before set_timesteps
  }

  void set_timesteps(int n) override {
    detail::check_inference_steps(*this, n);
    num_inference_steps_ = n;
    timesteps_ = numerics::spaced_timesteps(config_, n);
    reset();
  }

  /// `previous_timestep(t)`: the next timestep of the schedule (-1 after the last); t - 1 before set_timesteps.
  double previous_timestep(double t) const {
    if (num_inference_steps_ == 0) return t - 1;
    for (std::size_t i = 0; i < timesteps_.size(); ++i)
      if (timesteps_[i] == t) return i + 1 < timesteps_.size() ? timesteps_[i + 1] : -1.0;
    SDLORA_THROW(ConfigError, "[DDPMScheduler.step] timestep " << t << " is not in the schedule");
  }

  /// diffusers draws `randn_tensor(model_output.shape, generator=generator, dtype=model_output.dtype)` inside step
  /// when t > 0, after computing the mean.
  bool step_uses_noise(double t) const override { return t > 0; }

  StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise = {}) override {
    bool const uses_noise = step_uses_noise(t);
    check_step(model_output, sample, noise, uses_noise);
    double const prev_t = previous_timestep(t);
    float const a_t = alphas_cumprod_at(t);
    float const a_prev = prev_t >= 0 ? alphas_cumprod_at(prev_t) : 1.0f;
    float const b_t = 1.0f - a_t;
    float const b_prev = 1.0f - a_prev;
    float const cur_alpha = a_t / a_prev;
    float const cur_beta = 1.0f - cur_alpha;
    float const x0_coeff = (std::sqrt(a_prev) * cur_beta) / b_t;
    float const cur_coeff = std::sqrt(cur_alpha) * b_prev / b_t;
    // _get_variance: ((1 - a_prev) / (1 - a_t)) * current_beta_t, clamped to 1e-20.
    float variance = std::max((1.0f - a_prev) / (1.0f - a_t) * cur_beta, 1e-20f);
    float noise_scale = 0;
    if (config_.variance_type == VarianceType::FixedSmall) noise_scale = std::sqrt(variance);
    else if (config_.variance_type == VarianceType::FixedSmallLog) noise_scale = std::exp(0.5f * std::log(variance));
    else noise_scale = std::sqrt(cur_beta);
    float const range = float(config_.clip_sample_range);
    float const* mo = model_output.data();
    float const* x = sample.data();
    StepOutput out;
    out.pred_original_sample = generate(sample.shape(), [&](Index i) {  // (N, C, H, W)
      float x0 = detail::predict_x0_eps(config_.prediction_type, a_t, b_t, mo[i], x[i]).x0;
      if (config_.clip_sample) x0 = std::clamp(x0, -range, range);
      return x0;
    });
    float const* x0 = out.pred_original_sample.data();
    out.prev_sample = generate(sample.shape(), [&](Index i) {  // (N, C, H, W)
      float const u = x0_coeff * x0[i];
      float const v = cur_coeff * x[i];
      float p = u + v;
      if (uses_noise) p = p + noise_scale * noise.data()[i];
      return p;
    });
    return out;
  }
};

/// diffusers' DDIMScheduler (eta from the config's "eta" or set_eta; use_clipped_model_output = False as SD's
/// pipelines; no thresholding).
class DdimScheduler : public Scheduler {
 public:
  explicit DdimScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
    final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0f : alphas_cumprod_[0];
  }

  void set_timesteps(int n) override {
    detail::check_inference_steps(*this, n);
    num_inference_steps_ = n;
    timesteps_ = numerics::spaced_timesteps(config_, n);
    reset();
  }

  /// The `eta` passed to every `step` (0 = deterministic DDIM, 1 = DDPM-like).
  void set_eta(double eta) {
    if (eta < 0) SDLORA_THROW(ConfigError, "[DDIMScheduler] eta must be >= 0, got " << eta);
    config_.eta = eta;
  }
  double eta() const { return config_.eta; }

  /// diffusers draws `randn_tensor(model_output.shape, generator=generator, dtype=model_output.dtype)` inside step
  /// when eta > 0 (after the deterministic part).
  bool step_uses_noise(double /*t*/) const override { return config_.eta > 0; }

  StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise = {}) override {
    bool const uses_noise = step_uses_noise(t);
    check_step(model_output, sample, noise, uses_noise);
    double const prev_t = t - double(num_train_timesteps() / num_inference_steps_);
    float const a_t = alphas_cumprod_at(t);
    float const a_prev = prev_t >= 0 ? alphas_cumprod_at(prev_t) : final_alpha_cumprod_;
    float const b_t = 1.0f - a_t;
    float const b_prev = 1.0f - a_prev;
    float const variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
    float const std_dev = float(config_.eta) * std::sqrt(variance);
    float const dir_coeff = std::sqrt(1.0f - a_prev - std_dev * std_dev);
    float const x0_coeff = std::sqrt(a_prev);
    float const range = float(config_.clip_sample_range);
    float const* mo = model_output.data();
    float const* x = sample.data();
    StepOutput out;
    out.pred_original_sample = Tensor<float, Cpu>::uninitialized(sample.shape());  // (N, C, H, W)
    out.prev_sample = Tensor<float, Cpu>::uninitialized(sample.shape());           // (N, C, H, W)
    for (Index i = 0; i < sample.numel(); ++i) {
      auto [x0, eps] = detail::predict_x0_eps(config_.prediction_type, a_t, b_t, mo[i], x[i]);
      if (config_.clip_sample) x0 = std::clamp(x0, -range, range);
      out.pred_original_sample(i) = x0;
      float const direction = dir_coeff * eps;
      float p = x0_coeff * x0 + direction;
      if (uses_noise) p = p + std_dev * noise.data()[i];
      out.prev_sample(i) = p;
    }
    return out;
  }

 private:
  float final_alpha_cumprod_ = 1.0f;
};

}  // namespace sdlora::schedulers

#ifdef SDLORA_SCHEDULERS_POP_OPTIONS
#pragma GCC pop_options
#undef SDLORA_SCHEDULERS_POP_OPTIONS
#endif
