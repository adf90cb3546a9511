// The whole tiny pipeline with its frozen weights in 16 bits against the float pipeline, same seed. Tolerance: mean
// |difference| of the final image <= 2/255 (images in [0, 1]), the bound for 16-bit weights. Then the same
// weights narrowed while loading (LoadOptions::weights_dtype): bit for bit the model narrowed after loading.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include <sdlora/pipeline.hpp>
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;

namespace {
/// The 16-bit tests' generation: 4 Euler steps at 16 px, seed 42.
pipeline::GenerateOptions tiny_options() {
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.steps = 4;
  o.width = o.height = 16;
  o.seed = 42;
  o.sampler = "euler";
  return o;
}
/// Mean |got - want| over every pixel of the images (values in [0, 1]).
template <class Images>
double mean_image_diff(Images const& got, Images const& want) {
  double diff = 0;
  for (Index i = 0; i < got.numel(); ++i) diff += std::abs(double(got(i)) - double(want(i)));
  return diff / double(got.numel());
}
}  // namespace

TEST_CASE("txt2img with F16 / BF16 frozen weights stays within 2/255 of float", "[pipeline][storage]") {
  Context<Cpu> ctx;
  pipeline::GenerateOptions const o = tiny_options();
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  auto const want = pipeline::txt2img(ctx, sd, o);
  for (DType d : {DType::F16, DType::BF16}) {
    INFO(dtype_name(d));
    nn::set_weight_storage(sd.unet, d);
    nn::set_weight_storage(sd.text_encoder, d);
    auto const r = nn::set_weight_storage(sd.vae, d);
    CHECK(r.weights > 0);
    auto const got = pipeline::txt2img(ctx, sd, o);
    double const diff = mean_image_diff(got.images, want.images);
    // The tiny fixture's weights were written in fp16, so F16 storage is exact here (diff 0); BF16 drops 3 more
    // mantissa bits and must change the image (proof that the 16-bit path ran).
    if (d == DType::BF16) CHECK(diff > 0);
    CHECK(diff <= 2.0 / 255);
    nn::set_weight_storage(sd.unet, DType::F32);
    nn::set_weight_storage(sd.text_encoder, DType::F32);
    nn::set_weight_storage(sd.vae, DType::F32);
  }
}

TEST_CASE("txt2img with bf16 compute stays within 2/255 of float on every bf16 unit the CPU has",
          "[pipeline][storage][bf16]") {
  // Context::compute = BF16 (every GEMM's operands rounded to bf16, attention's too on AMX; sums in float):
  // the 16-bit bound against the float pipeline, same seed, and not its bits (the rounding happened).
  pipeline::GenerateOptions const o = tiny_options();
  auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  Context<Cpu> ctx;
  auto const want = pipeline::txt2img(ctx, sd, o);
  ctx.compute = DType::BF16;
  for (auto unit : {cpu::Bf16Unit::kRounded, cpu::Bf16Unit::kDot, cpu::Bf16Unit::kAmx}) {
    if (unit > cpu::detected_bf16_unit()) continue;
    INFO(cpu::bf16_unit_name(unit));
    cpu::bf16_unit_cap().store(int(unit));
    auto const got = pipeline::txt2img(ctx, sd, o);
    cpu::bf16_unit_cap().store(int(cpu::Bf16Unit::kAuto));
    double const diff = mean_image_diff(got.images, want.images);
    CHECK(diff > 0);
    CHECK(diff <= 2.0 / 255);
  }
}

namespace {
/// Every parameter of `got` against `want` (same tree): the 16-bit storage and bits of each weight the GEMM reads,
/// the float value of every other parameter. Returns how many weights were 16-bit.
template <class Module>
std::size_t check_same_storage(Module& got, Module& want, DType d) {
  std::size_t sixteen = 0;
  std::vector<nn::Parameter<float, Cpu>*> wanted;
  nn::for_each_parameter(want, [&](std::string const&, nn::Parameter<float, Cpu>& p) { wanted.push_back(&p); });
  std::size_t i = 0;
  got.visit("", [&](std::string const& leaf_name, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    leaf.for_each_parameter(leaf_name, [&](std::string const& name, nn::Parameter<float, Cpu>& p) {
      INFO(name);
      REQUIRE(i < wanted.size());
      nn::Parameter<float, Cpu> const& w = *wanted[i++];
      bool weight = false;
      if constexpr (nn::WeightLeaf<L>) weight = &p == &leaf.weight;
      if (weight) {  // a frozen Linear / Conv2d weight: kept in 16 bits from the moment it was read
        CHECK(p.value.empty());
        CHECK(!p.value16.empty());
        CHECK(p.storage == d);
        REQUIRE(p.value16.shape() == w.value16.shape());
        Index differ = 0;
        for (Index e = 0; e < p.value16.numel(); ++e) differ += p.value16(e) != w.value16(e);
        CHECK(differ == 0);
        ++sixteen;
      } else {  // norms, biases, embeddings stay float
        CHECK(!p.is_16bit());
        REQUIRE(p.value.shape() == w.value.shape());
        Index differ = 0;
        for (Index e = 0; e < p.value.numel(); ++e) differ += p.value(e) != w.value(e);
        CHECK(differ == 0);
      }
    });
  });
  CHECK(i == wanted.size());
  return sixteen;
}
}  // namespace

// LoadOptions::weights_dtype narrows each frozen weight as it is read instead of after the whole float model: the
// result must be the very model that load + set_weight_storage gives (bit for bit, so the outputs are those that the
// test above bounds against float: checked equal here), from a float diffusers folder (read, then narrowed) and from
// an fp16 single file (F16: the file's bits copied; BF16: read and narrowed).
TEST_CASE("Loading with weights_dtype F16 / BF16 keeps each frozen weight in 16 bits from the start",
          "[pipeline][storage]") {
  Context<Cpu> ctx;
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.steps = 2;
  o.width = o.height = 16;
  o.seed = 7;
  o.sampler = "euler";
  for (std::string const file : {"models/tiny-sd1", "models/tiny-sd1.safetensors"}) {
    models::LoadOptions lo;
    lo.config_dir = file == "models/tiny-sd1.safetensors" ? test::fixture("models/tiny-sd1") : "";
    auto want = models::load_stable_diffusion<float>(test::fixture(file), lo);
    auto const want_f32 = pipeline::txt2img(ctx, want, o);
    for (DType d : {DType::F16, DType::BF16}) {
      INFO(file << " " << dtype_name(d));
      models::set_weight_storage(want, d);
      lo.weights_dtype = d;
      auto got = models::load_stable_diffusion<float>(test::fixture(file), lo);
      std::size_t const sixteen = check_same_storage(got.unet, want.unet, d) +
                                  check_same_storage(got.text_encoder, want.text_encoder, d) +
                                  check_same_storage(got.vae, want.vae, d);
      CHECK(sixteen == models::set_weight_storage(want, d).weights);  // every weight set_weight_storage converts
      auto const a = pipeline::txt2img(ctx, got, o), b = pipeline::txt2img(ctx, want, o);
      Index differ = 0;
      double diff = 0;
      for (Index i = 0; i < a.images.numel(); ++i) {
        differ += a.images(i) != b.images(i);
        diff += std::abs(double(a.images(i)) - double(want_f32.images(i)));
      }
      CHECK(differ == 0);
      CHECK(diff / double(a.images.numel()) <= 2.0 / 255);  // the 16-bit bound against float, as above
      models::set_weight_storage(want, DType::F32);
    }
  }
  models::LoadOptions bad;
  bad.weights_dtype = DType::I8;
  CHECK_THROWS_WITH(models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"), bad),
                    Catch::Contains("weights_dtype must be F32, F16 or BF16"));
}
