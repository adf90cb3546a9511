// Unit tests of the text-side modules: Attention, ClipAttention, Geglu, FeedForward, ClipMlp, Gelu.
#include <catch2/catch.hpp>

#include <cmath>   // std::abs
#include <string>  // std::string
#include <vector>  // std::vector

#include "support.hpp"

using namespace sdlora;
using test::numeric_gradient;
using test::random_tensor;

namespace {
// Finite differences in double are exact to ~1e-9 (eps = 1e-6): 1e-6 relative L2 leaves margin.
constexpr double kTolerance = 1e-6;

/// Random weights for every parameter of a module, each from its own seed.
template <class M>
void randomize(M& module, std::uint32_t seed) {
  nn::for_each_parameter(module, [&](std::string const&, auto& p) {
    p.value = random_tensor<double>(p.value.shape(), seed++);
  });
}

/// Whether `name` is the key projection's bias: softmax is invariant to the per-row constant q . b_k it adds to the
/// scores, so its gradient is exactly zero and a relative comparison would compare noise with noise.
bool is_key_bias(std::string const& name) {
  return name.ends_with("to_k.bias") || name.ends_with("k_proj.bias");
}

/// Every trainable parameter's accumulated gradient against finite differences of `loss`.
template <class M, class Loss>
void check_parameter_gradients(M& module, Loss&& loss) {
  nn::for_each_parameter(module, [&](std::string const& name, auto& p) {
    INFO(name);
    Tensor<double> const numeric = numeric_gradient(p.value, loss);
    if (is_key_bias(name)) {  // zero gradient: both sides must be zero up to rounding (values are O(1))
      for (Index i = 0; i < p.grad.numel(); ++i) {
        CHECK(std::abs(p.grad(i)) < 1e-12);
        CHECK(std::abs(numeric(i)) < 1e-8);
      }
      return;
    }
    CHECK(test::rel_l2(p.grad, numeric) < kTolerance);
  });
}

template <class M>
std::vector<std::string> parameter_names(M& module, std::string const& prefix) {
  std::vector<std::string> names;
  nn::for_each_parameter(module, [&](std::string const& n, auto&) { names.push_back(n); }, prefix);
  return names;
}
}  // namespace

TEST_CASE("Attention (self) backward matches finite differences for x and every weight", "[nn][attention]") {
  Context<Cpu> ctx;
  nn::Attention<double> attn(6, 0, 2, 4, /*bias=*/true);
  randomize(attn, 100);
  attn.op().block_q = 2;  // several tiles on both axes
  attn.op().block_k = 3;
  nn::set_trainable(attn, true);
  auto x = random_tensor<double>(Shape{2, 5, 6}, 1);
  auto dy = random_tensor<double>(Shape{2, 5, 6}, 2);
  auto y = attn.forward(ctx, x, {}, nn::Mode::Train);
  CHECK(y.shape() == Shape{2, 5, 6});
  auto grads = attn.backward(ctx, dy);
  CHECK(grads.dcontext.empty());
  auto loss = [&] { return test::inner(attn.forward(ctx, x), dy); };
  CHECK(test::rel_l2(grads.dx, numeric_gradient(x, loss)) < kTolerance);
  check_parameter_gradients(attn, loss);
}

TEST_CASE("Attention (cross, Lq != Lk) returns dx and dcontext matching finite differences", "[nn][attention]") {
  Context<Cpu> ctx;
  nn::Attention<double> attn(6, 5, 3, 5);  // odd head_dim 5, context width 5, no q/k/v bias, out bias
  randomize(attn, 200);
  attn.op().block_q = 3;
  attn.op().block_k = 2;
  nn::set_trainable(attn, true);
  auto x = random_tensor<double>(Shape{2, 7, 6}, 3);
  auto context = random_tensor<double>(Shape{2, 4, 5}, 4);
  auto dy = random_tensor<double>(Shape{2, 7, 6}, 5);
  attn.forward(ctx, x, context, nn::Mode::Train);
  auto grads = attn.backward(ctx, dy);
  REQUIRE(grads.dcontext.shape() == context.shape());
  auto loss = [&] { return test::inner(attn.forward(ctx, x, context), dy); };
  CHECK(test::rel_l2(grads.dx, numeric_gradient(x, loss)) < kTolerance);
  CHECK(test::rel_l2(grads.dcontext, numeric_gradient(context, loss)) < kTolerance);
  check_parameter_gradients(attn, loss);

  CHECK(parameter_names(attn, "attn2") ==
        std::vector<std::string>{"attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight",
                                 "attn2.to_out.0.weight", "attn2.to_out.0.bias"});
  std::vector<std::string> leaves;
  attn.visit("down_blocks.0.attentions.0.transformer_blocks.0.attn2",
             [&](std::string const& name, auto&) { leaves.push_back(name); });
  CHECK(leaves.front() == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q");
  CHECK(leaves.size() == 4);
}

TEST_CASE("Attention with frozen weights still returns input gradients and touches no parameter",
          "[nn][attention]") {
  Context<Cpu> ctx;
  nn::Attention<double> attn(4, 3, 2, 2);
  randomize(attn, 300);
  auto x = random_tensor<double>(Shape{1, 3, 4}, 6);
  auto context = random_tensor<double>(Shape{1, 5, 3}, 7);
  auto dy = random_tensor<double>(Shape{1, 3, 4}, 8);
  attn.forward(ctx, x, context, nn::Mode::Train);
  auto grads = attn.backward(ctx, dy);
  auto loss = [&] { return test::inner(attn.forward(ctx, x, context), dy); };
  CHECK(test::rel_l2(grads.dcontext, numeric_gradient(context, loss)) < kTolerance);
  CHECK(attn.to_q.weight.grad.empty());
  CHECK_THROWS_WITH(attn.forward(ctx, random_tensor<double>(Shape{1, 3, 5}, 9), context),
                    Catch::Contains("[linear]"));
}

TEST_CASE("ClipAttention is causal self-attention with q/k/v/out_proj; backward matches finite differences",
          "[nn][attention]") {
  Context<Cpu> ctx;
  nn::ClipAttention<double> attn(8, 2);
  randomize(attn, 400);
  attn.op().block_q = 2;
  attn.op().block_k = 2;
  nn::set_trainable(attn, true);
  auto x = random_tensor<double>(Shape{2, 5, 8}, 10);
  auto dy = random_tensor<double>(Shape{2, 5, 8}, 11);
  auto y = attn.forward(ctx, x, nn::Mode::Train);
  auto dx = attn.backward(ctx, dy);
  auto loss = [&] { return test::inner(attn.forward(ctx, x), dy); };
  CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < kTolerance);
  check_parameter_gradients(attn, loss);
  // Causal: the first token's output does not change when a later token changes.
  auto x2 = x;
  for (Index c = 0; c < 8; ++c) x2.at({0, 3, c}) += 1.0;
  auto y2 = attn.forward(ctx, x2);
  for (Index c = 0; c < 8; ++c) CHECK(y2.at({0, 0, c}) == Approx(y.at({0, 0, c})).epsilon(1e-14));
  CHECK(parameter_names(attn, "self_attn") ==
        std::vector<std::string>{"self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
                                 "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                                 "self_attn.out_proj.weight", "self_attn.out_proj.bias"});
}

TEST_CASE("FeedForward (GEGLU) and ClipMlp backward match finite differences; names follow diffusers/transformers",
          "[nn][feed_forward]") {
  Context<Cpu> ctx;
  auto x = random_tensor<double>(Shape{2, 3, 4}, 20);
  auto dy = random_tensor<double>(Shape{2, 3, 4}, 21);
  for (auto approx : {ops::GeluApproximation::None, ops::GeluApproximation::Tanh}) {
    nn::FeedForward<double> ff(4, 0, 2, 0.0, 0, true, approx);  // inner = 8
    randomize(ff, 500);
    nn::set_trainable(ff, true);
    ff.forward(ctx, x, nn::Mode::Train);
    auto dx = ff.backward(ctx, dy);
    auto loss = [&] { return test::inner(ff.forward(ctx, x), dy); };
    CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < kTolerance);
    check_parameter_gradients(ff, loss);
    CHECK(parameter_names(ff, "ff") == std::vector<std::string>{"ff.net.0.proj.weight", "ff.net.0.proj.bias",
                                                                "ff.net.2.weight", "ff.net.2.bias"});
    CHECK(ff.net_0.proj.weight.shape() == Shape{16, 4});
  }

  nn::ClipMlp<double> mlp(4, 6);
  randomize(mlp, 600);
  nn::set_trainable(mlp, true);
  mlp.forward(ctx, x, nn::Mode::Train);
  auto dx = mlp.backward(ctx, dy);
  auto loss = [&] { return test::inner(mlp.forward(ctx, x), dy); };
  CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < kTolerance);
  check_parameter_gradients(mlp, loss);
  CHECK(parameter_names(mlp, "mlp") ==
        std::vector<std::string>{"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"});
}

TEST_CASE("FeedForward with dropout replays the training mask in backward", "[nn][feed_forward]") {
  Context<Cpu> ctx;
  nn::FeedForward<double> ff(4, 0, 2, 0.5);
  randomize(ff, 700);
  nn::set_trainable(ff, true);
  ff.net_1.seed = 99;
  auto x = random_tensor<double>(Shape{2, 3, 4}, 22);
  auto dy = random_tensor<double>(Shape{2, 3, 4}, 23);
  ff.forward(ctx, x, nn::Mode::Train);  // mask of counter 0
  auto dx = ff.backward(ctx, dy);
  // The loss replays counter 0 each time: a training forward with the same mask.
  auto loss = [&] {
    ff.net_1.counter = 0;
    return test::inner(ff.forward(ctx, x, nn::Mode::Train), dy);
  };
  CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < kTolerance);
}

TEST_CASE("Gelu and QuickGelu modules keep their input for backward", "[nn][gelu]") {
  Context<Cpu> ctx;
  auto x = random_tensor<double>(Shape{3, 5}, 30);
  auto dy = random_tensor<double>(Shape{3, 5}, 31);
  nn::Gelu<double> gelu(ops::GeluApproximation::Tanh);
  gelu.forward(ctx, x, nn::Mode::Train);
  auto dx = gelu.backward(ctx, dy);
  CHECK(test::rel_l2(dx, numeric_gradient(x, [&] { return test::inner(gelu.forward(ctx, x), dy); })) < kTolerance);
  nn::QuickGelu<double> quick;
  CHECK_THROWS_WITH(quick.backward(ctx, dy), Catch::Contains("[quick_gelu.backward]"));
}
