/// @file rng_test.cpp
/// @brief Philox4x32-10 known answers and stream layout; TorchGenerator bit-exact against torch.Generator("cpu").
#include <catch2/catch.hpp>

#include <bit>      // std::bit_cast
#include <cmath>    // std::sqrt
#include <cstdint>  // std::uint32_t
#include <sstream>  // std::ostringstream
#include <string>   // std::string

#include <sdlora/core/rng.hpp>  // Philox4x32, TorchGenerator

#include "support.hpp"

using namespace sdlora;

namespace {

/// Number of elements whose float bits differ (bit-exact comparison: -0 != +0, every NaN payload counts).
Index bit_mismatches(Tensor<float> const& a, Tensor<float> const& b) {
  REQUIRE(a.numel() == b.numel());
  Index bad = 0;
  for (Index i = 0; i < a.numel(); ++i) bad += std::bit_cast<std::uint32_t>(a(i)) != std::bit_cast<std::uint32_t>(b(i));
  return bad;
}

io::SafetensorsFile const& torch_fixture() {
  static io::SafetensorsFile const f(test::fixture("rng/torch_generator.safetensors"));
  return f;
}

std::string shape_name(Shape const& s) {
  std::ostringstream out;
  for (int i = 0; i < s.rank(); ++i) out << (i ? "x" : "") << s[i];
  return out.str();
}

}  // namespace

TEST_CASE("Philox4x32-10 reproduces the Random123 known-answer vectors", "[rng][philox]") {
  // Exact: integer arithmetic. Vectors from Random123's kat_vectors (philox4x32 10 ...).
  CHECK(philox4x32_10({{0, 0, 0, 0}}, 0, 0) == PhiloxBlock{{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
  CHECK(philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu) ==
        PhiloxBlock{{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
  CHECK(philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u) ==
        PhiloxBlock{{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
  // The stream maps the seed to the key (lo, hi) and the block index to counter words 0-1.
  CHECK(philox_block(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull) ==
        PhiloxBlock{{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST_CASE("Philox4x32 fills follow the documented (seed, offset, index) layout and resume exactly", "[rng][philox]") {
  Philox4x32 a(1234);
  Tensor<float> u = a.uniform(Shape{10});  // 3 blocks
  CHECK(a.offset() == 3);
  for (Index i = 0; i < 10; ++i) CHECK(u(i) == philox_uniform_at(1234, 0, 0, std::uint64_t(i)));
  CHECK(u(5) == float(philox_block(1234, 0, 1).v[1] >> 8) * 0x1.0p-24f);

  Philox4x32::State const saved = a.state();
  Tensor<float> n1 = a.normal(Shape{7});
  for (Index i = 0; i < 7; ++i) CHECK(n1(i) == philox_normal_at(1234, 0, 3, std::uint64_t(i)));
  Philox4x32 b(99);
  b.set_state(saved);
  CHECK(bit_mismatches(b.normal(Shape{7}), n1) == 0);
  CHECK(a.state() == b.state());
  // A different subsequence or seed gives different numbers.
  CHECK(bit_mismatches(Philox4x32(1234, 1).normal(Shape{64}), Philox4x32(1234, 0).normal(Shape{64})) > 60);
  CHECK(bit_mismatches(Philox4x32(1235).normal(Shape{64}), Philox4x32(1234).normal(Shape{64})) > 60);
}

TEST_CASE("Philox4x32 normal and uniform samples have the right moments", "[rng][philox]") {
  // n = 2^20: the standard error of the mean is 1e-3 for N(0,1) and 2.8e-4 for U(0,1); bounds are ~5 sigma.
  Philox4x32 g(42);
  Index const n = Index(1) << 20;
  Tensor<double> x(Shape{n});
  g.normal(x);
  double m = 0, m2 = 0, m4 = 0;
  for (Index i = 0; i < n; ++i) {
    m += x(i);
    m2 += x(i) * x(i);
    m4 += x(i) * x(i) * x(i) * x(i);
  }
  m /= double(n);
  m2 /= double(n);
  m4 /= double(n);
  CHECK(std::abs(m) < 5e-3);
  CHECK(std::abs(m2 - 1.0) < 7e-3);   // var of x^2 is 2: se 1.4e-3
  CHECK(std::abs(m4 - 3.0) < 5e-2);   // var of x^4 is 96: se 9.6e-3
  Tensor<float> u = g.uniform(Shape{n});
  double um = 0, lo = 1, hi = 0;
  for (Index i = 0; i < n; ++i) {
    um += u(i);
    lo = std::min(lo, double(u(i)));
    hi = std::max(hi, double(u(i)));
  }
  CHECK(std::abs(um / double(n) - 0.5) < 1.5e-3);
  CHECK(lo >= 0.0);
  CHECK(hi < 1.0);
}

TEST_CASE("TorchGenerator randn matches torch.randn bit for bit (AVX2 and scalar kernels)", "[rng][torch]") {
  // Bit-exact: the fixture holds torch.randn(shape, generator=torch.Generator().manual_seed(seed)).
  std::uint64_t const seeds[] = {0, 42, 1234, (1ull << 32) + 5};
  Shape const shapes[] = {{1}, {7}, {15}, {16}, {17}, {33}, {2, 4, 8, 8}, {1, 4, 16, 16}};
  int compared = 0;
  for (auto const kernel : {TorchNormalKernel::Avx2, TorchNormalKernel::Scalar}) {
    std::string const prefix = kernel == TorchNormalKernel::Avx2 ? "avx2/" : "scalar/";
    for (std::uint64_t seed : seeds) {
      for (Shape const& shape : shapes) {
        std::string const key = prefix + "randn/" + std::to_string(seed) + "/" + shape_name(shape);
        if (!torch_fixture().contains(key)) continue;
        INFO(key);
        TorchGenerator g(seed, kernel);
        Tensor<float> const got = g.randn(shape);
        CHECK(got.shape() == shape);
        CHECK(bit_mismatches(got, torch_fixture().load<float>(key)) == 0);
        ++compared;
      }
    }
  }
  CHECK(compared == 32 + 16);
  // The two kernels really differ (else the scalar check would not test anything new).
  CHECK(bit_mismatches(TorchGenerator(42, TorchNormalKernel::Avx2).randn(Shape{1, 4, 16, 16}),
                       TorchGenerator(42, TorchNormalKernel::Scalar).randn(Shape{1, 4, 16, 16})) > 0);
}

TEST_CASE("TorchGenerator continues a stream across calls like one torch.Generator", "[rng][torch]") {
  // randn(3) leaves a cached normal that randn(5) consumes after the vectorised randn(20) (which ignores it).
  TorchGenerator g(1234);
  auto const& f = torch_fixture();
  CHECK(bit_mismatches(g.randn(Shape{3}), f.load<float>("seq/randn3")) == 0);
  CHECK(g.state().next_double_normal.has_value());
  Tensor<std::uint8_t> const after3 = f.load<std::uint8_t>("seq/state_after_randn3");
  std::vector<std::uint8_t> const mine = g.torch_state_bytes();
  CHECK(std::equal(mine.begin(), mine.end(), after3.data(), after3.data() + after3.numel()));
  TorchGenerator::State const saved = g.state();

  CHECK(bit_mismatches(g.randn(Shape{20}), f.load<float>("seq/randn20")) == 0);
  CHECK(bit_mismatches(g.randn(Shape{5}), f.load<float>("seq/randn5")) == 0);
  CHECK(bit_mismatches(g.rand(Shape{10}), f.load<float>("seq/rand10")) == 0);
  CHECK(bit_mismatches(g.randn(Shape{1}), f.load<float>("seq/randn1")) == 0);
  Tensor<std::int64_t> const ri = g.randint(0, 1000, Shape{8});
  Tensor<std::int64_t> const ri_ref = f.load<std::int64_t>("seq/randint");
  for (Index i = 0; i < 8; ++i) CHECK(ri(i) == ri_ref(i));
  Tensor<std::int64_t> const rw = g.randint(-(std::int64_t(1) << 40), std::int64_t(1) << 40, Shape{4});
  Tensor<std::int64_t> const rw_ref = f.load<std::int64_t>("seq/randint_wide");
  for (Index i = 0; i < 4; ++i) CHECK(rw(i) == rw_ref(i));
  std::vector<std::int64_t> const perm = g.randperm(10);
  Tensor<std::int64_t> const perm_ref = f.load<std::int64_t>("seq/randperm10");
  for (Index i = 0; i < 10; ++i) CHECK(perm[std::size_t(i)] == perm_ref(i));
  CHECK(bit_mismatches(g.randn(Shape{1, 4, 8, 8}), f.load<float>("seq/randn_latents")) == 0);
  Tensor<std::uint8_t> const end = f.load<std::uint8_t>("seq/state_end");
  std::vector<std::uint8_t> const mine_end = g.torch_state_bytes();
  CHECK(std::equal(mine_end.begin(), mine_end.end(), end.data(), end.data() + end.numel()));

  // Resume from the saved state (ours) and from torch's state bytes: the same continuation.
  TorchGenerator r1(7);
  r1.set_state(saved);
  CHECK(bit_mismatches(r1.randn(Shape{20}), f.load<float>("seq/randn20")) == 0);
  CHECK(bit_mismatches(r1.randn(Shape{5}), f.load<float>("seq/randn5")) == 0);
  TorchGenerator r2(7);
  r2.set_torch_state_bytes(std::span<std::uint8_t const>(after3.data(), std::size_t(after3.numel())));
  CHECK(bit_mismatches(r2.randn(Shape{20}), f.load<float>("seq/randn20")) == 0);
  CHECK(bit_mismatches(r2.randn(Shape{5}), f.load<float>("seq/randn5")) == 0);
  CHECK_THROWS_AS(r2.set_torch_state_bytes(std::span<std::uint8_t const>(after3.data(), 16)), Error);
}

TEST_CASE("TorchGenerator rand matches torch.rand bit for bit", "[rng][torch]") {
  for (std::uint64_t seed : {0ull, 42ull}) {
    TorchGenerator g(seed);
    CHECK(bit_mismatches(g.rand(Shape{7}), torch_fixture().load<float>("rand/" + std::to_string(seed) + "/7")) == 0);
    CHECK(bit_mismatches(g.rand(Shape{100}), torch_fixture().load<float>("rand/" + std::to_string(seed) + "/100")) == 0);
  }
}
