/// @file trainer_test.cpp
/// @brief The backend-generic trainer on Cuda: `Trainer<float, Cuda>` is instantiated whole (every member compiles in
/// the CUDA build), and one training step of each diffusers recipe the CPU suite checks (LoRA, min-SNR LoRA,
/// DreamBooth with prior preservation and a text-encoder LoRA, Textual Inversion, SDXL DreamBooth-LoRA) is run on the
/// GPU against the same diffusers fixtures (tests/fixtures/train/one_step_*.safetensors). Compile-verified only so
/// far: no GPU was available when it was written (the binary exits 77 without one).
///
/// A whole run (train::run_training on procedural sample images, 4 LoRA steps, AdamW) on the GPU against the same run
/// on the CPU, and a GPU run resumed from its step-2 checkpoint against the straight GPU run.
///
/// Tolerances: those of the CPU's one_step_test (the fixtures are diffusers' fp32 numbers, not the CPU's): loss and
/// gradients relative L2 <= 1e-4 (a whole fp32 forward and backward), parameters after the clipped AdamW step
/// <= 1e-5. The 4-step run: LoRA factors relative L2 <= 1e-4 against the CPU's (four steps of the one-step bounds);
/// resumed on the GPU: bit-identical (the same kernels in the same order from the same saved state).
#include <catch2/catch.hpp>

#include <filesystem>  // std::filesystem
#include <sstream>     // std::ostringstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/cuda.hpp>
#include <sdlora/pipeline.hpp>
#include <sdlora/train/run.hpp>
#include <sdlora/train/sample_data.hpp>
#include <sdlora/train/sources.hpp>
#include <sdlora/train/trainer.hpp>

#include "support.hpp"           // fixture, rel_l2
#include "trainer/recipes.hpp"  // fixture_batch, fixture_name, small_run, textual_inversion_recipe

using namespace sdlora;

template class sdlora::train::Trainer<float, sdlora::Cuda>;  // every member, compiled in CI's CUDA build

namespace {

using test::fixture_batch;
using test::fixture_name;

/// One step on the GPU from the fixture's starting parameters: loss, gradients, parameters after the update.
void check_cuda_step(std::string const& model, std::string const& name, train::TrainerOptions o) {
  Context<Cuda> gpu;
  auto host = models::load_stable_diffusion<float>(test::fixture("models/" + model));
  auto sd = pipeline::on_backend<Cuda>(host);
  io::SafetensorsFile ref(test::fixture("train/one_step_" + name + ".safetensors"));
  train::Trainer<float, Cuda> trainer(gpu, sd, o);
  auto params = trainer.parameters();
  REQUIRE_FALSE(params.empty());
  if (o.method == train::Method::TextualInversion) {
    CHECK(test::rel_l2(trainer.learned_embeddings(), ref.load<float>("before.row").reshaped(Shape{1, 8})) == 0.0);
  } else {
    for (auto const& p : params) {
      INFO(p.name);
      p.param->value = to_backend<Cuda>(ref.load<float>("before." + fixture_name(p.name), p.param->shape()));
    }
  }
  double const loss = trainer.forward_backward(fixture_batch(ref));
  CHECK(loss == Approx(double(ref.load<float>("loss")(0))).epsilon(1e-4));
  if (o.method != train::Method::TextualInversion) {
    for (auto const& p : params) {
      INFO(p.name);
      CHECK(test::rel_l2(to_cpu<float, Cuda>(p.param->grad.view()), ref.load<float>("grad." + fixture_name(p.name))) <
            1e-4);
    }
  }
  trainer.optimizer_step();
  if (o.method == train::Method::TextualInversion) {
    CHECK(test::rel_l2(trainer.learned_embeddings(), ref.load<float>("after.row").reshaped(Shape{1, 8})) < 1e-5);
  } else {
    for (auto const& p : params) {
      INFO(p.name);
      CHECK(test::rel_l2(to_cpu<float, Cuda>(p.param->value.view()), ref.load<float>("after." + fixture_name(p.name))) <
            1e-5);
    }
  }
}

train::TrainerOptions recipe() {
  train::TrainerOptions o;
  o.rank = 4;
  o.alpha = 4;
  o.optimizer.lr = 1e-4;
  o.optimizer.weight_decay = 1e-2;
  return o;
}

}  // namespace

TEST_CASE("cuda training steps match diffusers' recipes as the CPU's do", "[cuda][train]") {
  SECTION("LoRA") { check_cuda_step("tiny-sd1", "lora", recipe()); }
  SECTION("min-SNR LoRA") {
    auto o = recipe();
    o.snr_gamma = 5.0;
    check_cuda_step("tiny-sd1", "lora_snr", o);
  }
  SECTION("DreamBooth with prior preservation and a text-encoder LoRA") {
    auto o = recipe();
    o.method = train::Method::DreamBooth;
    o.with_prior_preservation = true;
    o.train_text_encoder = true;
    check_cuda_step("tiny-sd1", "dreambooth_prior", o);
  }
  SECTION("Textual Inversion") {
    check_cuda_step("tiny-sd1", "textual_inversion", test::textual_inversion_recipe());
  }
  SECTION("SDXL DreamBooth-LoRA") {
    auto o = recipe();
    o.method = train::Method::DreamBooth;
    o.with_prior_preservation = true;
    o.snr_gamma = 5.0;
    o.train_text_encoder = true;
    o.text_encoder_lr = 5e-5;
    check_cuda_step("tiny-sdxl", "sdxl_dreambooth", o);
  }
}

TEST_CASE("cuda training runs end where the CPU's do and resume bit-exactly on the GPU", "[cuda][train]") {
  namespace fs = std::filesystem;
  fs::path const dir = fs::temp_directory_path() / "sdlora_cuda_run";
  fs::remove_all(dir);
  train::SampleDataOptions so;
  so.images = 4;
  so.image_size = 16;
  so.scribbles_per_class = 1;
  auto const files = train::write_sample_data((dir / "samples").string(), so);
  train::DatasetOptions dso;
  dso.path = files.image_dir;
  dso.resolution = 16;
  train::DatasetSource data(train::open_dataset(dso));
  auto options = [&](std::string const& name, std::int64_t steps) {
    return test::small_run((dir / name).string(), steps);
  };
  std::ostringstream log;
  Context<Cpu> cpu;
  Context<Cuda> gpu;
  auto host = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto on_cpu = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto const ref = train::run_training(cpu, on_cpu, data, options("cpu", 4), nullptr, log);
  auto sd = pipeline::on_backend<Cuda>(host);
  auto const straight = train::run_training(gpu, sd, data, options("cuda", 4), nullptr, log);
  io::SafetensorsFile a(ref.files.at(0)), b(straight.files.at(0));
  REQUIRE(a.keys() == b.keys());
  for (auto const& key : a.keys()) {
    INFO(key);
    CHECK(test::rel_l2(b.load<float>(key), a.load<float>(key)) < 1e-4);
  }
  {
    auto first = pipeline::on_backend<Cuda>(host);
    auto o = options("cuda_resumed", 2);
    o.checkpointing_steps = 2;
    train::run_training(gpu, first, data, o, nullptr, log);
  }
  auto second = pipeline::on_backend<Cuda>(host);
  auto o = options("cuda_resumed", 4);
  o.resume_from_checkpoint = "latest";
  auto const resumed = train::run_training(gpu, second, data, o, nullptr, log);
  CHECK(resumed.resumed_from == 2);
  io::SafetensorsFile c(resumed.files.at(0));
  for (auto const& key : b.keys()) {
    INFO(key);
    CHECK(test::rel_l2(c.load<float>(key), b.load<float>(key)) == 0.0);
  }
}
