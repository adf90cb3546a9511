#include <catch2/catch.hpp>

#include <set>

#include <sdlora/models/config.hpp>
#include <sdlora/models/single_file.hpp>

#include "support.hpp"

using namespace sdlora;

namespace {
// Every diffusers tensor of `folder_file` must come from exactly one LDM tensor of the single file, bit-equal.
void check_component(io::SafetensorsFile const& ldm, io::SafetensorsFile const& folder, std::string const& prefix,
                     auto&& map_key) {
  std::set<std::string> mapped;
  for (auto const& key : ldm.keys()) {
    if (key.rfind(prefix, 0) != 0) continue;
    bool squeeze = false;
    std::string const name = map_key(key.substr(prefix.size()), squeeze);
    INFO(key);
    REQUIRE_FALSE(name.empty());
    REQUIRE(folder.contains(name));
    REQUIRE(mapped.insert(name).second);
    auto a = ldm.load<float>(key);
    auto b = folder.load<float>(name);
    REQUIRE(a.numel() == b.numel());
    if (!squeeze) REQUIRE(a.shape() == b.shape());
    for (Index i = 0; i < a.numel(); ++i) REQUIRE(a(i) == b(i));
  }
  CHECK(mapped.size() == folder.size());
}
}  // namespace

TEST_CASE("The single-file UNet and VAE keys map onto the diffusers folder's tensors", "[models][single_file]") {
  io::SafetensorsFile ldm(test::fixture("models/tiny-sd1.safetensors"));
  std::string const dir = test::fixture("models/tiny-sd1/");
  auto unet_cfg = models::UNetConfig::from_json(models::read_json(dir + "unet/config.json"));
  auto vae_cfg = models::VaeConfig::from_json(models::read_json(dir + "vae/config.json"));
  check_component(ldm, io::SafetensorsFile(dir + "unet/diffusion_pytorch_model.safetensors"), models::kLdmUnetPrefix,
                  [&](std::string const& k, bool&) { return models::unet_key_from_ldm(k, unet_cfg); });
  check_component(ldm, io::SafetensorsFile(dir + "vae/diffusion_pytorch_model.safetensors"), models::kLdmVaePrefix,
                  [&](std::string const& k, bool& squeeze) { return models::vae_key_from_ldm(k, vae_cfg, squeeze); });
}

TEST_CASE("OpenCLIP keys split the fused in_proj and skip dropped layers", "[models][single_file]") {
  auto q = models::clip_keys_from_openclip("transformer.resblocks.1.attn.in_proj_weight", 3);
  REQUIRE(q.size() == 3);
  CHECK(q[1].first == "text_model.encoder.layers.1.self_attn.k_proj.weight");
  CHECK(q[1].second.take == models::KeySource::Take::Third);
  CHECK(q[1].second.part == 1);
  CHECK(models::clip_keys_from_openclip("transformer.resblocks.3.ln_1.weight", 3).empty());
  CHECK(models::clip_keys_from_openclip("text_projection", 3).empty());
  CHECK(models::clip_keys_from_openclip("transformer.resblocks.0.mlp.c_fc.bias", 3)[0].first ==
        "text_model.encoder.layers.0.mlp.fc1.bias");
}

TEST_CASE("Configs parse diffusers JSON and name bad fields", "[models][config]") {
  auto sd15 = models::UNetConfig::sd15();
  CHECK(sd15.block_out_channels == std::vector<int>{320, 640, 1280, 1280});
  CHECK(sd15.num_attention_heads == std::vector<int>{8, 8, 8, 8});
  auto sd21 = models::UNetConfig::sd21();
  CHECK(sd21.num_attention_heads == std::vector<int>{5, 10, 20, 20});
  CHECK(sd21.use_linear_projection);
  CHECK_THROWS_WITH(models::UNetConfig::from_json({{"layers_per_block", "two"}}), Catch::Contains("layers_per_block"));
  CHECK_THROWS_WITH(models::UNetConfig::from_json({{"attention_head_dim", {1, 2}}}),
                    Catch::Contains("attention_head_dim"));
  CHECK_THROWS_AS(models::read_json("no/such/config.json"), IoError);
}
