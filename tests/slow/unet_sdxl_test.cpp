/// @file unet_sdxl_test.cpp
/// @brief The full-size SDXL 1.0 UNet (UNetConfig::sdxl(), 2,567,463,684 parameters: diffusers' count) with random
/// weights written as an SDXL single file in 16 bits (model.diffusion_model.* SGM keys, label_emb included), loaded
/// back through the single-file key mapping with 16-bit weight storage, and run once at 32x32 latents with CFG's
/// batch of 2 and SDXL's micro-conditioning. Records time and peak RSS. Label `slow` (minutes; ~10 GB peak: the load
/// still builds the float model before narrowing its weights, see docs/performance.md).
#include <catch2/catch.hpp>

#include <chrono>      // std::chrono::steady_clock
#include <cmath>       // std::sqrt, std::isfinite
#include <cstdint>     // std::uint64_t
#include <cstdlib>     // std::atof
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <string>      // std::string

#include <sdlora/backend/cpu.hpp>              // the CPU kernels
#include <sdlora/io/safetensors.hpp>           // io::SafetensorsWriter, io::SafetensorsFile
#include <sdlora/models/save_single_file.hpp>  // models::ldm_key_from_unet
#include <sdlora/models/unet.hpp>              // models::UNet2DConditionModel, UNetConfig
#include <sdlora/models/weights.hpp>           // models::load_parameters
#include <sdlora/nn/storage.hpp>               // nn::set_weight_storage

#include "slow/full_size.hpp"  // test::status_mb, test::randomize_weights
#include "support.hpp"  // test::random_tensor

using namespace sdlora;
namespace fs = std::filesystem;

TEST_CASE("The full-size SDXL UNet loads from a 16-bit single file and runs one 32x32 forward", "[slow][unet][sdxl]") {
  auto const cfg = models::UNetConfig::sdxl();
  fs::path const dir = fs::temp_directory_path() / "sdlora_slow_sdxl";
  fs::create_directories(dir);
  fs::path const file = dir / "sdxl_unet_random.safetensors";
  {  // Write the random file, each weight narrowed to fp16 as real SDXL checkpoints ship.
    models::UNet2DConditionModel<float> unet(cfg);
    std::size_t params = 0;
    nn::for_each_parameter(unet, [&](std::string const&, auto& p) { params += std::size_t(p.value.numel()); });
    REQUIRE(params == 2567463684);  // diffusers' SDXL 1.0 UNet2DConditionModel
    test::randomize_weights(unet);
    io::SafetensorsWriter w;
    nn::for_each_parameter(unet, [&](std::string const& name, auto& p) {
      std::string const key = models::ldm_key_from_unet(name, cfg);
      REQUIRE_FALSE(key.empty());
      w.add_as<half, float>(std::string(models::kLdmUnetPrefix) + key, p.value.view());
      p.value = Tensor<float>();  // the writer holds the fp16 copy
    });
    w.write(file.string());
  }
  std::ofstream("/proc/self/clear_refs") << "5";
  auto const l0 = std::chrono::steady_clock::now();
  models::UNet2DConditionModel<float> unet(cfg);
  nn::StorageReport report;
  {  // the file's mapped pages count in RSS while it is open
    io::SafetensorsFile f(file.string());
    models::SourceMap src;
    for (auto const& key : f.keys()) {
      std::string const name = models::unet_key_from_ldm(key.substr(std::string(models::kLdmUnetPrefix).size()), cfg);
      REQUIRE_FALSE(name.empty());
      src[name] = {&f, models::KeySource{key}};
    }
    models::load_parameters<float>(unet, src, "unet from " + file.string());
    nn::set_trainable(unet, false);
    report = nn::set_weight_storage(unet, DType::F16);
  }
  BackendMemory<Cpu>::release_cached();  // the freed float weights' blocks go back to the OS
  double const load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - l0).count();
  double const load_peak_mb = test::status_mb("VmHWM:"), weights_mb = test::status_mb("VmRSS:");

  Context<Cpu> ctx;
  auto const sample = test::random_tensor<float>(Shape{2, 4, 32, 32}, 1);    // CFG: (2, 4, 32, 32)
  auto const context = test::random_tensor<float>(Shape{2, 77, 2048}, 2);    // both encoders' states side by side
  auto const pooled = test::random_tensor<float>(Shape{2, 1280}, 3);          // text_encoder_2's text_embeds
  Tensor<float> time_ids(Shape{2, 6});
  float const ids[6] = {256, 256, 0, 0, 256, 256};
  for (Index b = 0; b < 2; ++b)
    for (int k = 0; k < 6; ++k) time_ids.at({b, k}) = ids[k];
  Tensor<float> t(Shape{2});
  t(0) = t(1) = 981.0f;
  std::ofstream("/proc/self/clear_refs") << "5";
  auto const t0 = std::chrono::steady_clock::now();
  auto const y = unet.forward(ctx, sample.view(), t.view(), context.view(), {pooled.view(), time_ids.view()});
  double const seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double const peak_mb = test::status_mb("VmHWM:");
  WARN("SDXL UNet: load " << load_s << " s (peak RSS " << load_peak_mb << " MB, " << report.weights
                          << " weights narrowed to fp16, RSS after " << weights_mb << " MB); forward 2x4x32x32 "
                          << seconds << " s, " << ctx.threads() << " threads, peak RSS " << peak_mb << " MB");
  fs::remove(file);

  REQUIRE(y.shape() == Shape{2, 4, 32, 32});
  double sum = 0, sum2 = 0;
  for (Index i = 0; i < y.numel(); ++i) {
    REQUIRE(std::isfinite(y(i)));
    sum += y(i);
    sum2 += double(y(i)) * y(i);
  }
  double const mean = sum / double(y.numel()), std = std::sqrt(sum2 / double(y.numel()) - mean * mean);
  CHECK(std > 1e-3);
  CHECK(std < 1e3);
  // The weights live in 16 bits after the load (the process RSS above also holds allocator slack: measured 7.5 GB
  // for 5.1 GB of weights, and a load peak of 15.4 GB: the float model plus the file's mapped pages).
  double bytes = 0;
  nn::for_each_parameter(unet, [&](std::string const&, auto& p) {
    bytes += p.is_16bit() ? double(p.value16.numel()) * 2 : double(p.value.numel()) * 4;
  });
  CHECK(bytes < 2567463684.0 * 2 * 1.01);
}
