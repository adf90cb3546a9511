/// @file pndm.hpp
/// @brief PndmScheduler: diffusers' PNDMScheduler (scheduling_pndm.py), the PLMS path SD uses (skip_prk_steps=True)
/// and the Runge-Kutta warm-up (PRK) path, with the same ets history. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <algorithm>  // std::reverse
#include <cmath>      // std::sqrt
#include <vector>     // std::vector

#include <sdlora/schedulers/ddpm.hpp>       // detail::check_inference_steps
#include <sdlora/schedulers/numerics.hpp>   // numerics::np_linspace, np_arange, np_round
#include <sdlora/schedulers/scheduler.hpp>  // Scheduler, StepOutput

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_SCHEDULERS_POP_OPTIONS 1
#endif

namespace sdlora::schedulers {

/// diffusers' PNDMScheduler. Stateful: the last four model outputs (`ets`), the PRK accumulator and a step counter.
class PndmScheduler : public Scheduler {
 public:
  explicit PndmScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
    final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0f : alphas_cumprod_[0];
  }

  void set_timesteps(int n) override {
    detail::check_inference_steps(*this, n);
    num_inference_steps_ = n;
    int const N = num_train_timesteps();
    std::vector<double> base;  // ascending `_timesteps`
    if (config_.timestep_spacing == TimestepSpacing::Linspace) {
      for (double v : numerics::np_linspace(0, N - 1, n)) base.push_back(numerics::np_round(v));
    } else if (config_.timestep_spacing == TimestepSpacing::Leading) {
      for (int i = 0; i < n; ++i) base.push_back(double(std::int64_t(i) * (N / n) + config_.steps_offset));
    } else {
      for (double v : numerics::np_arange(N, 0, -double(N) / n)) base.push_back(numerics::np_round(v) - 1);
      std::reverse(base.begin(), base.end());
    }
    prk_timesteps_.clear();
    std::vector<double> plms;
    if (config_.skip_prk_steps) {
      // concatenate([_t[:-1], _t[-2:-1], _t[-1:]])[::-1]: the second-to-last timestep is repeated.
      plms.assign(base.begin(), base.end() - 1);
      if (base.size() >= 2) plms.push_back(base[base.size() - 2]);
      plms.push_back(base.back());
      std::reverse(plms.begin(), plms.end());
    } else {
      if (n < 4) SDLORA_THROW(ConfigError, "[PNDMScheduler.set_timesteps] the PRK warm-up needs >= 4 steps, got " << n);
      // np.array(_t[-4:]).repeat(2) + np.tile([0, N // n // 2], 4), then [:-1].repeat(2)[1:-1][::-1].
      std::vector<double> prk;
      for (std::size_t k = base.size() - 4; k < base.size(); ++k) {
        prk.push_back(base[k]);
        prk.push_back(base[k] + double(N / n / 2));
      }
      prk.pop_back();
      std::vector<double> doubled;
      for (double v : prk) doubled.insert(doubled.end(), {v, v});
      prk_timesteps_.assign(doubled.begin() + 1, doubled.end() - 1);
      std::reverse(prk_timesteps_.begin(), prk_timesteps_.end());
      plms.assign(base.begin(), base.end() - 3);
      std::reverse(plms.begin(), plms.end());
    }
    timesteps_ = prk_timesteps_;
    timesteps_.insert(timesteps_.end(), plms.begin(), plms.end());
    reset();
  }

  void reset() override {
    Scheduler::reset();
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = Tensor<float, Cpu>();
    cur_sample_ = Tensor<float, Cpu>();
  }

  StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise = {}) override {
    check_step(model_output, sample, noise, false);
    if (counter_ < int(prk_timesteps_.size()) && !config_.skip_prk_steps) return step_prk(model_output, t, sample);
    return step_plms(model_output, t, sample);
  }

  /// The history length (for tests of the stateful behaviour).
  int counter() const { return counter_; }

 private:
  using View = TensorView<float const, Cpu>;

  StepOutput step_prk(View model_output, double t, View sample) {
    int const N = num_train_timesteps();
    int const n = num_inference_steps_;
    double const diff_to_prev = counter_ % 2 ? 0 : double(N / n / 2);
    double const prev_t = t - diff_to_prev;
    double const timestep = prk_timesteps_[std::size_t(counter_ / 4 * 4)];
    float const sixth = float(1.0 / 6);
    float const third = float(1.0 / 3);
    Tensor<float, Cpu> mo = Tensor<float, Cpu>::from_view(model_output);  // (N, C, H, W)
    auto accumulate = [&](float w) {
      if (cur_model_output_.empty()) {  // 0 + w * model_output
        cur_model_output_ = generate(mo.shape(), [&](Index i) { return w * mo(i); });
      } else {
        for (Index i = 0; i < mo.numel(); ++i) cur_model_output_(i) = cur_model_output_(i) + w * mo(i);
      }
    };
    if (counter_ % 4 == 0) {
      accumulate(sixth);
      ets_.push_back(mo);
      cur_sample_ = Tensor<float, Cpu>::from_view(sample);
    } else if ((counter_ - 1) % 4 == 0 || (counter_ - 2) % 4 == 0) {
      accumulate(third);
    } else {
      Tensor<float, Cpu> combined = generate(mo.shape(), [&](Index i) { return cur_model_output_(i) + sixth * mo(i); });
      mo = std::move(combined);
      cur_model_output_ = Tensor<float, Cpu>();
    }
    View const cur = cur_sample_.empty() ? sample : cur_sample_.view();
    StepOutput out{prev_sample(cur, timestep, prev_t, mo), {}};
    ++counter_;
    return out;
  }

  StepOutput step_plms(View model_output, double t, View sample_in) {
    int const ratio = num_train_timesteps() / num_inference_steps_;
    if (!config_.skip_prk_steps && ets_.size() < 3)
      SDLORA_THROW(ConfigError, "[PNDMScheduler.step] the PLMS steps need the 12 PRK warm-up steps first");
    double prev_t = t - ratio;
    double timestep = t;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(Tensor<float, Cpu>::from_view(model_output));
    } else {
      prev_t = t;
      timestep = t + ratio;
    }
    Tensor<float, Cpu> sample_copy;
    View sample = sample_in;
    Tensor<float, Cpu> mo;  // (N, C, H, W) the multistep combination
    Shape const shape = model_output.shape();
    float const* m = model_output.data();
    std::size_t const k = ets_.size();
    auto e = [&](std::size_t back) { return ets_[k - back].data(); };
    if (k == 1 && counter_ == 0) {
      mo = Tensor<float, Cpu>::from_view(model_output);
      cur_sample_ = Tensor<float, Cpu>::from_view(sample_in);
    } else if (k == 1 && counter_ == 1) {
      float const* e1 = e(1);
      mo = generate(shape, [&](Index i) { return (m[i] + e1[i]) / 2.0f; });
      sample_copy = std::move(cur_sample_);
      cur_sample_ = Tensor<float, Cpu>();
      sample = sample_copy.view();
    } else if (k == 2) {
      float const *e1 = e(1), *e2 = e(2);
      mo = generate(shape, [&](Index i) { return (3.0f * e1[i] - e2[i]) / 2.0f; });
    } else if (k == 3) {
      float const *e1 = e(1), *e2 = e(2), *e3 = e(3);
      mo = generate(shape, [&](Index i) {
        float const a = 23.0f * e1[i];
        float const b = 16.0f * e2[i];
        float const c = 5.0f * e3[i];
        return (a - b + c) / 12.0f;
      });
    } else {
      float const *e1 = e(1), *e2 = e(2), *e3 = e(3), *e4 = e(4);
      float const w = float(1.0 / 24);
      mo = generate(shape, [&](Index i) {
        float const a = 55.0f * e1[i];
        float const b = 59.0f * e2[i];
        float const c = 37.0f * e3[i];
        float const d = 9.0f * e4[i];
        return w * (a - b + c - d);
      });
    }
    StepOutput out{prev_sample(sample, timestep, prev_t, mo), {}};
    ++counter_;
    return out;
  }

  /// `_get_prev_sample` (PNDM paper eq. 9) in float32.
  Tensor<float, Cpu> prev_sample(View sample, double t, double prev_t, Tensor<float, Cpu> const& model_output) const {
    float const a_t = alphas_cumprod_at(t);
    float const a_prev = prev_t >= 0 ? alphas_cumprod_at(prev_t) : final_alpha_cumprod_;
    float const b_t = 1.0f - a_t;
    float const b_prev = 1.0f - a_prev;
    float const sa = std::sqrt(a_t);
    float const sb = std::sqrt(b_t);
    float const sample_coeff = std::sqrt(a_prev / a_t);
    float const denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
    float const diff = a_prev - a_t;
    bool const v = config_.prediction_type == PredictionType::VPrediction;
    float const* x = sample.data();
    return generate(sample.shape(), [&](Index i) {  // (N, C, H, W)
      float mo = model_output(i);
      if (v) mo = sa * mo + sb * x[i];
      float const u = sample_coeff * x[i];
      float const w = diff * mo / denom;
      return u - w;
    });
  }

  float final_alpha_cumprod_ = 1.0f;
  std::vector<double> prk_timesteps_;
  std::vector<Tensor<float, Cpu>> ets_;  // each (N, C, H, W), at most 4
  int counter_ = 0;
  Tensor<float, Cpu> cur_model_output_;  // (N, C, H, W) PRK accumulator; empty = 0
  Tensor<float, Cpu> cur_sample_;        // (N, C, H, W)
};

}  // namespace sdlora::schedulers

#ifdef SDLORA_SCHEDULERS_POP_OPTIONS
#pragma GCC pop_options
#undef SDLORA_SCHEDULERS_POP_OPTIONS
#endif
