// Frozen weights kept in 16 bits (nn::Parameter::set_storage, nn::set_weight_storage): Linear and Conv2d give the
// same bits as the float layer whose weight holds the same rounded values (the GEMM widens exactly while packing),
// forward and input gradient, on every kernel path; set_storage round-trips; a LoRA merges into a 16-bit weight as
// into the widened one, rounded again.
#include <catch2/catch.hpp>

#include <vector>

#include "support.hpp"

using namespace sdlora;
using test::random_tensor;

namespace {

/// w rounded to `d` and widened back: what a float layer must hold to compute exactly what the 16-bit one does.
Tensor<float> rounded(Tensor<float> const& w, DType d) {
  Tensor<float> out(w.shape());
  for (Index i = 0; i < w.numel(); ++i)
    out(i) = d == DType::F16 ? float(half(w(i))) : float(bfloat16(w(i)));
  return out;
}

bool same_bits(Tensor<float> const& a, Tensor<float> const& b) {
  if (a.shape() != b.shape()) return false;
  for (Index i = 0; i < a.numel(); ++i)
    if (a(i) != b(i)) return false;
  return true;
}

/// A two-leaf module tree.
struct TwoLayers {
  nn::Linear<float>& a;
  nn::Linear<float>& b;
  template <class V>
  void visit(std::string const& prefix, V&& v) {
    a.visit(nn::join(prefix, "a"), v);
    b.visit(nn::join(prefix, "b"), v);
  }
};

std::vector<cpu::Isa> paths() {
  std::vector<cpu::Isa> p{cpu::Isa::kPortable};
  if (cpu::detected_isa() >= cpu::Isa::kAvx2) p.push_back(cpu::Isa::kAvx2);
  if (cpu::detected_isa() >= cpu::Isa::kAvx512) p.push_back(cpu::Isa::kAvx512);
  return p;
}

}  // namespace

TEST_CASE("Linear with a 16-bit weight equals the float Linear with the rounded weight, bit for bit",
          "[nn][storage][isa]") {
  for (DType d : {DType::F16, DType::BF16})
    for (cpu::Isa isa : paths()) {
      INFO(dtype_name(d) << " on " << cpu::isa_name(isa));
      Context<Cpu> ctx;
      ctx.isa = isa;
      nn::Linear<float> narrow(300, 70), wide(300, 70);
      narrow.weight.value = random_tensor<float>(Shape{70, 300}, 1);
      narrow.bias.value = random_tensor<float>(Shape{70}, 2);
      wide.weight.value = rounded(narrow.weight.value, d);
      wide.bias.value = narrow.bias.value;
      narrow.weight.set_storage(d);
      CHECK(narrow.weight.value.empty());
      CHECK(narrow.weight.shape() == Shape{70, 300});
      CHECK(narrow.in_features() == 300);
      auto const x = random_tensor<float>(Shape{2, 37, 300}, 3);
      auto const dy = random_tensor<float>(Shape{2, 37, 70}, 4);
      CHECK(same_bits(narrow.forward(ctx, x.view(), nn::Mode::Train), wide.forward(ctx, x.view(), nn::Mode::Train)));
      CHECK(same_bits(narrow.backward(ctx, dy.view()), wide.backward(ctx, dy.view())));
    }
}

TEST_CASE("Conv2d with a 16-bit weight equals the float Conv2d with the rounded weight, bit for bit",
          "[nn][storage][isa]") {
  struct Case {
    Index c, o, k, stride, pad;
  };
  for (Case const cs : {Case{6, 20, 3, 1, 1}, Case{6, 13, 3, 2, 1}, Case{20, 7, 1, 1, 0}})
    for (DType d : {DType::F16, DType::BF16})
      for (cpu::Isa isa : paths()) {
        INFO(dtype_name(d) << " on " << cpu::isa_name(isa) << ", k " << cs.k << " stride " << cs.stride);
        Context<Cpu> ctx;
        ctx.isa = isa;
        nn::Conv2d<float> narrow(cs.c, cs.o, cs.k, cs.stride, cs.pad), wide(cs.c, cs.o, cs.k, cs.stride, cs.pad);
        narrow.weight.value = random_tensor<float>(narrow.weight.shape(), 5);
        narrow.bias.value = random_tensor<float>(Shape{cs.o}, 6);
        wide.weight.value = rounded(narrow.weight.value, d);
        wide.bias.value = narrow.bias.value;
        narrow.weight.set_storage(d);
        auto const x = random_tensor<float>(Shape{2, cs.c, 9, 11}, 7);
        auto const y = wide.forward(ctx, x.view(), nn::Mode::Train);
        CHECK(same_bits(narrow.forward(ctx, x.view(), nn::Mode::Train), y));
        auto const dy = random_tensor<float>(y.shape(), 8);
        CHECK(same_bits(narrow.backward(ctx, dy.view()), wide.backward(ctx, dy.view())));
      }
}

TEST_CASE("Parameter storage round-trips and refuses trainable parameters", "[nn][storage]") {
  nn::Parameter<float> p(Shape{3, 5});
  p.value = random_tensor<float>(Shape{3, 5}, 9);
  auto const want = rounded(p.value, DType::BF16);
  p.set_storage(DType::BF16);
  CHECK(p.is_16bit());
  CHECK(same_bits(p.widened(), want));
  p.set_storage(DType::F32);
  CHECK(!p.is_16bit());
  CHECK(same_bits(p.value, want));
  p.set_trainable(true);
  CHECK_THROWS_WITH(p.set_storage(DType::F16), Catch::Contains("trainable"));
  CHECK_THROWS_WITH(nn::parse_weight_dtype("f8"), Catch::Contains("f32, f16 or bf16"));
}

TEST_CASE("set_weight_storage converts frozen Linear and Conv2d weights only; a LoRA merges into them",
          "[nn][storage][lora]") {
  Context<Cpu> ctx;
  nn::Linear<float> frozen(16, 8), trained(16, 8);
  frozen.weight.value = random_tensor<float>(Shape{8, 16}, 10);
  trained.weight.set_trainable(true);
  TwoLayers tree{frozen, trained};
  auto const report = nn::set_weight_storage(tree, DType::F16);
  CHECK(report.weights == 1);
  CHECK(report.bytes_saved == 8 * 16 * 2);
  CHECK(frozen.weight.is_16bit());
  CHECK(!trained.weight.is_16bit());

  // Merge: W16 <- round16(widen(W16) + scale B A), the same as merging into a float twin holding the widened weight
  // and rounding the result.
  nn::Linear<float> twin(16, 8);
  twin.weight.value = frozen.weight.widened();
  auto const b = random_tensor<float>(Shape{8, 2}, 11);
  for (nn::Linear<float>* layer : {&frozen, &twin}) {
    auto adapter = lora::add_adapter(*layer, {.rank = 2, .seed = 3, .name = "m"});
    adapter->lora_B.value = b;
    lora::merge(ctx, *layer);
  }
  CHECK(frozen.weight.is_16bit());
  CHECK(same_bits(frozen.weight.widened(), rounded(twin.weight.value, DType::F16)));
  CHECK(!same_bits(twin.weight.value, rounded(random_tensor<float>(Shape{8, 16}, 10), DType::F16)));  // it moved
}
