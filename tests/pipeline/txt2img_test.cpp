#include <catch2/catch.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links
#include <sdlora/pipeline.hpp>

#include "pipeline/fixture_options.hpp"
#include "support.hpp"

using namespace sdlora;

namespace {
models::StableDiffusion<float>& tiny() {
  static auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  return sd;
}
}  // namespace

TEST_CASE("txt2img reproduces diffusers' latents for the same seed, for every sampler", "[pipeline][conformance]") {
  // Tolerance: final latents and decoded image of the whole fp32 pipeline vs diffusers, relative L2 <= 1e-4.
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("pipeline/txt2img.safetensors"));
  for (std::string name : {"ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "ddpm"}) {
    INFO(name);
    auto out = pipeline::txt2img(ctx, tiny(), test::pipeline_fixture_options(name));
    CHECK(test::rel_l2(out.latents, ref.load<float>(name + ".latents")) < 1e-4);
    CHECK(test::rel_l2(out.images, ref.load<float>(name + ".image")) < 1e-4);
  }
}

TEST_CASE("txt2img is deterministic per seed and different across seeds", "[pipeline]") {
  Context<Cpu> ctx;
  auto o = test::pipeline_fixture_options("euler_a");
  auto a = pipeline::txt2img(ctx, tiny(), o);
  auto b = pipeline::txt2img(ctx, tiny(), o);
  for (Index i = 0; i < a.images.numel(); ++i) REQUIRE(a.images(i) == b.images(i));
  o.seed = 43;
  auto c = pipeline::txt2img(ctx, tiny(), o);
  CHECK(test::rel_l2(c.latents, a.latents) > 1e-2);
}

TEST_CASE("Generation rejects bad sizes and can be cancelled", "[pipeline]") {
  Context<Cpu> ctx;
  auto o = test::pipeline_fixture_options("ddim");
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

TEST_CASE("on_backend copies a checkpoint parameter by parameter: the copy generates the same image", "[pipeline]") {
  // Exact: the copy on the same backend holds the same float values (16-bit weights widened, which is what the CPU
  // GEMM computes with), so the same seed must give the same bits. Adapters are refused: the copy has none.
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  models::set_weight_storage(sd, DType::BF16);
  auto copy = pipeline::on_backend<Cpu>(sd);
  Index widened = 0;
  nn::for_each_parameter(copy.unet, [&](std::string const&, nn::Parameter<float, Cpu>& p) {
    REQUIRE(!p.is_16bit());
    REQUIRE(!p.value.empty());
    ++widened;
  });
  CHECK(widened > 0);
  auto const o = test::pipeline_fixture_options("euler_a");
  auto const want = pipeline::txt2img(ctx, sd, o);
  auto const got = pipeline::txt2img(ctx, copy, o);
  for (Index i = 0; i < want.images.numel(); ++i) REQUIRE(got.images(i) == want.images(i));
  lora::inject(sd.unet, lora::InjectOptions{});
  CHECK_THROWS_WITH(pipeline::on_backend<Cpu>(sd), Catch::Contains("LoRA adapter") && Catch::Contains("to_q") &&
                                                       Catch::Contains("ApplyMode::Merge"));
}
