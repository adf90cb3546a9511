/// @file config.hpp
/// @brief SchedulerConfig: the fields of diffusers' `scheduler_config.json`, parsed from JSON exactly as diffusers'
/// `SchedulerClass.from_config(config)` does (each scheduler class accepts its own `__init__` arguments, keeps the
/// ones present in the JSON, and takes its own defaults for the rest; unknown fields are ignored). Include
/// <sdlora/sdlora.hpp> instead.
#pragma once

#include <cmath>             // INFINITY
#include <initializer_list>  // std::initializer_list
#include <optional>          // std::optional
#include <sstream>           // std::ostringstream
#include <string>            // std::string
#include <string_view>       // std::string_view
#include <utility>           // std::pair
#include <vector>            // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/error.hpp>  // SDLORA_THROW, ConfigError

namespace sdlora::schedulers {

/// The scheduler classes sdlora implements, named after diffusers' classes.
enum class SchedulerKind { Ddpm, Ddim, Pndm, EulerDiscrete, EulerAncestralDiscrete, DpmSolverMultistep };

enum class BetaSchedule { Linear, ScaledLinear, SquaredCosCapV2 };
/// What the model predicts (diffusers' `prediction_type`).
enum class PredictionType { Epsilon, VPrediction, Sample };
enum class TimestepSpacing { Leading, Trailing, Linspace };
enum class FinalSigmasType { Zero, SigmaMin };
enum class InterpolationType { Linear };
enum class TimestepType { Discrete, Continuous };
/// DDPM's `variance_type` (the learned ones need a model with 2x output channels and are not supported).
enum class VarianceType { FixedSmall, FixedSmallLog, FixedLarge };
enum class AlgorithmType { DpmSolverPlusPlus, DpmSolver, SdeDpmSolverPlusPlus };
enum class SolverType { Midpoint, Heun };

/// diffusers' class name of a kind ("DDPMScheduler", ...).
inline std::string_view class_name(SchedulerKind kind) {
  switch (kind) {
    case SchedulerKind::Ddpm: return "DDPMScheduler";
    case SchedulerKind::Ddim: return "DDIMScheduler";
    case SchedulerKind::Pndm: return "PNDMScheduler";
    case SchedulerKind::EulerDiscrete: return "EulerDiscreteScheduler";
    case SchedulerKind::EulerAncestralDiscrete: return "EulerAncestralDiscreteScheduler";
    case SchedulerKind::DpmSolverMultistep: return "DPMSolverMultistepScheduler";
  }
  return "?";
}

/// The kind of a diffusers class name; ConfigError for a class sdlora does not implement.
inline SchedulerKind kind_from_class_name(std::string_view name) {
  for (SchedulerKind k : {SchedulerKind::Ddpm, SchedulerKind::Ddim, SchedulerKind::Pndm, SchedulerKind::EulerDiscrete,
                          SchedulerKind::EulerAncestralDiscrete, SchedulerKind::DpmSolverMultistep})
    if (class_name(k) == name) return k;
  SDLORA_THROW(ConfigError, "[scheduler] unsupported scheduler class '"
                                << name << "' (supported: DDPMScheduler, DDIMScheduler, PNDMScheduler, "
                                   "EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, "
                                   "DPMSolverMultistepScheduler)");
}

/// Every field any supported scheduler reads. Which fields a class accepts, and its defaults, follow its diffusers
/// `__init__` signature (see `SchedulerConfig::defaults` and `accepted_fields`).
struct SchedulerConfig {
  SchedulerKind kind = SchedulerKind::Pndm;
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  BetaSchedule beta_schedule = BetaSchedule::Linear;
  std::optional<std::vector<double>> trained_betas;
  PredictionType prediction_type = PredictionType::Epsilon;
  int steps_offset = 0;
  TimestepSpacing timestep_spacing = TimestepSpacing::Leading;
  bool rescale_betas_zero_snr = false;
  // DDPM / DDIM
  VarianceType variance_type = VarianceType::FixedSmall;
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;  // DDIM's default; PNDM's is false
  /// DDIM's `eta` (a `step()` argument in diffusers, passed by pipelines; not a diffusers config field). Read from
  /// the JSON field "eta" when present.
  double eta = 0.0;
  // PNDM
  bool skip_prk_steps = false;
  // Euler / DPM-Solver
  bool use_karras_sigmas = false;
  std::optional<double> sigma_min;
  std::optional<double> sigma_max;
  InterpolationType interpolation_type = InterpolationType::Linear;
  TimestepType timestep_type = TimestepType::Discrete;
  FinalSigmasType final_sigmas_type = FinalSigmasType::Zero;
  // DPM-Solver
  int solver_order = 2;
  AlgorithmType algorithm_type = AlgorithmType::DpmSolverPlusPlus;
  SolverType solver_type = SolverType::Midpoint;
  bool lower_order_final = true;
  bool euler_at_final = false;
  double lambda_min_clipped = -INFINITY;

  /// The defaults of diffusers' `__init__` for `kind`.
  static SchedulerConfig defaults(SchedulerKind kind) {
    SchedulerConfig c;
    c.kind = kind;
    switch (kind) {
      case SchedulerKind::Ddpm: break;
      case SchedulerKind::Ddim: break;
      case SchedulerKind::Pndm: c.set_alpha_to_one = false; break;
      case SchedulerKind::EulerDiscrete:
      case SchedulerKind::EulerAncestralDiscrete:
      case SchedulerKind::DpmSolverMultistep: c.timestep_spacing = TimestepSpacing::Linspace; break;
    }
    return c;
  }

  /// The `__init__` arguments of `kind` (diffusers 0.42) that appear in scheduler_config.json.
  static std::vector<std::string_view> accepted_fields(SchedulerKind kind) {
    std::vector<std::string_view> f = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                       "trained_betas", "prediction_type", "timestep_spacing", "steps_offset"};
    auto add = [&f](std::initializer_list<std::string_view> more) { f.insert(f.end(), more); };
    switch (kind) {
      case SchedulerKind::Ddpm:
        add({"variance_type", "clip_sample", "clip_sample_range", "thresholding", "rescale_betas_zero_snr"});
        break;
      case SchedulerKind::Ddim:
        add({"clip_sample", "clip_sample_range", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr", "eta"});
        break;
      case SchedulerKind::Pndm: add({"skip_prk_steps", "set_alpha_to_one"}); break;
      case SchedulerKind::EulerDiscrete:
        add({"interpolation_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
             "sigma_max", "timestep_type", "rescale_betas_zero_snr", "final_sigmas_type"});
        break;
      case SchedulerKind::EulerAncestralDiscrete: add({"rescale_betas_zero_snr"}); break;
      case SchedulerKind::DpmSolverMultistep:
        add({"solver_order", "thresholding", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
             "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
             "final_sigmas_type", "lambda_min_clipped", "variance_type", "rescale_betas_zero_snr",
             "use_dynamic_shifting"});
        break;
    }
    return f;
  }

  /// `SchedulerClass.from_config(j)` for the class `kind`: accepted fields present (and not null) in `j` override the
  /// class defaults; other fields (including other classes' fields) are ignored. A value of the wrong type or one
  /// sdlora does not implement throws ConfigError naming the field.
  static SchedulerConfig from_json(nlohmann::json const& j, SchedulerKind kind);

  /// The class named by `j["_class_name"]` (ConfigError if absent or unsupported), then `from_json(j, kind)`.
  static SchedulerConfig from_json(nlohmann::json const& j) {
    auto it = j.find("_class_name");
    if (it == j.end() || !it->is_string())
      SDLORA_THROW(ConfigError, "[scheduler] the config has no '_class_name' string field");
    return from_json(j, kind_from_class_name(it->get<std::string>()));
  }
};

namespace detail {

template <class T>
T get_field(nlohmann::json const& v, std::string_view field) {
  try {
    if constexpr (std::is_same_v<T, double>) {
      if (!v.is_number()) throw nlohmann::json::type_error::create(302, "not a number", &v);
    } else if constexpr (std::is_same_v<T, int>) {
      if (!v.is_number_integer()) throw nlohmann::json::type_error::create(302, "not an integer", &v);
    }
    return v.get<T>();
  } catch (nlohmann::json::exception const&) {
    SDLORA_THROW(ConfigError, "[scheduler] field '" << field << "' has the wrong type: " << v.dump());
  }
}

/// Maps a string field to an enum; ConfigError naming the field and the accepted values otherwise.
template <class E>
E get_enum(nlohmann::json const& v, std::string_view field, std::initializer_list<std::pair<char const*, E>> values) {
  std::string const s = get_field<std::string>(v, field);
  std::ostringstream names;
  for (auto const& [name, value] : values) {
    if (s == name) return value;
    names << (names.tellp() > 0 ? ", " : "") << name;
  }
  SDLORA_THROW(ConfigError, "[scheduler] field '" << field << "' has unsupported value \"" << s << "\" (supported: "
                                                  << names.str() << ")");
}

}  // namespace detail

inline SchedulerConfig SchedulerConfig::from_json(nlohmann::json const& j, SchedulerKind kind) {
  if (!j.is_object()) SDLORA_THROW(ConfigError, "[scheduler] the config must be a JSON object: " << j.dump());
  SchedulerConfig c = defaults(kind);
  using detail::get_enum;
  using detail::get_field;
  for (std::string_view field : accepted_fields(kind)) {
    auto it = j.find(std::string(field));
    if (it == j.end() || it->is_null()) continue;
    nlohmann::json const& v = *it;
    if (field == "num_train_timesteps") c.num_train_timesteps = get_field<int>(v, field);
    else if (field == "beta_start") c.beta_start = get_field<double>(v, field);
    else if (field == "beta_end") c.beta_end = get_field<double>(v, field);
    else if (field == "beta_schedule")
      c.beta_schedule = get_enum<BetaSchedule>(v, field,
                                               {{"linear", BetaSchedule::Linear},
                                                {"scaled_linear", BetaSchedule::ScaledLinear},
                                                {"squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2}});
    else if (field == "trained_betas") c.trained_betas = get_field<std::vector<double>>(v, field);
    else if (field == "prediction_type") {
      c.prediction_type = get_enum<PredictionType>(v, field,
                                                   {{"epsilon", PredictionType::Epsilon},
                                                    {"v_prediction", PredictionType::VPrediction},
                                                    {"sample", PredictionType::Sample}});
      if (kind == SchedulerKind::Pndm && c.prediction_type == PredictionType::Sample)
        SDLORA_THROW(ConfigError, "[scheduler] field 'prediction_type': PNDMScheduler supports epsilon and "
                                  "v_prediction only");
    } else if (field == "timestep_spacing")
      c.timestep_spacing = get_enum<TimestepSpacing>(v, field,
                                                     {{"leading", TimestepSpacing::Leading},
                                                      {"trailing", TimestepSpacing::Trailing},
                                                      {"linspace", TimestepSpacing::Linspace}});
    else if (field == "steps_offset") c.steps_offset = get_field<int>(v, field);
    else if (field == "rescale_betas_zero_snr") c.rescale_betas_zero_snr = get_field<bool>(v, field);
    else if (field == "variance_type") {
      if (kind == SchedulerKind::DpmSolverMultistep)
        SDLORA_THROW(ConfigError, "[scheduler] field 'variance_type': learned variances are not supported");
      c.variance_type = get_enum<VarianceType>(v, field,
                                               {{"fixed_small", VarianceType::FixedSmall},
                                                {"fixed_small_log", VarianceType::FixedSmallLog},
                                                {"fixed_large", VarianceType::FixedLarge}});
    } else if (field == "clip_sample") c.clip_sample = get_field<bool>(v, field);
    else if (field == "clip_sample_range") c.clip_sample_range = get_field<double>(v, field);
    else if (field == "set_alpha_to_one") c.set_alpha_to_one = get_field<bool>(v, field);
    else if (field == "eta") c.eta = get_field<double>(v, field);
    else if (field == "skip_prk_steps") c.skip_prk_steps = get_field<bool>(v, field);
    else if (field == "use_karras_sigmas") c.use_karras_sigmas = get_field<bool>(v, field);
    else if (field == "sigma_min") c.sigma_min = get_field<double>(v, field);
    else if (field == "sigma_max") c.sigma_max = get_field<double>(v, field);
    else if (field == "interpolation_type")
      c.interpolation_type = get_enum<InterpolationType>(v, field, {{"linear", InterpolationType::Linear}});
    else if (field == "timestep_type")
      c.timestep_type = get_enum<TimestepType>(v, field,
                                               {{"discrete", TimestepType::Discrete},
                                                {"continuous", TimestepType::Continuous}});
    else if (field == "final_sigmas_type")
      c.final_sigmas_type = get_enum<FinalSigmasType>(v, field,
                                                      {{"zero", FinalSigmasType::Zero},
                                                       {"sigma_min", FinalSigmasType::SigmaMin}});
    else if (field == "solver_order") c.solver_order = get_field<int>(v, field);
    else if (field == "algorithm_type")
      c.algorithm_type = get_enum<AlgorithmType>(v, field,
                                                 {{"dpmsolver++", AlgorithmType::DpmSolverPlusPlus},
                                                  {"dpmsolver", AlgorithmType::DpmSolver},
                                                  {"sde-dpmsolver++", AlgorithmType::SdeDpmSolverPlusPlus}});
    else if (field == "solver_type")
      c.solver_type = get_enum<SolverType>(v, field, {{"midpoint", SolverType::Midpoint}, {"heun", SolverType::Heun}});
    else if (field == "lower_order_final") c.lower_order_final = get_field<bool>(v, field);
    else if (field == "euler_at_final") c.euler_at_final = get_field<bool>(v, field);
    else if (field == "lambda_min_clipped") c.lambda_min_clipped = get_field<double>(v, field);
    else if (field == "thresholding" || field == "use_exponential_sigmas" || field == "use_beta_sigmas" ||
             field == "use_lu_lambdas" || field == "use_flow_sigmas" || field == "use_dynamic_shifting") {
      if (get_field<bool>(v, field))
        SDLORA_THROW(ConfigError, "[scheduler] field '" << field << "' = true is not supported by sdlora");
    }
  }
  // Value checks diffusers makes (or that would make the math meaningless).
  // The upper bound keeps a hostile scheduler_config.json from allocating gigabytes of tables (config_fuzz found
  // 71707170 timesteps: 2 GB); models train with 1000, a few with 4000.
  if (c.num_train_timesteps < 2 || c.num_train_timesteps > 100000)
    SDLORA_THROW(ConfigError, "[scheduler] field 'num_train_timesteps' must lie in [2, 100000], got "
                                  << c.num_train_timesteps);
  if (c.trained_betas && int(c.trained_betas->size()) != c.num_train_timesteps)
    SDLORA_THROW(ConfigError, "[scheduler] field 'trained_betas' has " << c.trained_betas->size() << " values for "
                                                                       << c.num_train_timesteps << " timesteps");
  if (!(c.beta_start > 0 && c.beta_end > 0 && c.beta_start < 1 && c.beta_end < 1))
    SDLORA_THROW(ConfigError, "[scheduler] fields 'beta_start'/'beta_end' must lie in (0, 1), got "
                                  << c.beta_start << ", " << c.beta_end);
  if (c.steps_offset < 0) SDLORA_THROW(ConfigError, "[scheduler] field 'steps_offset' must be >= 0");
  if (c.eta < 0) SDLORA_THROW(ConfigError, "[scheduler] field 'eta' must be >= 0, got " << c.eta);
  if (kind == SchedulerKind::DpmSolverMultistep) {
    if (c.solver_order < 1 || c.solver_order > 3)
      SDLORA_THROW(ConfigError, "[scheduler] field 'solver_order' must be 1, 2 or 3, got " << c.solver_order);
    if (c.algorithm_type == AlgorithmType::DpmSolver && c.final_sigmas_type == FinalSigmasType::Zero)
      SDLORA_THROW(ConfigError, "[scheduler] field 'final_sigmas_type' = zero is not supported with algorithm_type "
                                "dpmsolver (as diffusers): use sigma_min");
    if (c.algorithm_type == AlgorithmType::SdeDpmSolverPlusPlus && c.solver_order == 3)
      SDLORA_THROW(ConfigError, "[scheduler] field 'solver_order' = 3 is not implemented for sde-dpmsolver++");
  }
  if (kind == SchedulerKind::EulerDiscrete && c.timestep_type == TimestepType::Continuous &&
      c.prediction_type != PredictionType::VPrediction)
    c.timestep_type = TimestepType::Discrete;  // diffusers only uses continuous timesteps with v_prediction
  return c;
}

}  // namespace sdlora::schedulers
