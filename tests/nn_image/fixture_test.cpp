// The image-side layers against PyTorch / diffusers (tools/fixtures/make_nn_image.py). Each fixture holds float32
// inputs, parameters and upstream gradient, and float64 references computed by the same module in float64 from those
// float32 values. Tolerances (relative L2):
//  - float:  1e-5 (the project's fp32-op bound). Our float32 sums of at most K = 144 (conv) or 120 (a GroupNorm group)
//    terms carry rounding of about sqrt(K) * 6e-8 ~ 1e-6 relative, so 1e-5 holds with margin (measured worst:
//    2.8e-7); no case needs more.
//  - double: 1e-12. Both sides compute in float64 from identical values; only summation order differs.
#include <catch2/catch.hpp>

#include <string>  // std::string

#include "support.hpp"

using namespace sdlora;
using test::rel_l2;

namespace {

constexpr double kFloatTolerance = 1e-5;
constexpr double kDoubleTolerance = 1e-12;

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? kFloatTolerance : kDoubleTolerance;
}

/// Loads the fixture's parameters into `module`, runs forward (Train) and backward with the fixture's x and dy, and
/// compares y, dx and every parameter gradient with the float64 references.
template <class T, class M>
void check_against_fixture(std::string const& name, M& module) {
  INFO("fixture " << name << ", " << (std::is_same_v<T, float> ? "float" : "double"));
  io::SafetensorsFile const file(test::fixture("nn_image/" + name + ".safetensors"));
  int params = 0;
  nn::for_each_parameter(module, [&](std::string const& key, auto& p) {
    p.value = file.load<T>(key, p.shape());
    p.set_trainable(true);
    ++params;
  });
  Context<Cpu> ctx;
  auto const x = file.load<T>("x");
  auto const dy = file.load<T>("dy");
  auto const y = module.forward(ctx, x, nn::Mode::Train);
  auto const dx = module.backward(ctx, dy);
  CHECK(rel_l2(y, file.load<double>("y")) < tolerance<T>());
  CHECK(rel_l2(dx, file.load<double>("dx")) < tolerance<T>());
  int grads = 0;
  nn::for_each_parameter(module, [&](std::string const& key, auto& p) {
    INFO("gradient of " << key);
    CHECK(rel_l2(p.grad, file.load<double>("d" + key)) < tolerance<T>());
    ++grads;
  });
  CHECK(grads == params);
  CHECK(int(file.size()) == 4 + 2 * params);  // every tensor of the fixture was used
}

template <class T>
void check_all_layers() {
  {
    nn::Conv2d<T> m(16, 12, 3, 1, 1);
    check_against_fixture<T>("conv3x3_s1_p1", m);
  }
  {
    nn::Conv2d<T> m(16, 12, 3, 2, 1);
    check_against_fixture<T>("conv3x3_s2_p1", m);
  }
  {
    nn::Conv2d<T> m(16, 12, 1);
    check_against_fixture<T>("conv1x1", m);
  }
  {
    nn::Conv2d<T> m(8, 6, 3, 1, 0, false);
    check_against_fixture<T>("conv3x3_s1_p0_nobias", m);
  }
  {
    nn::Downsample2D<T> m(8, true, 8, 1);
    check_against_fixture<T>("downsample_p1", m);
  }
  {
    nn::Downsample2D<T> m(8, true, 8, 0);
    check_against_fixture<T>("downsample_p0", m);
  }
  {
    nn::Upsample2D<T> m(8, true, 6);
    check_against_fixture<T>("upsample_conv", m);
  }
  {
    nn::GroupNorm<T> m(4, 16, 1e-6);
    check_against_fixture<T>("group_norm", m);
  }
  {
    nn::GroupNorm<T> m(4, 16, 1e-6, true, true);
    check_against_fixture<T>("group_norm_silu", m);
  }
  {
    nn::LayerNorm<T> m(24, 1e-5);
    check_against_fixture<T>("layer_norm", m);
  }
  {
    nn::SiLU<T> m;
    check_against_fixture<T>("silu", m);
  }
  {
    nn::TimestepEmbedding<T> m(32, 64);
    check_against_fixture<T>("timestep_embedding", m);
  }
}

}  // namespace

TEST_CASE("Image layers match PyTorch / diffusers in float32", "[nn_image][fixture]") { check_all_layers<float>(); }

TEST_CASE("Image layers match PyTorch / diffusers in float64", "[nn_image][fixture]") { check_all_layers<double>(); }

TEST_CASE("timestep_sinusoidal matches diffusers' get_timestep_embedding", "[nn_image][timestep][fixture]") {
  // diffusers computes the embedding in float32, so its float32 output is the reference for our float path, which
  // rounds every step to float in the same order. Tolerance 1e-5 relative L2 (the fp32-op bound). What remains are
  // one-ulp differences between torch's vectorised exp/sin/cos and glibc's: at t = 999 one ulp of the argument is
  // 6.1e-5, so single elements move by up to ~1e-4; measured over all 320 columns: 2.5e-6 (shift 0), 1.5e-8 (shift 1).
  io::SafetensorsFile const file(test::fixture("nn_image/timestep_sinusoidal.safetensors"));
  Context<Cpu> ctx;
  auto const t = file.load<float>("timesteps");
  for (bool flip : {false, true})
    for (int shift : {0, 1}) {
      std::string const key = "emb_flip" + std::to_string(int(flip)) + "_shift" + std::to_string(shift);
      INFO(key);
      nn::Timesteps<float> proj(320, flip, shift);
      auto const emb = proj.forward(ctx, t);
      CHECK(rel_l2(emb, file.load<float>(key)) < 1e-5);
    }
  Tensor<float> odd(Shape{t.dim(0), 33});
  ops::timestep_sinusoidal<float, Cpu>(ctx, odd.view(), t.view(), true, 1.0, 2.0);
  CHECK(rel_l2(odd, file.load<float>("emb_odd_flip1_shift1_scale2")) < 1e-5);
}
