/// @file lora_test.cpp
/// @brief LoRA files in the whole txt2img pipeline against diffusers (tools/fixtures/make_pipeline.py): the tiny SD1
/// model with the same LoRA in PEFT and kohya layouts at diffusers' adapter weight 0.5, as adapters and merged.
#include <catch2/catch.hpp>
#include <filesystem>            // std::filesystem::temp_directory_path
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links
#include <sdlora/pipeline.hpp>
#include <string>  // std::string

#include "pipeline/fixture_options.hpp"
#include "support.hpp"

using namespace sdlora;

namespace {
models::StableDiffusion<float> load_tiny() { return models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1")); }

}  // namespace

TEST_CASE("LoRA files at scale 0.5 reproduce diffusers' set_adapters(weight 0.5), as adapters and merged",
          "[pipeline][lora][conformance]") {
  // Tolerance: the whole fp32 pipeline (4 UNet steps with CFG, VAE decode) vs diffusers, relative L2 <= 1e-4 as for
  // txt2img without LoRA. Merging changes the rounding of W + s B A only (O(1e-7) relative per weight).
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("pipeline/txt2img.safetensors"));
  for (std::string layout : {"peft", "kohya"}) {
    for (auto mode : {lora::ApplyMode::Adapter, lora::ApplyMode::Merge}) {
      INFO(layout << (mode == lora::ApplyMode::Merge ? " merged" : " adapter"));
      auto sd = load_tiny();
      auto loaded = pipeline::apply_loras(sd, {{test::fixture("pipeline/lora_" + layout + ".safetensors"), 0.5}}, mode);
      REQUIRE(loaded.size() == 1);
      CHECK(loaded[0].name == "lora_" + layout);
      CHECK(loaded[0].unet_layers == 48);  // 4 projections x 2 attentions x 6 transformer blocks
      CHECK(loaded[0].text_encoder_layers == 0);
      for (std::string sampler : {"euler", "ddim"}) {
        INFO(sampler);
        auto out = pipeline::txt2img(ctx, sd, test::pipeline_fixture_options(sampler));
        std::string const key = "lora_" + layout + "." + sampler;
        CHECK(test::rel_l2(out.latents, ref.load<float>(key + ".latents")) < 1e-4);
        CHECK(test::rel_l2(out.images, ref.load<float>(key + ".image")) < 1e-4);
        // The LoRA must matter: without it the output is diffusers' plain run, far from the LoRA run.
        CHECK(test::rel_l2(out.latents, ref.load<float>(sampler + ".latents")) > 1e-2);
      }
    }
  }
}

TEST_CASE("A LoRA's scale can be swept after loading (adapters, and merged via unmerge/merge)",
          "[pipeline][lora][conformance]") {
  // Tolerance as above (1e-4): loading at 1.0 then rescaling to 0.5 must give the 0.5 run; a merge/unmerge cycle
  // leaves each weight within a few ulps.
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("pipeline/txt2img.safetensors"));
  auto sd = load_tiny();
  auto plain = pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler"));
  CHECK(test::rel_l2(plain.latents, ref.load<float>("euler.latents")) < 1e-4);

  auto loaded = pipeline::apply_loras(sd, {{test::fixture("pipeline/lora_kohya.safetensors"), 1.0}});
  auto full = pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler"));
  CHECK(test::rel_l2(full.latents, ref.load<float>("lora_kohya.euler.latents")) > 1e-2);

  pipeline::set_lora_scale(sd, loaded[0], 0.5);
  CHECK(test::rel_l2(pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler")).latents,
                     ref.load<float>("lora_kohya.euler.latents")) < 1e-4);

  pipeline::set_lora_scale(sd, loaded[0], 0.0);  // scale 0 = no LoRA
  CHECK(test::rel_l2(pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler")).latents,
                     ref.load<float>("euler.latents")) < 1e-4);

  pipeline::set_lora_scale(sd, loaded[0], 0.5);
  pipeline::merge_loras(ctx, sd);
  CHECK_THROWS_WITH(pipeline::set_lora_scale(sd, loaded[0], 1.0), Catch::Contains("unmerge"));
  CHECK(test::rel_l2(pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler")).latents,
                     ref.load<float>("lora_kohya.euler.latents")) < 1e-4);
  pipeline::unmerge_loras(ctx, sd);
  pipeline::set_lora_scale(sd, loaded[0], 1.0);
  CHECK(test::rel_l2(pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler")).latents, full.latents) < 1e-5);
}

TEST_CASE("Text-encoder LoRA parts reach the text encoder, in both file layouts", "[pipeline][lora]") {
  // A LoRA injected into the text encoder (random B so it is not a no-op) and saved as kohya and PEFT files must,
  // loaded into a fresh model, reproduce the injected model's text embeddings (same float math: <= 1e-6) whether
  // attached or merged (merging rounds W + s B A once per weight: <= 1e-5).
  Context<Cpu> ctx;
  auto src = load_tiny();
  lora::inject(src.text_encoder, {.target = "q_proj|k_proj|v_proj|out_proj", .rank = 2, .alpha = 4.0});
  lora::for_each_adapter(src.text_encoder, [](std::string const&, auto&, auto& a) {
    a.lora_B.value = test::random_tensor<float>(a.lora_B.value.shape(), 5);
  });
  std::vector<std::string> const prompt{"a photo of a cat"};
  auto const want = pipeline::encode_prompts(ctx, src, prompt);
  auto fresh = load_tiny();
  CHECK(test::rel_l2(pipeline::encode_prompts(ctx, fresh, prompt), want) > 1e-2);

  auto const dir = std::filesystem::temp_directory_path() / "sdlora_lora_test";
  std::filesystem::create_directories(dir);
  std::string const kohya = (dir / "te_kohya.safetensors").string(), peft = (dir / "te_peft.safetensors").string();
  lora::save_kohya(kohya, src.text_encoder, "text_encoder");
  lora::save_peft(peft, src.text_encoder, "text_encoder");
  for (auto const& path : {kohya, peft})
    for (auto mode : {lora::ApplyMode::Adapter, lora::ApplyMode::Merge}) {
      INFO(path << (mode == lora::ApplyMode::Merge ? " merged" : " adapter"));
      auto sd = load_tiny();
      auto loaded = pipeline::apply_loras(sd, {{path, 1.0}}, mode);
      CHECK(loaded[0].text_encoder_layers == 8);  // 4 projections x 2 layers
      CHECK(loaded[0].unet_layers == 0);
      CHECK(test::rel_l2(pipeline::encode_prompts(ctx, sd, prompt), want) <
            (mode == lora::ApplyMode::Merge ? 1e-5 : 1e-6));
    }
}

TEST_CASE("apply_loras refuses files that do not fit the model", "[pipeline][lora]") {
  auto sd = load_tiny();
  CHECK_THROWS_WITH(pipeline::apply_loras(sd, {{"/nonexistent/x.safetensors", 1.0}}),
                    Catch::Contains("/nonexistent/x.safetensors"));
  // A model file is not a LoRA.
  CHECK_THROWS_WITH(pipeline::apply_loras(sd, {{test::fixture("models/tiny-sd1.safetensors"), 1.0}}),
                    Catch::Contains("no LoRA layers"));
}
