/// @file mixed_precision_test.cpp
/// @brief Training with 16-bit saved activations (Context::saved_activations) on the tiny SD 1.x model: one LoRA step
/// against diffusers' float step (the one_step_lora fixture), with and without gradient checkpointing, and the
/// UNet's kept bytes halved.
#include <catch2/catch.hpp>

#include <algorithm>  // std::max
#include <cmath>      // std::sqrt
#include <string>     // std::string

#include <sdlora/pipeline.hpp>
#include <sdlora/train/trainer.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"
#include "trainer/recipes.hpp"  // fixture_batch, fixture_name

using namespace sdlora;

namespace {
/// sdlora's LoRA gradients and diffusers' 16-bit ones (fixture one_step_lora_mixed, "grad_<name>.") against
/// diffusers' float32 ones (one_step_lora): relative L2 over all gradients together, and the worst single one.
struct GradientErrors {
  double ours_all, theirs_all, ours_worst, theirs_worst;
};
template <class Params>
GradientErrors gradient_errors(Params const& params, io::SafetensorsFile& ref, io::SafetensorsFile& mixed,
                               std::string const& name) {
  double ours_sq = 0, theirs_sq = 0, ref_sq = 0, ours_worst = 0, theirs_worst = 0;
  for (auto const& p : params) {
    std::string const key = test::fixture_name(p.name);
    auto const g32 = ref.load<float>("grad." + key);
    auto const g16 = mixed.load<float>("grad_" + name + "." + key);
    double const norm = std::sqrt(test::inner(g32, g32));
    double const e_ours = test::rel_l2(p.param->grad, g32), e_theirs = test::rel_l2(g16, g32);
    ours_sq += e_ours * e_ours * norm * norm;
    theirs_sq += e_theirs * e_theirs * norm * norm;
    ref_sq += norm * norm;
    ours_worst = std::max(ours_worst, e_ours);
    theirs_worst = std::max(theirs_worst, e_theirs);
  }
  return {std::sqrt(ours_sq / ref_sq), std::sqrt(theirs_sq / ref_sq), ours_worst, theirs_worst};
}
}  // namespace

TEST_CASE("A LoRA step keeping BF16 / F16 activations is as close to diffusers' float step as diffusers' own "
          "mixed-precision step", "[train][mixed]") {
  // The reference for "close enough": diffusers' train_text_to_image_lora step on the same inputs with
  // --mixed_precision bf16 / fp16 (frozen networks in the 16-bit type, LoRA in float32, autocast; fixture
  // one_step_lora_mixed), measured against its float32 step (one_step_lora). sdlora keeps only the saved activations
  // in 16 bits and computes in float, so over all LoRA gradients together it must do no worse than diffusers' mixed
  // step. Single gradients are sums over thousands of rounded products, some nearly cancelling, and the two round
  // at different points (sdlora each layer's kept input, diffusers each matmul's output and every weight): their
  // errors are draws of one size, not ordered, so the worst of sdlora's is held to 2.5x diffusers' worst (measured:
  // BF16 0.19 vs 0.093 on the same ill-conditioned gradient, 0.08 with checkpointing; F16 0.011 vs 0.0071). The
  // float step meets 1e-4 (one_step_test).
  io::SafetensorsFile ref(test::fixture("train/one_step_lora.safetensors"));
  io::SafetensorsFile mixed(test::fixture("train/one_step_lora_mixed.safetensors"));
  for (bool checkpointing : {false, true})
    for (auto [d, name] : {std::pair{DType::BF16, "bf16"}, std::pair{DType::F16, "fp16"}}) {
      INFO(dtype_name(d) << (checkpointing ? ", gradient checkpointing" : ""));
      Context<Cpu> ctx;
      ctx.saved_activations = d;
      auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
      train::TrainerOptions o;
      o.rank = 4;
      o.alpha = 4;
      o.gradient_checkpointing = checkpointing;
      train::Trainer<float> trainer(ctx, sd, o);
      auto params = trainer.parameters();
      REQUIRE_FALSE(params.empty());
      for (auto const& p : params)
        p.param->value = ref.load<float>("before." + test::fixture_name(p.name), p.param->shape());
      double const loss = trainer.forward_backward(test::fixture_batch(ref));
      double const want = double(ref.load<float>("loss")(0));
      double const theirs = double(mixed.load<float>(std::string("loss.") + name)(0));
      CHECK(std::abs(loss - want) <= std::abs(theirs - want));
      auto const [ours_all, theirs_all, ours_worst, theirs_worst] = gradient_errors(params, ref, mixed, name);
      INFO("sdlora: " << ours_all << " overall, worst " << ours_worst << "; diffusers: " << theirs_all << ", worst "
                      << theirs_worst);
      CHECK(ours_all <= theirs_all);
      CHECK(ours_worst <= 2.5 * theirs_worst);
      CHECK(ours_all > 1e-5);  // the rounding happened (the float step is within ~1e-6 of the fixture)
    }
}

TEST_CASE("A LoRA step in bf16 compute, bf16 weights and activations is as close to diffusers' float step as "
          "diffusers' own bf16 mixed-precision step", "[train][mixed][bf16]") {
  // What diffusers' --mixed_precision bf16 does (frozen networks in bf16, every matmul and convolution under
  // autocast in bf16, LoRA in float32): Context::compute = BF16 with BF16 weights and saved activations, on every bf16
  // unit this CPU has. Against diffusers' float32 step (one_step_lora), over all LoRA gradients together no worse
  // than 1.5x diffusers' own bf16 step (one_step_lora_mixed), the worst single gradient no worse than 2.5x its worst
  // (the two round at different points; see the test above), the loss within 2x its error.
  io::SafetensorsFile ref(test::fixture("train/one_step_lora.safetensors"));
  io::SafetensorsFile mixed(test::fixture("train/one_step_lora_mixed.safetensors"));
  for (auto unit : {cpu::Bf16Unit::kRounded, cpu::Bf16Unit::kDot, cpu::Bf16Unit::kAmx}) {
    if (unit > cpu::detected_bf16_unit()) continue;
    INFO(cpu::bf16_unit_name(unit));
    cpu::bf16_unit_cap().store(int(unit));
    Context<Cpu> ctx;
    ctx.saved_activations = DType::BF16;
    ctx.compute = DType::BF16;
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    models::set_weight_storage(sd, DType::BF16);
    train::TrainerOptions o;
    o.rank = 4;
    o.alpha = 4;
    train::Trainer<float> trainer(ctx, sd, o);
    auto params = trainer.parameters();
    REQUIRE_FALSE(params.empty());
    for (auto const& p : params) p.param->value = ref.load<float>("before." + test::fixture_name(p.name), p.param->shape());
    double const loss = trainer.forward_backward(test::fixture_batch(ref));
    cpu::bf16_unit_cap().store(int(cpu::Bf16Unit::kAuto));
    double const want = double(ref.load<float>("loss")(0));
    double const theirs = double(mixed.load<float>("loss.bf16")(0));
    INFO("loss " << loss << ", float " << want << ", diffusers bf16 " << theirs);
    CHECK(std::abs(loss - want) <= 2 * std::abs(theirs - want) + 1e-6);
    auto const [ours_all, theirs_all, ours_worst, theirs_worst] = gradient_errors(params, ref, mixed, "bf16");
    INFO("sdlora: " << ours_all << " overall, worst " << ours_worst << "; diffusers: " << theirs_all << ", worst "
                    << theirs_worst);
    CHECK(ours_all <= 1.5 * theirs_all);
    CHECK(ours_worst <= 2.5 * theirs_worst);
    CHECK(ours_all > 1e-4);  // bf16's rounding, not float's
  }
}

TEST_CASE("16-bit saved activations halve what a UNet training forward keeps, and backward releases it all",
          "[train][mixed]") {
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  lora::inject(sd.unet, {.rank = 2});
  auto const& c = sd.unet.config();
  auto const x = test::random_tensor<float>(Shape{2, c.in_channels, 8, 8}, 1);
  auto const t = Tensor<float>::from_view(test::random_tensor<float>(Shape{2}, 2).view());
  auto const text = test::random_tensor<float>(Shape{2, 7, c.cross_attention_dim}, 3);
  std::int64_t kept[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    Context<Cpu> ctx;
    ctx.saved_activations = i == 0 ? DType::F32 : DType::BF16;
    std::int64_t const before = nn::saved_tensor_bytes().load();
    auto y = sd.unet.forward(ctx, x.view(), t.view(), text.view(), nn::Mode::Train);
    kept[i] = nn::saved_tensor_bytes().load() - before;
    sd.unet.backward(ctx, y.view());
    CHECK(nn::saved_tensor_bytes().load() == before);
  }
  CHECK(kept[0] > 0);
  CHECK(2 * kept[1] == kept[0]);
}
