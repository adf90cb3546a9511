// Unit tests of the text-side ops: softmax, GELU / QuickGELU / GEGLU, dropout, embedding.
#include <catch2/catch.hpp>

#include <algorithm>  // std::max
#include <cmath>    // std::exp, std::erf, std::abs
#include <cstdint>  // std::int32_t
#include <vector>   // std::vector

#include "support.hpp"

using namespace sdlora;
using test::numeric_gradient;
using test::random_tensor;

namespace {
// Finite differences in double are exact to ~1e-9 (eps = 1e-6, smooth functions): 1e-6 relative L2 leaves margin.
constexpr double kFiniteDifferenceTolerance = 1e-6;
}  // namespace

TEST_CASE("softmax rows sum to one and match the formula; backward matches finite differences", "[ops][softmax]") {
  Context<Cpu> ctx;
  auto x = random_tensor<double>(Shape{3, 4, 7}, 11);
  Tensor<double> y(x.shape());
  ops::softmax_forward<double, Cpu>(ctx, y.view(), x.view());
  // Reference written out for row (1, 2): exp(x - max) / sum. Tolerance 1e-14: the same double arithmetic.
  double m = -1e300, s = 0;
  for (Index j = 0; j < 7; ++j) m = std::max(m, x.at({1, 2, j}));
  for (Index j = 0; j < 7; ++j) s += std::exp(x.at({1, 2, j}) - m);
  for (Index j = 0; j < 7; ++j) CHECK(y.at({1, 2, j}) == Approx(std::exp(x.at({1, 2, j}) - m) / s).epsilon(1e-14));

  auto dy = random_tensor<double>(x.shape(), 12);
  Tensor<double> dx(x.shape());
  ops::softmax_backward<double, Cpu>(ctx, dx.view(), y.view(), dy.view());
  auto loss = [&] {
    Tensor<double> out(x.shape());
    ops::softmax_forward<double, Cpu>(ctx, out.view(), x.view());
    return test::inner(out, dy);
  };
  CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < kFiniteDifferenceTolerance);

  Tensor<double> wrong(Shape{3, 4, 6});
  CHECK_THROWS_WITH((ops::softmax_forward<double, Cpu>(ctx, wrong.view(), x.view())),
                    Catch::Contains("[softmax]") && Catch::Contains("(3, 4, 6)"));
}

TEST_CASE("GELU, tanh GELU and QuickGELU match known values; backward matches finite differences",
          "[ops][gelu]") {
  // Known values (double, from the closed forms; tolerance 1e-12 relative).
  CHECK(ops::fn::Gelu{}(1.0) == Approx(0.8413447460685429).epsilon(1e-12));
  CHECK(ops::fn::Gelu{}(-0.5) == Approx(-0.15426876936299347).epsilon(1e-12));
  CHECK(ops::fn::GeluTanh{}(1.0) == Approx(0.8411919906082768).epsilon(1e-12));
  CHECK(ops::fn::QuickGelu{}(1.0) == Approx(1.0 / (1.0 + std::exp(-1.702))).epsilon(1e-12));
  CHECK(ops::fn::Gelu{}(1.0f) == Approx(0.8413447f).epsilon(1e-6));

  Context<Cpu> ctx;
  auto x = random_tensor<double>(Shape{5, 6}, 21);
  for (Index i = 0; i < x.numel(); ++i) x(i) *= 3.0;  // cover the curved region [-3, 3)
  auto dy = random_tensor<double>(x.shape(), 22);
  Tensor<double> dx(x.shape());
  for (auto approx : {ops::GeluApproximation::None, ops::GeluApproximation::Tanh}) {
    ops::gelu_backward<double, Cpu>(ctx, dx.view(), dy.view(), x.view(), approx);
    auto loss = [&] {
      Tensor<double> y(x.shape());
      ops::gelu_forward<double, Cpu>(ctx, y.view(), x.view(), approx);
      return test::inner(y, dy);
    };
    CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < kFiniteDifferenceTolerance);
  }
  ops::quick_gelu_backward<double, Cpu>(ctx, dx.view(), dy.view(), x.view());
  auto quick_loss = [&] {
    Tensor<double> y(x.shape());
    ops::quick_gelu_forward<double, Cpu>(ctx, y.view(), x.view());
    return test::inner(y, dy);
  };
  CHECK(test::rel_l2(dx, numeric_gradient(x, quick_loss)) < kFiniteDifferenceTolerance);
}

TEST_CASE("GEGLU splits the last axis into hidden and gate; backward matches finite differences", "[ops][geglu]") {
  Context<Cpu> ctx;
  auto h = random_tensor<double>(Shape{2, 3, 8}, 31);
  for (Index i = 0; i < h.numel(); ++i) h(i) *= 2.0;
  Tensor<double> y(Shape{2, 3, 4});
  ops::geglu_forward<double, Cpu>(ctx, ops::Geglu{}, y.view(), h.view());
  CHECK(y.at({1, 2, 3}) == Approx(h.at({1, 2, 3}) * ops::fn::Gelu{}(h.at({1, 2, 7}))).epsilon(1e-14));
  auto dy = random_tensor<double>(y.shape(), 32);
  for (auto approx : {ops::GeluApproximation::None, ops::GeluApproximation::Tanh}) {
    Tensor<double> dh(h.shape());
    ops::geglu_backward<double, Cpu>(ctx, ops::Geglu{approx}, dh.view(), h.view(), dy.view());
    auto loss = [&] {
      Tensor<double> out(y.shape());
      ops::geglu_forward<double, Cpu>(ctx, ops::Geglu{approx}, out.view(), h.view());
      return test::inner(out, dy);
    };
    CHECK(test::rel_l2(dh, numeric_gradient(h, loss)) < kFiniteDifferenceTolerance);
  }
  Tensor<double> odd(Shape{2, 3, 7});
  CHECK_THROWS_WITH((ops::geglu_forward<double, Cpu>(ctx, ops::Geglu{}, y.view(), odd.view())),
                    Catch::Contains("[geglu]") && Catch::Contains("(2, 3, 7)"));
}

TEST_CASE("float GEGLU (vectorised erf) stays within a few ulp of the double-precision formula", "[ops][geglu]") {
  // Gate values over [-10, 10] (erf saturates past +-4), hidden values 1: y = gelu(g). Tolerance per element:
  // 2e-6 relative plus 1e-6 absolute: the float path is Eigen's rational erf (a few ulp, not libm's), and for
  // g << 0 the formula's 1 + erf(g / sqrt(2)) cancels to a few ulp of 1 times 0.5 |g| in any float implementation
  // (torch's included), where gelu itself is ~1e-6.
  Context<Cpu> ctx;
  Index const n = 4001;
  Tensor<float> h(Shape{1, 2 * n}), y(Shape{1, n}), dy(Shape{1, n}), dh(Shape{1, 2 * n});
  for (Index j = 0; j < n; ++j) {
    h(j) = 1.0f;
    h(n + j) = float(-10.0 + 20.0 * double(j) / double(n - 1));
    dy(j) = 1.0f;
  }
  ops::geglu_forward<float, Cpu>(ctx, ops::Geglu{}, y.view(), h.view());
  ops::geglu_backward<float, Cpu>(ctx, ops::Geglu{}, dh.view(), h.view(), dy.view());
  double worst = 0, worst_grad = 0, worst_hidden = 0;
  for (Index j = 0; j < n; ++j) {
    double const g = h(n + j);
    double const ref = ops::fn::Gelu{}(g), dref = ops::fn::GeluBackward{}(1.0, g);
    worst = std::max(worst, std::abs(double(y(j)) - ref) / (2e-6 * std::abs(ref) + 1e-6));
    worst_grad = std::max(worst_grad, std::abs(double(dh(n + j)) - dref) / (2e-6 * std::abs(dref) + 1e-6));
    worst_hidden = std::max(worst_hidden, std::abs(double(dh(j)) - ref) / (2e-6 * std::abs(ref) + 1e-6));
  }
  INFO("worst error / tolerance: " << worst << " (value), " << worst_grad << " (gate gradient), " << worst_hidden
                                   << " (hidden gradient = gelu(g))");
  CHECK(worst <= 1.0);
  CHECK(worst_grad <= 1.0);
  CHECK(worst_hidden <= 1.0);
}

TEST_CASE("dropout masks are a pure function of (seed, counter, index) and backward reuses them",
          "[ops][dropout]") {
  Context<Cpu> ctx;
  Index const n = 40000;
  Tensor<float> x(Shape{n});
  x.fill(1.0f);
  ops::Dropout const op{0.25, 1234, 7};
  Tensor<float> y(x.shape()), again(x.shape()), other(x.shape());
  ops::dropout_apply<float, Cpu>(ctx, op, y.view(), x.view());
  ops::dropout_apply<float, Cpu>(ctx, op, again.view(), x.view());
  ops::dropout_apply<float, Cpu>(ctx, ops::Dropout{0.25, 1234, 8}, other.view(), x.view());
  Index kept = 0, same = 0, differs = 0;
  for (Index i = 0; i < n; ++i) {
    kept += y(i) != 0.0f;
    same += y(i) == again(i);
    differs += y(i) != other(i);
    // Element i is exactly philox_uniform_at(seed, counter, 0, i) >= p (the documented mask, shared with CUDA).
    bool const keep = double(philox_uniform_at(1234, 7, 0, std::uint64_t(i))) >= 0.25;
    REQUIRE(y(i) == (keep ? 1.0f / 0.75f : 0.0f));
  }
  CHECK(same == n);
  // Keep rate 0.75 within 5 standard deviations (sqrt(0.75 * 0.25 / n) = 0.0022).
  CHECK(std::abs(double(kept) / double(n) - 0.75) < 0.011);
  CHECK(differs > n / 10);  // another counter gives another mask

  nn::Dropout<float> layer(0.25, 1234);
  layer.counter = 7;
  auto ym = layer.forward(ctx, x, nn::Mode::Train);
  CHECK(layer.counter == 8);
  CHECK(test::rel_l2(ym, y) == 0.0);
  auto dx = layer.backward(ctx, x);  // dy = 1: dx is the mask / (1 - p), the same as y
  CHECK(test::rel_l2(dx, y) == 0.0);
  auto yi = layer.forward(ctx, x, nn::Mode::Infer);
  CHECK(test::rel_l2(yi, x) == 0.0);
  CHECK_THROWS_WITH(nn::Dropout<float>(1.0), Catch::Contains("[dropout]"));
}

TEST_CASE("Embedding gathers rows; backward scatter-adds into trainable rows only", "[nn][embedding]") {
  Context<Cpu> ctx;
  nn::Embedding<double> emb(6, 3);
  emb.weight.value = random_tensor<double>(Shape{6, 3}, 41);
  Tensor<std::int32_t> ids(Shape{2, 3});
  std::vector<std::int32_t> const values{4, 1, 4, 5, 0, 2};
  for (Index i = 0; i < 6; ++i) ids(i) = values[i];
  auto y = emb.forward(ctx, ids);
  CHECK(y.shape() == Shape{2, 3, 3});
  CHECK(y.at({1, 0, 2}) == emb.weight.value.at({5, 2}));
  CHECK(test::rel_l2(emb.forward(ctx, values), y.reshaped(Shape{6, 3})) == 0.0);

  nn::set_trainable(emb, true);
  emb.grad_row_begin = 4;  // Textual Inversion: only the added rows 4 and 5 learn
  auto dy = random_tensor<double>(Shape{2, 3, 3}, 42);
  emb.forward(ctx, ids, nn::Mode::Train);
  emb.backward(ctx, dy);
  for (Index j = 0; j < 3; ++j) {
    CHECK(emb.weight.grad.at({4, j}) == Approx(dy.at({0, 0, j}) + dy.at({0, 2, j})).epsilon(1e-14));
    CHECK(emb.weight.grad.at({5, j}) == Approx(dy.at({1, 0, j})).epsilon(1e-14));
    CHECK(emb.weight.grad.at({1, j}) == 0.0);
    CHECK(emb.weight.grad.at({0, j}) == 0.0);
  }
  // With every row trainable, the gradient equals finite differences of <y, dy> (exact for a gather: 1e-6).
  emb.grad_row_begin = 0;
  nn::zero_grad(emb);
  emb.forward(ctx, ids, nn::Mode::Train);
  emb.backward(ctx, dy);
  auto loss = [&] { return test::inner(emb.forward(ctx, ids), dy); };
  CHECK(test::rel_l2(emb.weight.grad, numeric_gradient(emb.weight.value, loss)) < kFiniteDifferenceTolerance);

  ids(3) = 6;
  CHECK_THROWS_WITH(emb.forward(ctx, ids), Catch::Contains("[embedding]") && Catch::Contains("token id 6"));
}
