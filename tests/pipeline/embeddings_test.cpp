/// @file embeddings_test.cpp
/// @brief Textual Inversion files: the three layouts, tokens and rows added to the tiny model, diffusers'
/// multi-vector prompt expansion, and the errors.
#include <catch2/catch.hpp>

#include <filesystem>  // std::filesystem

#include <sdlora/pipeline.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;
namespace fs = std::filesystem;

namespace {
fs::path dir() {
  fs::path const d = fs::temp_directory_path() / "sdlora_embeddings_test";
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST_CASE("Textual Inversion files: diffusers, emb_params and string_to_param layouts", "[pipeline][embeddings]") {
  auto const v = test::random_tensor<float>(Shape{2, 8}, 1);
  std::string const diffusers = (dir() / "learned_embeds.safetensors").string();
  pipeline::save_embedding(diffusers, "<cat-toy>", v.view());
  auto ti = pipeline::read_embedding(diffusers);
  CHECK(ti.token == "<cat-toy>");
  REQUIRE(ti.vectors.shape() == Shape{2, 8});
  CHECK(test::rel_l2(ti.vectors, v) == 0.0);

  std::string const kohya = (dir() / "my-style.safetensors").string();
  io::SafetensorsWriter w;
  w.add("emb_params", v.view());
  w.write(kohya);
  CHECK(pipeline::read_embedding(kohya).token == "my-style");

  std::string const a1111 = (dir() / "named.safetensors").string();
  io::SafetensorsWriter w2;
  w2.add("string_to_param.*", v.view());
  w2.set_metadata("name", "<named>");
  w2.write(a1111);
  CHECK(pipeline::read_embedding(a1111).token == "<named>");
  CHECK(pipeline::read_embedding(a1111, "<override>").token == "<override>");

  std::string const sdxl = (dir() / "sdxl.safetensors").string();
  io::SafetensorsWriter w3;
  w3.add("clip_l", v.view());
  w3.add("clip_g", v.view());
  w3.write(sdxl);
  CHECK_THROWS_WITH(pipeline::read_embedding(sdxl), Catch::Contains("SDXL"));
  CHECK_THROWS_WITH(pipeline::read_embedding((dir() / "x.pt").string()), Catch::Contains("pickle"));
}

TEST_CASE("add_embedding appends tokens and rows; prompts expand multi-vector tokens as diffusers",
          "[pipeline][embeddings]") {
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  Index const rows = sd.text_encoder.token_embedding.num_embeddings();
  REQUIRE(Index(sd.tokenizer.size()) == rows);
  pipeline::TextualInversion ti{"mem", "<two>", test::random_tensor<float>(Shape{2, 8}, 2)};
  auto const ids = pipeline::add_embedding(sd.tokenizer, sd.text_encoder, ti);
  REQUIRE(ids == std::vector<int>{int(rows), int(rows) + 1});
  CHECK(sd.text_encoder.token_embedding.num_embeddings() == rows + 2);
  for (Index k = 0; k < 2; ++k)
    for (Index j = 0; j < 8; ++j)
      CHECK(sd.text_encoder.token_embedding.weight.value.at({rows + k, j}) == ti.vectors.at({k, j}));
  CHECK(*sd.tokenizer.token_to_id("<two>_1") == int(rows) + 1);

  // diffusers' maybe_convert_prompt: "<two>" -> "<two> <two>_1" everywhere; other prompts untouched.
  CHECK(pipeline::expand_prompt(sd.tokenizer, "a <two> and a <two>") == "a <two> <two>_1 and a <two> <two>_1");
  CHECK(pipeline::expand_prompt(sd.tokenizer, "a photo of a cat") == "a photo of a cat");
  auto const enc = sd.tokenizer.encode(pipeline::expand_prompt(sd.tokenizer, "a <two>"));
  CHECK(enc == std::vector<int>{sd.tokenizer.bos_id(), *sd.tokenizer.token_to_id("a</w>"), int(rows), int(rows) + 1,
                                sd.tokenizer.eos_id()});

  // The prompt embedding uses the new rows: changing a vector changes the text embedding.
  Context<Cpu> ctx;
  auto const before = pipeline::encode_prompts(ctx, sd, {"a <two>"});
  sd.text_encoder.token_embedding.weight.value.at({rows + 1, 0}) += 1.0f;
  CHECK(test::rel_l2(pipeline::encode_prompts(ctx, sd, {"a <two>"}), before) > 1e-3);

  CHECK_THROWS_WITH(pipeline::add_embedding(sd.tokenizer, sd.text_encoder, ti), Catch::Contains("already"));
  pipeline::TextualInversion wide{"mem", "<wide>", Tensor<float, Cpu>(Shape{1, 768})};
  CHECK_THROWS_WITH(pipeline::add_embedding(sd.tokenizer, sd.text_encoder, wide), Catch::Contains("768"));
}
