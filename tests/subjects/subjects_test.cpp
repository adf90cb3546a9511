#include <catch2/catch.hpp>

#include <filesystem>

#include <sdlora/all.hpp>
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/sources.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {
// The "subject": a 16x16 orange square with a dark vertical bar, slightly different in each photo.
Tensor<float> subject_photo(int i) {
  Tensor<float> img(Shape{3, 16, 16});
  float const rgb[3] = {0.9f, 0.3f, -0.6f};
  for (Index c = 0; c < 3; ++c)
    for (Index y = 0; y < 16; ++y)
      for (Index x = 0; x < 16; ++x) {
        bool const bar = x >= 6 + i % 2 && x < 10 + i % 2;
        img.at({c, y, x}) = bar ? -0.9f : rgb[c] + 0.02f * float(i);
      }
  return img;
}

std::string write_instances(std::string const& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (int i = 0; i < 4; ++i)
    io::save_png(dir + "/photo-" + std::to_string(i) + ".png", subject_photo(i));
  return dir;
}

// Mean squared distance, in latent space (what training fits; the tiny model's random VAE does not reconstruct
// images), between the final latents of 4 fixed-seed generations and the mean latent of the instance photos.
double distance_to_subject(Context<Cpu>& ctx, models::StableDiffusion<float>& sd, std::string const& prompt) {
  Tensor<float> mean;
  for (int i = 0; i < 4; ++i) {
    auto p = subject_photo(i).reshaped(Shape{1, 3, 16, 16});
    auto z = sd.vae.encode(ctx, p).mean;
    ops::scale<float, Cpu>(ctx, z.view(), sd.vae.config().scaling_factor);
    if (mean.empty()) mean = Tensor<float>(z.shape());
    for (Index k = 0; k < mean.numel(); ++k) mean(k) += z(k) / 4;
  }
  double total = 0;
  for (std::uint64_t seed : {1, 2, 3, 4}) {
    pipeline::GenerateOptions g;
    g.prompt = prompt;
    g.steps = 10;
    g.width = g.height = 16;
    g.seed = seed;
    g.sampler = "ddim";
    auto out = pipeline::txt2img(ctx, sd, g);
    for (Index k = 0; k < mean.numel(); ++k) {
      double const d = double(out.latents(k)) - double(mean(k));
      total += d * d / double(mean.numel()) / 4;
    }
  }
  return total;
}

train::RunOptions subject_run_options(std::string const& dir, std::int64_t steps) {
  train::RunOptions o;
  o.output_dir = dir;
  o.max_train_steps = steps;
  o.train_batch_size = 2;
  o.trainer.seed = 3;
  o.settings["resolution"] = 16;
  o.log_every = 100000;
  return o;
}
}  // namespace

TEST_CASE("DreamBooth-LoRA moves generations of the identifier towards the instance photos",
          "[train][subjects][e2e][learning]") {
  // Metric: mean squared latent distance between 4 generations of "a photo of sks toy" (fixed seeds) and the mean
  // instance photo's latent. Margin: after 150 steps the distance must be at most 70% of the untrained model's.
  Context<Cpu> ctx;
  std::string const dir = write_instances("subject_instances");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  double const before = distance_to_subject(ctx, sd, "a photo of sks toy");
  train::DatasetOptions d;
  d.path = dir;
  d.instance_prompt = "a photo of sks toy";
  d.resolution = 16;
  train::DatasetSource source(train::open_dataset(d));
  auto o = subject_run_options("subject_dreambooth", 150);
  o.trainer.method = train::Method::DreamBooth;
  o.trainer.optimizer.lr = 5e-3;
  o.trainer.rank = 8;
  o.trainer.train_conv = true;
  o.trainer.target_modules = "to_q|to_k|to_v|to_out\\.0|conv1|conv2|proj_in|proj_out";
  std::ostringstream log;
  train::run_training(ctx, sd, source, o, nullptr, log);
  double const after = distance_to_subject(ctx, sd, "a photo of sks toy");
  INFO("distance before " << before << ", after " << after);
  CHECK(after < 0.7 * before);
}

TEST_CASE("Textual Inversion learns a token whose saved embedding loads in the pipeline",
          "[train][subjects][e2e][learning]") {
  // Metric as above with the prompt "a photo of <erica>". Margin: the trained token's generations must be at least 1%
  // closer to the subject than the initializer word's ("toy"; measured: 77.52 -> 76.35, 1.5%). Only 8 numbers train,
  // and the tiny random UNet's cross-attention carries little of the text, so the effect is small by construction.
  Context<Cpu> ctx;
  std::string const dir = write_instances("subject_ti_instances");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  double const before = distance_to_subject(ctx, sd, "a photo of toy");
  train::DatasetOptions d;
  d.path = dir;
  d.resolution = 16;
  train::TemplateSource source(train::open_dataset(d), "<erica>", train::LearnableProperty::Object);
  auto o = subject_run_options("subject_ti", 300);
  o.trainer.method = train::Method::TextualInversion;
  o.trainer.placeholder_token = "<erica>";
  o.trainer.initializer_token = "toy";
  o.trainer.optimizer.lr = 1.0;
  o.trainer.max_grad_norm = 0;
  std::ostringstream log;
  auto r = train::run_training(ctx, sd, source, o, nullptr, log);
  REQUIRE(fs::exists("subject_ti/learned_embeds.safetensors"));

  // A fresh model with the saved embedding: the token works in a prompt and reproduces the trained model.
  auto fresh = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto ti = pipeline::read_embedding("subject_ti/learned_embeds.safetensors");
  CHECK(ti.token == "<erica>");
  pipeline::add_embedding(fresh.tokenizer, fresh.text_encoder, ti);
  double const trained = distance_to_subject(ctx, sd, "a photo of <erica>");
  double const loaded = distance_to_subject(ctx, fresh, "a photo of <erica>");
  CHECK(loaded == Approx(trained).epsilon(1e-6));
  INFO("distance with 'toy' " << before << ", with the learned token " << loaded);
  CHECK(loaded < 0.99 * before);
  // The A1111 file holds the same vectors.
  io::SafetensorsFile a1111("subject_ti/erica.safetensors");  // "<erica>" typed as "erica" in A1111
  CHECK(test::rel_l2(a1111.load<float>("emb_params"), ti.vectors) == 0.0);
  (void)r;
}

TEST_CASE("An empty instance folder is a clear error", "[train][subjects]") {
  fs::remove_all("subject_empty");
  fs::create_directories("subject_empty");
  train::DatasetOptions d;
  d.path = "subject_empty";
  d.instance_prompt = "a photo of sks toy";
  CHECK_THROWS_WITH(train::open_dataset(d), Catch::Contains("subject_empty"));
}
