// The image-side ops against direct reference loops written from their definitions (no GEMM, no im2col), the
// accumulate flags, the adapter hooks, shape errors, GroupNorm's fused SiLU, and the sinusoidal embedding against its
// formula in double.
#include <catch2/catch.hpp>

#include <cmath>       // std::exp, std::log, std::sin, std::cos
#include <cstdint>     // std::uint32_t
#include <functional>  // std::function
#include <memory>      // std::make_shared
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/lora/inject.hpp>    // lora::add_adapter
#include <sdlora/models/resnet.hpp>  // models::ResnetBlock2D (the fused norm in a block)

#include "models/gradients.hpp"  // check_bit_identical
#include "support.hpp"

using namespace sdlora;
using test::random_tensor;
using test::rel_l2;

namespace {

/// y[n, o, oh, ow] = b[o] + sum over c, i, j of w[o, c, i, j] x[n, c, oh*s - top + i, ow*s - left + j] (zero outside).
Tensor<double> direct_conv(Tensor<double> const& x, Tensor<double> const& w, Tensor<double> const* b,
                           ops::Conv2dGeometry const& g) {
  Tensor<double> y(ops::conv2d_output_shape(x.shape(), w.shape(), g));
  for (Index n = 0; n < y.dim(0); ++n)
    for (Index o = 0; o < y.dim(1); ++o)
      for (Index oh = 0; oh < y.dim(2); ++oh)
        for (Index ow = 0; ow < y.dim(3); ++ow) {
          double s = b ? (*b)(o) : 0.0;
          for (Index c = 0; c < x.dim(1); ++c)
            for (Index i = 0; i < w.dim(2); ++i)
              for (Index j = 0; j < w.dim(3); ++j) {
                Index const ih = oh * g.stride - g.pad.top + i, iw = ow * g.stride - g.pad.left + j;
                if (ih >= 0 && ih < x.dim(2) && iw >= 0 && iw < x.dim(3))
                  s += w.at({o, c, i, j}) * x.at({n, c, ih, iw});
              }
          y.at({n, o, oh, ow}) = s;
        }
  return y;
}

/// A test adapter: y += 2 x (same channels), dx += 2 dy; counts its calls.
struct DoublingAdapter : nn::Adapter<double> {
  int forwards = 0, backwards = 0;
  void forward(Context<Cpu>& ctx, TensorView<double> y, TensorView<double const> x, nn::Mode) override {
    ++forwards;
    ops::axpy<double, Cpu>(ctx, y, 2.0, x);
  }
  void backward(Context<Cpu>& ctx, TensorView<double> dx, TensorView<double const> dy) override {
    ++backwards;
    ops::axpy<double, Cpu>(ctx, dx, 2.0, dy);
  }
  void for_each_parameter(std::string const&,
                          std::function<void(std::string const&, nn::Parameter<double>&)> const&) override {}
  std::string const& name() const override { return name_; }
  std::string name_ = "double";
};

}  // namespace

TEST_CASE("conv2d_forward equals the direct definition for every geometry", "[nn_image][conv2d]") {
  // Tolerance 1e-13 relative L2 in double: the same sums in another order differ by a few ulps.
  Context<Cpu> ctx;
  struct Case {
    Index c, o, k, h, w;
    ops::Conv2dGeometry g;
  };
  Case const cases[] = {{3, 4, 3, 6, 7, {1, ops::Pad2d::uniform(1)}}, {3, 4, 3, 7, 6, {2, ops::Pad2d::uniform(1)}},
                        {3, 2, 3, 7, 8, {2, {0, 1, 0, 1}}},          {5, 4, 1, 4, 4, {1, {}}},
                        {2, 3, 3, 5, 5, {3, {1, 2, 2, 0}}},          {2, 3, 5, 4, 6, {1, ops::Pad2d::uniform(2)}}};
  for (auto const& c : cases) {
    INFO("C " << c.c << ", O " << c.o << ", k " << c.k << ", " << c.g);
    auto const x = random_tensor<double>(Shape{2, c.c, c.h, c.w}, 1);
    auto const w = random_tensor<double>(Shape{c.o, c.c, c.k, c.k}, 2);
    auto const b = random_tensor<double>(Shape{c.o}, 3);
    auto const ref = direct_conv(x, w, &b, c.g);
    Tensor<double> y(ref.shape());
    ops::conv2d_forward<double, Cpu>(ctx, y.view(), x.view(), w.view(), b.view(), c.g);
    CHECK(rel_l2(y, ref) < 1e-13);
    // accumulate = true adds onto what y holds.
    ops::conv2d_forward<double, Cpu>(ctx, y.view(), x.view(), w.view(), b.view(), c.g, true);
    Tensor<double> twice = ref;
    ops::scale<double, Cpu>(ctx, twice.view(), 2.0);
    CHECK(rel_l2(y, twice) < 1e-13);
  }
}

TEST_CASE("conv2d_backward_input with accumulate adds onto dx", "[nn_image][conv2d]") {
  Context<Cpu> ctx;
  ops::Conv2dGeometry const g{2, {0, 1, 0, 1}};
  auto const w = random_tensor<double>(Shape{4, 3, 3, 3}, 1);
  auto const dy = random_tensor<double>(ops::conv2d_output_shape(Shape{2, 3, 7, 6}, w.shape(), g), 2);
  Tensor<double> dx(Shape{2, 3, 7, 6});
  ops::conv2d_backward_input<double, Cpu>(ctx, dx.view(), dy.view(), w.view(), g);
  auto const once = dx;
  ops::conv2d_backward_input<double, Cpu>(ctx, dx.view(), dy.view(), w.view(), g, true);
  Tensor<double> twice = once;
  ops::scale<double, Cpu>(ctx, twice.view(), 2.0);
  CHECK(rel_l2(dx, twice) < 1e-14);
  // The transpose identity <conv(x), dy> = <x, conv^T(dy)>, to rounding.
  auto const x = random_tensor<double>(Shape{2, 3, 7, 6}, 3);
  auto const y = direct_conv(x, w, nullptr, g);
  CHECK(test::inner(y, dy) == Approx(test::inner(x, once)).epsilon(1e-12));
}

TEST_CASE("Conv2d calls its adapters in forward and backward", "[nn_image][conv2d]") {
  Context<Cpu> ctx;
  nn::Conv2d<double> conv(3, 3, 3, 1, 1);
  conv.weight.value = random_tensor<double>(conv.weight.shape(), 1);
  auto adapter = std::make_shared<DoublingAdapter>();
  auto const x = random_tensor<double>(Shape{1, 3, 4, 4}, 2);
  auto const plain = conv.forward(ctx, x, nn::Mode::Train);
  auto const dy = random_tensor<double>(plain.shape(), 3);
  auto const dx_plain = conv.backward(ctx, dy);
  conv.adapters.push_back(adapter);
  auto const y = conv.forward(ctx, x, nn::Mode::Train);
  auto const dx = conv.backward(ctx, dy);
  CHECK(adapter->forwards == 1);
  CHECK(adapter->backwards == 1);
  Tensor<double> expected_y = plain, expected_dx = dx_plain;
  ops::axpy<double, Cpu>(ctx, expected_y.view(), 2.0, x.view());
  ops::axpy<double, Cpu>(ctx, expected_dx.view(), 2.0, dy.view());
  CHECK(rel_l2(y, expected_y) < 1e-14);
  CHECK(rel_l2(dx, expected_dx) < 1e-14);
  adapter->enabled = false;
  conv.forward(ctx, x);
  CHECK(adapter->forwards == 1);
}

TEST_CASE("Image layers report wrong shapes with the op name and the shapes", "[nn_image][errors]") {
  Context<Cpu> ctx;
  nn::Conv2d<float> conv(4, 8, 3, 1, 1);
  Tensor<float> x(Shape{1, 3, 8, 8});
  CHECK_THROWS_WITH(conv.forward(ctx, x), Catch::Contains("[conv2d]") && Catch::Contains("(1, 3, 8, 8)"));
  CHECK_THROWS_AS(conv.backward(ctx, Tensor<float>(Shape{1, 8, 8, 8})), ShapeError);  // no forward in Train mode
  nn::GroupNorm<float> gn(32, 64);
  CHECK_THROWS_WITH(gn.forward(ctx, Tensor<float>(Shape{1, 32, 4, 4})), Catch::Contains("[group_norm]"));
  CHECK_THROWS_WITH(nn::GroupNorm<float>(3, 64), Catch::Contains("do not split"));
  nn::Conv2d<float> big(4, 4, 5);
  CHECK_THROWS_WITH(big.forward(ctx, Tensor<float>(Shape{1, 4, 3, 3})), Catch::Contains("larger than"));
  CHECK_THROWS_AS(nn::Downsample2D<float>(4, false), ConfigError);
}

TEST_CASE("Parameter names follow diffusers", "[nn_image][names]") {
  nn::Downsample2D<float> down(4, true);
  nn::Upsample2D<float> up(4, true);
  nn::GroupNorm<float> gn(2, 4);
  std::vector<std::string> names;
  auto collect = [&](std::string const& n, auto&) { names.push_back(n); };
  nn::for_each_parameter(down, collect, "down_blocks.0.downsamplers.0");
  nn::for_each_parameter(up, collect, "up_blocks.0.upsamplers.0");
  nn::for_each_parameter(gn, collect, "norm1");
  CHECK(names == std::vector<std::string>{"down_blocks.0.downsamplers.0.conv.weight",
                                          "down_blocks.0.downsamplers.0.conv.bias",
                                          "up_blocks.0.upsamplers.0.conv.weight", "up_blocks.0.upsamplers.0.conv.bias",
                                          "norm1.weight", "norm1.bias"});
  CHECK(gn.weight.value(0) == 1.0f);  // torch's init
  CHECK(gn.bias.value(0) == 0.0f);
}

TEST_CASE("GroupNorm output has zero mean and unit variance per group before the affine part", "[nn_image][norm]") {
  // An independent check of the forward statistics (finite differences only check backward against forward).
  Context<Cpu> ctx;
  nn::GroupNorm<double> gn(2, 4, 0.0, false);
  auto x = random_tensor<double>(Shape{2, 4, 3, 3}, 1);
  auto const y = gn.forward(ctx, x);
  for (Index n = 0; n < 2; ++n)
    for (Index g = 0; g < 2; ++g) {
      double s = 0, ss = 0;
      for (Index c = 2 * g; c < 2 * g + 2; ++c)
        for (Index i = 0; i < 9; ++i) {
          double const v = y.data()[(n * 4 + c) * 9 + i];
          s += v;
          ss += v * v;
        }
      CHECK(std::abs(s / 18) < 1e-14);
      CHECK(ss / 18 == Approx(1.0).epsilon(1e-12));
    }
}

TEST_CASE("SiLU and GroupNorm rows on the AVX2 / AVX-512 vector paths match the definition", "[nn_image][norm][isa]") {
  // silu_forward over 1003 values from -100 to 100 (vector body and a scalar tail; past exp's clamps at -87 and 88),
  // and GroupNorm with and without its fused SiLU on rows of 67 values, against the formulas in double. Tolerance:
  // 4e-7 relative per value plus 1e-30 absolute (exp_clamped is within 2 ulp of expf; below x = -88 SiLU is ~1e-36).
  Tensor<float> x(Shape{1003});
  for (Index i = 0; i < x.numel(); ++i) x(i) = -100.f + 200.f * float(i) / float(x.numel() - 1);
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  auto check = [&](float const* y) {
    for (Index i = 0; i < x.numel(); ++i) {
      double const ref = silu(double(x(i)));
      CHECK(std::abs(double(y[i]) - ref) <= 4e-7 * std::abs(ref) + 1e-30);
    }
  };
  Context<Cpu> ctx;
  Tensor<float> y(x.shape());
  ops::silu_forward<float, Cpu>(ctx, y.view(), x.view());  // the process's path
  check(y.data());
#if SDLORA_VECTOR_MATH
  std::vector<float> out(std::size_t(x.numel()));
  if (cpu::detected_isa() >= cpu::Isa::kAvx2) {
    cpu::vector_math::norm_act_row_avx2(out.data(), x.data(), x.numel(), 0.f, 1.f, 1.f, 0.f, true);
    check(out.data());
  }
  if (cpu::detected_isa() >= cpu::Isa::kAvx512) {
    cpu::vector_math::norm_act_row_avx512(out.data(), x.data(), x.numel(), 0.f, 1.f, 1.f, 0.f, true);
    check(out.data());
  }
#endif
  nn::GroupNorm<float> gn(2, 4, 1e-5);
  gn.weight.value = random_tensor<float>(Shape{4}, 31);
  gn.bias.value = random_tensor<float>(Shape{4}, 32);
  auto const in = random_tensor<float>(Shape{1, 4, 67, 1}, 33);
  auto const plain = gn.forward(ctx, in.view());
  auto const fused = gn.forward_silu(ctx, in.view());
  for (Index g = 0; g < 2; ++g) {
    double mean = 0, var = 0;
    for (Index i = 0; i < 134; ++i) mean += in(g * 134 + i);
    mean /= 134;
    for (Index i = 0; i < 134; ++i) var += (in(g * 134 + i) - mean) * (in(g * 134 + i) - mean);
    double const rstd = 1.0 / std::sqrt(var / 134 + 1e-5);
    for (Index i = 0; i < 134; ++i) {
      Index const at = g * 134 + i, ch = at / 67;
      double const z = (in(at) - mean) * rstd * gn.weight.value(ch) + gn.bias.value(ch);
      CHECK(std::abs(plain(at) - z) <= 2e-6 * (1 + std::abs(z)));
      CHECK(std::abs(fused(at) - silu(z)) <= 2e-6 * (1 + std::abs(z)));
    }
  }
}

TEST_CASE("GroupNorm's fused SiLU for inference equals SiLU after GroupNorm; a ResNet block infers as it trains",
          "[nn_image][norm]") {
  // Inference runs silu(group_norm(x)) as one pass into one tensor (GroupNorm::forward_silu); training keeps the two
  // layers. Reference: GroupNorm's own output, then v / (1 + exp(-v)) in double. Spatial size 5 x 3 (15 values per
  // row) puts scalar tails in every row. Tolerances: 1e-14 relative L2 in double (exp's last bit), 1e-6 in float.
  Context<Cpu> ctx;
  auto silu_of = [](auto const& y) {
    Tensor<double> out(y.shape());
    for (Index i = 0; i < y.numel(); ++i) out(i) = double(y(i)) / (1.0 + std::exp(-double(y(i))));
    return out;
  };
  {
    nn::GroupNorm<double> gn(2, 6, 1e-5);
    gn.weight.value = random_tensor<double>(Shape{6}, 11);
    gn.bias.value = random_tensor<double>(Shape{6}, 12);
    auto const x = random_tensor<double>(Shape{2, 6, 5, 3}, 13);
    CHECK(rel_l2(gn.forward_silu(ctx, x.view()), silu_of(gn.forward(ctx, x.view()))) <= 1e-14);
  }
  nn::GroupNorm<float> gn(2, 6, 1e-6);
  gn.weight.value = random_tensor<float>(Shape{6}, 21);
  gn.bias.value = random_tensor<float>(Shape{6}, 22);
  auto const x = random_tensor<float>(Shape{2, 6, 5, 3}, 23);
  auto const fused = gn.forward_silu(ctx, x.view());
  CHECK(fused.shape() == x.shape());
  CHECK(rel_l2(fused, silu_of(gn.forward(ctx, x.view()))) <= 1e-6);
  CHECK(rel_l2(fused, gn.forward(ctx, x.view())) > 0.1);  // the SiLU is there

  // The VAE's ResNet block (no time embedding, a shortcut conv): Mode::Infer (fused) against Mode::Train (apart).
  models::ResnetBlock2D<float> block(6, 4, 0, 2, 1e-6);
  std::uint32_t seed = 30;
  nn::for_each_parameter(block, [&](std::string const&, nn::Parameter<float>& p) {
    p.value = random_tensor<float>(p.shape(), seed++);
  });
  auto const inferred = block.forward(ctx, x.view(), TensorView<float const>(), nn::Mode::Infer);
  auto const trained = block.forward(ctx, x.view(), TensorView<float const>(), nn::Mode::Train);
  CHECK(inferred.shape() == Shape{2, 4, 5, 3});
  CHECK(rel_l2(inferred, trained) <= 1e-6);
}

TEST_CASE("A checkpointed ResNet block's recompute stops before conv2 and the shortcut and keeps every gradient's bits",
          "[nn_image][checkpointing]") {
  // Inside backward, a checkpointed block recomputes its forward only as far as backward reads: conv2's and the
  // shortcut's outputs (and the sum after them) are read by nothing, so they are skipped unless an enabled adapter
  // must see them. dx, dtemb and every trainable parameter's gradient must equal the plain block's bit for bit, with
  // frozen weights and a LoRA on conv1 (conv2 and the shortcut skipped), every weight trainable (their inputs kept for
  // dW; a skip that forgot them throws or changes dW), and a LoRA on conv2 or on the shortcut (the full recompute:
  // a skip there would leave the LoRA's saved input unset and its gradients wrong).
  Context<Cpu> ctx;
  auto const x = random_tensor<float>(Shape{2, 6, 5, 3}, 41);
  auto const temb = random_tensor<float>(Shape{2, 8}, 42);
  auto const dy = random_tensor<float>(Shape{2, 4, 5, 3}, 43);
  enum class Setup { lora_conv1, all_trainable, lora_conv2, lora_shortcut };
  auto run = [&](Setup setup, bool checkpointing) {
    models::ResnetBlock2D<float> block(6, 4, 8, 2, 1e-6);
    nn::set_trainable(block, setup == Setup::all_trainable);
    lora::LoraOptions const options{.rank = 2};
    if (setup == Setup::lora_conv1) lora::add_adapter(block.conv1, options);
    if (setup == Setup::lora_conv2) lora::add_adapter(block.conv2, options);
    if (setup == Setup::lora_shortcut) lora::add_adapter(*block.conv_shortcut, options);
    std::uint32_t seed = 50;  // LoRA's up factor starts at zero: random values make its branch count
    nn::for_each_parameter(block, [&](std::string const&, nn::Parameter<float>& p) {
      p.value = random_tensor<float>(p.shape(), seed++);
    });
    block.gradient_checkpointing = checkpointing;
    block.forward(ctx, x.view(), temb.view(), nn::Mode::Train);
    auto const g = block.backward(ctx, dy.view());
    std::vector<float> all(g.dx.span().begin(), g.dx.span().end());
    all.insert(all.end(), g.dtemb.span().begin(), g.dtemb.span().end());
    nn::for_each_parameter(block, [&](std::string const&, nn::Parameter<float>& p) {
      if (p.trainable) all.insert(all.end(), p.grad.span().begin(), p.grad.span().end());
    });
    return all;
  };
  for (Setup setup : {Setup::lora_conv1, Setup::all_trainable, Setup::lora_conv2, Setup::lora_shortcut}) {
    INFO("setup " << int(setup));
    auto const plain = run(setup, false);
    REQUIRE(plain.size() > std::size_t(x.numel() + temb.numel()));  // parameter gradients are in it
    test::check_bit_identical(plain, run(setup, true));
  }
}

TEST_CASE("timestep_sinusoidal in double equals diffusers' formula evaluated in double", "[nn_image][timestep]") {
  // Tolerance 1e-14 relative L2: the same double operations in the same order.
  Context<Cpu> ctx;
  Tensor<double> t(Shape{3});
  t(0) = 0;
  t(1) = 17.5;
  t(2) = 999;
  for (bool flip : {false, true})
    for (double shift : {0.0, 1.0})
      for (Index dim : {Index(8), Index(9)}) {
        INFO("flip " << flip << ", shift " << shift << ", dim " << dim);
        Tensor<double> out(Shape{3, dim}), ref(Shape{3, dim});
        ops::timestep_sinusoidal<double, Cpu>(ctx, out.view(), t.view(), flip, shift, 1.5);
        Index const half = dim / 2;
        for (Index r = 0; r < 3; ++r)
          for (Index i = 0; i < half; ++i) {
            double const arg = 1.5 * t(r) * std::exp(-std::log(10000.0) * double(i) / (double(half) - shift));
            ref.at({r, flip ? half + i : i}) = std::sin(arg);
            ref.at({r, flip ? i : half + i}) = std::cos(arg);
          }
        CHECK(rel_l2(out, ref) < 1e-14);
        if (dim % 2 == 1) CHECK(out.at({2, dim - 1}) == 0.0);
      }
}
