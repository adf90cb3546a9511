// Every backward of the image-side layers against central finite differences in double.
// Tolerance 1e-6 relative L2 throughout: with eps = 1e-6 the central difference of these smooth functions is exact to
// about 1e-9 relative (truncation O(eps^2), rounding O(1e-16 / eps)), so 1e-6 leaves margin while any wrong term
// (a missed tap, a wrong sign, a missing mean term) gives errors of order 1e-1.
#include <catch2/catch.hpp>

#include <string>  // std::string

#include "support.hpp"

using namespace sdlora;
using test::numeric_gradient;
using test::random_tensor;
using test::rel_l2;

namespace {

constexpr double kFiniteDifferenceTolerance = 1e-6;

/// Fills every parameter of a module with deterministic values in [-1, 1).
template <class M>
void randomize(M& module, std::uint32_t seed) {
  nn::for_each_parameter(module,
                         [&](std::string const&, auto& p) { p.value = random_tensor<double>(p.shape(), seed++); });
}

/// Checks dx and the gradient of every parameter of `module` at x for the loss <forward(x), dy> with random dy.
/// Returns the number of parameters checked (so a test can insist that there were some).
template <class M>
int check_gradients(M& module, Tensor<double> x, std::uint32_t seed) {
  Context<Cpu> ctx;
  nn::set_trainable(module, true);
  auto const y = module.forward(ctx, x, nn::Mode::Train);
  auto const dy = random_tensor<double>(y.shape(), seed);
  auto const dx = module.backward(ctx, dy);
  auto loss = [&] { return test::inner(module.forward(ctx, x), dy); };
  CHECK(rel_l2(dx, numeric_gradient(x, loss)) < kFiniteDifferenceTolerance);
  int checked = 0;
  nn::for_each_parameter(module, [&](std::string const& name, auto& p) {
    INFO("parameter " << name);
    CHECK(rel_l2(p.grad, numeric_gradient(p.value, loss)) < kFiniteDifferenceTolerance);
    ++checked;
  });
  return checked;
}

}  // namespace

TEST_CASE("Conv2d backward matches finite differences for SD's geometries", "[nn_image][conv2d]") {
  struct Case {
    char const* name;
    Index in, out, kernel;
    ops::Conv2dGeometry geometry;
    bool bias;
    Index h, w;
  };
  Case const cases[] = {
      {"3x3 stride 1 pad 1", 4, 5, 3, {1, ops::Pad2d::uniform(1)}, true, 6, 6},
      {"3x3 stride 2 pad 1", 4, 5, 3, {2, ops::Pad2d::uniform(1)}, true, 6, 5},
      {"3x3 stride 2 pad (0, 1, 0, 1)", 4, 4, 3, {2, {0, 1, 0, 1}}, true, 5, 6},
      {"3x3 stride 1 pad 0, no bias", 4, 3, 3, {1, {}}, false, 5, 6},
      {"1x1 (pointwise GEMM path)", 6, 4, 1, {1, {}}, true, 5, 5},
      {"1x1 stride 2", 4, 3, 1, {2, {}}, true, 5, 5},
      {"3x3 stride 1 pad (2, 0, 1, 3)", 3, 4, 3, {1, {2, 0, 1, 3}}, true, 5, 4},
  };
  for (auto const& c : cases) {
    INFO(c.name);
    nn::Conv2d<double> conv(c.in, c.out, c.kernel, c.geometry, c.bias);
    randomize(conv, 10);
    CHECK(check_gradients(conv, random_tensor<double>(Shape{2, c.in, c.h, c.w}, 20), 30) == (c.bias ? 2 : 1));
  }
}

TEST_CASE("GroupNorm backward matches finite differences (affine, plain, fused SiLU, rank 3)", "[nn_image][norm]") {
  SECTION("affine, 2 groups of 3 channels") {
    nn::GroupNorm<double> gn(2, 6, 1e-6);
    randomize(gn, 1);
    CHECK(check_gradients(gn, random_tensor<double>(Shape{2, 6, 5, 5}, 2), 3) == 2);
  }
  SECTION("fused SiLU, 4 groups of 2 channels") {
    nn::GroupNorm<double> gn(4, 8, 1e-6, true, true);
    randomize(gn, 4);
    CHECK(check_gradients(gn, random_tensor<double>(Shape{2, 8, 6, 5}, 5), 6) == 2);
  }
  SECTION("affine = false") {
    nn::GroupNorm<double> gn(2, 4, 1e-5, false);
    CHECK(check_gradients(gn, random_tensor<double>(Shape{2, 4, 5, 6}, 7), 8) == 0);
  }
  SECTION("rank 3 input (N, C, L)") {
    nn::GroupNorm<double> gn(2, 4, 1e-6);
    randomize(gn, 9);
    CHECK(check_gradients(gn, random_tensor<double>(Shape{3, 4, 7}, 10), 11) == 2);
  }
}

TEST_CASE("LayerNorm backward matches finite differences", "[nn_image][norm]") {
  SECTION("affine over the last axis of (2, 3, 8)") {
    nn::LayerNorm<double> ln(8);
    randomize(ln, 1);
    CHECK(check_gradients(ln, random_tensor<double>(Shape{2, 3, 8}, 2), 3) == 2);
  }
  SECTION("elementwise_affine = false") {
    nn::LayerNorm<double> ln(7, 1e-6, false);
    CHECK(check_gradients(ln, random_tensor<double>(Shape{4, 7}, 4), 5) == 0);
  }
}

TEST_CASE("SiLU backward matches finite differences", "[nn_image][activation]") {
  nn::SiLU<double> silu;
  auto x = random_tensor<double>(Shape{2, 3, 4, 5}, 1);
  Context<Cpu> ctx;
  ops::scale<double, Cpu>(ctx, x.view(), 4.0);  // exercise [-4, 4), where silu' varies
  CHECK(check_gradients(silu, x, 2) == 0);
}

TEST_CASE("Upsample2D and Downsample2D backward match finite differences", "[nn_image][resample]") {
  SECTION("Upsample2D with its 3x3 conv") {
    nn::Upsample2D<double> up(4, true, 3);
    randomize(up, 1);
    CHECK(check_gradients(up, random_tensor<double>(Shape{2, 4, 3, 4}, 2), 3) == 2);
  }
  SECTION("Upsample2D without conv") {
    nn::Upsample2D<double> up(3, false);
    CHECK(check_gradients(up, random_tensor<double>(Shape{2, 3, 3, 2}, 4), 5) == 0);
  }
  SECTION("Downsample2D, padding 1 (UNet)") {
    nn::Downsample2D<double> down(4, true, 5, 1);
    randomize(down, 6);
    CHECK(check_gradients(down, random_tensor<double>(Shape{2, 4, 6, 6}, 7), 8) == 2);
  }
  SECTION("Downsample2D, padding 0 = asymmetric pad (0, 1, 0, 1) (VAE encoder)") {
    nn::Downsample2D<double> down(4, true, 4, 0);
    randomize(down, 9);
    CHECK(down.conv.geometry.pad == ops::Pad2d{0, 1, 0, 1});
    CHECK(check_gradients(down, random_tensor<double>(Shape{2, 4, 6, 5}, 10), 11) == 2);
  }
}

TEST_CASE("Nearest upsampling to an arbitrary size: backward is the adjoint of forward", "[nn_image][resample]") {
  // <up(x), dy> = <x, up^T(dy)> must hold exactly up to rounding (1e-12), and finite differences agree to 1e-6.
  Context<Cpu> ctx;
  auto x = random_tensor<double>(Shape{2, 3, 5, 4}, 1);
  auto const dy = random_tensor<double>(Shape{2, 3, 11, 7}, 2);
  auto forward = [&] {
    Tensor<double> y(dy.shape());
    ops::upsample_nearest_forward<double, Cpu>(ctx, y.view(), x.view());
    return y;
  };
  Tensor<double> dx(x.shape());
  ops::upsample_nearest_backward<double, Cpu>(ctx, dx.view(), dy.view());
  CHECK(test::inner(forward(), dy) == Approx(test::inner(x, dx)).epsilon(1e-12));
  CHECK(rel_l2(dx, numeric_gradient(x, [&] { return test::inner(forward(), dy); })) < kFiniteDifferenceTolerance);
}

TEST_CASE("TimestepEmbedding backward matches finite differences", "[nn_image][timestep]") {
  nn::TimestepEmbedding<double> te(6, 8);
  randomize(te, 1);
  std::vector<std::string> names;
  nn::for_each_parameter(te, [&](std::string const& n, auto&) { names.push_back(n); }, "time_embedding");
  CHECK(names == std::vector<std::string>{"time_embedding.linear_1.weight", "time_embedding.linear_1.bias",
                                          "time_embedding.linear_2.weight", "time_embedding.linear_2.bias"});
  CHECK(check_gradients(te, random_tensor<double>(Shape{3, 6}, 2), 3) == 4);
}

TEST_CASE("Frozen layers leave gradients alone and still return dx", "[nn_image][conv2d]") {
  Context<Cpu> ctx;
  nn::Conv2d<double> conv(3, 4, 3, 1, 1);
  randomize(conv, 1);
  conv.bias.set_trainable(true);  // weight frozen, bias trained
  auto x = random_tensor<double>(Shape{1, 3, 4, 4}, 2);
  auto const y = conv.forward(ctx, x, nn::Mode::Train);
  auto const dy = random_tensor<double>(y.shape(), 3);
  auto const dx = conv.backward(ctx, dy);
  CHECK(conv.weight.grad.empty());
  auto loss = [&] { return test::inner(conv.forward(ctx, x), dy); };
  CHECK(rel_l2(dx, numeric_gradient(x, loss)) < kFiniteDifferenceTolerance);
  CHECK(rel_l2(conv.bias.grad, numeric_gradient(conv.bias.value, loss)) < kFiniteDifferenceTolerance);
  // A second backward accumulates.
  auto const g1 = conv.bias.grad;
  conv.forward(ctx, x, nn::Mode::Train);
  conv.backward(ctx, dy);
  CHECK(conv.bias.grad(0) == Approx(2 * g1(0)));
}
