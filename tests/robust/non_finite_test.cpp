/// @file non_finite_test.cpp
/// @brief A NaN planted in one layer's weights, or in one training image, during a run: with OnNonFinite::Stop the
/// run stops at that step naming the module, writes no LoRA and keeps the last checkpoint loadable; with
/// OnNonFinite::Skip the step's update is dropped, counted in loss.csv, and the LoRA is finite.
#include <catch2/catch.hpp>

#include <cmath>       // std::isnan
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <limits>      // std::numeric_limits
#include <sstream>     // std::ostringstream
#include <string>      // std::string

#include <sdlora/all.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {

float const kNaN = std::numeric_limits<float>::quiet_NaN();

// Four 16x16 images (flat colours, a square whose place depends on the index); `poisoned` gets a NaN pixel.
class Squares : public train::ExampleSource {
 public:
  explicit Squares(std::int64_t poisoned = -1) : poisoned_(poisoned) {}
  std::int64_t size() const override { return 4; }
  bool random_augmentation() const override { return false; }
  train::TrainExample get(std::int64_t index, std::uint64_t) override {
    train::TrainExample ex{Tensor<float>(Shape{3, 16, 16}), "a square, flat style", {}};
    for (Index c = 0; c < 3; ++c)
      for (Index y = 0; y < 16; ++y)
        for (Index x = 0; x < 16; ++x) {
          bool const inside = y / 8 == index / 2 && x / 8 == index % 2;
          ex.image.at({c, y, x}) = inside ? 0.9f : (c == index % 3 ? 0.2f : -0.8f);
        }
    if (index == poisoned_) ex.image.at({1, 5, 5}) = kNaN;
    return ex;
  }

 private:
  std::int64_t poisoned_;
};

train::RunOptions options(std::string const& dir, std::int64_t steps) {
  train::RunOptions o;
  o.output_dir = dir;
  o.max_train_steps = steps;
  o.trainer.optimizer.lr = 1e-3;
  o.trainer.seed = 11;
  o.settings["resolution"] = 16;
  o.log_every = 1000;
  return o;
}

/// Sets element 0 of the parameter named `name` to NaN; returns whether it exists.
bool plant_nan(models::StableDiffusion<float>& sd, std::string const& name) {
  bool found = false;
  nn::for_each_parameter(
      sd.unet,
      [&](std::string const& n, auto& p) {
        if (n == name) {
          p.value(0) = kNaN;
          found = true;
        }
      },
      "unet");
  return found;
}

/// The first UNet leaf whose name ends with `suffix` (a frozen base layer of the tiny model).
std::string first_leaf(models::StableDiffusion<float>& sd, std::string const& suffix) {
  std::string found;
  sd.unet.visit("unet", [&](std::string const& n, auto&) {
    if (found.empty() && n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
      found = n;
  });
  return found;
}

int skipped_rows_in_file(std::string const& csv) {
  std::ifstream in(csv);
  std::string line;
  int n = 0;
  std::getline(in, line);
  while (std::getline(in, line)) n += line.size() >= 2 && line.compare(line.size() - 2, 2, ",1") == 0;
  return n;
}
}  // namespace

TEST_CASE("A NaN planted in one layer's weights stops the run at that step, naming the layer", "[robust][e2e]") {
  Context<Cpu> ctx;
  Squares data;
  std::ostringstream log;
  fs::remove_all("nan_weights");
  {
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    auto o = options("nan_weights", 2);
    o.checkpointing_steps = 2;
    train::run_training(ctx, sd, data, o, nullptr, log);
  }
  fs::remove("nan_weights/sdlora_lora.safetensors");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  std::string const layer = first_leaf(sd, "attn1.to_k");
  REQUIRE_FALSE(layer.empty());
  REQUIRE(plant_nan(sd, layer + ".weight"));
  auto o = options("nan_weights", 4);
  o.checkpointing_steps = 1;
  o.resume_from_checkpoint = "latest";
  std::string message;
  try {
    train::run_training(ctx, sd, data, o, nullptr, log);
  } catch (train::NonFiniteError const& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(message.find("step 3:") != std::string::npos);  // the first step after the resumed checkpoint-2
  CHECK(message.find("the output of " + layer + ";") != std::string::npos);
  CHECK(message.find("parameter " + layer + ".weight holds NaN") != std::string::npos);
  CHECK(message.find('\n') == std::string::npos);
  CHECK_FALSE(fs::exists("nan_weights/sdlora_lora.safetensors"));
  CHECK_FALSE(fs::exists("nan_weights/checkpoint-3"));
  auto const state = train::load_checkpoint<float>(*train::latest_checkpoint("nan_weights"));
  CHECK(state.global_step == 2);
  for (auto const& [name, t] : state.parameters) REQUIRE(train::all_finite(t));
}

TEST_CASE("A NaN training image: stop names the batch, skip drops that step only", "[robust][e2e]") {
  Context<Cpu> ctx;
  std::ostringstream log;
  Squares data(2);
  SECTION("stop") {
    fs::remove_all("nan_image_stop");
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    std::string message;
    try {
      train::run_training(ctx, sd, data, options("nan_image_stop", 4), nullptr, log);
    } catch (train::NonFiniteError const& e) {
      message = e.what();
    }
    INFO(message);
    CHECK(message.find("the latents of the batch") != std::string::npos);
    CHECK_FALSE(fs::exists("nan_image_stop/sdlora_lora.safetensors"));
  }
  SECTION("skip") {
    fs::remove_all("nan_image_skip");
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    auto o = options("nan_image_skip", 4);  // one epoch of batch 1: the poisoned image comes once
    o.on_non_finite = train::OnNonFinite::Skip;
    auto const r = train::run_training(ctx, sd, data, o, nullptr, log);
    CHECK(r.steps == 4);
    CHECK(r.skipped_steps == 1);
    CHECK(skipped_rows_in_file("nan_image_skip/loss.csv") == 1);
    io::SafetensorsFile f("nan_image_skip/sdlora_lora.safetensors");
    for (auto const& key : f.keys()) REQUIRE(train::all_finite(f.load<float>(key)));
    // The three good steps did train: some LoRA up factor moved away from its zero start.
    bool moved = false;
    for (auto const& key : f.keys())
      if (key.find("lora_up") != std::string::npos) {
        auto const up = f.load<float>(key);  // named: a range-for over load(key).span() would read a freed tensor
        for (float v : up.span()) moved = moved || v != 0.0f;
      }
    CHECK(moved);
  }
}

TEST_CASE("first_non_finite_parameter finds a NaN in a weight stored in 16 bits", "[robust][unit]") {
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  std::string const layer = first_leaf(sd, "attn2.to_v");
  REQUIRE_FALSE(layer.empty());
  CHECK_FALSE(train::first_non_finite_parameter(sd.unet, "unet").has_value());
  REQUIRE(plant_nan(sd, layer + ".weight"));
  nn::for_each_parameter(
      sd.unet,
      [&](std::string const& n, auto& p) {
        if (n == layer + ".weight") p.set_storage(DType::F16);  // the float tensor is freed: only the bits hold NaN
      },
      "unet");
  auto const found = train::first_non_finite_parameter(sd.unet, "unet");
  REQUIRE(found.has_value());
  CHECK(*found == layer + ".weight");
}
