// The whole tiny pipeline with its frozen weights in 16 bits against the float pipeline, same seed. Tolerance: mean
// |difference| of the final image <= 2/255 (images in [0, 1]), the bound for 16-bit weights.
#include <catch2/catch.hpp>

#include <cmath>

#include <sdlora/pipeline.hpp>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("txt2img with F16 / BF16 frozen weights stays within 2/255 of float", "[pipeline][storage]") {
  Context<Cpu> ctx;
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.steps = 4;
  o.width = o.height = 16;
  o.seed = 42;
  o.sampler = "euler";
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto const want = pipeline::txt2img(ctx, sd, o);
  for (DType d : {DType::F16, DType::BF16}) {
    INFO(dtype_name(d));
    nn::set_weight_storage(sd.unet, d);
    nn::set_weight_storage(sd.text_encoder, d);
    auto const r = nn::set_weight_storage(sd.vae, d);
    CHECK(r.weights > 0);
    auto const got = pipeline::txt2img(ctx, sd, o);
    double diff = 0;
    for (Index i = 0; i < got.images.numel(); ++i) diff += std::abs(double(got.images(i)) - double(want.images(i)));
    diff /= double(got.images.numel());
    // The tiny fixture's weights were written in fp16, so F16 storage is exact here (diff 0); BF16 drops 3 more
    // mantissa bits and must change the image (proof that the 16-bit path ran).
    if (d == DType::BF16) CHECK(diff > 0);
    CHECK(diff <= 2.0 / 255);
    nn::set_weight_storage(sd.unet, DType::F32);
    nn::set_weight_storage(sd.text_encoder, DType::F32);
    nn::set_weight_storage(sd.vae, DType::F32);
  }
}
