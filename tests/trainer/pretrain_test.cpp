// Training from scratch (models/init.hpp, train/pretrain.hpp): the initial weights follow PyTorch's layer rules and
// are reproducible; the VAE and UNet stages lower their losses on a toy-world set; the EMA follows diffusers'
// EMAModel warm-up; the latent scaling factor is 1 / the latents' standard deviation.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include <sdlora/backend/cpu.hpp>
#include <sdlora/models/init.hpp>
#include <sdlora/train/pretrain.hpp>
#include <sdlora/train/sample_data.hpp>

#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {

std::string const kConfigs = test::fixture("models/tiny-sd1");  // only its config.json files are read

/// A toy-world base set of `count` scenes of `size` px, written once per process.
train::Dataset toy_data(Index count, Index size) {
  std::string const dir = "pretrain_toy_" + std::to_string(count) + "_" + std::to_string(size);
  if (!fs::exists(dir + "/metadata.csv")) {
    train::ToyWorldOptions t;
    t.count = count;
    t.size = size;
    train::write_toy_world(dir, t);
  }
  train::DatasetOptions o;
  o.path = dir;
  o.resolution = size;
  return train::open_dataset(o);
}

double mean_of(std::vector<double> const& v, std::size_t from, std::size_t to) {
  double s = 0;
  for (std::size_t i = from; i < to; ++i) s += v[i];
  return s / double(to - from);
}

}  // namespace

TEST_CASE("init_random follows PyTorch's layer rules and is reproducible", "[pretrain][unit]") {
  auto sd = models::random_stable_diffusion<float>(kConfigs, 5);
  std::size_t checked = 0;
  auto check = [&](std::string const& name, nn::Parameter<float>& p) {
    Shape const& s = p.value.shape();
    auto ends = [&](std::string const& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    double lo = 1e30, hi = -1e30, sum = 0, sq = 0;
    for (Index i = 0; i < p.value.numel(); ++i) {
      double const v = p.value(i);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      sum += v;
      sq += v * v;
    }
    double const n = double(p.value.numel()), sd_dev = std::sqrt(sq / n - (sum / n) * (sum / n));
    if (ends("token_embedding.weight")) {
      CHECK(sd_dev == Approx(0.02).epsilon(0.05));  // N(0, 0.02): 49408 x 8 draws, 5%
    } else if (ends("position_embedding.weight")) {
      CHECK(sd_dev == Approx(0.01).epsilon(0.1));
    } else if (ends(".weight") && s.rank() >= 2) {
      Index fan_in = 1;
      for (int d = 1; d < s.rank(); ++d) fan_in *= s[d];
      double const bound = 1.0 / std::sqrt(double(fan_in));
      CHECK(lo >= -bound);
      CHECK(hi <= bound);
      if (n >= 1000) CHECK(sd_dev == Approx(bound / std::sqrt(3.0)).epsilon(0.1));  // U(-b, b): b / sqrt(3)
    } else if (ends(".weight")) {
      CHECK(lo == 1.0);  // norms
      CHECK(hi == 1.0);
    } else if (n > 1 && lo == 0.0 && hi == 0.0) {
      // a norm's bias
    } else {
      CHECK(hi - lo > 0);  // a layer's bias: U(-b, b), not constant
    }
    ++checked;
  };
  nn::for_each_parameter(sd.unet, check);
  nn::for_each_parameter(sd.vae, check);
  nn::for_each_parameter(sd.text_encoder, check);
  CHECK(checked > 100);

  auto again = models::random_stable_diffusion<float>(kConfigs, 5);
  auto other = models::random_stable_diffusion<float>(kConfigs, 6);
  auto const& a = sd.unet.conv_in.weight.value;
  for (Index i = 0; i < a.numel(); ++i) REQUIRE(again.unet.conv_in.weight.value(i) == a(i));
  CHECK(other.unet.conv_in.weight.value(0) != a(0));
  CHECK(sd.tokenizer.encode_padded("a red circle", 77)[1] != sd.tokenizer.encode_padded("a red circle", 77)[0]);
}

TEST_CASE("random_stable_diffusion names a missing config", "[pretrain][unit]") {
  fs::create_directories("pretrain_no_configs/unet");
  try {
    models::random_stable_diffusion<float>("pretrain_no_configs", 0);
    FAIL("no error");
  } catch (IoError const& e) {
    CHECK_THAT(e.what(), Catch::Contains("pretrain_no_configs/unet/config.json"));
  }
}

TEST_CASE("latent_scaling_factor is 1 / the standard deviation of the sampled latents", "[pretrain][unit]") {
  train::LatentTable<float> t;
  t.mean = Tensor<float>(Shape{2, 1, 1, 2});
  t.std_dev = Tensor<float>(Shape{2, 1, 1, 2});
  float const means[] = {1, 3, 1, 3}, stds[] = {1, 1, 1, 1};  // E z = 2, Var z = 1 (means) + 1 (noise) = 2
  for (int i = 0; i < 4; ++i) {
    t.mean(i) = means[i];
    t.std_dev(i) = stds[i];
  }
  CHECK(train::latent_scaling_factor(t) == Approx(1.0 / std::sqrt(2.0)).epsilon(1e-12));
}

// [learning]: the two cases that train long enough to see the loss fall. ctest runs them as
// trainer_pretrain_learning_test (label learning, not in the sanitizer pass); the short cases below run the same
// stages for a few steps in both passes.
TEST_CASE("The VAE stage lowers the reconstruction loss on the toy world", "[pretrain][e2e][learning]") {
  Context<Cpu> ctx;
  auto sd = models::random_stable_diffusion<float>(kConfigs, 1);
  auto const data = toy_data(16, 16);
  train::VaePretrainOptions o;
  o.steps = 200;
  o.batch_size = 4;
  o.lr_schedule.warmup_steps = 10;
  o.log_every = 1000;
  auto const r = train::pretrain_vae<float>(ctx, sd.vae, data, o);
  REQUIRE(r.losses.size() == 200);
  double const first = mean_of(r.losses, 0, 20), last = mean_of(r.losses, 180, 200);
  INFO("first 20 steps " << first << ", last 20 " << last);
  CHECK(last < 0.7 * first);  // a random VAE's L1 error falls by more than 30% in 200 steps (measured: 0.42x)
}

TEST_CASE("The VAE stage trains every VAE weight, freezes them again and repeats from the same seed",
          "[pretrain][unit]") {
  Context<Cpu> ctx;
  auto sd = models::random_stable_diffusion<float>(kConfigs, 1);
  auto const data = toy_data(16, 16);
  auto const conv_in_before = sd.vae.encoder.conv_in.weight.value;
  auto const conv_out_before = sd.vae.decoder.conv_out.weight.value;
  train::VaePretrainOptions o;
  o.steps = 3;
  o.batch_size = 2;
  o.lr_schedule.warmup_steps = 0;  // a warm-up would make the first step's learning rate 0
  o.log_every = 1000;
  auto const r = train::pretrain_vae<float>(ctx, sd.vae, data, o);
  REQUIRE(r.losses.size() == 3);
  for (double l : r.losses) CHECK(std::isfinite(l));
  auto max_change = [](Tensor<float> const& a, Tensor<float> const& b) {
    double m = 0;
    for (Index i = 0; i < a.numel(); ++i) m = std::max(m, double(std::abs(a(i) - b(i))));
    return m;
  };
  CHECK(max_change(sd.vae.encoder.conv_in.weight.value, conv_in_before) > 1e-4);  // AdamW: about lr per step
  CHECK(max_change(sd.vae.decoder.conv_out.weight.value, conv_out_before) > 1e-4);
  bool any_trainable = false;
  nn::for_each_parameter(sd.vae, [&](std::string const&, nn::Parameter<float>& p) { any_trainable |= p.trainable; });
  CHECK_FALSE(any_trainable);
  auto sd2 = models::random_stable_diffusion<float>(kConfigs, 1);
  auto const r2 = train::pretrain_vae<float>(ctx, sd2.vae, data, o);
  CHECK(r2.losses == r.losses);
  CHECK(max_change(sd2.vae.decoder.conv_out.weight.value, sd.vae.decoder.conv_out.weight.value) == 0);
}

TEST_CASE("The UNet stage trains every UNet weight and lowers the denoising loss", "[pretrain][e2e][learning]") {
  Context<Cpu> ctx;
  auto sd = models::random_stable_diffusion<float>(kConfigs, 2);
  auto const data = toy_data(16, 16);
  auto const table = train::encode_dataset<float>(ctx, sd.vae, data);
  REQUIRE(table.mean.dim(0) == 16);
  REQUIRE(table.captions.size() == 16);
  auto const conv_in_before = sd.unet.conv_in.weight.value;
  auto const text_before = sd.text_encoder.token_embedding.weight.value;
  train::UnetPretrainOptions o;
  o.steps = 120;
  o.batch_size = 8;
  o.ema_decay = 0;
  o.lr_schedule.warmup_steps = 10;
  o.log_every = 1000;
  auto const r = train::pretrain_unet<float>(ctx, sd, table, o);
  double const first = mean_of(r.losses, 0, 20), last = mean_of(r.losses, 100, 120);
  INFO("first 20 steps " << first << ", last 20 " << last);
  CHECK(last < 0.8 * first);
  double moved = 0;
  for (Index i = 0; i < conv_in_before.numel(); ++i)
    moved = std::max(moved, double(std::abs(sd.unet.conv_in.weight.value(i) - conv_in_before(i))));
  CHECK(moved > 1e-3);  // the UNet's own weights trained
  for (Index i = 0; i < text_before.numel(); i += 97)
    REQUIRE(sd.text_encoder.token_embedding.weight.value(i) == text_before(i));  // the text encoder did not
}

TEST_CASE("The UNet stage's EMA follows diffusers' EMAModel warm-up", "[pretrain][unit]") {
  // One step: decay = min(0.999, (1 + 0) / (10 + 0)) = 0.1, so EMA = 0.1 * initial + 0.9 * updated.
  Context<Cpu> ctx;
  auto const data = toy_data(16, 16);
  auto run = [&](double ema) {
    auto sd = models::random_stable_diffusion<float>(kConfigs, 3);
    auto const table = train::encode_dataset<float>(ctx, sd.vae, data);
    train::UnetPretrainOptions o;
    o.steps = 1;
    o.batch_size = 2;
    o.ema_decay = ema;
    o.lr_schedule.warmup_steps = 0;  // a warm-up would make the first step's learning rate 0
    o.log_every = 1000;
    train::pretrain_unet<float>(ctx, sd, table, o);
    return sd.unet.conv_out.weight.value;
  };
  auto const initial = models::random_stable_diffusion<float>(kConfigs, 3).unet.conv_out.weight.value;
  auto const plain = run(0.0), ema = run(0.999);
  for (Index i = 0; i < plain.numel(); ++i)
    REQUIRE(double(ema(i)) == Approx(0.1 * double(initial(i)) + 0.9 * double(plain(i))).margin(1e-7));
}

TEST_CASE("The UNet stage trains the text encoder too when asked", "[pretrain][unit]") {
  Context<Cpu> ctx;
  auto sd = models::random_stable_diffusion<float>(kConfigs, 2);
  auto const data = toy_data(16, 16);
  auto const table = train::encode_dataset<float>(ctx, sd.vae, data);
  auto const q_before = sd.text_encoder.layers[0].self_attn.q_proj.weight.value;
  train::UnetPretrainOptions o;
  o.steps = 3;
  o.batch_size = 4;
  o.ema_decay = 0;
  o.lr_schedule.warmup_steps = 0;
  o.train_text_encoder = true;
  o.log_every = 1000;
  auto const r = train::pretrain_unet<float>(ctx, sd, table, o);
  CHECK(r.losses.size() == 3);
  double moved = 0;
  for (Index i = 0; i < q_before.numel(); ++i)
    moved = std::max(moved, double(std::abs(sd.text_encoder.layers[0].self_attn.q_proj.weight.value(i) - q_before(i))));
  CHECK(moved > 1e-4);  // AdamW moves every weight by about lr = 1e-3 per step
  CHECK_FALSE(sd.text_encoder.layers[0].self_attn.q_proj.weight.trainable);  // frozen again afterwards
}
