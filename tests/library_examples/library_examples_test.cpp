/// @file library_examples_test.cpp
/// @brief The library examples (examples/library, docs/tutorials/library.md) run on the tiny SD1 model: the
/// hand-written denoising loop gives txt2img's pixels with the same two LoRAs, the custom training loop resumes from
/// its checkpoint to the LoRA of an uninterrupted run, and the event-loop embedding cancels at the step it asks for.
#include <catch2/catch.hpp>

#include <algorithm>   // std::max
#include <cmath>       // std::abs, std::isfinite
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <string>      // std::string, std::getline

#include <sdlora/backend/cpu.hpp>
#include <sdlora/instances.hpp>          // txt2img<float> and the rest from sdlora::instances (its link test)
#include <sdlora/io/image.hpp>           // io::load_image, to_uint8, from_uint8
#include <sdlora/io/safetensors.hpp>     // io::SafetensorsFile
#include <sdlora/models/checkpoint.hpp>  // models::load_stable_diffusion
#include <sdlora/pipeline/lora.hpp>      // pipeline::apply_loras
#include <sdlora/pipeline/txt2img.hpp>   // pipeline::txt2img

#include "examples/program.hpp"
#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {
fs::path examples_scratch() {
  static fs::path const dir = test::sample_data_dir("library_examples_test");
  return dir;
}
std::string q(fs::path const& p) { return "'" + p.string() + "'"; }
std::string tiny_model_path() { return q(test::fixture("models/tiny-sd1")); }

/// The 8-bit pixels of txt2img's image for the denoise example's settings, back in [-1, 1].
Tensor<float, Cpu> library_image(std::vector<pipeline::LoraSpec> const& loras) {
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  pipeline::apply_loras(sd, loras);
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.sampler = "euler";
  o.seed = 42;
  o.guidance_scale = 7.5;
  o.width = o.height = 16;
  o.steps = 4;
  auto out = pipeline::txt2img(ctx, sd, o);
  return io::from_uint8(io::to_uint8(out.images.view().reshaped(Shape{3, 16, 16})).view());
}

float max_abs_diff(Tensor<float, Cpu> const& a, Tensor<float, Cpu> const& b) {
  REQUIRE(a.shape() == b.shape());
  float m = 0;
  for (Index i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a(i) - b(i)));
  return m;
}

std::vector<std::string> lines(fs::path const& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}
}  // namespace

TEST_CASE("custom_denoise: the hand-written loop with two LoRAs gives txt2img's pixels", "[examples][e2e]") {
  // Tolerance: one 8-bit level (2/255 in [-1, 1]). The example runs the UNet on the two CFG halves separately where
  // txt2img batches them, so the floats may differ in the last bits and a pixel may round to the neighbouring level.
  fs::path const png = examples_scratch() / "denoise.png";
  std::string const a = test::fixture("pipeline/lora_kohya.safetensors");
  std::string const b = test::fixture("pipeline/lora_peft.safetensors");
  auto r = test::run_program(SDLORA_EXAMPLE_DENOISE_EXE,
                             tiny_model_path() + " " + q(a) + " " + q(b) + " " + q(png) + " 16 4", examples_scratch());
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  auto const got = io::load_image(png.string());
  REQUIRE(got.shape() == Shape{3, 16, 16});
  CHECK(max_abs_diff(got, library_image({{a, 0.8}, {b, 0.4}})) <= 2.0f / 255 + 1e-6f);
  // Both LoRAs must matter: without them the image is more than four levels away somewhere, and without the second
  // (scale 0.4) more than one level.
  CHECK(max_abs_diff(got, library_image({})) > 8.0f / 255);
  CHECK(max_abs_diff(got, library_image({{a, 0.8}})) > 2.0f / 255 + 1e-6f);
}

TEST_CASE("custom_training: a run stopped at step 2 resumes from its checkpoint to the uninterrupted run's LoRA",
          "[examples][e2e]") {
  fs::path const data = examples_scratch() / "samples" / "images";
  fs::path const resumed = examples_scratch() / "resumed", straight = examples_scratch() / "straight";
  auto run = [&](fs::path const& out, std::string const& steps) {
    auto r =
        test::run_program(SDLORA_EXAMPLE_TRAIN_EXE,
                          tiny_model_path() + " " + q(data) + " " + q(out) + " " + steps + " 16", examples_scratch());
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    return r;
  };
  run(resumed, "3 2");
  CHECK(fs::exists(resumed / "checkpoint-2" / "state.json"));
  CHECK(lines(resumed / "loss.csv").size() == 2);
  auto const second = run(resumed, "3 3");
  CHECK_THAT(second.out, Catch::Contains("at step 2"));
  CHECK(fs::exists(resumed / "checkpoint-3" / "state.json"));
  run(straight, "3 3");

  // Exact: the same arithmetic in the same order, so a complete checkpoint leaves no trace in the result.
  auto const losses = lines(resumed / "loss.csv");
  CHECK(losses == lines(straight / "loss.csv"));
  REQUIRE(losses.size() == 3);
  for (auto const& l : losses) CHECK(std::isfinite(std::stod(l.substr(l.find(',') + 1))));
  io::SafetensorsFile const x((resumed / "lora.safetensors").string()), y((straight / "lora.safetensors").string());
  REQUIRE(!x.keys().empty());
  CHECK(x.keys() == y.keys());
  bool trained = false;  // LoRA up matrices start at zero: a nonzero one shows the optimizer stepped
  for (auto const& key : x.keys()) {
    auto const u = x.load<float>(key), v = y.load<float>(key);
    CHECK(max_abs_diff(u, v) == 0.0f);
    if (key.find("lora_up") != std::string::npos)
      for (float e : u.span()) trained = trained || e != 0.0f;
  }
  CHECK(trained);
}

TEST_CASE("cancel_in_event_loop: the main loop cancels after K steps; the run stops there and writes nothing",
          "[examples][e2e]") {
  fs::path const png = examples_scratch() / "cancel.png";
  fs::remove(png);
  auto r =
      test::run_program(SDLORA_EXAMPLE_CANCEL_EXE, tiny_model_path() + " " + q(png) + " 2 16 4", examples_scratch());
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("step 2 of 4") && !Catch::Contains("step 3 of 4") &&
                        Catch::Contains("cancelled at step 2 of 4"));
  CHECK(!fs::exists(png));
  r = test::run_program(SDLORA_EXAMPLE_CANCEL_EXE, tiny_model_path() + " " + q(png) + " 0 16 4",
                        examples_scratch());  // never cancelled
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("step 4 of 4") && Catch::Contains("wrote"));
  CHECK(io::load_image(png.string()).shape() == Shape{3, 16, 16});
}
