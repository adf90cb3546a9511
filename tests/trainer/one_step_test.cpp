#include <catch2/catch.hpp>

#include <set>  // std::set

#include <sdlora/pipeline.hpp>
#include <sdlora/train/trainer.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"
#include "trainer/recipes.hpp"  // fixture_batch, fixture_name, textual_inversion_recipe

using namespace sdlora;

namespace {
using test::fixture_batch;
using test::fixture_name;

// One step of a diffusers recipe from the fixture's starting parameters: loss and gradients (rel L2 <= 1e-4: a whole
// fp32 model forward and backward), then the parameters after one clipped AdamW step (<= 1e-5).
void check_step(train::Trainer<float>& trainer, io::SafetensorsFile const& ref, train::MicroBatch batch) {
  auto params = trainer.parameters();
  REQUIRE_FALSE(params.empty());
  for (auto const& p : params) {
    INFO(p.name);
    REQUIRE(ref.contains("before." + fixture_name(p.name)));
    p.param->value = ref.load<float>("before." + fixture_name(p.name), p.param->shape());
  }
  double const loss = trainer.forward_backward(std::move(batch));
  CHECK(loss == Approx(double(ref.load<float>("loss")(0))).epsilon(1e-4));
  for (auto const& p : params) {
    INFO(p.name);
    CHECK(test::rel_l2(p.param->grad, ref.load<float>("grad." + fixture_name(p.name))) < 1e-4);
  }
  trainer.optimizer_step();
  for (auto const& p : params) {
    INFO(p.name);
    CHECK(test::rel_l2(p.param->value, ref.load<float>("after." + fixture_name(p.name))) < 1e-5);
  }
}

void check_one_step(std::string const& name, train::TrainerOptions o) {
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  io::SafetensorsFile ref(test::fixture("train/one_step_" + name + ".safetensors"));
  o.optimizer.lr = 1e-4;
  o.optimizer.weight_decay = 1e-2;
  train::Trainer<float> trainer(ctx, sd, o);
  check_step(trainer, ref, fixture_batch(ref));
}
}  // namespace

TEST_CASE("One LoRA training step matches diffusers' train_text_to_image_lora recipe", "[train][conformance]") {
  train::TrainerOptions o;
  o.rank = 4;
  o.alpha = 4;
  check_one_step("lora", o);
}

TEST_CASE("Frozen text encoders encode each distinct prompt once; the kept embeddings give the same step",
          "[train]") {
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  io::SafetensorsFile ref(test::fixture("train/one_step_lora.safetensors"));
  train::TrainerOptions o;
  train::Trainer<float> trainer(ctx, sd, o);
  CHECK(trainer.cached_prompts() == 0);
  double const first = trainer.forward_backward(fixture_batch(ref));
  CHECK(trainer.cached_prompts() == 2);  // the fixture batch holds two prompts
  // A changed token-embedding row now would change a fresh encoding; the kept embeddings do not see it.
  auto const ids = ref.load<std::int32_t>("input_ids");
  Index const dim = sd.text_encoder.config().hidden_size;
  for (Index c = 0; c < dim; ++c) sd.text_encoder.token_embedding.weight.value.at({ids(1), c}) += 1.0f;
  double const second = trainer.forward_backward(fixture_batch(ref));
  CHECK(trainer.cached_prompts() == 2);
  CHECK(second == first);
}

TEST_CASE("Released text encoders: cached prompts train as before, an uncached one is refused", "[train]") {
  // diffusers' scripts delete frozen text encoders once the prompts are encoded; so may ours. The step from cached
  // embeddings must be the same bits, the model's encoders are empty afterwards and SDXL is still recognised.
  io::SafetensorsFile ref(test::fixture("train/one_step_lora.safetensors"));
  for (std::string model : {"tiny-sd1", "tiny-sdxl"}) {
    INFO(model);
    Context<Cpu> ctx;
    auto kept = models::load_stable_diffusion<float>(test::fixture("models/" + model));
    auto released = models::load_stable_diffusion<float>(test::fixture("models/" + model));
    bool const sdxl = kept.is_sdxl();
    auto batch = fixture_batch(ref);
    if (sdxl) {  // the same latents (2, 4, 8, 8); both tokenizers' ids alike; time ids of 64 px, no crop
      batch.input_ids_2 = batch.input_ids;
      batch.time_ids = Tensor<float>(Shape{2, 6});
      for (Index i = 0; i < 2; ++i)
        for (Index k : {0, 1, 4, 5}) batch.time_ids.at({i, k}) = 64.0f;
    }
    train::Trainer<float> a(ctx, kept, {}), b(ctx, released, {});
    b.cache_prompts(batch);
    b.release_text_encoders();
    CHECK(b.text_encoders_released());
    CHECK(released.text_encoder.layers.empty());
    CHECK(released.is_sdxl() == sdxl);
    CHECK(b.step({batch}).loss == a.step({batch}).loss);
    auto const pa = a.parameters(), pb = b.parameters();
    REQUIRE(pa.size() == pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) REQUIRE(test::rel_l2(pa[i].param->value, pb[i].param->value) == 0.0);
    auto other = batch;
    other.input_ids(3) += 1;  // another prompt
    CHECK_THROWS_WITH(b.step({other}), Catch::Contains("not among the 2 cached") && Catch::Contains("released"));
  }
  // A trained text encoder cannot be released.
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  train::TrainerOptions te;
  te.train_text_encoder = true;
  train::Trainer<float> trainer(ctx, sd, te);
  CHECK_THROWS_WITH(trainer.release_text_encoders(), Catch::Contains("cannot be released"));
}

TEST_CASE("One min-SNR-5 LoRA step matches diffusers", "[train][conformance]") {
  train::TrainerOptions o;
  o.snr_gamma = 5.0;
  check_one_step("lora_snr", o);
}

TEST_CASE("One DreamBooth step with prior preservation and text-encoder LoRA matches diffusers",
          "[train][conformance]") {
  train::TrainerOptions o;
  o.method = train::Method::DreamBooth;
  o.with_prior_preservation = true;
  o.prior_loss_weight = 1.0;
  o.train_text_encoder = true;
  check_one_step("dreambooth_prior", o);
}

TEST_CASE("One Textual Inversion step matches diffusers' textual_inversion recipe", "[train][conformance]") {
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  io::SafetensorsFile ref(test::fixture("train/one_step_textual_inversion.safetensors"));
  auto const o = test::textual_inversion_recipe();
  train::Trainer<float> trainer(ctx, sd, o);
  REQUIRE(trainer.placeholder_ids() == std::vector<int>{std::stoi(ref.metadata().at("new_id"))});
  // The prompts tokenise to the fixture's ids, placeholder included.
  auto ids = pipeline::tokenize(sd.tokenizer, {"a photo of a <erica>", "a rendering of a <erica>"});
  auto expected_ids = ref.load<std::int32_t>("input_ids");
  for (Index i = 0; i < ids.numel(); ++i) REQUIRE(ids(i) == expected_ids(i));
  CHECK(test::rel_l2(trainer.learned_embeddings(), ref.load<float>("before.row").reshaped(Shape{1, 8})) == 0.0);
  auto const before_other = Tensor<float>::from_view(sd.text_encoder.token_embedding.weight.value.slice(0, 10));

  double const loss = trainer.forward_backward(fixture_batch(ref));
  CHECK(loss == Approx(double(ref.load<float>("loss")(0))).epsilon(1e-4));
  auto const& grad = sd.text_encoder.token_embedding.weight.grad;
  Tensor<float> row(Shape{8});
  for (Index c = 0; c < 8; ++c) row(c) = grad.at({trainer.placeholder_ids()[0], c});
  CHECK(test::rel_l2(row, ref.load<float>("grad.row")) < 1e-4);
  trainer.optimizer_step();
  CHECK(test::rel_l2(trainer.learned_embeddings(), ref.load<float>("after.row").reshaped(Shape{1, 8})) < 1e-5);
  // Every other row is unchanged (weight decay undone, as diffusers restores them).
  auto const after_other = sd.text_encoder.token_embedding.weight.value.slice(0, 10);
  for (Index i = 0; i < before_other.numel(); ++i) REQUIRE(after_other.data()[i] == before_other(i));
}

TEST_CASE("Textual Inversion rejects tokens already in the vocabulary and multi-token initializers", "[train]") {
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  train::TrainerOptions o;
  o.method = train::Method::TextualInversion;
  o.placeholder_token = "cat";
  o.initializer_token = "toy";
  CHECK_THROWS_WITH(train::Trainer<float>(ctx, sd, o), Catch::Contains("'cat'") && Catch::Contains("already"));
  o.placeholder_token = "<new>";
  o.initializer_token = "stuffed toy";
  CHECK_THROWS_WITH(train::Trainer<float>(ctx, sd, o), Catch::Contains("exactly one"));
}

TEST_CASE("One SDXL DreamBooth-LoRA step (prior preservation, both text-encoder LoRAs, min-SNR 5) matches "
          "diffusers' train_dreambooth_lora_sdxl recipe", "[train][sdxl][conformance]") {
  // check_step's tolerances, through both text encoders; AdamW with the UNet at lr 1e-4, the text encoders at 5e-5.
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sdxl"));
  io::SafetensorsFile ref(test::fixture("train/one_step_sdxl_dreambooth.safetensors"));
  train::TrainerOptions o;
  o.method = train::Method::DreamBooth;
  o.rank = 4;
  o.alpha = 4;
  o.with_prior_preservation = true;
  o.prior_loss_weight = 1.0;
  o.snr_gamma = 5.0;
  o.train_text_encoder = true;
  o.text_encoder_lr = 5e-5;
  o.optimizer.lr = 1e-4;
  o.optimizer.weight_decay = 1e-2;
  train::Trainer<float> trainer(ctx, sd, o);
  auto const params = trainer.parameters();
  std::size_t text_2 = 0;
  for (auto const& p : params) text_2 += p.name.rfind("text_encoder_2.", 0) == 0;
  CHECK(text_2 == 2 * 4 * 3);  // lora_A and lora_B of q, k, v, out in each of text_encoder_2's 3 layers
  std::size_t expected = 0;
  for (auto const& key : ref.keys()) expected += key.rfind("before.", 0) == 0;
  CHECK(params.size() == expected);  // text_encoder's last layer (no gradient in diffusers either) is left out
  check_step(trainer, ref, fixture_batch(ref));  // with the fixture's input_ids_2 and time_ids
  // The LoRA file covers the UNet and both encoders.
  auto file = trainer.lora_file();
  std::set<std::string> components;
  for (auto const& e : file.entries) components.insert(e.component);
  CHECK(components == std::set<std::string>{"unet", "text_encoder", "text_encoder_2"});
}
