/// @file state_test.cpp
/// @brief Training-state checkpoints (bit-exact round trip, atomicity, pruning) and the progress reporter.
#include <unistd.h>  // getpid

#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <sstream>     // std::ostringstream

#include <catch2/catch.hpp>

#include <sdlora/train.hpp>

#include "support.hpp"

using namespace sdlora;
using namespace sdlora::train;
namespace fs = std::filesystem;

namespace {

/// A fresh scratch directory, removed at the end of the test.
struct ScratchDir {
  fs::path path;
  explicit ScratchDir(std::string const& name)
      : path(fs::temp_directory_path() / ("sdlora_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
};

TrainingState<float> make_state(std::int64_t step) {
  nn::Parameter<float> w(Shape{4, 3}), b(Shape{5});
  w.value = test::random_tensor<float>(Shape{4, 3}, 1 + std::uint32_t(step));
  b.value = test::random_tensor<float>(Shape{5}, 2);
  w.set_trainable(true);
  b.set_trainable(true);
  std::vector<ParamRef<float>> refs = {{"unet.w", &w}, {"unet.b", &b}};
  AdamW<float> opt(refs, AdamWOptions{});
  w.grad = test::random_tensor<float>(Shape{4, 3}, 3);
  b.grad = test::random_tensor<float>(Shape{5}, 4);
  opt.step();
  opt.step();
  TrainingState<float> s;
  s.global_step = step;
  s.epoch = 3;
  s.lr_schedule_step = step;
  s.parameters = capture_parameters(refs);
  s.optimizer = opt.state_dict();
  s.rng["torch_cpu"] = {0xFFFFFFFFFFFFFFFFull, 1, 2, 0x8000000000000001ull};
  s.rng["philox"] = {42, 7};
  s.data_order = {3, 1, 4, 0, 2};
  s.data_position = 2;
  s.settings = {{"learning_rate", 1e-4}, {"rank", 4}, {"optimizer", "adamw"}};
  return s;
}

}  // namespace

TEST_CASE("A training state saves and loads bit-exactly", "[train][state]") {
  ScratchDir dir("state_roundtrip");
  auto const s = make_state(40);
  std::string const path = save_checkpoint(dir.path.string(), s);
  CHECK(path == checkpoint_path(dir.path.string(), 40));
  CHECK(fs::exists(fs::path(path) / "state.json"));
  CHECK_FALSE(fs::exists(path + ".tmp"));
  auto const loaded = load_latest<float>(dir.path.string());
  REQUIRE(loaded.has_value());
  CHECK(loaded->global_step == 40);
  CHECK(loaded->epoch == 3);
  CHECK(loaded->lr_schedule_step == 40);
  CHECK(loaded->rng == s.rng);
  CHECK(loaded->data_order == s.data_order);
  CHECK(loaded->data_position == 2);
  CHECK(loaded->settings == s.settings);
  REQUIRE(loaded->parameters.size() == 2);
  for (auto const& [k, t] : s.parameters) CHECK(test::same_bits(loaded->parameters.at(k), t));
  CHECK(loaded->optimizer.type == "adamw");
  CHECK(loaded->optimizer.scalars == s.optimizer.scalars);
  REQUIRE(loaded->optimizer.tensors.size() == 4);
  for (auto const& [k, t] : s.optimizer.tensors) CHECK(test::same_bits(loaded->optimizer.tensors.at(k), t));

  // Restoring into live parameters checks names and shapes.
  nn::Parameter<float> w(Shape{4, 3}), b(Shape{5}), wrong(Shape{2});
  restore_parameters<float>({{"unet.w", &w}, {"unet.b", &b}}, loaded->parameters);
  CHECK(test::same_bits(w.value, s.parameters.at("unet.w")));
  CHECK_THROWS_WITH(restore_parameters<float>({{"unet.b", &wrong}}, loaded->parameters), Catch::Contains("(5)"));
  CHECK_THROWS_WITH(restore_parameters<float>({{"unet.q", &wrong}}, loaded->parameters), Catch::Contains("unet.q"));
}

TEST_CASE("load_latest ignores half-written and foreign checkpoints", "[train][state]") {
  ScratchDir dir("state_latest");
  CHECK_FALSE(load_latest<float>(dir.path.string()).has_value());
  save_checkpoint(dir.path.string(), make_state(10));
  save_checkpoint(dir.path.string(), make_state(20));
  // A crash while writing step 30: the .tmp directory holds a complete-looking copy, but it was never renamed.
  fs::copy(checkpoint_path(dir.path.string(), 20), checkpoint_path(dir.path.string(), 30) + ".tmp");
  // Another tool's checkpoint-50 (e.g. accelerate's) has no sdlora state.json.
  fs::create_directories(dir.path / "checkpoint-50");
  std::ofstream(dir.path / "checkpoint-50" / "state.json") << "{\"format\": \"other\"}";
  fs::create_directories(dir.path / "checkpoint-x7");
  auto const latest = latest_checkpoint(dir.path.string());
  REQUIRE(latest.has_value());
  CHECK(fs::path(*latest).filename() == "checkpoint-20");
  CHECK(load_latest<float>(dir.path.string())->global_step == 20);
  CHECK_THROWS_AS(load_checkpoint<float>((dir.path / "checkpoint-50").string()), FormatError);

  // Saving the same step again replaces it.
  auto s = make_state(20);
  s.epoch = 9;
  save_checkpoint(dir.path.string(), s);
  CHECK(load_latest<float>(dir.path.string())->epoch == 9);
  CHECK_FALSE(fs::exists(checkpoint_path(dir.path.string(), 20) + ".old"));
}

TEST_CASE("keep_last prunes old checkpoints and stale temporaries", "[train][state]") {
  ScratchDir dir("state_keep");
  for (std::int64_t step : {5, 10, 15, 20}) save_checkpoint(dir.path.string(), make_state(step));
  fs::create_directories(checkpoint_path(dir.path.string(), 12) + ".tmp");
  auto const removed = keep_last(dir.path.string(), 2);
  CHECK(removed.size() == 3);  // checkpoint-5, checkpoint-10, checkpoint-12.tmp
  CHECK_FALSE(fs::exists(checkpoint_path(dir.path.string(), 5)));
  CHECK_FALSE(fs::exists(checkpoint_path(dir.path.string(), 10)));
  CHECK_FALSE(fs::exists(checkpoint_path(dir.path.string(), 12) + ".tmp"));
  CHECK(fs::exists(checkpoint_path(dir.path.string(), 15)));
  CHECK(fs::exists(checkpoint_path(dir.path.string(), 20)));
  CHECK(keep_last(dir.path.string(), 2).empty());
}

TEST_CASE("Progress computes it/s and ETA from the clock and prints plain lines every N steps", "[train][progress]") {
  double now = 100.0;
  std::ostringstream out;
  {
    Progress p(ProgressOptions{"train", 100, 0, 10, 10, false}, out, [&] { return now; });
    now = 105.0;
    p.update(5, {{"loss", 0.12345}});  // not a multiple of 10: no line
    CHECK(out.str().empty());
    now = 110.0;
    p.update(20, {{"loss", 0.12345}, {"lr", 1e-4}});
    CHECK(p.rate(20) == Approx(2.0));
    CHECK(*p.eta_seconds(20) == Approx(40.0));
    CHECK(out.str() == "train 20/100 20.0% | loss 0.1235 | lr 1.00e-04 | 2.00 it/s | ETA 00:40\n");
    now = 400.0;
    p.update(30);
    CHECK(p.rate(30) == Approx(0.1));
    CHECK(out.str().find("10.00 s/it | ETA 11:40") != std::string::npos);
  }
  CHECK(Progress::format_duration(3725) == "1:02:05");
  CHECK(Progress::format_duration(59.6) == "01:00");
}

TEST_CASE("Progress on a terminal redraws one line with a bar", "[train][progress]") {
  double now = 0;
  std::ostringstream out;
  {
    // A resumed run starting at step 50: the rate counts only the new steps.
    Progress p(ProgressOptions{"sample", 100, 50, 10, 10, true}, out, [&] { return now; });
    now = 10;
    p.update(75);
    CHECK(p.rate(75) == Approx(2.5));
    CHECK(out.str() == "\rsample 75/100 [#######   ] 75.0% | 2.50 it/s | ETA 00:10\x1b[K");
  }
  CHECK(out.str().back() == '\n');  // finish() ends the line
}
