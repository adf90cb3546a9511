/// @file lr_schedule.hpp
/// @brief Learning-rate schedules as diffusers.optimization.get_scheduler builds them (a torch LambdaLR over the
/// optimizer's initial lr): constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial,
/// piecewise_constant. The LR of optimizer step k (counting from 0) is `base_lr * multiplier(k)`. The only state is
/// the step counter. Include <sdlora/train.hpp> instead.
#pragma once

#include <algorithm>  // std::max
#include <cmath>      // std::cos, std::fmod, std::pow
#include <cstdint>    // std::int64_t
#include <map>        // std::map
#include <numbers>    // std::numbers::pi
#include <sstream>    // std::istringstream
#include <stdexcept>  // std::logic_error
#include <string>     // std::string, std::stoll, std::stod
#include <vector>     // std::vector

#include <sdlora/core/error.hpp>  // SDLORA_THROW, ConfigError

namespace sdlora::train {

enum class ScheduleType {
  Constant,
  ConstantWithWarmup,
  Linear,
  Cosine,
  CosineWithRestarts,
  Polynomial,
  PiecewiseConstant
};

/// diffusers' scheduler name ("cosine_with_restarts", ...) to the enum; ConfigError lists the valid names.
inline ScheduleType schedule_type(std::string const& name) {
  static std::map<std::string, ScheduleType> const kNames = {{"constant", ScheduleType::Constant},
                                                             {"constant_with_warmup", ScheduleType::ConstantWithWarmup},
                                                             {"linear", ScheduleType::Linear},
                                                             {"cosine", ScheduleType::Cosine},
                                                             {"cosine_with_restarts", ScheduleType::CosineWithRestarts},
                                                             {"polynomial", ScheduleType::Polynomial},
                                                             {"piecewise_constant", ScheduleType::PiecewiseConstant}};
  auto it = kNames.find(name);
  if (it == kNames.end())
    SDLORA_THROW(ConfigError, "[lr_schedule] unknown scheduler '"
                                  << name
                                  << "' (expected constant, constant_with_warmup, linear, cosine, "
                                     "cosine_with_restarts, polynomial or piecewise_constant)");
  return it->second;
}

/// get_scheduler's arguments. Only what the chosen type reads matters. Note that get_scheduler passes num_cycles
/// only to cosine_with_restarts (plain cosine always uses 0.5 cycles) and neither lr_end nor f_min/f_max at all.
struct LrScheduleOptions {
  ScheduleType type = ScheduleType::Constant;
  double base_lr = 1e-4;            // the optimizer's initial lr (polynomial divides by it)
  std::int64_t warmup_steps = 0;    // num_warmup_steps
  std::int64_t training_steps = 0;  // num_training_steps
  std::int64_t num_cycles = 1;      // cosine_with_restarts: the number of hard restarts
  double power = 1.0;               // polynomial
  double lr_end = 1e-7;             // polynomial
  std::string step_rules;           // piecewise_constant, e.g. "1:10,0.1:20,0.01:30,0.005"
};

/// A learning-rate schedule: multiplier(step) is diffusers' lr_lambda(step) in double, exactly.
class LrSchedule {
 public:
  explicit LrSchedule(LrScheduleOptions const& o) : o_(o) {
    bool const needs_total = o.type == ScheduleType::Linear || o.type == ScheduleType::Cosine ||
                             o.type == ScheduleType::CosineWithRestarts || o.type == ScheduleType::Polynomial;
    if (needs_total && o.training_steps <= 0)
      SDLORA_THROW(ConfigError, "[lr_schedule] this scheduler requires training_steps > 0");
    if (o.warmup_steps < 0) SDLORA_THROW(ConfigError, "[lr_schedule] warmup_steps " << o.warmup_steps << " < 0");
    if (o.type == ScheduleType::Polynomial && !(o.base_lr > o.lr_end))
      SDLORA_THROW(ConfigError,
                   "[lr_schedule] lr_end (" << o.lr_end << ") must be smaller than initial lr (" << o.base_lr << ")");
    if (o.type == ScheduleType::PiecewiseConstant) parse_rules();
  }

  /// The factor applied to base_lr at optimizer step `step` (0 for the first step).
  double multiplier(std::int64_t step) const {
    double const s = double(step);
    double const w = double(o_.warmup_steps);
    double const total = double(o_.training_steps);
    switch (o_.type) {
      case ScheduleType::Constant:
        return 1.0;
      case ScheduleType::ConstantWithWarmup:
        if (step < o_.warmup_steps) return s / std::max(1.0, w);
        return 1.0;
      case ScheduleType::Linear: {
        // f_min + (f_max - f_min) * max(0, progress) with f_min = 0, f_max = 1
        if (step < o_.warmup_steps) return 1.0 * s / std::max(1.0, w);
        double const progress = (total - s) / double(std::max<std::int64_t>(1, o_.training_steps - o_.warmup_steps));
        return 0.0 + (1.0 - 0.0) * std::max(0.0, progress);
      }
      case ScheduleType::Cosine: {
        if (step < o_.warmup_steps) return s / std::max(1.0, w);
        double const progress = (s - w) / double(std::max<std::int64_t>(1, o_.training_steps - o_.warmup_steps));
        return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
      }
      case ScheduleType::CosineWithRestarts: {
        if (step < o_.warmup_steps) return s / std::max(1.0, w);
        double const progress = (s - w) / double(std::max<std::int64_t>(1, o_.training_steps - o_.warmup_steps));
        if (progress >= 1.0) return 0.0;
        return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * python_mod1(double(o_.num_cycles) * progress))));
      }
      case ScheduleType::Polynomial: {
        if (step < o_.warmup_steps) return s / std::max(1.0, w);
        if (step > o_.training_steps) return o_.lr_end / o_.base_lr;
        double const range = o_.base_lr - o_.lr_end;
        double const decay_steps = double(o_.training_steps - o_.warmup_steps);
        double const remaining = 1.0 - (s - w) / decay_steps;
        return (range * std::pow(remaining, o_.power) + o_.lr_end) / o_.base_lr;
      }
      case ScheduleType::PiecewiseConstant: {
        for (auto const& [until, value] : rules_)
          if (step < until) return value;
        return last_;
      }
    }
    return 1.0;
  }
  /// base_lr * multiplier(step), as LambdaLR computes it.
  double lr_at(std::int64_t step) const { return o_.base_lr * multiplier(step); }

  /// The counter: lr() is the LR of the next optimizer step; advance() after each step (LambdaLR.step()).
  double lr() const { return lr_at(step_); }
  void advance() { ++step_; }
  std::int64_t step() const { return step_; }
  void set_step(std::int64_t step) { step_ = step; }
  LrScheduleOptions const& options() const { return o_; }

 private:
  /// Python's `x % 1.0` for x >= 0 (the sign of the result follows the divisor).
  static double python_mod1(double x) {
    double const r = std::fmod(x, 1.0);
    return r < 0 ? r + 1.0 : r;
  }
  void parse_rules() {
    std::istringstream in(o_.step_rules);
    std::string item;
    std::vector<std::string> items;
    while (std::getline(in, item, ',')) items.push_back(item);
    if (items.empty()) SDLORA_THROW(ConfigError, "[lr_schedule] piecewise_constant needs step_rules");
    try {
      for (std::size_t i = 0; i + 1 < items.size(); ++i) {
        auto const colon = items[i].find(':');
        if (colon == std::string::npos)
          SDLORA_THROW(ConfigError, "[lr_schedule] step rule '" << items[i] << "' is not value:steps");
        rules_[std::stoll(items[i].substr(colon + 1))] = std::stod(items[i].substr(0, colon));
      }
      last_ = std::stod(items.back());
    } catch (std::logic_error const&) {
      SDLORA_THROW(ConfigError, "[lr_schedule] cannot parse step_rules '" << o_.step_rules << "'");
    }
  }

  LrScheduleOptions o_;
  std::map<std::int64_t, double> rules_;  // step limit -> multiplier, sorted as diffusers sorts them
  double last_ = 1.0;
  std::int64_t step_ = 0;
};

}  // namespace sdlora::train
