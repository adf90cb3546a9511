/// @file factory.hpp
/// @brief make_scheduler: a scheduler by short name (ddpm, ddim, pndm, euler, euler_a, dpmpp_2m, *_karras) or by
/// the config's `_class_name`, configured from a diffusers scheduler_config.json as `Class.from_config(json)`.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <memory>       // std::unique_ptr, std::make_unique
#include <string>       // std::string
#include <string_view>  // std::string_view

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/core/error.hpp>              // SDLORA_THROW, ConfigError
#include <sdlora/schedulers/config.hpp>       // SchedulerConfig, SchedulerKind
#include <sdlora/schedulers/ddpm.hpp>         // DdpmScheduler, DdimScheduler
#include <sdlora/schedulers/dpm_solver.hpp>   // DpmSolverMultistepScheduler
#include <sdlora/schedulers/euler.hpp>        // EulerDiscreteScheduler, EulerAncestralDiscreteScheduler
#include <sdlora/schedulers/pndm.hpp>         // PndmScheduler
#include <sdlora/schedulers/scheduler.hpp>    // Scheduler

namespace sdlora::schedulers {

/// The scheduler for a finished config (its `kind`).
inline std::unique_ptr<Scheduler> make_scheduler(SchedulerConfig config) {
  switch (config.kind) {
    case SchedulerKind::Ddpm: return std::make_unique<DdpmScheduler>(std::move(config));
    case SchedulerKind::Ddim: return std::make_unique<DdimScheduler>(std::move(config));
    case SchedulerKind::Pndm: return std::make_unique<PndmScheduler>(std::move(config));
    case SchedulerKind::EulerDiscrete: return std::make_unique<EulerDiscreteScheduler>(std::move(config));
    case SchedulerKind::EulerAncestralDiscrete:
      return std::make_unique<EulerAncestralDiscreteScheduler>(std::move(config));
    case SchedulerKind::DpmSolverMultistep: return std::make_unique<DpmSolverMultistepScheduler>(std::move(config));
  }
  SDLORA_THROW(ConfigError, "[make_scheduler] unknown scheduler kind");
}

/// A scheduler by name, configured from `config` (a scheduler_config.json) as diffusers' `Class.from_config(config)`:
/// - "" or "default": the config's `_class_name`;
/// - "ddpm", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m" (DPM-Solver++ of order 2, the "DPM++ 2M" of UIs: forces
///   algorithm_type dpmsolver++ and solver_order 2), or a diffusers class name;
/// - a "_karras" suffix ("euler_karras", "dpmpp_2m_karras") or `karras = true` turns on use_karras_sigmas (only the
///   Euler and DPM-Solver schedulers have it; others throw ConfigError).
/// Unknown names throw ConfigError listing the valid ones.
inline std::unique_ptr<Scheduler> make_scheduler(std::string_view name, nlohmann::json const& config,
                                                 bool karras = false) {
  std::string n(name);
  constexpr std::string_view kSuffix = "_karras";
  if (n.size() > kSuffix.size() && n.compare(n.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0) {
    karras = true;
    n.resize(n.size() - kSuffix.size());
  }
  SchedulerKind kind;
  bool dpmpp_2m = false;
  if (n.empty() || n == "default") {
    auto it = config.find("_class_name");
    if (it == config.end() || !it->is_string())
      SDLORA_THROW(ConfigError, "[make_scheduler] no scheduler name given and the config has no '_class_name'");
    kind = kind_from_class_name(it->get<std::string>());
  } else if (n == "ddpm") kind = SchedulerKind::Ddpm;
  else if (n == "ddim") kind = SchedulerKind::Ddim;
  else if (n == "pndm") kind = SchedulerKind::Pndm;
  else if (n == "euler") kind = SchedulerKind::EulerDiscrete;
  else if (n == "euler_a") kind = SchedulerKind::EulerAncestralDiscrete;
  else if (n == "dpmpp_2m") kind = SchedulerKind::DpmSolverMultistep, dpmpp_2m = true;
  else if (n.find("Scheduler") != std::string::npos) kind = kind_from_class_name(n);
  else
    SDLORA_THROW(ConfigError, "[make_scheduler] unknown scheduler '" << name
                                  << "' (valid: default, ddpm, ddim, pndm, euler, euler_a, dpmpp_2m, euler_karras, "
                                     "dpmpp_2m_karras, or a diffusers class name)");
  SchedulerConfig c = SchedulerConfig::from_json(config, kind);
  if (dpmpp_2m) {
    c.algorithm_type = AlgorithmType::DpmSolverPlusPlus;
    c.solver_order = 2;
  }
  if (karras) {
    if (kind != SchedulerKind::EulerDiscrete && kind != SchedulerKind::DpmSolverMultistep)
      SDLORA_THROW(ConfigError, "[make_scheduler] " << class_name(kind) << " has no Karras sigmas (use_karras_sigmas)");
    c.use_karras_sigmas = true;
  }
  return make_scheduler(std::move(c));
}

}  // namespace sdlora::schedulers
