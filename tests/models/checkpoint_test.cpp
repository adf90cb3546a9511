#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <sdlora/models/checkpoint.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;

namespace {
// Runs the three networks on the fixture inputs and compares with the reference outputs (fp32, rel L2 <= 1e-4).
void check_outputs(models::StableDiffusion<float>& sd, std::string const& variant) {
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("models/tiny-" + variant + "-outputs.safetensors"));
  auto text = sd.text_encoder.forward(ctx, ref.load<std::int32_t>("text.input_ids"));
  CHECK(test::rel_l2(text.last_hidden_state, ref.load<float>("text.last_hidden_state")) < 1e-4);
  auto y = sd.unet.forward(ctx, ref.load<float>("unet.sample"), ref.load<float>("unet.timesteps"),
                           ref.load<float>("unet.encoder_hidden_states"));
  CHECK(test::rel_l2(y, ref.load<float>("unet.out")) < 1e-4);
  auto img = sd.vae.decode(ctx, ref.load<float>("vae.latents"));
  CHECK(test::rel_l2(img, ref.load<float>("vae.decoded")) < 1e-4);
}
}  // namespace

TEST_CASE("A diffusers folder loads and computes what diffusers computes", "[models][checkpoint][conformance]") {
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  CHECK(sd.base_model == "sd1");
  CHECK(sd.prediction_type() == "epsilon");
  CHECK(sd.scheduler_config.at("_class_name") == "PNDMScheduler");
  check_outputs(sd, "sd1");
}

TEST_CASE("The SD 1.x single file gives the same networks as the folder", "[models][checkpoint][conformance]") {
  models::LoadOptions opt;
  opt.config_dir = test::fixture("models/tiny-sd1");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1.safetensors"), opt);
  CHECK(sd.base_model == "sd1");
  CHECK(sd.ignored_keys == 2);  // model_ema.decay and position_ids
  check_outputs(sd, "sd1");
}

TEST_CASE("The SD 2.x single file (OpenCLIP text layout, linear projections) loads", "[models][checkpoint][conformance]") {
  models::LoadOptions opt;
  opt.config_dir = test::fixture("models/tiny-sd2");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd2.safetensors"), opt);
  CHECK(sd.base_model == "sd2");
  CHECK(sd.prediction_type() == "v_prediction");
  check_outputs(sd, "sd2");
}

TEST_CASE("Loading errors name the file and the keys", "[models][checkpoint]") {
  CHECK_THROWS_AS(models::load_stable_diffusion<float>("no/such/model"), IoError);
  std::string const ckpt = (std::filesystem::temp_directory_path() / "sdlora_model.ckpt").string();
  std::ofstream(ckpt) << "pickle";
  CHECK_THROWS_WITH(models::load_stable_diffusion<float>(ckpt), Catch::Contains("pickle") && Catch::Contains(ckpt));
  // A single file without config folder assumes SD 1.5's full-size architecture: every shape mismatches.
  CHECK_THROWS_WITH(models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1.safetensors")),
                    Catch::Contains("shape mismatches") && Catch::Contains("conv_in.weight"));
  // A LoRA or other non-checkpoint file is recognised as such.
  CHECK_THROWS_WITH(models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1-outputs.safetensors")),
                    Catch::Contains("model.diffusion_model"));
}
