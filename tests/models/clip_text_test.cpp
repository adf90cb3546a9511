#include <catch2/catch.hpp>

#include <sdlora/models/clip_text.hpp>
#include <sdlora/models/weights.hpp>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("CLIP text encoder matches transformers (tiny SD1 config, fp16 weights)", "[models][clip][conformance]") {
  // Tolerance: whole model in fp32 vs torch fp32, relative L2 <= 1e-4.
  Context<Cpu> ctx;
  std::string const dir = test::fixture("models/tiny-sd1/text_encoder/");
  models::ClipTextModel<float> text(models::ClipTextConfig::from_json(models::read_json(dir + "config.json")));
  io::SafetensorsFile file(dir + "model.safetensors");
  models::load_parameters<float>(text, models::sources_from_file(file), "text_encoder");
  io::SafetensorsFile ref(test::fixture("models/tiny-sd1-outputs.safetensors"));
  auto ids = ref.load<std::int32_t>("text.input_ids");

  // Gradients into the embedding rows the ids use (what Textual Inversion trains).
  text.token_embedding.weight.set_trainable(true);
  auto out = text.forward(ctx, ids, nn::Mode::Train);
  CHECK(test::rel_l2(out.last_hidden_state, ref.load<float>("text.last_hidden_state")) < 1e-4);
  CHECK(test::rel_l2(out.pooler_output, ref.load<float>("text.pooler_output")) < 1e-4);
  text.backward(ctx, ref.load<float>("text.grad_upstream"));
  auto rows = ref.load<std::int32_t>("text.grad_rows");
  auto expected = ref.load<float>("text.grad_embedding_rows");
  Tensor<float> got(expected.shape());
  for (Index r = 0; r < rows.numel(); ++r)
    for (Index c = 0; c < got.dim(1); ++c) got.at({r, c}) = text.token_embedding.weight.grad.at({rows(r), c});
  CHECK(test::rel_l2(got, expected) < 1e-4);

  auto penultimate = text.hidden_state(ctx, ids, 1);
  CHECK(test::rel_l2(penultimate, ref.load<float>("text.penultimate_hidden_state")) < 1e-4);
}

TEST_CASE("CLIP text encoder rejects ids outside its vocabulary", "[models][clip]") {
  Context<Cpu> ctx;
  models::ClipTextConfig cfg;
  cfg.vocab_size = 10;
  cfg.hidden_size = 4;
  cfg.intermediate_size = 8;
  cfg.num_hidden_layers = 1;
  cfg.num_attention_heads = 2;
  models::ClipTextModel<float> text(cfg);
  Tensor<std::int32_t> ids(Shape{1, 3});
  ids(1) = 12;
  CHECK_THROWS_WITH(text.forward(ctx, ids), Catch::Contains("12") && Catch::Contains("vocabulary"));
}
