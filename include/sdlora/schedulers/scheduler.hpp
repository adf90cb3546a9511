/// @file scheduler.hpp
/// @brief The common interface of the noise schedulers (a base class with virtual functions: schedulers run once
/// per denoising step, never per element) and the alphas_cumprod operations every scheduler shares (add_noise,
/// get_velocity, snr). Include <sdlora/sdlora.hpp> instead.
///
/// Usage, as a diffusers pipeline:
/// @code
///   scheduler.set_timesteps(steps);
///   latents *= scheduler.init_noise_sigma();
///   for (double t : scheduler.timesteps()) {
///     auto x_in = scheduler.scale_model_input(latents, t);
///     auto eps = unet(x_in, t);
///     Tensor<float> noise;                                  // drawn only where diffusers draws it:
///     if (scheduler.step_uses_noise(t)) noise = randn(eps.shape(), generator);
///     latents = scheduler.step(eps, t, latents, noise).prev_sample;
///   }
/// @endcode
#pragma once

#include <cmath>        // std::sqrt
#include <cstdint>      // std::int64_t
#include <optional>     // std::optional
#include <span>         // std::span
#include <string_view>  // std::string_view
#include <utility>      // std::move
#include <vector>       // std::vector

#include <sdlora/core/error.hpp>           // SDLORA_EXPECTS, SDLORA_THROW, ConfigError
#include <sdlora/core/tensor.hpp>          // Tensor, TensorView
#include <sdlora/schedulers/config.hpp>    // SchedulerConfig
#include <sdlora/schedulers/numerics.hpp>  // numerics::make_betas, numerics::torch_cumprod_f32

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_SCHEDULERS_POP_OPTIONS 1
#endif

namespace sdlora::schedulers {

/// What `step` returns (diffusers' SchedulerOutput).
struct StepOutput {
  Tensor<float, Cpu> prev_sample;           // (N, C, H, W) x_{t-1}
  Tensor<float, Cpu> pred_original_sample;  // (N, C, H, W) predicted x_0; empty where diffusers returns none
};

/// A diffusers noise scheduler. Samples are float32 (N, C, H, W) tensors (any contiguous shape works: the math is
/// elementwise). Scalar coefficients are float32 (0-dim torch tensors in diffusers) or double where diffusers uses
/// numpy/Python floats, operation by operation.
class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config) : config_(std::move(config)) {
    betas_ = numerics::make_betas(config_);
    std::vector<float> alphas(betas_.size());
    for (std::size_t i = 0; i < betas_.size(); ++i) alphas[i] = 1.0f - betas_[i];
    alphas_cumprod_ = numerics::torch_cumprod_f32(alphas);
  }
  virtual ~Scheduler() = default;
  Scheduler(Scheduler const&) = default;
  Scheduler& operator=(Scheduler const&) = default;

  SchedulerConfig const& config() const { return config_; }
  /// diffusers' class name ("EulerDiscreteScheduler", ...).
  std::string_view name() const { return schedulers::class_name(config_.kind); }
  int num_train_timesteps() const { return config_.num_train_timesteps; }
  /// diffusers' `order` class attribute (1 for every scheduler here; pipelines use it for img2img's begin index).
  virtual int order() const { return 1; }

  /// Computes the inference timesteps (and sigmas) and resets the step state.
  virtual void set_timesteps(int num_inference_steps) = 0;
  /// The timesteps of the schedule: int64 values in diffusers (exact here) except for the Euler schedulers, whose
  /// timesteps are float32 values (`float_timesteps()`), stored exactly as doubles.
  std::vector<double> const& timesteps() const { return timesteps_; }
  bool float_timesteps() const { return float_timesteps_; }
  /// diffusers' `num_inference_steps` after set_timesteps (0 before).
  int num_inference_steps() const { return num_inference_steps_; }
  /// The float32 sigmas of sigma-based schedulers (Euler, DPM-Solver), one more than the timesteps; empty otherwise.
  std::vector<float> const& sigmas() const { return sigmas_; }

  /// The standard deviation of the initial noise (`init_noise_sigma`).
  virtual float init_noise_sigma() const { return 1.0f; }
  /// `scale_model_input(sample, t)`: the model input for timestep t (a copy for schedulers that do not scale).
  virtual Tensor<float, Cpu> scale_model_input(TensorView<float const, Cpu> sample, double /*t*/) {
    return Tensor<float, Cpu>::from_view(sample);
  }
  /// Whether diffusers' `step` at timestep t draws `randn_tensor(model_output.shape, generator=generator,
  /// dtype=model_output.dtype)` (DDPM for t > 0, DDIM with eta > 0, Euler ancestral always, SDE-DPM-Solver always).
  /// The caller draws it from its torch-compatible generator and passes it to `step`, which keeps the generator
  /// stream identical to diffusers'.
  virtual bool step_uses_noise(double /*t*/) const { return false; }
  /// One denoising step from timestep t. `noise` (same shape as model_output) is required exactly when
  /// `step_uses_noise(t)`, and ignored otherwise.
  virtual StepOutput step(TensorView<float const, Cpu> model_output, double t, TensorView<float const, Cpu> sample,
                          TensorView<float const, Cpu> noise = {}) = 0;
  /// `add_noise(original, noise, timesteps)`: the forward process, one timestep per batch item. The default is
  /// the alphas_cumprod form (DDPM/DDIM/PNDM): sqrt(ac[t]) * x0 + sqrt(1 - ac[t]) * noise in float32.
  virtual Tensor<float, Cpu> add_noise(TensorView<float const, Cpu> original, TensorView<float const, Cpu> noise,
                                       std::span<double const> timesteps) const {
    check_batch("add_noise", original, noise, timesteps.size());
    return per_item(original, noise, timesteps.size(), [&](std::size_t b, float x, float n) {
      float const ac = alphas_cumprod_at(timesteps[b]);
      float const a = std::sqrt(ac);
      float const s = std::sqrt(1.0f - ac);
      float const u = a * x;
      float const v = s * n;
      return u + v;
    });
  }
  Tensor<float, Cpu> add_noise(TensorView<float const, Cpu> original, TensorView<float const, Cpu> noise,
                               std::span<std::int64_t const> timesteps) const {
    std::vector<double> const t(timesteps.begin(), timesteps.end());
    return add_noise(original, noise, std::span<double const>(t));
  }
  /// `get_velocity(sample, noise, timesteps)` (DDPM/DDIM): the v-prediction target
  /// sqrt(ac[t]) * noise - sqrt(1 - ac[t]) * sample in float32, one integer timestep per batch item.
  Tensor<float, Cpu> get_velocity(TensorView<float const, Cpu> sample, TensorView<float const, Cpu> noise,
                                  std::span<std::int64_t const> timesteps) const {
    check_batch("get_velocity", sample, noise, timesteps.size());
    return per_item(sample, noise, timesteps.size(), [&](std::size_t b, float x, float n) {
      float const ac = alphas_cumprod_at(double(timesteps[b]));
      float const u = std::sqrt(ac) * n;
      float const v = std::sqrt(1.0f - ac) * x;
      return u - v;
    });
  }

  /// float32 `betas` and `alphas_cumprod` (num_train_timesteps values) as diffusers computes them.
  std::vector<float> const& betas() const { return betas_; }
  std::vector<float> const& alphas_cumprod() const { return alphas_cumprod_; }
  /// diffusers.training_utils.compute_snr for one timestep: (sqrt(ac) / sqrt(1 - ac)) ** 2 in float32.
  float snr(int t) const {
    float const ac = alphas_cumprod_at(double(t));
    float const r = std::sqrt(ac) / std::sqrt(1.0f - ac);
    return r * r;
  }

  /// Forgets the per-run state (step index, begin index, solver history) without recomputing the timesteps.
  virtual void reset() {
    step_index_.reset();
    begin_index_.reset();
  }
  /// `set_begin_index(i)` (img2img pipelines): the first `step` uses index i instead of looking t up.
  void set_begin_index(int i) { begin_index_ = i; }
  std::optional<int> step_index() const { return step_index_; }
  std::optional<int> begin_index() const { return begin_index_; }

 protected:
  /// alphas_cumprod[t] for an integer t in [0, num_train_timesteps).
  float alphas_cumprod_at(double t) const {
    auto const i = static_cast<std::int64_t>(t);
    if (double(i) != t || i < 0 || i >= std::int64_t(alphas_cumprod_.size()))
      SDLORA_THROW(ConfigError, "[" << name() << "] timestep " << t << " is not an integer in [0, "
                                    << alphas_cumprod_.size() << ")");
    return alphas_cumprod_[std::size_t(i)];
  }

  /// Shape checks for step(): model_output, sample (and noise when used) are contiguous with one shape.
  void check_step(TensorView<float const, Cpu> model_output, TensorView<float const, Cpu> sample,
                  TensorView<float const, Cpu> noise, bool uses_noise) const {
    SDLORA_EXPECTS(!timesteps_.empty(), "[" << name() << ".step] call set_timesteps first");
    SDLORA_EXPECTS(model_output.is_contiguous() && sample.is_contiguous(),
                   "[" << name() << ".step] model_output and sample must be contiguous");
    SDLORA_EXPECTS(model_output.shape() == sample.shape(), "[" << name() << ".step] model_output "
                                                               << model_output.shape() << " vs sample "
                                                               << sample.shape());
    if (uses_noise)
      SDLORA_EXPECTS(!noise.empty() && noise.is_contiguous() && noise.shape() == sample.shape(),
                     "[" << name() << ".step] this step draws noise: pass a contiguous " << sample.shape()
                         << " noise tensor, got " << noise.shape());
  }
  void check_batch(char const* op, TensorView<float const, Cpu> x, TensorView<float const, Cpu> n,
                   std::size_t count) const {
    SDLORA_EXPECTS(x.is_contiguous() && n.is_contiguous() && x.shape() == n.shape() && x.rank() >= 1,
                   "[" << name() << "." << op << "] samples " << x.shape() << " and noise " << n.shape()
                       << " must be contiguous with one shape");
    SDLORA_EXPECTS(std::size_t(x.dim(0)) == count, "[" << name() << "." << op << "] " << count
                                                       << " timesteps for a batch of " << x.dim(0));
  }
  /// out[b, ...] = f(b, x[b, ...], y[b, ...]) over the first axis.
  template <class F>
  static Tensor<float, Cpu> per_item(TensorView<float const, Cpu> x, TensorView<float const, Cpu> y,
                                     std::size_t batch, F f) {
    auto out = Tensor<float, Cpu>::uninitialized(x.shape());  // (N, C, H, W)
    Index const per = batch ? x.numel() / Index(batch) : 0;
    for (std::size_t b = 0; b < batch; ++b)
      for (Index i = Index(b) * per; i < Index(b + 1) * per; ++i) out(i) = f(b, x.data()[i], y.data()[i]);
    return out;
  }
  /// out[i] = f(i) over a tensor of `shape`.
  template <class F>
  static Tensor<float, Cpu> generate(Shape const& shape, F f) {
    auto out = Tensor<float, Cpu>::uninitialized(shape);
    for (Index i = 0; i < out.numel(); ++i) out(i) = f(i);
    return out;
  }

  /// `index_for_timestep(t)` of the sigma schedulers: the position of t in the schedule, the second one when t
  /// occurs twice (so img2img starting mid-schedule does not skip a sigma).
  std::optional<int> find_timestep(double t) const {
    std::vector<int> hits;
    for (std::size_t i = 0; i < timesteps_.size(); ++i)
      if (timesteps_[i] == t) hits.push_back(int(i));
    if (hits.empty()) return std::nullopt;
    return hits.size() > 1 ? hits[1] : hits[0];
  }

  SchedulerConfig config_;
  std::vector<float> betas_;           // (num_train_timesteps)
  std::vector<float> alphas_cumprod_;  // (num_train_timesteps)
  std::vector<double> timesteps_;
  bool float_timesteps_ = false;
  std::vector<float> sigmas_;
  int num_inference_steps_ = 0;
  std::optional<int> step_index_;
  std::optional<int> begin_index_;
};

}  // namespace sdlora::schedulers

#ifdef SDLORA_SCHEDULERS_POP_OPTIONS
#pragma GCC pop_options
#undef SDLORA_SCHEDULERS_POP_OPTIONS
#endif
