/// @file checkpoint_test.cpp
/// @brief Resuming from a corrupt or foreign checkpoint: a state.json whose data position, data order or generator
/// state does not fit, or a cut parameters file, is a FormatError naming the checkpoint, never an out-of-bounds read.
#include <catch2/catch.hpp>

#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream, std::ofstream
#include <sstream>     // std::ostringstream
#include <string>      // std::string

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/all.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {
// Four 16x16 flat images.
class Flat : public train::ExampleSource {
 public:
  std::int64_t size() const override { return 4; }
  bool random_augmentation() const override { return false; }
  train::TrainExample get(std::int64_t index, std::uint64_t) override {
    train::TrainExample ex{Tensor<float>(Shape{3, 16, 16}), "a flat colour", {}};
    ex.image.fill(0.2f * float(index) - 0.3f);
    return ex;
  }
};

train::RunOptions checkpoint_run_options(std::string const& dir, std::int64_t steps) {
  train::RunOptions o;
  o.output_dir = dir;
  o.max_train_steps = steps;
  o.checkpointing_steps = 2;
  o.trainer.seed = 5;
  o.settings["resolution"] = 16;
  o.log_every = 1000;
  return o;
}

/// Resumes `dir` to step 3 and returns the FormatError's message ("" if none was thrown).
std::string resume(std::string const& dir) {
  Context<Cpu> ctx;
  Flat data;
  std::ostringstream log;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto o = checkpoint_run_options(dir, 3);
  o.resume_from_checkpoint = "latest";
  try {
    train::run_training(ctx, sd, data, o, nullptr, log);
  } catch (FormatError const& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("A corrupt checkpoint is a FormatError naming it, not a crash", "[robust][e2e]") {
  std::string const dir = "corrupt_checkpoint";
  fs::remove_all(dir);
  {
    Context<Cpu> ctx;
    Flat data;
    std::ostringstream log;
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    train::run_training(ctx, sd, data, checkpoint_run_options(dir, 2), nullptr, log);
  }
  fs::path const state = fs::path(dir) / "checkpoint-2" / "state.json";
  std::string const good = [&] {
    std::ifstream in(state);
    std::ostringstream os;
    os << in.rdbuf();
    return os.str();
  }();
  auto with = [&](auto&& edit) {
    nlohmann::json j = nlohmann::json::parse(good);
    edit(j);
    std::ofstream(state, std::ios::trunc) << j.dump();
    return resume(dir);
  };
  std::string const where = "checkpoint-2";
  CHECK(with([](nlohmann::json& j) { j["data_position"] = -5; }).find(where) != std::string::npos);
  CHECK(with([](nlohmann::json& j) { j["data_position"] = 99; }).find(where) != std::string::npos);
  CHECK(with([](nlohmann::json& j) { j["data_order"][0] = 1000; }).find(where) != std::string::npos);
  CHECK(with([](nlohmann::json& j) { j["rng"]["noise_bytes"][0] = 100000; }).find(where) != std::string::npos);
  CHECK(with([](nlohmann::json& j) { j["rng"].erase("noise"); }).find(where) != std::string::npos);
  CHECK(with([](nlohmann::json&) {}).empty());  // the untouched state resumes
  fs::remove_all(fs::path(dir) / "checkpoint-3");
  fs::resize_file(fs::path(dir) / "checkpoint-2" / "parameters.safetensors", 100);  // cut by a full disk
  CHECK(resume(dir).find("parameters.safetensors") != std::string::npos);
}
