/// @file recipes.hpp
/// @brief What the training tests share, on the CPU and on CUDA: the micro-batch of a diffusers one-step fixture
/// (tests/fixtures/train/one_step_*.safetensors), its parameter names, and the options of the small runs.
#pragma once

#include <cstdint>  // std::int32_t, std::int64_t
#include <string>   // std::string

#include <sdlora/io/safetensors.hpp>  // io::SafetensorsFile
#include <sdlora/train/run.hpp>       // train::RunOptions
#include <sdlora/train/trainer.hpp>   // train::MicroBatch

namespace sdlora::test {

/// A parameter's name as the fixture stores it (torch's named_parameters(); transformers 5 drops "text_model.").
inline std::string fixture_name(std::string name) {
  auto const at = name.find("text_model.");
  if (at != std::string::npos) name.erase(at, 11);
  return name;
}

/// The fixture's micro-batch: latents, noise, ids, timesteps, and SDXL's second ids and time ids when present.
inline train::MicroBatch fixture_batch(io::SafetensorsFile const& ref) {
  train::MicroBatch b;
  b.latents = ref.load<float>("latents");
  b.noise = ref.load<float>("noise");
  b.input_ids = ref.load<std::int32_t>("input_ids");
  auto t = ref.load<std::int64_t>("timesteps");
  b.timesteps.assign(t.span().begin(), t.span().end());
  if (ref.contains("input_ids_2")) b.input_ids_2 = ref.load<std::int32_t>("input_ids_2");
  if (ref.contains("time_ids")) b.time_ids = ref.load<float>("time_ids");
  return b;
}

/// The options of the Textual Inversion fixture (one_step_textual_inversion.safetensors): textual_inversion.py's
/// recipe with token "<erica>" initialised from "toy", AdamW at 5e-4 with weight decay 1e-2, no clipping.
inline train::TrainerOptions textual_inversion_recipe() {
  train::TrainerOptions o;
  o.method = train::Method::TextualInversion;
  o.placeholder_token = "<erica>";
  o.initializer_token = "toy";
  o.optimizer.lr = 5e-4;
  o.optimizer.weight_decay = 1e-2;
  o.max_grad_norm = 0;  // textual_inversion.py does not clip
  return o;
}

/// A short run at 16 px: batch 2, AdamW at 1e-3, seed 7, quiet progress.
inline train::RunOptions small_run(std::string const& dir, std::int64_t steps) {
  train::RunOptions o;
  o.output_dir = dir;
  o.max_train_steps = steps;
  o.train_batch_size = 2;
  o.trainer.optimizer.lr = 1e-3;
  o.trainer.seed = 7;
  o.settings["resolution"] = 16;
  o.log_every = 1000;
  return o;
}

}  // namespace sdlora::test
