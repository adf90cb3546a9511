/// @file generate_test.cpp
/// @brief End-to-end tests of the sdlora-generate program on the tiny SD1 model: help text, one-line errors with
/// exit codes, reproducible PNG bytes, the A1111 `parameters` chunk, LoRA scale sweeps, Textual Inversion and
/// img2img. The executable's path comes from CMake (SDLORA_GENERATE_EXE).
#include <catch2/catch.hpp>

#include <algorithm>   // std::count
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <sstream>     // std::ostringstream
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/pipeline.hpp>  // pipeline::save_embedding
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "examples/program.hpp"
#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {

using Result = test::ProgramResult;
using test::read_bytes;

fs::path generate_scratch() {
  static fs::path const dir = [] {
    fs::path d = test::scratch_dir("sdlora_generate_test");
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

Result run_generate(std::string const& args) {
  return test::run_program(SDLORA_GENERATE_EXE, args, generate_scratch());
}

std::string tiny_model_flag() { return "--model '" + test::fixture("models/tiny-sd1") + "'"; }
/// A fast generation of the tiny model: 16x16 pixels, 3 steps.
std::string fast(std::string const& prompt = "a photo of a cat") {
  return tiny_model_flag() + " --prompt '" + prompt + "' --steps 3 --width 16 --height 16 --sampler euler --threads 2";
}

std::string parameters_of(fs::path const& png) {
  for (auto const& [k, v] : io::read_png_text(png.string()))
    if (k == "parameters") return v;
  return "";
}

}  // namespace

TEST_CASE("sdlora-generate --help documents every flag", "[examples][e2e]") {
  auto r = run_generate("--help");
  REQUIRE(r.code == 0);
  for (char const* flag : {"--model", "--config-dir", "--prompt", "--negative-prompt", "--steps", "--cfg", "--sampler",
                           "--karras", "--seed", "--width", "--height", "--batch", "--count", "--lora",
                           "--merge-lora", "--lora-scales", "--init-image", "--strength", "--clip-skip",
                           "--embedding", "--out", "--threads", "--device", "--vae", "--original-size", "--target-size",
                           "--crops-coords-top-left", "--help"}) {
    INFO(flag);
    CHECK(r.out.find(std::string(flag) + " ") != std::string::npos);
  }
  for (char const* sampler : {"ddpm", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m"}) CHECK(r.out.find(sampler) != std::string::npos);
}

TEST_CASE("sdlora-generate errors are one line with a non-zero exit", "[examples][e2e]") {
  SECTION("unknown flag: usage error, exit 2") {
    auto r = run_generate(fast() + " --bogus-flag 3");
    CHECK(r.code == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("bogus") != std::string::npos);
  }
  SECTION("missing model names the path") {
    auto r = run_generate("--model /no/such/model --prompt x");
    CHECK(r.code != 0);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("/no/such/model") != std::string::npos);
  }
  SECTION("a size that is not a multiple of the VAE factor") {
    auto r = run_generate(tiny_model_flag() + " --prompt x --steps 3 --width 15 --height 16 --out '" +
                          (generate_scratch() / "bad.png").string() + "'");
    CHECK(r.code == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("multiples of 2") != std::string::npos);
    CHECK(r.err.find("15x16") != std::string::npos);
    CHECK_FALSE(fs::exists(generate_scratch() / "bad.png"));
  }
  SECTION("unknown sampler") {
    auto r = run_generate(tiny_model_flag() + " --prompt x --steps 3 --width 16 --height 16 --sampler heun");
    CHECK(r.code == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("heun") != std::string::npos);
  }
  SECTION("a flag given twice") {
    auto r = run_generate(fast() + " --steps 4");
    CHECK(r.code == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("steps") != std::string::npos);
  }
  SECTION("--device: cpu or cuda; cuda only in a build with the CUDA backend") {
    auto r = run_generate(fast() + " --device tpu");
    CHECK(r.code == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("--device must be cpu or cuda, got 'tpu'") != std::string::npos);
    r = run_generate(fast() + " --device cuda --out '" + (generate_scratch() / "device.png").string() + "'");
    if (!SDLORA_GENERATE_HAS_CUDA) {  // refused before the model loads, naming the build option
      CHECK(r.code == 2);
      CHECK(test::count_lines(r.err) == 1);
      CHECK(r.err.find("built without the CUDA backend") != std::string::npos);
      CHECK(r.err.find("-DSDLORA_CUDA=ON") != std::string::npos);
      CHECK_FALSE(fs::exists(generate_scratch() / "device.png"));
    } else if (r.code != 0) {  // a CUDA build on a machine without a usable GPU: one line from the CUDA runtime
      CHECK(test::count_lines(r.err) == 1);
      CHECK(r.err.find("cuda") != std::string::npos);
    }
    r = run_generate(fast() + " --device cuda --lora x.safetensors --lora-scales 0,1");
    CHECK(r.code != 0);
    CHECK(test::count_lines(r.err) == 1);
  }
  SECTION("missing LoRA and embedding files") {
    auto r = run_generate(fast() + " --lora /no/such/lora.safetensors:0.5");
    CHECK(r.code != 0);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("/no/such/lora.safetensors") != std::string::npos);
    r = run_generate(fast() + " --embedding /no/such/emb.safetensors");
    CHECK(r.code != 0);
    CHECK(r.err.find("/no/such/emb.safetensors") != std::string::npos);
  }
}

TEST_CASE("sdlora-generate: the same seed gives byte-identical PNGs carrying the parameters", "[examples][e2e]") {
  fs::path const a = generate_scratch() / "a.png", b = generate_scratch() / "b.png", c = generate_scratch() / "c.png";
  auto ra = run_generate(fast() + " --seed 42 --negative-prompt 'blurry' --out '" + a.string() + "'");
  REQUIRE(ra.code == 0);
  auto rb = run_generate(fast() + " --seed 42 --negative-prompt 'blurry' --out '" + b.string() + "'");
  REQUIRE(rb.code == 0);
  CHECK(read_bytes(a) == read_bytes(b));
  auto rc = run_generate(fast() + " --seed 43 --negative-prompt 'blurry' --out '" + c.string() + "'");
  REQUIRE(rc.code == 0);
  CHECK(read_bytes(a) != read_bytes(c));

  std::string const p = parameters_of(a);
  INFO(p);
  CHECK(p.rfind("a photo of a cat\nNegative prompt: blurry\n", 0) == 0);
  CHECK(p.find("Steps: 3, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 16x16, Model: tiny-sd1") !=
        std::string::npos);
  CHECK(p.find("sdlora: ") != std::string::npos);
  // Progress goes to stderr as plain lines (not a terminal here).
  CHECK(ra.err.find("generate 3/3") != std::string::npos);
  CHECK(ra.err.find('\r') == std::string::npos);
}

TEST_CASE("sdlora-generate writes batches and counts with their own seeds", "[examples][e2e]") {
  fs::path const dir = generate_scratch() / "many";
  auto r = run_generate(fast() + " --seed 5 --batch 2 --count 2 --out '" + dir.string() + "'");
  REQUIRE(r.code == 0);
  for (char const* name : {"00000-5.png", "00001-5.png", "00002-6.png", "00003-6.png"}) {
    INFO(name);
    REQUIRE(fs::exists(dir / name));
  }
  CHECK(parameters_of(dir / "00003-6.png").find("Seed: 6, Size: 16x16, Model: tiny-sd1, Batch size: 2, Batch pos: 1") !=
        std::string::npos);
  auto const pattern = generate_scratch() / "pat_{i}.png";
  r = run_generate(fast() + " --seed 5 --count 2 --out '" + pattern.string() + "'");
  REQUIRE(r.code == 0);
  CHECK(fs::exists(generate_scratch() / "pat_0.png"));
  CHECK(fs::exists(generate_scratch() / "pat_1.png"));
}

TEST_CASE("sdlora-generate --lora-scales writes one column per scale", "[examples][e2e]") {
  std::string const lora = test::fixture("pipeline/lora_kohya.safetensors");
  fs::path const grid = generate_scratch() / "sweep.png", plain = generate_scratch() / "plain.png";
  auto r =
      run_generate(fast() + " --seed 42 --lora '" + lora + "' --lora-scales 0,0.5,1 --out '" + grid.string() + "'");
  REQUIRE(r.code == 0);
  // The grid is a figure: the prompt above, "scale S" over the columns, the 16 px cells enlarged 4x (64 px: wider
  // than "scale 0.5") with 4 px gaps.
  auto const g = io::load_image(grid.string());
  CHECK(g.dim(2) == 3 * (64 + 4) + 4);
  CHECK(g.dim(1) > 4 + 64 + 4 + 2 * 7);  // two lines of text (title, column labels) above the row
  auto const cell = io::load_image((generate_scratch() / "sweep-1.png").string());
  Index const x0 = 4 + (64 + 4), y0 = g.dim(1) - 4 - 64;  // column 1, the only row
  float worst = 0;
  for (Index k = 0; k < 3; ++k)
    for (Index y = 0; y < 64; ++y)
      for (Index x = 0; x < 64; ++x)
        worst = std::max(worst, std::abs(g.at({k, y0 + y, x0 + x}) - cell.at({k, y / 4, x / 4})));
  CHECK(worst <= 1.01f / 127.5f);  // the same image, up to one 8-bit level of the [0, 1] round trip
  CHECK(parameters_of(grid).find("Lora scales: \"0,0.5,1\"") != std::string::npos);
  for (int i = 0; i < 3; ++i) REQUIRE(fs::exists(generate_scratch() / ("sweep-" + std::to_string(i) + ".png")));
  CHECK(parameters_of(generate_scratch() / "sweep-1.png").find("Lora: lora_kohya:0.5") != std::string::npos);

  // Scale 0 is the model without LoRA; scale 1 differs from it.
  REQUIRE(run_generate(fast() + " --seed 42 --out '" + plain.string() + "'").code == 0);
  auto const p = io::load_image(plain.string());
  auto const s0 = io::load_image((generate_scratch() / "sweep-0.png").string());
  auto const s1 = io::load_image((generate_scratch() / "sweep-2.png").string());
  CHECK(test::rel_l2(s0, p) == 0.0);
  CHECK(test::rel_l2(s1, p) > 1e-3);

  // Merged sweeps give the same images up to the merge's rounding (8-bit pixels: at most one level apart).
  fs::path const merged = generate_scratch() / "sweep_merged.png";
  REQUIRE(run_generate(fast() + " --seed 42 --lora '" + lora + "' --lora-scales 0,0.5,1 --merge-lora --out '" +
                       merged.string() + "'")
              .code == 0);
  CHECK(test::rel_l2(io::load_image(merged.string()), g) < 1e-2);
}

TEST_CASE("sdlora-generate --embedding makes a Textual Inversion token usable", "[examples][e2e]") {
  // One token (diffusers layout) and a two-vector one (expanded to "<tok2> <tok2>_1" in the prompt).
  fs::path const one = generate_scratch() / "tok.safetensors", two = generate_scratch() / "tok2.safetensors";
  pipeline::save_embedding(one.string(), "<sdlora-tok>", test::random_tensor<float>(Shape{1, 8}, 3).view());
  pipeline::save_embedding(two.string(), "<sdlora-two>", test::random_tensor<float>(Shape{2, 8}, 4).view());
  fs::path const with = generate_scratch() / "with.png", without = generate_scratch() / "without.png",
                 multi = generate_scratch() / "multi.png";
  auto r = run_generate(fast("a photo of <sdlora-tok>") + " --seed 1 --embedding '" + one.string() + "' --out '" +
                        with.string() + "'");
  REQUIRE(r.code == 0);
  REQUIRE(run_generate(fast("a photo of <sdlora-tok>") + " --seed 1 --out '" + without.string() + "'").code == 0);
  CHECK(test::rel_l2(io::load_image(with.string()), io::load_image(without.string())) > 1e-3);
  CHECK(parameters_of(with).find("TI: <sdlora-tok>") != std::string::npos);

  r = run_generate(fast("a photo of <sdlora-two>") + " --seed 1 --embedding '" + two.string() + "' --embedding '" +
                   one.string() + "' --out '" + multi.string() + "'");
  REQUIRE(r.code == 0);
  CHECK(test::rel_l2(io::load_image(multi.string()), io::load_image(with.string())) > 1e-3);

  // The same token twice is refused.
  r = run_generate(fast() + " --embedding '" + one.string() + "' --embedding '" + one.string() + "'");
  CHECK(r.code != 0);
  CHECK(r.err.find("already in the vocabulary") != std::string::npos);
}

TEST_CASE("sdlora-generate --init-image runs img2img at a size rounded to the VAE factor", "[examples][e2e]") {
  fs::path const init = generate_scratch() / "init.png", out = generate_scratch() / "i2i.png";
  io::save_png(init.string(), test::random_tensor<float>(Shape{3, 19, 17}, 9).view());
  auto r = run_generate(tiny_model_flag() + " --prompt 'a cat' --steps 4 --strength 0.5 --init-image '" +
                        init.string() + "' --out '" + out.string() + "' --seed 3");
  REQUIRE(r.code == 0);
  auto const img = io::load_image(out.string());
  CHECK(img.dim(1) == 18);
  CHECK(img.dim(2) == 16);
  CHECK(parameters_of(out).find("Denoising strength: 0.5") != std::string::npos);
}

TEST_CASE("sdlora-generate runs SDXL: native size, micro-conditioning flags, a replacement --vae", "[examples][e2e]") {
  std::string const sdxl = "--model '" + test::fixture("models/tiny-sdxl") +
                           "' --prompt 'a photo of a cat' --steps 3 --sampler euler --seed 7 --threads 2";
  fs::path const plain = generate_scratch() / "xl.png", micro = generate_scratch() / "xl_micro.png",
                 vae = generate_scratch() / "xl_vae.png", other_vae = generate_scratch() / "xl_other_vae.png";
  auto r = run_generate(sdxl + " --out '" + plain.string() + "'");
  REQUIRE(r.code == 0);
  CHECK(parameters_of(plain).find("Size: 16x16, Model: tiny-sdxl") != std::string::npos);  // sample_size 8 x VAE 2

  r = run_generate(sdxl + " --original-size 32x48 --target-size 16x16 --crops-coords-top-left 4,8 --out '" +
                   micro.string() + "'");
  REQUIRE(r.code == 0);
  CHECK(read_bytes(micro) != read_bytes(plain));
  std::string const p = parameters_of(micro);
  INFO(p);
  CHECK(p.find("Original size: 32x48, Target size: 16x16, Crop top-left: 4,8") != std::string::npos);

  // The folder's own VAE given as a replacement changes no pixel (the PNG text names it); another VAE of the same
  // shape changes the pixels.
  auto pixels = [](fs::path const& png) { return io::load_image(png.string(), io::ImageRange::ZeroToOne); };
  r = run_generate(sdxl + " --vae '" + test::fixture("models/tiny-sdxl/vae") + "' --out '" + vae.string() + "'");
  REQUIRE(r.code == 0);
  CHECK(parameters_of(vae).find("VAE: vae, ") != std::string::npos);
  auto const same = pixels(vae), base = pixels(plain);
  REQUIRE(same.numel() == base.numel());
  CHECK(std::equal(same.data(), same.data() + same.numel(), base.data()));
  r = run_generate(sdxl + " --vae '" + test::fixture("models/tiny-sd1/vae") + "' --out '" + other_vae.string() + "'");
  REQUIRE(r.code == 0);
  CHECK(test::rel_l2(pixels(other_vae), base) > 1e-3);

  r = run_generate(sdxl + " --original-size 32 --out '" + (generate_scratch() / "bad.png").string() + "'");
  CHECK(r.code == 2);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("--original-size must be WxH") != std::string::npos);
  r = run_generate(fast() + " --target-size 16x16");
  CHECK(r.code == 2);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("not an SDXL checkpoint") != std::string::npos);
}
