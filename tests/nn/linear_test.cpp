#include <catch2/catch.hpp>

#include "support.hpp"

using namespace sdlora;
using test::numeric_gradient;
using test::random_tensor;

TEST_CASE("Linear backward matches central finite differences in double", "[nn][linear]") {
  // Tolerance 1e-6 relative L2: the finite differences are exact to ~1e-9 in double.
  Context<Cpu> ctx;
  nn::Linear<double> layer(5, 3);
  layer.weight.value = random_tensor<double>(Shape{3, 5}, 1);
  layer.bias.value = random_tensor<double>(Shape{3}, 2);
  nn::set_trainable(layer, true);
  auto x = random_tensor<double>(Shape{2, 4, 5}, 3);
  auto dy = random_tensor<double>(Shape{2, 4, 3}, 4);

  auto y = layer.forward(ctx, x, nn::Mode::Train);
  CHECK(y.shape() == Shape{2, 4, 3});
  auto dx = layer.backward(ctx, dy);
  auto loss = [&] { return test::inner(layer.forward(ctx, x), dy); };
  CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < 1e-6);
  CHECK(test::rel_l2(layer.weight.grad, numeric_gradient(layer.weight.value, loss)) < 1e-6);
  CHECK(test::rel_l2(layer.bias.grad, numeric_gradient(layer.bias.value, loss)) < 1e-6);

  // Gradients accumulate: a second backward doubles them.
  auto const g1 = layer.weight.grad;
  layer.forward(ctx, x, nn::Mode::Train);
  layer.backward(ctx, dy);
  CHECK(layer.weight.grad(0) == Approx(2 * g1(0)));
}

TEST_CASE("Linear names its parameters and rejects a wrong input width", "[nn][linear]") {
  Context<Cpu> ctx;
  nn::Linear<float> layer(4, 2, false);
  std::vector<std::string> names;
  nn::for_each_parameter(layer, [&](std::string const& n, auto&) { names.push_back(n); }, "to_q");
  CHECK(names == std::vector<std::string>{"to_q.weight"});
  Tensor<float> x(Shape{3, 5});
  CHECK_THROWS_WITH(layer.forward(ctx, x), Catch::Contains("[linear]") && Catch::Contains("(3, 5)"));
}
