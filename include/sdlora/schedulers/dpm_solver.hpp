/// @file dpm_solver.hpp
/// @brief DpmSolverMultistepScheduler: diffusers' DPMSolverMultistepScheduler (scheduling_dpmsolver_multistep.py):
/// DPM-Solver++ / DPM-Solver / SDE-DPM-Solver++ of order 1-3 (midpoint or heun), lower_order_final, euler_at_final,
/// Karras sigmas, final_sigmas_type zero / sigma_min. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::reverse
#include <cmath>      // std::sqrt, std::log, std::exp, std::isfinite, std::trunc
#include <vector>     // std::vector

#include <sdlora/schedulers/ddpm.hpp>       // detail::check_inference_steps
#include <sdlora/schedulers/numerics.hpp>   // numerics::*
#include <sdlora/schedulers/scheduler.hpp>  // Scheduler, StepOutput

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_SCHEDULERS_POP_OPTIONS 1
#endif

namespace sdlora::schedulers {

/// diffusers' DPMSolverMultistepScheduler. Stateful: the last `solver_order` converted model outputs and the count
/// of lower-order warm-up steps.
class DpmSolverMultistepScheduler : public Scheduler {
 public:
  explicit DpmSolverMultistepScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
    sigmas_ = numerics::sigmas_from_alphas_cumprod(alphas_cumprod_);
  }

  void set_timesteps(int n) override {
    detail::check_inference_steps(*this, n);
    int const N = num_train_timesteps();
    // clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped); lambda_t = log(alpha_t) - log(sigma_t).
    int clipped = 0;
    if (std::isfinite(config_.lambda_min_clipped)) {
      for (int k = N - 1; k >= 0; --k) {
        float const ac = alphas_cumprod_[std::size_t(k)];
        float const lambda = std::log(std::sqrt(ac)) - std::log(std::sqrt(1.0f - ac));
        if (double(lambda) < config_.lambda_min_clipped) ++clipped;
        else break;
      }
    }
    int const last = N - clipped;
    std::vector<double> ts;
    if (config_.timestep_spacing == TimestepSpacing::Linspace) {
      for (double v : numerics::np_linspace(0, last - 1, n + 1)) ts.push_back(numerics::np_round(v));
      std::reverse(ts.begin(), ts.end());
      ts.pop_back();
    } else if (config_.timestep_spacing == TimestepSpacing::Leading) {
      int const ratio = last / (n + 1);
      for (int i = n; i >= 1; --i) ts.push_back(double(std::int64_t(i) * ratio + config_.steps_offset));
    } else {
      for (double v : numerics::np_arange(last, 0, -double(N) / n)) ts.push_back(numerics::np_round(v) - 1);
    }
    std::vector<float> const s = numerics::sigmas_from_alphas_cumprod(alphas_cumprod_);
    std::vector<double> sig;
    if (config_.use_karras_sigmas) {
      // in_sigmas = flip(sigmas): sigma_min = sigmas[0], sigma_max = sigmas[N - 1].
      sig = numerics::karras_sigmas(double(s.front()), double(s.back()), n);
      std::vector<float> const log_sigmas = numerics::log_sigmas_f32(s);
      ts.clear();
      for (double v : sig) {
        double const t = numerics::sigma_to_t(v, log_sigmas);
        ts.push_back(config_.beta_schedule != BetaSchedule::SquaredCosCapV2 ? numerics::np_round(t) : t);
      }
    } else {
      for (double t : ts) sig.push_back(numerics::np_interp_arange(t, s));
    }
    sigmas_.clear();
    for (double v : sig) sigmas_.push_back(float(v));
    sigmas_.push_back(config_.final_sigmas_type == FinalSigmasType::SigmaMin ? s[0] : 0.0f);
    timesteps_.clear();
    for (double t : ts) timesteps_.push_back(std::trunc(t));  // .to(torch.int64)
    num_inference_steps_ = int(timesteps_.size());
    reset();
  }

  void reset() override {
    Scheduler::reset();
    model_outputs_.clear();  // (copying an empty Tensor is not safe: default-construct instead)
    model_outputs_.resize(std::size_t(config_.solver_order));
    lower_order_nums_ = 0;
  }

  /// SDE-DPM-Solver++ draws `randn_tensor(model_output.shape, generator=generator, dtype=torch.float32)` in every
  /// step, after converting the model output.
  bool step_uses_noise(double /*t*/) const override {
    return config_.algorithm_type == AlgorithmType::SdeDpmSolverPlusPlus;
  }

  StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise = {}) override {
    bool const uses_noise = step_uses_noise(t);
    check_step(model_output, sample, noise, uses_noise);
    if (!step_index_) init_step_index(t);
    int const i = *step_index_;
    int const len = int(timesteps_.size());
    SDLORA_EXPECTS(i < len, "[DPMSolverMultistepScheduler.step] called after the last step");
    bool const lower_order_final =
        i == len - 1 && (config_.euler_at_final || (config_.lower_order_final && len < 15) ||
                         config_.final_sigmas_type == FinalSigmasType::Zero);
    bool const lower_order_second = i == len - 2 && config_.lower_order_final && len < 15;

    Tensor<float, Cpu> converted = convert_model_output(model_output, sample, i);  // (N, C, H, W)
    for (int k = 0; k + 1 < config_.solver_order; ++k)
      model_outputs_[std::size_t(k)] = std::move(model_outputs_[std::size_t(k + 1)]);
    model_outputs_.back() = std::move(converted);

    int const order = config_.solver_order;
    StepOutput out;
    if (order == 1 || lower_order_nums_ < 1 || lower_order_final)
      out.prev_sample = first_order(sample, noise, i);
    else if (order == 2 || lower_order_nums_ < 2 || lower_order_second)
      out.prev_sample = second_order(sample, noise, i);
    else
      out.prev_sample = third_order(sample, i);
    if (lower_order_nums_ < order) ++lower_order_nums_;
    step_index_ = i + 1;
    return out;
  }

  /// original * alpha_t + noise * sigma_t with alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t.
  Tensor<float, Cpu> add_noise(TensorView<float const, Cpu> original, TensorView<float const, Cpu> noise,
                               std::span<double const> timesteps) const override {
    check_batch("add_noise", original, noise, timesteps.size());
    std::vector<AlphaSigma> as;
    for (double t : timesteps) {
      int const i = !begin_index_ ? index_for_timestep(t) : step_index_ ? *step_index_ : *begin_index_;
      as.push_back(alpha_sigma(sigmas_[std::size_t(i)]));
    }
    return per_item(original, noise, timesteps.size(), [&](std::size_t b, float x, float n) {
      float const u = as[b].alpha * x;
      float const v = as[b].sigma * n;
      return u + v;
    });
  }
  using Scheduler::add_noise;

  int lower_order_nums() const { return lower_order_nums_; }

 private:
  using View = TensorView<float const, Cpu>;
  struct AlphaSigma {
    float alpha;
    float sigma;
    float lambda() const { return std::log(alpha) - std::log(sigma); }
  };
  /// `_sigma_to_alpha_sigma_t` in float32.
  static AlphaSigma alpha_sigma(float sigma) {
    float const alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
    return {alpha, sigma * alpha};
  }

  /// diffusers' index_for_timestep: the last step when t is not in the schedule, the second hit when it is twice.
  int index_for_timestep(double t) const {
    auto const i = find_timestep(t);
    return i ? *i : int(timesteps_.size()) - 1;
  }
  void init_step_index(double t) { step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(t); }

  /// `convert_model_output`: x0 (DPM-Solver++) or epsilon (DPM-Solver) from the model output.
  Tensor<float, Cpu> convert_model_output(View model_output, View sample, int i) const {
    AlphaSigma const as = alpha_sigma(sigmas_[std::size_t(i)]);
    float const* mo = model_output.data();
    float const* x = sample.data();
    bool const plus_plus = config_.algorithm_type != AlgorithmType::DpmSolver;
    PredictionType const type = config_.prediction_type;
    return generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      if (plus_plus) {
        if (type == PredictionType::Epsilon) return (x[k] - as.sigma * mo[k]) / as.alpha;
        if (type == PredictionType::VPrediction) return as.alpha * x[k] - as.sigma * mo[k];
        return mo[k];
      }
      if (type == PredictionType::Epsilon) return mo[k];
      if (type == PredictionType::VPrediction) return as.alpha * mo[k] + as.sigma * x[k];
      return (x[k] - as.alpha * mo[k]) / as.sigma;
    });
  }

  Tensor<float, Cpu> first_order(View sample, View noise, int i) const {
    AlphaSigma const t = alpha_sigma(sigmas_[std::size_t(i + 1)]);
    AlphaSigma const s = alpha_sigma(sigmas_[std::size_t(i)]);
    float const h = t.lambda() - s.lambda();
    float const* m = model_outputs_.back().data();
    float const* x = sample.data();
    switch (config_.algorithm_type) {
      case AlgorithmType::DpmSolverPlusPlus: {
        float const a = t.sigma / s.sigma;
        float const b = t.alpha * (std::exp(-h) - 1.0f);
        return generate(sample.shape(), [&](Index k) { return a * x[k] - b * m[k]; });
      }
      case AlgorithmType::DpmSolver: {
        float const a = t.alpha / s.alpha;
        float const b = t.sigma * (std::exp(h) - 1.0f);
        return generate(sample.shape(), [&](Index k) { return a * x[k] - b * m[k]; });
      }
      case AlgorithmType::SdeDpmSolverPlusPlus: {
        float const a = t.sigma / s.sigma * std::exp(-h);
        float const b = t.alpha * (1.0f - std::exp(-2.0f * h));
        float const c = t.sigma * std::sqrt(1.0f - std::exp(-2.0f * h));
        float const* z = noise.data();
        return generate(sample.shape(), [&](Index k) {
          float const u = a * x[k] + b * m[k];
          return u + c * z[k];
        });
      }
    }
    return {};
  }

  Tensor<float, Cpu> second_order(View sample, View noise, int i) const {
    AlphaSigma const t = alpha_sigma(sigmas_[std::size_t(i + 1)]);
    AlphaSigma const s0 = alpha_sigma(sigmas_[std::size_t(i)]);
    AlphaSigma const s1 = alpha_sigma(sigmas_[std::size_t(i - 1)]);
    float const lt = t.lambda(), l0 = s0.lambda(), l1 = s1.lambda();
    float const h = lt - l0;
    float const h0 = l0 - l1;
    float const r0 = h0 / h;
    float const inv_r0 = 1.0f / r0;
    std::size_t const n = model_outputs_.size();
    float const* m0 = model_outputs_[n - 1].data();
    float const* m1 = model_outputs_[n - 2].data();
    float const* x = sample.data();
    bool const midpoint = config_.solver_type == SolverType::Midpoint;
    // x = A * sample + B * D0 + C * D1 (+ E * noise), each product a separate float32 tensor op.
    float a = 0, b = 0, c = 0, e = 0;
    bool minus_b = true, minus_c = true;
    switch (config_.algorithm_type) {
      case AlgorithmType::DpmSolverPlusPlus:
        a = t.sigma / s0.sigma;
        b = t.alpha * (std::exp(-h) - 1.0f);
        if (midpoint) c = 0.5f * (t.alpha * (std::exp(-h) - 1.0f));
        else c = t.alpha * ((std::exp(-h) - 1.0f) / h + 1.0f), minus_c = false;
        break;
      case AlgorithmType::DpmSolver:
        a = t.alpha / s0.alpha;
        b = t.sigma * (std::exp(h) - 1.0f);
        c = midpoint ? 0.5f * (t.sigma * (std::exp(h) - 1.0f)) : t.sigma * ((std::exp(h) - 1.0f) / h - 1.0f);
        break;
      case AlgorithmType::SdeDpmSolverPlusPlus:
        a = t.sigma / s0.sigma * std::exp(-h);
        b = t.alpha * (1.0f - std::exp(-2.0f * h));
        c = midpoint ? 0.5f * (t.alpha * (1.0f - std::exp(-2.0f * h)))
                     : t.alpha * ((1.0f - std::exp(-2.0f * h)) / (-2.0f * h) + 1.0f);
        e = t.sigma * std::sqrt(1.0f - std::exp(-2.0f * h));
        minus_b = minus_c = false;
        break;
    }
    bool const sde = config_.algorithm_type == AlgorithmType::SdeDpmSolverPlusPlus;
    float const* z = sde ? noise.data() : nullptr;
    return generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      float const d1 = inv_r0 * (m0[k] - m1[k]);
      float const u = a * x[k];
      float const v = b * m0[k];
      float const w = c * d1;
      float p = minus_b ? u - v : u + v;
      p = minus_c ? p - w : p + w;
      if (sde) p = p + e * z[k];
      return p;
    });
  }

  Tensor<float, Cpu> third_order(View sample, int i) const {
    AlphaSigma const t = alpha_sigma(sigmas_[std::size_t(i + 1)]);
    AlphaSigma const s0 = alpha_sigma(sigmas_[std::size_t(i)]);
    AlphaSigma const s1 = alpha_sigma(sigmas_[std::size_t(i - 1)]);
    AlphaSigma const s2 = alpha_sigma(sigmas_[std::size_t(i - 2)]);
    float const lt = t.lambda(), l0 = s0.lambda(), l1 = s1.lambda(), l2 = s2.lambda();
    float const h = lt - l0, h0 = l0 - l1, h1 = l1 - l2;
    float const r0 = h0 / h, r1 = h1 / h;
    float const inv_r0 = 1.0f / r0, inv_r1 = 1.0f / r1;
    float const w1 = r0 / (r0 + r1);
    float const w2 = 1.0f / (r0 + r1);
    std::size_t const n = model_outputs_.size();
    float const* m0 = model_outputs_[n - 1].data();
    float const* m1 = model_outputs_[n - 2].data();
    float const* m2 = model_outputs_[n - 3].data();
    float const* x = sample.data();
    bool const pp = config_.algorithm_type == AlgorithmType::DpmSolverPlusPlus;
    float a, b, c, d;
    if (pp) {
      a = t.sigma / s0.sigma;
      b = t.alpha * (std::exp(-h) - 1.0f);
      c = t.alpha * ((std::exp(-h) - 1.0f) / h + 1.0f);
      d = t.alpha * ((std::exp(-h) - 1.0f + h) / (h * h) - 0.5f);
    } else {
      a = t.alpha / s0.alpha;
      b = t.sigma * (std::exp(h) - 1.0f);
      c = t.sigma * ((std::exp(h) - 1.0f) / h - 1.0f);
      d = t.sigma * ((std::exp(h) - 1.0f - h) / (h * h) - 0.5f);
    }
    return generate(sample.shape(), [&](Index k) {  // (N, C, H, W)
      float const d10 = inv_r0 * (m0[k] - m1[k]);
      float const d11 = inv_r1 * (m1[k] - m2[k]);
      float const diff = d10 - d11;
      float const d1 = d10 + w1 * diff;
      float const d2 = w2 * diff;
      float p = a * x[k] - b * m0[k];
      p = pp ? p + c * d1 : p - c * d1;
      return p - d * d2;
    });
  }

  std::vector<Tensor<float, Cpu>> model_outputs_;  // solver_order entries, each (N, C, H, W) or empty
  int lower_order_nums_ = 0;
};

}  // namespace sdlora::schedulers

#ifdef SDLORA_SCHEDULERS_POP_OPTIONS
#pragma GCC pop_options
#undef SDLORA_SCHEDULERS_POP_OPTIONS
#endif
