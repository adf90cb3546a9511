#include <catch2/catch.hpp>

#include <algorithm>  // std::copy, std::max
#include <cmath>      // std::abs
#include <map>        // std::map
#include <string>     // std::string
#include <vector>     // std::vector

#include <sdlora/models/vae.hpp>
#include <sdlora/models/weights.hpp>
#include <sdlora/train/vae_objective.hpp>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("VAE encoder moments and decoder output match diffusers (tiny config)", "[models][vae][conformance]") {
  // Tolerance: whole model in fp32 vs torch fp32, relative L2 <= 1e-4.
  Context<Cpu> ctx;
  std::string const dir = test::fixture("models/tiny-sd1/");
  models::AutoencoderKL<float> vae(models::VaeConfig::from_json(models::read_json(dir + "vae/config.json")));
  io::SafetensorsFile file(dir + "vae/diffusion_pytorch_model.safetensors");
  models::load_parameters<float>(vae, models::sources_from_file(file), "vae");
  io::SafetensorsFile ref(test::fixture("models/tiny-sd1-outputs.safetensors"));
  auto d = vae.encode(ctx, ref.load<float>("vae.image"));
  CHECK(test::rel_l2(d.mean, ref.load<float>("vae.mean")) < 1e-4);
  CHECK(test::rel_l2(d.logvar, ref.load<float>("vae.logvar")) < 1e-4);
  auto img = vae.decode(ctx, ref.load<float>("vae.latents"));
  CHECK(test::rel_l2(img, ref.load<float>("vae.decoded")) < 1e-4);
}

// ------------------------------------------------------------------------------------------------ training
// The backward of VaeAttention, VaeMidBlock, the encoder / decoder and quant convs, and the training objective of
// train/vae_objective.hpp (reconstruction + kl_weight * KL, diffusers' AutoencoderKL recipe without LPIPS / GAN).

namespace {

using test::numeric_gradient;
using test::random_tensor;
using test::rel_l2;

/// Central differences in double (eps 1e-6) have a truncation error O(eps^2) relative and a rounding error of about
/// 1e-16 |loss| / eps ~ 1e-10 absolute for the O(1) losses here. So every entry must satisfy
/// |analytic - numeric| <= 1e-6 |numeric| + 1e-8: the absolute part covers tiny gradients (the attention's, ~1e-4,
/// and to_k.bias's, which is zero since softmax ignores a shift shared by all keys); any wrong term (a dropped
/// residual, a missing KL part, a wrong sign) gives errors of order 1e-1 relative, far above both.
constexpr double kFiniteDifferenceRelative = 1e-6;
constexpr double kFiniteDifferenceAbsolute = 1e-8;

/// The largest violation of |a - n| <= rel |n| + abs over all entries, in units of the bound (<= 1 passes).
double fd_mismatch(Tensor<double> const& analytic, Tensor<double> const& numeric) {
  REQUIRE(analytic.numel() == numeric.numel());
  double worst = 0;
  for (Index i = 0; i < numeric.numel(); ++i) {
    double const bound = kFiniteDifferenceRelative * std::abs(numeric(i)) + kFiniteDifferenceAbsolute;
    worst = std::max(worst, std::abs(analytic(i) - numeric(i)) / bound);
  }
  return worst;
}

/// Fills every parameter of a module with deterministic values in [-scale, scale).
template <class M>
void randomize(M& module, std::uint32_t seed, double scale) {
  Context<Cpu> ctx;
  nn::for_each_parameter(module, [&](std::string const&, nn::Parameter<double>& p) {
    p.value = random_tensor<double>(p.shape(), seed++);
    ops::scale<double, Cpu>(ctx, p.value.view(), scale);
  });
}

/// dx and every parameter gradient of `module` at x for the loss <forward(x), dy>, against finite differences.
/// Returns the number of parameters checked.
template <class M>
int check_module_gradients(M& module, Tensor<double> x, std::uint32_t seed) {
  Context<Cpu> ctx;
  nn::set_trainable(module, true);
  auto const y = module.forward(ctx, x.view(), nn::Mode::Train);
  auto const dy = random_tensor<double>(y.shape(), seed);
  auto const dx = module.backward(ctx, dy.view());
  auto loss = [&] { return test::inner(module.forward(ctx, x.view()), dy); };
  CHECK(fd_mismatch(dx, numeric_gradient(x, loss)) <= 1.0);
  int checked = 0;
  nn::for_each_parameter(module, [&](std::string const& name, nn::Parameter<double>& p) {
    INFO("parameter " << name);
    CHECK(fd_mismatch(p.grad, numeric_gradient(p.value, loss)) <= 1.0);
    ++checked;
  });
  return checked;
}

/// The tiny VAE of tests/fixtures/models/tiny-sd1 (8 / 16 channels, 4 groups, 4 latent channels, factor 2).
models::AutoencoderKL<float> tiny_sd1_vae() {
  std::string const dir = test::fixture("models/tiny-sd1/");
  models::AutoencoderKL<float> vae(models::VaeConfig::from_json(models::read_json(dir + "vae/config.json")));
  io::SafetensorsFile file(dir + "vae/diffusion_pytorch_model.safetensors");
  models::load_parameters<float>(vae, models::sources_from_file(file), "vae");
  return vae;
}

}  // namespace

TEST_CASE("VaeAttention and VaeMidBlock backward match finite differences", "[models][vae][train]") {
  SECTION("attention: 4 channels in 2 groups over 3 x 3 positions") {
    models::VaeAttention<double> attn(4, 2);
    randomize(attn, 1, 1.0);
    CHECK(check_module_gradients(attn, random_tensor<double>(Shape{2, 4, 3, 3}, 2), 3) == 10);
  }
  SECTION("mid block: resnet, attention, resnet") {
    models::VaeMidBlock<double> mid(4, 2, true);
    randomize(mid, 4, 0.5);
    CHECK(check_module_gradients(mid, random_tensor<double>(Shape{2, 4, 2, 3}, 5), 6) == 26);
  }
  SECTION("mid block without attention") {
    models::VaeMidBlock<double> mid(4, 2, false);
    randomize(mid, 7, 0.5);
    CHECK(check_module_gradients(mid, random_tensor<double>(Shape{1, 4, 3, 3}, 8), 9) == 16);
  }
}

TEST_CASE("The VAE training objective's gradients match finite differences (double)", "[models][vae][train]") {
  // A VAE with two levels (factor 2), every block kind, quant and post-quant convs; images (2, 3, 4, 6).
  models::VaeConfig config;
  config.block_out_channels = {4, 8};
  config.layers_per_block = 1;
  config.norm_num_groups = 2;
  config.latent_channels = 2;
  models::AutoencoderKL<double> vae(config);
  randomize(vae, 11, 0.5);
  nn::set_trainable(vae, true);
  Context<Cpu> ctx;
  auto images = random_tensor<double>(Shape{2, 3, 4, 6}, 40);
  auto const noise = random_tensor<double>(Shape{2, 2, 2, 3}, 41);
  train::VaeObjectiveOptions const options{.kl_weight = 0.1};
  auto const step = train::vae_training_step<double>(ctx, vae, images.view(), noise.view(), options);
  REQUIRE(step.kl_loss > 0.0);
  CHECK(step.loss == Approx(step.reconstruction_loss + 0.1 * step.kl_loss).epsilon(1e-12));
  auto loss = [&] { return train::vae_training_step<double>(ctx, vae, images.view(), noise.view(), options).loss; };
  // The analytic gradients are read before the finite differences run more steps (which accumulate further).
  std::map<std::string, Tensor<double>> grads;
  std::map<std::string, nn::Parameter<double>*> params;
  nn::for_each_parameter(vae, [&](std::string const& name, nn::Parameter<double>& p) {
    grads[name] = p.grad;
    params[name] = &p;
  });
  auto const dimages = step.dimages;
  // A few entries of each parameter on the path (encoder, the mean and logvar halves of quant_conv, decoder).
  char const* const names[] = {"encoder.conv_in.weight",
                               "encoder.down_blocks.0.resnets.0.norm1.bias",
                               "encoder.down_blocks.0.downsamplers.0.conv.weight",
                               "encoder.mid_block.attentions.0.to_q.weight",
                               "encoder.mid_block.attentions.0.to_v.bias",
                               "encoder.conv_out.weight",
                               "quant_conv.weight",
                               "quant_conv.bias",
                               "post_quant_conv.weight",
                               "decoder.mid_block.resnets.0.conv1.weight",
                               "decoder.up_blocks.0.upsamplers.0.conv.bias",
                               "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
                               "decoder.conv_out.weight"};
  for (char const* name : names) {
    INFO("parameter " << name);
    REQUIRE(params.count(name) == 1);
    Tensor<double>& value = params[name]->value;
    Index const stride = std::max<Index>(1, value.numel() / 7);
    std::vector<double> analytic, numeric;
    for (Index i = 0; i < value.numel(); i += stride) {
      double const keep = value(i);
      value(i) = keep + 1e-6;
      double const up = loss();
      value(i) = keep - 1e-6;
      double const down = loss();
      value(i) = keep;
      analytic.push_back(grads[name](i));
      numeric.push_back((up - down) / 2e-6);
    }
    Tensor<double> a(Shape{Index(analytic.size())}), n(Shape{Index(numeric.size())});
    std::copy(analytic.begin(), analytic.end(), a.data());
    std::copy(numeric.begin(), numeric.end(), n.data());
    CHECK(test::inner(n, n) > 0.0);  // the entries are on the loss's path
    CHECK(fd_mismatch(a, n) <= 1.0);
  }
  // Every image entry: the encoder path and the reconstruction target together.
  CHECK(fd_mismatch(dimages, numeric_gradient(images, loss)) <= 1.0);
}

TEST_CASE("One VAE training step matches diffusers' loss and gradients (tiny SD 1.x VAE)", "[models][vae][train]") {
  // Tolerance: fp32 vs torch fp32 through the whole model and its backward, relative L2 <= 1e-4 (loss values 1e-5).
  io::SafetensorsFile ref(test::fixture("vae_train/tiny_sd1_step.safetensors"));
  auto const images = ref.load<float>("images");
  auto const noise = ref.load<float>("noise");
  double const kl_weight = 1e-2;  // the fixture's metadata "kl_weight"
  Context<Cpu> ctx;
  SECTION("mean squared error") {
    auto vae = tiny_sd1_vae();
    nn::set_trainable(vae, true);
    auto const step = train::vae_training_step<float>(ctx, vae, images.view(), noise.view(), {.kl_weight = kl_weight});
    CHECK(step.loss == Approx(ref.load<float>("mse.loss")(0)).epsilon(1e-5));
    CHECK(step.reconstruction_loss == Approx(ref.load<float>("mse.reconstruction_loss")(0)).epsilon(1e-5));
    CHECK(step.kl_loss == Approx(ref.load<float>("mse.kl_loss")(0)).epsilon(1e-5));
    CHECK(rel_l2(step.dimages, ref.load<float>("mse.dimages")) < 1e-4);
    int checked = 0;
    nn::for_each_parameter(vae, [&](std::string const& name, nn::Parameter<float>& p) {
      if (!ref.contains("mse.grad." + name)) return;
      INFO("parameter " << name);
      CHECK(rel_l2(p.grad, ref.load<float>("mse.grad." + name)) < 1e-4);
      ++checked;
    });
    CHECK(checked == 19);
  }
  SECTION("mean squared error with every resnet gradient-checkpointed") {
    auto vae = tiny_sd1_vae();
    nn::set_trainable(vae, true);
    int checkpointed = 0;
    auto checkpoint = [&](auto& blocks) {
      for (auto& block : blocks)
        for (auto& r : block.resnets) r.gradient_checkpointing = true, ++checkpointed;
    };
    checkpoint(vae.encoder.down_blocks);
    checkpoint(vae.decoder.up_blocks);
    for (auto* mid : {&vae.encoder.mid_block, &vae.decoder.mid_block})
      for (auto& r : mid->resnets) r.gradient_checkpointing = true, ++checkpointed;
    REQUIRE(checkpointed == 2 + 4 + 4);
    auto const step = train::vae_training_step<float>(ctx, vae, images.view(), noise.view(), {.kl_weight = kl_weight});
    CHECK(step.loss == Approx(ref.load<float>("mse.loss")(0)).epsilon(1e-5));
    CHECK(rel_l2(step.dimages, ref.load<float>("mse.dimages")) < 1e-4);
    CHECK(rel_l2(vae.encoder.conv_in.weight.grad, ref.load<float>("mse.grad.encoder.conv_in.weight")) < 1e-4);
    CHECK(rel_l2(vae.decoder.mid_block.resnets[1].conv2.weight.grad,
                 ref.load<float>("mse.grad.decoder.mid_block.resnets.1.conv2.weight")) < 1e-4);
  }
  SECTION("L1, and only the decoder trainable") {
    auto vae = tiny_sd1_vae();
    nn::set_trainable(vae.decoder, true);
    auto const step =
        train::vae_training_step<float>(ctx, vae, images.view(), noise.view(),
                                        {.kl_weight = kl_weight, .reconstruction = train::VaeReconstructionLoss::L1});
    CHECK(step.loss == Approx(ref.load<float>("l1.loss")(0)).epsilon(1e-5));
    CHECK(step.reconstruction_loss == Approx(ref.load<float>("l1.reconstruction_loss")(0)).epsilon(1e-5));
    CHECK(step.kl_loss == Approx(ref.load<float>("l1.kl_loss")(0)).epsilon(1e-5));
    CHECK(rel_l2(step.dimages, ref.load<float>("l1.dimages")) < 1e-4);  // frozen layers still pass gradients on
    CHECK(vae.encoder.conv_in.weight.grad.empty());                     // and keep no gradient
    CHECK(vae.post_quant_conv.weight.grad.empty());
    int checked = 0;
    nn::for_each_parameter(
        vae.decoder,
        [&](std::string const& name, nn::Parameter<float>& p) {
          if (!ref.contains("l1.grad." + name)) return;
          INFO("parameter " << name);
          CHECK(rel_l2(p.grad, ref.load<float>("l1.grad." + name)) < 1e-4);
          ++checked;
        },
        "decoder");
    CHECK(checked == 8);
  }
}

TEST_CASE("VAE backward after an inference forward is refused (Mode::Infer keeps nothing)", "[models][vae][train]") {
  models::VaeConfig config;
  config.block_out_channels = {4, 8};
  config.layers_per_block = 1;
  config.norm_num_groups = 2;
  config.latent_channels = 2;
  models::AutoencoderKL<float> vae(config);
  nn::set_trainable(vae, true);
  Context<Cpu> ctx;
  auto const images = random_tensor<float>(Shape{1, 3, 4, 4}, 1);
  auto const d = vae.encode(ctx, images.view());
  CHECK_THROWS_WITH(vae.encode_backward(ctx, d.mean.view(), d.logvar.view()),
                    Catch::Contains("run forward with Mode::Train first"));
  auto const img = vae.decode(ctx, d.mean.view());
  CHECK_THROWS_WITH(vae.decode_backward(ctx, img.view()), Catch::Contains("run forward with Mode::Train first"));
}
