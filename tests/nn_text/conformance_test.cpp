// Conformance against PyTorch: diffusers Attention / FeedForward and transformers CLIPAttention / CLIPMLP with
// random weights (fixtures from tools/fixtures/make_nn_text.py). Loading each file's state_dict by name into our
// module proves the parameter names; forward outputs, input gradients and every parameter gradient are compared.
#include <catch2/catch.hpp>

#include <cmath>   // std::abs
#include <string>  // std::string

#include "support.hpp"

using namespace sdlora;
using io::SafetensorsFile;

namespace {
// fp32 op vs torch fp32: 1e-5 relative L2 (the project's tolerance for single ops; both sides round each product
// and sum in float, in different orders).
constexpr double kTolerance = 1e-5;

/// Loads "param.<name>" for every parameter of the module (shape-checked), makes them trainable, and checks that
/// the file holds no parameter the module lacks.
template <class M>
void load_parameters(M& module, SafetensorsFile const& file) {
  std::size_t loaded = 0;
  nn::for_each_parameter(module, [&](std::string const& name, auto& p) {
    p.value = file.template load<float>("param." + name, p.value.shape());
    ++loaded;
  });
  std::size_t in_file = 0;
  for (auto const& key : file.keys()) in_file += key.rfind("param.", 0) == 0;
  CHECK(loaded == in_file);
  nn::set_trainable(module, true);
}

template <class M>
void check_parameter_gradients(M& module, SafetensorsFile const& file) {
  nn::for_each_parameter(module, [&](std::string const& name, auto& p) {
    INFO(name);
    Tensor<float> const ref = file.load<float>("grad." + name);
    if (name.ends_with("to_k.bias") || name.ends_with("k_proj.bias")) {
      // Softmax ignores the per-row constant q . b_k, so this gradient is exactly zero: both sides must be rounding
      // noise (|g| < 1e-5 against O(1) gradients elsewhere) rather than be compared relative to each other.
      for (Index i = 0; i < ref.numel(); ++i) {
        CHECK(std::abs(p.grad(i)) < 1e-5f);
        CHECK(std::abs(ref(i)) < 1e-5f);
      }
      return;
    }
    CHECK(test::rel_l2(p.grad, ref) < kTolerance);
  });
}

std::string path(std::string const& name) { return test::fixture("nn_text/" + name + ".safetensors"); }
}  // namespace

TEST_CASE("Attention (self) matches diffusers: forward, dx and weight gradients", "[conformance][attention]") {
  SafetensorsFile const file(path("attention_self"));
  Context<Cpu> ctx;
  nn::Attention<float> attn(32, 0, 4, 8);
  attn.op().block_q = 5;  // several tiles over L = 12
  attn.op().block_k = 4;
  load_parameters(attn, file);
  auto const x = file.load<float>("x");
  auto y = attn.forward(ctx, x, {}, nn::Mode::Train);
  CHECK(test::rel_l2(y, file.load<float>("y")) < kTolerance);
  auto grads = attn.backward(ctx, file.load<float>("dy"));
  CHECK(test::rel_l2(grads.dx, file.load<float>("dx")) < kTolerance);
  check_parameter_gradients(attn, file);
}

TEST_CASE("Attention (cross) matches diffusers: forward, dx, dcontext and weight gradients",
          "[conformance][attention]") {
  SafetensorsFile const file(path("attention_cross"));
  Context<Cpu> ctx;
  nn::Attention<float> attn(32, 24, 4, 8);
  attn.op().block_k = 3;  // Lk = 7: three key tiles
  load_parameters(attn, file);
  auto const x = file.load<float>("x");
  auto const context = file.load<float>("context");
  auto y = attn.forward(ctx, x, context, nn::Mode::Train);
  CHECK(test::rel_l2(y, file.load<float>("y")) < kTolerance);
  auto grads = attn.backward(ctx, file.load<float>("dy"));
  CHECK(test::rel_l2(grads.dx, file.load<float>("dx")) < kTolerance);
  CHECK(test::rel_l2(grads.dcontext, file.load<float>("dcontext")) < kTolerance);
  check_parameter_gradients(attn, file);
}

TEST_CASE("FeedForward (geglu) matches diffusers: forward, dx and weight gradients", "[conformance][feed_forward]") {
  SafetensorsFile const file(path("feed_forward_geglu"));
  Context<Cpu> ctx;
  nn::FeedForward<float> ff(24);
  load_parameters(ff, file);
  auto y = ff.forward(ctx, file.load<float>("x"), nn::Mode::Train);
  CHECK(test::rel_l2(y, file.load<float>("y")) < kTolerance);
  auto dx = ff.backward(ctx, file.load<float>("dy"));
  CHECK(test::rel_l2(dx, file.load<float>("dx")) < kTolerance);
  check_parameter_gradients(ff, file);
}

TEST_CASE("ClipAttention matches transformers' causal CLIPAttention", "[conformance][attention]") {
  SafetensorsFile const file(path("clip_attention"));
  Context<Cpu> ctx;
  nn::ClipAttention<float> attn(32, 4);
  attn.op().block_q = 5;
  attn.op().block_k = 5;
  load_parameters(attn, file);
  auto y = attn.forward(ctx, file.load<float>("x"), nn::Mode::Train);
  CHECK(test::rel_l2(y, file.load<float>("y")) < kTolerance);
  auto dx = attn.backward(ctx, file.load<float>("dy"));
  CHECK(test::rel_l2(dx, file.load<float>("dx")) < kTolerance);
  check_parameter_gradients(attn, file);

  // Without the causal mask the output is far from the fixture: the mask is really exercised.
  nn::ClipAttention<float> open(32, 4, /*causal=*/false);
  load_parameters(open, file);
  CHECK(test::rel_l2(open.forward(ctx, file.load<float>("x")), file.load<float>("y")) > 1e-2);
}

TEST_CASE("ClipMlp matches transformers' CLIPMLP (quick_gelu)", "[conformance][feed_forward]") {
  SafetensorsFile const file(path("clip_mlp"));
  Context<Cpu> ctx;
  nn::ClipMlp<float> mlp(32, 48);
  load_parameters(mlp, file);
  auto y = mlp.forward(ctx, file.load<float>("x"), nn::Mode::Train);
  CHECK(test::rel_l2(y, file.load<float>("y")) < kTolerance);
  auto dx = mlp.backward(ctx, file.load<float>("dy"));
  CHECK(test::rel_l2(dx, file.load<float>("dx")) < kTolerance);
  check_parameter_gradients(mlp, file);
}
