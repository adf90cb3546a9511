/// 16-bit saved activations (nn/saved.hpp, Context::saved_activations): the conversions against core/dtype.hpp's
/// scalar half and bfloat16, SavedTensor's bookkeeping, and, layer by layer, that a training step which keeps its
/// inputs in 16 bits is exactly the float step on the rounded inputs (the forward computes from what backward will
/// read), at half the kept bytes.
#include <catch2/catch.hpp>

#include <cmath>    // std::isnan, std::ldexp
#include <cstring>  // std::memcpy
#include <limits>   // std::numeric_limits
#include <vector>   // std::vector

#include <sdlora/lora/inject.hpp>  // lora::inject
#include <sdlora/sdlora.hpp>

#include "support.hpp"

using namespace sdlora;
using test::random_tensor;
using test::same_bits;

namespace {

/// x rounded to F16 / BF16 and back, through the scalar types of core/dtype.hpp (not the code under test).
Tensor<float> rounded(Tensor<float> const& x, DType d) {
  Tensor<float> out(x.shape());
  for (Index i = 0; i < x.numel(); ++i)
    out(i) = d == DType::F16 ? float(half(x(i))) : float(bfloat16(x(i)));
  return out;
}

/// Values with every exponent a float model's activations meet, and the awkward ones: signed zeros, F16 subnormals
/// and overflow, ties, infinities, NaN, float subnormals.
std::vector<float> awkward_values() {
  std::vector<float> v = {0.f, -0.f, 1.f, -1.f, 65504.f, 65519.f, 65520.f, -65520.f, 1e-8f, 6e-8f, 3e-5f,
                          1.00048828125f /* F16 tie */, 1.00390625f /* BF16 tie */, 1.01171875f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::max(), 3.3895314e38f};
  auto r = random_tensor<float>(Shape{997}, 7);
  for (Index i = 0; i < r.numel(); ++i) v.push_back(std::ldexp(r(i), int(i % 40) - 20));  // 2^-20 .. 2^19
  return v;
}

bool same_value(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0;
}

/// The trainable gradients of a module, in visiting order.
template <class M>
std::vector<Tensor<float>> grads(M& m) {
  std::vector<Tensor<float>> out;
  nn::for_each_parameter(m, [&](std::string const&, auto& p) {
    if (p.trainable) out.push_back(p.grad);
  });
  return out;
}

struct Step {
  Tensor<float> y, dx;
  std::vector<Tensor<float>> grads;
  std::int64_t kept_bytes = 0;  // what the forward left in SavedTensors
};

/// One training forward and backward of `layer` (fwd(ctx, x) -> y, bwd(ctx, dy) -> dx) under `ctx`.
template <class M, class Fwd, class Bwd>
Step step(M& layer, Context<Cpu>& ctx, Tensor<float> const& x, Fwd fwd, Bwd bwd) {
  Step s;
  std::int64_t const before = nn::saved_tensor_bytes().load();
  s.y = fwd(layer, ctx, x);
  s.kept_bytes = nn::saved_tensor_bytes().load() - before;
  auto const dy = random_tensor<float>(s.y.shape(), 99);
  s.dx = bwd(layer, ctx, dy);
  CHECK(nn::saved_tensor_bytes().load() == before);  // backward released everything it kept
  s.grads = grads(layer);
  return s;
}

/// A training step with inputs kept in `d` equals, bit for bit, the float step on the rounded input, and keeps
/// half the bytes. `make` builds the layer (the same parameters every call); `forward_exact` is false where part of
/// the output is computed from the unrounded input on purpose (a LoRA's frozen base layer keeps nothing).
template <class Make, class Fwd, class Bwd>
void check_rounded_input_step(char const* what, Make make, Shape x_shape, Fwd fwd, Bwd bwd,
                              bool forward_exact = true) {
  for (DType d : {DType::BF16, DType::F16}) {
    INFO(what << " with inputs kept in " << dtype_name(d));
    auto x = random_tensor<float>(x_shape, 3);
    for (Index i = 0; i < x.numel(); ++i) x(i) = 4.f * x(i) + 0.3f;  // mean off zero, as activations are
    Context<Cpu> c16, c32;
    c16.saved_activations = d;
    auto a = make(), b = make(), c = make();
    Step const s16 = step(a, c16, x, fwd, bwd);
    Step const ref = step(b, c32, rounded(x, d), fwd, bwd);
    Step const plain = step(c, c32, x, fwd, bwd);
    if (forward_exact) CHECK(same_bits(s16.y, ref.y));
    CHECK(same_bits(s16.dx, ref.dx));
    REQUIRE(s16.grads.size() == ref.grads.size());
    for (std::size_t i = 0; i < ref.grads.size(); ++i) CHECK(same_bits(s16.grads[i], ref.grads[i]));
    // ... which is not the unrounded step: the rounding happened
    bool differs = !same_bits(s16.y, plain.y) || !same_bits(s16.dx, plain.dx);
    for (std::size_t i = 0; i < ref.grads.size(); ++i) differs = differs || !same_bits(s16.grads[i], plain.grads[i]);
    CHECK(differs);
    CHECK(ref.kept_bytes > 0);
    CHECK(2 * s16.kept_bytes == ref.kept_bytes);
  }
}

auto const layer_forward = [](auto& l, Context<Cpu>& ctx, Tensor<float> const& x) {
  return l.forward(ctx, x.view(), nn::Mode::Train);
};
auto const layer_backward = [](auto& l, Context<Cpu>& ctx, Tensor<float> const& dy) {
  return l.backward(ctx, dy.view());
};

template <class M>
void randomise(M& m, std::uint32_t seed) {
  nn::for_each_parameter(m, [&](std::string const&, auto& p) {
    if (!p.value.empty()) p.value = random_tensor<float>(p.value.shape(), seed++);
  });
}

}  // namespace

TEST_CASE("narrow16 and widen16 round as core/dtype.hpp's half and bfloat16, on every path", "[nn][saved]") {
  std::vector<float> const v = awkward_values();
  Index const n = Index(v.size());
  for (DType d : {DType::F16, DType::BF16}) {
    INFO(dtype_name(d));
    std::vector<std::uint16_t> bits(v.size());
    cpu::narrow16(bits.data(), v.data(), n, d);  // F16: the F16C instructions where the CPU has them
    for (Index i = 0; i < n; ++i) {
      INFO("value " << v[std::size_t(i)]);
      std::uint16_t const want = d == DType::F16 ? half(v[std::size_t(i)]).bits : bfloat16(v[std::size_t(i)]).bits;
      float const got_f = d == DType::F16 ? float(half::from_bits(bits[std::size_t(i)]))
                                          : float(bfloat16::from_bits(bits[std::size_t(i)]));
      float const want_f = d == DType::F16 ? float(half::from_bits(want)) : float(bfloat16::from_bits(want));
      CHECK(same_value(got_f, want_f));
    }
    // every 16-bit pattern widens as the scalar type does (NaNs as NaN)
    std::vector<std::uint16_t> all(65536);
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = std::uint16_t(i);
    std::vector<float> wide(all.size());
    cpu::widen16(wide.data(), all.data(), Index(all.size()), d);
    int wrong = 0;
    for (std::size_t i = 0; i < all.size(); ++i) {
      float const want = d == DType::F16 ? float(half::from_bits(all[i])) : float(bfloat16::from_bits(all[i]));
      wrong += same_value(wide[i], want) ? 0 : 1;
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE("SavedTensor keeps a copy in the model's type or rounded to 16 bits, as the context asks", "[nn][saved]") {
  auto x = random_tensor<float>(Shape{3, 70000}, 1);  // above the conversions' parallel threshold
  Context<Cpu> c32, c16;
  c16.saved_activations = DType::BF16;
  std::int64_t const base = nn::saved_tensor_bytes().load();

  nn::SavedTensor<float, Cpu> s;
  auto in = s.keep(c32, x.view(), nn::Mode::Train);
  CHECK(in.x.data() == x.data());  // float: the forward reads x itself
  CHECK(s.storage() == DType::F32);
  CHECK(nn::saved_tensor_bytes().load() - base == std::int64_t(x.bytes()));
  CHECK(same_bits(s.take(c32), x));
  CHECK(s.empty());
  CHECK(nn::saved_tensor_bytes().load() == base);

  in = s.keep(c16, x.view(), nn::Mode::Train);
  CHECK(s.storage() == DType::BF16);
  CHECK(s.shape() == x.shape());
  CHECK(nn::saved_tensor_bytes().load() - base == std::int64_t(x.bytes() / 2));
  auto const want = rounded(x, DType::BF16);
  CHECK(same_bits(Tensor<float>::from_view(in.x), want));  // the forward computes from the rounded values
  CHECK(same_bits(s.take(c16), want));                     // and backward reads the same
  CHECK(nn::saved_tensor_bytes().load() == base);

  // a checkpointed block's first pass rounds as the recomputation will, and keeps nothing
  in = s.keep(c16, x.view(), nn::Mode::TrainDiscard);
  CHECK(s.empty());
  CHECK(same_bits(Tensor<float>::from_view(in.x), want));
  // inference neither rounds nor keeps
  in = s.keep(c16, x.view(), nn::Mode::Infer);
  CHECK((s.empty() && in.x.data() == x.data()));

  // a strided view is kept compact; a moved tensor is kept without a copy in float
  auto const column = x.view().slice(1, 2);
  in = s.keep(c16, column, nn::Mode::Train);
  CHECK(same_bits(s.take(c16), rounded(Tensor<float>::from_view(column), DType::BF16)));
  auto moved = Tensor<float>::from_view(x.view());
  float const* p = moved.data();
  in = s.keep(c32, std::move(moved), nn::Mode::Train);
  CHECK(in.x.data() == p);
  nn::SavedTensor<float, Cpu> t = std::move(s);  // the count moves with it
  CHECK(nn::saved_tensor_bytes().load() - base == std::int64_t(x.bytes()));
  t.reset();
  CHECK(nn::saved_tensor_bytes().load() == base);

  // where 16 bits are not implemented, one line says so
  Context<Cpu> cd;
  cd.saved_activations = DType::F16;
  nn::SavedTensor<double, Cpu> sd;
  auto const xd = random_tensor<double>(Shape{4}, 2);
  CHECK_THROWS_WITH(sd.keep(cd, xd.view(), nn::Mode::Train),
                    Catch::Contains("[saved activations]") && Catch::Contains("F16") && Catch::Contains("F64"));
  cd.saved_activations = DType::I8;
  CHECK_THROWS_WITH(sd.keep(cd, xd.view(), nn::Mode::Train), Catch::Contains("must be F32, F16 or BF16"));
}

TEST_CASE("Layers that keep their input in 16 bits train exactly as on the rounded input, at half the bytes",
          "[nn][saved]") {
  check_rounded_input_step("SiLU", [] { return nn::SiLU<float>(); }, Shape{2, 3, 5, 7}, layer_forward,
                           layer_backward);
  check_rounded_input_step("GELU (erf)", [] { return nn::Gelu<float>(); }, Shape{4, 33}, layer_forward,
                           layer_backward);
  check_rounded_input_step("QuickGELU", [] { return nn::QuickGelu<float>(); }, Shape{4, 33}, layer_forward,
                           layer_backward);
  for (bool fuse : {false, true})
    check_rounded_input_step(
        fuse ? "GroupNorm + SiLU" : "GroupNorm",
        [fuse] {
          nn::GroupNorm<float> g(4, 8);
          g.fuse_silu = fuse;
          randomise(g, 11);
          nn::set_trainable(g, true);
          return g;
        },
        Shape{2, 8, 5, 3}, layer_forward, layer_backward);
  check_rounded_input_step(
      "LayerNorm",
      [] {
        nn::LayerNorm<float> l(24);
        randomise(l, 12);
        nn::set_trainable(l, true);
        return l;
      },
      Shape{2, 9, 24}, layer_forward, layer_backward);
  check_rounded_input_step(
      "Linear (trainable weight)",
      [] {
        nn::Linear<float> l(24, 10);
        randomise(l, 13);
        nn::set_trainable(l, true);
        return l;
      },
      Shape{3, 7, 24}, layer_forward, layer_backward);
  check_rounded_input_step(
      "Conv2d (trainable weight)",
      [] {
        nn::Conv2d<float> c(6, 5, 3, 1, 1);
        randomise(c, 14);
        nn::set_trainable(c, true);
        return c;
      },
      Shape{2, 6, 9, 8}, layer_forward, layer_backward);
  // LoRA on a frozen layer: the adapter keeps (and computes from) the rounded input, the base layer keeps nothing and
  // reads x as it is; so the gradients and dx are the rounded-input step's, the output is not.
  check_rounded_input_step(
      "LoRA Linear",
      [] {
        nn::Linear<float> l(24, 10);
        randomise(l, 15);
        lora::inject(l, {.target = ".*", .rank = 3});
        randomise(l, 16);  // lora_B too, so that every gradient is non-zero
        return l;
      },
      Shape{3, 7, 24}, layer_forward, layer_backward, false);
  check_rounded_input_step(
      "LoRA Conv2d",
      [] {
        nn::Conv2d<float> c(6, 5, 3, 1, 1);
        randomise(c, 17);
        lora::inject(c, {.target = ".*", .rank = 2, .include_conv = true});
        randomise(c, 18);
        return c;
      },
      Shape{2, 6, 9, 8}, layer_forward, layer_backward, false);
}

TEST_CASE("Attention and GEGLU keep what they made in 16 bits; the step stays within BF16 / F16 rounding of float",
          "[nn][saved]") {
  // q, k, v, o and GEGLU's projection are computed inside the layer, so there is no rounded input to compare with:
  // the 16-bit step is held to the float step by the rounding's size (relative L2 below 2^-8 for BF16 and 2^-11 for
  // F16, times a few for the products it passes through), and to half the kept bytes.
  auto make_attention = [] {
    nn::Attention<float> a(32, 24, 4, 8);  // no q/k/v bias: the softmax ignores k's, whose gradient is rounding noise
    randomise(a, 21);
    nn::set_trainable(a, true);
    return a;
  };
  auto const context = random_tensor<float>(Shape{2, 5, 24}, 22);
  auto const attend = [&](auto& l, Context<Cpu>& ctx, Tensor<float> const& x) {
    return l.forward(ctx, x.view(), context.view(), nn::Mode::Train);
  };
  auto const attend_back = [](auto& l, Context<Cpu>& ctx, Tensor<float> const& dy) {
    return l.backward(ctx, dy.view()).dx;
  };
  auto make_geglu = [] {
    nn::Geglu<float> g(32, 20);
    randomise(g, 23);
    nn::set_trainable(g, true);
    return g;
  };
  auto const x = random_tensor<float>(Shape{2, 11, 32}, 24);
  for (auto [d, bound] : {std::pair{DType::BF16, 2e-2}, std::pair{DType::F16, 3e-3}}) {
    INFO(dtype_name(d));
    Context<Cpu> c16, c32;
    c16.saved_activations = d;
    {
      auto a = make_attention(), b = make_attention();
      Step const s16 = step(a, c16, x, attend, attend_back), s32 = step(b, c32, x, attend, attend_back);
      CHECK(test::rel_l2(s16.y, s32.y) < bound);
      CHECK(test::rel_l2(s16.dx, s32.dx) < bound);
      for (std::size_t i = 0; i < s32.grads.size(); ++i) CHECK(test::rel_l2(s16.grads[i], s32.grads[i]) < bound);
      CHECK_FALSE(same_bits(s16.dx, s32.dx));
      CHECK(2 * s16.kept_bytes == s32.kept_bytes);
    }
    {
      auto a = make_geglu(), b = make_geglu();
      Step const s16 = step(a, c16, x, layer_forward, layer_backward);
      Step const s32 = step(b, c32, x, layer_forward, layer_backward);
      CHECK(test::rel_l2(s16.y, s32.y) < bound);
      CHECK(test::rel_l2(s16.dx, s32.dx) < bound);
      for (std::size_t i = 0; i < s32.grads.size(); ++i) CHECK(test::rel_l2(s16.grads[i], s32.grads[i]) < bound);
      CHECK_FALSE(same_bits(s16.dx, s32.dx));
      CHECK(2 * s16.kept_bytes == s32.kept_bytes);
    }
  }
}
