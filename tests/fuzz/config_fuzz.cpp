/// @file config_fuzz.cpp
/// @brief libFuzzer target for diffusers JSON configs: any bytes that parse as JSON are either accepted by the UNet,
/// VAE, text-encoder and scheduler config readers or rejected with a sdlora::Error (a field of the wrong type
/// included); never another exception, a crash or a huge allocation.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <string>   // std::string

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/models/config.hpp>       // models::UNetConfig, VaeConfig, ClipTextConfig
#include <sdlora/schedulers/factory.hpp>  // schedulers::make_scheduler

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  auto const j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    (void)sdlora::models::UNetConfig::from_json(j);
  } catch (sdlora::Error const&) {
  }
  try {
    (void)sdlora::models::VaeConfig::from_json(j);
  } catch (sdlora::Error const&) {
  }
  try {
    (void)sdlora::models::ClipTextConfig::from_json(j);
  } catch (sdlora::Error const&) {
  }
  for (char const* name : {"ddim", "euler", "dpmpp_2m"}) {
    try {
      auto s = sdlora::schedulers::make_scheduler(name, j);
      s->set_timesteps(4);
    } catch (sdlora::Error const&) {
    }
  }
  return 0;
}
