/// @file format_test.cpp
/// @brief LoRA files: kohya (diffusers and LDM names) and diffusers/PEFT files written by Python are read and
/// applied with the deltas PEFT / the formula give; our writers round-trip; errors name every bad key.
#include <catch2/catch.hpp>

#include <cstdio>  // std::remove
#include <deque>   // std::deque

#include <sdlora/backend/cpu/conv.hpp>  // ops::Impl<Conv2d, Cpu>
#include <sdlora/lora/format.hpp>       // lora::read_lora, apply, save_kohya, save_peft
#include <sdlora/nn/conv2d.hpp>         // nn::Conv2d

#include "support.hpp"

using namespace sdlora;

namespace {

/// The fake UNet / text encoder of make_lora.py: leaves under diffusers / transformers names.
template <class T>
struct FakeTree {
  std::vector<std::string> order;
  std::deque<std::pair<std::string, nn::Linear<T>>> linears;
  std::deque<std::pair<std::string, nn::Conv2d<T>>> convs;

  explicit FakeTree(std::string const& component, bool zero_weights) {
    struct Spec {
      char const* component;
      char const* name;
      Index out, in, k;
    };
    static Spec const kTree[] = {
        {"unet", "down_blocks.0.attentions.0.proj_in", 8, 8, 0},
        {"unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 8, 8, 0},
        {"unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", 8, 8, 0},
        {"unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 16, 8, 0},
        {"unet", "down_blocks.0.resnets.0.conv1", 6, 4, 3},
        {"unet", "down_blocks.0.resnets.0.time_emb_proj", 6, 10, 0},
        {"unet", "mid_block.attentions.0.proj_out", 8, 8, 0},
        {"unet", "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k", 8, 12, 0},
        {"text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", 8, 8, 0},
        {"text_encoder", "text_model.encoder.layers.0.mlp.fc1", 16, 8, 0},
    };
    std::uint32_t seed = 1;
    for (auto const& s : kTree) {
      if (component != s.component) continue;
      order.push_back(s.name);
      if (s.k) {
        convs.emplace_back(s.name, nn::Conv2d<T>(s.in, s.out, s.k, 1, 1));
        if (!zero_weights) convs.back().second.weight.value = test::random_tensor<T>(Shape{s.out, s.in, s.k, s.k}, seed);
      } else {
        linears.emplace_back(s.name, nn::Linear<T>(s.in, s.out));
        if (!zero_weights) linears.back().second.weight.value = test::random_tensor<T>(Shape{s.out, s.in}, seed);
      }
      ++seed;
    }
  }
  template <class V>
  void visit(std::string const& prefix, V&& v) {
    for (auto const& name : order) {
      for (auto& [n, l] : linears)
        if (n == name) l.visit(nn::join(prefix, n), v);
      for (auto& [n, c] : convs)
        if (n == name) c.visit(nn::join(prefix, n), v);
    }
  }
  /// The weight of a leaf by name, as a tensor copy.
  Tensor<T> weight(std::string const& name) {
    for (auto& [n, l] : linears)
      if (n == name) return l.weight.value;
    for (auto& [n, c] : convs)
      if (n == name) return c.weight.value;
    SDLORA_THROW(Error, "no leaf " << name);
  }
  /// The sum of each leaf's forward on a fixed input (adapters included): compares adapter vs merged.
  std::vector<Tensor<T>> outputs(Context<Cpu>& ctx) {
    std::vector<Tensor<T>> out;
    for (auto& [n, l] : linears) out.push_back(l.forward(ctx, test::random_tensor<T>(Shape{3, l.in_features()}, 7)));
    for (auto& [n, c] : convs)
      out.push_back(c.forward(ctx, test::random_tensor<T>(Shape{2, c.in_channels(), 5, 5}, 8)));
    return out;
  }
};

std::string temp_path(std::string const& name) { return "lora_format_test_" + name + ".safetensors"; }

/// Merges `file` into zero-weight double trees and checks every leaf's weight against the expected delta.
/// Tolerance 1e-12 relative L2: the factors are the same float32 values, multiplied in double on both sides.
void check_deltas(lora::LoraFile const& file, std::string const& expected_prefix) {
  io::SafetensorsFile const expected(test::fixture("lora/lora_expected.safetensors"));
  Index checked = 0;
  for (std::string component : {"unet", "text_encoder"}) {
    FakeTree<double> tree(component, true);
    auto report = lora::apply(tree, file, component, {.mode = lora::ApplyMode::Merge});
    for (auto const& name : report.modules) {
      INFO(expected_prefix << component << "/" << name);
      CHECK(test::rel_l2(tree.weight(name), expected.load<double>(expected_prefix + component + "/" + name)) < 1e-12);
      ++checked;
    }
  }
  Index n_expected = 0;
  for (auto const& k : expected.keys()) n_expected += k.rfind(expected_prefix, 0) == 0;
  CHECK(checked == n_expected);
}

}  // namespace

TEST_CASE("kohya files (diffusers and LDM module names) give the expected deltas", "[lora][format][kohya]") {
  auto const diff = lora::read_lora(test::fixture("lora/kohya_diffusers.safetensors"));
  auto const ldm = lora::read_lora(test::fixture("lora/kohya_ldm.safetensors"));
  CHECK(diff.format == lora::LoraFormat::Kohya);
  CHECK(diff.entries.size() == 10);
  CHECK(ldm.entries.size() == 10);
  CHECK(diff.unknown_keys.empty());
  CHECK(diff.metadata.at("ss_network_module") == "networks.lora");
  // Missing alpha = rank; the dotted guess and the LDM mapping give diffusers names.
  for (auto const& e : diff.entries) {
    if (e.module == "down_blocks.0.resnets.0.time_emb_proj") {
      CHECK(!e.has_alpha);
      CHECK(e.alpha == 4.0);
    } else {
      CHECK(e.has_alpha);
    }
  }
  std::set<std::string> diff_modules, ldm_modules;
  for (auto const& e : diff.entries) diff_modules.insert(e.component + ":" + e.module);
  for (auto const& e : ldm.entries) ldm_modules.insert(e.component + ":" + e.module);
  CHECK(diff_modules == ldm_modules);
  CHECK(diff_modules.count("unet:down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"));
  CHECK(diff_modules.count("unet:down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"));
  CHECK(diff_modules.count("text_encoder:text_model.encoder.layers.0.self_attn.q_proj"));
  check_deltas(diff, "kohya/");
  check_deltas(ldm, "kohya/");
}

TEST_CASE("LDM UNet names map to diffusers names (SD 1.x / 2.x layout)", "[lora][format][ldm]") {
  using lora::ldm_unet_to_diffusers;
  CHECK(*ldm_unet_to_diffusers("input_blocks_1_1_transformer_blocks_0_attn1_to_q") ==
        "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
  CHECK(*ldm_unet_to_diffusers("input_blocks_8_1_proj_in") == "down_blocks_2_attentions_1_proj_in");
  CHECK(*ldm_unet_to_diffusers("input_blocks_3_0_op") == "down_blocks_0_downsamplers_0_conv");
  CHECK(*ldm_unet_to_diffusers("input_blocks_11_0_out_layers_3") == "down_blocks_3_resnets_1_conv2");
  CHECK(*ldm_unet_to_diffusers("input_blocks_4_0_skip_connection") == "down_blocks_1_resnets_0_conv_shortcut");
  CHECK(*ldm_unet_to_diffusers("input_blocks_0_0") == "conv_in");
  CHECK(*ldm_unet_to_diffusers("middle_block_0_emb_layers_1") == "mid_block_resnets_0_time_emb_proj");
  CHECK(*ldm_unet_to_diffusers("middle_block_1_transformer_blocks_0_attn2_to_v") ==
        "mid_block_attentions_0_transformer_blocks_0_attn2_to_v");
  CHECK(*ldm_unet_to_diffusers("middle_block_2_in_layers_2") == "mid_block_resnets_1_conv1");
  CHECK(*ldm_unet_to_diffusers("output_blocks_2_1_conv") == "up_blocks_0_upsamplers_0_conv");  // no attention
  CHECK(*ldm_unet_to_diffusers("output_blocks_5_2_conv") == "up_blocks_1_upsamplers_0_conv");
  CHECK(*ldm_unet_to_diffusers("output_blocks_11_1_proj_out") == "up_blocks_3_attentions_2_proj_out");
  CHECK(*ldm_unet_to_diffusers("time_embed_0") == "time_embedding_linear_1");
  CHECK(*ldm_unet_to_diffusers("out_2") == "conv_out");
  CHECK(!ldm_unet_to_diffusers("down_blocks_0_attentions_0_proj_in"));
  CHECK(lora::guess_dotted("text_model_encoder_layers_11_self_attn_out_proj") ==
        "text_model.encoder.layers.11.self_attn.out_proj");
  CHECK(lora::guess_dotted("up_blocks_1_resnets_0_conv_shortcut") == "up_blocks.1.resnets.0.conv_shortcut");
}

TEST_CASE("diffusers/PEFT files give PEFT's own merged deltas (lora_adapter_metadata alphas)", "[lora][format]") {
  auto const f = lora::read_lora(test::fixture("lora/peft_pipeline.safetensors"));
  CHECK(f.format == lora::LoraFormat::Peft);
  CHECK(f.entries.size() == 8);
  CHECK(f.unknown_keys.empty());
  for (auto const& e : f.entries) {
    INFO(e.component << " " << e.module);
    if (e.module == "down_blocks.0.attentions.0.proj_in") CHECK(e.alpha == 2.0);  // alpha_pattern
    else if (e.component == "unet") CHECK(e.alpha == 8.0);
    else CHECK(e.alpha == 6.0);
    if (e.module == "mid_block.attentions.0.proj_out") CHECK(e.rank() == 2);  // rank_pattern
  }
  check_deltas(f, "peft/");

  // The old attention-processor layout: to_q_lora -> to_q, to_out_lora -> to_out.0, UNet component implied.
  auto const old = lora::read_lora(test::fixture("lora/peft_old_procs.safetensors"));
  REQUIRE(old.entries.size() == 2);
  std::set<std::string> modules;
  for (auto const& e : old.entries) {
    CHECK(e.component == "unet");
    CHECK(e.alpha == double(e.rank()));  // no metadata: alpha = rank
    modules.insert(e.module);
  }
  CHECK(modules == std::set<std::string>{"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                                         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"});
  FakeTree<float> tree("unet", false);
  CHECK(lora::apply(tree, old, "unet").applied == 2);
}

TEST_CASE("Adapter mode equals merge mode; writers round-trip", "[lora][format][roundtrip]") {
  Context<Cpu> ctx;
  auto const file = lora::read_lora(test::fixture("lora/kohya_diffusers.safetensors"));
  for (std::string component : {"unet", "text_encoder"}) {
    DYNAMIC_SECTION(component) {
      FakeTree<double> adapted(component, false), merged(component, false);
      auto const base = adapted.outputs(ctx);
      auto ra = lora::apply(adapted, file, component, {.multiplier = 0.8, .adapter_name = "style"});
      auto rm = lora::apply(merged, file, component, {.multiplier = 0.8, .mode = lora::ApplyMode::Merge});
      CHECK(ra.applied == Index(adapted.order.size()));
      CHECK(rm.applied == ra.applied);
      auto const ya = adapted.outputs(ctx), ym = merged.outputs(ctx);
      for (std::size_t i = 0; i < ya.size(); ++i) {
        CHECK(test::rel_l2(ya[i], base[i]) > 1e-3);    // the LoRA changes the output
        CHECK(test::rel_l2(ym[i], ya[i]) < 1e-12);    // double: same sums in another order
      }
      // Ours -> PEFT -> ours and ours -> kohya -> ours give identical factors and alphas.
      auto const collected = lora::collect(adapted, component, "style");
      REQUIRE(collected.entries.size() == adapted.order.size());
      lora::save_peft(temp_path("peft_" + component), collected);
      lora::save_kohya(temp_path("kohya_" + component), collected);
      for (auto const& path : {temp_path("peft_" + component), temp_path("kohya_" + component)}) {
        auto const back = lora::read_lora(path);
        REQUIRE(back.entries.size() == collected.entries.size());
        CHECK(back.unknown_keys.empty());
        FakeTree<double> again(component, false);
        lora::apply(again, back, component, {.multiplier = 0.8, .mode = lora::ApplyMode::Merge});
        auto const yb = again.outputs(ctx);
        for (std::size_t i = 0; i < yb.size(); ++i) CHECK(test::rel_l2(yb[i], ym[i]) == 0.0);
        std::remove(path.c_str());
      }
    }
  }

  // kohya -> ours -> kohya: the same keys with bit-identical tensors, and sd-scripts metadata.
  lora::save_kohya(temp_path("kohya_all"), file);
  io::SafetensorsFile const a(test::fixture("lora/kohya_diffusers.safetensors")), b(temp_path("kohya_all"));
  auto ka = a.keys(), kb = b.keys();
  std::sort(ka.begin(), ka.end());
  std::sort(kb.begin(), kb.end());
  // The layer without alpha gets an explicit alpha = rank on write (same delta).
  std::erase(kb, std::string("lora_unet_down_blocks_0_resnets_0_time_emb_proj.alpha"));
  CHECK(ka == kb);
  for (auto const& k : ka) {
    INFO(k);
    CHECK(a.info(k).dtype == b.info(k).dtype);
    CHECK(a.info(k).shape == b.info(k).shape);
    CHECK(a.bytes(k) == b.bytes(k));
  }
  CHECK(b.metadata().at("ss_network_module") == "networks.lora");
  CHECK(b.metadata().at("ss_network_dim") == "4");
  CHECK(b.metadata().at("ss_base_model_version") == "sd_v1");
  CHECK(b.metadata().count("ss_network_args") == 1);  // a LoCon layer: conv_dim / conv_alpha
  std::remove(temp_path("kohya_all").c_str());
}

TEST_CASE("apply reports every unknown key, unmatched module and shape mismatch, and changes nothing",
          "[lora][format][errors]") {
  io::SafetensorsWriter w;
  auto put = [&](std::string const& k, Shape s) { w.add(k, test::random_tensor<float>(s, 1)); };
  put("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", Shape{4, 8});
  put("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", Shape{8, 4});
  put("lora_unet_down_blocks_9_nothing_here.lora_down.weight", Shape{4, 8});
  put("lora_unet_down_blocks_9_nothing_here.lora_up.weight", Shape{8, 4});
  put("lora_unet_mid_block_attentions_0_proj_out.lora_down.weight", Shape{4, 7});
  put("lora_unet_mid_block_attentions_0_proj_out.lora_up.weight", Shape{8, 4});
  put("lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale", Shape{8});
  w.write(temp_path("bad"));
  auto const file = lora::read_lora(temp_path("bad"));
  FakeTree<float> tree("unet", false);
  auto const w0 = tree.weight("down_blocks.0.attentions.0.proj_in");
  try {
    lora::apply(tree, file, "unet");
    FAIL("apply accepted a bad file");
  } catch (FormatError const& e) {
    std::string const msg = e.what();
    INFO(msg);
    CHECK(msg.find("3 problem(s)") != std::string::npos);
    CHECK(msg.find("lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale") != std::string::npos);
    CHECK(msg.find("lora_unet_down_blocks_9_nothing_here.lora_down.weight") != std::string::npos);
    CHECK(msg.find("lora_unet_mid_block_attentions_0_proj_out.lora_down.weight") != std::string::npos);
    CHECK(msg.find("(4, 7)") != std::string::npos);  // the actual shape
    CHECK(msg.find("(4, 8)") != std::string::npos);  // the expected shape
    CHECK(msg.find(temp_path("bad")) != std::string::npos);
  }
  CHECK(test::rel_l2(tree.weight("down_blocks.0.attentions.0.proj_in"), w0) == 0.0);  // nothing applied
  // Non-strict: the good entry is applied and the problems are returned.
  auto report = lora::apply(tree, file, "unet", {.mode = lora::ApplyMode::Merge, .strict = false});
  CHECK(report.applied == 1);
  CHECK(report.problems.size() == 3);
  std::remove(temp_path("bad").c_str());
}
