#include <catch2/catch.hpp>

#include <sdlora/models/vae.hpp>
#include <sdlora/models/weights.hpp>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("VAE encoder moments and decoder output match diffusers (tiny config)", "[models][vae][conformance]") {
  // Tolerance: whole model in fp32 vs torch fp32, relative L2 <= 1e-4.
  Context<Cpu> ctx;
  std::string const dir = test::fixture("models/tiny-sd1/");
  models::AutoencoderKL<float> vae(models::VaeConfig::from_json(models::read_json(dir + "vae/config.json")));
  io::SafetensorsFile file(dir + "vae/diffusion_pytorch_model.safetensors");
  models::load_parameters<float>(vae, models::sources_from_file(file), "vae");
  io::SafetensorsFile ref(test::fixture("models/tiny-sd1-outputs.safetensors"));
  auto d = vae.encode(ctx, ref.load<float>("vae.image"));
  CHECK(test::rel_l2(d.mean, ref.load<float>("vae.mean")) < 1e-4);
  CHECK(test::rel_l2(d.logvar, ref.load<float>("vae.logvar")) < 1e-4);
  auto img = vae.decode(ctx, ref.load<float>("vae.latents"));
  CHECK(test::rel_l2(img, ref.load<float>("vae.decoded")) < 1e-4);
}
