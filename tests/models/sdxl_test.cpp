#include <catch2/catch.hpp>

#include <sdlora/models/clip_text.hpp>
#include <sdlora/models/unet.hpp>
#include <sdlora/models/weights.hpp>

#include "models/gradients.hpp"  // all_gradients, check_bit_identical
#include "support.hpp"

using namespace sdlora;

// The tiny SDXL-shaped model of tools/fixtures/make_sdxl.py: a UNet with addition_embed_type "text_time", no
// attention in its first block, transformer_layers_per_block (1, 1, 2) and per-block heads; a CLIPTextModel and a
// CLIPTextModelWithProjection (gelu). Tolerance: whole networks in fp32 vs torch fp32, relative L2 <= 1e-4.

namespace {
std::string const kDir = "models/tiny-sdxl/";

template <class Model>
Model load(std::string const& sub, std::string const& file, Model model) {
  io::SafetensorsFile f(test::fixture(kDir + sub + "/" + file));
  models::load_parameters<float>(model, models::sources_from_file(f), sub);
  return model;
}
models::ClipTextModel<float> load_text(std::string const& sub) {
  auto cfg = models::ClipTextConfig::from_json(models::read_json(test::fixture(kDir + sub + "/config.json")));
  return load(sub, "model.safetensors", models::ClipTextModel<float>(cfg));
}
}  // namespace

TEST_CASE("Gradient checkpointing per transformer block gives bit-identical SDXL UNet gradients",
          "[models][unet][sdxl]") {
  // The tiny SDXL UNet has two BasicTransformerBlocks per Transformer2DModel at its last level: checkpointing keeps
  // each block's input and recomputes the blocks one at a time in reverse inside backward, the same float operations
  // in the same order, so every gradient (inputs, added conditions, parameters) must be equal bit for bit.
  Context<Cpu> ctx;
  auto cfg = models::UNetConfig::from_json(models::read_json(test::fixture(kDir + "unet/config.json")));
  REQUIRE(cfg.transformer_layers_per_block.back() == 2);
  io::SafetensorsFile ref(test::fixture("models/tiny-sdxl-outputs.safetensors"));
  auto const text_embeds = ref.load<float>("unet.text_embeds");
  auto const time_ids = ref.load<float>("unet.time_ids");
  auto run = [&](bool checkpointing) {
    auto unet = load("unet", "diffusion_pytorch_model.safetensors", models::UNet2DConditionModel<float>(cfg));
    nn::set_trainable(unet, true);
    unet.set_gradient_checkpointing(checkpointing);
    unet.forward(ctx, ref.load<float>("unet.sample").view(), ref.load<float>("unet.timesteps").view(),
                 ref.load<float>("unet.encoder_hidden_states").view(), {text_embeds.view(), time_ids.view()},
                 nn::Mode::Train);
    return test::all_gradients(unet.backward(ctx, ref.load<float>("unet.grad_upstream")), unet);
  };
  test::check_bit_identical(run(false), run(true));
}

TEST_CASE("SDXL UNet with text_time micro-conditioning matches diffusers, forward and gradients",
          "[models][unet][sdxl][conformance]") {
  Context<Cpu> ctx;
  auto cfg = models::UNetConfig::from_json(models::read_json(test::fixture(kDir + "unet/config.json")));
  REQUIRE(cfg.addition_embed_type == "text_time");
  auto unet = load("unet", "diffusion_pytorch_model.safetensors", models::UNet2DConditionModel<float>(cfg));
  io::SafetensorsFile ref(test::fixture("models/tiny-sdxl-outputs.safetensors"));
  auto const text_embeds = ref.load<float>("unet.text_embeds");
  auto const time_ids = ref.load<float>("unet.time_ids");
  auto y = unet.forward(ctx, ref.load<float>("unet.sample").view(), ref.load<float>("unet.timesteps").view(),
                        ref.load<float>("unet.encoder_hidden_states").view(), {text_embeds.view(), time_ids.view()},
                        nn::Mode::Train);
  INFO("forward rel " << test::rel_l2(y, ref.load<float>("unet.out")));
  CHECK(test::rel_l2(y, ref.load<float>("unet.out")) < 1e-4);
  auto g = unet.backward(ctx, ref.load<float>("unet.grad_upstream"));
  CHECK(test::rel_l2(g.dsample, ref.load<float>("unet.grad_sample")) < 1e-4);
  CHECK(test::rel_l2(g.dencoder_hidden_states, ref.load<float>("unet.grad_encoder_hidden_states")) < 1e-4);
  CHECK(test::rel_l2(g.dtext_embeds, ref.load<float>("unet.grad_text_embeds")) < 1e-4);

  // The micro-conditioning is used: other time ids change the prediction.
  auto other_ids = Tensor<float>::from_view(time_ids.view());
  other_ids.at({0, 0}) = 1024.0f;
  auto y2 = unet.forward(ctx, ref.load<float>("unet.sample").view(), ref.load<float>("unet.timesteps").view(),
                         ref.load<float>("unet.encoder_hidden_states").view(), {text_embeds.view(), other_ids.view()});
  CHECK(test::rel_l2(y2, y) > 1e-3);

  // Missing or misshapen added conditions are refused with the expected shape.
  CHECK_THROWS_WITH(unet.forward(ctx, ref.load<float>("unet.sample").view(), ref.load<float>("unet.timesteps").view(),
                                 ref.load<float>("unet.encoder_hidden_states").view()),
                    Catch::Contains("time_ids (2, 6)"));
}

TEST_CASE("SDXL text encoders: penultimate hidden states and text_encoder_2's projected pooled output match "
          "transformers", "[models][clip][sdxl][conformance]") {
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("models/tiny-sdxl-outputs.safetensors"));
  auto text = load_text("text_encoder");
  auto text_2 = load_text("text_encoder_2");
  CHECK_FALSE(text.config().with_projection);
  REQUIRE(text_2.config().with_projection);

  auto a = text.forward_hidden_and_pooled(ctx, ref.load<std::int32_t>("text.input_ids"));
  CHECK(test::rel_l2(a.hidden, ref.load<float>("text.penultimate_hidden_state")) < 1e-4);
  CHECK(test::rel_l2(a.pooled, ref.load<float>("text.pooler_output")) < 1e-4);
  auto ids_2 = ref.load<std::int32_t>("text_2.input_ids");
  auto b = text_2.forward_hidden_and_pooled(ctx, ids_2);
  CHECK(test::rel_l2(b.hidden, ref.load<float>("text_2.penultimate_hidden_state")) < 1e-4);
  CHECK(test::rel_l2(b.pooled, ref.load<float>("text_2.text_embeds")) < 1e-4);
  auto full = text_2.forward(ctx, ids_2);
  CHECK(test::rel_l2(full.last_hidden_state, ref.load<float>("text_2.last_hidden_state")) < 1e-4);
  CHECK(test::rel_l2(full.text_embeds, ref.load<float>("text_2.text_embeds")) < 1e-4);
}

TEST_CASE("SDXL text encoder backward through the penultimate state and the projected pool matches finite "
          "differences", "[models][clip][sdxl]") {
  // Double precision, central differences (eps 1e-6): relative L2 <= 1e-6 on the gradient of the trainable
  // token-embedding rows for L = <hidden, u> + <pooled, v>.
  Context<Cpu> ctx;
  auto cfg = models::ClipTextConfig::from_json(models::read_json(test::fixture(kDir + "text_encoder_2/config.json")));
  cfg.vocab_size = 12;
  models::ClipTextModel<double> text(cfg);
  std::uint32_t seed = 70;
  nn::for_each_parameter(text, [&](std::string const&, auto& p) {
    p.value = test::random_tensor<double>(p.value.shape(), seed++);
  });
  Tensor<std::int32_t> ids(Shape{2, 5});
  std::int32_t const raw[] = {10, 3, 11, 0, 0, 10, 4, 5, 11, 0};
  for (Index i = 0; i < 10; ++i) ids(i) = raw[i];
  auto const u = test::random_tensor<double>(Shape{2, 5, cfg.hidden_size}, 1);
  auto const v = test::random_tensor<double>(Shape{2, cfg.projection_dim}, 2);
  auto loss = [&] {
    auto o = text.forward_hidden_and_pooled(ctx, ids);
    return test::inner(o.hidden, u) + test::inner(o.pooled, v);
  };
  auto& w = text.token_embedding.weight;
  w.set_trainable(true);
  text.forward_hidden_and_pooled(ctx, ids, nn::Mode::Train);
  text.backward_hidden_and_pooled(ctx, u.view(), v.view());
  auto analytic = Tensor<double>::from_view(w.grad.view());
  auto numeric = test::numeric_gradient(w.value, loss);
  CHECK(test::rel_l2(analytic, numeric) < 1e-6);
}
