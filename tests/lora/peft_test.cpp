/// @file peft_test.cpp
/// @brief LoraLinear against PEFT: the same base weights and LoRA factors give PEFT's output and LoRA gradients
/// (fixtures from tools/fixtures/make_lora.py).
#include <catch2/catch.hpp>

#include <sdlora/lora/inject.hpp>  // lora::inject, LoraLinear
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "support.hpp"

using namespace sdlora;

TEST_CASE("LoraLinear matches PEFT lora.Linear (forward, dA, dB, dx)", "[lora][peft]") {
  // Tolerance 1e-5 relative L2: fp32 op vs torch fp32 (different summation orders, ~1e-7 per product).
  io::SafetensorsFile const f(test::fixture("lora/peft_linear.safetensors"));
  Context<Cpu> ctx;
  nn::Linear<float> layer(16, 12);
  layer.weight.value = f.load<float>("weight");
  layer.bias.value = f.load<float>("bias");
  nn::set_trainable(layer, false);
  auto r = lora::inject(layer, {.target = "lin", .rank = 4, .alpha = 8.0, .init = lora::LoraInit::Gaussian},
                        "lin");
  REQUIRE(r.layers == 1);
  std::vector<std::string> names;
  nn::for_each_parameter(layer, [&](std::string const& n, auto& p) {
    if (p.trainable) names.push_back(n);
  }, "lin");
  CHECK(names == test::split_commas(f.metadata().at("lora_names")));  // PEFT's parameter names
  lora::for_each_adapter(layer, [&](std::string const&, auto&, auto& a) {
    CHECK(a.scale() == Approx(std::stod(f.metadata().at("scaling"))));
    a.lora_A.value = f.load<float>("lora_A");
    a.lora_B.value = f.load<float>("lora_B");
  });
  auto const x = f.load<float>("x");
  auto const y = layer.forward(ctx, x, nn::Mode::Train);
  CHECK(test::rel_l2(y, f.load<float>("y")) < 1e-5);
  auto const dx = layer.backward(ctx, f.load<float>("dy"));
  CHECK(test::rel_l2(dx, f.load<float>("dx")) < 1e-5);
  lora::for_each_adapter(layer, [&](std::string const&, auto&, auto& a) {
    CHECK(test::rel_l2(a.lora_A.grad, f.load<float>("dA")) < 1e-5);
    CHECK(test::rel_l2(a.lora_B.grad, f.load<float>("dB")) < 1e-5);
  });
}

namespace {
/// PEFT fixture's module: attn1.{to_q, to_k, to_v, to_out.0} and an unwrapped proj;
/// out = to_out.0(to_q(x) * to_k(x) + to_v(x)).
struct AttnLike {
  nn::Linear<float> to_q{8, 8, false}, to_k{8, 8, false}, to_v{8, 8, false}, to_out_0{8, 8}, proj{8, 8};
  template <class V>
  void visit(std::string const& prefix, V&& v) {
    to_q.visit(nn::join(prefix, "attn1.to_q"), v);
    to_k.visit(nn::join(prefix, "attn1.to_k"), v);
    to_v.visit(nn::join(prefix, "attn1.to_v"), v);
    to_out_0.visit(nn::join(prefix, "attn1.to_out.0"), v);
    proj.visit(nn::join(prefix, "proj"), v);
  }
  Tensor<float> q, k;
  Tensor<float> forward(Context<Cpu>& ctx, Tensor<float> const& x) {
    q = to_q.forward(ctx, x, nn::Mode::Train);
    k = to_k.forward(ctx, x, nn::Mode::Train);
    auto h = to_v.forward(ctx, x, nn::Mode::Train);
    for (Index i = 0; i < h.numel(); ++i) h(i) += q(i) * k(i);
    return to_out_0.forward(ctx, h, nn::Mode::Train);
  }
  Tensor<float> backward(Context<Cpu>& ctx, Tensor<float> const& dy) {
    auto dh = to_out_0.backward(ctx, dy);
    Tensor<float> dq(dh.shape()), dk(dh.shape());
    for (Index i = 0; i < dh.numel(); ++i) dq(i) = dh(i) * k(i), dk(i) = dh(i) * q(i);
    auto dx = to_v.backward(ctx, dh);  // fan-out of x: sum the three branches
    auto dxq = to_q.backward(ctx, dq);
    auto dxk = to_k.backward(ctx, dk);
    for (Index i = 0; i < dx.numel(); ++i) dx(i) += dxq(i) + dxk(i);
    return dx;
  }
};
}  // namespace

TEST_CASE("inject on an attention-like tree matches PEFT inject_adapter_in_model", "[lora][peft]") {
  // Tolerance 1e-5 relative L2: fp32 vs torch fp32 through a few small products.
  io::SafetensorsFile const f(test::fixture("lora/peft_attn.safetensors"));
  Context<Cpu> ctx;
  AttnLike m;
  nn::for_each_parameter(m, [&](std::string const& n, auto& p) { p.value = f.load<float>(n, p.shape()); });
  auto report = lora::inject(m, {.target = lora::InjectOptions::any_of({"to_q", "to_k", "to_v", "to_out.0"}),
                                 .rank = 4, .alpha = 8.0, .init = lora::LoraInit::Gaussian});
  CHECK(report.names == std::vector<std::string>{"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"});
  lora::freeze_base(m);
  std::vector<std::string> names;
  nn::for_each_parameter(m, [&](std::string const& n, auto& p) {
    if (p.trainable) {
      names.push_back(n);
      p.value = f.load<float>(n, p.shape());
    }
  });
  CHECK(names == test::split_commas(f.metadata().at("lora_names")));
  auto const y = m.forward(ctx, f.load<float>("x"));
  CHECK(test::rel_l2(y, f.load<float>("y")) < 1e-5);
  auto const dx = m.backward(ctx, f.load<float>("dy"));
  CHECK(test::rel_l2(dx, f.load<float>("dx")) < 1e-5);
  nn::for_each_parameter(m, [&](std::string const& n, auto& p) {
    if (p.trainable) {
      INFO(n);
      CHECK(test::rel_l2(p.grad, f.load<float>("grad." + n)) < 1e-5);
    }
  });
}
