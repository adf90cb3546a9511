/// @file malformed_test.cpp
/// @brief Malformed files of each kind given to sdlora-generate, sdlora-train and sdlora-eval (a LoRA, an embedding,
/// an init image, a model, a dataset's metadata.csv, a --config file, a checkpoint's state.json, images to score, a
/// CLIPModel folder's files): a one-line error that names the file, exit 1 or 2, never a signal (and, in the
/// sanitizer build, never a sanitizer report).
#include <catch2/catch.hpp>

#include <chrono>      // std::chrono
#include <cstdint>     // std::uint32_t
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/all.hpp>
#include <sdlora/train/sample_data.hpp>

#include "examples/program.hpp"
#include "robust/spawn.hpp"
#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {

fs::path malformed_scratch() {
  static fs::path const dir = test::sample_data_dir("sdlora_robust_malformed", 2, 2);
  return dir;
}

fs::path write(std::string const& name, std::string const& bytes) {
  fs::path const p = malformed_scratch() / name;
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
  return p;
}

/// Bytes that look like a safetensors file whose header claims more than the file holds.
std::string const kCutSafetensors = std::string("\xff\x00\x00\x00\x00\x00\x00\x00{\"a\":", 13);

/// Runs the program, then checks: exit 1 or 2, no signal, no sanitizer report, and a last stderr line that names
/// `file` (its file name).
/// `timeout`: how long it may take before the check fails (the child is then killed).
void check_refused(std::vector<std::string> const& args, fs::path const& file,
                   std::chrono::milliseconds timeout = std::chrono::minutes(10)) {
  static int n = 0;
  std::string const stem = "run" + std::to_string(n++);
  fs::path const out = malformed_scratch() / (stem + ".out"), err = malformed_scratch() / (stem + ".err");
  test::Child child(args, out, err);
  auto const s = child.wait(timeout);
  std::string const e = test::read_bytes(err);
  INFO(args[0] << " with " << file << "\n" << e);
  REQUIRE(!s.running);
  CHECK(s.signal == 0);
  CHECK((s.code == 1 || s.code == 2));
  CHECK(e.find("Sanitizer") == std::string::npos);
  REQUIRE(e.size() >= 2);
  std::string const last = e.substr(e.rfind('\n', e.size() - 2) + 1);
  CHECK(last.find(file.filename().string()) != std::string::npos);
}

std::vector<std::string> generate(std::vector<std::string> extra, std::string const& model = "") {
  std::vector<std::string> a = {SDLORA_GENERATE_EXE, "--model",
                                model.empty() ? test::fixture("models/tiny-sd1") : model,
                                "--prompt", "a square", "--steps", "2", "--width", "16", "--height", "16",
                                "--threads", "1", "--out", (malformed_scratch() / "out.png").string()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::vector<std::string> malformed_train_args(std::string const& data, std::vector<std::string> extra) {
  std::vector<std::string> a = {SDLORA_TRAIN_EXE, "--pretrained-model", test::fixture("models/tiny-sd1"),
                                "--train-data-dir", data, "--resolution", "16", "--max-train-steps", "1",
                                "--threads", "1", "--output-dir", (malformed_scratch() / "train_out").string()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}
}  // namespace

TEST_CASE("sdlora-generate refuses malformed files with one line naming them", "[robust][e2e]") {
  SECTION("LoRA: random bytes") {
    auto const f = write("garbage_lora.safetensors", "not a safetensors file at all");
    check_refused(generate({"--lora", f.string()}), f);
  }
  SECTION("LoRA: a header longer than the file") {
    auto const f = write("cut_lora.safetensors", kCutSafetensors);
    check_refused(generate({"--lora", f.string()}), f);
  }
  SECTION("embedding: random bytes") {
    auto const f = write("garbage_embedding.safetensors", std::string(64, '\x7f'));
    check_refused(generate({"--embedding", f.string()}), f);
  }
  SECTION("embedding: a pickle") {
    auto const f = write("pickled.pt", "\x80\x02}q\x00.");
    check_refused(generate({"--embedding", f.string()}), f);
  }
  SECTION("init image: not an image") {
    auto const f = write("not_an_image.png", "\x89PNG\r\n\x1a\n but then nothing");
    check_refused(generate({"--init-image", f.string()}), f);
  }
  SECTION("model: a single file that is not safetensors") {
    auto const f = write("broken_model.safetensors", kCutSafetensors);
    check_refused(generate({}, f.string()), f);
  }
  SECTION("model: a diffusers folder whose UNet config is not JSON") {
    fs::path const dir = malformed_scratch() / "bad_config_model";
    fs::remove_all(dir);
    fs::copy(test::fixture("models/tiny-sd1"), dir, fs::copy_options::recursive);
    auto const f = write("bad_config_model/unet/config.json", "{\"block_out_channels\": [8, 16],");
    check_refused(generate({}, dir.string()), f);
  }
}

TEST_CASE("sdlora-train refuses malformed files with one line naming them", "[robust][e2e]") {
  std::string const images = (malformed_scratch() / "samples" / "images").string();
  SECTION("metadata.csv with a short row") {
    fs::path const data = malformed_scratch() / "bad_metadata";
    fs::remove_all(data);
    fs::copy(images, data, fs::copy_options::recursive);
    auto const f = write("bad_metadata/metadata.csv", "file_name,text\n0000.png\n");
    check_refused(malformed_train_args(data.string(), {}), f);
  }
  SECTION("metadata.jsonl with a line that is not JSON") {
    fs::path const data = malformed_scratch() / "bad_jsonl";
    fs::remove_all(data);
    fs::copy(images, data, fs::copy_options::recursive);
    fs::remove(data / "metadata.csv");
    auto const f = write("bad_jsonl/metadata.jsonl", "{\"file_name\": \"0000.png\", \"text\": \"x\"}\n{oops\n");
    check_refused(malformed_train_args(data.string(), {}), f);
  }
  SECTION("a --config file with a line that is not 'name = value'") {
    auto const f = write("bad.cfg", "learning_rate = 1e-4\nthis is not a flag\n");
    check_refused(malformed_train_args(images, {"--config", f.string()}), f);
  }
  SECTION("a --config file whose error would name Boost's placeholders (train_config_fuzz: it hung for good)") {
    // Boost.Program_Options 1.74 formats its message by replacing %original_token%, %value%, ... with the offending
    // text until none is left: text holding the placeholder itself never ends (cli::error_text). The fuzzer's input
    // (an unknown option spelled with %original_token%), and by hand an unknown option and a bad value.
    fs::path const found = test::fixture("fuzz/findings/train-config-placeholder-hang.cfg");
    auto const copy = write("train-config-placeholder-hang.cfg", test::read_bytes(found));
    check_refused(malformed_train_args(images, {"--config", copy.string()}), copy, std::chrono::seconds(60));
    auto const option = write("placeholder_option.cfg", "%original_token% = 1\n");
    check_refused(malformed_train_args(images, {"--config", option.string()}), option, std::chrono::seconds(60));
    auto const value = write("placeholder_value.cfg", "rank = %value%\n");
    check_refused(malformed_train_args(images, {"--config", value.string()}), value, std::chrono::seconds(60));
  }
  SECTION("a command-line flag spelled with Boost's placeholders") {
    // The same loop on the command line (cli::parse): a usage error naming the flag, exit 2.
    check_refused(malformed_train_args(images, {"--%canonical_option%"}), "%canonical_option%",
                  std::chrono::seconds(60));
    check_refused(malformed_train_args(images, {"--rank", "%value%"}), "rank", std::chrono::seconds(60));
  }
  SECTION("a checkpoint whose state.json is not JSON") {
    fs::path const out = malformed_scratch() / "train_out";
    fs::remove_all(out);
    train::TrainingState<float> s;
    s.global_step = 1;
    train::save_checkpoint(out.string(), s);
    auto const f = write("train_out/checkpoint-1/state.json", "{\"format\": \"sdlora-training-state\",");
    check_refused(malformed_train_args(images, {"--resume-from-checkpoint", (out / "checkpoint-1").string()}), f.parent_path());
  }
}

namespace {
std::vector<std::string> eval_args(std::string const& command, std::vector<std::string> extra) {
  std::vector<std::string> a = {SDLORA_EVAL_EXE, command, "--threads", "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

/// A copy of the tiny CLIPModel fixture under `name` with `file` replaced by `bytes`; returns the replaced file.
fs::path clip_with(std::string const& name, std::string const& file, std::string const& bytes) {
  fs::path const dir = malformed_scratch() / name;
  fs::remove_all(dir);
  fs::copy(test::fixture("eval/clip"), dir, fs::copy_options::recursive);
  return write(name + "/" + file, bytes);
}

/// A folder holding one image file `name` with `bytes`.
fs::path image_dir(std::string const& dir, std::string const& name, std::string const& bytes) {
  fs::remove_all(malformed_scratch() / dir);
  return write(dir + "/" + name, bytes);
}

/// A 54-byte BMP whose header claims w x h 24-bit pixels (stb would decode w * h * 3 bytes of zeros).
std::string bmp_bomb(std::uint32_t w, std::uint32_t h) {
  std::string s = "BM";
  auto le = [&](std::uint32_t v, int n) {
    for (int i = 0; i < n; ++i) s += char((v >> (8 * i)) & 0xffu);
  };
  le(54, 4), le(0, 4), le(54, 4), le(40, 4), le(w, 4), le(h, 4), le(1, 2), le(24, 2);
  for (int i = 0; i < 6; ++i) le(0, 4);
  return s;
}
}  // namespace

TEST_CASE("sdlora-eval refuses malformed files with one line naming them", "[robust][e2e]") {
  std::string const reference = test::fixture("eval/reference"), generated = test::fixture("eval/generated");
  fs::path const one_ref = image_dir("one_reference", "r.png", test::read_bytes(reference + "/r0.png"));
  SECTION("image: not an image") {
    auto const f = image_dir("not_image", "g.png", "\x89PNG\r\n\x1a\n but then nothing");
    check_refused(eval_args("ssim", {"--images", f.parent_path().string(), "--reference", one_ref.parent_path().string()}),
                  f);
  }
  SECTION("image: a header claiming 10000 x 10000 pixels (over the default limit)") {
    auto const f = image_dir("bomb", "bomb.bmp", bmp_bomb(10000, 10000));
    check_refused(eval_args("ssim", {"--images", f.parent_path().string(), "--reference", one_ref.parent_path().string()}),
                  f);
  }
  SECTION("image: over --max-image-pixels") {
    check_refused(eval_args("ssim", {"--images", one_ref.parent_path().string(), "--reference",
                                one_ref.parent_path().string(), "--max-image-pixels", "16"}),
                  one_ref);
  }
  SECTION("CLIP folder: config.json that is not JSON") {
    auto const f = clip_with("clip_bad_config", "config.json", "{\"text_config\": {");
    check_refused(eval_args("clip-i", {"--clip", f.parent_path().string(), "--images", generated, "--reference", reference}),
                  f);
  }
  SECTION("CLIP folder: config.json nested 100000 deep") {
    auto const f = clip_with("clip_deep_config", "config.json", std::string(100000, '[') + std::string(100000, ']'));
    check_refused(eval_args("clip-i", {"--clip", f.parent_path().string(), "--images", generated, "--reference", reference}),
                  f);
  }
  SECTION("CLIP folder: model.safetensors with a header longer than the file") {
    auto const f = clip_with("clip_cut_model", "model.safetensors", kCutSafetensors);
    check_refused(eval_args("clip-i", {"--clip", f.parent_path().string(), "--images", generated, "--reference", reference}),
                  f);
  }
  SECTION("CLIP folder: preprocessor_config.json that is not JSON") {
    auto const f = clip_with("clip_bad_preprocessor", "preprocessor_config.json", "not json");
    check_refused(eval_args("clip-i", {"--clip", f.parent_path().string(), "--images", generated, "--reference", reference}),
                  f);
  }
  SECTION("CLIP folder: vocab.json of random bytes") {
    auto const f = clip_with("clip_bad_vocab", "vocab.json", std::string(64, '\x7f'));
    check_refused(eval_args("clip-score", {"--clip", f.parent_path().string(), "--images", generated, "--prompts",
                                      test::fixture("eval/prompts.txt")}),
                  f);
  }
  auto const sweep = [&](std::string const& model, std::string const& lora) {
    auto const prompts = write("sweep_prompts.txt", "a photo of a cat\n");
    return eval_args("sweep", {"--clip", test::fixture("eval/clip"), "--reference", reference, "--model", model, "--lora",
                          lora, "--prompts", prompts.string(), "--scales", "0,1", "--seeds", "3", "--steps", "2",
                          "--width", "16", "--height", "16", "--out", (malformed_scratch() / "sweep_out").string()});
  };
  SECTION("sweep: a LoRA of random bytes") {
    auto const f = write("garbage_sweep_lora.safetensors", "not a safetensors file at all");
    check_refused(sweep(test::fixture("models/tiny-sd1"), f.string()), f);
  }
  SECTION("sweep: a model file that is cut") {
    auto const f = write("broken_sweep_model.safetensors", kCutSafetensors);
    check_refused(sweep(f.string(), test::fixture("pipeline/lora_kohya.safetensors")), f);
  }
}

TEST_CASE("sdlora-train refuses training images over the pixel limit from their header", "[robust][e2e]") {
  SECTION("a 54-byte BMP claiming 10000 x 10000 pixels, --strict") {
    auto const f = image_dir("bomb_data", "bomb.bmp", bmp_bomb(10000, 10000));
    check_refused(malformed_train_args(f.parent_path().string(), {"--strict"}), f);
  }
  SECTION("the same without --strict: skipped, so the folder is empty, and the message names it") {
    auto const f = image_dir("bomb_data", "bomb.bmp", bmp_bomb(10000, 10000));
    check_refused(malformed_train_args(f.parent_path().string(), {}), f);
  }
  SECTION("--max_image_pixels below the sample images' size") {
    fs::path const data = malformed_scratch() / "small_limit";
    fs::remove_all(data);
    fs::copy(malformed_scratch() / "samples" / "images", data, fs::copy_options::recursive);
    check_refused(malformed_train_args(data.string(), {"--strict", "--max_image_pixels", "16"}), data / "0000.png");
  }
}
