/// @file euler.hpp
/// @brief EulerDiscreteScheduler and EulerAncestralDiscreteScheduler (diffusers' scheduling_euler_discrete.py and
/// scheduling_euler_ancestral_discrete.py): k-diffusion sigmas, float32 timesteps, optional Karras sigmas.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::max_element, std::reverse
#include <cmath>      // std::sqrt, std::log

#include <sdlora/schedulers/ddpm.hpp>       // detail::check_inference_steps
#include <sdlora/schedulers/numerics.hpp>   // numerics::*
#include <sdlora/schedulers/scheduler.hpp>  // Scheduler, StepOutput

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_SCHEDULERS_POP_OPTIONS 1
#endif

namespace sdlora::schedulers {

namespace detail {
/// The float32 timesteps of the Euler schedulers' `set_timesteps(n)` (descending), by `timestep_spacing`:
/// linspace: np.linspace(0, N - 1, n, dtype=float32)[::-1]; leading: (np.arange(n) * (N // n))[::-1] as float32,
/// += steps_offset; trailing: np.arange(N, 0, -N / n).round() as float32, -= 1.
inline std::vector<float> euler_timesteps(SchedulerConfig const& c, int n) {
  int const N = c.num_train_timesteps;
  std::vector<float> t;
  if (c.timestep_spacing == TimestepSpacing::Linspace) {
    for (double v : numerics::np_linspace(0, N - 1, n)) t.push_back(float(v));
    std::reverse(t.begin(), t.end());
  } else if (c.timestep_spacing == TimestepSpacing::Leading) {
    for (int i = n - 1; i >= 0; --i) t.push_back(float(std::int64_t(i) * (N / n)) + float(c.steps_offset));
  } else {
    for (double v : numerics::np_arange(N, 0, -double(N) / n)) t.push_back(float(numerics::np_round(v)) - 1.0f);
  }
  return t;
}

/// Shared parts of the two Euler schedulers: sigma lookup by step index, scale_model_input, add_noise.
class SigmaScheduler : public Scheduler {
 public:
  using Scheduler::Scheduler;

  /// max(sigmas) for linspace/trailing spacing, sqrt(max^2 + 1) for leading, in float32.
  float init_noise_sigma() const override {
    float const m = *std::max_element(sigmas_.begin(), sigmas_.end());
    if (config_.timestep_spacing != TimestepSpacing::Leading) return m;
    return std::sqrt(m * m + 1.0f);
  }

  /// sample / sqrt(sigma^2 + 1) for the sigma of the current step index (found from t on the first call).
  Tensor<float, Cpu> scale_model_input(TensorView<float const, Cpu> sample, double t) override {
    SDLORA_EXPECTS(sample.is_contiguous(), "[" << name() << ".scale_model_input] sample must be contiguous");
    if (!step_index_) init_step_index(t);
    float const sigma = sigmas_[std::size_t(*step_index_)];
    float const d = std::sqrt(sigma * sigma + 1.0f);
    float const* x = sample.data();
    return generate(sample.shape(), [&](Index i) { return x[i] / d; });  // (N, C, H, W)
  }

  /// original + noise * sigma, sigma from each timestep's position in the schedule (or the begin/step index when
  /// set_begin_index was called, as diffusers).
  Tensor<float, Cpu> add_noise(TensorView<float const, Cpu> original, TensorView<float const, Cpu> noise,
                               std::span<double const> timesteps) const override {
    check_batch("add_noise", original, noise, timesteps.size());
    std::vector<float> sig;
    for (double t : timesteps) {
      int const i = !begin_index_ ? index_for_timestep(t) : step_index_ ? *step_index_ : *begin_index_;
      sig.push_back(sigmas_[std::size_t(i)]);
    }
    return per_item(original, noise, timesteps.size(), [&](std::size_t b, float x, float n) {
      float const u = n * sig[b];
      return x + u;
    });
  }
  using Scheduler::add_noise;

 protected:
  int index_for_timestep(double t) const {
    auto const i = find_timestep(t);
    if (!i) SDLORA_THROW(ConfigError, "[" << name() << "] timestep " << t << " is not in the schedule");
    return *i;
  }
  void init_step_index(double t) { step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(t); }
  /// pred_original_sample for epsilon / v_prediction / sample in float32.
  static float predict_x0(PredictionType type, float sigma, float mo, float x) {
    switch (type) {
      case PredictionType::Epsilon: return x - sigma * mo;
      case PredictionType::VPrediction: {
        float const c_out = -sigma / std::sqrt(sigma * sigma + 1.0f);
        float const u = mo * c_out;
        float const v = x / (sigma * sigma + 1.0f);
        return u + v;
      }
      case PredictionType::Sample: return mo;
    }
    return 0;
  }
  void begin_step(double t) {
    if (!step_index_) init_step_index(t);
    SDLORA_EXPECTS(std::size_t(*step_index_) + 1 < sigmas_.size(),
                   "[" << name() << ".step] called after the last step: reset or set_timesteps first");
  }
};
}  // namespace detail

/// diffusers' EulerDiscreteScheduler (s_churn = 0, as pipelines call it: deterministic).
class EulerDiscreteScheduler : public detail::SigmaScheduler {
 public:
  explicit EulerDiscreteScheduler(SchedulerConfig config) : SigmaScheduler(std::move(config)) {
    float_timesteps_ = true;
    std::vector<float> const s = numerics::sigmas_from_alphas_cumprod(alphas_cumprod_);
    sigmas_.assign(s.rbegin(), s.rend());
    sigmas_.push_back(0.0f);
    for (int t = num_train_timesteps() - 1; t >= 0; --t) timesteps_.push_back(t);
  }

  void set_timesteps(int n) override {
    detail::check_inference_steps(*this, n);
    num_inference_steps_ = n;
    std::vector<float> const ts = detail::euler_timesteps(config_, n);
    std::vector<float> const s = numerics::sigmas_from_alphas_cumprod(alphas_cumprod_);
    std::vector<double> sig;  // float64 (numpy)
    for (float t : ts) sig.push_back(numerics::np_interp_arange(double(t), s));
    std::vector<double> t64(ts.begin(), ts.end());
    if (config_.use_karras_sigmas) {
      double const lo = config_.sigma_min ? *config_.sigma_min : sig.back();
      double const hi = config_.sigma_max ? *config_.sigma_max : sig.front();
      sig = numerics::karras_sigmas(lo, hi, n);
      std::vector<float> const log_sigmas = numerics::log_sigmas_f32(s);
      t64.clear();
      for (double v : sig) t64.push_back(numerics::sigma_to_t(v, log_sigmas));
    }
    sigmas_.clear();
    for (double v : sig) sigmas_.push_back(float(v));
    sigmas_.push_back(config_.final_sigmas_type == FinalSigmasType::SigmaMin ? s[0] : 0.0f);
    timesteps_.clear();
    if (config_.timestep_type == TimestepType::Continuous) {  // 0.25 * log(sigma), float32
      for (std::size_t i = 0; i + 1 < sigmas_.size(); ++i) timesteps_.push_back(0.25f * std::log(sigmas_[i]));
    } else {
      for (double v : t64) timesteps_.push_back(float(v));
    }
    reset();
  }

  StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise = {}) override {
    check_step(model_output, sample, noise, false);
    begin_step(t);
    auto const i = std::size_t(*step_index_);
    float const sigma = sigmas_[i];
    float const sigma_hat = sigma;  // sigma * (gamma + 1) with gamma = 0
    float const dt = sigmas_[i + 1] - sigma_hat;
    float const* mo = model_output.data();
    float const* x = sample.data();
    StepOutput out;
    out.pred_original_sample = generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      return predict_x0(config_.prediction_type, sigma_hat, mo[k], x[k]);
    });
    float const* x0 = out.pred_original_sample.data();
    out.prev_sample = generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      float const derivative = (x[k] - x0[k]) / sigma_hat;
      float const u = derivative * dt;
      return x[k] + u;
    });
    step_index_ = *step_index_ + 1;
    return out;
  }
};

/// diffusers' EulerAncestralDiscreteScheduler: an Euler step to sigma_down plus fresh noise of std sigma_up.
class EulerAncestralDiscreteScheduler : public detail::SigmaScheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(SchedulerConfig config) : SigmaScheduler(std::move(config)) {
    float_timesteps_ = true;
    std::vector<float> const s = numerics::sigmas_from_alphas_cumprod(alphas_cumprod_);
    sigmas_.assign(s.rbegin(), s.rend());
    sigmas_.push_back(0.0f);
    for (int t = num_train_timesteps() - 1; t >= 0; --t) timesteps_.push_back(t);
  }

  void set_timesteps(int n) override {
    detail::check_inference_steps(*this, n);
    num_inference_steps_ = n;
    std::vector<float> const ts = detail::euler_timesteps(config_, n);
    std::vector<float> const s = numerics::sigmas_from_alphas_cumprod(alphas_cumprod_);
    sigmas_.clear();
    for (float t : ts) sigmas_.push_back(float(numerics::np_interp_arange(double(t), s)));
    sigmas_.push_back(0.0f);
    timesteps_.assign(ts.begin(), ts.end());
    reset();
  }

  /// diffusers draws `randn_tensor(model_output.shape, dtype=model_output.dtype, generator=generator)` in every
  /// step (also the last, where sigma_up = 0), after the Euler update.
  bool step_uses_noise(double /*t*/) const override { return true; }

  StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise = {}) override {
    check_step(model_output, sample, noise, true);
    begin_step(t);
    auto const i = std::size_t(*step_index_);
    float const sigma = sigmas_[i];
    float const from = sigmas_[i];
    float const to = sigmas_[i + 1];
    float const sigma_up = std::sqrt(to * to * (from * from - to * to) / (from * from));
    float const sigma_down = std::sqrt(to * to - sigma_up * sigma_up);
    float const dt = sigma_down - sigma;
    float const* mo = model_output.data();
    float const* x = sample.data();
    float const* z = noise.data();
    StepOutput out;
    out.pred_original_sample = generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      return predict_x0(config_.prediction_type, sigma, mo[k], x[k]);
    });
    float const* x0 = out.pred_original_sample.data();
    out.prev_sample = generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      float const derivative = (x[k] - x0[k]) / sigma;
      float const u = derivative * dt;
      float const p = x[k] + u;
      float const w = z[k] * sigma_up;
      return p + w;
    });
    step_index_ = *step_index_ + 1;
    return out;
  }
};

}  // namespace sdlora::schedulers

#ifdef SDLORA_SCHEDULERS_POP_OPTIONS
#pragma GCC pop_options
#undef SDLORA_SCHEDULERS_POP_OPTIONS
#endif
