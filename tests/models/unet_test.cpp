#include <catch2/catch.hpp>

#include <string>  // std::string
#include <vector>  // std::vector

#include <sdlora/lora/inject.hpp>  // lora::inject, lora::is_lora_parameter
#include <sdlora/models/unet.hpp>
#include <sdlora/models/weights.hpp>

#include "models/gradients.hpp"  // all_gradients, check_bit_identical
#include "support.hpp"

using namespace sdlora;

namespace {
models::UNet2DConditionModel<float> load_unet(std::string const& variant) {
  std::string const dir = test::fixture("models/tiny-" + variant + "/");
  auto cfg = models::UNetConfig::from_json(models::read_json(dir + "unet/config.json"));
  models::UNet2DConditionModel<float> unet(cfg);
  io::SafetensorsFile file(dir + "unet/diffusion_pytorch_model.safetensors");
  models::load_parameters<float>(unet, models::sources_from_file(file), "unet");
  return unet;
}
}  // namespace

TEST_CASE("UNet forward and input gradients match diffusers (tiny SD1 config)", "[models][unet][conformance]") {
  // Tolerance: whole model in fp32 vs torch fp32, relative L2 <= 1e-4 (DESIGN.md section 4).
  Context<Cpu> ctx;
  auto unet = load_unet("sd1");
  io::SafetensorsFile ref(test::fixture("models/tiny-sd1-outputs.safetensors"));
  auto sample = ref.load<float>("unet.sample");
  auto ts = ref.load<float>("unet.timesteps");
  auto text = ref.load<float>("unet.encoder_hidden_states");
  auto y = unet.forward(ctx, sample, ts, text, nn::Mode::Train);
  INFO("forward rel " << test::rel_l2(y, ref.load<float>("unet.out")));
  CHECK(test::rel_l2(y, ref.load<float>("unet.out")) < 1e-4);
  auto g = unet.backward(ctx, ref.load<float>("unet.grad_upstream"));
  CHECK(test::rel_l2(g.dsample, ref.load<float>("unet.grad_sample")) < 1e-4);
  CHECK(test::rel_l2(g.dencoder_hidden_states, ref.load<float>("unet.grad_encoder_hidden_states")) < 1e-4);
}

TEST_CASE("A missing or misshapen UNet weight is named in the load error", "[models][unet]") {
  std::string const dir = test::fixture("models/tiny-sd1/");
  auto cfg = models::UNetConfig::from_json(models::read_json(dir + "unet/config.json"));
  cfg.cross_attention_dim = 12;  // every attn2.to_k / to_v now has the wrong shape
  models::UNet2DConditionModel<float> unet(cfg);
  io::SafetensorsFile file(dir + "unet/diffusion_pytorch_model.safetensors");
  auto sources = models::sources_from_file(file);
  sources.erase("conv_in.weight");
  CHECK_THROWS_WITH(models::load_parameters<float>(unet, sources, "unet"),
                    Catch::Contains("conv_in.weight") && Catch::Contains("attn2.to_k.weight") &&
                        Catch::Contains("(8, 12)") && Catch::Contains("1 missing keys"));
}

namespace {
/// all_gradients of one training step of the tiny UNet on the fixture's inputs, the model prepared by `prepare`,
/// with gradient checkpointing on or off.
template <class Prepare>
std::vector<float> step_gradients(Prepare&& prepare, bool checkpointing) {
  Context<Cpu> ctx;
  io::SafetensorsFile ref(test::fixture("models/tiny-sd1-outputs.safetensors"));
  auto unet = load_unet("sd1");
  prepare(unet);
  unet.set_gradient_checkpointing(checkpointing);
  unet.forward(ctx, ref.load<float>("unet.sample"), ref.load<float>("unet.timesteps"),
               ref.load<float>("unet.encoder_hidden_states"), nn::Mode::Train);
  return test::all_gradients(unet.backward(ctx, ref.load<float>("unet.grad_upstream")), unet);
}
}  // namespace

TEST_CASE("Gradient checkpointing gives bit-identical UNet gradients", "[models][unet]") {
  // Checkpointed blocks keep only their inputs and recompute their forward inside backward: the same float
  // operations in the same order, so every gradient must be equal bit for bit.
  auto const all_trainable = [](auto& unet) { nn::set_trainable(unet, true); };
  test::check_bit_identical(step_gradients(all_trainable, false), step_gradients(all_trainable, true));
}

TEST_CASE("Gradient checkpointing with LoRA gives bit-identical gradients, whether the recompute is cut short or not",
          "[models][unet]") {
  // A frozen UNet recomputes each checkpointed block only as far as backward reads: with LoRA on the attention
  // projections, each ResNet block's conv2 and shortcut and each transformer block's ff.net.2 are skipped; with LoRA
  // on every Linear and Conv2d, their adapters must see those outputs, so the whole block is recomputed. Either way
  // the input and LoRA gradients must equal the plain backward's bit for bit. The LoRA factors get random values (B
  // starts at zero, which would leave every A gradient zero).
  for (std::string const target : {"to_q|to_k|to_v|to_out\\.0", ".*"}) {
    INFO("LoRA target " << target);
    auto const with_lora = [&](auto& unet) {
      auto const report = lora::inject(unet, {.target = target, .rank = 2, .include_conv = true});
      REQUIRE(report.layers > 0);
      std::uint32_t seed = 70;
      nn::for_each_parameter(unet, [&](std::string const& name, nn::Parameter<float>& p) {
        if (lora::is_lora_parameter(name)) p.value = test::random_tensor<float>(p.shape(), seed++);
      });
    };
    test::check_bit_identical(step_gradients(with_lora, false), step_gradients(with_lora, true));
  }
}
