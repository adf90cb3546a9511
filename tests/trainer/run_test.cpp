#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <sdlora/all.hpp>
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/sources.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"
#include "trainer/recipes.hpp"  // small_run

using namespace sdlora;
namespace fs = std::filesystem;

namespace {
// Four 16x16 images: flat colours with a bright square whose position depends on the index.
class Squares : public train::ExampleSource {
 public:
  std::int64_t size() const override { return 4; }
  bool random_augmentation() const override { return false; }
  train::TrainExample get(std::int64_t index, std::uint64_t) override {
    train::TrainExample ex{Tensor<float>(Shape{3, 16, 16}), "a square, flat style", {}};
    for (Index c = 0; c < 3; ++c)
      for (Index y = 0; y < 16; ++y)
        for (Index x = 0; x < 16; ++x) {
          bool const inside = y / 8 == index / 2 && x / 8 == index % 2;
          ex.image.at({c, y, x}) = inside ? 0.9f : (c == index % 3 ? 0.2f : -0.8f);
        }
    return ex;
  }
};

train::RunOptions options(std::string const& dir, std::int64_t steps) { return test::small_run(dir, steps); }

std::vector<float> lora_values(std::string const& file) {
  io::SafetensorsFile f(file);
  std::vector<float> out;
  for (auto const& key : f.keys()) {
    auto t = f.load<float>(key);
    out.insert(out.end(), t.span().begin(), t.span().end());
  }
  return out;
}
}  // namespace

TEST_CASE("A run killed after a checkpoint and resumed ends with bit-identical LoRA weights", "[train][e2e]") {
  Context<Cpu> ctx;
  Squares data;
  std::ostringstream log;
  fs::remove_all("run_straight");
  fs::remove_all("run_resumed");
  {
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    auto o = options("run_straight", 6);
    train::run_training(ctx, sd, data, o, nullptr, log);
  }
  {
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    auto o = options("run_resumed", 3);
    o.checkpointing_steps = 2;
    train::run_training(ctx, sd, data, o, nullptr, log);
    fs::remove_all("run_resumed/checkpoint-3");  // "killed" after step 3: only the step-2 checkpoint survives
  }
  {
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    auto o = options("run_resumed", 6);
    o.resume_from_checkpoint = "latest";
    auto r = train::run_training(ctx, sd, data, o, nullptr, log);
    CHECK(r.resumed_from == 2);
  }
  auto const a = lora_values("run_straight/sdlora_lora.safetensors");
  auto const b = lora_values("run_resumed/sdlora_lora.safetensors");
  REQUIRE(a.size() == b.size());
  REQUIRE_FALSE(a.empty());
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == b[i]);
  // loss.csv holds each step once.
  std::ifstream csv("run_resumed/loss.csv");
  std::string line;
  int rows = -1;
  while (std::getline(csv, line)) ++rows;
  CHECK(rows == 6);
}

TEST_CASE("Training lowers the loss on the sample squares", "[train][e2e][learning]") {
  // 200 steps of rank-8 LoRA/LoCon at lr 2e-3 on four images: the mean loss of the last 30 steps must be at least
  // 20% below the mean of the first 30 (measured: 1.05 -> 0.76; the per-step loss is noisy: random timesteps and
  // noise).
  Context<Cpu> ctx;
  Squares data;
  std::ostringstream log;
  fs::remove_all("run_loss");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto o = options("run_loss", 200);
  o.trainer.rank = 8;
  o.trainer.optimizer.lr = 2e-3;
  o.trainer.train_conv = true;  // attention + resnet convolutions + projections (LoCon)
  o.trainer.target_modules = "to_q|to_k|to_v|to_out\\.0|conv1|conv2|proj_in|proj_out";
  auto r = train::run_training(ctx, sd, data, o, nullptr, log);
  double first = 0, last = 0;
  for (int i = 0; i < 30; ++i) {
    first += r.losses[std::size_t(i)] / 30;
    last += r.losses[r.losses.size() - 1 - std::size_t(i)] / 30;
  }
  INFO("first " << first << " last " << last);
  CHECK(last < 0.8 * first);
}

TEST_CASE("Saved kohya and PEFT files load back and give identical images", "[train][e2e]") {
  Context<Cpu> ctx;
  Squares data;
  std::ostringstream log;
  fs::remove_all("run_save");
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto o = options("run_save", 5);
  o.save_format = "both";
  o.trainer.train_text_encoder = true;
  train::run_training(ctx, sd, data, o, nullptr, log);
  pipeline::GenerateOptions g;
  g.prompt = "a square, flat style";
  g.steps = 3;
  g.width = g.height = 16;
  g.seed = 1;
  auto trained = pipeline::txt2img(ctx, sd, g);
  for (std::string file : {"run_save/sdlora_lora.safetensors", "run_save/pytorch_lora_weights.safetensors"}) {
    INFO(file);
    auto fresh = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    auto const lf = lora::read_lora(file);
    lora::apply(fresh.unet, lf, "unet");
    lora::apply(fresh.text_encoder, lf, "text_encoder");
    auto img = pipeline::txt2img(ctx, fresh, g);
    for (Index i = 0; i < img.images.numel(); ++i) REQUIRE(img.images(i) == trained.images(i));
  }
  CHECK(fs::exists("run_save/loss.png"));
  io::SafetensorsFile k("run_save/sdlora_lora.safetensors");
  CHECK(k.metadata().at("ss_network_dim") == "4");
  CHECK(k.metadata().at("ss_base_model_version") == "sd_v1");
}

TEST_CASE("Latents cached on disk are reused by a second run and give the same weights", "[train][e2e]") {
  // A dataset folder (the on-disk cache needs content hashes); the second run must hit the cache for every image
  // and, since cached samples equal recomputed ones, end with bit-identical LoRA weights.
  Context<Cpu> ctx;
  fs::remove_all("cache_data");
  fs::create_directories("cache_data");
  Squares squares;
  for (int i = 0; i < 4; ++i) {
    auto ex = squares.get(i, 0);
    io::save_png("cache_data/sq" + std::to_string(i) + ".png", ex.image);
    std::ofstream("cache_data/sq" + std::to_string(i) + ".txt") << ex.caption;
  }
  train::DatasetOptions d;
  d.path = "cache_data";
  d.resolution = 16;
  std::vector<float> weights[2];
  for (int run = 0; run < 2; ++run) {
    fs::remove_all("run_cache_out");
    auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
    train::DatasetSource source(train::open_dataset(d));
    auto o = options("run_cache_out", 3);
    o.latent_cache_file = "cache_latents.safetensors";
    if (run == 0) fs::remove("cache_latents.safetensors");
    std::ostringstream log;
    auto const r = train::run_training(ctx, sd, source, o, nullptr, log);
    CHECK(r.latents_from_disk == (run == 0 ? 0 : 4));
    weights[run] = lora_values("run_cache_out/sdlora_lora.safetensors");
    REQUIRE(fs::exists("cache_latents.safetensors"));
  }
  io::SafetensorsFile cache("cache_latents.safetensors");
  CHECK(cache.size() == 4);
  REQUIRE(weights[0].size() == weights[1].size());
  for (std::size_t i = 0; i < weights[0].size(); ++i) REQUIRE(weights[0][i] == weights[1][i]);
}

TEST_CASE("Bucketed datasets train with batches of one bucket", "[train][e2e]") {
  // Images of two aspect ratios with bucketing at batch size 2: every batch must come from one bucket (a mixed batch
  // would throw "different sizes"), over several epochs.
  Context<Cpu> ctx;
  fs::remove_all("bucket_data");
  fs::create_directories("bucket_data");
  for (int i = 0; i < 5; ++i) {
    Tensor<float> img(i % 2 ? Shape{3, 16, 32} : Shape{3, 32, 16});
    for (Index k = 0; k < img.numel(); ++k) img(k) = float((k * (i + 3)) % 17) / 8.0f - 1.0f;
    io::save_png("bucket_data/im" + std::to_string(i) + ".png", img);
    std::ofstream("bucket_data/im" + std::to_string(i) + ".txt") << "a pattern";
  }
  train::DatasetOptions d;
  d.path = "bucket_data";
  d.resolution = 16;
  d.bucketing = true;
  d.bucket_step = 8;
  train::DatasetSource source(train::open_dataset(d));
  REQUIRE(source.dataset().bucket_of(0) != source.dataset().bucket_of(1));  // two shapes in one run
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto o = options("run_buckets", 8);
  std::ostringstream log;
  auto r = train::run_training(ctx, sd, source, o, nullptr, log);
  CHECK(r.steps == 8);
}

TEST_CASE("Releasing the frozen text encoders before training gives the same LoRA; kept when they are needed",
          "[train][e2e]") {
  // RunOptions::release_text_encoders encodes every caption the source can give, then frees the encoders (as
  // diffusers' DreamBooth scripts delete them): the run must end with the same bits as one that keeps them.
  class OneCaption : public Squares {
   public:
    std::optional<std::vector<std::string>> all_captions() override {
      return std::vector<std::string>{"a square, flat style"};
    }
  };
  Context<Cpu> ctx;
  OneCaption data;
  std::ostringstream log;
  fs::remove_all("run_kept_te");
  fs::remove_all("run_released_te");
  auto kept = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto a = train::run_training(ctx, kept, data, options("run_kept_te", 3), nullptr, log);
  auto released = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto o = options("run_released_te", 3);
  o.release_text_encoders = true;
  auto b = train::run_training(ctx, released, data, o, nullptr, log);
  CHECK(log.str().find("text encoders released after encoding 1 distinct prompts") != std::string::npos);
  CHECK(released.text_encoder.layers.empty());
  CHECK_FALSE(kept.text_encoder.layers.empty());
  auto const va = lora_values(a.files.at(0)), vb = lora_values(b.files.at(0));
  REQUIRE(va.size() == vb.size());
  for (std::size_t i = 0; i < va.size(); ++i) REQUIRE(va[i] == vb[i]);

  // A source that cannot list its captions, or validation prompts, keep the encoders (and say why).
  std::ostringstream why;
  Squares unknown;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto u = options("run_released_te", 1);
  u.release_text_encoders = true;
  train::run_training(ctx, sd, unknown, u, nullptr, why);
  CHECK(why.str().find("text encoders kept: the captions are not known in advance") != std::string::npos);
  CHECK_FALSE(sd.text_encoder.layers.empty());
  // Too many distinct captions to encode before the first step: kept too.
  class ManyCaptions : public Squares {
   public:
    std::optional<std::vector<std::string>> all_captions() override {
      std::vector<std::string> out;
      for (int i = 0; i < 300; ++i) out.push_back("caption " + std::to_string(i));
      return out;
    }
  };
  ManyCaptions many;
  std::ostringstream why_many;
  auto fresh = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  train::run_training(ctx, fresh, many, u, nullptr, why_many);
  CHECK(why_many.str().find("text encoders kept: 300 captions, more than 256") != std::string::npos);
  CHECK_FALSE(fresh.text_encoder.layers.empty());
}
