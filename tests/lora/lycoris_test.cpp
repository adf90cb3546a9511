/// @file lycoris_test.cpp
/// @brief LyCORIS LoHa and LoKr files (kohya names, made by the lycoris-lora package: tools/fixtures/make_lycoris.py)
/// on the tiny SD1 model: each layer's delta, single layers, the whole UNet and text encoder at multipliers 1 and 0.7,
/// as adapters and merged, against LyCORIS' own outputs; malformed files give one-line errors naming the key.
#include <catch2/catch.hpp>

#include <algorithm>  // std::sort
#include <cstdio>     // std::remove
#include <string>     // std::string
#include <vector>     // std::vector

#include <sdlora/lora/format.hpp>    // lora::read_lora, lora::apply, lora::save_kohya
#include <sdlora/lora/lycoris.hpp>   // lora::lycoris_delta, lora::LycorisFactors
#include <sdlora/pipeline/lora.hpp>  // pipeline::apply_loras, set_lora_scale, merge_loras, unmerge_loras
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;

namespace {

struct Fixture {
  char const* name;
  std::size_t layers;  // LyCORIS modules in the file
  bool text_encoder;   // whether it has lora_te_* layers
};
// loha: fp16, linear scale 0.5, conv scale 2; loha_tucker: bf16, hada_t1/t2 on 3x3 convs; lokr: fp32, decomposed
// w1 / w2 and Tucker lokr_t2; lokr_full: bf16, full lokr_w1 + lokr_w2 (scale 1 whatever alpha) and flattened conv w2_b.
Fixture const kFixtures[] = {
    {"loha", 85, true}, {"loha_tucker", 43, false}, {"lokr", 85, true}, {"lokr_full", 20, true}};

std::string path_of(std::string const& name) { return test::fixture("lycoris/" + name + ".safetensors"); }

/// The kohya layer name without its prefix: what LoraEntry::flat holds.
std::string flat_of(std::string const& kohya) {
  for (std::string p : {"lora_unet_", "lora_te_"})
    if (kohya.rfind(p, 0) == 0) return kohya.substr(p.size());
  return kohya;
}

/// Runs the forward of the leaf named `dotted` (a Linear or Conv2d) of a module tree on x.
template <class Module>
Tensor<float> leaf_forward(Context<Cpu>& ctx, Module& module, std::string const& dotted, Tensor<float> const& x) {
  Tensor<float> y;
  bool found = false;
  module.visit("", [&](std::string const& name, auto& leaf) {
    if constexpr (lora::AdaptableLeaf<std::remove_cvref_t<decltype(leaf)>>) {
      if (name == dotted) y = leaf.forward(ctx, x.view()), found = true;
    }
  });
  REQUIRE(found);
  return y;
}

struct Inputs {
  Tensor<float> sample, timesteps, context;
  Tensor<std::int32_t> ids;
};
Inputs inputs() {
  io::SafetensorsFile const ref(test::fixture("models/tiny-sd1-outputs.safetensors"));
  return {ref.load<float>("unet.sample"), ref.load<float>("unet.timesteps"),
          ref.load<float>("unet.encoder_hidden_states"), ref.load<std::int32_t>("text.input_ids")};
}

models::StableDiffusion<float> load_tiny() {
  return models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
}

std::string lycoris_temp_path(std::string const& name) { return "lycoris_test_" + name + ".safetensors"; }

}  // namespace

TEST_CASE("LoHa / LoKr files are read with every layer's factors, and each delta is LyCORIS' own", "[lora][lycoris]") {
  // Tolerance 1e-6 relative L2 for the deltas: the same stored (fp16 / bf16 / fp32) factors; the reference is computed
  // in double and rounded to float once, ours takes the factor products in float (sums of R <= 2 terms here) and the
  // rest in double, so the two differ by a few float roundings.
  io::SafetensorsFile const expected(test::fixture("lycoris/lycoris_expected.safetensors"));
  for (auto const& fx : kFixtures) {
    INFO(fx.name);
    auto const file = lora::read_lora(path_of(fx.name));
    CHECK(file.format == lora::LoraFormat::Kohya);
    CHECK(file.entries.size() == fx.layers);
    CHECK(file.unknown_keys.empty());
    bool any_te = false;
    for (auto const& e : file.entries) {
      REQUIRE(e.lycoris.has_value());
      CHECK(e.lycoris->algo ==
            (std::string(fx.name).rfind("loha", 0) == 0 ? lora::LycorisAlgo::LoHa : lora::LycorisAlgo::LoKr));
      any_te = any_te || e.component == "text_encoder";
    }
    CHECK(any_te == fx.text_encoder);
    auto const layers = test::split_commas(expected.metadata().at(std::string(fx.name) + ".layers"));
    REQUIRE(!layers.empty());
    for (std::size_t i = 0; i < layers.size(); ++i) {
      INFO(layers[i]);
      lora::LoraEntry const* hit = nullptr;
      for (auto const& e : file.entries)
        if (e.flat == flat_of(layers[i])) hit = &e;
      REQUIRE(hit != nullptr);
      auto const want = expected.load<double>(std::string(fx.name) + ".layer." + std::to_string(i) + ".delta");
      auto const got = lora::lycoris_delta(*hit->lycoris, want.shape());
      CHECK(test::rel_l2(got, want) < 1e-6);
    }
  }
  // The scale rules: alpha / rank; 1 for a LoKr layer whose halves are both full matrices, whatever its alpha
  // (LyCORIS itself stores alpha = dim = 4 for those); a missing alpha or alpha 0 means alpha = rank.
  auto const full = lora::read_lora(path_of("lokr_full"));
  Index n_full = 0;
  for (auto const& e : full.entries) {
    INFO(e.key);
    if (e.lycoris->has("lokr_w1") && e.lycoris->has("lokr_w2")) {
      CHECK(e.lycoris->alpha.value() == 4.0);
      CHECK(e.scale() == 1.0);
      lora::LycorisFactors f = *e.lycoris;
      f.alpha = 8.0;
      CHECK(f.scale() == 1.0);
      ++n_full;
    } else {
      CHECK(e.rank() == 1);
      CHECK(e.scale() == Approx(2.0));  // conv layers: conv alpha 2, rank 1
      lora::LycorisFactors f = *e.lycoris;
      f.alpha = 0.0;
      CHECK(f.scale() == 1.0);
      f.alpha.reset();
      CHECK(f.scale() == 1.0);
      CHECK(e.scale(0.5) == Approx(1.0));  // LoraEntry::scale applies the multiplier
    }
  }
  CHECK(n_full > 0);
}

TEST_CASE("LoHa / LoKr single layers and whole networks match LyCORIS, as adapters and merged",
          "[lora][lycoris][conformance]") {
  // Tolerance 1e-5 relative L2 (fp32 vs torch fp32) for single layers, the whole UNet and the text encoder at
  // multipliers 1 and 0.7. The sums are the same up to order; measured worst cases are printed by INFO on failure.
  Context<Cpu> ctx;
  io::SafetensorsFile const expected(test::fixture("lycoris/lycoris_expected.safetensors"));
  Inputs const in = inputs();
  auto plain = load_tiny();
  auto const base_unet = plain.unet.forward(ctx, in.sample, in.timesteps, in.context, nn::Mode::Infer);
  auto const base_text = plain.text_encoder.forward(ctx, in.ids).last_hidden_state;
  for (auto const& fx : kFixtures) {
    for (auto mode : {lora::ApplyMode::Adapter, lora::ApplyMode::Merge}) {
      bool const merge = mode == lora::ApplyMode::Merge;
      INFO(fx.name << (merge ? " merged" : " adapter"));
      std::string const key = fx.name;
      auto check_outputs = [&](models::StableDiffusion<float>& sd, std::string const& tag) {
        INFO("multiplier " << tag);
        auto const y = sd.unet.forward(ctx, in.sample, in.timesteps, in.context, nn::Mode::Infer);
        double const e_unet = test::rel_l2(y, expected.load<float>(key + "." + tag + ".unet"));
        INFO("unet rel " << e_unet);
        CHECK(e_unet < 1e-5);
        CHECK(test::rel_l2(y, base_unet) > 1e-3);  // the network changes the output
        if (fx.text_encoder) {
          auto const h = sd.text_encoder.forward(ctx, in.ids).last_hidden_state;
          double const e_text = test::rel_l2(h, expected.load<float>(key + "." + tag + ".text"));
          INFO("text rel " << e_text);
          CHECK(e_text < 1e-5);
          CHECK(test::rel_l2(h, base_text) > 1e-3);
        }
        auto const layers = test::split_commas(expected.metadata().at(key + ".layers"));
        for (std::size_t i = 0; i < layers.size(); ++i) {
          std::string const flat = flat_of(layers[i]);
          std::string const dotted = lora::guess_dotted(flat);
          bool const te = layers[i].rfind("lora_te_", 0) == 0;
          std::string const lk = key + ".layer." + std::to_string(i);
          auto const x = expected.load<float>(lk + ".x");
          auto const y1 = te ? leaf_forward(ctx, sd.text_encoder, dotted, x) : leaf_forward(ctx, sd.unet, dotted, x);
          INFO(dotted);
          CHECK(test::rel_l2(y1, expected.load<float>(lk + (tag == "m1" ? ".y1" : ".y07"))) < 1e-5);
        }
      };
      auto sd = load_tiny();
      auto loaded = pipeline::apply_loras(sd, {{path_of(fx.name), 1.0}}, mode);
      REQUIRE(loaded.size() == 1);
      CHECK(std::size_t(loaded[0].unet_layers + loaded[0].text_encoder_layers) == fx.layers);
      check_outputs(sd, "m1");
      if (merge) {
        auto sd07 = load_tiny();
        pipeline::apply_loras(sd07, {{path_of(fx.name), 0.7}}, mode);
        check_outputs(sd07, "m0.7");
      } else {
        pipeline::set_lora_scale(sd, loaded[0], 0.7);
        check_outputs(sd, "m0.7");
        // merge_loras / unmerge_loras take LyCORIS adapters too: merged at 0.7, then back and rescaled to 1.
        pipeline::merge_loras(ctx, sd);
        CHECK_THROWS_WITH(pipeline::set_lora_scale(sd, loaded[0], 1.0), Catch::Contains("unmerge"));
        check_outputs(sd, "m0.7");
        pipeline::unmerge_loras(ctx, sd);
        pipeline::set_lora_scale(sd, loaded[0], 1.0);
        check_outputs(sd, "m1");
      }
    }
  }
}

TEST_CASE("LyCORIS layers round-trip through save_kohya; PEFT refuses them", "[lora][lycoris]") {
  auto const file = lora::read_lora(path_of("lokr"));
  lora::save_kohya(lycoris_temp_path("roundtrip"), file);
  io::SafetensorsFile const a(path_of("lokr")), b(lycoris_temp_path("roundtrip"));
  auto ka = a.keys(), kb = b.keys();
  std::sort(ka.begin(), ka.end());
  std::sort(kb.begin(), kb.end());
  CHECK(ka == kb);
  for (auto const& k : ka) {
    INFO(k);
    CHECK(a.info(k).shape == b.info(k).shape);
    CHECK(a.bytes(k) == b.bytes(k));
  }
  CHECK(b.metadata().at("ss_network_module") == "lycoris.kohya");
  std::remove(lycoris_temp_path("roundtrip").c_str());
  CHECK_THROWS_WITH(lora::save_peft(lycoris_temp_path("peft"), file), Catch::Contains("LyCORIS LoKr"));
}

TEST_CASE("Malformed LyCORIS files give a one-line FormatError naming the key", "[lora][lycoris][errors]") {
  std::string const base = "lora_unet_down_blocks_0_attentions_0_proj_in";
  auto write = [&](std::string const& name, std::vector<std::pair<std::string, Shape>> const& tensors) {
    io::SafetensorsWriter w;
    for (auto const& [k, s] : tensors) w.add(base + "." + k, test::random_tensor<float>(s, 3));
    w.write(lycoris_temp_path(name));
    return lycoris_temp_path(name);
  };
  // read errors are one line; apply's error lists every problem of a file, one per line after a header
  auto expect_error = [](std::string const& path, std::vector<std::string> const& parts, bool one_line) {
    try {
      auto const file = lora::read_lora(path);
      auto sd = load_tiny();
      lora::apply(sd.unet, file, "unet");
      FAIL("accepted " << path);
    } catch (FormatError const& e) {
      std::string const msg = e.what();
      INFO(msg);
      for (auto const& p : parts) CHECK(msg.find(p) != std::string::npos);
      CHECK(msg.find(path) != std::string::npos);
      if (one_line) CHECK(msg.find('\n') == std::string::npos);
    }
    std::remove(path.c_str());
  };
  // A missing partner factor, a DoRA scale, full and decomposed halves at once: read errors.
  auto const missing = write("missing", {{"hada_w1_a", {8, 2}}, {"hada_w1_b", {2, 8}}, {"hada_w2_a", {8, 2}}});
  expect_error(missing, {base + ".hada_w2_b"}, true);
  auto const dora = write("dora", {{"hada_w1_a", {8, 2}},
                                   {"hada_w1_b", {2, 8}},
                                   {"hada_w2_a", {8, 2}},
                                   {"hada_w2_b", {2, 8}},
                                   {"dora_scale", {8, 1}}});
  expect_error(dora, {base + ".dora_scale", "DoRA"}, true);
  auto const both =
      write("both", {{"lokr_w1", {2, 2}}, {"lokr_w1_a", {2, 1}}, {"lokr_w1_b", {1, 2}}, {"lokr_w2", {4, 4}}});
  expect_error(both, {base, "full and a decomposed"}, true);
  auto const empty = write("empty", {{"hada_w1_a", {8, 0}}, {"hada_w1_b", {0, 8}}, {"hada_w2_a", {8, 2}},
                                     {"hada_w2_b", {2, 8}}});
  expect_error(empty, {base + ".hada_w1_a", "(8, 0)"}, true);
  // Factors that do not fit the layer (proj_in is a (8, 8, 1, 1) conv): apply names the key and both shapes.
  auto const shape = write("shape", {{"lokr_w1", {2, 2}}, {"lokr_w2", {4, 3}}, {"alpha", {}}});
  expect_error(shape, {base + ".lokr_w1", "(8, 8, 1, 1)", "lokr_w2 (4, 3)"}, false);
}
