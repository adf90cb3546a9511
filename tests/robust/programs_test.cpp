/// @file programs_test.cpp
/// @brief sdlora-train and sdlora-generate under trouble (issue 15): a NaN in the model's weights, SIGINT / SIGTERM
/// mid-run, writes past RLIMIT_FSIZE, a full disk (a tiny tmpfs, where mounting one is permitted). Each test spawns
/// the program, provokes the trouble and checks the exit status, the one-line message, and that every file under a
/// final name is whole (and no LoRA from a broken state exists).
#include <catch2/catch.hpp>

#include <signal.h>       // SIGINT, SIGTERM
#include <sys/mount.h>    // mount, umount2, MS_REMOUNT
#include <sys/statvfs.h>  // statvfs

#include <algorithm>   // std::count
#include <cerrno>      // errno
#include <chrono>      // std::chrono
#include <cstdint>     // std::uint64_t
#include <cstring>     // std::strerror
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <limits>      // std::numeric_limits
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/all.hpp>
#include <sdlora/train/sample_data.hpp>

#include "examples/program.hpp"
#include "robust/spawn.hpp"
#include "support.hpp"

using namespace sdlora;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::string const kPoisonedLayer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k";

/// Sample images and a copy of the tiny model whose UNet has one NaN in kPoisonedLayer's weight.
fs::path scratch() {
  static fs::path const dir = [] {
    fs::path d = test::sample_data_dir("sdlora_robust_programs");
    fs::copy(test::fixture("models/tiny-sd1"), d / "poisoned", fs::copy_options::recursive);
    std::string const unet = (d / "poisoned" / "unet" / "diffusion_pytorch_model.safetensors").string();
    io::SafetensorsWriter w;
    {
      io::SafetensorsFile f(unet);
      for (auto const& key : f.keys()) {
        auto t = f.load<float>(key);
        if (key == kPoisonedLayer + ".weight") t(3) = std::numeric_limits<float>::quiet_NaN();
        w.add(key, t);
      }
    }
    w.write(unet);
    return d;
  }();
  return dir;
}

std::string tiny() { return test::fixture("models/tiny-sd1"); }

std::vector<std::string> train_args(std::string const& out_dir, std::string const& model = tiny()) {
  return {SDLORA_TRAIN_EXE,    "--pretrained-model", model, "--train-data-dir",
          (scratch() / "samples" / "images").string(), "--resolution", "16", "--output-dir",
          (scratch() / out_dir).string(), "--threads", "1", "--seed", "3"};
}

std::vector<std::string> operator+(std::vector<std::string> a, std::vector<std::string> const& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

/// Runs a program to the end (at most 10 minutes); returns its status, stdout and stderr.
struct Run {
  test::ChildStatus status;
  std::string out, err;
};
Run run(std::vector<std::string> const& args, std::string const& name, std::optional<rlim_t> limit = std::nullopt) {
  fs::path const out = scratch() / (name + ".out"), err = scratch() / (name + ".err");
  fs::remove(out);
  fs::remove(err);
  test::Child child(args, out, err, limit);
  auto const s = child.wait();
  return {s, test::read_bytes(out), test::read_bytes(err)};
}

int lines(std::string const& s) { return int(std::count(s.begin(), s.end(), '\n')); }

/// Rows of a loss.csv text whose `skipped` column is 1.
int skipped_rows_in_text(std::string const& csv) {
  int n = 0;
  for (std::size_t at = csv.find(",1\n"); at != std::string::npos; at = csv.find(",1\n", at + 1)) ++n;
  return n;
}

/// Every .safetensors and .png under `dir` opens as a whole file (no partial file under a final name).
void require_whole_files(fs::path const& dir) {
  for (auto const& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::string const p = e.path().string();
    INFO(p);
    if (e.path().extension() == ".safetensors") REQUIRE_NOTHROW(io::SafetensorsFile(p));
    if (e.path().extension() == ".png") REQUIRE_NOTHROW(io::load_image(p));
  }
}

/// Files and folders under `dir` whose name ends in ".tmp": what a failed write left behind.
std::vector<std::string> tmp_leftovers(fs::path const& dir) {
  std::vector<std::string> out;
  for (auto const& e : fs::recursive_directory_iterator(dir))
    if (e.path().extension() == ".tmp") out.push_back(e.path().string());
  return out;
}
}  // namespace

TEST_CASE("sdlora-train with a NaN in a layer's weights names the step and the layer and writes no LoRA",
          "[robust][e2e]") {
  fs::remove_all(scratch() / "nan_model");
  auto const r = run(train_args("nan_model", (scratch() / "poisoned").string()) +
                         std::vector<std::string>{"--max-train-steps", "3", "--checkpointing-steps", "1"},
                     "nan_model");
  INFO(r.err);
  CHECK(r.status.code == 1);
  std::string const last = r.err.substr(r.err.rfind('\n', r.err.size() - 2) + 1);
  CHECK(last.find("step 1:") != std::string::npos);
  CHECK(last.find("the output of unet." + kPoisonedLayer + ";") != std::string::npos);
  CHECK(lines(last) == 1);
  CHECK_FALSE(fs::exists(scratch() / "nan_model" / "sdlora_lora.safetensors"));
  CHECK_FALSE(fs::exists(scratch() / "nan_model" / "checkpoint-1"));
}

TEST_CASE("sdlora-train --on_nan skip counts the skipped steps and still ends", "[robust][e2e]") {
  fs::remove_all(scratch() / "nan_skip");
  auto const r = run(train_args("nan_skip", (scratch() / "poisoned").string()) +
                         std::vector<std::string>{"--max-train-steps", "2", "--on-nan", "skip"},
                     "nan_skip");
  INFO(r.err);
  CHECK(r.status.code == 0);
  CHECK(r.out.find("2 steps skipped") != std::string::npos);
  std::string const csv = test::read_bytes(scratch() / "nan_skip" / "loss.csv");
  CHECK(csv.rfind("step,loss,lr,skipped\n", 0) == 0);
  CHECK(lines(csv) == 3);
  CHECK(skipped_rows_in_text(csv) == 2);
  require_whole_files(scratch() / "nan_skip");
}

TEST_CASE("sdlora-generate with a NaN in the UNet names the denoising step and writes no image", "[robust][e2e]") {
  fs::path const out = scratch() / "nan_generate";
  fs::remove_all(out);
  auto const r = run({SDLORA_GENERATE_EXE, "--model", (scratch() / "poisoned").string(), "--prompt", "a square",
                      "--steps", "3", "--sampler", "euler", "--width", "16", "--height", "16", "--threads", "1",
                      "--out", out.string()},
                     "nan_generate");
  INFO(r.err);
  CHECK(r.status.code == 1);
  CHECK(r.err.find("denoising step 1 of 3") != std::string::npos);
  CHECK(r.err.find("NaN or inf") != std::string::npos);
  bool any_png = false;
  if (fs::exists(out))
    for (auto const& e : fs::recursive_directory_iterator(out)) any_png = any_png || e.path().extension() == ".png";
  CHECK_FALSE(any_png);
}

TEST_CASE("SIGINT / SIGTERM during training finish the step, checkpoint, print the resume command and exit 130 / 143",
          "[robust][e2e]") {
  for (int sig : {SIGINT, SIGTERM}) {
    std::string const name = sig == SIGINT ? "sigint" : "sigterm";
    fs::path const dir = scratch() / name;
    fs::remove_all(dir);
    fs::path const out = scratch() / (name + ".out"), err = scratch() / (name + ".err");
    fs::remove(out);
    fs::remove(err);
    auto const args =
        train_args(name) + std::vector<std::string>{"--max-train-steps", "100000", "--checkpointing-steps", "0"};
    test::Child child(args, out, err);
    REQUIRE(test::wait_for([&] { return test::loss_rows(dir) >= 2 && test::catches(child.pid(), SDLORA_TRAIN_EXE, sig); },
                           5min));
    child.signal(sig);
    auto const s = child.wait(5min);
    std::string const e = test::read_bytes(err);
    INFO(e);
    REQUIRE_FALSE(s.running);
    CHECK(s.signal == 0);
    CHECK(s.code == 128 + sig);
    int const steps = test::loss_rows(dir);  // every finished step has its row, and the checkpoint is the last of them
    CHECK(fs::exists(dir / ("checkpoint-" + std::to_string(steps))));
    CHECK_FALSE(fs::exists(dir / "sdlora_lora.safetensors"));
    auto const at = e.find("resume with:\n  ");
    REQUIRE(at != std::string::npos);
    std::string const command = e.substr(at + 15, e.find('\n', at + 15) - at - 15);
    CHECK(command.find("--resume_from_checkpoint latest") != std::string::npos);
    require_whole_files(dir);
    if (sig == SIGINT) {  // the printed command continues the run (to one more step, to keep the test short)
      std::string shorter = command;
      shorter.replace(shorter.find("100000"), 6, std::to_string(steps + 1));
      auto const resumed = test::run_program("/bin/sh", "-c '" + shorter + "'", scratch());
      INFO(resumed.err);
      CHECK(resumed.code == 0);
      CHECK(resumed.out.find("(" + std::to_string(steps) + " -> " + std::to_string(steps + 1) + ")") !=
            std::string::npos);
    }
  }
}

TEST_CASE("SIGINT during generation writes no partial image and exits 130", "[robust][e2e]") {
  fs::path const dir = scratch() / "gen_sigint";
  fs::remove_all(dir);
  fs::path const out = scratch() / "gen_sigint.out", err = scratch() / "gen_sigint.err";
  fs::remove(out);
  fs::remove(err);
  test::Child child({SDLORA_GENERATE_EXE, "--model", tiny(), "--prompt", "a square", "--steps", "500", "--sampler",
                     "euler", "--count", "1000", "--width", "16", "--height", "16", "--threads", "1", "--out",
                     dir.string()},
                    out, err);
  // As soon as its handler is installed: the signal lands during loading or the first steps.
  REQUIRE(test::wait_for([&] { return test::catches(child.pid(), SDLORA_GENERATE_EXE, SIGINT); }, 5min));
  child.signal(SIGINT);
  auto const s = child.wait(5min);
  std::string const e = test::read_bytes(err);
  INFO(e);
  REQUIRE_FALSE(s.running);
  CHECK(s.code == 130);
  CHECK(e.find("cancelled at step") != std::string::npos);
  if (fs::exists(dir)) CHECK(fs::is_empty(dir));
}

TEST_CASE("Writes past RLIMIT_FSIZE fail naming the file; the last checkpoint stays loadable; no partial file",
          "[robust][e2e]") {
  fs::path const dir = scratch() / "fsize";
  fs::remove_all(dir);
  auto r = run(train_args("fsize") + std::vector<std::string>{"--max-train-steps", "2", "--checkpointing-steps", "2"},
               "fsize_a");
  INFO(r.err);
  REQUIRE(r.status.code == 0);
  REQUIRE(fs::file_size(dir / "checkpoint-2" / "parameters.safetensors") > 16384);
  SECTION("a checkpoint") {
    r = run(train_args("fsize") + std::vector<std::string>{"--max-train-steps", "4", "--checkpointing-steps", "1",
                                                           "--resume-from-checkpoint", "latest"},
            "fsize_b", 16384);
    INFO(r.err);
    CHECK(r.status.signal == 0);
    CHECK(r.status.code == 1);
    CHECK(lines(r.err.substr(r.err.rfind("sdlora-train:"))) == 1);
    CHECK(r.err.find("checkpoint-3.tmp/parameters.safetensors") != std::string::npos);
    CHECK(r.err.find("File too large") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "checkpoint-3"));
    CHECK(tmp_leftovers(dir).empty());  // neither parameters.safetensors.tmp nor the checkpoint-3.tmp folder
    CHECK(train::load_checkpoint<float>((dir / "checkpoint-2").string()).global_step == 2);
  }
  SECTION("the LoRA") {
    fs::remove(dir / "sdlora_lora.safetensors");
    r = run(train_args("fsize") + std::vector<std::string>{"--max-train-steps", "3", "--checkpointing-steps", "0",
                                                           "--resume-from-checkpoint", "latest"},
            "fsize_c", 16384);
    INFO(r.err);
    CHECK(r.status.code == 1);
    CHECK(r.err.find("sdlora_lora.safetensors") != std::string::npos);
    CHECK(r.err.find("File too large") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "sdlora_lora.safetensors"));
    CHECK(tmp_leftovers(dir).empty());  // no sdlora_lora.safetensors.tmp
  }
  SECTION("an image") {
    fs::path const png = scratch() / "fsize_image.png";
    // 64x64: a PNG of about 12 KB against a 4 KB limit that leaves room for the messages on stderr.
    r = run({SDLORA_GENERATE_EXE, "--model", tiny(), "--prompt", "a square", "--steps", "2", "--width", "64",
             "--height", "64", "--threads", "1", "--out", png.string()},
            "fsize_d", 4096);
    INFO(r.err);
    CHECK(r.status.code == 1);
    CHECK(r.err.find("fsize_image.png") != std::string::npos);
    CHECK(r.err.find("File too large") != std::string::npos);
    CHECK_FALSE(fs::exists(png));
    CHECK_FALSE(fs::exists(png.string() + ".tmp"));
  }
  require_whole_files(dir);
}

namespace {
/// A tmpfs mounted at `dir` for the lifetime of the object (needs CAP_SYS_ADMIN: root outside a restricted
/// container); `error` says why when it could not be mounted.
struct Tmpfs {
  fs::path dir;
  bool mounted = false;
  std::string error;
  Tmpfs(fs::path d, std::uint64_t bytes) : dir(std::move(d)) {
    fs::create_directories(dir);
    std::string const opts = "size=" + std::to_string(bytes) + ",mode=0755";
    mounted = ::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0;
    if (!mounted) error = std::strerror(errno);
  }
  bool resize(std::uint64_t bytes) {
    std::string const opts = "size=" + std::to_string(bytes) + ",mode=0755";
    return ::mount("tmpfs", dir.c_str(), "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV, opts.c_str()) == 0;
  }
  std::uint64_t used() const {
    struct statvfs s {};
    if (::statvfs(dir.c_str(), &s) != 0) return 0;
    return std::uint64_t(s.f_blocks - s.f_bfree) * s.f_frsize;
  }
  ~Tmpfs() {
    if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
  }
  Tmpfs(Tmpfs const&) = delete;
  Tmpfs& operator=(Tmpfs const&) = delete;
};
}  // namespace

TEST_CASE("A full disk (a tiny tmpfs) fails naming the file; the last checkpoint stays loadable; nothing partial",
          "[robust][e2e]") {
  Tmpfs disk(scratch() / "tmpfs", 8u << 20);
  if (!disk.mounted) {
    WARN("SKIPPED: cannot mount a tmpfs here (" << disk.error << "; needs root / CAP_SYS_ADMIN); the RLIMIT_FSIZE "
         "test covers the same code paths");
    return;
  }
  // One step and its checkpoint, then shrink the disk to that much plus half a checkpoint: the next checkpoint
  // runs out of space part-way.
  auto r = run(train_args("tmpfs") + std::vector<std::string>{"--max-train-steps", "1", "--checkpointing-steps", "1"},
               "tmpfs_a");
  INFO(r.err);
  REQUIRE(r.status.code == 0);
  std::string const lora = test::read_bytes(scratch() / "tmpfs" / "sdlora_lora.safetensors");  // the 1-step LoRA
  std::uint64_t const used = disk.used();
  REQUIRE(used > 0);
  REQUIRE(disk.resize((used + used / 2 + 4095) / 4096 * 4096));
  r = run(train_args("tmpfs") + std::vector<std::string>{"--max-train-steps", "3", "--checkpointing-steps", "1",
                                                         "--resume-from-checkpoint", "latest"},
          "tmpfs_b");
  INFO(r.err);
  CHECK(r.status.signal == 0);
  CHECK(r.status.code == 1);
  REQUIRE(r.err.rfind("sdlora-train:") != std::string::npos);
  std::string const last = r.err.substr(r.err.rfind("sdlora-train:"));
  CHECK(lines(last) == 1);
  CHECK(last.find("No space left on device") != std::string::npos);
  CHECK(last.find((scratch() / "tmpfs").string()) != std::string::npos);  // names the file it was writing
  CHECK_FALSE(fs::exists(scratch() / "tmpfs" / "checkpoint-2"));
  CHECK(test::read_bytes(scratch() / "tmpfs" / "sdlora_lora.safetensors") == lora);  // the old file, whole
  CHECK(tmp_leftovers(scratch() / "tmpfs").empty());
  CHECK(train::load_checkpoint<float>((scratch() / "tmpfs" / "checkpoint-1").string()).global_step == 1);
  require_whole_files(scratch() / "tmpfs");
}
