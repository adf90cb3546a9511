#include <catch2/catch.hpp>

#include <sdlora/pipeline.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;

// diffusers' StableDiffusionXLPipeline on the tiny SDXL-shaped folder (tools/fixtures/make_sdxl.py): 4 steps,
// seed 42, guidance 5, "a photo of a cat". Tolerance: final latents and decoded images of the whole fp32 pipeline,
// relative L2 <= 1e-4, and the decoded image within 1/255 mean absolute difference in 8-bit pixels (2/255 in [-1, 1]).

namespace {
models::StableDiffusion<float>& tiny_sdxl() {
  static auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sdxl"));
  return sd;
}
pipeline::GenerateOptions sdxl_options(std::string const& sampler) {
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.steps = 4;
  o.guidance_scale = 5.0;
  o.width = o.height = 16;
  o.seed = 42;
  o.sampler = sampler;
  return o;
}
double mean_abs_diff(Tensor<float> const& a, Tensor<float> const& b) {
  REQUIRE(a.numel() == b.numel());
  double s = 0;
  for (Index i = 0; i < a.numel(); ++i) s += std::abs(double(a(i)) - double(b(i)));
  return s / double(a.numel());
}
}  // namespace

TEST_CASE("An SDXL diffusers folder loads with both text encoders and tokenizers", "[pipeline][sdxl]") {
  auto& sd = tiny_sdxl();
  CHECK(sd.is_sdxl());
  CHECK(sd.base_model == "sdxl");
  CHECK(sd.force_zeros_for_empty_prompt);
  CHECK(sd.text_encoder_2.config().with_projection);
  CHECK(sd.tokenizer_2.pad_id() == 0);   // "!"
  CHECK(sd.tokenizer.pad_id() == 49407);  // "<|endoftext|>"
  CHECK(sd.vae.config().scaling_factor == Approx(0.13025));
}

TEST_CASE("SDXL txt2img reproduces diffusers' latents and images", "[pipeline][sdxl][conformance]") {
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("models/tiny-sdxl-txt2img.safetensors"));
  struct Run {
    std::string name, sampler;
    bool karras;
  };
  for (auto const& run : {Run{"euler", "euler", false}, Run{"euler_a", "euler_a", false},
                          Run{"dpmpp_2m_karras", "dpmpp_2m", true}, Run{"ddim_negative", "ddim", false},
                          Run{"euler_microcond", "euler", false}}) {
    INFO(run.name);
    auto o = sdxl_options(run.sampler);
    o.karras = run.karras;
    if (run.name == "ddim_negative") {  // a negative prompt (encoded, not zeros) at a non-square size
      o.negative_prompt = "blurry, dark";
      o.width = 24;
    }
    if (run.name == "euler_microcond") {  // diffusers' original_size=(48, 32) etc. are (height, width)
      o.original_height = 48;
      o.original_width = 32;
      o.crop_top = 4;
      o.crop_left = 8;
      o.target_height = 16;
      o.target_width = 24;
    }
    auto out = pipeline::txt2img(ctx, tiny_sdxl(), o);
    auto const latents = ref.load<float>(run.name + ".latents");
    auto const image = ref.load<float>(run.name + ".image");
    CHECK(test::rel_l2(out.latents, latents) < 1e-4);
    CHECK(test::rel_l2(out.images, image) < 1e-4);
    CHECK(mean_abs_diff(out.images, image) < 2.0 / 255.0);
  }
}

TEST_CASE("An SDXL single file (SGM layout) loads to the folder's weights and generates the same images",
          "[pipeline][sdxl][conformance]") {
  // tiny-sdxl.safetensors holds the folder's fp16 weights in the single-file layout (label_emb, conditioner
  // embedders, OpenCLIP fused in_proj and transposed text_projection); the folder gives only the configs here.
  Context<Cpu> ctx;
  models::LoadOptions lo;
  lo.config_dir = test::fixture("models/tiny-sdxl");
  auto file = models::load_stable_diffusion<float>(test::fixture("models/tiny-sdxl.safetensors"), lo);
  CHECK(file.is_sdxl());
  CHECK(file.base_model == "sdxl");
  CHECK(file.force_zeros_for_empty_prompt);
  CHECK(file.tokenizer_2.pad_id() == 0);
  CHECK(file.ignored_keys == 1);  // conditioner.embedders.1.model.logit_scale
  std::map<std::string, Tensor<float>> folder_params;
  nn::for_each_parameter(tiny_sdxl().text_encoder_2, [&](std::string const& name, auto& p) {
    folder_params[name] = Tensor<float>::from_view(p.value.view());
  });
  std::size_t compared = 0;
  nn::for_each_parameter(file.text_encoder_2, [&](std::string const& name, auto& p) {
    INFO(name);
    REQUIRE(folder_params.count(name) == 1);
    CHECK(test::rel_l2(p.value, folder_params[name]) == 0.0);
    ++compared;
  });
  CHECK(compared == folder_params.size());
  io::SafetensorsFile ref(test::fixture("models/tiny-sdxl-txt2img.safetensors"));
  auto const out = pipeline::txt2img(ctx, file, sdxl_options("euler"));
  auto const same = pipeline::txt2img(ctx, tiny_sdxl(), sdxl_options("euler"));
  CHECK(test::rel_l2(out.latents, same.latents) == 0.0);
  CHECK(test::rel_l2(out.latents, ref.load<float>("euler.latents")) < 1e-4);
}

TEST_CASE("SDXL LoRAs on the UNet and both text encoders match diffusers' load_lora_weights, kohya and PEFT",
          "[pipeline][sdxl][lora][conformance]") {
  // One LoRA (rank 4, alpha 8) on the UNet's and both text encoders' attention projections at scale 0.7: diffusers'
  // PEFT layout (unet., text_encoder., text_encoder_2.) and kohya's (SGM block names, lora_te1_, lora_te2_).
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("models/tiny-sdxl-txt2img.safetensors"));
  for (std::string layout : {"peft", "kohya"}) {
    INFO(layout);
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sdxl"));
    auto loaded = pipeline::apply_loras(sd, {{test::fixture("models/tiny-sdxl-lora-" + layout + ".safetensors"), 0.7}});
    REQUIRE(loaded.size() == 1);
    CHECK(loaded[0].unet_layers == 136);  // 17 transformer blocks x (attn1, attn2) x (to_q, to_k, to_v, to_out.0)
    CHECK(loaded[0].text_encoder_layers == 4 * (2 + 3));  // q, k, v, out of 2 + 3 encoder layers
    auto out = pipeline::txt2img(ctx, sd, sdxl_options("euler"));
    CHECK(test::rel_l2(out.latents, ref.load<float>("lora_" + layout + ".latents")) < 1e-4);
    CHECK(test::rel_l2(out.images, ref.load<float>("lora_" + layout + ".image")) < 1e-4);
    // Merged into the weights: the same image.
    pipeline::merge_loras(ctx, sd);
    auto merged = pipeline::txt2img(ctx, sd, sdxl_options("euler"));
    CHECK(test::rel_l2(merged.latents, ref.load<float>("lora_" + layout + ".latents")) < 1e-4);
  }
  // Without SDXL, text_encoder_2 entries are refused with one line naming the file.
  auto sd1 = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  CHECK_THROWS_WITH(pipeline::apply_loras(sd1, {{test::fixture("models/tiny-sdxl-lora-peft.safetensors"), 1.0}}),
                    Catch::Contains("tiny-sdxl-lora-peft.safetensors") && Catch::Contains("SDXL LoRA"));
}
