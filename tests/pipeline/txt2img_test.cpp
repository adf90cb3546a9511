#include <catch2/catch.hpp>

#include <sdlora/pipeline.hpp>

#include "support.hpp"

using namespace sdlora;

namespace {
models::StableDiffusion<float>& tiny() {
  static auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  return sd;
}
pipeline::GenerateOptions options(std::string const& sampler) {
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.steps = 4;
  o.guidance_scale = 7.5;
  o.width = o.height = 16;
  o.seed = 42;
  o.sampler = sampler;
  return o;
}
}  // namespace

TEST_CASE("txt2img reproduces diffusers' latents for the same seed, for every sampler", "[pipeline][conformance]") {
  // Tolerance: final latents and decoded image of the whole fp32 pipeline vs diffusers, relative L2 <= 1e-4.
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("pipeline/txt2img.safetensors"));
  for (std::string name : {"ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "ddpm"}) {
    INFO(name);
    auto out = pipeline::txt2img(ctx, tiny(), options(name));
    CHECK(test::rel_l2(out.latents, ref.load<float>(name + ".latents")) < 1e-4);
    CHECK(test::rel_l2(out.images, ref.load<float>(name + ".image")) < 1e-4);
  }
}

TEST_CASE("txt2img is deterministic per seed and different across seeds", "[pipeline]") {
  Context<Cpu> ctx;
  auto o = options("euler_a");
  auto a = pipeline::txt2img(ctx, tiny(), o);
  auto b = pipeline::txt2img(ctx, tiny(), o);
  for (Index i = 0; i < a.images.numel(); ++i) REQUIRE(a.images(i) == b.images(i));
  o.seed = 43;
  auto c = pipeline::txt2img(ctx, tiny(), o);
  CHECK(test::rel_l2(c.latents, a.latents) > 1e-2);
}

TEST_CASE("Generation rejects bad sizes and can be cancelled", "[pipeline]") {
  Context<Cpu> ctx;
  auto o = options("ddim");
  o.width = 15;
  CHECK_THROWS_WITH(pipeline::txt2img(ctx, tiny(), o), Catch::Contains("multiples of 2") && Catch::Contains("15x16"));
  o.width = 16;
  int calls = 0;
  CHECK_THROWS_AS(pipeline::txt2img(ctx, tiny(), o, [&](pipeline::StepInfo const&) { return ++calls < 2; }),
                  pipeline::GenerationCancelled);
  CHECK(calls == 2);
  o.sampler = "heun";
  CHECK_THROWS_WITH(pipeline::txt2img(ctx, tiny(), o), Catch::Contains("heun"));
}
