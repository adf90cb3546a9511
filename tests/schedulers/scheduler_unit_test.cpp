/// @file scheduler_unit_test.cpp
/// @brief Scheduler config parsing (from_config semantics), the factory's names and errors, and stateful behaviour
/// (reset, begin index, noise requirements).
#include <catch2/catch.hpp>
#include <sdlora/sdlora.hpp>
#include <string>  // std::string

#include "support.hpp"

using namespace sdlora;
using namespace sdlora::schedulers;

namespace {
nlohmann::json sd15() {
  return {{"_class_name", "PNDMScheduler"}, {"beta_start", 0.00085},   {"beta_end", 0.012},
          {"beta_schedule", "scaled_linear"}, {"num_train_timesteps", 1000}, {"steps_offset", 1},
          {"skip_prk_steps", true},           {"set_alpha_to_one", false},   {"clip_sample", false},
          {"trained_betas", nullptr},         {"some_future_field", 3}};
}
std::string message_of(auto&& f) {
  try {
    f();
  } catch (ConfigError const& e) {
    return e.what();
  }
  return "no ConfigError";
}
}  // namespace

TEST_CASE("from_config keeps the fields a class accepts and takes its own defaults for the rest", "[schedulers]") {
  auto const pndm = SchedulerConfig::from_json(sd15());
  CHECK(pndm.kind == SchedulerKind::Pndm);
  CHECK(pndm.skip_prk_steps);
  CHECK(pndm.steps_offset == 1);
  CHECK(pndm.timestep_spacing == TimestepSpacing::Leading);
  CHECK(pndm.beta_schedule == BetaSchedule::ScaledLinear);
  auto const euler = SchedulerConfig::from_json(sd15(), SchedulerKind::EulerDiscrete);
  CHECK(euler.timestep_spacing == TimestepSpacing::Linspace);  // Euler's default, not PNDM's
  CHECK(euler.beta_start == 0.00085);
  auto const ddim = SchedulerConfig::from_json(sd15(), SchedulerKind::Ddim);
  CHECK_FALSE(ddim.set_alpha_to_one);  // carried over
  CHECK_FALSE(ddim.clip_sample);
  auto j = sd15();
  j.erase("set_alpha_to_one");
  CHECK(SchedulerConfig::from_json(j, SchedulerKind::Ddim).set_alpha_to_one);  // DDIM's default is true
  CHECK_FALSE(SchedulerConfig::from_json(j, SchedulerKind::Pndm).set_alpha_to_one);
  j["use_karras_sigmas"] = true;  // not a DDIM field: ignored there
  CHECK_FALSE(SchedulerConfig::from_json(j, SchedulerKind::Ddim).use_karras_sigmas);
  CHECK(SchedulerConfig::from_json(j, SchedulerKind::EulerDiscrete).use_karras_sigmas);
}

TEST_CASE("Bad config values throw ConfigError naming the field", "[schedulers]") {
  auto with = [](char const* field, nlohmann::json value) {
    auto j = sd15();
    j[field] = value;
    return j;
  };
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("prediction_type", "noise")); }),
             Catch::Contains("'prediction_type'") && Catch::Contains("noise"));
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("beta_schedule", "sigmoid")); }),
             Catch::Contains("'beta_schedule'"));
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("steps_offset", "one")); }),
             Catch::Contains("'steps_offset'"));
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("timestep_spacing", "random")); }),
             Catch::Contains("'timestep_spacing'"));
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("solver_order", 5), SchedulerKind::DpmSolverMultistep); }),
             Catch::Contains("'solver_order'"));
  CHECK_THAT(message_of([&] {
               SchedulerConfig::from_json(with("thresholding", true), SchedulerKind::Ddpm);
             }),
             Catch::Contains("'thresholding'"));
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("_class_name", "LMSDiscreteScheduler")); }),
             Catch::Contains("LMSDiscreteScheduler"));
  CHECK_THAT(message_of([&] { SchedulerConfig::from_json(with("prediction_type", "sample"), SchedulerKind::Pndm); }),
             Catch::Contains("'prediction_type'"));
}

TEST_CASE("make_scheduler names, karras flag and errors", "[schedulers]") {
  CHECK(make_scheduler("", sd15())->name() == "PNDMScheduler");
  CHECK(make_scheduler("default", sd15())->name() == "PNDMScheduler");
  CHECK(make_scheduler("ddpm", sd15())->name() == "DDPMScheduler");
  CHECK(make_scheduler("ddim", sd15())->name() == "DDIMScheduler");
  CHECK(make_scheduler("euler", sd15())->name() == "EulerDiscreteScheduler");
  CHECK(make_scheduler("euler_a", sd15())->name() == "EulerAncestralDiscreteScheduler");
  CHECK(make_scheduler("EulerDiscreteScheduler", sd15())->name() == "EulerDiscreteScheduler");
  auto const dpm = make_scheduler("dpmpp_2m_karras", sd15());
  CHECK(dpm->name() == "DPMSolverMultistepScheduler");
  CHECK(dpm->config().use_karras_sigmas);
  CHECK(dpm->config().solver_order == 2);
  CHECK(make_scheduler("euler", sd15(), true)->config().use_karras_sigmas);
  CHECK_FALSE(make_scheduler("dpmpp_2m", sd15())->config().use_karras_sigmas);
  CHECK_THAT(message_of([] { make_scheduler("heun", sd15()); }), Catch::Contains("heun") && Catch::Contains("euler_a"));
  CHECK_THAT(message_of([] { make_scheduler("ddim_karras", sd15()); }), Catch::Contains("Karras"));
  auto j = sd15();
  j.erase("_class_name");
  CHECK_THROWS_AS(make_scheduler("", j), ConfigError);
  CHECK_THROWS_AS(make_scheduler("ddim", sd15())->set_timesteps(1001), ConfigError);
  CHECK_THROWS_AS(make_scheduler("ddim", sd15())->set_timesteps(0), ConfigError);
}

TEST_CASE("Stateful schedulers reset and need noise exactly where diffusers draws it", "[schedulers]") {
  Tensor<float> const x = test::random_tensor<float>(Shape{1, 4, 2, 2}, 1);
  Tensor<float> const eps = test::random_tensor<float>(Shape{1, 4, 2, 2}, 2);
  for (char const* name : {"pndm", "dpmpp_2m", "euler"}) {
    INFO(name);
    auto s = make_scheduler(name, sd15());
    s->set_timesteps(5);
    auto run = [&] {
      Tensor<float> cur = x;
      for (double t : s->timesteps()) cur = s->step(eps, t, s->scale_model_input(cur, t)).prev_sample;
      return cur;
    };
    Tensor<float> const first = run();
    s->reset();
    Tensor<float> const second = run();  // the same result after reset: history and step index are cleared
    CHECK(test::rel_l2(first, second) == 0.0);
  }
  auto ddpm = make_scheduler("ddpm", sd15());
  ddpm->set_timesteps(5);
  CHECK(ddpm->step_uses_noise(1));
  CHECK_FALSE(ddpm->step_uses_noise(0));
  CHECK_THROWS_AS(ddpm->step(eps, ddpm->timesteps()[0], x), ShapeError);  // noise missing
  auto ddim = make_scheduler("ddim", sd15());
  CHECK_FALSE(ddim->step_uses_noise(1));
  CHECK_THROWS_AS(ddim->step(eps, 1, x), ShapeError);  // set_timesteps first
  auto euler = make_scheduler("euler", sd15());
  euler->set_timesteps(5);
  CHECK_THROWS_AS(euler->step(eps, 123.5, x), ConfigError);  // not in the schedule
  // Shape mismatch names the shapes.
  Tensor<float> const wrong = test::random_tensor<float>(Shape{1, 4, 2, 3}, 3);
  CHECK_THROWS_AS(euler->step(wrong, euler->timesteps()[0], x), ShapeError);
}

TEST_CASE("snr follows compute_snr", "[schedulers]") {
  auto const s = make_scheduler("ddpm", sd15());
  float const ac = s->alphas_cumprod()[500];
  CHECK(s->snr(500) == Approx(ac / (1 - ac)).epsilon(1e-6));
  CHECK(s->snr(0) > s->snr(999));
}
