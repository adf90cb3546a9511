/// @file lora_test.cpp
/// @brief LoRA adapters: gradients against central finite differences in double (with and without dropout),
/// initialisation, several adapters, merge / unmerge, injection by name pattern, freezing.
#include <catch2/catch.hpp>

#include <cmath>   // std::abs, std::sqrt
#include <limits>  // std::numeric_limits

#include <sdlora/backend/cpu/conv.hpp>  // ops::Impl<Conv2d, Cpu>
#include <sdlora/lora/inject.hpp>       // lora::inject, LoraLinear, LoraConv
#include <sdlora/nn/conv2d.hpp>         // nn::Conv2d
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;
using test::numeric_gradient;
using test::random_tensor;

namespace {

/// A small tree with attention-like leaves and a conv, named like diffusers' modules.
template <class T>
struct TinyBlock {
  nn::Linear<T> to_q{6, 6, false}, to_k{6, 6, false}, to_v{6, 6, false};
  nn::Linear<T> to_out_0{6, 6};
  nn::Linear<T> proj{6, 4};
  nn::Conv2d<T> conv{3, 5, 3, 1, 1};

  TinyBlock() {
    std::uint32_t seed = 100;
    nn::for_each_parameter(*this, [&](std::string const&, auto& p) { p.value = random_tensor<T>(p.shape(), seed++); });
  }
  template <class V>
  void visit(std::string const& prefix, V&& v) {
    to_q.visit(nn::join(prefix, "attn1.to_q"), v);
    to_k.visit(nn::join(prefix, "attn1.to_k"), v);
    to_v.visit(nn::join(prefix, "attn1.to_v"), v);
    to_out_0.visit(nn::join(prefix, "attn1.to_out.0"), v);
    proj.visit(nn::join(prefix, "proj_out"), v);
    conv.visit(nn::join(prefix, "conv1"), v);
  }
};

template <class T>
void randomize_b(lora::LoraAdapter<T>& a, std::uint32_t seed) {
  a.lora_B.value = random_tensor<T>(a.lora_B.shape(), seed);
}

}  // namespace

TEST_CASE("LoraLinear backward matches finite differences in double, without and with dropout", "[lora][linear]") {
  // Tolerance 1e-6 relative L2: central differences with eps 1e-6 are exact to ~1e-9 in double; the function is
  // linear in each of A, B and x, so there is no truncation error at all.
  Context<Cpu> ctx;
  for (double p : {0.0, 0.3}) {
    DYNAMIC_SECTION("dropout " << p) {
      nn::Linear<double> layer(5, 4);
      layer.weight.value = random_tensor<double>(Shape{4, 5}, 1);
      layer.bias.value = random_tensor<double>(Shape{4}, 2);
      nn::set_trainable(layer, false);
      auto a = lora::add_adapter(layer, {.rank = 3, .alpha = 6.0, .multiplier = 0.7, .dropout = p, .seed = 9});
      randomize_b(*a, 3);
      CHECK(a->scale() == Approx(0.7 * 6.0 / 3.0));
      auto x = random_tensor<double>(Shape{2, 3, 5}, 4);
      auto dy = random_tensor<double>(Shape{2, 3, 4}, 5);

      a->set_dropout_calls(0);
      layer.forward(ctx, x, nn::Mode::Train);
      auto dx = layer.backward(ctx, dy);
      // The loss replays mask 0 on every evaluation (Mode::Train consumes a mask index, so reset it first).
      auto loss = [&] {
        a->set_dropout_calls(0);
        return test::inner(layer.forward(ctx, x, nn::Mode::Train), dy);
      };
      CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < 1e-6);
      CHECK(test::rel_l2(a->lora_A.grad, numeric_gradient(a->lora_A.value, loss)) < 1e-6);
      CHECK(test::rel_l2(a->lora_B.grad, numeric_gradient(a->lora_B.value, loss)) < 1e-6);
      CHECK(layer.weight.grad.empty());  // the frozen base gets no gradient

      if (p > 0) {
        // The mask really drops something, is deterministic per call index, and changes between calls.
        a->set_dropout_calls(0);
        auto const y0 = layer.forward(ctx, x, nn::Mode::Train);
        auto const y1 = layer.forward(ctx, x, nn::Mode::Train);
        auto const yi = layer.forward(ctx, x, nn::Mode::Infer);
        CHECK(test::rel_l2(y0, yi) > 1e-3);
        CHECK(test::rel_l2(y1, y0) > 1e-3);
        a->set_dropout_calls(0);
        CHECK(test::rel_l2(layer.forward(ctx, x, nn::Mode::Train), y0) == 0.0);
      }
    }
  }
}

TEST_CASE("LoraConv backward matches finite differences in double, without and with dropout", "[lora][conv]") {
  // Tolerance 1e-6 relative L2, as for LoraLinear (the branch is linear in A, B and x).
  Context<Cpu> ctx;
  for (double p : {0.0, 0.25}) {
    for (Index stride : {1, 2}) {
      DYNAMIC_SECTION("dropout " << p << " stride " << stride) {
        nn::Conv2d<double> layer(3, 4, 3, stride, 1);
        layer.weight.value = random_tensor<double>(layer.weight.shape(), 1);
        layer.bias.value = random_tensor<double>(Shape{4}, 2);
        nn::set_trainable(layer, false);
        auto a = lora::add_adapter(layer, {.rank = 2, .alpha = 1.0, .dropout = p, .seed = 5});
        REQUIRE(dynamic_cast<lora::LoraConv<double>*>(a.get()) != nullptr);
        CHECK(a->lora_A.shape() == Shape{2, 3, 3, 3});
        CHECK(a->lora_B.shape() == Shape{4, 2, 1, 1});
        randomize_b(*a, 3);
        auto x = random_tensor<double>(Shape{2, 3, 5, 6}, 4);
        a->set_dropout_calls(0);
        auto y = layer.forward(ctx, x, nn::Mode::Train);
        auto dy = random_tensor<double>(y.shape(), 6);
        auto dx = layer.backward(ctx, dy);
        auto loss = [&] {
          a->set_dropout_calls(0);
          return test::inner(layer.forward(ctx, x, nn::Mode::Train), dy);
        };
        CHECK(test::rel_l2(dx, numeric_gradient(x, loss)) < 1e-6);
        CHECK(test::rel_l2(a->lora_A.grad, numeric_gradient(a->lora_A.value, loss)) < 1e-6);
        CHECK(test::rel_l2(a->lora_B.grad, numeric_gradient(a->lora_B.value, loss)) < 1e-6);
      }
    }
  }
}

TEST_CASE("LoRA init: Kaiming-uniform and Gaussian A from the seed, B zero, the layer unchanged", "[lora][init]") {
  Context<Cpu> ctx;
  nn::Linear<float> layer(64, 8);
  layer.weight.value = random_tensor<float>(Shape{8, 64}, 1);
  auto x = random_tensor<float>(Shape{3, 64}, 2);
  auto const y0 = layer.forward(ctx, x);
  auto k = lora::add_adapter(layer, {.rank = 16, .seed = 42, .name = "k"});
  auto g = lora::add_adapter(layer, {.rank = 16, .init = lora::LoraInit::Gaussian, .seed = 42, .name = "g"});
  // B = 0: the output is unchanged bit for bit.
  CHECK(test::rel_l2(layer.forward(ctx, x), y0) == 0.0);
  for (float v : k->lora_B.value.span()) CHECK(v == 0.0f);
  // Kaiming: U(-1/sqrt(64), 1/sqrt(64)) = U(-0.125, 0.125): within the bound, mean ~0, variance bound^2 / 3.
  double kmax = 0, ksum2 = 0;
  for (float v : k->lora_A.value.span()) kmax = std::max(kmax, double(std::abs(v))), ksum2 += double(v) * v;
  CHECK(kmax <= 0.125);
  CHECK(kmax > 0.12);
  CHECK(ksum2 / 1024 == Approx(0.125 * 0.125 / 3).epsilon(0.1));
  // Gaussian: std 1 / rank = 0.0625 (1024 samples: the sample std is within 10%).
  double gsum2 = 0;
  for (float v : g->lora_A.value.span()) gsum2 += double(v) * v;
  CHECK(std::sqrt(gsum2 / 1024) == Approx(1.0 / 16).epsilon(0.1));
  // The same seed and stream give the same A; another seed a different one.
  nn::Linear<float> other(64, 8);
  auto k2 = lora::add_adapter(other, {.rank = 16, .seed = 42, .name = "k"});
  auto k3 = lora::add_adapter(other, {.rank = 16, .seed = 43, .name = "k3"});
  CHECK(test::rel_l2(k2->lora_A.value, k->lora_A.value) == 0.0);
  CHECK(test::rel_l2(k3->lora_A.value, k->lora_A.value) > 0.5);
  // Duplicate adapter names on one layer are refused.
  CHECK_THROWS_WITH(lora::add_adapter(layer, {.rank = 2, .name = "k"}), Catch::Contains("already has"));
}

TEST_CASE("Several adapters with their own multipliers, enabled flags and rslora", "[lora][multi]") {
  // Tolerance 1e-12 relative L2 in double: the same products summed in a different order.
  Context<Cpu> ctx;
  nn::Linear<double> layer(6, 5);
  layer.weight.value = random_tensor<double>(Shape{5, 6}, 1);
  layer.bias.value = random_tensor<double>(Shape{5}, 2);
  auto a = lora::add_adapter(layer, {.rank = 2, .alpha = 4.0, .multiplier = 0.5, .seed = 1, .name = "style"});
  auto b = lora::add_adapter(layer, {.rank = 3, .alpha = 3.0, .rslora = true, .seed = 2, .name = "subject"});
  randomize_b(*a, 3);
  randomize_b(*b, 4);
  CHECK(b->scale() == Approx(3.0 / std::sqrt(3.0)));
  auto x = random_tensor<double>(Shape{4, 6}, 5);

  // Reference: y = x W^T + bias + sum_k scale_k x A_k^T B_k^T, written out with plain loops.
  auto reference = [&](double ma, double mb) {
    Tensor<double> y(Shape{4, 5});
    for (Index n = 0; n < 4; ++n)
      for (Index o = 0; o < 5; ++o) {
        double s = layer.bias.value(o);
        for (Index i = 0; i < 6; ++i) {
          double w = layer.weight.value.at({o, i});
          for (Index r = 0; r < 2; ++r) w += ma * 2.0 * a->lora_B.value.at({o, r}) * a->lora_A.value.at({r, i});
          for (Index r = 0; r < 3; ++r)
            w += mb * std::sqrt(3.0) * b->lora_B.value.at({o, r}) * b->lora_A.value.at({r, i});
          s += w * x.at({n, i});
        }
        y.at({n, o}) = s;
      }
    return y;
  };
  CHECK(test::rel_l2(layer.forward(ctx, x), reference(0.5, 1.0)) < 1e-12);
  CHECK(lora::set_multiplier(layer, "subject", -2.0) == 1);
  CHECK(test::rel_l2(layer.forward(ctx, x), reference(0.5, -2.0)) < 1e-12);
  CHECK(lora::set_enabled(layer, "style", false) == 1);
  CHECK(test::rel_l2(layer.forward(ctx, x), reference(0.0, -2.0)) < 1e-12);
  lora::set_enabled(layer, "", false);
  CHECK(test::rel_l2(layer.forward(ctx, x), reference(0.0, 0.0)) < 1e-12);
}

TEST_CASE("Merge equals the adapter forward; unmerge restores the base within a few ulp", "[lora][merge]") {
  Context<Cpu> ctx;
  SECTION("linear, two adapters") {
    nn::Linear<float> layer(16, 12);
    layer.weight.value = random_tensor<float>(Shape{12, 16}, 1);
    layer.bias.value = random_tensor<float>(Shape{12}, 2);
    auto a = lora::add_adapter(layer, {.rank = 4, .alpha = 8.0, .seed = 1, .name = "a"});
    auto b = lora::add_adapter(layer, {.rank = 2, .multiplier = 0.3, .seed = 2, .name = "b"});
    randomize_b(*a, 3);
    randomize_b(*b, 4);
    auto const w0 = layer.weight.value;
    auto x = random_tensor<float>(Shape{5, 16}, 5);
    auto const y_adapter = layer.forward(ctx, x);
    lora::merge(ctx, layer);
    CHECK(a->merged());
    CHECK(b->merged());
    CHECK(test::rel_l2(layer.weight.value, w0) > 1e-2);  // the merge changed the weight
    // fp32: the merged product rounds differently from the two-step branch; 1e-6 relative is ~10 ulp of the output.
    CHECK(test::rel_l2(layer.forward(ctx, x), y_adapter) < 1e-6);
    CHECK_THROWS_WITH(a->set_multiplier(2.0), Catch::Contains("merged"));
    lora::unmerge(ctx, layer);
    CHECK(!a->merged());
    // Bound: (W + D) - D rounds twice, each within eps/2 of its result: |W' - W| <= eps (|W| + |D|), and
    // |D| <= max|W| here, so max |W' - W| <= 4 eps max|W| holds with margin.
    double max_w = 0, max_err = 0;
    for (Index i = 0; i < w0.numel(); ++i) {
      max_w = std::max(max_w, double(std::abs(w0(i))));
      max_err = std::max(max_err, double(std::abs(layer.weight.value(i) - w0(i))));
    }
    CHECK(max_err <= 4 * std::numeric_limits<float>::epsilon() * max_w);
    CHECK(test::rel_l2(layer.forward(ctx, x), y_adapter) < 1e-6);
  }
  SECTION("conv: the k x k down and 1x1 up compose into one k x k kernel") {
    nn::Conv2d<double> layer(3, 4, 3, 2, 1);
    layer.weight.value = random_tensor<double>(layer.weight.shape(), 1);
    layer.bias.value = random_tensor<double>(Shape{4}, 2);
    auto a = lora::add_adapter(layer, {.rank = 2, .alpha = 3.0, .seed = 1});
    randomize_b(*a, 3);
    auto const w0 = layer.weight.value;
    auto x = random_tensor<double>(Shape{2, 3, 7, 6}, 4);
    auto const y_adapter = layer.forward(ctx, x);
    lora::merge(ctx, layer);
    // Tolerance 1e-13 in double: the same sums in another order.
    CHECK(test::rel_l2(layer.forward(ctx, x), y_adapter) < 1e-13);
    lora::unmerge(ctx, layer);
    CHECK(test::rel_l2(layer.weight.value, w0) < 4 * std::numeric_limits<double>::epsilon());
  }
}

TEST_CASE("inject wraps leaves by name pattern (PEFT end-of-name semantics) and freeze_base", "[lora][inject]") {
  Context<Cpu> ctx;
  TinyBlock<float> block;
  auto report = lora::inject(block, {.target = "to_q|to_k|to_v|to_out\\.0", .rank = 2, .seed = 3});
  CHECK(report.layers == 4);
  CHECK(report.parameters == 4 * (2 * 6 + 6 * 2));
  CHECK(report.names == std::vector<std::string>{"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"});
  // The parameters are named like PEFT's.
  std::vector<std::string> lora_names;
  nn::for_each_parameter(block, [&](std::string const& n, auto& p) {
    if (lora::is_lora_parameter(n)) {
      lora_names.push_back(n);
      CHECK(p.trainable);
    }
  });
  CHECK(lora_names.size() == 8);
  CHECK(lora_names[0] == "attn1.to_q.lora_A.default.weight");
  CHECK(lora_names[1] == "attn1.to_q.lora_B.default.weight");
  CHECK(lora_names[7] == "attn1.to_out.0.lora_B.default.weight");

  // "to_out.0" must not match "proj_out"; a full regex works too; conv only with include_conv.
  CHECK(lora::target_matches("to_out\\.0", "down_blocks.0.attn1.to_out.0"));
  CHECK(!lora::target_matches("to_out\\.0", "proj_out"));
  CHECK(!lora::target_matches("q", "attn1.to_q"));  // end of name at a dot boundary, not a substring
  CHECK(lora::target_matches("attn1\\..*", "attn1.to_q"));
  auto r2 = lora::inject(block, {.target = "proj_out|conv1", .rank = 1, .adapter_name = "second"});
  CHECK(r2.names == std::vector<std::string>{"proj_out"});
  auto r3 = lora::inject(block, {.target = "conv1", .rank = 1, .adapter_name = "third", .include_conv = true});
  CHECK(r3.names == std::vector<std::string>{"conv1"});
  CHECK(r3.parameters == 1 * 3 * 3 * 3 + 5 * 1);
  // A name that matches nothing wraps nothing.
  CHECK(lora::inject(block, {.target = "nothing_here"}).layers == 0);

  nn::set_trainable(block, true);
  lora::freeze_base(block);
  Index trainable = 0, frozen = 0;
  nn::for_each_parameter(block, [&](std::string const& n, auto& p) {
    if (p.trainable) {
      ++trainable;
      CHECK(lora::is_lora_parameter(n));
    } else {
      ++frozen;
      CHECK(p.grad.empty());
    }
  });
  CHECK(trainable == 2 * 6);  // 4 + 1 + 1 adapters, two factors each
  CHECK(frozen == 9);         // 6 weights + 3 biases
}
