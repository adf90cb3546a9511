// The bundled toy-world model (data/models/toy-world, trained from scratch by sdlora-pretrain): diffusers draws the
// same images with it, and it learned what its prompts' colours mean. Every measure is computed from pixels
// (eval/toy_measures.hpp); every bar is stated next to its check with the value measured when the test was written.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <sdlora/backend/cpu.hpp>
#include <sdlora/eval/toy_measures.hpp>
#include <sdlora/io/safetensors.hpp>
#include <sdlora/models/checkpoint.hpp>
#include <sdlora/pipeline/txt2img.hpp>
#include <sdlora/train/sample_data.hpp>

#include "support.hpp"

using namespace sdlora;

namespace {

std::string const kModel = std::string(SDLORA_DATA_DIR) + "/models/toy-world";

models::StableDiffusion<float, Cpu> load_toy() { return models::load_stable_diffusion<float>(kModel); }

/// One 64 x 64 image in [0, 1] for a prompt and seed (20 DDIM steps, guidance 5).
Tensor<float, Cpu> draw(Context<Cpu>& ctx, models::StableDiffusion<float, Cpu>& sd, std::string const& prompt,
                        std::uint64_t seed) {
  pipeline::GenerateOptions o;
  o.prompt = prompt;
  o.steps = 20;
  o.sampler = "ddim";
  o.guidance_scale = 5.0;
  o.width = o.height = 64;
  o.seed = seed;
  auto const g = pipeline::txt2img<float, Cpu>(ctx, sd, o);
  Tensor<float, Cpu> img(Shape{3, 64, 64});
  for (Index k = 0; k < img.numel(); ++k) img(k) = std::clamp((g.images(k) + 1.0f) * 0.5f, 0.0f, 1.0f);
  return img;
}

}  // namespace

TEST_CASE("sdlora draws diffusers' images with the toy model", "[toy][e2e]") {
  // tools/fixtures/make_toy_model.py: StableDiffusionPipeline.from_pretrained(data/models/toy-world) with DDIM,
  // 20 steps, guidance 5, 64 px, torch.Generator("cpu").manual_seed(seed). Tolerance: mean |diff| <= 1/255 and
  // max |diff| <= 8/255 per image (float32 on both sides; summation order differs).
  Context<Cpu> ctx;
  auto sd = load_toy();
  io::SafetensorsFile ref(test::fixture("toy_model/reference.safetensors"));
  for (int i = 0; i < 3; ++i) {
    std::string const prompt = ref.metadata().at("prompt_" + std::to_string(i));
    auto const seed = std::stoull(ref.metadata().at("seed_" + std::to_string(i)));
    auto const expected = ref.load<float>("image_" + std::to_string(i));  // (1, 3, 64, 64)
    auto const got = draw(ctx, sd, prompt, seed);
    double sum = 0, worst = 0;
    for (Index k = 0; k < got.numel(); ++k) {
      double const d = std::abs(double(got(k)) - double(expected(k)));
      sum += d;
      worst = std::max(worst, d);
    }
    INFO(prompt << ": mean |diff| " << sum / double(got.numel()) * 255 << "/255, max " << worst * 255 << "/255");
    CHECK(sum / double(got.numel()) <= 1.0 / 255);
    CHECK(worst <= 8.0 / 255);
  }
}

TEST_CASE("The toy model draws the colour its prompt names", "[toy][e2e]") {
  // 20 evaluation prompts (train::toy_prompts(20, 1)), one image each. Chance is about 1 in 7 for the colour, the
  // background and the shape. Measured with the shipped model: colour 15/20 (misses: red and orange confused, a shape
  // too small), background 20/20, shape first 7/20. Issue 14 asks 16/20 for the colour: not reached yet; the bars
  // below guard what the model has learned.
  Context<Cpu> ctx;
  auto sd = load_toy();
  auto const prompts = train::toy_prompts(20, 1);
  int colour = 0, background = 0, shape = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto const m = eval::measure_toy_image(draw(ctx, sd, prompts[i], 100 + i), prompts[i]);
    colour += m.color_match.value_or(false);
    background += m.background_match.value_or(false);
    shape += m.shape_first.value_or(false);
  }
  INFO("colour " << colour << "/20, background " << background << "/20, shape first " << shape << "/20");
  CHECK(colour >= 12);
  CHECK(background >= 17);
  CHECK(shape >= 5);
}
