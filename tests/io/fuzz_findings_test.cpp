// Inputs the fuzz targets found (tests/fixtures/fuzz/findings/), each now a one-line error instead of undefined
// behaviour: a float .npy read as uint8 with a value out of range, and a VAE config with norm_num_groups 0 (a
// division by zero), plus the same guard on the UNet and CLIP configs.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <sdlora/pipeline.hpp>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("Fuzz findings give one-line errors", "[io][fuzz]") {
  CHECK_THROWS_AS(io::load_npy<std::uint8_t>(test::fixture("fuzz/findings/npy-f4-as-u8-out-of-range.npy")),
                  FormatError);
  CHECK_THROWS_WITH(models::VaeConfig::from_json(
                        models::read_json(test::fixture("fuzz/findings/config-division-by-zero.json"))),
                    Catch::Contains("norm_num_groups must be positive"));
  nlohmann::json unet = {{"norm_num_groups", 0}};
  CHECK_THROWS_WITH(models::UNetConfig::from_json(unet), Catch::Contains("norm_num_groups must be positive"));
  nlohmann::json clip = {{"num_attention_heads", 0}};
  CHECK_THROWS_AS(models::ClipTextConfig::from_json(clip), ConfigError);
}
