/// @file kill_test.cpp
/// @brief sdlora-train killed with SIGKILL at random moments (during steps, checkpoint writes, the final writes) and
/// resumed with --resume_from_checkpoint latest must end with a LoRA file and a loss.csv byte-identical to an
/// uninterrupted run's. SDLORA_KILL_TRIALS sets the number of trials (default 5), SDLORA_KILL_SEED the random seed
/// (default: random, printed).
#include <catch2/catch.hpp>

#include <signal.h>  // SIGKILL

#include <algorithm>   // std::max
#include <chrono>      // std::chrono
#include <cstdlib>     // std::getenv, std::stoi
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <iostream>    // std::cout
#include <random>      // std::mt19937_64, std::random_device
#include <string>      // std::string
#include <vector>      // std::vector


#include "examples/program.hpp"
#include "robust/spawn.hpp"
#include "support.hpp"

using namespace sdlora;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

fs::path kill_scratch() {
  static fs::path const dir = test::sample_data_dir("sdlora_robust_kill");
  return dir;
}

/// A run of 8 steps with a checkpoint after every step (most kills land near a checkpoint write) keeping the last
/// two; every invocation, the first included, resumes from the latest checkpoint if there is one.
std::vector<std::string> args(fs::path const& out_dir) {
  return {SDLORA_TRAIN_EXE,
          "--pretrained-model",
          test::fixture("models/tiny-sd1"),
          "--train-data-dir",
          (kill_scratch() / "samples" / "images").string(),
          "--resolution",
          "16",
          "--output-dir",
          out_dir.string(),
          "--threads",
          "1",
          "--seed",
          "5",
          "--train-batch-size",
          "2",
          "--max-train-steps",
          "8",
          "--checkpointing-steps",
          "1",
          "--checkpoints-total-limit",
          "2",
          "--resume-from-checkpoint",
          "latest"};
}

/// Whether a write was cut: a temporary file or checkpoint directory is left under `dir`.
bool has_temporaries(fs::path const& dir) {
  std::error_code ec;
  for (auto const& e : fs::recursive_directory_iterator(dir, ec))
    if (e.path().extension() == ".tmp") return true;
  return false;
}

int env_int(char const* name, int fallback) {
  char const* v = std::getenv(name);
  return v && *v ? std::stoi(v) : fallback;
}
}  // namespace

TEST_CASE("sdlora-train killed with SIGKILL at random times resumes to a bit-identical LoRA", "[robust][e2e]") {
  // Every run uses the same output folder (its path is in the LoRA's metadata): the files must be equal byte for byte.
  fs::path const dir = kill_scratch() / "run";
  fs::remove_all(dir);
  auto const start = std::chrono::steady_clock::now();
  {
    test::Child child(args(dir), kill_scratch() / "reference.out", kill_scratch() / "reference.err");
    auto const s = child.wait();
    INFO(test::read_bytes(kill_scratch() / "reference.err"));
    REQUIRE(s.code == 0);
  }
  double const full = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string const lora = test::read_bytes(dir / "sdlora_lora.safetensors");
  std::string const losses = test::read_bytes(dir / "loss.csv");
  REQUIRE(lora.size() > 1000);

  int const trials = env_int("SDLORA_KILL_TRIALS", 5);
  std::uint64_t const seed = std::uint64_t(env_int("SDLORA_KILL_SEED", int(std::random_device{}() & 0x7fffffff)));
  std::cout << "kill test: seed " << seed << " (SDLORA_KILL_SEED), " << trials << " trials, uninterrupted run "
            << full << " s\n";
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> after_steps(0, 7);
  std::uniform_real_distribution<double> within_step(0.0, full / 8), when(0.0, 1.1 * full);
  int kills = 0, cut_writes = 0;
  for (int trial = 0; trial < trials; ++trial) {
    fs::remove_all(dir);
    int killed_here = 0;
    for (int attempt = 0;; ++attempt) {
      INFO("seed " << seed << ", trial " << trial << ", attempt " << attempt);
      REQUIRE(attempt < 100);
      fs::path const err = kill_scratch() / ("trial-" + std::to_string(trial) + "-" + std::to_string(attempt) + ".err");
      test::Child child(args(dir), kill_scratch() / "trial.out", err);
      // The first attempt is killed after a random number of steps plus a fraction of a step (so inside a step or a
      // checkpoint write), later ones at any time (or not at all); after 6 kills it runs to the end.
      test::ChildStatus s{true};
      if (attempt == 0) {
        int const steps = after_steps(rng);
        test::wait_for([&] { return test::loss_rows(dir) >= steps || child.poll().has_value(); }, 10min);
        s = child.wait(std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::duration<double>(within_step(rng))));
      } else {
        auto const delay = std::chrono::duration<double>(killed_here < 6 ? when(rng) : 600.0);
        s = child.wait(std::chrono::duration_cast<std::chrono::milliseconds>(delay));
      }
      if (s.running) {
        child.signal(SIGKILL);
        s = child.wait();
        if (s.signal == SIGKILL) {
          ++killed_here;
          cut_writes += has_temporaries(dir);
          continue;
        }
      }
      INFO(test::read_bytes(err));
      REQUIRE(s.signal == 0);
      REQUIRE(s.code == 0);
      break;
    }
    kills += killed_here;
    INFO("seed " << seed << ", trial " << trial << " after " << killed_here << " kills");
    REQUIRE(test::read_bytes(dir / "sdlora_lora.safetensors") == lora);
    REQUIRE(test::read_bytes(dir / "loss.csv") == losses);
  }
  std::cout << "kill test: " << trials << " trials, " << kills << " kills, " << cut_writes
            << " of them left a cut write (a .tmp file or directory); every final LoRA and loss.csv identical\n";
  CHECK(kills >= trials / 2);  // first attempts are killed mid-run: fewer kills mean the kills missed the run
}
